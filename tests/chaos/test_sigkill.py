"""SIGKILL the real daemon 100+ times, at every crash point and at random moments, while a fault
scenario plays; restart it each time; then prove that nothing was lost or done twice.

The parts are real: the daemon (`tests/chaos/chaos_daemon.py`: `build()` + `run_forever()`, forked
from a pre-imported parent) reads the job's log group from a moto server over HTTP with its
CloudWatchLogsSource, journals to SQLite, acts through `FileJob` (the job lives in a file and records
every apply that changed it; it does not de-duplicate by key) and pages a webhook receiver in this
test through its alert router and outbox. `supervisor.chaos` crash points kill it from inside
(`FTSUP_CHAOS`-style plans); the fork server kills it from outside at random times.

The scenario: ten incidents, each written with PutLogEvents once the previous one is settled
(collective timeouts -> restart, Xids -> cordon_and_restart, a Python exception -> halt, as the
shipped policies decide), plus late lines of each failed attempt after its relaunch and unmatched
noise. While an incident is in flight the daemon is killed at the stages still ahead of it
(`progress()`), the least-killed first; between incidents at the poll, cursor, journal and random
points. Seeded (`FTSUP_CHAOS_SEED`); the exact interleaving still depends on timing.

Invariants, from the journal, the target's apply log and the receiver:
- every injected incident detected, as exactly one journaled incident with the expected root rule
  and verdict; no other incident (late lines of a replaced attempt never open one);
- each action applied exactly once (apply log: one entry per incident, no key twice), every intent
  with an ok result, the attempts 0..9 each caused by its incident;
- no event skipped: every failure line written is a signal of its incident (by CloudWatch eventId),
  (unmatched noise lines are written too; the daemon's event count is reported, not asserted: a
  server-side filter pattern may leave them unread by design);
- no duplicate page: one alert dedup key (`<incident>:firing`, what PagerDuty's dedup_key and
  Alertmanager's label set do) per incident and none for anything else; redeliveries of the same key
  (a daemon killed after the POST, before the outbox recorded it: at-least-once) are counted and
  reported apart; no alert left undelivered.
"""

from __future__ import annotations

import json
import os
import queue
import random
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest

from supervisor import chaos
from supervisor.config import default_policy_dir
from supervisor.journal import Journal
from tests.chaos.chaos_daemon import JOB, NODES, SPARES, applied, read_state

pytestmark = pytest.mark.chaos

ROOT = Path(__file__).resolve().parents[2]
SEED = int(os.environ.get("FTSUP_CHAOS_SEED", "20240501"))
MIN_KILLS = 100
HOT_KILLS = 7  # kills while each incident is in flight
IDLE_KILLS = 2  # kills between two incidents
DEADLINE_S = 360.0  # the whole run, a hard bound (typically 90-110 s on 2 cores)
PLAN_TIMEOUT_S = 8.0  # a crash point that has not fired by then: killed from outside instead
STALL_S = 45.0  # an incident that makes no progress for this long is stuck: fail

GLOO = (
    "[rank{r}]: RuntimeError: [/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:129] "
    "Timed out waiting 15000ms for send operation to complete"
)
NCCL_WATCHDOG = (
    "[rank{r}]:[E ProcessGroupNCCL.cpp:616] [Rank {r}] Watchdog caught collective operation timeout: "
    "WorkNCCL(SeqNum=5, OpType=ALLREDUCE, NumelIn=1, NumelOut=1, Timeout(ms)=600000) ran for 600012 "
    "milliseconds before timing out."
)
NCCL_REMOTE = (
    "[rank{r}]: torch.distributed.DistBackendError: NCCL error in: ../torch/csrc/distributed/c10d/"
    "ProcessGroupNCCL.cpp:1970, remote process exited or there was a network error, NCCL version 2.20.5"
)
XID79 = "NVRM: Xid (PCI:0000:3b:00): 79, pid={r}812, name=python, GPU has fallen off the bus."
XID48 = (
    "NVRM: Xid (PCI:0000:86:00): 48, pid={r}234, name=python, An uncorrectable double bit error (DBE) "
    "has been detected on GPU in the framebuffer at partition 0, subpartition 0."
)
TRACEBACK = (
    "[rank{r}]: Traceback (most recent call last):",
    '[rank{r}]:   File "/app/train.py", line 88, in <module>',
    "[rank{r}]:     batch = collate(samples)",
    "[rank{r}]: KeyError: 'labels'",
)
NOISE = "iteration {n} | consumed samples {m} | lm loss 2.31 | grad norm 0.42"

