"""The `ftsup` command line as a user runs it: a real subprocess, real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data" / "fault_logs"


def ftsup(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisor", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def test_run_with_a_malformed_config_exits_2_naming_file_line_and_field_and_starts_nothing(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "ftsup.yaml"
    bad.write_text(
        "job:\n"
        "  name: demo\n"
        "  log_group: /ftsup/jobs/demo\n"
        "mode: act\n"
        "sources:\n"
        "  logs: {poll_interval_s: -1}\n"
        "actuator:\n"
        "  kind: local\n"
        "  local: {nodes: [node-0, 'node;rm -rf /'], run_dir: job}\n"
        "journal: {path: ftsup.db}\n"
    )
    result = ftsup("run", "-c", str(bad), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"{bad}:6:" in result.stderr and "sources.logs.poll_interval_s" in result.stderr
    assert f"{bad}:9:" in result.stderr and "actuator.local.nodes[1]" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "ftsup.db").exists()  # nothing was started or written
    assert not (tmp_path / "job").exists()


def test_run_with_a_broken_policy_exits_2_naming_the_policy_file(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "site.yaml").write_text(
        "rules:\n"
        "  - name: bad-regex\n"
        "    match: {log: 'Xid (79'}\n"
        "    signal: gpu.xid\n"
        "    class: non_recoverable\n"
        "    scope: node\n"
        "    action: cordon_and_restart\n"
        "    severity: critical\n"
        "    examples: {match: ['Xid (79']}\n"
    )
    config = tmp_path / "ftsup.yaml"
    config.write_text("job: {name: demo, log_group: /g}\npolicies: [policies]\njournal: {path: ftsup.db}\n")
    result = ftsup("run", "-c", str(config), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "site.yaml:3:" in result.stderr and "rules[0].match.log" in result.stderr
    assert not (tmp_path / "ftsup.db").exists()


def test_policy_check_accepts_the_shipped_packs() -> None:
    result = ftsup("policy", "check", str(Path(__file__).resolve().parents[2] / "policies"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok:")


def test_classify_follows_the_output_contract_on_real_trainer_logs() -> None:
    windows = []
    for kind in ("collective_timeout", "xid79", "code_bug", "sigkill"):
        lines = []
        for node in ("node-0", "node-1"):
            lines += (DATA / f"{kind}.{node}.log").read_text().splitlines()
        windows.append({"id": kind, "lines": lines})
    windows.append({"id": "healthy", "lines": ['{"ts": 1.0, "event": "step", "step": 3, "loss": 5.1}']})
    stdin = "".join(json.dumps(w) + "\n" for w in windows)
    result = ftsup("classify", "--jsonl", "-", stdin=stdin)
    assert result.returncode == 0, result.stderr
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["id"] for o in out] == [w["id"] for w in windows]
    for o in out:
        assert set(o) == {"id", "action", "scope", "recoverable", "rule", "root_cause_line"}
    by_id = {o["id"]: o for o in out}
    assert by_id["collective_timeout"]["action"] == "restart"
    assert by_id["xid79"]["action"] == "cordon_and_restart" and by_id["xid79"]["scope"] == "node"
    assert by_id["code_bug"]["action"] == "halt" and by_id["code_bug"]["recoverable"] is False
    assert by_id["sigkill"]["action"] == "restart"
    assert by_id["healthy"] == {
        "id": "healthy", "action": "ignore", "scope": "none", "recoverable": True, "rule": None,
        "root_cause_line": None,
    }  # fmt: skip
    xid_lines = windows[1]["lines"]
    assert "Xid" in xid_lines[by_id["xid79"]["root_cause_line"]]
    assert "KeyError" in windows[2]["lines"][by_id["code_bug"]["root_cause_line"]]


def test_the_shipped_example_configs_load() -> None:
    root = Path(__file__).resolve().parents[2]
    for config in (root / "deploy" / "ftsup.example.yaml", root / "supervisor" / "defaults" / "demo.yaml"):
        result = ftsup("config", "check", str(config))
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("ok:")


def test_iam_documents_grant_exactly_the_calls_the_code_makes() -> None:
    """Least privilege: the supervisor only reads (FilterLogEvents, GetMetricData)."""
    root = Path(__file__).resolve().parents[2]
    observe = json.loads((root / "deploy" / "iam" / "ftsup-observe.json").read_text())
    granted = {a for st in observe["Statement"] for a in st["Action"]}
    assert granted == {"logs:FilterLogEvents", "cloudwatch:GetMetricData"}
    source = "\n".join(p.read_text() for p in (root / "supervisor").rglob("*.py"))
    for call in ("filter_log_events", "get_metric_data"):
        assert f"{call}(" in source
    for forbidden in ("put_log_events(", "put_metric_data(", "create_log_group("):
        assert forbidden not in source


def test_the_alerts_iam_document_grants_only_publish_and_the_sns_sink_only_publishes() -> None:
    root = Path(__file__).resolve().parents[2]
    doc = json.loads((root / "deploy" / "iam" / "ftsup-alerts.json").read_text())
    assert {a for st in doc["Statement"] for a in st["Action"]} == {"sns:Publish"}
    resources = [st["Resource"] for st in doc["Statement"]]
    assert all(r.startswith("arn:aws:sns:") and "*" not in r for r in resources)
    source = "\n".join(p.read_text() for p in (root / "supervisor" / "alert").rglob("*.py"))
    assert ".publish(" in source or '"publish"' in source
    for other in (".create_topic(", ".subscribe(", ".set_topic_attributes("):
        assert other not in source


def test_a_reader_that_goes_away_is_not_an_error(tmp_path: Path) -> None:
    """`ftsup classify ... | head -1`: the closed pipe ends the command quietly, exit 0 (the output,
    megabytes, cannot fit in the pipe's buffer, so the write after the close really fails)."""
    windows = tmp_path / "windows.jsonl"
    xid = "NVRM: Xid (PCI:0000:3b:00): 79, pid=1, GPU has fallen off the bus."
    line = json.dumps({"id": "w", "lines": [xid]})
    windows.write_text((line + "\n") * 20_000)
    cmd = [sys.executable, "-m", "supervisor.cli", "classify", "--jsonl", str(windows)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert b"cordon_and_restart" in proc.stdout.readline()
    proc.stdout.close()  # the reader goes away after one line
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0, err.decode()
    assert b"Traceback" not in err
