"""Secrets never leave in an alert: `redact(text)` masks them in evidence lines and details.

Pure (no I/O, no state). What is masked, each replaced by ``[REDACTED]`` (the name of the field is
kept so the engineer still sees *that* a secret was there):

- AWS access key ids (``AKIA...``, ``ASIA...`` and the other 4-letter prefixes of 20-char ids);
- AWS secret access keys given as ``aws_secret_access_key=...`` / ``"SecretAccessKey": "..."``, and
  any other 40-char base64 run next to the word ``secret``;
- ``Bearer <token>`` (any ``Authorization`` header) and ``Basic <base64>``;
- passwords in URLs (``scheme://user:PASSWORD@host``);
- ``token=``, ``password=``, ``passwd=``, ``secret=``, ``api_key=``, ``apikey=``, ``access_token=``,
  ``session_token=`` values (``=`` or ``:``, quoted or not, any case);
- well-known token shapes: GitHub (``ghp_...``, ``github_pat_...``), Slack (``xox[abpr]-...``),
  Hugging Face (``hf_...``), OpenAI-style (``sk-...``), PagerDuty-style routing keys are not matched
  on shape (they are plain hex) but are masked when named (``routing_key=``).

Redaction is idempotent: ``redact(redact(x)) == redact(x)``.
"""

from __future__ import annotations

import re

MASK = "[REDACTED]"

_NAMED = (
    r"(?:aws_)?secret_access_key|secretaccesskey|aws_session_token|session_token|sessiontoken"
    r"|access_token|refresh_token|id_token|auth_token|api[_-]?key|apikey|api[_-]?token|routing_key"
    r"|client_secret|secret|token|password|passwd|pwd"
)

_PATTERNS: tuple[re.Pattern[str], ...] = (
    # scheme://user:password@host -> scheme://user:[REDACTED]@host
    re.compile(r"(?P<pre>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]+:)(?P<secret>[^\s@/]+)(?=@)"),
    # Authorization headers and bare bearer / basic credentials
    re.compile(r"(?P<pre>\b[Bb]earer\s+)(?P<secret>[A-Za-z0-9._~+/=-]{8,})"),
    re.compile(r"(?P<pre>\bBasic\s+)(?P<secret>[A-Za-z0-9+/]{12,}={0,2})"),
    # name=value / name: value / "name": "value" (JSON, env, CLI flags)
    re.compile(
        r"(?P<pre>(?<![A-Za-z0-9])(?:" + _NAMED + r")[\"']?\s*[:=]\s*[\"']?)"
        r"(?P<secret>(?!\[REDACTED\])[^\s\"'&,;}\]]+)",
        re.I,
    ),
    # AWS access key ids
    re.compile(r"(?P<pre>)(?P<secret>\b(?:AKIA|ASIA|AIDA|AROA|AGPA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b)"),
    # well-known token shapes
    re.compile(
        r"(?P<pre>)(?P<secret>\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"
        r"|xox[abprs]-[A-Za-z0-9-]{10,}|hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_-]{20,}))"
    ),
    # a 40-char AWS secret key anywhere near the word "secret" (e.g. `aws configure` output)
    re.compile(r"(?P<pre>secret\S*\s+(?:\S+\s+){0,2})(?P<secret>[A-Za-z0-9/+]{40})\b", re.I),
)


def redact(text: str) -> str:
    """`text` with every secret it recognises replaced by ``[REDACTED]``; everything else unchanged."""
    for pattern in _PATTERNS:
        text = pattern.sub(_mask, text)
    return text


def _mask(m: re.Match[str]) -> str:
    return m.group("pre") + MASK
