"""Launches real multi-node trainer jobs on 127.0.0.1: one node agent + torchrun per "node".

Each node is ``python -m trainer.node_agent ... -- python -m torch.distributed.run --nnodes N
--nproc-per-node 1 --rdzv-backend c10d ... -m trainer.train ...``, node 0 hosting the c10d store.
Used by the tests and by :mod:`tests.trainer.make_fault_logs`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse_events(lines: Sequence[str]) -> list[dict[str, Any]]:
    """The trainer's JSON event lines among raw log lines (everything else is skipped)."""
    out: list[dict[str, Any]] = []
    for line in lines:
        if line.startswith('{"ts": '):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


@dataclass
class Node:
    """One simulated node: its agent process and the files it writes."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    kmsg_path: Path
    stderr_path: Path

    def lines(self) -> list[str]:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def events(self, event: str | None = None) -> list[dict[str, Any]]:
        evs = parse_events(self.lines())
        return evs if event is None else [e for e in evs if e["event"] == event]

    def text(self) -> str:
        return "\n".join(self.lines())


@dataclass
class Job:
    """A running N-node job; use as a context manager so every process is reaped."""

    run_dir: Path
    job: str
    endpoint: str | None
    log_group: str
    train_args: list[str]
    nnodes: int = 2
    tag: str = "launch"
    extra_env: dict[str, str] = field(default_factory=dict)
    grace_s: float = 10.0
    nodes: list[Node] = field(default_factory=list)

    def start(self) -> Job:
        port = free_port()
        rdzv_id = f"{self.job}-{uuid.uuid4().hex[:8]}"
        log_dir = self.run_dir / "logs" / self.tag
        log_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(
            OMP_NUM_THREADS="1",
            GLOO_SOCKET_IFNAME="lo",
            PYTHONPATH=str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        )
        env.update(self.extra_env)
        if not 1 <= self.nnodes <= 9:
            raise ValueError("nnodes must be 1..9 (node order relies on sorting 127.0.0.<i+1>)")
        for i in range(self.nnodes):
            name = f"node-{i}"
            kmsg = self.run_dir / f"kmsg-{name}.log"
            agent = [PYTHON, "-m", "trainer.node_agent", "--job", self.job, "--node", name]
            agent += ["--log-group", self.log_group, "--kmsg-file", str(kmsg)]
            agent += ["--log-file", str(log_dir / f"{name}.log"), "--grace-s", str(self.grace_s)]
            agent += ["--endpoint-url", self.endpoint] if self.endpoint else ["--no-cloudwatch"]
            torchrun = [PYTHON, "-m", "torch.distributed.run", "--nnodes", str(self.nnodes)]
            torchrun += ["--nproc-per-node", "1", "--rdzv-backend", "c10d"]
            torchrun += ["--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", rdzv_id]
            torchrun += ["--rdzv-conf", f"is_host={'true' if i == 0 else 'false'}"]
            # c10d orders nodes by (local addr, pid): distinct loopback addresses pin node-i to rank i.
            torchrun += ["--max-restarts", "0", "--local-addr", f"127.0.0.{i + 1}"]
            train = ["-m", "trainer.train", "--run-dir", str(self.run_dir), *self.train_args]
            stderr_path = log_dir / f"{name}.agent.err"
            with open(stderr_path, "wb") as err:
                proc = subprocess.Popen(
                    [*agent, "--", *torchrun, *train],
                    cwd=REPO_ROOT,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,  # the agent's --log-file holds the same lines
                    stderr=err,
                )
            self.nodes.append(Node(name, proc, log_dir / f"{name}.log", kmsg, stderr_path))
        return self

    def __enter__(self) -> Job:
        return self.start() if not self.nodes else self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def returncodes(self) -> list[int | None]:
        return [n.proc.poll() for n in self.nodes]

    def wait(self, timeout: float) -> list[int | None]:
        """Wait until every agent exited or ``timeout`` passed; returns exit codes (None = running)."""
        deadline = time.monotonic() + timeout
        for n in self.nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                n.proc.wait(max(0.0, deadline - time.monotonic()))
        return self.returncodes()

    def wait_for(self, predicate: Callable[[], bool], timeout: float, poll_s: float = 0.25) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(poll_s)
        return predicate()

    def terminate(self, timeout: float = 30.0) -> list[int | None]:
        """SIGTERM every running agent (what a supervisor does) and wait for them."""
        for n in self.nodes:
            if n.proc.poll() is None:
                n.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        """Last-resort cleanup: terminate, then SIGKILL agents that still run."""
        self.terminate(timeout=self.grace_s + 15)
        for n in self.nodes:
            if n.proc.poll() is None:
                n.proc.kill()
                n.proc.wait()


def last_step(node: Node) -> int:
    steps = [int(e["step"]) for e in node.events("step")]
    return max(steps) if steps else 0


# -- CloudWatch read-back helpers (boto3 against the moto endpoint) -------------------------------------


def log_messages(endpoint: str, log_group: str, stream: str) -> list[str]:
    """Every message of one CloudWatch Logs stream, in order (empty if the stream does not exist)."""
    import boto3

    client = boto3.client("logs", endpoint_url=endpoint, region_name="us-east-1")
    out: list[str] = []
    kwargs: dict[str, Any] = {"logGroupName": log_group, "logStreamNames": [stream]}
    try:
        while True:
            resp = client.filter_log_events(**kwargs)
            out += [e["message"] for e in resp.get("events", [])]
            token = resp.get("nextToken")
            if not token or not resp.get("events"):
                return out
            kwargs["nextToken"] = token
    except client.exceptions.ResourceNotFoundException:
        return out


def metric_series(
    endpoint: str,
    job: str,
    node: str,
    metric: str,
    start: float,
    end: float,
    stat: str = "Maximum",
    namespace: str = "ftsup/Trainer",
) -> list[tuple[float, float]]:
    """``(epoch_seconds, value)`` per 1-second period of one trainer metric, oldest first."""
    from datetime import UTC, datetime

    import boto3

    client = boto3.client("cloudwatch", endpoint_url=endpoint, region_name="us-east-1")
    resp = client.get_metric_data(
        MetricDataQueries=[
            {
                "Id": "m",
                "MetricStat": {
                    "Metric": {
                        "Namespace": namespace,
                        "MetricName": metric,
                        "Dimensions": [{"Name": "Job", "Value": job}, {"Name": "Node", "Value": node}],
                    },
                    "Period": 1,
                    "Stat": stat,
                },
            }
        ],
        StartTime=datetime.fromtimestamp(start, UTC),
        EndTime=datetime.fromtimestamp(end, UTC),
    )
    result = resp["MetricDataResults"][0]
    points = [
        (ts.timestamp(), float(v)) for ts, v in zip(result["Timestamps"], result["Values"], strict=True)
    ]
    return sorted(points)
