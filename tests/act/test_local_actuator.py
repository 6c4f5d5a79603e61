"""The local actuator with real node agents and torchrun: what survives a daemon restart.

Hazards: a restarted daemon forgetting a cordon (and putting the bad node back), launching a second
copy of a job a previous daemon left running, or relaunching a job a human must look at first.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from supervisor.act.local import LocalActuator, LocalJobSpec
from supervisor.errors import StartupError
from supervisor.vocabulary import Action, Verdict

pytestmark = pytest.mark.slow


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purposes.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def spec(tmp_path: Path, endpoint: str) -> LocalJobSpec:
    return LocalJobSpec(
        job="act-test",
        nodes=("node-0", "node-1"),
        spares=("node-2",),
        run_dir=tmp_path / "job",
        log_group="/ftsup/test/act-test",
        trainer_args=("--step-sleep-s", "0.2", "--no-metrics"),
        endpoint_url=endpoint,
        stop_grace_s=3.0,
        env={"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"},
    )


def test_membership_and_halt_survive_a_daemon_restart_and_leftovers_are_stopped(
    tmp_path: Path, moto_endpoint: str
) -> None:
    first = LocalActuator(spec(tmp_path, moto_endpoint))
    first.launch()
    result = first.apply(
        Action(Verdict.CORDON_AND_RESTART, "act-test", "inc-1", "inc-1:cordon", node="node-1")
    )
    assert result.ok and result.nodes == ("node-0", "node-2")
    assert first.apply(
        Action(Verdict.CORDON_AND_RESTART, "act-test", "inc-1", "inc-1:cordon", node="node-1")
    ) == (result)  # the same idempotency key is not acted on twice
    old_pids = [pid for _, pid in first.pids()]
    assert all(alive(p) for p in old_pids)

    # The daemon dies without stopping the job; a new one starts from the same run directory.
    second = LocalActuator(spec(tmp_path, moto_endpoint))
    seen = second.observe()
    assert seen.nodes == ("node-0", "node-2") and seen.cordoned == ("node-1",) and seen.attempt == 1
    launched = second.launch()
    assert launched.attempt == 2 and "previous daemon" in launched.detail
    deadline = time.monotonic() + 10
    while any(alive(p) for p in old_pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in old_pids), "the previous daemon's job is still running"

    halted = second.apply(Action(Verdict.HALT, "act-test", "inc-2", "inc-2:halt"))
    assert halted.ok and halted.attempt is None

    third = LocalActuator(spec(tmp_path, moto_endpoint))
    with pytest.raises(StartupError, match="halted"):
        third.launch()
    third.clear_halt()
    assert third.launch().attempt == 3
    third.stop()
    assert not third.observe().running
