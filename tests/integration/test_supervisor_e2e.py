"""The real path, end to end: trainer (torchrun, FSDP2, gloo) -> watchtower -> moto server over HTTP ->
CloudWatch sources -> classify -> incidents -> decide -> local actuator -> journal -> timeline.

Each test launches a real 2-node job and injects real faults; nothing in between is mocked.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from supervisor.daemon import Daemon, build
from supervisor.demo import (
    handled_more_than,
    inject,
    newest_decided,
    run_demo,
    training_past_checkpoint,
    training_resumed,
    wait_for,
)
from supervisor.engine import Handled
from supervisor.journal import Journal
from supervisor.local_alertmanager import alertmanager_binary
from supervisor.vocabulary import Verdict
from tests.integration.support import WebhookReceiver, write_config

pytestmark = [pytest.mark.slow, pytest.mark.integration]


_past_checkpoint = training_past_checkpoint(5)  # the tests' trainer checkpoints every 5 steps


def _inject_and_wait(
    daemon: Daemon, run_dir: Path, fault_id: str, kind: str, node: str, timeout: float = 150
) -> tuple[int, Handled]:
    snap = wait_for(daemon, "training past a checkpoint", _past_checkpoint, 180)
    seen, step_at_fault = len(snap.handled), snap.last_step or 0
    # Every rank must stall at the same step for a job-wide fault: name a step safely ahead of the job
    # (what the supervisor sees lags the job by a few seconds, about 10-15 steps here).
    at_step = step_at_fault + 30 if node == "*" else None
    inject(run_dir, fault_id, kind, node, snap.attempt, at_step=at_step)
    snap = wait_for(daemon, f"{kind} to be handled", handled_more_than(seen), timeout)
    handled = newest_decided(snap, seen)
    assert handled is not None
    return step_at_fault, handled


def test_demo_scenario_restart_cordon_halt_and_the_journal_agrees(tmp_path: Path) -> None:
    """`ftsup demo` itself: collective timeout -> restart, Xid 79 -> cordon + spare, code bug -> halt."""
    out = io.StringIO()
    code = run_demo(out=out, workdir=tmp_path)
    text = out.getvalue()
    assert code == 0, text

    journal = Journal(tmp_path / "ftsup.db")
    try:
        incidents = [row.incident for row in journal.incidents()]
        decisions = {row.decision.incident_id: row.decision for row in journal.decisions()}
        actions = journal.actions()
        attempts = journal.attempts()
    finally:
        journal.close()
    verdicts = [decisions[i.incident_id].verdict for i in incidents]
    assert verdicts == [Verdict.RESTART, Verdict.CORDON_AND_RESTART, Verdict.HALT]
    # The demo's incidents reached a real Alertmanager, one alert each (scripts/install-system-deps.sh
    # installs it; without it the demo says so, and under FTSUP_NO_SKIPS CI must have it).
    if alertmanager_binary() is not None or os.environ.get("FTSUP_NO_SKIPS") == "1":
        assert text.count("Alertmanager: the incident's alert is ") == 3, text
        with Journal(tmp_path / "ftsup.db") as journal:
            delivered = {r.alert_id for r in journal.outbox("alertmanager") if r.delivered_at is not None}
        ids = [i.incident_id for i in incidents]
        assert {f"{ids[0]}:firing", f"{ids[0]}:resolved", f"{ids[1]}:firing", f"{ids[2]}:firing"} <= delivered
    assert [i.root_cause.rule for i in incidents] == [
        "gloo-timeout",
        "gpu-fallen-off-bus",
        "python-exception",
    ]
    assert incidents[1].root_cause.node == "node-1"
    assert "Xid" in incidents[1].root_cause.evidence
    assert "KeyError" in incidents[2].root_cause.evidence
    assert all(a.result is not None and a.result.ok for a in actions)
    assert len(actions) == 3
    # Every recoverable fault was followed by an attempt that resumed from a real checkpoint.
    by_number = {a.attempt: a for a in attempts}
    assert by_number[1].resume_step and by_number[1].resume_step > 0
    assert by_number[2].resume_step and by_number[2].resume_step > 0
    assert by_number[2].nodes == ("node-0", "node-2")  # the spare took node-1's place

    timeline = subprocess.run(
        [sys.executable, "-m", "supervisor", "timeline", "--journal", str(tmp_path / "ftsup.db"), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    entries = json.loads(timeline.stdout)["incidents"]
    assert [e["verdict"] for e in entries] == ["restart", "cordon_and_restart", "halt"]
    assert entries[0]["time_lost_s"] is not None and entries[0]["time_lost_s"] > 0


def test_sigkill_nan_and_hang_are_restarted_from_a_checkpoint(tmp_path: Path, moto_endpoint: str) -> None:
    """A rank SIGKILLed (log: torchrun's summary), a NaN loss (metrics and logs), and a silent hang
    (metrics only: the step stops advancing while the heartbeat goes on) each lead to a restart."""
    overrides = "rules:\n  - name: no-step-progress\n    override: true\n    match: {stalled_for: 20s}\n"
    receiver = WebhookReceiver()
    config = write_config(tmp_path, moto_endpoint, overrides=overrides, webhook=receiver.url)
    run_dir = Path(config.actuator.local.run_dir)
    daemon = build(config)
    try:
        daemon.start(launch=True)
        results = {}
        for kind, node in (("sigkill", "node-1"), ("nan", "node-0"), ("hang", "*")):
            step_at_fault, handled = _inject_and_wait(daemon, run_dir, f"t-{kind}", kind, node)
            results[kind] = handled
            assert handled.decision.verdict is Verdict.RESTART, (kind, handled.decision.reason)
            assert handled.result is not None and handled.result.ok
            snap = wait_for(daemon, f"resume after {kind}", training_resumed, 150)
            failed_attempt = next(a for a in daemon.journal.attempts() if a.attempt == snap.attempt - 1)
            # Resumed from a real checkpoint (every 5 steps), no later than the last step before the fault.
            assert snap.resume_step is not None and snap.resume_step > 0 and snap.resume_step % 5 == 0
            assert failed_attempt.last_step is not None and snap.resume_step <= failed_attempt.last_step
            assert failed_attempt.last_step >= step_at_fault
        # After the NaN the job went back to a checkpoint saved before the poisoning: losses are finite.
        after_nan = snap.attempt - 1  # sigkill -> attempt 1, nan -> attempt 2, hang -> attempt 3
        log = (run_dir / "nodes" / "node-0" / f"attempt-{after_nan}.log").read_text()
        losses = [json.loads(line)["loss"] for line in log.splitlines() if '"event": "step"' in line]
        assert losses and all(isinstance(v, float) for v in losses)
        assert results["sigkill"].incident.root_cause.rule == "rank-sigkilled"
        assert results["nan"].incident.root_cause.rule in {"loss-not-finite", "loss-not-finite-log"}
        assert results["hang"].incident.root_cause.rule == "no-step-progress"
        # Prometheus sees what happened.
        assert daemon.metrics_port
        with urllib.request.urlopen(f"http://127.0.0.1:{daemon.metrics_port}/metrics", timeout=10) as r:
            body = r.read().decode()
        assert 'ftsup_actions_total{kind="restart",result="ok"} 3.0' in body
        assert 'ftsup_source_up{source="logs"} 1.0' in body
    finally:
        daemon.shutdown(stop_job=True)
        receiver.close()
    # One firing alert per incident (not one per rank or per line), each resolved once training stepped again.
    firing = [a for a in receiver.received if a["status"] == "firing"]
    resolved = [a for a in receiver.received if a["status"] == "resolved"]
    incident_ids = [h.incident.incident_id for h in results.values()]
    assert [a["incident_id"] for a in firing] == incident_ids
    assert sorted(a["incident_id"] for a in resolved) == sorted(incident_ids)
    assert firing[0]["labels"]["rule"] == "rank-sigkilled" and firing[0]["labels"]["verdict"] == "restart"
    assert firing[0]["evidence"] and "SIGKILL" in " ".join(firing[0]["evidence"])


def test_observe_mode_journals_the_decision_and_touches_nothing(tmp_path: Path, moto_endpoint: str) -> None:
    config = write_config(tmp_path, moto_endpoint, mode="observe")
    run_dir = Path(config.actuator.local.run_dir)
    daemon = build(config)
    try:
        daemon.start(launch=True)
        assert daemon.actuator is not None
        launched = daemon.actuator.observe()
        snap = wait_for(daemon, "training past a checkpoint", _past_checkpoint, 180)
        inject(run_dir, "obs-1", "code_bug", "node-1", snap.attempt)
        snap = wait_for(daemon, "the decision", lambda s: len(s.handled) >= 1, 120)
        decision = snap.handled[0].decision
        assert decision.verdict is Verdict.HALT and decision.page
        assert snap.handled[0].result is None
        seen = daemon.actuator.observe()
        assert seen.attempt == launched.attempt  # nothing was relaunched
        assert seen.nodes == launched.nodes
        actions = daemon.journal.actions()
        assert actions == []
    finally:
        daemon.shutdown(stop_job=True)


def test_ftsup_run_supervises_a_job_to_completion_and_exits_0(tmp_path: Path, moto_endpoint: str) -> None:
    """`ftsup run -c CONFIG` as a process: launches the job, watches it, exits when it finishes."""
    config = write_config(tmp_path, moto_endpoint, trainer_args=("--steps", "12"))
    result = subprocess.run(
        [sys.executable, "-m", "supervisor", "run", "-c", str(tmp_path / "ftsup.yaml")],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "job finished" in result.stdout + result.stderr
    journal = Journal(Path(config.journal.path))
    try:
        assert journal.incidents() == []
        (attempt,) = journal.attempts()
        assert attempt.last_step == 12 and attempt.first_step_at is not None
        assert journal.events_seen("logs") > 0 and journal.events_seen("metrics") > 0
    finally:
        journal.close()


def test_a_job_launched_elsewhere_is_watched_in_observe_mode_and_never_touched(
    tmp_path: Path, moto_endpoint: str
) -> None:
    """`actuator.kind: none`: someone else runs the job; ftsup reads CloudWatch and says what it would do."""
    from supervisor.config import load_config
    from tests.trainer.harness import Job

    name = "external-job"
    config_path = tmp_path / "ftsup.yaml"
    config_path.write_text(
        f"job: {{name: {name}, log_group: /ftsup/test/{name}}}\n"
        f"aws: {{endpoint_url: '{moto_endpoint}'}}\n"
        "sources:\n  logs: {poll_interval_s: 1.0, overlap_s: 10.0}\n"
        "  metrics: {poll_interval_s: 1.0, period_s: 1, lookback_s: 30.0}\n"
        "incidents: {settle_s: 4.0}\n"
        "actuator: {kind: none, none: {nodes: [node-0, node-1]}}\n"
        "journal: {path: ftsup.db}\nmetrics_server: {port: null}\n"
    )
    config = load_config(config_path)
    args = [
        "--ckpt-every",
        "5",
        "--step-sleep-s",
        "0.2",
        "--metrics-interval-s",
        "1",
        "--collective-timeout-s",
        "15",
    ]
    with Job(tmp_path / "job", name, moto_endpoint, f"/ftsup/test/{name}", args, grace_s=5.0):
        daemon = build(config)
        try:
            daemon.start(launch=True)
            snap = wait_for(daemon, "training seen through CloudWatch", _past_checkpoint, 180)
            inject(tmp_path / "job", "ext-1", "xid79", "node-1", 0)
            snap = wait_for(daemon, "the decision", lambda s: len(s.handled) >= 1, 120)
            (handled,) = snap.handled
            # The rule wants node-1 cordoned; with no spare known for a job launched elsewhere, the decision
            # is to page a human rather than shrink the job.
            assert handled.incident.root_cause.rule == "gpu-fallen-off-bus"
            assert handled.incident.root_cause.node == "node-1"
            assert handled.decision.rule_verdict is Verdict.CORDON_AND_RESTART
            assert handled.decision.verdict is Verdict.HALT and handled.decision.page
            assert "spare" in handled.decision.reason
            assert handled.result is None
            assert daemon.journal.actions() == []  # no intent was even journaled
        finally:
            daemon.shutdown(stop_job=True)


def test_act_mode_without_an_actuator_is_a_config_error(tmp_path: Path) -> None:
    from supervisor.config import load_config
    from supervisor.errors import ConfigError

    path = tmp_path / "ftsup.yaml"
    path.write_text("job: {name: j, log_group: /g}\nmode: act\nactuator: {kind: none, none: {nodes: [a]}}\n")
    with pytest.raises(ConfigError, match="mode act needs an actuator"):
        load_config(path)
