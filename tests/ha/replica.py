"""One ftsup replica for the HA failover test: the real Daemon HA path (FileLease, Leadership,
settle_pending, the engine's fence) supervising a job whose state lives in files, so that it
survives the SIGKILL of the replica acting on it.

    python -m tests.ha.replica WORKDIR HANG RUN_S

HANG: `none`; `before` (apply blocks before touching the job: killed after the intent, before
apply); `after` (apply changes the job, then blocks: killed after apply, before its result).
Prints `LEADER <token>` when it gains the lease. `WORKDIR/applied.log`: one line per apply that
changed the job (key, pid).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

import structlog
from prometheus_client import CollectorRegistry

from supervisor.classify.policy import load_policies
from supervisor.config import Config, JobConfig, default_policy_dir
from supervisor.daemon import Daemon
from supervisor.engine import Engine
from supervisor.ha import FileLease, Leadership
from supervisor.journal import Journal
from supervisor.sources.aws import ApiCallCounter
from supervisor.vocabulary import (
    Action,
    ActionResult,
    Cursor,
    JobObservation,
    LogEvent,
    Mode,
    SourceBatch,
    SourceHealth,
)

JOB = "job"
NODES = ("node-0", "node-1")
LEASE_S = 2.0
RENEW_S = 0.4


class FileJob:
    """An Actuator whose job state (attempt, launch time) is a JSON file shared by the replicas."""

    def __init__(self, workdir: Path, hang: str) -> None:
        self.state = workdir / "target.json"
        self.applied = workdir / "applied.log"
        self.workdir = workdir
        self.hang = hang

    def _read(self) -> dict[str, float]:
        if not self.state.exists():
            return {"attempt": -1, "launched_at": 0.0}
        data: dict[str, float] = json.loads(self.state.read_text())
        return data

    def _write(self, attempt: int) -> None:
        tmp = self.state.with_suffix(".tmp")
        tmp.write_text(json.dumps({"attempt": attempt, "launched_at": time.time()}))
        os.replace(tmp, self.state)

    def launch(self) -> ActionResult:
        self._write(0)
        now = time.time()
        return ActionResult("launch", True, "launched", now, now, 0, NODES)

    def plan(self, action: Action) -> list[str]:
        return [f"{action.kind.value} {JOB}"]

    def _block(self, marker: str) -> None:
        (self.workdir / marker).write_text(str(os.getpid()))
        while True:
            time.sleep(60)

    def apply(self, action: Action) -> ActionResult:
        started = time.time()
        if self.hang == "before":
            self._block("entered")
        attempt = int(self._read()["attempt"]) + 1
        self._write(attempt)
        with self.applied.open("a") as f:
            f.write(f"{action.idempotency_key} {os.getpid()}\n")
            f.flush()
            os.fsync(f.fileno())
        if self.hang == "after":
            self._block("applied")
        return ActionResult(action.idempotency_key, True, "restarted", started, time.time(), attempt, NODES)

    def observe(self) -> JobObservation:
        s = self._read()
        return JobObservation(
            job=JOB,
            attempt=max(int(s["attempt"]), 0),
            nodes=NODES,
            spares=(),
            cordoned=(),
            running=s["attempt"] >= 0,
            launched_at=s["launched_at"] or None,
            exit_codes=tuple((n, None) for n in NODES),
        )

    def stop(self) -> None:
        pass

    def clear_halt(self) -> None:
        pass


class FileLogs:
    """A Source reading `logs.jsonl` ([node, time, text] per line) in full at every poll."""

    name = "logs"

    def __init__(self, path: Path) -> None:
        self.path = path

    def poll(self) -> SourceBatch:
        events: list[LogEvent] = []
        if self.path.exists():
            for i, line in enumerate(self.path.read_text().splitlines()):
                node, at, text = json.loads(line)
                events.append(LogEvent(f"e{i}", node, float(at), text))
        now = time.time()
        return SourceBatch("logs", tuple(events), (), None, SourceHealth("logs", True, now))

    def restore(self, cursor: Cursor) -> None:
        pass


def main() -> int:
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    workdir, hang, run_s = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    journal = Journal(workdir / "journal.db")
    leadership = Leadership(FileLease(workdir / "lease", lease_s=LEASE_S), renew_every_s=RENEW_S)
    config = Config(job=JobConfig(JOB, "group"), mode=Mode.ACT)
    return run_replica(workdir, hang, run_s, config, journal, leadership)


def run_replica(
    workdir: Path, hang: str, run_s: float, config: Config, journal: Journal, leadership: Leadership
) -> int:
    """The real Daemon HA path around the file-state job, until `run_s` passes or SIGTERM."""
    policy = load_policies([default_policy_dir()])
    actuator = FileJob(workdir, hang)

    def make_engine() -> Engine:
        engine = Engine(
            job=JOB, policy=policy, journal=journal, actuator=actuator, mode=Mode.ACT, settle_s=0.5
        )
        engine.add_source(FileLogs(workdir / "logs.jsonl"), 0.2)
        return engine

    daemon = Daemon(
        config, policy, make_engine(), journal, actuator, CollectorRegistry(), ApiCallCounter(),
        leadership=leadership, make_engine=make_engine,
    )  # fmt: skip
    stop = threading.Event()

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    deadline = time.monotonic() + run_s
    threading.Timer(run_s, stop.set).start()
    if daemon.wait_for_leadership(stop):
        print(f"LEADER {leadership.token}", flush=True)
        daemon.start(launch=True)
        while not stop.wait(0.1) and time.monotonic() < deadline:
            if leadership.lost.is_set():
                print("LOST", flush=True)
                break
    daemon.shutdown(stop_job=False)
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
