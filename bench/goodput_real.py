"""Part 3 of the benchmark: goodput of real runs under ftsup, plain torchrun and no supervisor.

One seeded fault schedule (two collective timeouts, a dead GPU node, a SIGKILL, a hang) is played,
for real, against the FSDP trainer (``trainer.train``: torch FSDP2 on CPU / gloo, 2 nodes of 1 rank
on this machine, each under its ``trainer.node_agent``) three times, one strategy after the other:

* ``ftsup``: the production daemon (``daemon.build`` from a config file, as ``ftsup demo`` runs it:
  embedded moto CloudWatch over HTTP, the shipped policies, the local actuator, one spare node), in
  act mode: it reads the job's logs and metrics back from CloudWatch, restarts it, or cordons a bad
  node and relaunches on the spare.
* ``torchrun``: plain ``torchrun --max-restarts=3`` on the same nodes: it relaunches every worker
  when one exits, on the same nodes (a dead node fails every restart until the budget is spent),
  and waits out a hang until the collective timeout. When it gives up, a human is paged.
* ``none``: no supervisor (``torchrun --max-restarts=0``): the job ends at the first fault; a human
  is paged and relaunches it after a reaction time. A hang ends the job only when the collective
  times out.

The human (torchrun after it gives up, and none) is modelled, not simulated: the page fires when the
job exits; the relaunch follows after the median daytime acknowledgement plus triage of
``bench/simulate.py`` (longer when the logs show a bad node, which the human then swaps for the spare).

Time is scaled. Every duration that belongs to the world rather than to this machine is the one
``bench/simulate.py`` assumes times ``--scale`` (default 1/60: 1 minute of a cluster's time is 1
second here): the collective (NCCL) timeout, the human's reaction, ftsup's budgets (restart window,
backoff, flapping, cordons) and its hang floor. 1/60 because it maps the simulator's 10-minute
relaunch at scale onto the ~10 s a relaunch takes here. Two durations are not scaled: ftsup's own
detection path (poll intervals, ingestion, settle window) runs at its real speed, and the hang floor
is raised to ``STALL_FLOOR_MIN_S`` because the stall clock starts at each relaunch and a relaunch
here takes ~10 s (a 2 s floor would read every relaunch as a hang). Both handicap ftsup.

The schedule is identical for every strategy and runs on the job's training clock: fault i strikes
when the job has trained for ``train_s`` seconds in all (wall time during which every member logged a
step within the last ``TRAINING_RECENT_S``), on the ``member``-th node of the job at that moment.
Failures therefore arrive at a constant rate per hour of training, as ``bench/simulate.py`` models
them, and every strategy meets the same faults at the same points of its training, whatever its
downtime (a wall-clock schedule would let a fault fall into one strategy's downtime by luck; with 5
faults that luck decided the ranking in trial runs). A strategy that is down more trains less and
meets fewer faults within the window (reported as not reached). A request that has not struck
within ``WITHDRAW_AFTER_S`` (the job went down meanwhile) is withdrawn, so no later attempt meets a
fault meant for an earlier one. The dead node is persistent (``"persistent": true`` in its
``trainer.faults`` request): from then on every process on that node fails at its first step, until
the node is cordoned or replaced.

Measured from the trainer's own JSON lines (rank 0), the same way for every strategy:
* a step counts (is kept) when a committed checkpoint covered it before the window ended and no
  later attempt resumed from an older checkpoint (work redone after a restart counts once);
* ETTR = the kept steps' training time (the wall time between consecutive step lines of one
  process; a process's first step: its own step time) / the window;
* tokens = kept steps x sequences per step x sequence length x world size.
Ratios are to ftsup's figures from this same run.

    python bench/goodput_real.py [--quick] [--window-s 150] [--seed 7] [--scale 0.016667]
        [--strategies ftsup,torchrun,none] [--workdir DIR] [--json]

``--json`` prints ``{"goodput_real": {...}, "goodput_real_meta": {...}}`` on the last line
(bench/run_all.py merges both into results.json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for _p in (str(ROOT), str(BENCH)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

STRATEGIES = ("ftsup", "torchrun", "none")
NODES = ("node-0", "node-1")
SPARES = ("node-2",)
# Two collective timeouts, a dead GPU node, a SIGKILL, a hang (issue 7); order and targets are seeded.
FAULT_MIX = ("collective_timeout", "collective_timeout", "xid79", "sigkill", "hang")
QUICK_FAULT_MIX = ("collective_timeout", "xid79")
PERSISTENT_KINDS = frozenset({"xid79", "xid48"})  # a broken node, not an event
DEFAULT_SCALE = 1 / 60
STALL_FLOOR_MIN_S = 20.0  # > a relaunch here (~10 s) + the metrics path's lag; see the module docstring
TRAINING_RECENT_S = 1.0  # a member "is training" when its last step line is this recent (~4 steps)
WITHDRAW_AFTER_S = 2.0  # a transient fault that has not struck within this long is withdrawn
STEP_SLEEP_S = 0.2  # stands in for a GPU step's time (the CPU is free for the other processes)
CKPT_EVERY = 5
TORCHRUN_MAX_RESTARTS = 3
STOP_GRACE_S = 5.0
POLL_S = 0.1
TRAINING_YAML = ROOT / "policies" / "training.yaml"


# ------------------------------------------------------------------------------------------ schedule


@dataclass(frozen=True)
class ScheduledFault:
    """One fault of the schedule: `kind` on the job's `member`-th node once it has trained `train_s`."""

    index: int
    train_s: float
    kind: str
    member: int
    persistent: bool

    @property
    def fault_id(self) -> str:
        return f"f{self.index}-{self.kind}"