# (verdict, root rule, lines as (member index, template), key line indexes): the key lines must all
# be evidence of the incident. Symptom lines of an Xid incident are written before the Xid, so the
# incident is open (settling) when the decisive Xid arrives and both are in it.
SCENARIO: tuple[tuple[str, str, tuple[tuple[int, str], ...]], ...] = (
    ("restart", "gloo-timeout", ((0, GLOO), (1, GLOO))),
    ("restart", "nccl-watchdog-timeout", ((2, NCCL_WATCHDOG), (3, NCCL_WATCHDOG))),
    ("cordon_and_restart", "gpu-fallen-off-bus", ((0, GLOO), (1, XID79))),
    ("restart", "nccl-remote-error", ((1, NCCL_REMOTE), (2, NCCL_WATCHDOG))),
    ("restart", "gloo-timeout", ((3, GLOO), (0, GLOO))),
    ("cordon_and_restart", "gpu-xid-48-dbe", ((3, NCCL_WATCHDOG), (2, XID48))),
    ("restart", "nccl-watchdog-timeout", ((0, NCCL_WATCHDOG), (1, NCCL_WATCHDOG))),
    ("restart", "gloo-timeout", ((2, GLOO), (3, GLOO))),
    ("cordon_and_restart", "gpu-fallen-off-bus", ((1, GLOO), (3, XID79))),
    ("halt", "python-exception", tuple((0, line) for line in TRACEBACK)),
)
KEY_LINES = {"python-exception": {3}}  # of a traceback only the exception line is a signal

HOT_STAGES = (
    "decide.incident",
    "decide.decision",
    "action.apply",
    "action.applied",
    "action.result",
    "alert.recorded",
    "alert.deliver",
    "alert.sent",
)
ANY_TIME = ("journal.commit", "poll.batch", "external")
IDLE_STAGES = ("poll.batch", "cursor.save", "journal.commit", "external")

BUDGETS = """\
# The chaos scenario's budgets: ten incidents in a few minutes, none of them held back or escalated
# by a rail (the rails are tested in tests/unit/test_safety_rails.py).
budgets:
  restart: {max: 50, within: 1h, backoff: 0s, backoff_max: 0s, jitter: 0}
  cordon: {max_nodes: 8, within: 1h, max_fraction: 1.0}
  shared_cause: {nodes: 50, within: 2m}
  lemon: {incidents: 50, within: 24h, watch_after_return: 24h, watch_incidents: 50}
  flapping: {min_interval: 0s, max_flaps: 50, within: 1h}
"""


# ----------------------------------------------------------------------------- the webhook receiver


class Receiver:
    """A webhook endpoint recording every alert POSTed to it (200 for each)."""

    def __init__(self) -> None:
        self.alerts: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with outer._lock:
                    outer.alerts.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def received(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.alerts)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ----------------------------------------------------------------------------- the fork server


