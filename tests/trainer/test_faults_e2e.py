"""Every injectable fault, on a real 2-node job, has its real effect (exit codes, tracebacks, timeouts,
NaN losses, stalled progress with a live heartbeat, Xid kernel lines in CloudWatch)."""

from __future__ import annotations

import math
import time
import uuid
from pathlib import Path

import pytest

from tests.trainer.harness import Job, last_step, log_messages, metric_series
from trainer.faults import FaultRequest, write_fault_request

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SIGKILL_SUMMARY = "Signal 9 (SIGKILL) received by PID"


def make_job(
    tmp_path: Path,
    endpoint: str,
    kind: str,
    *,
    at_step: int = 3,
    timeout_s: float = 8.0,
    cli: bool = False,
    extra: tuple[str, ...] = (),
) -> Job:
    """A 2-node job with ``kind`` aimed at node-1 / rank 1 (fault file, or the --inject switch)."""
    name = f"{kind}-{uuid.uuid4().hex[:6]}"
    args = ["--job", name, "--ckpt-every", "5", "--collective-timeout-s", str(timeout_s)]
    args += ["--metrics-interval-s", "0.5", "--step-sleep-s", "0.05", *extra]
    if cli:
        args += ["--inject", kind, "--inject-node", "node-1", "--inject-rank", "1"]
        args += ["--inject-at-step", str(at_step), "--inject-attempt", "0"]
    else:
        request = FaultRequest(f"{kind}-t", kind, "node-1", 1, at_step=at_step, attempt=None)
        write_fault_request(tmp_path / "faults", request)
    return Job(tmp_path, name, endpoint, f"/ftsup/test/{name}", args, grace_s=5.0)


def fired(job: Job, timeout: float = 90.0) -> dict[str, object]:
    node1 = job.node("node-1")
    assert job.wait_for(lambda: bool(node1.events("fault")), timeout), node1.text()[-3000:]
    return node1.events("fault")[0]


def test_code_bug_raises_a_real_traceback(moto_endpoint: str, tmp_path: Path) -> None:
    with make_job(tmp_path, moto_endpoint, "code_bug", cli=True) as job:
        fault = fired(job)
        codes = job.wait(timeout=60)
    assert fault["kind"] == "code_bug" and fault["step"] == 3
    node1 = job.node("node-1").text()
    assert codes[1] == 1 and codes[0] not in (0, None)
    assert "KeyError: 'labels'" in node1 and 'labels = batch["labels"]' in node1
    assert "trainer.train FAILED" in node1 and "exitcode  : 1 (pid:" in node1
    assert (tmp_path / "faults" / "cli-code_bug-node-1-1-3-0.fired.node-1.1").exists()


def test_sigkill_kills_the_rank_and_the_peer_fails(moto_endpoint: str, tmp_path: Path) -> None:
    with make_job(tmp_path, moto_endpoint, "sigkill") as job:
        fired(job)
        codes = job.wait(timeout=60)
    assert codes == [1, 1]
    node1 = job.node("node-1")
    assert SIGKILL_SUMMARY in node1.text() and "exitcode  : -9" in node1.text()
    assert last_step(node1) == 2  # died before finishing the fault step
    node0 = job.node("node-0").text()
    assert "trainer.train FAILED" in node0 and "gloo" in node0


def test_collective_timeout_fails_the_peer_in_a_real_collective(moto_endpoint: str, tmp_path: Path) -> None:
    with make_job(tmp_path, moto_endpoint, "collective_timeout", timeout_s=5.0) as job:
        fired(job)
        t_fault = time.monotonic()
        assert job.wait_for(lambda: job.returncodes()[0] is not None, timeout=60)
        waited = time.monotonic() - t_fault
        job.terminate(timeout=30)
    node0 = job.node("node-0").text()
    assert job.returncodes()[0] == 1
    assert "Timed out waiting 5000ms" in node0 and "all_gather" in node0
    assert waited >= 4.0  # the peer really blocked for the process-group timeout
    # The stalled rank never raised (no "[rank1]:" traceback); it just made no more progress.
    node1 = job.node("node-1")
    assert last_step(node1) == 2 and not any(line.startswith("[rank1]") for line in node1.lines())


