"""`observed_done`: how a crash restart and an HA takeover both judge an intent left without a result."""

from __future__ import annotations

from supervisor.act.base import LAUNCH_KIND, observed_done
from supervisor.vocabulary import JobObservation


def seen(attempt: int, running: bool = True, nodes: tuple[str, ...] = ("node-0", "node-2")) -> JobObservation:
    return JobObservation("job", attempt, nodes, (), (), running, 0.0)


def test_a_relaunch_is_done_when_a_newer_attempt_runs() -> None:
    assert observed_done("restart", None, 1, seen(2))
    assert not observed_done("restart", None, 1, seen(1))
    assert not observed_done("restart", None, None, seen(5))  # the incident's attempt is unknown


def test_a_cordon_is_done_only_when_the_newer_attempt_runs_without_the_node() -> None:
    assert observed_done("cordon_and_restart", "node-1", 1, seen(2))
    assert not observed_done("cordon_and_restart", "node-0", 1, seen(2))  # relaunched, node still in


def test_a_halt_is_done_when_the_job_no_longer_runs_and_a_launch_when_it_runs() -> None:
    assert observed_done("halt", None, 1, seen(1, running=False))
    assert not observed_done("halt", None, 1, seen(1))
    assert observed_done(LAUNCH_KIND, None, None, seen(0))
    assert not observed_done(LAUNCH_KIND, None, None, seen(0, running=False))
