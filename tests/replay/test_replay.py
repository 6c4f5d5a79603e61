"""`ftsup replay` against a real moto server: real fault logs written with boto3 put_log_events into
one stream per node, read back page by page through the daemon's CloudWatch Logs source, decided by
the daemon's engine in observe mode on a clock that follows the events.

Hazards under test: a replay that reports a fault outside its window (or misses one inside it), a
`--policies` override that is silently ignored, a replay that touches production state (the
config's journal), pagination that loses or repeats lines.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from supervisor.cli import main
from supervisor.config import Config, load_config
from supervisor.replay import ReplayError, parse_when, replay
from supervisor.report.timefmt import iso_utc
from tests.replay.faults import put_fault_logs

pytestmark = pytest.mark.integration

SITE_OVERRIDE = """\
rules:
  - name: gpu-fallen-off-bus
    override: true
    action: halt
  - name: gpu-fallen-off-bus-text
    override: true
    action: halt
"""


@pytest.fixture(scope="module")
def shipped(moto_endpoint: str) -> Iterator[dict[str, Any]]:
    """One log group holding two real faults, 10 minutes apart, an hour ago: Xid 79 on node-1, then
    a KeyError in user code."""
    group = f"/ftsup/replay/{uuid.uuid4().hex[:8]}"
    client = boto3.client("logs", endpoint_url=moto_endpoint, region_name="us-east-1")
    base = float(int(time.time()) - 3600)
    xid = put_fault_logs(client, group, "xid79", base)
    bug = put_fault_logs(client, group, "code_bug", base + 600)
    yield {"group": group, "endpoint": moto_endpoint, "xid": xid, "bug": bug, "base": base}


def write_config(tmp: Path, shipped: dict[str, Any], **extra: Any) -> Config:
    doc: dict[str, Any] = {
        "job": {"name": "llm-replay", "log_group": shipped["group"]},
        "aws": {"endpoint_url": shipped["endpoint"], "max_attempts": 2, "retry_budget_s": 5},
        "sources": {"metrics": {"enabled": False}},
        "incidents": {"settle_s": 5},
        "actuator": {"kind": "local", "local": {"nodes": ["node-0", "node-1"], "spares": ["node-2"]}},
        "journal": {"path": "production.db"},
        "metrics_server": None,
        **extra,
    }
    path = tmp / "ftsup.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return load_config(path)


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_replay_names_each_fault_in_order_with_its_decision(tmp_path: Path, shipped: dict[str, Any]) -> None:
    config = write_config(tmp_path, shipped)
    started = time.monotonic()
    report = replay(config, shipped["base"] - 60, shipped["bug"][1] + 60, page_limit=100)
    elapsed = time.monotonic() - started
    got = [(i.rule, i.node, i.verdict.value, i.cordon) for i in report.incidents]
    assert got == [
        ("gpu-fallen-off-bus", "node-1", "cordon_and_restart", "node-1"),
        ("python-exception", "node-1", "halt", None),
    ], got
    xid, bug = report.incidents
    assert "Xid (PCI:0000:3b:00): 79" in xid.evidence
    assert "KeyError: 'labels'" in bug.evidence
    assert shipped["xid"][0] <= xid.opened_at <= shipped["xid"][1]
    assert shipped["bug"][0] <= bug.opened_at <= shipped["bug"][1]
    # The clock followed the events: decided within the settle window, not at wall time.
    assert 0 <= xid.decided_at - xid.opened_at <= 6
    assert 0 <= bug.decided_at - bug.opened_at <= 6
    # Every line was read once, over several pages (100 events each) of one scan.
    lines = sum(
        1
        for kind in ("xid79", "code_bug")
        for node in ("node-0", "node-1")
        for line in (Path(__file__).parents[1] / "data" / "fault_logs" / f"{kind}.{node}.log")
        .read_text()
        .splitlines()
        if line
    )
    assert report.log_events == lines
    assert report.log_calls >= lines // 100
    assert report.streams == ("node-0", "node-1")
    assert not (tmp_path / "production.db").exists()  # production state untouched
    assert elapsed < 30


def test_a_window_without_the_faults_reports_nothing(tmp_path: Path, shipped: dict[str, Any]) -> None:
    config = write_config(tmp_path, shipped)
    report = replay(config, shipped["base"] - 1800, shipped["base"] - 60)
    assert report.incidents == ()
    assert report.log_events == 0
    # Between the two faults: the Xid's lines are before it, the KeyError's after it.
    between = replay(config, shipped["xid"][1] + 120, shipped["bug"][0] - 1)
    assert between.incidents == ()


def test_the_cli_prints_the_incidents_and_a_summary(tmp_path: Path, shipped: dict[str, Any]) -> None:
    write_config(tmp_path, shipped)
    start, end = iso_utc(shipped["base"] - 60), iso_utc(shipped["xid"][1] + 60)
    code, out, err = run_cli("replay", "-c", str(tmp_path / "ftsup.yaml"), "--from", start, "--to", end)
    assert code == 0, err
    assert "1. " in out and "gpu-fallen-off-bus on node-1  -> cordon_and_restart node-1" in out
    assert "evidence: " in out and "GPU has fallen off the bus" in out
    assert "summary: 1 incident; 1 cordon_and_restart" in out
    assert "python-exception" not in out  # outside the window

    code, out, err = run_cli(
        "replay", "-c", str(tmp_path / "ftsup.yaml"), "--from", "-2h", "--to", "now", "--json"
    )
    assert code == 0, err
    doc = json.loads(out)
    assert [(i["rule"], i["decision"]) for i in doc["incidents"]] == [
        ("gpu-fallen-off-bus", "cordon_and_restart"),
        ("python-exception", "halt"),
    ]
    assert doc["summary"]["decision"] == {"cordon_and_restart": 1, "halt": 1}
    assert doc["mode"] == "observe"


def test_a_site_override_changes_the_decision(tmp_path: Path, shipped: dict[str, Any]) -> None:
    """Trying a policy change on past failures: the shipped packs plus a site overlay."""
    from supervisor.config import default_policy_dir

    site = tmp_path / "site"
    site.mkdir()
    (site / "gpu.yaml").write_text(SITE_OVERRIDE)
    write_config(tmp_path, shipped)
    window = ("--from", iso_utc(shipped["base"] - 60), "--to", iso_utc(shipped["xid"][1] + 60))
    code, out, err = run_cli("replay", "-c", str(tmp_path / "ftsup.yaml"), *window, "--json")
    assert code == 0, err
    assert [i["decision"] for i in json.loads(out)["incidents"]] == ["cordon_and_restart"]
    code, out, err = run_cli(
        "replay", "-c", str(tmp_path / "ftsup.yaml"), *window, "--json",
        "--policies", str(default_policy_dir()), str(site),
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    assert [(i["rule"], i["decision"]) for i in doc["incidents"]] == [("gpu-fallen-off-bus", "halt")]
    assert doc["policies"] == [str(default_policy_dir()), str(site)]


def test_bad_times_are_refused_before_anything_is_read(tmp_path: Path, shipped: dict[str, Any]) -> None:
    write_config(tmp_path, shipped)
    cfg = str(tmp_path / "ftsup.yaml")
    code, _, err = run_cli("replay", "-c", cfg, "--from", "last tuesday")
    assert code == 2 and "cannot read time 'last tuesday'" in err
    code, _, err = run_cli("replay", "-c", cfg, "--from", "now", "--to", "-1h")
    assert code == 2 and "empty window" in err


def test_an_unreachable_endpoint_is_an_error_not_an_empty_report(
    tmp_path: Path, shipped: dict[str, Any]
) -> None:
    from tests.conftest import free_port

    dead = {**shipped, "endpoint": f"http://127.0.0.1:{free_port()}"}
    config = write_config(tmp_path, dead)
    with pytest.raises(ReplayError, match="cannot read log group"):
        replay(config, shipped["base"] - 60, shipped["base"] + 60)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", 1_800_000_000.0),
        ("-2h", 1_800_000_000.0 - 7200),
        ("now-30m", 1_800_000_000.0 - 1800),
        ("-7d", 1_800_000_000.0 - 7 * 86400),
        ("+90s", 1_800_000_090.0),
        ("2027-01-15T08:00:00Z", 1_800_000_000.0),
        ("2027-01-15T09:00:00+01:00", 1_800_000_000.0),
        ("2027-01-15T08:00:00", 1_800_000_000.0),  # no offset: UTC
        ("2027-01-15 08:00", 1_800_000_000.0),
        ("1800000000", 1_800_000_000.0),
    ],
)
def test_parse_when(text: str, expected: float) -> None:
    assert parse_when(text, 1_800_000_000.0) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["yesterday", "-2x", "2027-13-01T00:00:00Z", ""])
def test_parse_when_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="cannot read time"):
        parse_when(text, 1_800_000_000.0)


def test_metrics_are_replayed_from_get_metric_data(tmp_path: Path, shipped: dict[str, Any]) -> None:
    """With metrics enabled, the window's datapoints are read (in chunks) and fed on the same clock:
    nodes that kept their heartbeat are not reported silent, and the Xid is still the one incident."""
    from datetime import UTC, datetime

    name = f"llm-metrics-{uuid.uuid4().hex[:6]}"
    cw = boto3.client("cloudwatch", endpoint_url=shipped["endpoint"], region_name="us-east-1")
    start, end = shipped["base"] - 90, shipped["xid"][1] + 30
    data = [
        {
            "MetricName": "heartbeat",
            "Dimensions": [{"Name": "Job", "Value": name}, {"Name": "Node", "Value": node}],
            "Timestamp": datetime.fromtimestamp(start + k, tz=UTC),
            "Value": 1.0,
            "StorageResolution": 1,
        }
        for node in ("node-0", "node-1")
        for k in range(int(end - start) + 1)
    ]
    for i in range(0, len(data), 500):
        cw.put_metric_data(Namespace="ftsup/Trainer", MetricData=data[i : i + 500])  # type: ignore[arg-type]
    config = write_config(
        tmp_path,
        shipped,
        sources={"metrics": {"enabled": True, "period_s": 1, "stats": {"heartbeat": "Maximum"}}},
    )
    config = dataclasses.replace(config, job=dataclasses.replace(config.job, name=name))
    report = replay(config, start, end, metric_chunk_s=60)
    assert report.metric_samples >= 2 * (end - start - 2)
    assert report.metric_calls >= 3  # 60-second chunks
    assert [(i.rule, i.verdict.value) for i in report.incidents] == [
        ("gpu-fallen-off-bus", "cordon_and_restart")
    ]
