"""A built-in signal from the actuator's own observation: node processes exited with an error.

Logs can be late, lost or unrecognised (a usage error, a segfault with no message). The actuator
sees exit codes directly, so a failed exit is itself a signal: a symptom, so that any log line
that explains it (an Xid, a traceback) found within the settle window is the root cause, and a
restart (bounded by the restart budget) when nothing explains it.
"""

from __future__ import annotations

from collections.abc import Sequence

from supervisor.vocabulary import FailureClass, Role, Scope, Severity, Signal, Verdict

EXIT_RULE = "process-exited"


def exit_signal(
    job: str, attempt: int, exit_codes: Sequence[tuple[str, int | None]], now: float
) -> Signal | None:
    """A signal if any node's process exited non-zero; None while all run or all succeeded."""
    failed = [(node, code) for node, code in exit_codes if code is not None and code != 0]
    if not failed:
        return None
    codes = ", ".join(f"{node}={code}" for node, code in exit_codes)
    return Signal(
        rule=EXIT_RULE,
        signal="job.process_exited",
        node=failed[0][0],
        timestamp=now,
        failure_class=FailureClass.RECOVERABLE,
        scope=Scope.JOB,
        verdict=Verdict.RESTART,
        severity=Severity.WARNING,
        role=Role.SYMPTOM,
        evidence=f"node processes of attempt {attempt} exited with errors ({codes})",
        event_id=f"exit:{job}:{attempt}",
    )
