"""The daemon under test in the SIGKILL chaos test (tests/chaos/test_sigkill.py), and the parent that
forks it.

    python -m tests.chaos.chaos_daemon zygote WORKDIR    the fork server (below)
    python -m tests.chaos.chaos_daemon run WORKDIR [PLAN] one daemon in the foreground (debugging)

Each daemon is the real one: `load_config(WORKDIR/ftsup.yaml)`, `daemon.build()` (the CloudWatch Logs
source over HTTP, the journal, the alert router with its webhook sink and outbox) and `run_forever()`
(SIGTERM shuts it down cleanly, a halted job ends it with code 3). Only the actuator is the test's:
`FileJob`, whose target lives in a file, so the job outlives every daemon killed while acting on it.

Fork server. Restarting a daemon 100+ times is mostly Python imports; the zygote imports everything
once and forks a fresh daemon per start. It is safe because the zygote runs no thread (checked before
every fork) and opens nothing a child could share: no boto3 client, no journal, no socket. Protocol,
one line each way on stdin / stdout:

    START <kill_after_s> <plan|->   fork a daemon armed with the chaos plan (supervisor.chaos syntax,
                                    "-" for none); SIGKILL it after kill_after_s (<= 0: never)
                                    -> "PID <pid>"
    TERM                            SIGTERM the daemon (a clean shutdown)
    KILL                            SIGKILL the daemon now (if one runs)
    QUIT                            SIGKILL the daemon (if one runs), exit once it is reaped
                                    -> "EXIT <pid> <signal|code> <n> <killed_by_zygote 0|1>" when a
                                       daemon ends (the zygote reaps it: no pid is ever reused early)
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor import chaos
from supervisor.config import load_config
from supervisor.daemon import build, run_forever
from supervisor.logs import configure_logging
from supervisor.vocabulary import Action, ActionResult, JobObservation, Verdict

JOB = "chaos"
NODES = ("node-0", "node-1", "node-2", "node-3")
SPARES = ("node-4", "node-5", "node-6", "node-7")


@dataclass(frozen=True)
class Applied:
    """One apply that changed the job, as the target recorded it."""

    key: str
    kind: str
    node: str | None
    pid: int
    attempt: int


def read_state(path: Path) -> dict[str, Any] | None:
    """The target's state file (None before the first launch)."""
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return data


def applied(path: Path) -> list[Applied]:
    state = read_state(path)
    return [Applied(**a) for a in state["applied"]] if state else []


