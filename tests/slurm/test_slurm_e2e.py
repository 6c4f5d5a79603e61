"""End to end on a real Slurm: the trainer as a batch job (deploy/slurm/ftsup-train.sbatch) on two of the
cluster's four nodes, its logs and metrics shipped to the moto server per node, and the production
daemon (`daemon.build` from a config file, `actuator.kind: slurm`) watching it.

A GPU falls off the bus on one node (the trainer's real xid79 fault: a kernel Xid line, then the node's
ranks die). ftsup must drain that node with its "ftsup:" reason, requeue the job, and the job must run
again on other nodes and resume from its checkpoint. A second daemon started on the same state must
adopt the running job and neither drain nor requeue again.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from supervisor.config import Config, load_config
from supervisor.daemon import build
from supervisor.demo import (
    handled_more_than,
    inject,
    newest_decided,
    training_past_checkpoint,
    training_resumed,
    wait_for,
)
from supervisor.journal import Journal
from supervisor.vocabulary import Verdict
from tests.conftest import free_port
from tests.integration.support import FAST_TRAINER, shipped_policies_without_budgets
from tests.slurm.cluster import LocalSlurmCluster

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
SBATCH = REPO / "deploy" / "slurm" / "ftsup-train.sbatch"


def write_slurm_config(tmp: Path, endpoint: str, cluster: LocalSlurmCluster) -> Config:
    """A real config file for a Slurm-run job against this test's moto server and cluster."""
    overlay = tmp / "site-policies"
    overlay.mkdir(exist_ok=True)
    budgets = "budgets: {restart: {max: 5, within: 1h, backoff: 1s, backoff_max: 2s}}\n"
    (overlay / "budgets.yaml").write_text(budgets)
    run_dir = tmp / "run"
    name = f"slurm-e2e-{os.getpid()}-{int(time.time())}"
    doc: dict[str, Any] = {
        "job": {"name": name, "log_group": f"/ftsup/test/{name}"},
        "mode": "act",
        "aws": {"endpoint_url": endpoint},
        "sources": {
            "logs": {"poll_interval_s": 1.0, "overlap_s": 10.0},
            "metrics": {"poll_interval_s": 1.0, "period_s": 1, "lookback_s": 30.0},
        },
        "policies": [*shipped_policies_without_budgets(), str(overlay)],
        "incidents": {"settle_s": 4.0},
        "actuator": {
            "kind": "slurm",
            "slurm": {
                "script": str(SBATCH),
                "script_args": FAST_TRAINER,
                "sbatch_args": ["--nodes=2"],
                "slurm_conf": str(cluster.slurm_conf),
                "state_dir": "state",
                "command_timeout_s": 15,
                "start_timeout_s": 90,
                "env": {
                    "FTSUP_RUN_DIR": str(run_dir),
                    "FTSUP_PYTHON": sys.executable,
                    "FTSUP_LOOPBACK": "1",  # every node is this host: 127.0.0.<node index + 1>
                    "FTSUP_RDZV_HOST": "127.0.0.1",
                    "FTSUP_RDZV_PORT": str(free_port()),
                    "FTSUP_KMSG_FILE": str(run_dir / "nodes" / "%n" / "kmsg.log"),
                    "PYTHONPATH": str(REPO),
                },
            },
        },
        "journal": {"path": "ftsup.db"},
        "alerts": {"log": True},
        "metrics_server": {"port": None},
    }
    path = tmp / "ftsup.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return load_config(path)


def slurm_node(cluster: LocalSlurmCluster, name: str) -> dict[str, Any]:
    nodes = json.loads(cluster.run("sinfo", "--json").stdout)["nodes"]
    return next(n for n in nodes if n["name"] == name)  # type: ignore[no-any-return]


def slurm_job(cluster: LocalSlurmCluster, job_id: int) -> dict[str, Any]:
    jobs = json.loads(cluster.run("squeue", "--json").stdout)["jobs"]
    return next(j for j in jobs if j["job_id"] == job_id)  # type: ignore[no-any-return]


def trainer_events(run_dir: Path, node: str, attempt: int) -> list[dict[str, Any]]:
    path = run_dir / "nodes" / node / f"attempt-{attempt}.log"
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.startswith('{"ts": ')]


def test_xid_on_a_node_drains_it_requeues_the_job_and_a_second_daemon_does_nothing_twice(
    slurm: LocalSlurmCluster, moto_endpoint: str, tmp_path: Path
) -> None:
    config = write_slurm_config(tmp_path, moto_endpoint, slurm)
    run_dir = tmp_path / "run"
    daemon = build(config)
    try:
        daemon.start(launch=True)
        first = daemon.actuator.observe()
        assert first.running and len(first.nodes) == 2 and first.attempt == 0
        job_id = json.loads((tmp_path / "state" / "actuator-state.json").read_text())["job_id"]
        snap = wait_for(daemon, "training past a checkpoint", training_past_checkpoint(5), 150)
        victim = first.nodes[1]
        inject(run_dir, "xid-1", "xid79", victim, snap.attempt)

        snap = wait_for(daemon, "the Xid to be handled", handled_more_than(0), 150)
        handled = newest_decided(snap, 0)
        assert handled is not None
        assert handled.incident.root_cause.rule == "gpu-fallen-off-bus"
        assert handled.decision.verdict is Verdict.CORDON_AND_RESTART and handled.decision.node == victim
        assert handled.result is not None and handled.result.ok, handled.result
        node = slurm_node(slurm, victim)
        assert "DRAIN" in node["state_flags"]
        assert node["reason"] == f"ftsup: gpu-fallen-off-bus incident {handled.incident.incident_id}"
        assert slurm_job(slurm, job_id)["restart_cnt"] == 1

        snap = wait_for(daemon, "training to resume after the requeue", training_resumed, 150)
        second = daemon.actuator.observe()
        assert second.running and second.attempt == 1
        assert victim not in second.nodes and len(second.nodes) == 2
        assert second.cordoned == (victim,)
        assert snap.resume_step is not None and snap.resume_step >= 5 and snap.resume_step % 5 == 0
        # The trainer itself says where it resumed from, on the nodes of the new run.
        events = [e for n in second.nodes for e in trainer_events(run_dir, n, 1)]
        resumed = [e for e in events if e.get("event") == "resume"]
        assert resumed and all(e["step"] == snap.resume_step for e in resumed)
        assert any(e.get("event") == "fault" for e in trainer_events(run_dir, victim, 0))
    finally:
        daemon.shutdown(stop_job=True)  # the Slurm job is not the daemon's to stop

    assert slurm_job(slurm, job_id)["job_state"] == "RUNNING"
    reason_changed_at = slurm_node(slurm, victim)["reason_changed_at"]

    again = build(config)
    try:
        again.start(launch=True)
        adopted = again.actuator.observe()
        assert adopted.attempt == 1 and adopted.nodes == second.nodes
        time.sleep(12)  # several polls, and longer than the settle window: time to repeat itself
        snap = again.engine.snapshot()
        assert snap.handled == () and not snap.acting and not snap.halted
        assert snap.last_step is not None  # it is watching the running attempt
    finally:
        again.shutdown(stop_job=True)
    job = slurm_job(slurm, job_id)
    assert job["restart_cnt"] == 1 and job["job_state"] == "RUNNING"
    assert slurm_node(slurm, victim)["reason_changed_at"] == reason_changed_at
    journal = Journal(Path(config.journal.path))
    try:
        rows = journal.actions()
        assert [r.action.kind for r in rows] == [Verdict.CORDON_AND_RESTART]
        assert [a.attempt for a in journal.attempts()] == [0, 1]
    finally:
        journal.close()
