"""Per-stream classification with Python tracebacks folded into one unit.

A traceback is many lines, and most of them must not be classified on their own: frame lines
(``File "…/torch/cuda/memory.py", line 12``) and the echoed source lines under them
(``raise RuntimeError("NCCL timeout")``) mention errors without reporting one. So lines are fed,
in order, per stream (one node; one ``[rankN]:`` prefix within it, since torchrun interleaves the
output of its ranks), and a small state machine folds each traceback into one unit:

    Traceback (most recent call last):          <- opens the unit
      File "train.py", line 9, in <module>      <- frames and source lines: never classified
        main()
    KeyError: 'labels'                          <- an exception line: a candidate
                                                <- blank lines keep the unit open
    The above exception was the direct cause of the following exception:
                                                   (or "During handling of the above exception ...")
    Traceback (most recent call last):          <- the chain goes on in the same unit
      ...
    RuntimeError: Caught KeyError in DataLoader worker process 0.   <- a candidate

A wrapped worker exception (PyTorch's DataLoader: ``KeyError: Caught KeyError in DataLoader worker
process 0.`` followed by ``Original Traceback (most recent call last):`` and the worker's frames and
exception) continues the unit the same way.

When the unit closes (the next line of the stream is neither blank nor a chain marker, or `flush`),
it yields **one** signal: the candidate that ranks best — a line that can be a root cause, then the
highest rule priority (a specific rule such as an NCCL error or CUDA OOM beats the generic exception
rule that matches the wrapper raised while handling it), and among equals the final exception of
the chain, as Python reports it last (a DataLoader worker's own ``KeyError: 0`` after the
``Caught KeyError in DataLoader worker process 0`` that wraps it). Teardown noise (torchrun's own
ChildFailedError traceback) never beats a line that can be a root cause. Its `line_index` /
`timestamp` are those of that exception line, so the root-cause line is recorded exactly.

Lines outside tracebacks are classified one by one. Partial views and other shapes: a frame line
(``  File "x.py", line 3``) seen without its header opens a unit as a header would; an indented
``raise ...`` line or a line of a rich traceback box (``│``, ``╭``, ``╰``) outside a unit is
quoted source, never evidence; C++'s ``terminate called after throwing an instance of
'c10::Error'`` and its ``  what():  ...`` line are one unit in which the ``what()`` line, when a
rule matches it, decides. A traceback that Python prints after ``Exception ignored in:
<function ...__del__>`` (an exception it could not raise, typically at interpreter exit) yields
nothing. A unit whose exception line never
comes (the process died mid-print) is dropped by `flush` without a signal; its frame lines were
never evidence of anything.

The same class serves the daemon (the engine feeds every current log line, and flushes stale units
on its tick) and offline classification (feed a window, then flush), so both agree.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from supervisor.classify.matcher import MAX_LINE_BYTES, LogClassifier, clean_text
from supervisor.incidents.rootcause import can_be_root_cause
from supervisor.vocabulary import Signal

# Launcher prefixes in front of a program's lines, possibly stacked ("15: [rank15]: ..."): torchrun's
# "[rankN]:" / "[defaultN]:", srun --label's "N:", mpirun --tag-output's "[1,3]<stderr>:". The same set
# as policy.LAUNCHER_PREFIX (where rules' "^" anchors also match after them).
_PREFIX_RE = re.compile(r"^(?:(?:\[(?:rank|default)\d+\]:|\d{1,5}:|\[\d+,\d+\]<std(?:out|err)>:) ?)+")
# Python's report of an exception it cannot raise (in __del__, at interpreter exit): the traceback
# that follows is not a failure of the program.
_IGNORED_RE = re.compile(r"^\s*Exception ignored in: ")
# A frame line of a traceback whose header is not in view (the window or the stream starts mid-way).
_FRAME_RE = re.compile(r'^\s+File "[^"]*", line \d+')
# An echoed source line that raises: never a report of an error by itself.
_RAISE_RE = re.compile(r"^\s+raise\b")
# rich's boxed tracebacks: every frame line is drawn inside a box.
_BOX_RE = re.compile(r"^\s*[│╭╰]")
# C++'s report of an uncaught exception (std::terminate): the next line, "  what():  ...", says what.
_TERMINATE_RE = re.compile(r"^\s*terminate called after throwing an instance of ")
_WHAT_RE = re.compile(r"^\s*what\(\):")
_TRACEBACK_RE = re.compile(r"^\s*Traceback \(most recent call last\):\s*$")
# PyTorch's DataLoader (and other ExceptionWrapper users) re-raise a worker's exception with the
# worker's traceback inside the message: "KeyError: Caught KeyError in DataLoader worker process 0."
# then "Original Traceback (most recent call last):" and the worker's frames and exception.
_ORIGINAL_RE = re.compile(r"^\s*Original Traceback \(most recent call last\):\s*$")
_CHAIN_RE = re.compile(
    r"^\s*(?:The above exception was the direct cause of the following exception:"
    r"|During handling of the above exception, another exception occurred:)\s*$"
)
# What Python prints as the last line of a traceback: a dotted name, optionally ": message".
_EXCEPTION_RE = re.compile(r"^[A-Za-z_][\w.]*(?::(?: .*)?)?$")

CHUNK_LINES = 128
"""Lines scanned with one set match by `feed_many` (amortises the per-call cost of the binding)."""
_SIMPLE_MAX_CHARS = MAX_LINE_BYTES // 4  # below this many characters, any text is within the byte cap
# The UTF-8 bytes clean_text leaves alone: tab, printable ASCII, and every byte of a multi-byte
# character (all >= 0x80); what remains are C0 controls, DEL, CR, ESC and line breaks.
_KEPT_BYTES = bytes([9, *range(0x20, 0x7F), *range(0x80, 0x100)])
_BISECT_MIN = 8  # a chunk with a hit is halved down to this many lines, then matched line by line

FRAMES = "frames"
AFTER_EXCEPTION = "after_exception"
CHAIN = "chain"
TERMINATE = "terminate"  # after a C++ "terminate called ...", waiting for its what() line


@dataclass(frozen=True, slots=True)
class _Candidate:
    signal: Signal
    priority: int
    position: int  # exception number within the chain (later = higher)

    def rank(self) -> tuple[bool, int, int]:
        """Larger is better: can be a root cause (not teardown noise), rule priority, later."""
        return (can_be_root_cause(self.signal), self.priority, self.position)


@dataclass(frozen=True, slots=True)
class _At:
    """One line being fed, with where it came from."""

    node: str
    text: str
    timestamp: float
    event_id: str | None
    line_index: int | None


@dataclass
class _Unit:
    state: str
    opened_at: float  # caller's clock when the unit opened / last grew
    candidates: list[_Candidate] = field(default_factory=list)
    exceptions: int = 0
    ignored: bool = False  # Python said "Exception ignored in: ...": report nothing


def _split_prefix(line: str) -> tuple[str, str]:
    m = _PREFIX_RE.match(line)
    if m is None:
        return "", line
    return m.group(0).replace(" ", ""), line[m.end() :]


class StreamClassifier:
    """Feeds lines per stream through a `LogClassifier`, folding Python tracebacks into one unit.

    Contracts:
    * `feed` returns the signals that are final now: signals of ordinary lines at once, the one
      signal of a traceback unit when the unit closes. Lines inside an open unit return nothing.
    * `flush(now, idle_s)` closes units last fed at least `idle_s` before `now` (all with
      ``idle_s=0``) and returns their signals; call it when no more lines can follow (the end of an
      offline window) or periodically (the daemon's tick).
    * `holding()` is True while a closed-but-unflushed unit holds a candidate signal: the caller
      must not persist a read position past lines whose signal is still held.
    * `feed_many` is `feed` over many lines in order, with the same result; it clears whole chunks
      of lines that no rule matches with one set match (no traceback open or starting in them).
    * Not thread-safe: one owner feeds it. Multi-line texts are fed line by line.
    """

    def __init__(self, classifier: LogClassifier) -> None:
        self.classifier = classifier
        self._units: dict[tuple[str, str], _Unit] = {}
        self._ignoring: set[tuple[str, str]] = set()  # streams whose next traceback Python ignored
        self._priority = {r.name: r.priority for r in classifier.rules}

    def feed(
        self,
        node: str,
        text: str | bytes,
        timestamp: float,
        *,
        now: float = 0.0,
        event_id: str | None = None,
        line_index: int | None = None,
    ) -> list[Signal]:
        clean = clean_text(text)
        out: list[Signal] = []
        if "\n" not in clean:
            self._line(node, clean, timestamp, now, event_id, line_index, out)
            return out
        for line in clean.split("\n"):
            self._line(node, line, timestamp, now, event_id, line_index, out)
        return out

    def feed_many(
        self,
        lines: Sequence[tuple[str, str, float, str | None, int | None]],
        now: float = 0.0,
    ) -> list[Signal]:
        """Feed (node, text, timestamp, event_id, line_index) items in order; see `feed`."""
        out: list[Signal] = []
        for start in range(0, len(lines), CHUNK_LINES):
            chunk = lines[start : start + CHUNK_LINES]
            joined = "\n".join([item[1] for item in chunk])
            # Nothing for clean_text to change: printable (no controls, ESC, CR, lone surrogates),
            # one line per item, and short enough that no line reaches the byte cap.
            scan: bytes | None = None
            if len(joined) < _SIMPLE_MAX_CHARS:
                try:
                    raw = joined.encode("utf-8")  # strict: a lone surrogate needs cleaning
                except UnicodeEncodeError:
                    raw = b""
                # Delete every byte clean_text keeps; only the separators may be left.
                if raw and len(raw.translate(None, _KEPT_BYTES)) == len(chunk) - 1:
                    scan = raw
            if scan is not None:
                self._scan(chunk, scan, now, out)
                continue
            for node, text, ts, event_id, line_index in chunk:
                out.extend(self.feed(node, text, ts, now=now, event_id=event_id, line_index=line_index))
        return out

    def _scan(
        self,
        chunk: Sequence[tuple[str, str, float, str | None, int | None]],
        joined: bytes | str,
        now: float,
        out: list[Signal],
    ) -> None:
        """Feed clean lines: skip them at once when nothing can happen, else narrow down by halves."""
        if not self._units:
            if not self.classifier.any_match(joined):
                return  # no rule and no structure line (traceback, frame, terminate) matches
            if len(chunk) > _BISECT_MIN:
                half = len(chunk) // 2
                first, second = chunk[:half], chunk[half:]
                self._scan(first, "\n".join(item[1] for item in first), now, out)
                self._scan(second, "\n".join(item[1] for item in second), now, out)
                return
        for node, text, ts, event_id, line_index in chunk:
            self._line(node, text, ts, now, event_id, line_index, out)

    def flush(self, now: float = 0.0, idle_s: float = 0.0) -> list[Signal]:
        out: list[Signal] = []
        for key in [k for k, u in self._units.items() if now - u.opened_at >= idle_s]:
            out.extend(self._close(key))
        out.sort(key=lambda s: (s.timestamp, s.line_index if s.line_index is not None else -1))
        return out

    def holding(self) -> bool:
        return any(u.candidates for u in self._units.values())

    def open_units(self) -> int:
        return len(self._units)

    def reset(self) -> None:
        """Forget every open unit (the job relaunched: a half-read traceback belongs to the old attempt)."""
        self._units.clear()
        self._ignoring.clear()

    # ------------------------------------------------------------------------- internals

    def _classify(self, at: _At) -> Signal | None:
        return self.classifier.classify_clean(at.node, at.text, at.timestamp, at.event_id, at.line_index)

    def _candidate(self, at: _At, position: int) -> _Candidate | None:
        found = self._classify(at)
        return None if found is None else _Candidate(found, self._priority.get(found.rule, 0), position)

    def _line(
        self,
        node: str,
        line: str,
        timestamp: float,
        now: float,
        event_id: str | None,
        line_index: int | None,
        out: list[Signal],
    ) -> None:
        at = _At(node, line, timestamp, event_id, line_index)
        prefix, body = _split_prefix(line)
        key = (node, prefix)
        unit = self._units.get(key)
        if unit is not None:
            if self._inside(unit, body, at, now):
                return
            out.extend(self._close(key))  # the unit ended before this line
        if _TRACEBACK_RE.match(body) or _FRAME_RE.match(body):
            self._units[key] = _Unit(FRAMES, now, ignored=key in self._ignoring)
            self._ignoring.discard(key)
            return
        if _IGNORED_RE.match(body):
            self._ignoring.add(key)
            return
        self._ignoring.discard(key)
        if _RAISE_RE.match(body) or _BOX_RE.match(body):
            return  # source code quoted by a traceback we see only part of
        if _TERMINATE_RE.match(body):
            unit = self._units[key] = _Unit(TERMINATE, now)
            candidate = self._candidate(at, 0)
            if candidate is not None:
                unit.candidates.append(candidate)
            return
        found = self._classify(at)
        if found is not None:
            out.append(found)

    def _inside(self, unit: _Unit, body: str, at: _At, now: float) -> bool:
        """Whether `body` belongs to `unit` (consumed); False closes the unit before the line."""
        if unit.state == TERMINATE:
            if not _WHAT_RE.match(body):
                return False
            unit.state = AFTER_EXCEPTION
            unit.opened_at = now
            candidate = self._candidate(at, 1)
            if candidate is not None:  # what() names the error: it replaces the generic terminate line
                unit.candidates = [candidate]
            return True
        if unit.state == FRAMES:
            if not body.strip() or body[:1].isspace() or body.startswith("^"):
                unit.opened_at = now
                return True  # a frame line, a source line, or a caret marker
            if _EXCEPTION_RE.match(body) is None:
                return False  # not how a traceback ends: foreign output, give up on the unit
            unit.exceptions += 1
            unit.state = AFTER_EXCEPTION
            unit.opened_at = now
            candidate = self._candidate(at, unit.exceptions)
            if candidate is not None:
                unit.candidates.append(candidate)
            return True
        if not body.strip():
            return True  # blank lines around chain markers
        if _CHAIN_RE.match(body):
            unit.state = CHAIN
            unit.opened_at = now
            return True
        if (unit.state == CHAIN and _TRACEBACK_RE.match(body)) or (
            unit.state == AFTER_EXCEPTION and _ORIGINAL_RE.match(body)
        ):
            unit.state = FRAMES
            unit.opened_at = now
            return True
        return False

    def _close(self, key: tuple[str, str]) -> list[Signal]:
        unit = self._units.pop(key)
        if not unit.candidates or unit.ignored:
            return []
        best = max(unit.candidates, key=_Candidate.rank)
        return [best.signal]