def make_schedule(
    seed: int,
    kinds: Sequence[str] = FAULT_MIX,
    members: int = len(NODES),
    first_s: float = 8.0,
    every_s: float = 9.0,
    jitter: float = 0.2,
) -> tuple[ScheduledFault, ...]:
    """The fault schedule on the training clock: `kinds` in a seeded order, the first after `first_s`
    of training, then one every `every_s` with a seeded jitter of +/- `jitter` x `every_s` (none on
    the first), on member indices dealt evenly in a seeded order. Same inputs, same schedule; times
    strictly increase."""
    if not kinds:
        return ()
    if first_s <= 0 or every_s <= 0 or not 0 <= jitter < 0.5:
        raise ValueError("first_s and every_s must be > 0 and jitter in [0, 0.5)")
    rng = random.Random(f"goodput-real:{seed}")
    order = list(kinds)
    rng.shuffle(order)
    n = len(order)
    targets = [i % members for i in range(n)]
    rng.shuffle(targets)
    out: list[ScheduledFault] = []
    for i, kind in enumerate(order):
        at = first_s + i * every_s + (rng.uniform(-jitter, jitter) * every_s if i > 0 else 0.0)
        out.append(ScheduledFault(i, round(at, 2), kind, targets[i], kind in PERSISTENT_KINDS))
    return tuple(out)


# ------------------------------------------------------------------------------------------ time scale


@dataclass(frozen=True)
class Scaled:
    """The world's durations (bench/simulate.py's assumptions) at this benchmark's time scale."""

    factor: float
    collective_timeout_s: float
    human_s: float
    human_node_s: float
    hang_floor_s: float  # the shipped stall rule's stalled_for x factor
    stall_floor_s: float  # what the ftsup run uses: max(hang_floor_s, STALL_FLOOR_MIN_S)
    relaunch_at_scale_s: float  # simulate.py's restart_s x factor: what a relaunch here stands for

    @classmethod
    def of(cls, factor: float) -> Scaled:
        from simulate import Params

        p = Params()
        floor = shipped_hang_floor_s() * factor
        return cls(
            factor=factor,
            collective_timeout_s=round(p.nccl_timeout_s * factor, 3),
            human_s=round((p.page_delay_s + p.human_ack_day.p50_s + p.human_triage_s) * factor, 3),
            human_node_s=round((p.page_delay_s + p.human_ack_day.p50_s + p.human_triage_node_s) * factor, 3),
            hang_floor_s=round(floor, 3),
            stall_floor_s=round(max(floor, STALL_FLOOR_MIN_S), 3),
            relaunch_at_scale_s=round(p.restart_s * factor, 3),
        )


def scaled_budgets_yaml(factor: float, shipped: Path = ROOT / "policies" / "budgets.yaml") -> str:
    """The shipped budgets with every duration multiplied by `factor` (counts and fractions kept)."""
    from supervisor.classify.policy import load_policies

    b = load_policies([shipped]).budgets

    def d(seconds: float) -> float:
        return round(seconds * factor, 3)

    doc = {
        "budgets": {
            "restart": {
                "max": b.restart.max,
                "within": d(b.restart.within_s),
                "backoff": d(b.restart.backoff_s),
                "backoff_max": d(b.restart.backoff_max_s),
                "jitter": b.restart.jitter,
            },
            "cordon": {
                "max_nodes": b.cordon.max_nodes,
                "within": d(b.cordon.within_s),
                "max_fraction": b.cordon.max_fraction,
            },
            "shared_cause": {"nodes": b.shared_cause.nodes, "within": d(b.shared_cause.within_s)},
            "lemon": {
                "incidents": b.lemon.incidents,
                "within": d(b.lemon.within_s),
                "watch_after_return": d(b.lemon.watch_after_return_s),
                "watch_incidents": b.lemon.watch_incidents,
            },
            "flapping": {
                "min_interval": d(b.flapping.min_interval_s),
                "max_flaps": b.flapping.max_flaps,
                "within": d(b.flapping.within_s),
            },
        }
    }
    return json.dumps(doc, indent=1) + "\n"  # JSON is YAML


_STALL_RE = re.compile(
    r"- name: no-step-progress\b(?:(?!- name:).)*?stalled_for:\s*([0-9.]+(?:ms|[hms])?)", re.S
)


def shipped_hang_floor_s(shipped: Path = TRAINING_YAML) -> float:
    """The shipped hang rule's (no-step-progress) `stalled_for`, in seconds."""
    m = _STALL_RE.search(shipped.read_text())
    if m is None:
        raise RuntimeError(f"{shipped}: no stalled_for in the no-step-progress rule")
    from supervisor.yamlpos import parse_duration

    return parse_duration(m.group(1))


def scaled_training_yaml(stall_floor_s: float, shipped: Path = TRAINING_YAML) -> str:
    """The shipped training pack with the hang rule's `stalled_for` set to `stall_floor_s`."""
    text = shipped.read_text()
    m = _STALL_RE.search(text)
    if m is None:
        raise RuntimeError(f"{shipped}: no stalled_for in the no-step-progress rule")
    return text[: m.start(1)] + f"{stall_floor_s:g}s" + text[m.end(1) :]