class Zygote:
    """Talks to `chaos_daemon zygote` (protocol in its module docstring)."""

    def __init__(self, workdir: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.chaos.chaos_daemon", "zygote", str(workdir)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=(workdir / "zygote.err").open("w"),
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put("EOF")

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def start(self, kill_after_s: float, plan: str | None) -> int:
        self.send(f"START {kill_after_s:.3f} {plan or '-'}")
        reply = self.lines.get(timeout=30)
        assert reply.startswith("PID "), reply
        return int(reply.split()[1])

    def exit_event(self, timeout_s: float) -> tuple[int, str, int, bool] | None:
        """(pid, "signal" | "code", number, killed by the zygote) of the daemon that ended, or None."""
        try:
            line = self.lines.get(timeout=timeout_s)
        except queue.Empty:
            return None
        if line == "EOF":
            raise AssertionError(f"the zygote died: {self.proc.wait()}")
        _, pid, how, n, by_zygote = line.split()
        return int(pid), how, int(n), by_zygote == "1"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.send("QUIT")
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ----------------------------------------------------------------------------- the scenario


@dataclass
class Line:
    node: str
    ts_ms: int
    text: str
    key: bool


@dataclass
class Injected:
    index: int
    verdict: str
    rule: str
    lines: list[Line] = field(default_factory=list)
    late: list[Line] = field(default_factory=list)  # lines of the failed attempt, written after its relaunch
    written_at: float = 0.0
    incident_id: str | None = None
    settled: bool = False
    hot_kills: int = 0
    progress: int = -1  # see Chaos.progress()
    progress_at: float = 0.0  # when it last changed (monotonic)

    def keys(self) -> set[tuple[str, int]]:
        return {(ln.node, ln.ts_ms) for ln in self.lines if ln.key}


@dataclass
class Running:
    """The daemon now running: when the zygote kills it (0: never), its chaos plan, and whether its
    death counts for the incident in flight."""

    kill_after: float
    spec: str | None
    for_incident: bool
    pid: int = 0
    settled_kill: bool = False  # killed from outside because its incident settled

    @property
    def stage(self) -> str | None:
        return self.spec.split(",")[0].removeprefix("stage=") if self.spec else None


class CloudWatchWriter:
    """Writes the job's log lines with PutLogEvents, one stream per node (the real agent's layout)."""

    def __init__(self, endpoint: str, group: str, nodes: list[str]) -> None:
        self.client = boto3.client("logs", endpoint_url=endpoint, region_name="us-east-1")
        self.group = group
        self.client.create_log_group(logGroupName=group)
        for node in nodes:
            self.client.create_log_stream(logGroupName=group, logStreamName=node)
        self.written: list[Line] = []
        self._last_ms = 0

    def stamp(self, at: float | None = None) -> int:
        """A unique event time (ms): every written line can be found by (node, time)."""
        ms = max(int((time.time() if at is None else at) * 1000), self._last_ms + 1)
        self._last_ms = ms
        return ms

    def put(self, lines: list[Line]) -> None:
        by_node: dict[str, list[Line]] = {}
        for ln in lines:
            by_node.setdefault(ln.node, []).append(ln)
        for node, group in by_node.items():
            events = [
                {"timestamp": ln.ts_ms, "message": ln.text} for ln in sorted(group, key=lambda x: x.ts_ms)
            ]
            self.client.put_log_events(logGroupName=self.group, logStreamName=node, logEvents=events)
        self.written.extend(lines)

    def event_ids(self) -> dict[tuple[str, int, str], str]:
        """(node, time ms, text) -> eventId, for everything in the group."""
        out: dict[tuple[str, int, str], str] = {}
        kwargs: dict[str, Any] = {"logGroupName": self.group}
        while True:
            page = self.client.filter_log_events(**kwargs)
            for e in page["events"]:
                out[(e["logStreamName"], e["timestamp"], e["message"])] = e["eventId"]
            if not page.get("nextToken"):
                return out
            kwargs["nextToken"] = page["nextToken"]


def write_setup(workdir: Path, endpoint: str, group: str, hook: str) -> None:
    policies = workdir / "policies"
    policies.mkdir()
    for f in sorted(default_policy_dir().glob("*.yaml")):
        if f.name != "budgets.yaml":
            shutil.copy(f, policies / f.name)
    (policies / "budgets.yaml").write_text(BUDGETS)
    config = {
        "job": {"name": JOB, "log_group": group},
        "aws": {"region": "us-east-1", "endpoint_url": endpoint, "connect_timeout_s": 2.0,
                "read_timeout_s": 5.0, "max_attempts": 3, "retry_budget_s": 5.0},
        # filter_pattern none: which lines the server filters out is not what this test is about,
        # and deriving the pattern from the policies costs about 1 s at each of 100+ starts.
        "sources": {"logs": {"enabled": True, "poll_interval_s": 0.2, "overlap_s": 30.0,
                             "filter_pattern": "none"},
                    "metrics": {"enabled": False}},
        "policies": [str(policies)],
        "mode": "act",
        "incidents": {"settle_s": 0.5},
        "actuator": {"kind": "local", "local": {"run_dir": str(workdir / "unused")}},  # FileJob instead
        "journal": {"path": str(workdir / "journal.db")},
        # inhibit_window_s 0: every incident pages on its own; inhibition (a symptom's alert held back
        # by a cause's) is router memory, tested in tests/alert, not what this test is about.
        "alerts": {"log": False, "webhooks": [{"url": hook, "timeout_s": 2.0}], "inhibit_window_s": 0,
                   "redeliver_every_s": 1.0},
        "metrics_server": {"port": None},
        "logging": {"format": "json", "level": "info"},
    }  # fmt: skip
    (workdir / "ftsup.yaml").write_text(json.dumps(config, indent=2))  # JSON is YAML


class Chaos:
    """The run: starts, kills and restarts daemons while it plays the scenario (see module doc)."""

    def __init__(self, workdir: Path, endpoint: str, receiver: Receiver) -> None:
        self.workdir = workdir
        self.rng = random.Random(SEED)
        self.group = f"/ftsup/chaos/{SEED}-{os.getpid()}-{time.monotonic_ns()}"
        self.receiver = receiver
        write_setup(workdir, endpoint, self.group, receiver.url)
        self.cw = CloudWatchWriter(endpoint, self.group, [*NODES, *SPARES])
        self.target = workdir / "job.json"
        self.kill_log = workdir / "kills.log"
        self.journal = Journal(workdir / "journal.db")
        self.zygote = Zygote(workdir)
        self.kills: Counter[str] = Counter()
        self.plan_timeouts = 0  # crash points that had not fired when the outside kill came
        self.starts = 0
        self.halted_exits = 0
        self.injected: list[Injected] = []
        self.idle_kills = 0
        self.noise = 0
        self.current: Injected | None = None  # the incident in flight (or about to be written)
        self.inject_at: float | None = None

    # ------------------------------------------------------------------ progress of one incident

    def find_incident(self, inc: Injected) -> str | None:
        keys = inc.keys()
        for row in self.journal.incidents(JOB):
            mine = {(s.node, round(s.timestamp * 1000)) for s in row.incident.signals}
            if mine & keys:
                return row.incident.incident_id
        return None

    def progress(self, inc: Injected) -> int:
        """How far the incident got: 0 not journaled, 1 decided (intent pending, not applied),
        2 applied (no result), 3 result (alert not recorded), 4 alert recorded (not delivered),
        5 delivered (settled)."""
        if inc.incident_id is None:
            inc.incident_id = self.find_incident(inc)
            if inc.incident_id is None:
                return 0
        rows = self.journal.actions(JOB, incident_id=inc.incident_id)
        if not rows:
            raise AssertionError(f"incident {inc.index} ({inc.incident_id}) decided without an action")
        row = rows[0]
        if row.result is None:
            done = any(a.key == row.action.idempotency_key for a in applied(self.target))
            return 2 if done else 1
        outbox = self.journal.outbox(alert_id=f"{inc.incident_id}:firing")
        if not outbox:
            return 3
        return 5 if all(r.delivered_at is not None for r in outbox) else 4

    @staticmethod
    def ahead(progress: int) -> list[str]:
        """The hot crash points an incident at `progress` will still pass (after a restart, an applied
        intent is settled by reconcile without apply; a recorded alert is re-sent from the outbox)."""
        first = {0: "decide.incident", 1: "action.apply", 2: "action.result", 3: "alert.recorded",
                 4: "alert.deliver"}.get(progress)  # fmt: skip
        return list(HOT_STAGES[HOT_STAGES.index(first) :]) if first else []

    # ------------------------------------------------------------------ plans

    def least_killed(self, stages: list[str]) -> str:
        low = min(self.kills[s] for s in stages)
        return self.rng.choice(sorted(s for s in stages if self.kills[s] == low))

    def plan(self, stage: str, hit: int) -> tuple[float, str | None]:
        if stage == "external":
            return round(self.rng.uniform(0.3, 2.0), 3), None
        spec = f"stage={stage},hit={hit},log={self.kill_log}"
        return PLAN_TIMEOUT_S, spec

    def hot_plan(self, inc: Injected) -> tuple[float, str | None]:
        ahead = self.ahead(self.progress(inc))
        if ahead and self.rng.random() < 0.75:
            return self.plan(self.least_killed(ahead), 1)
        stage = self.rng.choice(ANY_TIME)
        return self.plan(stage, self.rng.randint(1, 4) if stage == "journal.commit" else 1)

    def idle_plan(self) -> tuple[float, str | None]:
        stage = self.least_killed(list(IDLE_STAGES))
        return self.plan(stage, self.rng.randint(1, 8))

    # ------------------------------------------------------------------ writing the scenario

    def inject(self, inc: Injected) -> None:
        _, rule, spec = SCENARIO[inc.index]
        state = read_state(self.target)
        assert state is not None and state["running"], state
        members = state["nodes"]
        keys = KEY_LINES.get(rule, set(range(len(spec))))
        for i, (member, template) in enumerate(spec):
            node = members[member]
            text = template.format(r=members.index(node) * 8 + i)
            inc.lines.append(Line(node, self.cw.stamp(), text, i in keys))
        noise = []
        for node in members[:2]:
            self.noise += 1
            noise.append(Line(node, self.cw.stamp(), NOISE.format(n=self.noise, m=self.noise * 512), False))
        self.cw.put(noise)
        self.cw.put(inc.lines)
        inc.written_at = time.time()
        self.injected.append(inc)

    def write_late_lines(self, inc: Injected) -> None:
        """A peer's collective timeout from the failed attempt, ingested after the relaunch (the
        CloudWatch agent batches): its event time is before the new attempt's launch."""
        state = read_state(self.target)
        assert state is not None
        failed_ms = max(ln.ts_ms for ln in inc.lines)
        launched_ms = int(state["launched_at"] * 1000)
        at_ms = min(failed_ms + 150, launched_ms - 5)
        if at_ms <= failed_ms:
            return
        node = state["nodes"][-1]
        late = Line(node, max(at_ms, self.cw.stamp(at_ms / 1000)), NCCL_WATCHDOG.format(r=7), False)
        if late.ts_ms >= launched_ms:
            return
        inc.late.append(late)
        self.cw.put([late])

    # ------------------------------------------------------------------ the loop

    def next_daemon(self) -> Running:
        """Choose the next daemon's fate: a crash point (and hit) or an outside kill, by phase."""
        current = self.current
        if current is not None and current.hot_kills < HOT_KILLS:
            return Running(*self.hot_plan(current), for_incident=True)
        if current is not None:
            return Running(0.0, None, for_incident=False)  # no kill: let the incident settle
        if len(self.injected) < len(SCENARIO) and self.idle_kills >= IDLE_KILLS:
            index = len(self.injected)
            self.current = Injected(index, *SCENARIO[index][:2])
            self.inject_at = time.monotonic() + self.rng.uniform(0.1, 1.0)  # into the running daemon
            return Running(*self.plan(self.least_killed(list(HOT_STAGES)), 1), for_incident=True)
        return Running(*self.idle_plan(), for_incident=False)

    def run(self) -> None:
        started = time.monotonic()
        daemon: Running | None = None
        while True:
            if time.monotonic() - started > DEADLINE_S:
                raise AssertionError(self.diagnose(f"not done within {DEADLINE_S:g}s"))
            if daemon is None:
                done = len(self.injected) == len(SCENARIO) and self.current is None
                if done and sum(self.kills.values()) >= MIN_KILLS:
                    return
                daemon = self.next_daemon()
                daemon.pid = self.zygote.start(daemon.kill_after, daemon.spec)
                self.starts += 1
            current = self.current
            if current is not None and self.inject_at is not None and time.monotonic() >= self.inject_at:
                if read_state(self.target) is None:  # not launched yet (its daemon was killed first)
                    self.inject_at = time.monotonic() + 0.2
                else:
                    self.inject(current)
                    self.inject_at = None
            if current is not None and current.written_at:
                progress = self.progress(current)
                if progress != current.progress:
                    current.progress, current.progress_at = progress, time.monotonic()
                elif time.monotonic() - current.progress_at > STALL_S:
                    raise AssertionError(self.diagnose(f"incident {current.index} stuck at {progress}"))
                if progress >= 2 and current.verdict != "halt" and not current.late:
                    self.write_late_lines(current)
                if progress == 5:
                    current.settled = True
                    self.current, self.idle_kills = None, 0
                    if daemon.spec is None or daemon.stage in HOT_STAGES:
                        self.zygote.send("KILL")  # it has nothing left to die at: from outside, now
                        daemon.settled_kill = True
            event = self.zygote.exit_event(0.05)
            if event is None:
                continue
            ended, how, n, by_zygote = event
            assert ended == daemon.pid, (ended, daemon)
            stage = self.stage_of(ended)
            if how == "code":
                if n != 3:
                    raise AssertionError(self.diagnose(f"daemon {ended} exited with code {n}"))
                self.halted_exits += 1  # run_forever ends a halted job's daemon with code 3
            elif stage is None:
                if not by_zygote:
                    raise AssertionError(self.diagnose(f"daemon {ended} died of signal {n} on its own"))
                stage = "external"
                if daemon.spec is not None and not daemon.settled_kill:
                    self.plan_timeouts += 1
            if stage is not None:
                self.kills[stage] += 1
                if daemon.for_incident and self.current is not None:
                    self.current.hot_kills += 1
                elif self.current is None:
                    self.idle_kills += 1
            daemon = None

    def stage_of(self, pid: int) -> str | None:
        if not self.kill_log.exists():
            return None
        for line in self.kill_log.read_text().splitlines():
            stage, who = line.split()
            if int(who) == pid:
                return stage
        return None

    def finish(self) -> None:
        """One last daemon without chaos: it must find nothing to do; then a clean SIGTERM."""
        self.zygote.start(0.0, None)
        self.starts += 1
        time.sleep(3.0)  # re-reads its overlap window, retries nothing
        self.zygote.send("TERM")
        event = self.zygote.exit_event(30.0)
        assert event is not None and event[1:3] == ("code", 0), self.diagnose(f"final daemon: {event}")

    def diagnose(self, what: str) -> str:
        logs = sorted(self.workdir.glob("daemon-*.log"))
        tail = logs[-1].read_text()[-3000:] if logs else ""
        state = read_state(self.target)
        return (
            f"{what}; kills {dict(self.kills)}; incidents injected {len(self.injected)}; "
            f"progress {[(i.index, i.incident_id, i.settled) for i in self.injected]}; "
            f"applied {state['applied'] if state else None}; last daemon log:\n{tail}"
        )


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_sigkill_at_every_stage_loses_nothing_and_repeats_nothing(
    tmp_path: Path, moto_endpoint: str, receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    t0 = time.monotonic()
    run = Chaos(tmp_path, moto_endpoint, receiver)
    try:
        run.run()
        run.finish()
    finally:
        run.zygote.close()
    runtime = time.monotonic() - t0
    journal = run.journal

    # Every injected incident detected, once, as the shipped policies say; nothing else.
    incidents = {row.incident.incident_id: row.incident for row in journal.incidents(JOB)}
    found = [run.find_incident(inc) for inc in run.injected]
    assert None not in found, found
    assert len(set(found)) == len(SCENARIO) == len(incidents), (found, sorted(incidents))
    for inc, incident_id in zip(run.injected, found, strict=True):
        assert incident_id is not None
        assert incidents[incident_id].root_cause.rule == inc.rule, (inc.index, incidents[incident_id])

    # Each action applied exactly once, and journaled as done.
    apply_log = applied(run.target)
    keys = Counter(a.key for a in apply_log)
    duplicates = sum(n - 1 for n in keys.values())
    expected = {f"{i}:{inc.verdict}" for i, inc in zip(found, run.injected, strict=True)}
    assert duplicates == 0, apply_log
    assert set(keys) == expected, (sorted(keys), sorted(expected))
    rows = journal.actions(JOB)
    assert {r.action.idempotency_key for r in rows} == expected
    assert all(r.result is not None and r.result.ok for r in rows), [r for r in rows if not r.result]
    assert journal.pending_intents() == []
    attempts = journal.attempts(JOB)
    assert [a.attempt for a in attempts] == list(range(len(SCENARIO))), attempts
    assert [a.cause_incident for a in attempts[1:]] == found[:-1], attempts  # the halt relaunches nothing

    # No event skipped: each failure line written is a signal of its incident (by eventId).
    ids = run.cw.event_ids()
    lost = 0
    for inc, incident_id in zip(run.injected, found, strict=True):
        assert incident_id is not None
        seen = {s.event_id for s in incidents[incident_id].signals}
        lost += sum(1 for ln in inc.lines if ln.key and ids[(ln.node, ln.ts_ms, ln.text)] not in seen)
    assert lost == 0

    # No duplicate page, none lost; redeliveries of one dedup key are at-least-once delivery.
    firing = [a for a in receiver.received() if a["status"] == "firing"]
    dedup_keys = Counter(f"{a['incident_id']}:{a['status']}" for a in firing)
    per_incident = Counter(a["incident_id"] for a in firing)
    unknown = [a for a in firing if a["incident_id"] not in set(found)]
    duplicate_pages = len(unknown) + sum(
        max(0, len({k for k in dedup_keys if k.startswith(i)}) - 1) for i in per_incident
    )
    lost_pages = sum(1 for i in found if per_incident[i] == 0)
    redeliveries = len(firing) - len(dedup_keys)
    assert duplicate_pages == 0 and lost_pages == 0, (unknown, per_incident)
    assert journal.outbox_pending() == []
    observed = sum(1 for r in rows if r.result is not None and "not repeated" in r.result.detail)
    halt_pages = [a for a in firing if a["page"]]
    assert {a["incident_id"] for a in halt_pages} == {found[-1]}

    kills = sum(run.kills.values())
    assert kills >= MIN_KILLS
    missing = [s for s in (*chaos.STAGES, "external") if run.kills[s] == 0]
    assert not missing, (missing, run.kills)
    by_stage = ", ".join(f"{s}={run.kills[s]}" for s in (*chaos.STAGES, "external"))
    with capsys.disabled():
        print(
            f"\nchaos seed={SEED}: kills={kills} ({by_stage}; {run.plan_timeouts} crash point(s) outrun by "
            f"the outside kill) restarts={run.starts} halted-exits={run.halted_exits} "
            f"incidents={len(found)} actions={len(apply_log)} (settled at restart by observing: {observed}) "
            f"duplicates={duplicates} lost={lost} "
            f"alerts={len(dedup_keys)} duplicate-pages={duplicate_pages} lost-pages={lost_pages} "
            f"redeliveries={redeliveries} events-written={len(run.cw.written)} "
            f"events-counted={journal.events_seen('logs')} runtime={runtime:.0f}s"
        )
    journal.close()
