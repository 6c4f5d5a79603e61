"""Fold signals into incidents: one failure, one incident, one root cause.

Pure: no I/O, time is passed in. The engine feeds every new signal and asks, on each tick,
which incidents are ready to be decided.

Why a settle window: the failing line and its consequences reach CloudWatch from different
nodes at different moments (an Xid 79 on node-1 may be ingested after the collective timeouts
it causes on node-0). Deciding on the first line would restart instead of cordoning. So an
incident gathers signals before it is decided, unless its best candidate is already a hardware
cause, which nothing can outrank.

The window is measured from when the first failing line was *written* (its event time), not from
when ftsup received it: the other nodes' lines about the same failure are written within moments
of it and travel the same path with the same delay, so waiting `settle_s` after receipt would
count that delay twice. The deadline is `first line's time + settle_s`, clamped to
[receipt, receipt + settle_s]: a node clock that runs ahead (or a line that arrives very late)
never makes an incident wait longer than a receipt-time window would, and one that arrives after
its deadline is decided at once. Size `settle_s` above the spread of your shippers' flush delays
(the node agent ships failure-looking lines at once; the CloudWatch agent batches every 5 s).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from supervisor.incidents.rootcause import choose_root_cause
from supervisor.vocabulary import Incident, Role, Scope, Signal, Verdict


def incident_id_for(job: str, attempt: int, first: Signal) -> str:
    """Deterministic id: re-reading the same lines after a crash gives the same incident id."""
    key = f"{job}|{attempt}|{first.rule}|{first.node}|{first.timestamp:.3f}|{first.event_id}"
    return "inc-" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def opens_incident(signal: Signal) -> bool:
    """Noise and ignore-verdict signals never open an incident (they may join one as evidence)."""
    return signal.role is not Role.NOISE and signal.verdict is not Verdict.IGNORE


def is_decisive(signal: Signal) -> bool:
    """A hardware cause on a node outranks everything, so waiting longer cannot change the root cause."""
    return signal.role is Role.CAUSE and signal.scope is Scope.NODE and opens_incident(signal)


@dataclass
class _Open:
    attempt: int
    opened_wall: float  # when the engine saw the first signal
    deadline: float  # when it is decided at the latest (see the module docstring)
    signals: list[Signal] = field(default_factory=list)


class Correlator:
    """Groups the signals of one job's attempt into incidents.

    Contract:
    - `add(signals, attempt, now)`: signals of the given job attempt. Noise alone opens nothing.
    - `ready(now)`: incidents whose settle deadline has passed (or whose root cause is decisive);
      each is returned once and then forgotten: the engine owns what happens next.
    - `pending()`: True while an incident is gathering signals (the engine holds the source
      cursor back meanwhile, so a crash re-reads those lines).
    - Signals of another attempt than the open incident's start a separate incident.
    """

    def __init__(self, job: str, settle_s: float) -> None:
        self._job = job
        self._settle_s = settle_s
        self._open: _Open | None = None

    def add(self, signals: Iterable[Signal], attempt: int, now: float) -> list[Incident]:
        """Add signals; returns incidents forced out early (an open one of an older attempt)."""
        flushed: list[Incident] = []
        for signal in signals:
            if self._open is not None and self._open.attempt != attempt:
                flushed.extend(self._close())
            if self._open is None:
                if not opens_incident(signal):
                    continue  # noise joins an open incident as evidence, but alone it is nothing
                deadline = min(max(signal.timestamp + self._settle_s, now), now + self._settle_s)
                self._open = _Open(attempt=attempt, opened_wall=now, deadline=deadline)
            self._open.signals.append(signal)
        return flushed

    def ready(self, now: float) -> list[Incident]:
        if self._open is None:
            return []
        if now >= self._open.deadline or any(is_decisive(s) for s in self._open.signals):
            return self._close()
        return []

    def pending(self) -> bool:
        return self._open is not None

    def _close(self) -> list[Incident]:
        assert self._open is not None
        current, self._open = self._open, None
        root = choose_root_cause(current.signals)
        if root is None:  # only noise and ignores gathered: nothing to decide
            return []
        signals = tuple(sorted(current.signals, key=lambda s: (s.timestamp, s.line_index or 0)))
        first = next(s for s in signals if opens_incident(s))
        return [
            Incident(
                incident_id=incident_id_for(self._job, current.attempt, first),
                job=self._job,
                attempt=current.attempt,
                opened_at=min(s.timestamp for s in signals if opens_incident(s)),
                root_cause=root,
                signals=signals,
            )
        ]
