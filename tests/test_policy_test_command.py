"""`ftsup policy test`: promtool-style policy unit tests run through the daemon's own engine."""

from __future__ import annotations

import io
import math
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.classify.policytest import parse_series, policy_test

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_TESTS = ROOT / "tests" / "policy" / "shipped.test.yaml"

GLOO = (
    "[rank0]: RuntimeError: [/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] "
    "Timed out waiting 20000ms for recv operation to complete"
)


def run(tmp_path: Path, text: str, *extra: str) -> tuple[int, str]:
    f = tmp_path / "t.test.yaml"
    f.write_text(text)
    out = io.StringIO()
    rc = policy_test([f, *extra], out)
    return rc, out.getvalue()


def test_series_notation() -> None:
    assert parse_series("1 2 _ 3") == [1.0, 2.0, None, 3.0]
    assert parse_series("0+5x3 7x2 _x2 10-1x2") == [0.0, 5.0, 10.0, 7.0, 7.0, None, None, 10.0, 9.0]
    nan, inf = parse_series("nan -inf")
    assert nan is not None and math.isnan(nan) and inf == -math.inf
    with pytest.raises(ValueError, match="bad series token 'x3'"):
        parse_series("1 x3")


def test_shipped_policy_tests_pass_through_the_cli() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "supervisor.cli", "policy", "test", str(SHIPPED_TESTS)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "tests passed" in proc.stdout and "FAIL" not in proc.stdout


def test_a_wrong_expectation_fails_and_shows_what_happened(tmp_path: Path) -> None:
    rc, out = run(
        tmp_path,
        f"""
tests:
  - name: gloo timeout
    logs: [{{at: 1s, node: node-0, line: '{GLOO}'}}]
    expect:
      incidents: [{{rule: gloo-timeout, decision: halt}}]
""",
    )
    assert rc == 1
    assert "FAIL  gloo timeout" in out
    assert "rule=gloo-timeout decision=restart node=node-0" in out
    assert "0/1 tests passed" in out


def test_restart_budget_turns_the_fourth_failure_into_a_halt(tmp_path: Path) -> None:
    logs = "\n".join(f"      - {{at: {30 * i + 1}s, node: node-0, line: '{GLOO}'}}" for i in range(4))
    rc, out = run(
        tmp_path,
        f"""
tests:
  - name: four timeouts
    logs:
{logs}
    expect:
      incidents:
        - {{rule: gloo-timeout, decision: restart}}
        - {{rule: gloo-timeout, decision: restart}}
        - {{rule: gloo-timeout, decision: restart}}
        - {{rule: gloo-timeout, decision: halt}}
""",
    )
    assert rc == 0, out


def test_site_overrides_are_layered_over_the_shipped_packs(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "site.yaml").write_text(
        "rules:\n  - {name: gloo-timeout, override: true, action: halt, class: non_recoverable}\n"
    )
    shipped = ROOT / "policies"
    rc, out = run(
        tmp_path,
        f"""
policies: ['{shipped}', site]
tests:
  - name: our site halts on gloo timeouts
    logs: [{{at: 1s, node: node-0, line: '{GLOO}'}}]
    expect:
      incidents: [{{rule: gloo-timeout, decision: halt}}]
""",
    )
    assert rc == 0, out


def test_bad_test_files_name_file_line_and_field(tmp_path: Path) -> None:
    rc, out = run(
        tmp_path,
        """
tests:
  - name: broken
    logs:
      - {at: soon, node: node-9, line: x}
    metrics:
      - {node: node-0, metric: step, values: '1 2 what'}
    expect:
      incidents: [{rule: x, decision: explode}]
""",
    )
    assert rc == 2
    f = tmp_path / "t.test.yaml"
    assert f"{f}:5:14 tests[0].logs[0].at: invalid duration" in out
    assert f"{f}:5:26 tests[0].logs[0].node: node 'node-9' is not in nodes or spares" in out
    assert f"{f}:7:46 tests[0].metrics[0].values: bad series token 'what'" in out
    assert f"{f}:9:39 tests[0].expect.incidents[0].decision: invalid value" in out