class FileJob:
    """An Actuator whose job (attempt, members, spares, cordoned, running) is one JSON file.

    Every apply changes the job and appends itself to the file's `applied` list in the same atomic
    replace: a daemon killed at any instant leaves the job and its apply log consistent. It does NOT
    de-duplicate by idempotency key: an action applied twice shows twice, which is the point.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def _write(self, state: dict[str, Any]) -> None:
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w") as f:
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _state(self) -> dict[str, Any]:
        state = read_state(self.path)
        if state is None:
            raise RuntimeError(f"{self.path}: the job was never launched")
        return state

    def launch(self) -> ActionResult:
        """Attempt 0 the first time; afterwards the running job is adopted as it is."""
        now = time.time()
        state = read_state(self.path)
        if state is None:
            state = {"attempt": 0, "launched_at": now, "running": True, "nodes": list(NODES),
                     "spares": list(SPARES), "cordoned": [], "applied": []}  # fmt: skip
            self._write(state)
            detail = "launched attempt 0"
        else:
            detail = f"adopted attempt {state['attempt']}"
        return ActionResult("launch", True, detail, now, now, state["attempt"], tuple(state["nodes"]))

    def plan(self, action: Action) -> list[str]:
        return [f"{action.kind.value} {JOB}" + (f" without {action.node}" if action.node else "")]

    def apply(self, action: Action) -> ActionResult:
        started = time.time()
        if action.delay_s > 0:
            time.sleep(min(action.delay_s, 5.0))
        state = self._state()
        if action.kind is Verdict.HALT:
            state["running"] = False
        else:
            if action.kind is Verdict.CORDON_AND_RESTART and action.node in state["nodes"]:
                spare = state["spares"].pop(0)
                state["nodes"] = [spare if n == action.node else n for n in state["nodes"]]
                state["cordoned"].append(action.node)
            state["attempt"] += 1
            state["launched_at"] = time.time()
            state["running"] = True
        state["applied"].append(
            {
                "key": action.idempotency_key,
                "kind": action.kind.value,
                "node": action.node,
                "pid": os.getpid(),
                "attempt": state["attempt"],
            }
        )
        self._write(state)
        running = bool(state["running"])
        return ActionResult(
            action.idempotency_key,
            True,
            f"{action.kind.value}: attempt {state['attempt']} running={running}",
            started,
            time.time(),
            state["attempt"] if running else None,
            tuple(state["nodes"]),
        )

    def observe(self) -> JobObservation:
        state = read_state(self.path)
        if state is None:
            return JobObservation(JOB, -1, (), (), (), False, None)
        running = bool(state["running"])
        return JobObservation(
            job=JOB,
            attempt=int(state["attempt"]),
            nodes=tuple(state["nodes"]),
            spares=tuple(state["spares"]),
            cordoned=tuple(state["cordoned"]),
            running=running,
            launched_at=float(state["launched_at"]),
            exit_codes=tuple((n, None) for n in state["nodes"]) if running else (),
        )

    def stop(self) -> None:
        """The job outlives the daemon (like a Slurm or Kubernetes job)."""

    def clear_halt(self) -> None:
        state = self._state()
        state["running"] = True
        self._write(state)


def run_daemon(workdir: Path, plan: str | None) -> int:
    """One daemon: the chaos plan armed, then exactly what `ftsup run` does with FileJob."""
    chaos.arm(plan)
    config = load_config(workdir / "ftsup.yaml")
    configure_logging(config.logging.format, config.logging.level)
    daemon = build(config, actuator=FileJob(workdir / "job.json"))
    return run_forever(daemon)


def _child(workdir: Path, plan: str | None, log_path: Path) -> None:
    """In the forked child: never returns into the zygote's loop."""
    code = 70
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        code = run_daemon(workdir, plan)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def zygote(workdir: Path) -> int:
    def say(line: str) -> None:
        os.write(1, (line + "\n").encode())

    child: int | None = None
    deadline: float | None = None
    killed = False
    quitting = False
    starts = 0
    buf = b""
    while True:
        if child is not None:
            pid, status = os.waitpid(child, os.WNOHANG)
            if pid == child:
                if os.WIFSIGNALED(status):
                    say(f"EXIT {pid} signal {os.WTERMSIG(status)} {int(killed)}")
                else:
                    say(f"EXIT {pid} code {os.WEXITSTATUS(status)} {int(killed)}")
                child, deadline = None, None
            elif deadline is not None and time.monotonic() >= deadline and not killed:
                os.kill(child, signal.SIGKILL)  # not reaped yet: the pid is still ours
                killed = True
        if quitting and child is None:
            return 0
        ready, _, _ = select.select([0], [], [], 0.01)
        if not ready:
            continue
        data = os.read(0, 4096)
        if not data:  # the test went away: leave nothing running
            quitting = True
            if child is not None and not killed:
                os.kill(child, signal.SIGKILL)
                killed = True
            continue
        buf += data
        while b"\n" in buf:
            raw, buf = buf.split(b"\n", 1)
            words = raw.decode().split()
            if not words:
                continue
            if words[0] == "START" and child is None:
                kill_after, plan = float(words[1]), (None if words[2] == "-" else words[2])
                if threading.active_count() != 1:
                    raise RuntimeError("the zygote must not run threads: forking would copy their locks")
                pid = os.fork()
                if pid == 0:
                    _child(workdir, plan, workdir / f"daemon-{starts:04d}.log")
                child, killed, starts = pid, False, starts + 1
                deadline = time.monotonic() + kill_after if kill_after > 0 else None
                say(f"PID {pid}")
            elif words[0] == "TERM":
                if child is not None:
                    os.kill(child, signal.SIGTERM)
            elif words[0] == "KILL":
                if child is not None and not killed:
                    os.kill(child, signal.SIGKILL)
                    killed = True
            elif words[0] == "QUIT":
                quitting = True
                if child is not None and not killed:
                    os.kill(child, signal.SIGKILL)
                    killed = True
            else:
                raise RuntimeError(f"zygote: unexpected command {raw!r} (daemon running: {child})")


def main() -> int:
    what, workdir = sys.argv[1], Path(sys.argv[2])
    if what == "zygote":
        return zygote(workdir)
    if what == "run":
        return run_daemon(workdir, sys.argv[3] if len(sys.argv) > 3 else None)
    raise SystemExit(f"usage: {sys.argv[0]} zygote|run WORKDIR [PLAN]")


if __name__ == "__main__":
    sys.exit(main())
