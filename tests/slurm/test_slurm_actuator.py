"""The Slurm actuator against a real Slurm (the session's throw-away cluster, tests/slurm/cluster.py).

The job here is a plain sleeper (two nodes, --requeue) so that each test is about Slurm, not training;
the trainer runs under Slurm in test_slurm_e2e.py. Each test starts from a reset cluster: no job,
every node idle. A requeued job waits cred_expire + 1 = 11 s before it runs again; only the tests that
need a requeue pay for one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from supervisor.act.slurm import SlurmActuator, SlurmJobSpec
from supervisor.act.slurm_cli import SlurmCli, SlurmSettings
from supervisor.errors import StartupError
from supervisor.vocabulary import Action, Verdict
from tests.slurm.cluster import LocalSlurmCluster

pytestmark = pytest.mark.slow  # starts real Slurm daemons and jobs

SLEEPER = """#!/bin/bash
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
echo "run attempt=$(( ${FTSUP_ATTEMPT_BASE:-0} + ${SLURM_RESTART_COUNT:-0} )) nodes=$SLURM_JOB_NODELIST"
srun sleep 600
"""

EXIT3 = """#!/bin/bash
#SBATCH --nodes=1
#SBATCH --requeue
#SBATCH --output=slurm-%x-%j.out
exit 3
"""


def make_actuator(
    cluster: LocalSlurmCluster, tmp_path: Path, script: str = SLEEPER, **kw: Any
) -> SlurmActuator:
    path = tmp_path / "job.sbatch"
    if not path.exists():
        path.write_text(script)
    spec = SlurmJobSpec(
        job="sjob", state_dir=tmp_path / "state", log_group="/ftsup/test/sjob", script=path,
        start_timeout_s=60, stop_timeout_s=30, poll_interval_s=0.3, observe_ttl_s=0, **kw,
    )  # fmt: skip
    return SlurmActuator(spec, SlurmSettings(slurm_conf=cluster.slurm_conf, command_timeout_s=10))


def action(
    kind: Verdict, node: str | None = None, rule: str = "gpu-fallen-off-bus", incident: str = "inc-1"
) -> Action:
    reason = f"{rule} on {node}: cordon it" if node else f"{rule}: a reason"
    return Action(kind, "sjob", incident, f"{incident}:{kind.value}", node=node, reason=reason)


def node_info(cluster: LocalSlurmCluster, name: str) -> dict[str, Any]:
    nodes = json.loads(cluster.run("sinfo", "--json").stdout)["nodes"]
    return next(n for n in nodes if n["name"] == name)  # type: ignore[no-any-return]


def restart_count(cluster: LocalSlurmCluster, job_id: int) -> int:
    jobs = json.loads(cluster.run("squeue", "--json").stdout)["jobs"]
    return int(next(j["restart_cnt"] for j in jobs if j["job_id"] == job_id))


def commands(act: SlurmActuator, verb: str) -> list[tuple[str, ...]]:
    return [r.argv for r in act.cli.history if len(r.argv) > 1 and r.argv[1] == verb]


def test_launch_submits_once_and_a_restarted_daemon_adopts_the_job(
    slurm: LocalSlurmCluster, tmp_path: Path
) -> None:
    act = make_actuator(slurm, tmp_path)
    result = act.launch()
    assert result.ok and result.attempt == 0 and len(result.nodes) == 2
    assert "submitted" in result.detail and act.job_id is not None
    seen = act.observe()
    assert seen.running and seen.attempt == 0 and seen.nodes == result.nodes
    assert seen.exit_codes == tuple((n, None) for n in seen.nodes) and seen.launched_at
    assert set(seen.spares) == {"node-0", "node-1", "node-2", "node-3"} - set(seen.nodes)
    assert seen.cordoned == ()

    again = make_actuator(slurm, tmp_path)  # a new daemon, same state directory
    adopted = again.launch()
    assert adopted.ok and f"adopted job {act.job_id}" in adopted.detail and again.job_id == act.job_id
    assert not any(r.argv[0] == "sbatch" for r in again.cli.history)  # never a second copy
    again.stop()  # a daemon stopping leaves the Slurm job running
    assert again.observe().running


def test_cordon_drains_with_the_ftsup_reason_requeues_once_and_never_twice(
    slurm: LocalSlurmCluster, tmp_path: Path
) -> None:
    act = make_actuator(slurm, tmp_path)
    first = act.launch()
    job_id = act.job_id
    assert job_id is not None
    victim = first.nodes[1]
    cordon = action(Verdict.CORDON_AND_RESTART, victim, incident="inc-83bf703504b5")
    result = act.apply(cordon)
    assert result.ok, result.detail
    assert result.attempt == 1 and victim not in result.nodes and len(result.nodes) == 2
    assert f"drained {victim}" in result.detail and f"requeued job {job_id}" in result.detail
    info = node_info(slurm, victim)
    assert "DRAIN" in info["state_flags"]
    assert info["reason"] == "ftsup: gpu-fallen-off-bus incident inc-83bf703504b5"
    assert restart_count(slurm, job_id) == 1
    seen = act.observe()
    assert seen.running and seen.attempt == 1 and seen.cordoned == (victim,) and victim not in seen.spares

    # The same action again, in this daemon and in a restarted one: nothing is drained or requeued twice.
    again = act.apply(cordon)
    assert again.ok and again.detail.startswith("already applied") and again.attempt == 1
    restarted = make_actuator(slurm, tmp_path)
    restarted.launch()
    replay = restarted.apply(cordon)
    assert replay.ok and replay.detail.startswith("already applied")
    assert commands(restarted, "requeue") == [] and commands(restarted, "update") == []
    assert restart_count(slurm, job_id) == 1
    assert node_info(slurm, victim)["reason_changed_at"] == info["reason_changed_at"]

    # ftsup may give back a node it drained.
    back = restarted.resume(victim)
    assert back.ok and "resumed" in back.detail
    assert "DRAIN" not in node_info(slurm, victim)["state_flags"]


def test_an_operators_drain_is_never_resumed_or_rewritten(slurm: LocalSlurmCluster, tmp_path: Path) -> None:
    slurm.run("scontrol", "update", "NodeName=node-3", "State=DRAIN", "Reason=bad DIMM, ticket 4711")
    act = make_actuator(slurm, tmp_path)
    act.launch()
    refused = act.resume("node-3")
    assert not refused.ok and "drained by someone else" in refused.detail and "bad DIMM" in refused.detail
    assert commands(act, "update") == []
    info = node_info(slurm, "node-3")
    assert "DRAIN" in info["state_flags"] and info["reason"] == "bad DIMM, ticket 4711"
    assert act.observe().cordoned == ()  # not ftsup's cordon
    assert "node-3" not in act.observe().spares
    not_drained = act.resume("node-2")
    assert not not_drained.ok and "not drained" in not_drained.detail


@pytest.mark.parametrize(
    ("node", "why"),
    [
        ("node-9", "Slurm reports no node named 'node-9'"),
        ("node-1 State=RESUME", "not a valid Slurm node name"),
        ("node-1;scancel -u root", "not a valid Slurm node name"),
        ("$(reboot)", "not a valid Slurm node name"),
    ],
)
def test_a_node_name_from_a_log_that_slurm_does_not_report_is_rejected(
    slurm: LocalSlurmCluster, tmp_path: Path, node: str, why: str
) -> None:
    act = make_actuator(slurm, tmp_path)
    act.launch()
    job_id = act.job_id
    assert job_id is not None
    result = act.apply(action(Verdict.CORDON_AND_RESTART, node))
    assert not result.ok and why in result.detail
    assert commands(act, "update") == [] and commands(act, "requeue") == []
    assert restart_count(slurm, job_id) == 0 and act.observe().running


def test_halt_cancels_with_a_recorded_reason_and_a_halted_job_stays_down(
    slurm: LocalSlurmCluster, tmp_path: Path
) -> None:
    act = make_actuator(slurm, tmp_path)
    act.launch()
    job_id = act.job_id
    result = act.apply(action(Verdict.HALT, rule="python-exception", incident="inc-77"))
    assert result.ok and result.attempt is None and "scancel" in result.detail
    jobs = json.loads(slurm.run("squeue", "--json").stdout)["jobs"]
    job = next(j for j in jobs if j["job_id"] == job_id)
    assert job["job_state"] == "CANCELLED"
    assert job["comment"] == "ftsup: halt: python-exception incident inc-77"
    assert not act.observe().running
    with pytest.raises(StartupError, match="halted"):
        make_actuator(slurm, tmp_path).launch()
    refused = act.apply(action(Verdict.RESTART, rule="gloo-timeout", incident="inc-78"))
    assert not refused.ok and "halted" in refused.detail

    # A human looked: the next launch submits a fresh job whose attempts continue the count.
    human = make_actuator(slurm, tmp_path)
    human.clear_halt()
    relaunched = human.launch()
    assert relaunched.ok and human.job_id != job_id and relaunched.attempt == 1
    assert human.observe().attempt == 1


def test_a_job_that_failed_reports_its_exit_code_per_node(slurm: LocalSlurmCluster, tmp_path: Path) -> None:
    act = make_actuator(slurm, tmp_path, script=EXIT3)
    act.launch()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        seen = act.observe()
        if seen.exit_codes and all(code is not None for _, code in seen.exit_codes):
            break
        time.sleep(0.3)
    assert seen.exit_codes and all(code == 3 for _, code in seen.exit_codes)
    assert not seen.running


def test_an_action_interrupted_by_a_daemon_crash_is_reconciled_by_observing_never_repeated(
    slurm: LocalSlurmCluster, tmp_path: Path
) -> None:
    act = make_actuator(slurm, tmp_path)
    act.launch()
    job_id = act.job_id
    assert job_id is not None
    # The previous daemon drained node-1, journaled nothing more, and died before requeueing.
    slurm.run("scontrol", "update", "NodeName=node-1", "State=DRAIN", "Reason=ftsup: xid incident inc-9")
    state = json.loads(act.state_path.read_text())
    state["actions"]["inc-9:cordon_and_restart"] = {
        "kind": "cordon_and_restart", "incident": "inc-9", "node": "node-1", "slurm_node": "node-1",
        "started_at": time.time(), "steps": {"drain": "done"}, "restart_before": 0, "job_id": job_id,
    }  # fmt: skip
    act.state_path.write_text(json.dumps(state))

    restarted = make_actuator(slurm, tmp_path)
    launched = restarted.launch()
    assert "interrupted by a daemon restart" in launched.detail and "node-1 drained" in launched.detail
    again = restarted.apply(action(Verdict.CORDON_AND_RESTART, "node-1", incident="inc-9"))
    assert not again.ok and "interrupted by a daemon restart" in again.detail
    assert commands(restarted, "requeue") == [] and restart_count(slurm, job_id) == 0


def test_observe_reads_slurm_not_memory(slurm: LocalSlurmCluster, tmp_path: Path) -> None:
    """A job requeued behind ftsup's back (an operator, or Slurm after a node failure) shows up."""
    act = make_actuator(slurm, tmp_path)
    act.launch()
    job_id = act.job_id
    assert job_id is not None
    slurm.run("scontrol", "requeue", str(job_id))
    deadline = time.monotonic() + 30
    seen = act.observe()
    while seen.nodes and time.monotonic() < deadline:  # COMPLETING, then PENDING without nodes
        time.sleep(0.2)
        seen = act.observe()
    assert seen.attempt == 1 and not seen.running and seen.nodes == () and seen.exit_codes == ()
    cli = SlurmCli(SlurmSettings(slurm_conf=slurm.slurm_conf))
    job = cli.job(job_id)
    assert job is not None and job.restart_count == 1


def test_halt_by_hold_keeps_the_job_queued_until_a_human_releases_it(
    slurm: LocalSlurmCluster, tmp_path: Path
) -> None:
    act = make_actuator(slurm, tmp_path, halt="hold")
    act.launch()
    job_id = act.job_id
    assert job_id is not None
    result = act.apply(action(Verdict.HALT, rule="python-exception", incident="inc-5"))
    assert result.ok and "requeuehold" in result.detail
    job = json.loads(slurm.run("squeue", "--json").stdout)["jobs"][-1]
    assert job["job_id"] == job_id and job["job_state"] == "PENDING" and job["state_reason"] == "JobHeldUser"
    assert job["comment"] == "ftsup: halt: python-exception incident inc-5"
    with pytest.raises(StartupError, match="halted"):
        make_actuator(slurm, tmp_path, halt="hold").launch()

    human = make_actuator(slurm, tmp_path, halt="hold")
    human.clear_halt()
    released = human.launch()  # waits out cred_expire + 1 s, then the same job runs again
    assert released.ok and f"released held job {job_id}" in released.detail and human.job_id == job_id
    assert human.observe().running and released.attempt == 1
