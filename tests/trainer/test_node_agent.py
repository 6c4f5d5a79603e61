"""The node agent as a real process, wrapping small shell/Python children (no torchrun)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.trainer.harness import REPO_ROOT, log_messages

pytestmark = pytest.mark.slow


def agent_cmd(tmp_path: Path, *extra: str, node: str = "node-a") -> list[str]:
    return [
        sys.executable,
        "-m",
        "trainer.node_agent",
        "--job",
        "jobx",
        "--node",
        node,
        "--log-group",
        "/ftsup/test-agent",
        "--kmsg-file",
        str(tmp_path / "kmsg.log"),
        "--log-file",
        str(tmp_path / "agent.log"),
        *extra,
    ]


def wait_for_text(path: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and text in path.read_text()):
        assert time.monotonic() < deadline, f"{text!r} never appeared in {path}"
        time.sleep(0.1)


def test_exit_code_env_and_merged_output(tmp_path: Path) -> None:
    child = (
        "import os, sys; print('out', os.environ['FTSUP_NODE'], os.environ['FTSUP_JOB'], "
        "os.environ['FTSUP_KMSG_FILE'], os.environ['PYTHONUNBUFFERED']); "
        "sys.stderr.write('err %s %(message)s {}\\n'); sys.exit(3)"
    )
    proc = subprocess.run(
        [*agent_cmd(tmp_path, "--no-cloudwatch"), "--", sys.executable, "-c", child],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 3
    lines = (tmp_path / "agent.log").read_text().splitlines()
    assert lines == [f"out node-a jobx {tmp_path / 'kmsg.log'} 1", "err %s %(message)s {}"]
    assert proc.stdout.splitlines() == lines


def test_sigterm_then_sigkill_to_child_group(tmp_path: Path) -> None:
    # The child ignores SIGTERM, so only the SIGKILL after --grace-s ends it: exit status 128+9.
    child = "trap '' TERM; echo ready; while :; do sleep 0.1; done"
    agent = subprocess.Popen(
        [*agent_cmd(tmp_path, "--no-cloudwatch", "--grace-s", "1"), "--", "sh", "-c", child],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for_text(tmp_path / "agent.log", "ready", timeout=30)
        started = time.monotonic()
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=20) == 128 + signal.SIGKILL
        assert time.monotonic() - started >= 1.0
    finally:
        agent.kill()


def test_ships_child_output_and_new_kmsg_lines_to_cloudwatch(moto_endpoint: str, tmp_path: Path) -> None:
    group = f"/ftsup/test-agent-{uuid.uuid4().hex[:8]}"
    (tmp_path / "kmsg.log").write_text("[    0.100000] boot line from before the agent: not shipped\n")
    child = (
        "import os, time; print('hello from the job %d %s'); time.sleep(0.5); "
        "open(os.environ['FTSUP_KMSG_FILE'], 'a').write('[ 4242.000001] NVRM: test kernel line\\n'); "
        "time.sleep(1.0); print('bye', os.environ['FTSUP_CW_ENDPOINT'])"
    )
    cmd = agent_cmd(tmp_path, "--endpoint-url", moto_endpoint, node="node-z")
    cmd[cmd.index("--log-group") + 1] = group
    proc = subprocess.run([*cmd, "--", sys.executable, "-c", child], cwd=REPO_ROOT, timeout=90)
    assert proc.returncode == 0
    shipped = log_messages(moto_endpoint, group, "node-z")
    assert shipped == (tmp_path / "agent.log").read_text().splitlines()
    assert shipped == [
        "hello from the job %d %s",
        "[ 4242.000001] NVRM: test kernel line",
        f"bye {moto_endpoint}",
    ]
