"""No actuator: a job launched by someone else (a scheduler, a human), watched in observe mode.

ftsup reads the job's CloudWatch logs and metrics, decides, journals and alerts what it would do,
and never touches the job. The node list (log stream names, the `Node` metric dimension) comes
from the config, since nothing here can ask a scheduler.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from supervisor.vocabulary import Action, ActionResult, JobObservation


class ExternalJob:
    """Implements the Actuator protocol for a job ftsup only watches. `apply` refuses, always."""

    def __init__(self, job: str, nodes: Sequence[str]) -> None:
        self.job = job
        self.nodes = tuple(nodes)
        self._since = time.time()

    def launch(self) -> ActionResult:
        now = time.time()
        self._since = now
        nodes = ", ".join(self.nodes)
        detail = f"watching {self.job} on {nodes}, launched elsewhere: observe only"
        return ActionResult(f"{self.job}:watch", True, detail, now, now, attempt=0, nodes=self.nodes)

    def plan(self, action: Action) -> list[str]:
        return [f"(observe only: no actuator configured; a human would {action.kind.value} {self.job})"]

    def apply(self, action: Action) -> ActionResult:
        now = time.time()
        return ActionResult(action.idempotency_key, False, "no actuator configured: observe only", now, now)

    def observe(self) -> JobObservation:
        return JobObservation(
            job=self.job,
            attempt=0,
            nodes=self.nodes,
            spares=(),
            cordoned=(),
            running=True,  # unknown; never read as a failure (no exit codes are reported)
            launched_at=self._since,
        )

    def stop(self) -> None:
        """Nothing to stop: the job is not ftsup's."""

    def clear_halt(self) -> None:
        """Nothing to clear: ftsup never halts a job it does not own."""
