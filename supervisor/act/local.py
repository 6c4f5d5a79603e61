"""Local actuator: the job runs on this machine as N simulated nodes.

Each node is one `trainer.node_agent` process (the node's log shipper, like the CloudWatch
agent) that runs one `torchrun` agent (`--nnodes N`, c10d rendezvous on 127.0.0.1), which runs
`nproc_per_node` training ranks. Spare nodes are names with nothing running until one takes a
cordoned node's place.

- restart:            stop every node cleanly, relaunch all of them from the latest checkpoint
                      (the trainer resumes on its own from the newest complete checkpoint).
- cordon_and_restart: stop every node, retire the bad one, bring in the first spare, relaunch.
- halt:               stop every node, keep every file (checkpoints, logs) for inspection.

Every attempt gets a fresh rendezvous id and port, so a straggler of an old attempt can never
join a new one. Processes are started in their own sessions and are stopped by process group:
SIGTERM to the node agent (it forwards to torchrun and flushes its logs), then SIGKILL to the
whole group after the grace period.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from supervisor.act.base import apply_once
from supervisor.errors import StartupError
from supervisor.vocabulary import Action, ActionResult, JobObservation, Verdict


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class LocalJobSpec:
    """How to run the job on this machine."""

    job: str
    nodes: tuple[str, ...]
    spares: tuple[str, ...]
    run_dir: Path
    log_group: str
    nproc_per_node: int = 1
    trainer_args: tuple[str, ...] = ()
    python: str = sys.executable
    endpoint_url: str | None = None
    region: str = "us-east-1"
    stop_grace_s: float = 10.0
    env: Mapping[str, str] = field(default_factory=dict)  # extra environment for every node
    max_delay_s: float = 600.0  # upper bound on a backoff wait inside apply()
    # Bench only (bench/latency.py): when non-empty, each node's agent runs this argv instead of
    # `torchrun ... -m trainer.train` (a light stand-in workload, so that dozens of injected failures
    # fit in minutes on 2 cores). Everything else (node agent, environment, stop, relaunch) is unchanged.
    # Not a config key: production jobs always run the configured trainer.
    workload: tuple[str, ...] = ()


@dataclass
class _Node:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path


class LocalActuator:
    """Implements supervisor.act.base.Actuator for processes on this machine. Thread-safe."""

    def __init__(self, spec: LocalJobSpec) -> None:
        self.spec = spec
        self._lock = threading.RLock()
        self._nodes: list[str] = list(spec.nodes)
        self._spares: list[str] = list(spec.spares)
        self._cordoned: list[str] = []
        self._running: dict[str, _Node] = {}
        self._attempt = -1
        self._launched_at: float | None = None
        self._halted = False
        self._results: dict[str, ActionResult] = {}  # idempotency key -> result
        self._leftovers: dict[str, int] = {}  # node -> agent pid of a previous daemon's attempt
        self._restore()

    # ------------------------------------------------------------------ state that outlives the daemon

    @property
    def state_path(self) -> Path:
        return self.spec.run_dir / "actuator-state.json"

    def _restore(self) -> None:
        """Adopt what a previous daemon left: membership (cordoned nodes stay cordoned), the attempt
        number, a halt, and the pids of node agents that may still run (stopped before relaunching)."""
        if not self.state_path.exists():
            return
        try:
            saved = json.loads(self.state_path.read_text())
            self._nodes = [str(n) for n in saved["nodes"]]
            self._spares = [str(n) for n in saved["spares"]]
            self._cordoned = [str(n) for n in saved["cordoned"]]
            self._attempt = int(saved["attempt"])
            self._halted = bool(saved["halted"])
            self._launched_at = saved.get("launched_at")
            self._leftovers = {str(k): int(v) for k, v in saved.get("pids", {}).items()}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StartupError(
                f"{self.state_path}: unreadable actuator state ({exc!r}); move it aside to start afresh"
            ) from exc

    def _persist(self) -> None:
        state = {
            "job": self.spec.job,
            "attempt": self._attempt,
            "nodes": self._nodes,
            "spares": self._spares,
            "cordoned": self._cordoned,
            "halted": self._halted,
            "launched_at": self._launched_at,
            "pids": {name: n.process.pid for name, n in self._running.items()},
        }
        self.spec.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self.state_path)

    def clear_halt(self) -> None:
        """A human has looked at a halted job and wants it to run again."""
        with self._lock:
            self._halted = False
            self._persist()

    def _stop_leftovers(self) -> str:
        """Stop node agents a previous daemon started (its job would otherwise run twice)."""
        stopped = []
        for node, pid in self._leftovers.items():
            if _is_node_agent(pid, self.spec.job):
                for victim in (pid, *descendants(pid)):
                    _signal_group(victim, signal.SIGKILL, group=False)
                stopped.append(f"{node} (pid {pid})")
        self._leftovers = {}
        return ", ".join(stopped)

    # ------------------------------------------------------------------ paths and commands

    def node_dir(self, node: str) -> Path:
        return self.spec.run_dir / "nodes" / node

    def kmsg_path(self, node: str) -> Path:
        """The node's kernel log; its agent ships new lines to the node's stream (like dmesg)."""
        return self.node_dir(node) / "kmsg.log"

    def node_command(self, node: str, node_rank: int, attempt: int, rdzv_port: int) -> list[str]:
        """The argv of one node (no shell: every element is a separate argument)."""
        spec = self.spec
        agent = [
            spec.python, "-m", "trainer.node_agent",
            "--job", spec.job,
            "--node", node,
            "--log-group", spec.log_group,
            "--region", spec.region,
            "--kmsg-file", str(self.kmsg_path(node)),
            "--log-file", str(self.node_dir(node) / f"attempt-{attempt}.log"),
            "--grace-s", str(spec.stop_grace_s),
        ]  # fmt: skip
        if spec.endpoint_url:
            agent += ["--endpoint-url", spec.endpoint_url]
        if spec.workload:  # bench only, see LocalJobSpec.workload
            return [*agent, "--", *spec.workload]
        torchrun = [
            spec.python, "-m", "torch.distributed.run",
            "--nnodes", str(len(self._nodes)),
            "--nproc-per-node", str(spec.nproc_per_node),
            "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"127.0.0.1:{rdzv_port}",
            "--rdzv-id", f"{spec.job}-attempt-{attempt}",
            "--rdzv-conf", f"is_host={'true' if node_rank == 0 else 'false'}",
            "--max-restarts", "0",
            # c10d orders nodes by (local address, pid): distinct loopback addresses make the
            # simulated node i take rank block i, as a real host list would.
            "--local-addr", f"127.0.0.{node_rank + 1}",
            # Job and node names reach the trainer through FTSUP_JOB / FTSUP_NODE: torchrun's parser
            # would take `--node` for an abbreviation of its own `--node-rank`.
            "-m", "trainer.train",
            "--run-dir", str(spec.run_dir),
            *spec.trainer_args,
        ]  # fmt: skip
        return [*agent, "--", *torchrun]

    def _environment(self, node: str, attempt: int) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.spec.env)
        env.update(
            {
                "FTSUP_JOB": self.spec.job,
                "FTSUP_NODE": node,
                "FTSUP_ATTEMPT": str(attempt),
                "OMP_NUM_THREADS": "1",
                "PYTHONUNBUFFERED": "1",
                "AWS_DEFAULT_REGION": self.spec.region,
            }
        )
        # The trainer package must be importable in the child whatever the caller's cwd.
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        if self.spec.endpoint_url:
            env["FTSUP_CW_ENDPOINT"] = self.spec.endpoint_url
        return env

    # ------------------------------------------------------------------ Actuator protocol

    def launch(self) -> ActionResult:
        """Start attempt 0, or the attempt after the last one a previous daemon ran (whose processes
        are stopped first). Refuses a job that was halted until `clear_halt()`."""
        with self._lock:
            started = time.time()
            if self._halted:
                raise StartupError(
                    f"job {self.spec.job} was halted (see {self.state_path}); inspect it, then run with "
                    "--clear-halt to launch it again"
                )
            stopped = self._stop_leftovers()
            self._start_attempt(self._attempt + 1)
            adopted = f" (stopped what a previous daemon left running: {stopped})" if stopped else ""
            return ActionResult(
                idempotency_key=f"{self.spec.job}:launch:{self._attempt}",
                ok=True,
                detail=f"launched attempt {self._attempt} on {', '.join(self._nodes)}{adopted}",
                started_at=started,
                finished_at=time.time(),
                attempt=self._attempt,
                nodes=tuple(self._nodes),
            )

    def plan(self, action: Action) -> list[str]:
        with self._lock:
            nodes = list(self._nodes)
            grace = f"SIGTERM, {self.spec.stop_grace_s:g}s grace, then SIGKILL"
            steps = [f"stop attempt {self._attempt} on {', '.join(nodes)} ({grace})"]
            if action.kind is Verdict.HALT:
                return [*steps, f"keep {self.spec.run_dir} for inspection; do not relaunch"]
            if action.kind is Verdict.CORDON_AND_RESTART and action.node is not None:
                spare = self._spares[0] if self._spares else "<no spare>"
                nodes = [spare if n == action.node else n for n in nodes]
                steps.append(f"cordon {action.node}; spare {spare} takes its place")
            if action.delay_s > 0:
                steps.append(f"wait {action.delay_s:g}s (backoff)")
            steps.append(
                f"launch attempt {self._attempt + 1} on {', '.join(nodes)}; resume from the latest checkpoint"
            )
            return steps

    def apply(self, action: Action) -> ActionResult:
        """Carry out one action; the same idempotency key twice returns the first result."""
        with self._lock:
            return apply_once(self._results, action, self._apply, time.time)

    def _apply(self, action: Action, started: float) -> ActionResult:
        def finish(ok: bool, detail: str) -> ActionResult:
            running = bool(self._running)
            return ActionResult(
                idempotency_key=action.idempotency_key,
                ok=ok,
                detail=detail,
                started_at=started,
                finished_at=time.time(),
                attempt=self._attempt if running else None,
                nodes=tuple(self._nodes),
            )

        if self._halted:
            return finish(False, "the job is halted; refusing to act until a human relaunches it")
        if action.kind is Verdict.IGNORE:
            return finish(True, "nothing to do")
        cordon = action.kind is Verdict.CORDON_AND_RESTART
        if cordon and (action.node is None or action.node not in self._nodes):
            # Refused before anything is stopped: a refused cordon must not leave the job down.
            return finish(False, f"cannot cordon {action.node!r}: not a member of the job")
        if cordon and not self._spares:
            return finish(False, f"cannot cordon {action.node}: no spare left")
        stopped = self._stop_all()
        if action.kind is Verdict.HALT:
            self._halted = True
            self._persist()
            return finish(True, f"halted: stopped {stopped}; files kept in {self.spec.run_dir}")
        detail = ""
        if action.kind is Verdict.CORDON_AND_RESTART:
            node = action.node
            assert node is not None  # checked above (and a spare), before anything was stopped
            spare = self._spares.pop(0)
            self._nodes[self._nodes.index(node)] = spare
            self._cordoned.append(node)
            detail = f"cordoned {node}; spare {spare} took its place; "
        if action.delay_s > 0:
            time.sleep(min(action.delay_s, self.spec.max_delay_s))
        self._start_attempt(self._attempt + 1)
        return finish(
            True, f"{detail}stopped {stopped}; relaunched attempt {self._attempt} on {', '.join(self._nodes)}"
        )

    def pids(self) -> list[tuple[str, int]]:
        """(node, node-agent pid) of the current attempt."""
        with self._lock:
            return [(name, n.process.pid) for name, n in sorted(self._running.items())]

    def observe(self) -> JobObservation:
        with self._lock:
            codes = tuple((name, n.process.poll()) for name, n in sorted(self._running.items()))
            return JobObservation(
                job=self.spec.job,
                attempt=self._attempt,
                nodes=tuple(self._nodes),
                spares=tuple(self._spares),
                cordoned=tuple(self._cordoned),
                running=any(code is None for _, code in codes),
                launched_at=self._launched_at,
                exit_codes=codes,
            )

    @property
    def halted(self) -> bool:
        return self._halted

    def stop(self) -> None:
        with self._lock:
            self._stop_all()

    # ------------------------------------------------------------------ processes

    def _start_attempt(self, attempt: int) -> None:
        port = free_port()
        self._attempt = attempt
        self._launched_at = time.time()
        for rank, node in enumerate(self._nodes):
            directory = self.node_dir(node)
            directory.mkdir(parents=True, exist_ok=True)
            self.kmsg_path(node).touch()
            # The agent writes what it ships to attempt-<n>.log; its own diagnostics go to stderr.
            log_path = directory / f"agent-{attempt}.err"
            with open(log_path, "wb") as err:
                process = subprocess.Popen(
                    self.node_command(node, rank, attempt, port),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    env=self._environment(node, attempt),
                    cwd=str(self.spec.run_dir),
                    start_new_session=True,  # own process group: stopped as a unit
                )
            self._running[node] = _Node(node, process, log_path)
        self._persist()

    def _stop_all(self) -> str:
        """Stop every node: SIGTERM to each agent, then SIGKILL the groups that outlive the grace."""
        if not self._running:
            return "nothing (no node running)"
        names = sorted(self._running)
        # torchrun starts each rank in a session of its own, so killing the agent's group is not
        # enough: remember the whole tree now, before parents die and orphans are re-parented.
        tree = {pid for n in self._running.values() for pid in descendants(n.process.pid)}
        for n in self._running.values():
            if n.process.poll() is None:
                _signal_group(n.process.pid, signal.SIGTERM, group=False)
        deadline = time.monotonic() + self.spec.stop_grace_s
        for n in self._running.values():
            remaining = max(0.0, deadline - time.monotonic())
            with contextlib.suppress(subprocess.TimeoutExpired):
                n.process.wait(timeout=remaining)
        for n in self._running.values():
            # Kill the whole group even if the agent exited: ranks of a wedged torchrun may linger.
            _signal_group(n.process.pid, signal.SIGKILL, group=True)
        for pid in tree:
            _signal_group(pid, signal.SIGKILL, group=False)
        for n in self._running.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                n.process.wait(timeout=5)
        self._running.clear()
        return ", ".join(names)


def _signal_group(pid: int, sig: signal.Signals, *, group: bool) -> None:
    try:
        if group:
            os.killpg(pid, sig)  # the agent is its group's leader (start_new_session)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def process_children() -> dict[int, list[int]]:
    """Parent pid -> the pids of its live children, for every process (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: the ppid follows the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def descendants(root: int, children: Mapping[int, list[int]] | None = None) -> set[int]:
    """All live descendants of `root` (Linux /proc), whatever session they moved to; `children` is a
    process_children() snapshot to reuse (default: a fresh one)."""
    if children is None:
        children = process_children()
    found: set[int] = set()
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _is_node_agent(pid: int, job: str) -> bool:
    """True only for a live node agent of this job: a recycled pid must never be killed."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return b"trainer.node_agent" in argv and job.encode() in argv
