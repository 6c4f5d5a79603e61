"""The boundary every actuator backend implements (local, slurm, kubernetes, aws)."""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Protocol

from supervisor.vocabulary import Action, ActionResult, JobObservation, Verdict

LAUNCH_KIND = "launch"
"""The kind of a job's first launch where actions and launches are kept side by side (HA ledger)."""


def observed_done(kind: str, node: str | None, attempt: int | None, seen: JobObservation) -> bool:
    """Whether the target shows an action of `kind` (a Verdict value, or `LAUNCH_KIND`), intended
    while the job ran `attempt`, carried out: a launch when the job runs; a halt when it no longer
    runs; a relaunch when it runs a newer attempt (for a cordon, one without `node`). What settling
    an intent left without a result uses (after a crash, on an HA takeover) instead of retrying."""
    if kind == LAUNCH_KIND:
        return seen.running
    if kind == Verdict.HALT.value:
        return not seen.running
    if attempt is None or seen.attempt <= attempt:
        return False
    return kind != Verdict.CORDON_AND_RESTART.value or node not in seen.nodes


class Actuator(Protocol):
    """Drives the job on one kind of cluster.

    plan:    the exact steps apply() would take, as text; observe mode prints it, tests assert on it.
    apply:   carries the action out; idempotent per `action.idempotency_key`; never raises for an
             outside failure (it returns ok=False with the reason); bounded in time.
    launch:  starts the job for the first time (attempt 0) or adopts a running one.
    observe: reads the job's current state from the target, never from memory alone.
    stop:    stops every process the actuator owns (daemon shutdown without a decision).
    clear_halt: a human has inspected a job the actuator halted; launching it is allowed again.
    """

    def launch(self) -> ActionResult: ...

    def plan(self, action: Action) -> list[str]: ...

    def apply(self, action: Action) -> ActionResult: ...

    def observe(self) -> JobObservation: ...

    def stop(self) -> None: ...

    def clear_halt(self) -> None: ...


def apply_once(
    results: MutableMapping[str, ActionResult],
    action: Action,
    act: Callable[[Action, float], ActionResult],
    clock: Callable[[], float],
) -> ActionResult:
    """The result `results` holds for the action's idempotency key, else `act(action, started)`'s,
    recorded there: the same key twice is done once. Call it holding the actuator's lock."""
    done = results.get(action.idempotency_key)
    if done is not None:
        return done
    result = act(action, clock())
    results[action.idempotency_key] = result
    return result