# ------------------------------------------------------------------------------------------ accounting


@dataclass(frozen=True)
class StepRec:
    step: int
    ts: float
    dur: float  # training time this step stands for (see module docstring)


@dataclass(frozen=True)
class Segment:
    """What one training process (rank 0) did: resumed from `resume_step` (0: fresh) at `start_ts`,
    then logged `steps` (increasing) and committed `checkpoints` (step, ts)."""

    start_ts: float
    resume_step: int
    steps: tuple[StepRec, ...]
    checkpoints: tuple[tuple[int, float], ...]
    world_size: int
    tokens_per_rank_step: int | None = None


def segments_from_lines(lines: Iterable[str]) -> list[Segment]:
    """Rank 0's training processes in one log (lines in the order written). A process begins at its
    ``resume`` / ``fresh_start`` line; lines that are not the trainer's JSON are skipped."""
    out: list[Segment] = []
    cur: dict[str, Any] | None = None
    world = 1

    def close() -> None:
        if cur is not None:
            out.append(
                Segment(cur["start"], cur["resume"], tuple(cur["steps"]), tuple(cur["ckpts"]), cur["world"])
            )

    for line in lines:
        if not line.startswith('{"ts"'):
            continue
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if not isinstance(e, dict) or e.get("rank") != 0:
            continue
        ev = e.get("event")
        ts = float(e.get("ts", 0.0))
        if ev == "start":
            close()
            cur = None
            world = int(e.get("world_size", 1))
        elif ev in ("resume", "fresh_start"):
            close()
            cur = {"start": ts, "resume": int(e.get("step", 0)), "steps": [], "ckpts": [], "world": world}
        elif cur is None:
            continue
        elif ev == "step":
            step = int(e["step"])
            steps: list[StepRec] = cur["steps"]
            if steps and step <= steps[-1].step:
                continue  # never expected: one process steps forward
            dur = ts - steps[-1].ts if steps else float(e.get("step_time_s", 0.0))
            steps.append(StepRec(step, ts, max(0.0, dur)))
        elif ev == "checkpoint_saved":
            cur["ckpts"].append((int(e["step"]), ts))
    close()
    return out


@dataclass(frozen=True)
class Accounting:
    ettr: float
    tokens: int
    kept_steps: int
    productive_s: float
    trained_steps: int  # every step logged in the window, kept or not
    lost_steps: int  # redone after a restart from an older checkpoint
    lost_s: float
    unsaved_steps: int  # after the last committed checkpoint when the window ended
    processes: int  # training processes (rank 0) that resumed or started in the window
    first_step_s: float | None  # window start -> the first step
    outages_s: tuple[float, ...]  # last step of a process -> first step of the next one


def account(segments: Iterable[Segment], start: float, window_s: float, tokens_per_step: int) -> Accounting:
    """ETTR and tokens of the kept steps (module docstring), from rank 0's processes of one run."""
    end = start + window_s
    segs = sorted((s for s in segments if s.start_ts <= end), key=lambda s: s.start_ts)
    kept: list[StepRec] = []
    lost: list[StepRec] = []
    committed = 0
    trained = 0
    outages: list[float] = []
    last_ts: float | None = None
    first: float | None = None
    for seg in segs:
        while kept and kept[-1].step > seg.resume_step:
            lost.append(kept.pop())
        in_window = [r for r in seg.steps if start <= r.ts <= end]
        if in_window:
            if last_ts is not None:
                outages.append(round(in_window[0].ts - last_ts, 3))
            elif first is None:
                first = round(in_window[0].ts - start, 3)
            last_ts = in_window[-1].ts
        trained += len(in_window)
        kept.extend(in_window)
        committed = max([committed, *(s for s, ts in seg.checkpoints if ts <= end)])
    unsaved = 0
    while kept and kept[-1].step > committed:
        kept.pop()
        unsaved += 1
    productive = sum(r.dur for r in kept)
    return Accounting(
        ettr=round(productive / window_s, 4) if window_s > 0 else 0.0,
        tokens=len(kept) * tokens_per_step,
        kept_steps=len(kept),
        productive_s=round(productive, 2),
        trained_steps=trained,
        lost_steps=len(lost),
        lost_s=round(sum(r.dur for r in lost), 2),
        unsaved_steps=unsaved,
        processes=len(segs),
        first_step_s=first,
        outages_s=tuple(outages),
    )


def ratio(x: float, ref: float) -> float | None:
    return round(x / ref, 4) if ref > 0 else None


# ------------------------------------------------------------------------------------------ logs


