"""Part 1 of the benchmark: detection and action latency, end to end over the real path.

    node process writes a line -> node agent (trainer.node_agent) -> watchtower -> moto server over
    HTTP -> CloudWatchLogsSource (FilterLogEvents) -> classify -> incident (settle window) -> decision
    journaled -> action started by the local actuator

Everything after the node process is the production code: `daemon.build` from a config file, the
shipped policies, the journal, the local actuator launching one node agent per simulated node
(exactly as `ftsup demo` does), against `EmbeddedCloudWatch` (moto's server on a free 127.0.0.1 port).

**The workload is a stand-in** for the FSDP trainer: a small Python loop per node (`workload` below)
that prints the trainer's JSON step lines (which the engine reads as progress) every 0.2 s, publishes
the trainer's CloudWatch metrics through the trainer's own `MetricsPublisher` (step, heartbeat, ...),
and, when the harness drops a request into its fault directory, writes the failing line(s) to its
stdout (collective timeouts, a Python traceback) or to the node's kernel log (Xid, OOM killer), records
`time.time()` right after the write (flushed) to a side file, and stops stepping (it stays alive, so
the process-exit path does not race the log path being measured). It stands in because a torchrun +
FSDP relaunch costs ~10 s of CPU on 2 cores, so 50+ failures would not fit in a few minutes; the
latency measured is that of the supervisor's path, which does not depend on what produced the line.
It is launched by the local actuator through its bench-only `LocalJobSpec.workload` (the node agent,
environment, stop and relaunch are unchanged).

Measured per injected failure, all from the wall clock of this machine:
* decision latency: journal `decisions.decided_at` - the line's write time;
* action latency: journal `results.started_at` (the actuator's apply() began) - the line's write time;
* breakdown: ship (write -> the agent's CloudWatch event timestamp), ingest (-> moto's ingestionTime:
  watchtower batches every 1 s, but the node agent sends a line some policy rule may match at once),
  poll (-> the engine received the batch holding the line: the poll interval), settle+decide
  (-> decision; the settle window, counted from the line's write time, unless the root cause is a
  node hardware fault, which is decided at once), act (decision -> action start).

Sources, poll intervals and the settle window are the shipped defaults of the config (the daemon is
built from a config that sets none of them). Budgets are the one change to the shipped policies: 50+
failures within minutes would exhaust the restart budget (3 per hour), the cordon budget and the
flapping guard, and turn every later failure into a halt; the bench loads every shipped policy file
but `budgets.yaml`, plus a budgets file without limits or backoff (the backoff would only lengthen
the run: the action starts before it). Python exceptions halt the job: the harness then restarts the
daemon with `clear_halt` (what `ftsup run --clear-halt` does) and the next failure follows.

Two failure jobs run at once (each its own daemon, journal, log group and 2 nodes) to fit 50+
failures in a few minutes; hangs (no progress, no error) run meanwhile in their own 1-node jobs and
are detected by the shipped `no-step-progress` metric rule (step not increasing for its `stalled_for`).

    python bench/latency.py [--quick] [--count N] [--jobs 2] [--hang-jobs 2] [--workdir DIR] [--json]

`--json` prints `{"latency": {...}}` on the last line (bench/run_all.py merges it into results.json).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STEP_S = 0.2
METRICS_INTERVAL_S = 1.0
WORKLOAD = (
    "stand-in workload, not the FSDP trainer: one small Python process per node under the real node "
    "agent, launched by the local actuator; it prints the trainer's JSON step lines every 0.2 s, "
    "publishes the trainer's CloudWatch metrics (trainer.metrics.MetricsPublisher, every 1 s) and writes "
    "each failing line itself, recording time.time() right after the flushed write. Why: a torchrun + "
    "FSDP relaunch costs ~10 s of CPU on 2 cores, so 50+ failures would not fit in minutes; the path "
    "measured (node agent -> watchtower -> moto -> source -> classify -> decide -> act) is the real one"
)

# ----------------------------------------------------------------------------------------- failures


@dataclass(frozen=True)
class Kind:
    name: str
    channel: str  # "stdout" (the process's output) or "kmsg" (the node's kernel log)
    expect_rule: str
    expect_verdict: str
    template: tuple[str, ...]  # lines; "{n}" makes each injection's text unique; the last one fails

    def lines(self, n: int) -> list[str]:
        return [t.replace("{n}", str(n)) for t in self.template]


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind(
            "xid79",
            "kmsg",
            "gpu-fallen-off-bus",
            "cordon_and_restart",
            ("NVRM: Xid (PCI:0000:3b:00): 79, pid={n}, name=python, GPU has fallen off the bus.",),
        ),
        Kind(
            "xid48",
            "kmsg",
            "gpu-xid-48-dbe",
            "cordon_and_restart",
            (
                "NVRM: Xid (PCI:0000:3b:00): 48, pid={n}, name=python, An uncorrectable double bit error "
                "(DBE) has been detected on GPU in the framebuffer at partition 0, subpartition 0.",
            ),
        ),
        Kind(
            "xid95",
            "kmsg",
            "gpu-xid-ecc-uncontained",
            "cordon_and_restart",
            (
                "NVRM: Xid (PCI:0000:3b:00): 95, pid={n}, name=python, "
                "Uncontained: FBHUB. RST: Yes, D-RST: No",
            ),
        ),
        Kind(
            "nccl_timeout",
            "stdout",
            "nccl-watchdog-timeout",
            "restart",
            (
                "[rank0]:[E1128 04:26:01.123456 812 ProcessGroupNCCL.cpp:616] [Rank 0] Watchdog caught "
                "collective operation timeout: WorkNCCL(SeqNum={n}, OpType=ALLREDUCE, NumelIn=1, NumelOut=1, "
                "Timeout(ms)=600000) ran for 600000 milliseconds before timing out.",
            ),
        ),
        Kind(
            "gloo_timeout",
            "stdout",
            "gloo-timeout",
            "restart",
            (
                "RuntimeError: [/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out "
                "waiting {n}ms for recv operation to complete",
            ),
        ),
        Kind(
            "oom_killed",
            "kmsg",
            "host-oom-killer",
            "restart",
            (
                "Out of memory: Killed process {n} (python) total-vm:26184840kB, anon-rss:15370088kB, "
                "file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:38964kB oom_score_adj:0",
            ),
        ),
        Kind(
            "python_exception",
            "stdout",
            "python-exception",
            "halt",
            (
                "Traceback (most recent call last):",
                '  File "/opt/job/train.py", line {n}, in <module>',
                '    batch = sample["labels"]',
                "KeyError: 'labels_{n}'",
            ),
        ),
    )
}
HANG_RULE = "no-step-progress"

# One cycle: 5 node faults (cordon; decided at once), 7 collective / host faults (restart; settle
# window), 1 code bug (halt; the daemon is restarted with clear_halt before the next one).
CYCLE = (
    "xid79",
    "nccl_timeout",
    "xid48",
    "gloo_timeout",
    "oom_killed",
    "xid95",
    "nccl_timeout",
    "xid79",
    "gloo_timeout",
    "xid48",
    "oom_killed",
    "nccl_timeout",
    "python_exception",
)
QUICK_CYCLE = ("xid79", "nccl_timeout", "python_exception", "xid48", "gloo_timeout")

BUDGETS_YAML = """\
# bench/latency.py: 50+ failures in minutes would exhaust the shipped budgets (budgets.yaml) and turn
# the rest into halts. No limits, no backoff (the action starts before a backoff anyway).
budgets:
  restart: {max: 100000, within: 1h, backoff: 0s, backoff_max: 0s, jitter: 0}
  cordon: {max_nodes: 100000, within: 1s, max_fraction: 1.0}
  shared_cause: {nodes: 100000, within: 1s}
  lemon: {incidents: 100000, within: 1s, watch_after_return: 0s, watch_incidents: 1}
  flapping: {min_interval: 0s, max_flaps: 100000, within: 1s}
