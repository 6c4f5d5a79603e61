"""The one root-cause ordering, shared by the daemon's incidents and offline classification.

When a node fails, every rank of the job reports *something*: the failing node logs the fault
itself (an Xid, a traceback), its peers log the consequences (collective timeouts, connection
resets) and torchrun logs its teardown (SIGTERM to siblings, the ChildFailedError summary). Acting
on the first line that happens to arrive would restart a job whose node is dead, or cordon a healthy
node that merely timed out waiting for the broken one. So the root cause is chosen by what a line
*is*, not by when it arrived:

1. Signals with role ``noise`` or verdict ``ignore`` are never a root cause (torchrun teardown).
2. Role ``cause`` beats ``symptom``: an Xid 79 on node-1 beats the collective timeouts it causes
   on node-0, even when the timeouts are logged first.
3. Then scope: ``node`` (hardware; acting must retire the node) beats ``code`` (restarting repeats
   the bug) beats ``job`` (transient) beats ``none``. A GPU that fell off the bus usually also makes
   the program raise; the hardware is the cause, not the program.
4. Then the earliest timestamp (the first failure observed, as torchelastic's ChildFailedError
   names it), then the lowest line_index (order within an offline window), then input order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from supervisor.vocabulary import Role, Scope, Signal, Verdict

_ROLE_RANK = {Role.CAUSE: 0, Role.SYMPTOM: 1}
_SCOPE_RANK = {Scope.NODE: 0, Scope.CODE: 1, Scope.JOB: 2, Scope.NONE: 3}


def can_be_root_cause(signal: Signal) -> bool:
    """False for teardown noise and for signals whose rule says to ignore them."""
    return signal.role is not Role.NOISE and signal.verdict is not Verdict.IGNORE


def root_cause_key(signal: Signal) -> tuple[int, int, float, float]:
    """Sort key: smaller is a better root cause (only meaningful for `can_be_root_cause` signals)."""
    ts = signal.timestamp if not math.isnan(signal.timestamp) else math.inf
    line = float(signal.line_index) if signal.line_index is not None else math.inf
    return (_ROLE_RANK.get(signal.role, 2), _SCOPE_RANK.get(signal.scope, 4), ts, line)


def choose_root_cause(signals: Iterable[Signal]) -> Signal | None:
    """The root cause among `signals` (see the module docstring), or None when none qualifies.

    Ties after every criterion go to the earliest in input order, so the choice is deterministic.
    """
    best: Signal | None = None
    best_key: tuple[int, int, float, float] | None = None
    for s in signals:
        if not can_be_root_cause(s):
            continue
        key = root_cause_key(s)
        if best_key is None or key < best_key:
            best, best_key = s, key
    return best
