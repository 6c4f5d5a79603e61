"""Real 2-node jobs (node agent + torchrun + FSDP2 on gloo) against the moto CloudWatch endpoint:
training, commit-marked checkpoints, resume, partial-checkpoint handling and metrics."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from tests.trainer.harness import Job, log_messages, metric_series
from trainer.checkpoint import COMMIT_MARKER, scan_checkpoints, step_dir

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_train_checkpoint_resume_partial_and_metrics(moto_endpoint: str, tmp_path: Path) -> None:
    job_name = f"train-{uuid.uuid4().hex[:6]}"
    group = f"/ftsup/test/{job_name}"
    common = [
        "--job",
        job_name,
        "--ckpt-every",
        "5",
        "--keep-checkpoints",
        "2",
        "--metrics-interval-s",
        "0.5",
    ]
    started = time.time()

    # 1. Fresh run to step 12: checkpoints at 5 and 10, every step logged on both nodes.
    first = Job(tmp_path, job_name, moto_endpoint, group, [*common, "--steps", "12"], tag="first")
    with first:
        assert first.wait(timeout=150) == [0, 0], [n.stderr_path.read_text() for n in first.nodes]
    for rank, node in enumerate(first.nodes):
        assert [e["rank"] for e in node.events("start")] == [rank]
        assert node.events("fresh_start")[0]["step"] == 0
        assert [e["step"] for e in node.events("step")] == list(range(1, 13))
        assert node.events("done")[0]["step"] == 12
    saved = first.node("node-0").events("checkpoint_saved")
    assert [e["step"] for e in saved] == [5, 10]
    assert not first.node("node-1").events("checkpoint_saved")  # only rank 0 commits
    complete, incomplete = scan_checkpoints(tmp_path / "checkpoints")
    assert [s for s, _ in complete] == [5, 10] and not incomplete
    assert (step_dir(tmp_path / "checkpoints", 10) / ".metadata").is_file()

    # Metrics from each node's local rank 0 landed in CloudWatch.
    end = time.time() + 5
    for node in ("node-0", "node-1"):
        steps = metric_series(moto_endpoint, job_name, node, "step", started - 5, end)
        assert steps and max(v for _, v in steps) == 12.0
        assert metric_series(moto_endpoint, job_name, node, "heartbeat", started - 5, end)
        assert metric_series(moto_endpoint, job_name, node, "loss", started - 5, end)
        assert {
            v for _, v in metric_series(moto_endpoint, job_name, node, "loss_nonfinite", started - 5, end)
        } == {0.0}
    # The agents shipped the same lines to one stream per node.
    shipped = log_messages(moto_endpoint, group, "node-1")
    local = first.node("node-1").lines()
    assert shipped == local

    # 2. A crash mid-save leaves a directory without the commit marker: it must be ignored.
    partial = step_dir(tmp_path / "checkpoints", 15)
    partial.mkdir()
    (partial / "__0_0.distcp").write_bytes(b"torn write")
    second = Job(tmp_path, job_name, moto_endpoint, group, [*common, "--steps", "17"], tag="second")
    with second:
        assert second.wait(timeout=150) == [0, 0], [n.stderr_path.read_text() for n in second.nodes]
    ignored = second.node("node-0").events("checkpoint_ignored")
    assert [(e["path"], e["reason"]) for e in ignored] == [(str(partial), "incomplete")]
    for node_first, node_second in zip(first.nodes, second.nodes, strict=True):
        resume = node_second.events("resume")
        assert [(e["step"], e["checkpoint"]) for e in resume] == [
            (10, str(step_dir(tmp_path / "checkpoints", 10)))
        ]
        steps = node_second.events("step")
        assert [e["step"] for e in steps] == list(range(11, 18))
        # Deterministic data + restored model/optimizer state: the resumed steps replay exactly.
        replay = {e["step"]: e["loss"] for e in node_first.events("step")}
        assert [e["loss"] for e in steps[:2]] == [replay[11], replay[12]]
    # Step 15 was re-saved properly and only the last two complete checkpoints are kept.
    complete, incomplete = scan_checkpoints(tmp_path / "checkpoints")
    assert [s for s, _ in complete] == [10, 15] and not incomplete
    assert (partial / COMMIT_MARKER).is_file()
