"""The node agent's shipper sends failure-looking lines at once and batches the rest (real moto server)."""

from __future__ import annotations

import io
import time
import uuid
from pathlib import Path

import boto3
import pytest

from supervisor.classify.policy import LogMatch, load_policies
from supervisor.config import default_policy_dir
from supervisor.vocabulary import Verdict
from trainer.jsonlog import JsonLogger
from trainer.logship import CloudWatchShipper, fallback_urgency, policy_urgency
from trainer.node_agent import _urgency

URGENT = policy_urgency([default_policy_dir()])


def test_every_acting_rule_example_is_urgent_for_the_node_agent() -> None:
    urgent = _urgency(None)  # what the node agent builds by default
    policy = load_policies([default_policy_dir()])
    missed = [
        (rule.name, line)
        for rule in policy.rules
        if isinstance(rule.match, LogMatch) and rule.action is not Verdict.IGNORE
        for line in rule.examples_match
        if not urgent(line)
    ]
    assert missed == []
    assert urgent("Traceback (most recent call last):")


def test_unloadable_policies_fall_back_to_the_coarse_pattern(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("rules: [{name: x}]\n")
    assert _urgency([tmp_path]) is fallback_urgency
    assert fallback_urgency("RuntimeError: NCCL error")
    assert not fallback_urgency('{"event": "step", "step": 3}')


def test_the_trainers_healthy_lines_are_not_urgent() -> None:
    out = io.StringIO()
    log = JsonLogger("llm-pretrain", "node-0", rank=0, local_rank=0, attempt=1, stream=out)
    log.emit("start", world_size=2, backend="gloo", device="cpu", pid=123)
    log.emit("resume", step=40, checkpoint="/ckpt/step-40")
    log.emit("step", step=41, loss=2.5, step_time_s=0.2, tokens_per_s=20480.0)
    log.emit("checkpoint", step=50, path="/ckpt/step-50", seconds=1.2)
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    assert [line for line in lines if URGENT(line) or fallback_urgency(line)] == []


def _messages(client: object, group: str) -> list[str]:
    resp = client.filter_log_events(logGroupName=group)  # type: ignore[attr-defined]
    return [e["message"] for e in resp.get("events", [])]


@pytest.mark.slow
def test_an_urgent_line_is_sent_without_waiting_for_the_batch(moto_endpoint: str) -> None:
    group = f"/ftsup/ship-{uuid.uuid4().hex[:8]}"
    client = boto3.client("logs", region_name="us-east-1", endpoint_url=moto_endpoint)
    shipper = CloudWatchShipper(group, "node-0", "us-east-1", moto_endpoint, send_interval_s=30.0)
    try:
        shipper.ship('{"event": "step", "step": 1}')
        time.sleep(2.0)
        assert _messages(client, group) == []  # healthy lines wait for the (30 s) batch
        shipper.ship("RuntimeError: CUDA error: an illegal memory access was encountered")
        deadline = time.monotonic() + 10.0
        got: list[str] = []
        while time.monotonic() < deadline and len(got) < 2:
            time.sleep(0.1)
            got = _messages(client, group)
        assert got == [
            '{"event": "step", "step": 1}',
            "RuntimeError: CUDA error: an illegal memory access was encountered",
        ]
    finally:
        shipper.close()