class LogTail:
    """Follows the node logs under ``<run_dir>/nodes/<node>/`` (``attempt-*.log`` written by the
    local actuator's node agents, ``launch-*.log`` by this benchmark's) for each node's newest step."""

    def __init__(self, run_dir: Path) -> None:
        self.nodes_dir = run_dir / "nodes"
        self._offsets: dict[Path, int] = {}
        self._partial: dict[Path, bytes] = {}
        self.last_step_ts: dict[str, float] = {}
        self._lock = threading.Lock()

    def files(self) -> list[Path]:
        found: list[Path] = []
        for pattern in ("*/attempt-*.log", "*/launch-*.log"):
            found.extend(self.nodes_dir.glob(pattern))
        return sorted(found)

    def poll(self) -> None:
        with self._lock:
            for path in self.files():
                try:
                    with open(path, "rb") as f:
                        f.seek(self._offsets.get(path, 0))
                        data = f.read()
                except OSError:
                    continue
                self._offsets[path] = self._offsets.get(path, 0) + len(data)
                data = self._partial.pop(path, b"") + data
                lines = data.split(b"\n")
                if lines[-1]:
                    self._partial[path] = lines[-1]
                for raw in lines[:-1]:
                    if b'"event": "step"' not in raw:
                        continue
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        e = json.loads(raw)
                        node, ts = str(e["node"]), float(e["ts"])
                        if ts > self.last_step_ts.get(node, 0.0):
                            self.last_step_ts[node] = ts

    def training(self, members: Sequence[str], now: float) -> bool:
        """Every member logged a step within TRAINING_RECENT_S of `now`."""
        self.poll()
        return bool(members) and all(
            now - self.last_step_ts.get(n, float("-inf")) <= TRAINING_RECENT_S for n in members
        )


def all_segments(run_dir: Path) -> list[Segment]:
    out: list[Segment] = []
    for path in LogTail(run_dir).files():
        with open(path, encoding="utf-8", errors="replace") as f:
            out.extend(segments_from_lines(f))
    return out


def fault_firings(run_dir: Path) -> list[dict[str, Any]]:
    """Every ``fault`` line the trainer wrote (any rank): when each injected fault really struck."""
    out = []
    for path in LogTail(run_dir).files():
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith('{"ts"') and '"event": "fault"' in line:
                    with contextlib.suppress(ValueError):
                        e = json.loads(line)
                        out.append({k: e.get(k) for k in ("id", "kind", "node", "rank", "step", "ts")})
    return sorted(out, key=lambda e: float(e["ts"] or 0.0))


# ------------------------------------------------------------------------------------------ injection


@dataclass
class Injection:
    fault: ScheduledFault
    node: str | None = None
    injected_at: float | None = None  # seconds after the first launch
    outcome: str = "not reached: the window ended first"  # | injected | withdrawn (never struck)


class Injector:
    """Plays the schedule in a thread: keeps the job's training clock (module docstring) and, when it
    reaches a fault's `train_s`, writes the fault's ``trainer.faults`` request into the job's fault
    directory, aimed at the member the schedule names."""

    def __init__(
        self,
        schedule: Sequence[ScheduledFault],
        fault_dir: Path,
        members: Callable[[], tuple[str, ...]],
        tail: LogTail,
        start: float,
    ) -> None:
        self.records = [Injection(f) for f in schedule]
        self.fault_dir = fault_dir
        self.members = members
        self.tail = tail
        self.start = start
        self.clock_s = 0.0  # the job's training clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="goodput-injector", daemon=True)

    def __enter__(self) -> Injector:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        from trainer.faults import FaultRequest, write_fault_request

        pending: list[tuple[float, Injection, Path]] = []  # (withdraw at, record, request file)
        last = time.time()
        for rec in self.records:
            f = rec.fault
            members: tuple[str, ...] = ()
            while not self._stop.is_set():
                now = time.time()
                members = self.members()
                training = self.tail.training(members, now)
                if training:
                    self.clock_s += now - last
                last = now
                self._withdraw(pending, now)
                if training and self.clock_s >= f.train_s:
                    break
                self._stop.wait(POLL_S)
            if self._stop.is_set():
                break
            node = members[f.member % len(members)]
            rec.node = node
            req = FaultRequest(f.fault_id, f.kind, node, None, None, None, f.persistent)
            path = write_fault_request(self.fault_dir, req)
            rec.injected_at = round(time.time() - self.start, 3)
            rec.outcome = "injected"
            if not f.persistent:
                pending.append((time.time() + WITHDRAW_AFTER_S, rec, path))
        while pending and not self._stop.is_set():
            self._withdraw(pending, time.time())
            self._stop.wait(POLL_S)

    def _withdraw(self, pending: list[tuple[float, Injection, Path]], now: float) -> None:
        """Remove transient requests that did not strike in time: the job went down meanwhile, and a
        later attempt must not meet a fault meant for this one."""
        for item in list(pending):
            due, rec, path = item
            if now < due:
                continue
            pending.remove(item)
            if not any(self.fault_dir.glob(f"{rec.fault.fault_id}.fired.*")):
                with contextlib.suppress(OSError):
                    path.unlink()
                if not any(self.fault_dir.glob(f"{rec.fault.fault_id}.fired.*")):
                    rec.outcome = f"withdrawn: did not strike within {WITHDRAW_AFTER_S:g} s"


# ------------------------------------------------------------------------------------------ runs


def trainer_args(scaled: Scaled, metrics: bool) -> list[str]:
    args = [
        "--ckpt-every", str(CKPT_EVERY),
        "--collective-timeout-s", f"{scaled.collective_timeout_s:g}",
        "--step-sleep-s", f"{STEP_SLEEP_S:g}",
        "--metrics-interval-s", "1",
    ]  # fmt: skip
    return args if metrics else [*args, "--no-metrics"]


@dataclass
class RunResult:
    strategy: str
    start: float
    window_s: float
    run_dir: Path
    injections: list[Injection]
    events: list[dict[str, Any]] = field(default_factory=list)  # what the supervisor / human did
    notes: list[str] = field(default_factory=list)
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)