"""


def _write_json_atomic(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------- workload


def workload(argv: list[str]) -> int:
    """The stand-in node process (run by the node agent; see the module docstring)."""
    ap = argparse.ArgumentParser(prog="bench/latency.py workload")
    ap.add_argument("--fault-dir", type=Path, required=True)
    ap.add_argument("--step-s", type=float, default=STEP_S)
    ap.add_argument("--metrics-interval-s", type=float, default=METRICS_INTERVAL_S)
    ap.add_argument("--namespace", default="ftsup/Trainer")
    args = ap.parse_args(argv)
    from trainer.jsonlog import JsonLogger
    from trainer.metrics import MetricsPublisher

    job, node = os.environ["FTSUP_JOB"], os.environ["FTSUP_NODE"]
    attempt = int(os.environ.get("FTSUP_ATTEMPT", "0"))
    kmsg = Path(os.environ["FTSUP_KMSG_FILE"])
    region = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
    log = JsonLogger(job, node, 0, 0, attempt)
    metrics = MetricsPublisher(
        job, node, log, args.namespace, region, os.environ.get("FTSUP_CW_ENDPOINT"), args.metrics_interval_s
    )
    metrics.start()
    log.emit("start", workload="bench/latency.py stand-in")
    faults: Path = args.fault_dir
    faults.mkdir(parents=True, exist_ok=True)
    (faults / f"ready.{attempt}.{node}").touch()
    request = faults / f"{node}.json"
    step, stepping = 0, True
    last_step_wall = time.time()
    intervals: list[float] = []
    prev = time.monotonic()
    while True:
        started = time.monotonic()
        if stepping:
            step += 1
            intervals.append(started - prev)
            prev = started
            log.emit(
                "step",
                step=step,
                loss=round(5.0 / math.sqrt(step), 4),
                step_time_s=args.step_s,
                tokens_per_s=4096.0,
            )
            metrics.update(step, loss=5.0 / math.sqrt(step), step_time_s=args.step_s, tokens_per_s=4096.0)
            last_step_wall = time.time()
        if request.exists():
            try:
                req = json.loads(request.read_text())
            except ValueError:
                req = None  # written atomically; unreadable means not ours
            if req is not None and req.get("attempt") == attempt:
                request.unlink()
                record: dict[str, Any] = {"id": req["id"], "node": node, "attempt": attempt}
                if req["kind"] == "hang":
                    # No progress and no error from now on: the last step is when training stopped.
                    record.update(
                        t=last_step_wall,
                        last_step=step,
                        step_p99_s=_quantile(intervals[1:], 0.99) if len(intervals) > 2 else None,
                    )
                elif req["channel"] == "kmsg":
                    with open(kmsg, "a", encoding="utf-8") as f:
                        f.write("".join(line + "\n" for line in req["lines"]))
                        f.flush()
                    record["t"] = time.time()
                else:
                    sys.stdout.write("".join(line + "\n" for line in req["lines"]))
                    sys.stdout.flush()
                    record["t"] = time.time()
                stepping = False  # a failed rank makes no more progress; the actuator stops it
                _write_json_atomic(faults / f"{req['id']}.written.json", record)
        time.sleep(max(0.0, args.step_s - (time.monotonic() - started)))


# ----------------------------------------------------------------------------------------- harness


def _quantile(values: list[float], q: float) -> float:
    """Linear-interpolated quantile (q in [0, 1]) of a non-empty list."""
    s = sorted(values)
    pos = (len(s) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass
class Sample:
    job: str
    fault_id: str
    kind: str
    node: str
    written: float
    expect_rule: str
    expect_verdict: str
    text: str  # the failing line, as shipped
    incident_id: str | None = None
    rule: str | None = None
    verdict: str | None = None
    decided_at: float | None = None
    action_started_at: float | None = None
    shipped_at: float | None = None  # the CloudWatch event timestamp (the agent's ship() call)
    ingested_at: float | None = None  # moto's ingestionTime
    received_at: float | None = None  # the engine received the batch holding the line
    error: str | None = None


@dataclass
class JobRun:
    """One supervised job: its config, its daemon (restarted after a halt) and its injections."""

    name: str
    root: Path
    endpoint: str
    env: dict[str, str]
    nodes: tuple[str, ...]
    spares: tuple[str, ...]
    say: Callable[[str], None]
    samples: list[Sample] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)
    daemon_seconds: float = 0.0
    daemon: Any = None
    _started: float = 0.0
    _watch: dict[str, Sample] = field(default_factory=dict)  # failing line text -> its sample
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def faults(self) -> Path:
        return self.root / "faults"

    def config_path(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        budgets = self.root / "bench-budgets.yaml"
        budgets.write_text(BUDGETS_YAML)
        policies = [str(p) for p in sorted((ROOT / "policies").glob("*.yaml")) if p.name != "budgets.yaml"]
        cfg = {
            "job": {"name": self.name, "log_group": f"/ftsup/bench/{self.name}-{int(time.time())}"},
            "policies": [*policies, str(budgets)],
            "mode": "act",
            "actuator": {
                "kind": "local",
                "local": {
                    "nodes": list(self.nodes),
                    "spares": list(self.spares),
                    "run_dir": str(self.root / "job"),
                },
            },
            "journal": {"path": str(self.root / "ftsup.db")},
            "alerts": {"log": True},
            "metrics_server": {"port": None},
        }
        path = self.root / "ftsup.yaml"
        path.write_text(json.dumps(cfg, indent=1))  # JSON is YAML
        return path

    def start_daemon(self, config: Any, *, clear_halt: bool = False) -> None:
        from supervisor.act.local import LocalActuator
        from supervisor.daemon import build

        daemon = build(config, endpoint_override=self.endpoint, env=self.env)
        actuator = daemon.actuator
        assert isinstance(actuator, LocalActuator)
        actuator.spec = dataclasses.replace(
            actuator.spec,
            workload=(
                sys.executable,
                str(Path(__file__).resolve()),
                "workload",
                "--fault-dir",
                str(self.faults),
            ),
        )
        original = daemon.engine.process_batch

        def process_batch(batch: Any) -> None:
            """Note when the engine got the batch holding a failing line, then process it as ever."""
            now = time.time()
            if self._watch:
                with self._lock:
                    for event in batch.logs:
                        s = self._watch.get(event.text)
                        if s is not None and s.received_at is None:
                            s.received_at, s.shipped_at, s.ingested_at = now, event.timestamp, event.ingested
            original(batch)

        daemon.engine.process_batch = process_batch  # the engine loop calls it through the instance
        if clear_halt:
            daemon.clear_halt()
        daemon.start(launch=True)
        self.daemon, self._started = daemon, time.monotonic()

    def stop_daemon(self) -> None:
        daemon, self.daemon = self.daemon, None
        if daemon is None:
            return
        self.daemon_seconds += time.monotonic() - self._started
        for api, n in daemon.calls.snapshot().items():
            self.calls[api] = self.calls.get(api, 0) + n
        daemon.shutdown(stop_job=True)

    def wait(self, what: str, done: Callable[[], Any], timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = done()
            if got:
                return got
            time.sleep(0.05)
        raise TimeoutError(f"{self.name}: timed out after {timeout_s:.0f}s waiting for {what}")

    def ready(self, warmup_s: float) -> Any:
        """Wait until no action is in flight and every node of the current attempt is stepping."""

        def check() -> Any:
            snap = self.daemon.engine.snapshot()
            if snap.acting or snap.halted:
                return None
            if all((self.faults / f"ready.{snap.attempt}.{n}").exists() for n in snap.nodes):
                return snap
            return None

        self.wait("the job to run", check, 60)
        time.sleep(warmup_s)  # a few steps of training before the fault
        return self.daemon.engine.snapshot()

    def inject(self, index: int, kind: str, node: str, attempt: int) -> Sample:
        fault_id = f"{self.name}-{index:03d}-{kind}"
        if kind == "hang":
            body: dict[str, Any] = {"id": fault_id, "kind": "hang", "attempt": attempt}
            sample = Sample(self.name, fault_id, kind, node, 0.0, HANG_RULE, "restart", "")
        else:
            k = KINDS[kind]
            lines = k.lines(10_000 + index * 7 + sum(map(ord, self.name)))
            body = {"id": fault_id, "kind": kind, "attempt": attempt, "channel": k.channel, "lines": lines}
            sample = Sample(self.name, fault_id, kind, node, 0.0, k.expect_rule, k.expect_verdict, lines[-1])
            with self._lock:
                self._watch[sample.text] = sample
        self.faults.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(self.faults / f"{node}.json", body)
        written = self.faults / f"{fault_id}.written.json"
        record = self.wait(
            f"{fault_id} to be written", lambda: written.exists() and json.loads(written.read_text()), 30
        )
        sample.written = float(record["t"])
        if kind == "hang":
            sample.text = json.dumps(
                {"last_step": record.get("last_step"), "step_p99_s": record.get("step_p99_s")}
            )
        self.samples.append(sample)
        return sample

    def handled(self, seen: int, timeout_s: float) -> Any:
        from supervisor.demo import newest_decided

        def check() -> Any:
            snap = self.daemon.engine.snapshot()
            h = newest_decided(snap, seen)
            if h is None or h.result is None or snap.acting:
                return None
            return h

        return self.wait("the failure to be decided and acted on", check, timeout_s)

    def run(self, config: Any, schedule: list[str], warmup_s: float, timeout_s: float) -> None:
        from supervisor.vocabulary import Verdict

        self.start_daemon(config)
        try:
            for i, kind in enumerate(schedule):
                snap = self.ready(warmup_s)
                node = snap.nodes[i % len(snap.nodes)]
                seen = len(snap.handled)
                sample = self.inject(i, kind, node, snap.attempt)
                try:
                    h = self.handled(seen, timeout_s)
                except TimeoutError as exc:
                    sample.error = str(exc)
                    self.say(f"{self.name}: {sample.fault_id}: {exc}")
                    break
                sample.incident_id = h.incident.incident_id
                sample.rule, sample.verdict = h.incident.root_cause.rule, h.decision.verdict.value
                lat = h.decision.decided_at - sample.written
                self.say(
                    f"{self.name} #{i:02d} {kind:<16} on {node:<9} -> {sample.verdict} ({sample.rule}) "
                    f"decided {lat:5.2f}s after the write"
                )
                if h.decision.verdict is Verdict.HALT:
                    # A human looked and relaunches: `ftsup run --clear-halt`.
                    self.stop_daemon()
                    self.start_daemon(config, clear_halt=True)
        finally:
            self.stop_daemon()

    def read_journal(self, path: Path) -> None:
        """Decision and action-start times as journaled, per incident."""
        from supervisor.journal import Journal

        journal = Journal(path)
        try:
            decided = {d.decision.incident_id: d.decision.decided_at for d in journal.decisions(self.name)}
            started = {
                a.action.incident_id: a.result.started_at
                for a in journal.actions(self.name)
                if a.result is not None
            }
        finally:
            journal.close()
        for s in self.samples:
            if s.incident_id is not None:
                s.decided_at = decided.get(s.incident_id)
                s.action_started_at = started.get(s.incident_id)


# ----------------------------------------------------------------------------------------- report


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


def _stats(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50_s": None, "p99_s": None, "max_s": None}
    return {
        "n": len(values),
        "p50_s": _r(_quantile(values, 0.5)),
        "p99_s": _r(_quantile(values, 0.99)),
        "max_s": _r(max(values)),
    }


def summarize(
    samples: list[Sample],
    hangs: list[Sample],
    config: Any,
    calls: dict[str, float],
    stall_s: float,
    hang_p99_step_s: float | None,
    quick: bool,
    wall_s: float,
    jobs: int,
) -> dict[str, Any]:
    ok = [s for s in samples if s.decided_at is not None and s.action_started_at is not None]
    dec = [s.decided_at - s.written for s in ok if s.decided_at is not None]
    act = [s.action_started_at - s.written for s in ok if s.action_started_at is not None]
    by_kind: dict[str, Any] = {}
    for kind in sorted({s.kind for s in ok}):
        ks = [s for s in ok if s.kind == kind]
        d = _stats([s.decided_at - s.written for s in ks if s.decided_at is not None])
        a = _stats([s.action_started_at - s.written for s in ks if s.action_started_at is not None])
        by_kind[kind] = {
            "n": len(ks),
            "rule": KINDS[kind].expect_rule,
            "verdict": KINDS[kind].expect_verdict,
            "decision_p50_s": d["p50_s"],
            "decision_p99_s": d["p99_s"],
            "action_p50_s": a["p50_s"],
            "action_p99_s": a["p99_s"],
        }
    phases: dict[str, list[float]] = {
        "ship": [],
        "ingest": [],
        "poll": [],
        "settle_and_decide": [],
        "act": [],
    }
    for s in ok:
        if None in (s.shipped_at, s.ingested_at, s.received_at, s.decided_at, s.action_started_at):
            continue
        assert s.shipped_at is not None and s.ingested_at is not None and s.received_at is not None
        assert s.decided_at is not None and s.action_started_at is not None
        phases["ship"].append(s.shipped_at - s.written)
        phases["ingest"].append(s.ingested_at - s.shipped_at)
        phases["poll"].append(s.received_at - s.ingested_at)
        phases["settle_and_decide"].append(s.decided_at - s.received_at)
        phases["act"].append(s.action_started_at - s.decided_at)
    breakdown = {k: {"p50_s": _stats(v)["p50_s"], "p99_s": _stats(v)["p99_s"]} for k, v in phases.items()}
    decisive = [
        s.decided_at - s.written for s in ok if s.decided_at and s.expect_verdict == "cordon_and_restart"
    ]
    settled = [
        s.decided_at - s.written for s in ok if s.decided_at and s.expect_verdict != "cordon_and_restart"
    ]
    mismatched = [
        f"{s.fault_id}: expected {s.expect_rule}/{s.expect_verdict}, got {s.rule}/{s.verdict}"
        for s in samples
        if s.incident_id is not None and (s.rule != s.expect_rule or s.verdict != s.expect_verdict)
    ]
    hang_det = [s.decided_at - s.written for s in hangs if s.decided_at is not None]
    hang_target = max(3 * hang_p99_step_s, 120.0) if hang_p99_step_s is not None else 120.0
    settle = config.incidents.settle_s
    out: dict[str, Any] = {
        "decision_p50_s": _r(_quantile(dec, 0.5)) if dec else None,
        "decision_p99_s": _r(_quantile(dec, 0.99)) if dec else None,
        "action_p50_s": _r(_quantile(act, 0.5)) if act else None,
        "action_p99_s": _r(_quantile(act, 0.99)) if act else None,
        "n": len(ok),
        "injected": len(samples),
        "failed": [s.error for s in samples if s.error]
        + [f"{s.fault_id}: not journaled" for s in samples if s.error is None and s not in ok],
        "mismatched": mismatched,
        "by_kind": by_kind,
        "decided_at_once": {  # node hardware faults: no settle window
            **_stats(decisive),
            "kinds": "xid79, xid48, xid95 (cordon_and_restart)",
        },
        "decided_after_settle": {
            **_stats(settled),
            "kinds": "nccl/gloo timeouts, OOM kill, Python exception",
        },
        "breakdown_s": breakdown,
        "breakdown_note": (
            "ship: write -> node agent's CloudWatch event timestamp (kmsg tail every 0.2 s / pipe); ingest: "
            "-> moto ingestionTime (watchtower sends every 1 s; lines a policy rule may match at once); "
            "poll: -> engine received the batch (logs "
            f"poll every {config.sources.logs.poll_interval_s:g} s); settle_and_decide: -> decision "
            f"journaled (settle window {settle:g} s from the first line's write time unless a node hardware "
            "cause); act: decision -> "
            "actuator apply() start"
        ),
        "targets": {
            "decision_p50_s<=2": bool(dec) and _quantile(dec, 0.5) <= 2.0,
            "decision_p99_s<=5": bool(dec) and _quantile(dec, 0.99) <= 5.0,
            "action_p50_s<=2": bool(act) and _quantile(act, 0.5) <= 2.0,
            "action_p99_s<=5": bool(act) and _quantile(act, 0.99) <= 5.0,
        },
        "poll_interval_s": config.sources.logs.poll_interval_s,
        "metrics_poll_interval_s": config.sources.metrics.poll_interval_s,
        "settle_s": settle,
        "calls_per_s": calls,
        "hang_detection_s": [_r(x, 1) for x in hang_det],
        "hang": {
            "n": len(hang_det),
            "rule": HANG_RULE,
            "stall_threshold_s": stall_s,
            "p99_step_s": _r(hang_p99_step_s),
            "target_s": _r(hang_target, 1),
            "met": bool(hang_det) and max(hang_det) <= hang_target,
            "measured_from": "the hung rank's last step (wall clock) to the decision journaled",
            "skipped": "--quick (a hang takes the stall threshold, minutes)" if quick else None,
        },
        "workload": WORKLOAD,
        "jobs": jobs,
        "config": (
            "shipped defaults for sources, poll intervals and settle; budgets without limits (see docstring)"
        ),
        "wall_s": round(wall_s, 1),
        "quick": quick,
    }
    return out


# ----------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["workload"]:
        return workload(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a tiny smoke run: 1 job, a few failures, no hang")
    ap.add_argument("--count", type=int, default=None, help="failures to inject in all (default 52; quick 5)")
    ap.add_argument("--jobs", type=int, default=None, help="failure jobs run at once (default 2; quick 1)")
    ap.add_argument("--hang-jobs", type=int, default=None, help="hang cases, one 1-node job each (default 2)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep everything here (default: a temp dir)")
    ap.add_argument("--json", action="store_true", help='print {"latency": {...}} on the last line')
    args = ap.parse_args(argv)
    count = args.count if args.count is not None else (5 if args.quick else 52)
    jobs = max(1, args.jobs if args.jobs is not None else (1 if args.quick else 2))
    hang_jobs = args.hang_jobs if args.hang_jobs is not None else (0 if args.quick else 2)
    cycle = QUICK_CYCLE if args.quick else CYCLE

    from supervisor.config import load_config
    from supervisor.local_cloudwatch import EmbeddedCloudWatch
    from supervisor.logs import configure_logging

    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="ftsup-latency-")
        workdir = Path(tmp.name)
    else:
        workdir = args.workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    out_lock = threading.Lock()

    def say(msg: str) -> None:
        with out_lock:
            print(
                f"[latency {time.strftime('%H:%M:%S')}] {msg}",
                file=sys.stderr if args.json else sys.stdout,
                flush=True,
            )

    daemon_log = open(workdir / "ftsup.log", "a", encoding="utf-8")  # noqa: SIM115 - closed below
    configure_logging("json", "info", stream=daemon_log)
    began = time.monotonic()
    try:
        with EmbeddedCloudWatch(export_env=True) as cw:
            say(f"CloudWatch-compatible endpoint (moto server) at {cw.endpoint_url}; work dir {workdir}")
            per_job = [count // jobs + (1 if j < count % jobs else 0) for j in range(jobs)]
            runs: list[tuple[JobRun, Any, list[str], float, float]] = []
            for j in range(jobs):
                spares = tuple(f"spare-{j}-{k}" for k in range(per_job[j] + 1))
                run = JobRun(
                    f"lat{j}",
                    workdir / f"lat{j}",
                    cw.endpoint_url,
                    cw.env(),
                    (f"node-{j}-0", f"node-{j}-1"),
                    spares,
                    say,
                )
                sched = [cycle[(k + 3 * j) % len(cycle)] for k in range(per_job[j])]
                runs.append((run, load_config(run.config_path()), sched, 1.0, 90.0))
            for h in range(hang_jobs):
                run = JobRun(
                    f"hang{h}",
                    workdir / f"hang{h}",
                    cw.endpoint_url,
                    cw.env(),
                    (f"hnode-{h}",),
                    (f"hspare-{h}",),
                    say,
                )
                runs.append((run, load_config(run.config_path()), ["hang"], 5.0 + 3 * h, 300.0))
            config = runs[0][1]
            say(
                f"{count} failures over {jobs} job(s) at once, {hang_jobs} hang case(s); logs poll every "
                f"{config.sources.logs.poll_interval_s:g}s, metrics every "
                f"{config.sources.metrics.poll_interval_s:g}s, "
                f"settle {config.incidents.settle_s:g}s (the config's defaults)"
            )
            errors: list[str] = []

            def drive(run: JobRun, cfg: Any, sched: list[str], warmup: float, timeout: float) -> None:
                try:
                    run.run(cfg, sched, warmup, timeout)
                except Exception as exc:
                    errors.append(f"{run.name}: {type(exc).__name__}: {exc}")
                    say(f"{run.name}: FAILED: {type(exc).__name__}: {exc}")

            threads = [threading.Thread(target=drive, args=r, name=r[0].name) for r in runs]
            for t in threads:
                t.start()
                time.sleep(0.5)  # stagger the launches a little
            for t in threads:
                t.join()
            for run, cfg, *_ in runs:
                run.read_journal(Path(cfg.journal.path))
    finally:
        configure_logging("json", "warning")
        daemon_log.close()
    wall = time.monotonic() - began

    fail_runs = [r for r, *_ in runs if r.name.startswith("lat")]
    hang_runs = [r for r, *_ in runs if r.name.startswith("hang")]
    samples = [s for r in fail_runs for s in r.samples]
    hangs = [s for r in hang_runs for s in r.samples]
    seconds = sum(r.daemon_seconds for r in fail_runs)
    apis = ("FilterLogEvents", "GetMetricData")
    calls: dict[str, Any] = {
        api: round(sum(r.calls.get(api, 0) for r in fail_runs) / seconds, 3) if seconds else None
        for api in apis
    }
    calls["scope"] = (
        f"one daemon (one job): its ApiCallCounter over its running time, averaged over the {len(fail_runs)} "
        f"failure jobs' daemons ({seconds:.0f} daemon-seconds)"
    )
    p99_steps = [json.loads(s.text).get("step_p99_s") for s in hangs if s.text]
    p99_step = max((p for p in p99_steps if p is not None), default=None)
    from supervisor.classify.policy import MetricMatch, load_policies

    policy = load_policies([Path(p) for p in config.policies])
    stall_rule = policy.rule(HANG_RULE)
    stall_s = stall_rule.match.stalled_for if isinstance(stall_rule.match, MetricMatch) else None
    result = summarize(samples, hangs, config, calls, stall_s or 0.0, p99_step, args.quick, wall, jobs)
    result["errors"] = errors
    say(
        f"n={result['n']} decision p50 {result['decision_p50_s']}s p99 {result['decision_p99_s']}s; "
        f"action p50 {result['action_p50_s']}s p99 {result['action_p99_s']}s; targets {result['targets']}"
    )
    for kind, k in result["by_kind"].items():
        say(
            f"  {kind:<16} n={k['n']:<3} decision p50 {k['decision_p50_s']}s p99 {k['decision_p99_s']}s  "
            f"action p50 {k['action_p50_s']}s p99 {k['action_p99_s']}s  ({k['verdict']})"
        )
    say(f"  breakdown: {json.dumps(result['breakdown_s'])}")
    say(
        f"  hang detection {result['hang_detection_s']} s (stall threshold {stall_s}s, target "
        f"{result['hang']['target_s']}s); polling cost {calls}"
    )
    if result["mismatched"]:
        say("  mismatched: " + "; ".join(result["mismatched"]))
    if tmp is not None:
        with contextlib.suppress(OSError):
            tmp.cleanup()
    if args.json:
        print(json.dumps({"latency": result}))
    ok = result["n"] > 0 and not errors
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
