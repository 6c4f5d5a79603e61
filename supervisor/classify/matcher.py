"""One-pass log classification: every log rule is tried on a line at once with an RE2 set.

`LogClassifier` compiles all log rules' patterns into one `re2.Set` (one scan of the line for all
rules) and runs the full regex of the *winning* rule only, to locate the evidence. RE2 runs in
linear time, so no pattern or line can make matching blow up. `any_match` scans many lines joined
into one text with one set match: at a 99.9% healthy stream almost every chunk of lines is cleared
by a single call, which is how `StreamClassifier.feed_many` reaches millions of lines per second
(``python bench/classify.py``).

RE2's set matcher runs a DFA that can give up when its memory budget thrashes, and then reports
*no match*, indistinguishable from a healthy line. A blind matcher must never read as health, so
every scanned text ends with a canary line that only the canary pattern matches; a result without
the canary means the DFA gave up, and the text is matched rule by rule with the individual regexes
(which fall back to RE2's NFA instead of failing).

Contracts:
* At most one `Signal` per line: the best matching rule wins (highest `priority`, then earliest
  declaration order). `explain` lists every matching rule, best first.
* Quiet rules (action ``ignore`` at severity ``info``: NCCL INFO chatter, plugin probes, warnings,
  launcher teardown) only keep other rules off the lines they match: when one wins, `classify`
  returns None. A chunk whose only hits are quiet rules is cleared by `any_match` at once, which
  matters because healthy jobs print such lines all the time. Ignore rules at ``warning`` still
  yield a signal (journaled as evidence, counted in metrics).
* Input is cleaned before matching: ANSI escape sequences, NUL and other C0 control characters
  (except tab / newline) are removed, carriage returns become line breaks, text beyond
  `MAX_LINE_BYTES` is ignored, unencodable characters (lone surrogates) are replaced.
* Patterns run in multi-line mode (see `policy.compile_pattern`): a multi-line event (a traceback
  shipped as one CloudWatch event) matches ``^`` at every line start; the evidence is the line of
  the event that matched, cut to at most `MAX_EVIDENCE_CHARS` characters around the match.
* Never raises on odd input (any str; bytes are decoded as UTF-8 with replacement).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import re2

from supervisor.classify.policy import (
    LogMatch,
    PolicySet,
    Rule,
    compile_pattern,
    effective_pattern,
    make_signal,
    re2_options,
)
from supervisor.vocabulary import Severity, Signal, Verdict

MAX_LINE_BYTES = 1 << 20
"""Only the first 1 MiB of a line is matched."""

MAX_EVIDENCE_CHARS = 2048
"""Evidence kept on a Signal (the matched line, cut around the match)."""

SET_MAX_MEM = 64 << 20
"""DFA memory budget of the rule set (allocated lazily; RE2's default of 8 MiB thrashes sooner)."""

STRUCTURE_PATTERNS = (
    r"^\s*Traceback \(most recent call last\):",
    r"^\s*Exception ignored in: ",
    r"^\s+File \"[^\"]*\", line \d+",
    r"^\s*terminate called after throwing an instance of ",
    r"^\s*[│╭╰]",
)
"""Lines that change how the following lines are read (`supervisor.classify.units`): a traceback
header or frame, Python's "Exception ignored", C++'s uncaught-exception report, a rich traceback box.
They are in the set so that one scan also tells whether a chunk of lines holds any of them."""

CANARY = "\x01ftsup-canary\x01"
"""A line no cleaned log text can contain (control characters are removed by `clean_text`)."""
_CANARY_SUFFIX = "\n" + CANARY
_CANARY_SUFFIX_BYTES = _CANARY_SUFFIX.encode()

_ANSI_RE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
_CTRL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean_text(text: str | bytes) -> str:
    """The text as the rules see it: decoded, capped at 1 MiB, without ANSI escapes / control chars.

    Carriage returns (progress bars) become newlines so each overwritten segment is its own line.
    """
    if isinstance(text, bytes | bytearray):
        text = bytes(text[:MAX_LINE_BYTES]).decode("utf-8", "replace")
    elif not isinstance(text, str):
        text = str(text)
    if len(text) > MAX_LINE_BYTES // 4:  # only long texts can exceed the byte cap
        raw = text.encode("utf-8", "replace")
        if len(raw) > MAX_LINE_BYTES:
            text = raw[:MAX_LINE_BYTES].decode("utf-8", "ignore")
    if "\x1b" in text:
        text = _ANSI_RE.sub("", text)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if _CTRL_RE.search(text) is not None:
        text = _CTRL_RE.sub("", text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates (e.g. from surrogateescape decoding)
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def _evidence(text: str, start: int, end: int) -> str:
    """The line of `text` containing [start, end), cut to MAX_EVIDENCE_CHARS around the match."""
    line_start = text.rfind("\n", 0, start) + 1
    line_end = text.find("\n", end if end > start else start)
    if line_end < 0:
        line_end = len(text)
    if line_end - line_start <= MAX_EVIDENCE_CHARS:
        return text[line_start:line_end]
    lo = max(line_start, start - MAX_EVIDENCE_CHARS // 4)
    hi = min(line_end, lo + MAX_EVIDENCE_CHARS)
    lo = max(line_start, hi - MAX_EVIDENCE_CHARS)
    prefix = "…" if lo > line_start else ""
    suffix = "…" if hi < line_end else ""
    return prefix + text[lo + len(prefix) : hi - len(suffix)] + suffix


def is_quiet(rule: Rule) -> bool:
    """A rule that only keeps other rules off a line: action ignore at severity info."""
    return rule.action is Verdict.IGNORE and rule.severity is Severity.INFO


class LogClassifier:
    """Classifies log lines against a fixed set of log rules (metric rules are ignored).

    Immutable after construction and safe to share between threads (RE2 objects are).
    """

    def __init__(self, rules: Iterable[Rule] | PolicySet) -> None:
        source = rules.rules if isinstance(rules, PolicySet) else tuple(rules)
        # Best first: highest priority, then declaration order.
        ranked = sorted(
            ((r, r.match.pattern) for r in source if isinstance(r.match, LogMatch)),
            key=lambda rp: (-rp[0].priority, rp[0].order),
        )
        self._rules: tuple[Rule, ...] = tuple(r for r, _ in ranked)
        self._quiet = frozenset(i for i, r in enumerate(self._rules) if is_quiet(r))
        self._regexes: tuple[Any, ...] = tuple(compile_pattern(p) for _, p in ranked)
        self._set: Any = None
        self.dfa_failures = 0  # set matches that fell back to per-rule regexes (observability)
        if ranked:
            opts = re2_options()
            opts.max_mem = SET_MAX_MEM
            s = re2.Set.SearchSet(opts)
            for i, (rule, pattern) in enumerate(ranked):
                if s.Add(effective_pattern(pattern)) != i:  # pragma: no cover - RE2 numbers patterns in order
                    raise RuntimeError(f"re2.Set index mismatch for rule {rule.name}")
            for pattern in STRUCTURE_PATTERNS:
                s.Add(effective_pattern(pattern))
            self._canary = s.Add("(?m)^" + re.escape(CANARY) + "$")
            s.Compile()
            self._set = s

    @property
    def rules(self) -> tuple[Rule, ...]:
        """The log rules, best first (the order ties are broken in)."""
        return self._rules

    def _set_match(self, text: str | bytes) -> list[int] | None:
        """Indexes of the rules matching `text` (canary excluded); None when the DFA gave up."""
        try:
            if isinstance(text, bytes):
                found = self._set.Match(text + _CANARY_SUFFIX_BYTES)
            else:
                found = self._set.Match(text + _CANARY_SUFFIX)
        except Exception:  # defensive: the binding must never take the daemon down
            return None
        if not found or self._canary not in found:
            return None
        return sorted(i for i in found if i != self._canary)  # rule indexes, then structure lines

    def _candidates(self, text: str) -> list[int]:
        if self._set is None or not text:
            return []
        found = self._set_match(text)
        if found is None:
            self.dfa_failures += 1
            found = [i for i, rx in enumerate(self._regexes) if rx.search(text) is not None]
        n = len(self._rules)
        return [i for i in found if i < n]

    def any_match(self, text: str | bytes) -> bool:
        """Whether some rule or `STRUCTURE_PATTERNS` line may match in `text` (cleaned lines, joined).

        `text` may be UTF-8 bytes. Exact for each line (patterns are per line in multi-line mode);
        a pattern that spans a line break can make it say True for lines that match nothing on their
        own, never False for a line that matches. True when the set matcher gave up (never blind).
        """
        if self._set is None or not text:
            return False
        found = self._set_match(text)
        return found is None or any(i not in self._quiet for i in found)

    def classify(
        self,
        node: str,
        text: str | bytes,
        timestamp: float,
        event_id: str | None = None,
        line_index: int | None = None,
    ) -> Signal | None:
        """The Signal of the best rule matching `text`, or None when no rule matches."""
        return self.classify_clean(node, clean_text(text), timestamp, event_id, line_index)

    def classify_clean(
        self,
        node: str,
        clean: str,
        timestamp: float,
        event_id: str | None = None,
        line_index: int | None = None,
    ) -> Signal | None:
        """`classify` for text already passed through `clean_text`."""
        found = self._candidates(clean)
        if not found or found[0] in self._quiet:
            return None
        best = found[0]
        rule = self._rules[best]
        m = self._regexes[best].search(clean)
        evidence = _evidence(clean, m.start(), m.end()) if m is not None else _evidence(clean, 0, 0)
        return make_signal(rule, node, timestamp, evidence, event_id=event_id, line_index=line_index)

    def explain(self, text: str | bytes) -> list[Rule]:
        """Every rule matching `text`, best first (the first is the one `classify` picks)."""
        return [self._rules[i] for i in self._candidates(clean_text(text))]