def run_ftsup(root: Path, schedule: Sequence[ScheduledFault], scaled: Scaled, window_s: float) -> RunResult:
    """(a) The production daemon, as `ftsup demo` builds it, on the embedded moto CloudWatch."""
    import yaml

    from supervisor.config import load_config
    from supervisor.daemon import build
    from supervisor.demo import DEMO_CONFIG
    from supervisor.local_cloudwatch import EmbeddedCloudWatch
    from supervisor.logs import configure_logging

    root.mkdir(parents=True, exist_ok=True)
    pol = root / "policies"
    pol.mkdir(exist_ok=True)
    (pol / "budgets.yaml").write_text(scaled_budgets_yaml(scaled.factor))
    (pol / "training.yaml").write_text(scaled_training_yaml(scaled.stall_floor_s))
    shipped = [
        str(p)
        for p in sorted((ROOT / "policies").glob("*.yaml"))
        if p.name not in ("budgets.yaml", "training.yaml")
    ]
    cfg = yaml.safe_load(DEMO_CONFIG.read_text())  # the demo's poll intervals, settle window, grace
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    cfg["job"].update(name="goodput-ftsup", log_group=f"/ftsup/bench/goodput-{stamp}-{os.getpid()}")
    cfg["policies"] = [*shipped, str(pol / "training.yaml"), str(pol / "budgets.yaml")]
    cfg["actuator"]["local"].update(
        nodes=list(NODES),
        spares=list(SPARES),
        run_dir=str(root / "job"),
        stop_grace_s=STOP_GRACE_S,
        trainer_args=trainer_args(scaled, metrics=True),
    )
    cfg["journal"] = {"path": str(root / "ftsup.db")}
    cfg["metrics_server"] = {"port": None}
    cfg["logging"] = {"format": "json", "level": "info"}
    path = root / "ftsup.yaml"
    path.write_text(json.dumps(cfg, indent=1))
    config = load_config(path)
    run_dir = root / "job"
    state_path = run_dir / "actuator-state.json"

    def members() -> tuple[str, ...]:
        try:
            return tuple(json.loads(state_path.read_text())["nodes"])
        except (OSError, ValueError, KeyError):
            return ()

    log_file = open(root / "ftsup.log", "a", encoding="utf-8")  # noqa: SIM115 - closed below
    configure_logging("json", "info", stream=log_file)
    try:
        with EmbeddedCloudWatch(export_env=True) as cw:
            daemon = build(config, endpoint_override=cw.endpoint_url, env=cw.env())
            start = time.time()
            try:
                daemon.start(launch=True)
                tail = LogTail(run_dir)
                with Injector(schedule, run_dir / "faults", members, tail, start) as inj:
                    while time.time() < start + window_s:
                        time.sleep(POLL_S)
                snap = daemon.engine.snapshot()
            finally:
                daemon.shutdown(stop_job=True)
    finally:
        configure_logging("json", "warning")
        log_file.close()
    result = RunResult("ftsup", start, window_s, run_dir, inj.records)
    for h in snap.handled:
        d, r = h.decision, h.result
        result.events.append(
            {
                "at_s": round(d.decided_at - start, 2),
                "rule": h.incident.root_cause.rule,
                "node": h.incident.root_cause.node,
                "verdict": d.verdict.value,
                "action_s": round(r.finished_at - r.started_at, 2) if r is not None else None,
                "ok": r.ok if r is not None else None,
            }
        )
    if snap.halted:
        result.notes.append("ftsup halted the job (a human would be paged); no human is modelled for ftsup")
    return result


