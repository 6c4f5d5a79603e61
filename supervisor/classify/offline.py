"""Offline classification: a window of log lines in, one verdict out (``ftsup classify``).

Each window is the log text of one job around a failure, possibly interleaved from several ranks
and hosts, in order. Every line is classified (Python tracebacks folded into one unit each, see
`supervisor.classify.units`) with the shipped (or given) policies using the line's
index as its timestamp; the root cause is chosen with the daemon's own ordering
(`supervisor.incidents.rootcause.choose_root_cause`), so offline and online never disagree.

JSON-lines protocol (`classify_jsonl`): one object per input line, ``{"id": str, "lines": [str, ...]}``;
one object per valid input line out::

    {"id": ..., "action": "restart" | "cordon_and_restart" | "halt" | "ignore",
     "scope": "node" | "job" | "code" | "none", "recoverable": bool,
     "rule": str | null, "root_cause_line": int | null}

A window without a root cause yields action ignore, scope none, recoverable true, rule null,
root_cause_line null. Malformed input lines are reported on stderr as ``<input>:<lineno>: <problem>``
and skipped; the return code is then 1 (0 when every line was valid). Blank lines are skipped.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from supervisor.classify.matcher import LogClassifier
from supervisor.classify.policy import PolicySet
from supervisor.classify.units import StreamClassifier
from supervisor.incidents.rootcause import choose_root_cause
from supervisor.vocabulary import FailureClass, Signal


@dataclass(frozen=True, slots=True)
class WindowVerdict:
    """The verdict for one window; `root_cause_line` indexes the window's lines."""

    id: str
    action: str
    scope: str
    recoverable: bool
    rule: str | None
    root_cause_line: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "action": self.action,
            "scope": self.scope,
            "recoverable": self.recoverable,
            "rule": self.rule,
            "root_cause_line": self.root_cause_line,
        }


def classify_window(
    lines: Sequence[str], classifier: LogClassifier, node: str = "offline", window_id: str = ""
) -> WindowVerdict:
    """Classify every line (timestamp = index) and return the root cause's verdict."""
    stream = StreamClassifier(classifier)
    signals: list[Signal] = []
    signals.extend(stream.feed_many([(node, line, float(i), None, i) for i, line in enumerate(lines)]))
    signals.extend(stream.flush())
    root = choose_root_cause(signals)
    if root is None:
        return WindowVerdict(window_id, "ignore", "none", True, None, None)
    return WindowVerdict(
        id=window_id,
        action=root.verdict.value,
        scope=root.scope.value,
        recoverable=root.failure_class is FailureClass.RECOVERABLE,
        rule=root.rule,
        root_cause_line=root.line_index,
    )


def _parse_window(raw: str) -> tuple[str, list[str]]:
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object with 'id' and 'lines'")
    wid = obj.get("id")
    lines = obj.get("lines")
    if not isinstance(wid, str):
        raise ValueError("'id' must be a string")
    if not isinstance(lines, list):
        raise ValueError("'lines' must be a list of strings")
    for i, line in enumerate(lines):
        if not isinstance(line, str):
            raise ValueError(f"'lines[{i}]' must be a string")
    return wid, lines


def classify_jsonl(inp: TextIO, out: TextIO, policy: PolicySet, err: TextIO | None = None) -> int:
    """Read windows from `inp` (JSON lines), write verdicts to `out`; 1 if any input line was bad.

    Problems go to `err` (default: sys.stderr) as ``<input>:<lineno>: <problem>`` where <input> is
    the stream's name (``<stdin>`` when it has none).
    """
    errors = err if err is not None else sys.stderr
    name = getattr(inp, "name", None)
    label = name if isinstance(name, str) and name else "<stdin>"
    classifier = LogClassifier(policy)
    rc = 0
    for lineno, raw in enumerate(inp, start=1):
        if not raw.strip():
            continue
        try:
            wid, lines = _parse_window(raw)
        except ValueError as exc:
            print(f"{label}:{lineno}: {exc}", file=errors)
            rc = 1
            continue
        verdict = classify_window(lines, classifier, window_id=wid)
        out.write(json.dumps(verdict.to_json()) + "\n")
    return rc
