"""Crash points for the SIGKILL chaos test: `crash_point("stage.name")` kills this process at a
chosen moment, so a test can prove that a daemon killed anywhere loses nothing and repeats nothing.

Disabled (the default, and always in production) a crash point costs one call and one test of a
module-level variable: the plan is read from ``FTSUP_CHAOS`` once, at import. Armed, the plan says
which stage(s) kill and when; a crash point that fires appends ``<stage> <pid>`` to the plan's log
(fsynced, so the test can count kills by stage) and sends SIGKILL to its own process: no finally
block, atexit hook, buffered write or SQLite rollback runs, exactly as when the kernel kills it.

Plan syntax, comma-separated ``key=value`` (``FTSUP_CHAOS`` or `arm()`)::

    stage=journal.commit,hit=3      the 3rd time this process reaches journal.commit (default hit=1)
    stage=action.*,p=0.2,seed=7     each time it reaches an action.* stage, with probability 0.2
                                    (a seeded random.Random: the same seed, the same sequence)
    ...,log=/tmp/kills.log          where to append "<stage> <pid>" before the kill

`stage` is one name of STAGES, a prefix ending in ``*`` or ``*`` alone; a plan naming no known
stage is refused (ValueError), so a typo cannot silently disable the test. Counting is per process
and thread-safe (crash points run on the engine, source, action and alert threads).

The points are listed, in pipeline order, in STAGES (name -> where it sits).
"""

from __future__ import annotations

import os
import random
import signal
import threading
from dataclasses import dataclass

ENV = "FTSUP_CHAOS"

STAGES: dict[str, str] = {
    "poll.batch": "mid-poll: source.poll() returned, the batch has not reached the engine",
    "cursor.save": "a batch was processed, its cursor is about to be saved (not yet)",
    "decide.incident": "inside the decision's transaction: incident journaled, decision not yet",
    "decide.decision": "inside the decision's transaction: decision journaled, intent not yet",
    "action.apply": "intent journaled (committed), the actuator's apply not started",
    "action.applied": "apply returned (the target changed), its result not journaled",
    "action.result": "inside the completion's transaction: result journaled, alert not recorded",
    "journal.commit": "inside any journal write transaction, right before COMMIT",
    "alert.recorded": "an alert's outbox row written (inside the completion's transaction), not queued",
    "alert.deliver": "a sink's worker took a recorded alert, about to send it",
    "alert.sent": "the receiver accepted the alert, its delivery not recorded in the outbox",
}


@dataclass(frozen=True, slots=True)
class Plan:
    """What an armed process does: kill at the `hit`-th matching crash point, or at each one with
    probability `p` (`rng` seeded by `seed`). `log`: where a firing point records itself."""

    stage: str
    hit: int = 1
    p: float | None = None
    seed: int = 0
    log: str | None = None

    def matches(self, stage: str) -> bool:
        if self.stage.endswith("*"):
            return stage.startswith(self.stage[:-1])
        return stage == self.stage


def parse(spec: str) -> Plan:
    """The Plan a spec string describes (syntax in the module docstring). Raises ValueError."""
    fields: dict[str, str] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or key not in ("stage", "hit", "p", "seed", "log"):
            raise ValueError(f"{ENV}: expected stage=, hit=, p=, seed=, log=; got {part!r}")
        fields[key] = value
    stage = fields.get("stage", "")
    plan = Plan(
        stage=stage,
        hit=int(fields.get("hit", "1")),
        p=float(fields["p"]) if "p" in fields else None,
        seed=int(fields.get("seed", "0")),
        log=fields.get("log") or None,
    )
    if not any(plan.matches(name) for name in STAGES):
        raise ValueError(f"{ENV}: stage {stage!r} names no crash point (known: {', '.join(STAGES)})")
    if plan.hit < 1:
        raise ValueError(f"{ENV}: hit must be >= 1, got {plan.hit}")
    if plan.p is not None and not 0.0 <= plan.p <= 1.0:
        raise ValueError(f"{ENV}: p must be in [0, 1], got {plan.p}")
    return plan


_plan: Plan | None = None
_lock = threading.Lock()
_hits = 0
_rng = random.Random(0)


def arm(spec: str | None) -> Plan | None:
    """Arm this process with `spec` (None or "" disarms); counting starts again. For a process
    forked from a parent that imported this module already (the env was read at import)."""
    global _plan, _hits, _rng
    plan = parse(spec) if spec else None
    with _lock:
        _plan, _hits = plan, 0
        _rng = random.Random(plan.seed if plan is not None else 0)
    return plan


def armed() -> Plan | None:
    return _plan


def crash_point(stage: str) -> None:
    """Kill this process here when the armed plan says so; nothing at all when disarmed."""
    plan = _plan
    if plan is None or not plan.matches(stage):
        return
    global _hits
    with _lock:
        _hits += 1
        fire = _rng.random() < plan.p if plan.p is not None else _hits == plan.hit
    if fire:
        _die(stage, plan)


def _die(stage: str, plan: Plan) -> None:
    if plan.log:
        fd = os.open(plan.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{stage} {os.getpid()}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


arm(os.environ.get(ENV))