class PlainJob:
    """The job without ftsup: one node agent (log capture only, no CloudWatch) per node running
    ``torchrun --max-restarts=N`` with the c10d rendezvous, as the local actuator lays nodes out."""

    def __init__(self, run_dir: Path, nodes: Sequence[str], max_restarts: int, args: Sequence[str]) -> None:
        self.run_dir = run_dir
        self.nodes = list(nodes)
        self.max_restarts = max_restarts
        self.args = list(args)
        self.launches = 0
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._kmsg_at_launch: dict[str, int] = {}
        self._lock = threading.Lock()

    def members(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self.nodes)

    def kmsg(self, node: str) -> Path:
        return self.run_dir / "nodes" / node / "kmsg.log"

    def launch(self) -> None:
        from supervisor.act.local import free_port

        with self._lock:
            self.launches += 1
            n = self.launches
            port = free_port()
            for rank, node in enumerate(self.nodes):
                d = self.run_dir / "nodes" / node
                d.mkdir(parents=True, exist_ok=True)
                self.kmsg(node).touch()
                self._kmsg_at_launch[node] = self.kmsg(node).stat().st_size
                agent = [
                    sys.executable, "-m", "trainer.node_agent",
                    "--job", "goodput-plain", "--node", node, "--log-group", "unused", "--no-cloudwatch",
                    "--kmsg-file", str(self.kmsg(node)), "--log-file", str(d / f"launch-{n}.log"),
                    "--grace-s", f"{STOP_GRACE_S:g}", "--",
                    sys.executable, "-m", "torch.distributed.run",
                    "--nnodes", str(len(self.nodes)), "--nproc-per-node", "1",
                    "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
                    "--rdzv-id", f"goodput-plain-{n}",
                    "--rdzv-conf", f"is_host={'true' if rank == 0 else 'false'}",
                    "--max-restarts", str(self.max_restarts),
                    "--local-addr", f"127.0.0.{rank + 1}",
                    "-m", "trainer.train", "--run-dir", str(self.run_dir), *self.args,
                ]  # fmt: skip
                env = dict(os.environ)
                env.update(
                    FTSUP_JOB="goodput-plain",
                    FTSUP_NODE=node,
                    OMP_NUM_THREADS="1",
                    PYTHONUNBUFFERED="1",
                    # pytorch#135712: with the rendezvous store shared with the workers (the default),
                    # a worker restart can read the previous round's gloo addresses and hang; every
                    # multi-node torchrun user who relies on restarts sets this.
                    TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1",
                )
                env.pop("FTSUP_ATTEMPT", None)  # the trainer numbers attempts by torchrun's restarts
                env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
                with open(d / f"agent-{n}.err", "wb") as err:
                    self._procs[node] = subprocess.Popen(
                        agent,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=err,
                        env=env,
                        cwd=str(self.run_dir),
                        start_new_session=True,
                    )

    def exited(self) -> bool:
        """Whether a node's launcher has exited: the job is over (the others only wait for it)."""
        with self._lock:
            return any(p.poll() is not None for p in self._procs.values())

    def xid_nodes(self) -> list[str]:
        """Members whose kernel log shows an Xid since the last launch (what a human finds first)."""
        out = []
        for node in self.members():
            try:
                with open(self.kmsg(node), "rb") as f:
                    f.seek(self._kmsg_at_launch.get(node, 0))
                    if b"NVRM: Xid" in f.read():
                        out.append(node)
            except OSError:
                continue
        return out

    def replace(self, node: str, spare: str) -> None:
        with self._lock:
            self.nodes[self.nodes.index(node)] = spare

    def stop(self) -> None:
        """Kill every process of the job (agents, torchrun, ranks: each in a session of its own)."""
        from supervisor.act.local import descendants

        with self._lock:
            procs = list(self._procs.values())
            self._procs.clear()
        victims: set[int] = set()
        for p in procs:
            victims.add(p.pid)
            victims.update(descendants(p.pid))
        for pid in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)


def run_plain(
    strategy: str, root: Path, schedule: Sequence[ScheduledFault], scaled: Scaled, window_s: float
) -> RunResult:
    """(b) torchrun --max-restarts=3 or (c) no supervisor (max-restarts 0); a modelled human
    relaunches the job (swapping a node whose kernel log shows an Xid for the spare) after it ends."""
    max_restarts = TORCHRUN_MAX_RESTARTS if strategy == "torchrun" else 0
    run_dir = root / "job"
    run_dir.mkdir(parents=True, exist_ok=True)
    job = PlainJob(run_dir, NODES, max_restarts, trainer_args(scaled, metrics=False))
    spares = list(SPARES)
    events: list[dict[str, Any]] = []
    start = time.time()
    end = start + window_s
    job.launch()
    tail = LogTail(run_dir)
    try:
        with Injector(schedule, run_dir / "faults", job.members, tail, start) as inj:
            while time.time() < end:
                if not job.exited():
                    time.sleep(POLL_S)
                    continue
                down = time.time()
                job.stop()
                bad = job.xid_nodes()
                wait = scaled.human_node_s if bad else scaled.human_s
                ev: dict[str, Any] = {
                    "at_s": round(down - start, 2),
                    "what": "the job exited" if max_restarts == 0 else "torchrun gave up (restarts spent)",
                    "page": True,
                    "human_s": wait,
                }
                if bad and spares:
                    ev["human_swaps"] = f"{bad[0]} -> {spares[0]}"
                    job.replace(bad[0], spares.pop(0))
                relaunch = down + wait
                if relaunch < end:
                    time.sleep(max(0.0, relaunch - time.time()))
                    job.launch()
                    ev["relaunched_at_s"] = round(time.time() - start, 2)
                else:
                    ev["relaunched_at_s"] = None
                events.append(ev)
    finally:
        job.stop()
    return RunResult(strategy, start, window_s, run_dir, inj.records, events)


# ------------------------------------------------------------------------------------------ report


def summarize(res: RunResult) -> dict[str, Any]:
    """The strategy's figures: ETTR and tokens (module docstring), what each fault did, the events."""
    segs = all_segments(res.run_dir)
    world = max((s.world_size for s in segs), default=len(NODES))
    from trainer.config import ModelArgs

    tokens_per_step = ModelArgs.batch_size * ModelArgs.seq_len * world
    acc = account(segs, res.start, res.window_s, tokens_per_step)
    fired = fault_firings(res.run_dir)
    by_id: dict[str, list[float]] = {}
    for e in fired:
        if e["ts"] is not None and float(e["ts"]) <= res.start + res.window_s:
            by_id.setdefault(str(e["id"]), []).append(round(float(e["ts"]) - res.start, 2))
    faults = []
    for rec in res.injections:
        struck = sorted(set(by_id.get(rec.fault.fault_id, [])))
        faults.append(
            {
                "id": rec.fault.fault_id,
                "kind": rec.fault.kind,
                "train_s": rec.fault.train_s,
                "node": rec.node,
                "injected_at_s": rec.injected_at,
                "outcome": rec.outcome,
                "struck_at_s": struck,
            }
        )
    out: dict[str, Any] = {
        "ettr": acc.ettr,
        "tokens": acc.tokens,
        "faults_struck": sum(1 for f in faults if f["struck_at_s"]),
        "faults_not_reached": sum(1 for f in faults if str(f["outcome"]).startswith("not reached")),
        "tokens_per_step": tokens_per_step,
        **{k: v for k, v in asdict(acc).items() if k not in ("ettr", "tokens")},
        "faults": faults,
        "events": [with_fault_delay(e, faults) for e in res.events],
        # Other processes on this machine slow every launch: the 1-minute load average before the run.
        "load_avg_1m_before": round(res.load_before[0], 2),
    }
    if res.notes:
        out["notes"] = res.notes
    return out