def test_nan_poisons_the_loss_and_checkpoints_are_skipped(moto_endpoint: str, tmp_path: Path) -> None:
    started = time.time()
    with make_job(tmp_path, moto_endpoint, "nan", at_step=3, extra=("--ckpt-every", "4")) as job:
        fired(job)
        node0 = job.node("node-0")
        assert job.wait_for(lambda: bool(node0.events("checkpoint_skipped")) and last_step(node0) >= 10, 60)
        time.sleep(1.5)  # one more metrics period
        codes = job.terminate(timeout=40)
    assert all(c is not None for c in codes)
    for node in job.nodes:
        losses = {e["step"]: e["loss"] for e in node.events("step")}
        assert all(isinstance(losses[s], float) and math.isfinite(losses[s]) for s in (1, 2))
        assert all(losses[s] == "nan" for s in losses if s >= 3)  # training carries on, with NaN
    skipped = node0.events("checkpoint_skipped")
    assert skipped[0]["step"] == 4 and skipped[0]["reason"] == "non-finite loss"
    assert [e["step"] for e in node0.events("checkpoint_saved")] == []
    assert not (tmp_path / "checkpoints" / "step_00000004").exists()
    flags = metric_series(moto_endpoint, job.job, "node-0", "loss_nonfinite", started - 5, time.time() + 5)
    assert flags and flags[-1][1] == 1.0


def test_hang_stalls_progress_while_heartbeat_continues(moto_endpoint: str, tmp_path: Path) -> None:
    # Collective timeout longer than the test: a hang looks like silence, not an error.
    with make_job(tmp_path, moto_endpoint, "hang", timeout_s=120.0) as job:
        fired(job)
        t_fault = time.time()
        time.sleep(6.0)
        steps_now = [last_step(n) for n in job.nodes]
        assert job.returncodes() == [None, None]
        end = time.time() + 1
        for node in ("node-0", "node-1"):
            beats = metric_series(moto_endpoint, job.job, node, "heartbeat", t_fault + 2, end)
            assert len(beats) >= 3, beats  # the process is alive and publishing
            steps = metric_series(moto_endpoint, job.job, node, "step", t_fault + 2, end)
            assert steps and max(v for _, v in steps) <= 3.0  # but progress has stopped
        t_term = time.monotonic()
        codes = job.terminate(timeout=40)
    assert steps_now == [last_step(n) for n in job.nodes] and max(steps_now) <= 3
    assert all(c is not None for c in codes) and time.monotonic() - t_term < 30
    for node in job.nodes:  # nothing but trainer JSON lines between the stall and the supervisor's SIGTERM
        lines = node.lines()
        start = next(i for i, line in enumerate(lines) if '"event": "step"' in line)
        stop = next(i for i, line in enumerate(lines) if "death signal" in line)
        assert all(line.startswith('{"ts": ') for line in lines[start:stop]), lines[start:stop]


@pytest.mark.parametrize("code", [79, 48])
def test_xid_line_is_shipped_and_the_node_dies(moto_endpoint: str, tmp_path: Path, code: int) -> None:
    with make_job(tmp_path, moto_endpoint, f"xid{code}") as job:
        fired(job)
        codes = job.wait(timeout=60)
    assert codes == [1, 1]
    kmsg = (tmp_path / "kmsg-node-1.log").read_text().splitlines()
    assert len(kmsg) == 1 and f"NVRM: Xid (PCI:0000:3b:00): {code}, pid=" in kmsg[0]
    assert (tmp_path / "kmsg-node-0.log").read_text() == ""
    node1 = job.node("node-1")
    assert kmsg[0] in node1.lines() and SIGKILL_SUMMARY in node1.text()
    shipped = log_messages(moto_endpoint, job.log_group, "node-1")
    assert kmsg[0] in shipped
    assert shipped.index(kmsg[0]) < next(i for i, m in enumerate(shipped) if SIGKILL_SUMMARY in m)