def with_fault_delay(event: dict[str, Any], faults: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """`event` with ``after_fault_s``: seconds since the latest strike of a fault before it (the
    decision latency of ftsup, the collective timeout, the time torchrun took to spend its restarts)."""
    at = event.get("at_s")
    struck = [t for f in faults for t in f["struck_at_s"] if at is not None and t <= at]
    return {**event, "after_fault_s": round(at - max(struck), 2) if struck and at is not None else None}


def assumptions(scaled: Scaled, window_s: float, seed: int) -> dict[str, dict[str, Any]]:
    from simulate import Params

    p = Params()
    k = scaled.factor
    return {
        "time_scale": {
            "value": round(k, 6),
            "source": "1 s here = 1/scale s of a cluster's time; 1/60 maps bench/simulate.py's 10 min "
            "relaunch at scale onto the ~10 s a torchrun + FSDP relaunch takes on this machine",
        },
        "window_s": {
            "value": window_s,
            "source": f"= {window_s / k / 3600:.2f} h of cluster time at the scale",
        },
        "seed": {"value": seed, "source": "make_schedule(seed): order, training times, targets"},
        "collective_timeout_s": {
            "value": scaled.collective_timeout_s,
            "source": f"simulate.py nccl_timeout_s {p.nccl_timeout_s:g} s x scale "
            "(trainer --collective-timeout-s)",
        },
        "human_s": {
            "value": scaled.human_s,
            "source": f"(page delay {p.page_delay_s:g} s + daytime acknowledgement median "
            f"{p.human_ack_day.p50_s:g} s + triage {p.human_triage_s:g} s) x scale (simulate.py): "
            "page -> relaunch after the job exits (none) or torchrun gives up (torchrun)",
        },
        "human_node_s": {
            "value": scaled.human_node_s,
            "source": f"the same with node triage {p.human_triage_node_s:g} s, when the kernel log shows "
            "an Xid; the human swaps that node for the spare",
        },
        "hang_floor_s": {
            "value": scaled.stall_floor_s,
            "source": f"ftsup's no-step-progress stalled_for ({shipped_hang_floor_s():g} s in "
            f"policies/training.yaml) x scale = {scaled.hang_floor_s:g} s, raised "
            f"to {STALL_FLOOR_MIN_S:g} s because its clock starts at each relaunch and a relaunch here takes "
            "~10 s; the collective timeout therefore ends every hang first here",
        },
        "ftsup_budgets": {
            "value": json.loads(scaled_budgets_yaml(k))["budgets"],
            "source": "policies/budgets.yaml with every duration x scale (seconds)",
        },
        "ftsup_detection": {
            "value": "unscaled",
            "source": "supervisor/defaults/demo.yaml: logs poll 1 s, metrics poll 2 s, settle 4 s, "
            f"stop grace {STOP_GRACE_S:g} s; node agents ship through watchtower to moto over HTTP",
        },
        "torchrun": {
            "value": f"--max-restarts={TORCHRUN_MAX_RESTARTS}, c10d rendezvous, "
            "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1",
            "source": "issue 7; the variable avoids pytorch#135712 (restarted workers reading the previous "
            "round's addresses and hanging), which would make torchrun's restarts fail for a reason of "
            "its own",
        },
        "none": {
            "value": "--max-restarts=0",
            "source": "the job ends at the first fault; a human relaunches",
        },
        "nodes": {
            "value": {"nodes": list(NODES), "spares": list(SPARES), "ranks_per_node": 1},
            "source": "as ftsup demo; one spare, used by ftsup's cordon or the human's swap",
        },
        "trainer": {
            "value": trainer_args(scaled, metrics=True),
            "source": f"trainer.train defaults otherwise (GPT 2 x 64, batch 8 x 64 tokens per rank); "
            f"--step-sleep-s {STEP_SLEEP_S:g} stands in for a GPU step; metrics only for ftsup (its "
            "daemon reads them), --no-metrics otherwise",
        },
        "faults": {
            "value": "on the training clock (seconds during which every member logged a step within "
            f"{TRAINING_RECENT_S:g} s); a request that has not struck within {WITHDRAW_AFTER_S:g} s is "
            "withdrawn; the dead node (xid79) is persistent",
            "source": "a constant failure rate per training hour, as bench/simulate.py models it; every "
            "strategy meets the same faults at the same points of its training; one that trains less in "
            "the window meets fewer",
        },
        "hang_and_collective_timeout": {
            "value": "collective_timeout: one rank stops taking part; hang: every rank of a node stops",
            "source": "with one rank per node both end the same way here: the peers' gloo collective "
            "times out after collective_timeout_s (a GPU hang caught by NCCL's watchdog)",
        },
        "measured": {
            "value": "trainer JSON lines of rank 0 (resume / step / checkpoint_saved)",
            "source": "kept step = covered by a checkpoint committed in the window and not redone "
            "after a resume from an older one; ETTR = kept steps' time / window; tokens = kept steps "
            "x batch x seq_len x world size",
        },
        "cpu": {
            "value": f"{os.cpu_count()} cores",
            "source": "ftsup's run also hosts moto and the daemon on the same cores (its trainer competes "
            "with them); the others run the trainer alone",
        },
    }


def report(
    results: dict[str, dict[str, Any]], schedule: Sequence[ScheduledFault], scaled: Scaled, window_s: float,
    seed: int, wall_s: float,
) -> dict[str, Any]:  # fmt: skip
    ref = results.get("ftsup")
    for r in results.values():
        if ref is not None:
            r["ettr_vs_ftsup"] = ratio(r["ettr"], ref["ettr"])
            r["tokens_vs_ftsup"] = ratio(r["tokens"], ref["tokens"])
    meta = {
        "window_s": window_s,
        "time_scale": round(scaled.factor, 6),
        "scaled": asdict(scaled),
        "schedule": [asdict(f) | {"id": f.fault_id} for f in schedule],
        "assumptions": assumptions(scaled, window_s, seed),
        "wall_s": round(wall_s, 1),
        "strategies_run": list(results),
    }
    return {"goodput_real": results, "goodput_real_meta": meta}


def print_human(obj: dict[str, Any]) -> None:
    res, meta = obj["goodput_real"], obj["goodput_real_meta"]
    sc = meta["scaled"]
    print(
        f"time scale 1/{1 / meta['time_scale']:.0f}: window {meta['window_s']:g} s "
        f"(= {meta['window_s'] / meta['time_scale'] / 3600:.1f} h of cluster time); collective timeout "
        f"{sc['collective_timeout_s']:g} s, human {sc['human_s']:g} s ({sc['human_node_s']:g} s for a bad "
        f"node), ftsup hang floor {sc['stall_floor_s']:g} s (scaled {sc['hang_floor_s']:g} s)"
    )
    print("schedule (seconds of training):")
    for f in meta["schedule"]:
        tag = "  (persistent)" if f["persistent"] else ""
        print(f"  {f['train_s']:>6.1f}  {f['kind']:<19} member {f['member']}{tag}")
    print(f"\n  {'strategy':<9} {'ETTR':>7} {'tokens':>8} {'ETTR/ftsup':>10} {'tok/ftsup':>9} "
          f"{'struck':>6} {'unmet':>7} {'procs':>5} {'lost':>4}  outages (s)")  # fmt: skip
    for name, r in res.items():
        ev, tv = r.get("ettr_vs_ftsup"), r.get("tokens_vs_ftsup")
        print(
            f"  {name:<9} {r['ettr']:>7.2%} {r['tokens']:>8,} {'—' if ev is None else f'{ev:.3f}':>10} "
            f"{'—' if tv is None else f'{tv:.3f}':>9} {r['faults_struck']:>6} {r['faults_not_reached']:>7} "
            f"{r['processes']:>5} {r['lost_steps']:>4}  {', '.join(f'{x:g}' for x in r['outages_s'])}"
        )
    for name, r in res.items():
        print(f"\n{name}:")
        for f in r["faults"]:
            print(
                f"  {f['id']:<24} on {f['node']}: {f['outcome']} at {f['injected_at_s']}; "
                f"struck at {f['struck_at_s']}"
            )
        for e in r["events"]:
            print(f"  event: {json.dumps(e)}")
        for n in r.get("notes", []):
            print(f"  note: {n}")
    print(f"\nwall time {meta['wall_s']:g} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a 45 s window with 2 faults (tests)")
    ap.add_argument("--window-s", type=float, default=None, help="seconds per strategy (default 150)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--scale", type=float, default=DEFAULT_SCALE, help="time scale (default 1/60)")
    ap.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated subset")
    ap.add_argument("--workdir", type=Path, default=None, help="keep every run's files here")
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = ap.parse_args(argv)

    strategies = [s for s in args.strategies.split(",") if s]
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        ap.error(f"unknown strategies: {', '.join(unknown)}")
    if args.quick:
        window = args.window_s or 45.0
        schedule = make_schedule(args.seed, QUICK_FAULT_MIX, first_s=5.0, every_s=8.0)
    else:
        window = args.window_s or 150.0
        schedule = make_schedule(args.seed)
    scaled = Scaled.of(args.scale)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="goodput-real-"))
    started = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    try:
        for s in strategies:
            print(f"[goodput_real] {s}: {window:g} s window", file=sys.stderr, flush=True)
            root = workdir / s
            load = os.getloadavg()
            if s == "ftsup":
                res = run_ftsup(root, schedule, scaled, window)
            else:
                res = run_plain(s, root, schedule, scaled, window)
            res.load_before = load
            results[s] = summarize(res)
            print(
                f"[goodput_real] {s}: ETTR {results[s]['ettr']:.2%}, {results[s]['tokens']:,} tokens",
                file=sys.stderr,
                flush=True,
            )
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    obj = report(results, schedule, scaled, window, args.seed, time.perf_counter() - started)
    print_human(obj)
    if args.json:
        print(json.dumps(obj))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
