"""Scale within CloudWatch's API quotas: 256, 1,024 and 2,048 simulated nodes (issue 7, part 2).

Every node writes realistic healthy lines (bench/classify.py's `make_stream` templates: JSON step lines,
NCCL INFO chatter, torchrun / c10d warnings, ...) with a burst at start-up and one at teardown, plus a
few injected failure lines (Xid 79, Xid 48, NCCL watchdog timeout, CUDA OOM) at known times, and
per-node metrics. The daemon side always runs in a process of its own, whose RSS (VmRSS from
/proc/<pid>/status) and CPU time this process samples once a second. Two phases per node count:

A. **end to end (measured)**: a moto server (EmbeddedCloudWatch) in a writer process; the writer puts
   the nodes' lines into moto's Logs backend in-process (what PutLogEvents does after decoding the
   HTTP request: one stream per node; no agent flush delay) at a total rate moto can serve, because
   moto's FilterLogEvents rescans every stored event per page; the daemon process runs the real
   CloudWatchLogsSource and CloudWatchMetricsSource over HTTP to that server with the shipped defaults
   (logs every 2 s, overlap 30 s, 50 pages per poll; metrics every 5 s, 1 s periods, 60 s lookback,
   6 metrics per node) and the real Engine in observe mode (ExternalJob actuator: never acts). Nodes
   publish no metric datapoints in this phase: moto's GetMetricData is O(queries x periods x
   datapoints) and cannot answer 12,288 queries with data; the calls (500 queries each) are real.
B. **engine at full rate (measured on the engine alone)**: the real Engine, in its own threads, fed
   in real time by two in-process sources that hand it SourceBatch objects of the size the real
   sources would (every 2 s: all log lines written since the last poll at N x 15 lines/s, bursts
   included; every 5 s: 6 samples per node per second), so events/s, decision latency (line written
   -> decision journaled) and RSS are the engine's at the full load, without HTTP, JSON decoding or
   the logs source's de-duplication memory (that memory is measured separately, per id, on the real
   CloudWatchLogsSource, and extrapolated).

FilterLogEvents calls/s at the full rate are **extrapolated** from the real source's paging (checked
against phase A, where pages per scan are measured):
    events per scan   E = R x (I + O)             R = N x 15 lines/s, I = poll interval 2 s, O = overlap 30 s
    events per page   P = min(10,000, floor(1 MiB / b))   b = mean message bytes + 26 (measured on the lines)
    calls/s           = ceil(E / P) / I            (at most max_pages_per_poll = 50 per poll)
and, for the design that keeps calls flat, with a policy-derived filterPattern (only failure candidates
match, about 0 healthy lines): one call per poll, 1 / I calls/s at every node count.
GetMetricData calls/s = ceil(6 N / 500) / 5 s (measured in phase A); datapoints/s = 6 N x 60 / 5 s.

    python bench/scale.py [--quick] [--json] [--nodes 256,1024,2048]

With --json the last line is one JSON object {"scale": [{nodes, events_per_s, filter_calls_per_s,
get_metric_data_calls_per_s, rss_mib, rss_mib_start, rss_mib_end, decision_p99_s, how, ...}, ...]}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from classify import make_stream  # noqa: E402

JOB = "scale-job"
GROUP = "/ftsup/jobs/scale-job"
NAMESPACE = "ftsup/Trainer"
LINES_PER_NODE_S = 15.0  # steady rate, middle of the 10-20
POLL_LOGS_S = 2.0  # shipped defaults (supervisor/config.py)
POLL_METRICS_S = 5.0
OVERLAP_S = 30.0
MAX_PAGES = 50
LOOKBACK_S = 60.0
METRICS = ("step", "loss", "loss_nonfinite", "heartbeat", "tokens_per_s", "step_time_s")
PAGE_EVENTS = 10_000
PAGE_BYTES = 1_048_576
FILTER_QUOTA = 10.0  # FilterLogEvents calls/s, most regions
FILTER_BUDGET = 0.4 * FILTER_QUOTA
GMD_QUOTA = 50.0  # GetMetricData calls/s
GMD_DATAPOINTS_QUOTA = 180_000.0  # datapoints/s

FAILURES = (
    "[ 8812.{us:06d}] NVRM: Xid (PCI:0000:{bus:02x}:00): 79, pid={pid}, name=python, "
    "GPU has fallen off the bus.",
    "[ 9120.{us:06d}] NVRM: Xid (PCI:0000:{bus:02x}:00): 48, pid={pid}, name=python, An uncorrectable double "
    "bit error (DBE) has been detected on GPU in the framebuffer at partition 0, subpartition 0.",
    "[rank{rank}]:[E1128 04:10:11.{us:06d} {pid} ProcessGroupNCCL.cpp:616] [Rank {rank}] Watchdog caught "
    "collective operation timeout: WorkNCCL(SeqNum=88{k}, OpType=ALLREDUCE, NumelIn=1, NumelOut=1, "
    "Timeout(ms)=600000) ran for 600081 milliseconds before timing out.",
    "[rank{rank}]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 3 has a total "
    "capacity of 79.11 GiB of which 1.02 GiB is free.",
)


def failure_line(k: int) -> str:
    return FAILURES[k % len(FAILURES)].format(us=123456 + k, bus=16 + k, pid=4000 + k, rank=8 * k + 3, k=k)


def node_name(i: int) -> str:
    return f"node-{i:04d}"


def pool_lines(n: int = 4000) -> list[str]:
    return make_stream(n, seed=11, failure_rate=0.0)


def failure_plan(duration_s: float, n_nodes: int, count: int) -> list[tuple[float, int, int]]:
    """(seconds after start, node index, kind) for `count` failures spread over the steady part."""
    lo, hi = 0.25 * duration_s, 0.8 * duration_s
    step = (hi - lo) / max(1, count - 1)
    return [(lo + k * step, (k * 7919 + 13) % n_nodes, k) for k in range(count)]


def rate_at(
    t: float, n_nodes: int, duration_s: float, per_node: float, burst_s: float, burst_x: float
) -> float:
    """Lines/s of the whole job at `t` seconds after start: bursts at start-up and teardown."""
    base = n_nodes * per_node
    if t < burst_s or t > duration_s - burst_s:
        return base * burst_x
    return base


# ----------------------------------------------------------------------------- daemon-side helpers


def _build_engine(nodes: list[str], workdir: Path) -> tuple[Any, Any, dict[str, Any]]:
    """The real Engine in observe mode over an ExternalJob; process_batch timed."""
    from supervisor.act.external import ExternalJob
    from supervisor.classify.policy import load_policies
    from supervisor.config import default_policy_dir
    from supervisor.engine import Engine
    from supervisor.journal import Journal
    from supervisor.vocabulary import Mode

    policy = load_policies([default_policy_dir()])
    journal = Journal(workdir / "ftsup.db")
    engine = Engine(
        job=JOB,
        policy=policy,
        journal=journal,
        actuator=ExternalJob(JOB, nodes),
        mode=Mode.OBSERVE,
        observe_hold_s=0.0,  # the injected failures are independent: none is folded into another
    )
    stats: dict[str, Any] = {
        "log_events": 0,
        "metric_samples": 0,
        "busy_s": 0.0,
        "batches": 0,
        "max_batch_s": 0.0,
        "logs_lag_s": [],
        "logs_up": True,
    }
    orig = engine.process_batch

    def timed(batch: Any) -> None:
        t = time.perf_counter()
        orig(batch)
        dt = time.perf_counter() - t
        stats["busy_s"] += dt
        stats["batches"] += 1
        stats["max_batch_s"] = max(stats["max_batch_s"], dt)
        stats["log_events"] += len(batch.logs)
        stats["metric_samples"] += len(batch.metrics)
        if batch.source == "logs":
            stats["logs_lag_s"].append(batch.health.lag_s)
            stats["logs_up"] = stats["logs_up"] and batch.health.up

    engine.process_batch = timed  # type: ignore[method-assign]
    return engine, journal, stats


def _decisions(engine: Any) -> list[dict[str, Any]]:
    out = []
    for h in engine.snapshot().handled:
        root = h.incident.root_cause
        out.append(
            {
                "node": root.node,
                "nodes": sorted({sig.node for sig in h.incident.signals if sig.node}),
                "rule": root.rule,
                "line_ts": root.timestamp,
                "decided_at": h.decision.decided_at,
                "verdict": h.decision.verdict.value,
            }
        )
    return out


def _timeline(t0: float, stats: dict[str, Any], stop_at: float) -> None:
    """Per-second samples of the engine's own counters (for events/s over time)."""
    marks = []
    while time.time() < stop_at:
        time.sleep(1.0)
        marks.append((round(time.time() - t0, 2), stats["log_events"], round(stats["busy_s"], 3)))
    stats["marks"] = marks


def role_e2e_daemon(cfg: dict[str, Any]) -> None:
    import boto3

    from supervisor.sources.aws import ApiCallCounter, AwsSettings, make_client
    from supervisor.sources.cloudwatch_logs import CloudWatchLogsSource
    from supervisor.sources.cloudwatch_metrics import CloudWatchMetricsSource

    nodes = [node_name(i) for i in range(cfg["nodes"])]
    engine, journal, stats = _build_engine(nodes, Path(cfg["workdir"]))
    settings = AwsSettings(
        region="us-east-1", endpoint_url=cfg["endpoint"], read_timeout_s=60.0, retry_budget_s=30.0
    )
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )
    calls = ApiCallCounter()
    logs = CloudWatchLogsSource(
        make_client("logs", settings, session=session),
        GROUP,
        settings,
        overlap_s=OVERLAP_S,
        max_pages_per_poll=MAX_PAGES,
        counter=calls,
        start_time=cfg["t0"] - 1.0,
    )
    # Count pages per complete scan (the source's own paging, read from its counter around polls).
    pages: list[int] = []
    raw = {"events": 0}
    orig_poll = logs.poll
    real_client = logs.client

    class CountingClient:
        """Counts the events FilterLogEvents returns (re-read overlap included)."""

        def filter_log_events(self, **kw: Any) -> Any:
            resp = real_client.filter_log_events(**kw)
            raw["events"] += len(resp.get("events", []))
            return resp

    logs.client = CountingClient()  # type: ignore[assignment]

    def poll() -> Any:
        before = calls.get("FilterLogEvents")
        batch = orig_poll()
        pages.append(calls.get("FilterLogEvents") - before)
        return batch

    logs.poll = poll  # type: ignore[method-assign]
    metrics = CloudWatchMetricsSource(
        make_client("cloudwatch", settings, session=session),
        NAMESPACE,
        JOB,
        engine.current_nodes,
        settings,
        lookback_s=LOOKBACK_S,
        counter=calls,
    )
    gmd_polls: list[int] = []
    orig_mpoll = metrics.poll

    def mpoll() -> Any:
        before = calls.get("GetMetricData")
        batch = orig_mpoll()
        gmd_polls.append(calls.get("GetMetricData") - before)
        return batch

    metrics.poll = mpoll  # type: ignore[method-assign]
    engine.add_source(logs, POLL_LOGS_S)
    engine.add_source(metrics, POLL_METRICS_S)
    started = time.time()
    engine.start()
    stop_at = started + cfg["run_s"]
    _timeline(started, stats, stop_at)
    engine.stop(timeout_s=30.0)
    elapsed = time.time() - started
    result = {
        "elapsed_s": elapsed,
        "calls": dict(calls.snapshot()),
        "pages_per_poll": pages,
        "raw_events": raw["events"],
        "gmd_calls_per_poll": gmd_polls,
        "decisions": _decisions(engine),
        **{k: v for k, v in stats.items() if k != "logs_lag_s"},
        "logs_lag_last_s": stats["logs_lag_s"][-1] if stats["logs_lag_s"] else None,
        "logs_lag_max_s": max((x for x in stats["logs_lag_s"] if x is not None), default=None),
    }
    journal.close()
    Path(cfg["out"]).write_text(json.dumps(result))


class _SynthLogs:
    """What CloudWatchLogsSource hands the engine every poll, at the full rate, without the transport."""

    name = "logs"

    def __init__(self, cfg: dict[str, Any], pool: list[str]) -> None:
        self.cfg = cfg
        self.pool = pool
        self.nodes = [node_name(i) for i in range(cfg["nodes"])]
        self.t0 = cfg["t0"]
        self.last = self.t0
        self.seq = 0
        self.sent: set[int] = set()
        self.lag_lines = 0
        self.fail = [
            (self.t0 + t, n, k) for t, n, k in failure_plan(cfg["run_s"], cfg["nodes"], cfg["failures"])
        ]

    def restore(self, cursor: Any) -> None:
        pass

    def written_by(self, t_rel: float) -> int:
        """Lines the whole job has written by `t_rel` s after start: bursts at start-up and teardown."""
        cfg = self.cfg
        n, run, bs = cfg["nodes"], cfg["run_s"], cfg["burst_s"]
        burst = n * cfg["burst_lines"] / bs  # lines/s during a burst
        steady = n * LINES_PER_NODE_S
        t = min(max(t_rel, 0.0), run)
        total = burst * min(t, bs) + steady * max(0.0, min(t, run - bs) - bs)
        total += burst * max(0.0, t - (run - bs))
        return int(total)

    def poll(self) -> Any:
        from supervisor.vocabulary import LogEvent, SourceBatch, SourceHealth

        now = time.time()
        # Everything written up to now, at most what one poll of the real source reads
        # (max_pages_per_poll pages); the rest waits for the next poll, as in the real source.
        target = min(self.written_by(now - self.t0), self.seq + self.cfg["cap"])
        n = max(0, target - self.seq)
        lo = self.last
        pool, nodes, npool, nn = self.pool, self.nodes, len(self.pool), len(self.nodes)
        base = self.seq
        events = [
            LogEvent(
                str(base + i),
                nodes[(base + i) % nn],
                lo + (now - lo) * (i / max(1, n)),
                pool[(base + i) % npool],
            )
            for i in range(n)
        ]
        self.seq += n
        self.lag_lines = self.written_by(now - self.t0) - self.seq
        for ts, node_i, k in self.fail:
            # A failure line is read once every line written before it has been read.
            if k not in self.sent and self.seq >= self.written_by(ts - self.t0) and ts < now:
                self.sent.add(k)
                events.append(LogEvent(f"f{k}", nodes[node_i], ts, failure_line(k)))
        events.sort(key=lambda e: e.timestamp)
        self.last = now
        health = SourceHealth("logs", True, now, None, 0.0)
        return SourceBatch("logs", tuple(events), (), None, health)


class _SynthMetrics:
    """What CloudWatchMetricsSource hands the engine: 6 samples per node per second, healthy values."""

    name = "metrics"

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.nodes = [node_name(i) for i in range(cfg["nodes"])]
        self.next_ts = math.floor(cfg["t0"])
        self.step = 1000

    def restore(self, cursor: Any) -> None:
        pass

    def poll(self) -> Any:
        from supervisor.vocabulary import MetricSample, SourceBatch, SourceHealth

        now = time.time()
        out = []
        while self.next_ts < math.floor(now):
            ts = float(self.next_ts)
            self.step += 1
            vals = {
                "step": float(self.step),
                "loss": 2.1,
                "loss_nonfinite": 0.0,
                "heartbeat": 1.0,
                "tokens_per_s": 4200.0,
                "step_time_s": 1.05,
            }
            out.extend(MetricSample(n, m, ts, v) for n in self.nodes for m, v in vals.items())
            self.next_ts += 1
        return SourceBatch("metrics", (), tuple(out), None, SourceHealth("metrics", True, now, None, 0.0))


def role_engine(cfg: dict[str, Any]) -> None:
    nodes = [node_name(i) for i in range(cfg["nodes"])]
    engine, journal, stats = _build_engine(nodes, Path(cfg["workdir"]))
    synth = _SynthLogs(cfg, pool_lines())
    engine.add_source(synth, POLL_LOGS_S)
    engine.add_source(_SynthMetrics(cfg), POLL_METRICS_S)
    started = time.time()
    engine.start()
    _timeline(started, stats, cfg["t0"] + cfg["run_s"] + cfg["drain_s"])
    engine.stop(timeout_s=60.0)
    result = {
        "elapsed_s": time.time() - started,
        "decisions": _decisions(engine),
        "lag_lines": synth.lag_lines,
        "source_lines": synth.seq + len(synth.sent),
        **{k: v for k, v in stats.items() if k != "logs_lag_s"},
    }
    journal.close()
    Path(cfg["out"]).write_text(json.dumps(result))


def role_writer(cfg: dict[str, Any]) -> None:
    """moto server + the nodes' lines put into its Logs backend at cfg['rate'] lines/s (plus bursts)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.logs.models import logs_backends

    from supervisor.local_cloudwatch import EmbeddedCloudWatch

    cw = EmbeddedCloudWatch().start()
    backend = logs_backends[DEFAULT_ACCOUNT_ID]["us-east-1"]
    backend.create_log_group(GROUP, {})
    nodes = [node_name(i) for i in range(cfg["nodes"])]
    for n in nodes:
        backend.create_log_stream(GROUP, n)
    pool = pool_lines()
    Path(cfg["port_file"]).write_text(cw.endpoint_url)
    while not Path(cfg["go_file"]).exists():
        time.sleep(0.05)
    t0 = json.loads(Path(cfg["go_file"]).read_text())["t0"]
    time.sleep(max(0.0, t0 - time.time()))
    fails = [(t0 + t, n, k) for t, n, k in failure_plan(cfg["run_s"], cfg["nodes"], cfg["failures"])]
    written: list[dict[str, Any]] = []
    seq, acc, last, total = 0, 0.0, t0, 0
    lock = threading.Lock()
    end = t0 + cfg["run_s"]
    while True:
        now = time.time()
        if now >= end:
            break
        t_rel = now - t0
        rate = rate_at(
            t_rel, cfg["nodes"], cfg["run_s"], cfg["rate"] / cfg["nodes"], cfg["burst_s"], cfg["burst_x"]
        )
        acc += rate * (now - last)
        n = int(acc)
        acc -= n
        by_stream: dict[str, list[dict[str, Any]]] = {}
        span = now - last
        for i in range(n):
            s = seq + i
            ts = int((last + span * (i / max(1, n))) * 1000)
            by_stream.setdefault(nodes[s % len(nodes)], []).append(
                {"timestamp": ts, "message": pool[s % len(pool)]}
            )
        seq += n
        for ts_s, node_i, k in fails:
            if last <= ts_s < now:
                ev = {"timestamp": int(ts_s * 1000), "message": failure_line(k)}
                by_stream.setdefault(nodes[node_i], []).append(ev)
                written.append({"node": nodes[node_i], "line_ts": ts_s, "kind": k})
        with lock:
            for stream, evs in by_stream.items():
                evs.sort(key=lambda e: e["timestamp"])
                backend.put_log_events(GROUP, stream, evs)
                total += len(evs)
        last = now
        time.sleep(max(0.0, 0.25 - (time.time() - now)))
    Path(cfg["out"]).write_text(json.dumps({"written": written, "total": total, "seconds": time.time() - t0}))
    while not Path(cfg["stop_file"]).exists():
        time.sleep(0.1)
    cw.stop()


# ----------------------------------------------------------------------------- orchestration


def _rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _spawn(role: str, cfg: dict[str, Any]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--role", role, "--cfg", json.dumps(cfg)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _sample(proc: subprocess.Popen[bytes], t0: float) -> list[tuple[float, float, float]]:
    """(seconds since t0, RSS MiB, CPU s) once a second until the process exits."""
    out = []
    while proc.poll() is None:
        rss, cpu = _rss_mib(proc.pid), _cpu_s(proc.pid)
        if rss is not None and cpu is not None:
            out.append((round(time.time() - t0, 2), round(rss, 1), round(cpu, 2)))
        time.sleep(1.0)
    return out


def _wait(proc: subprocess.Popen[bytes], what: str, timeout: float) -> None:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise RuntimeError(f"{what} did not finish in {timeout:.0f} s") from None
    if proc.returncode != 0:
        err = proc.stderr.read().decode(errors="replace")[-3000:] if proc.stderr else ""
        raise RuntimeError(f"{what} exited {proc.returncode}: {err}")


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    i = min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))
    return round(xs[i], 3)


def _latencies(decisions: list[dict[str, Any]], injected: list[dict[str, Any]]) -> tuple[list[float], int]:
    """line written -> decision, per injected failure (matched by node; first decision at or after it)."""
    lat = []
    for inj in injected:
        # A failure folded into an incident opened on another node is decided with that incident.
        cands = [
            d["decided_at"] - inj["line_ts"]
            for d in decisions
            if inj["node"] in (d["node"], *d.get("nodes", ())) and d["decided_at"] >= inj["line_ts"] - 0.001
        ]
        if cands:
            lat.append(min(cands))
    return lat, len(injected) - len(lat)


def _rss_points(samples: list[tuple[float, float, float]], lo: float, hi: float) -> dict[str, Any]:
    inside = [s for s in samples if lo <= s[0] <= hi] or samples
    if not inside:
        return {"rss_mib_start": None, "rss_mib_mid": None, "rss_mib_end": None, "rss_mib_max": None}
    return {
        "rss_mib_start": inside[0][1],
        "rss_mib_mid": inside[len(inside) // 2][1],
        "rss_mib_end": inside[-1][1],
        "rss_mib_max": max(s[1] for s in samples),
    }


def phase_e2e(
    n_nodes: int, run_s: float, rate: float, failures: int, burst_s: float, burst_x: float
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ftsup-scale-") as tmp:
        d = Path(tmp)
        wcfg = {
            "nodes": n_nodes,
            "run_s": run_s,
            "rate": rate,
            "failures": failures,
            "burst_s": burst_s,
            "burst_x": burst_x,
            "port_file": str(d / "port"),
            "go_file": str(d / "go"),
            "stop_file": str(d / "stop"),
            "out": str(d / "writer.json"),
        }
        writer = _spawn("writer", wcfg)
        try:
            deadline = time.time() + 120
            while not (d / "port").exists():
                if writer.poll() is not None or time.time() > deadline:
                    _wait(writer, "writer", 1)
                    raise RuntimeError("writer never served")
                time.sleep(0.05)
            endpoint = (d / "port").read_text()
            t0 = time.time() + 1.5
            (d / "go").write_text(json.dumps({"t0": t0}))
            dcfg = {
                "nodes": n_nodes,
                "endpoint": endpoint,
                "workdir": tmp,
                "out": str(d / "daemon.json"),
                "run_s": run_s + 3 * POLL_LOGS_S + 1.5,
                "t0": t0,
            }
            daemon = _spawn("e2e-daemon", dcfg)
            samples = _sample(daemon, t0)
            _wait(daemon, "e2e daemon", 60)
        finally:
            (d / "stop").write_text("")
            try:
                writer.wait(timeout=30)
            except subprocess.TimeoutExpired:
                writer.kill()
        res = json.loads((d / "daemon.json").read_text())
        wres = json.loads((d / "writer.json").read_text())
    elapsed = res["elapsed_s"]
    calls = res["calls"]
    lat, missed = _latencies(res["decisions"], wres["written"])
    pages = [p for p in res["pages_per_poll"] if p > 0]
    cpu = [s[2] for s in samples]
    return {
        "nodes": n_nodes,
        "written_lines": wres["total"],
        "write_rate_per_s": round(wres["total"] / max(1e-9, wres["seconds"]), 1),
        "events_per_s": round(res["log_events"] / elapsed, 1),
        "log_events": res["log_events"],
        "metric_samples": res["metric_samples"],
        "seconds": round(elapsed, 1),
        "filter_calls_per_s": round(calls.get("FilterLogEvents", 0) / elapsed, 3),
        "get_metric_data_calls_per_s": round(calls.get("GetMetricData", 0) / elapsed, 3),
        "pages_per_poll_max": max(pages, default=0),
        "filter_calls_per_poll_mean": round(statistics.mean(res["pages_per_poll"]), 2)
        if res["pages_per_poll"]
        else 0,
        "raw_events_read": res["raw_events"],
        "reread_factor": round(res["raw_events"] / max(1, res["log_events"]), 2),
        "get_metric_data_calls_per_poll": (
            round(statistics.mean(res["gmd_calls_per_poll"]), 2) if res["gmd_calls_per_poll"] else 0
        ),
        "pages_per_poll_mean": round(statistics.mean(pages), 2) if pages else 0,
        "logs_lag_last_s": res["logs_lag_last_s"],
        "logs_up": res["logs_up"],
        "decision_latencies_s": [round(x, 3) for x in lat],
        "decision_p50_s": _pct(lat, 0.5),
        "decision_p99_s": _pct(lat, 0.99),
        "failures_missed": missed,
        "engine_busy_s": round(res["busy_s"], 2),
        "daemon_cpu_s": cpu[-1] if cpu else None,
        **_rss_points(samples, 2.0, elapsed),
    }


def phase_engine(
    n_nodes: int, run_s: float, failures: int, burst_s: float, burst_lines: int, cap: int
) -> dict[str, Any]:
    drain_s = 6.0 + 2 * POLL_LOGS_S
    with tempfile.TemporaryDirectory(prefix="ftsup-scale-") as tmp:
        t0 = time.time() + 2.0
        cfg = {
            "nodes": n_nodes,
            "run_s": run_s,
            "failures": failures,
            "burst_s": burst_s,
            "burst_lines": burst_lines,
            "cap": cap,
            "workdir": tmp,
            "out": str(Path(tmp) / "engine.json"),
            "t0": t0,
            "drain_s": drain_s,
        }
        proc = _spawn("engine", cfg)
        samples = _sample(proc, t0)
        _wait(proc, "engine", 60)
        res = json.loads((Path(tmp) / "engine.json").read_text())
    injected = [
        {"node": node_name(n), "line_ts": t0 + t} for t, n, _ in failure_plan(run_s, n_nodes, failures)
    ]
    lat, missed = _latencies(res["decisions"], injected)
    marks = res.get("marks", [])
    # Kept up: every line written was read and processed (no backlog left, inbox drained).
    kept_up = res["lag_lines"] == 0 and res["source_lines"] == res["log_events"]
    # The steady part: after the start-up burst (and two polls), before the teardown burst.
    lo, hi = max(burst_s + 4 * POLL_LOGS_S, 0.3 * run_s), run_s - burst_s
    steady = [m for m in marks if lo <= m[0] <= hi]
    steady_rate = (
        (steady[-1][1] - steady[0][1]) / (steady[-1][0] - steady[0][0])
        if len(steady) >= 2 and steady[-1][0] > steady[0][0]
        else res["log_events"] / run_s
    )
    # The fastest the engine drained a backlog (start-up burst), over 4 s of marks.
    peak = max(
        ((b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(marks, marks[4:], strict=False) if b[0] > a[0]),
        default=0.0,
    )
    cpu = [s[2] for s in samples]
    rss = _rss_points(samples, lo, hi)
    return {
        "nodes": n_nodes,
        "offered_lines_per_s_steady": n_nodes * LINES_PER_NODE_S,
        "burst_lines_per_node": burst_lines,
        "events_per_s": round(steady_rate, 1),
        "events_per_s_mean_with_bursts": round(res["log_events"] / run_s, 1),
        "events_per_s_peak_4s": round(peak, 1),
        "steady_window_s": [lo, hi],
        "engine_capacity_events_per_s": round(res["log_events"] / max(1e-9, res["busy_s"]), 1),
        "log_events": res["log_events"],
        "metric_samples": res["metric_samples"],
        "max_batch_events": cap,
        "max_batch_s": round(res["max_batch_s"], 3),
        "engine_busy_s": round(res["busy_s"], 2),
        "daemon_cpu_s": cpu[-1] if cpu else None,
        "daemon_cpu_fraction": round(cpu[-1] / max(1e-9, samples[-1][0]), 3) if cpu else None,
        "kept_up": kept_up,
        "decision_latencies_s": [round(x, 3) for x in lat],
        "decision_p50_s": _pct(lat, 0.5),
        "decision_p99_s": _pct(lat, 0.99),
        "failures_missed": missed,
        "seconds": run_s,
        "rss_samples": [[t, r] for t, r, _ in samples[:: max(1, len(samples) // 20)]],
        **rss,
    }


def raw_bytes_per_event(n: int = 10_000) -> float:
    """Memory per decoded FilterLogEvents event (what poll() holds for every page of a scan), by
    tracemalloc on json.loads of a page shaped like CloudWatch's (botocore decodes with json)."""
    lines = pool_lines(n)
    page = json.dumps(
        {
            "events": [
                {
                    "logStreamName": node_name(i % 2048),
                    "timestamp": 1_800_000_000_000 + i,
                    "message": lines[i],
                    "ingestionTime": 1_800_000_000_500 + i,
                    "eventId": f"{37_000_000_000_000_000_000_000_000_000_000_000_000_000_000 + i:056d}",
                }
                for i in range(n)
            ]
        }
    )
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    decoded = [dict(e) for e in json.loads(page)["events"]]  # poll() copies each event into a dict
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del decoded
    return (after - before) / n


def dedupe_bytes_per_id(n: int = 50_000) -> float:
    """The real CloudWatchLogsSource's de-duplication memory (dict + heap) per event id, by tracemalloc."""
    from supervisor.sources.aws import AwsSettings
    from supervisor.sources.cloudwatch_logs import CloudWatchLogsSource

    src = CloudWatchLogsSource(None, GROUP, AwsSettings(), start_time=0.0)  # type: ignore[arg-type]
    t = 1_800_000_000_000
    raw = [
        {
            "eventId": f"{38_000_000_000_000_000_000_000_000_000_000_000_000_000_000 + i:056d}",
            "timestamp": t + i // 30,
            "logStreamName": node_name(i % 2048),
            "message": "x",
        }
        for i in range(n)
    ]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    events = src._take_new(raw)
    del events
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / n


def filter_extrapolation(n_nodes: int, mean_bytes: float) -> dict[str, Any]:
    rate = n_nodes * LINES_PER_NODE_S
    per_page = min(PAGE_EVENTS, math.floor(PAGE_BYTES / (mean_bytes + 26)))
    per_scan = rate * (POLL_LOGS_S + OVERLAP_S)
    pages = math.ceil(per_scan / per_page)
    needed = pages / POLL_LOGS_S
    no_overlap = math.ceil(rate * POLL_LOGS_S / per_page) / POLL_LOGS_S
    gmd_calls = math.ceil(len(METRICS) * n_nodes / 500) / POLL_METRICS_S
    return {
        "events_per_page": per_page,
        "events_per_scan": round(per_scan),
        "pages_per_scan": pages,
        "filter_calls_per_s_needed": round(needed, 2),
        "capped_by_max_pages": pages > MAX_PAGES,
        "filter_calls_per_s_without_overlap_reread": round(no_overlap, 2),
        "filter_calls_per_s_with_policy_filter_pattern": round(1 / POLL_LOGS_S, 2),
        "get_metric_data_calls_per_s": round(gmd_calls, 2),
        "get_metric_data_datapoints_per_s": round(len(METRICS) * n_nodes * LOOKBACK_S / POLL_METRICS_S),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (a few seconds per phase)")
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    ap.add_argument("--nodes", default="", help="comma-separated node counts (default 256,1024,2048)")
    ap.add_argument("--e2e-seconds", type=float, default=None)
    ap.add_argument("--e2e-rate", type=float, default=None, help="lines/s into moto, whole job (default 600)")
    ap.add_argument("--engine-seconds", default="", help="per node count, comma-separated (default 24,25,60)")
    ap.add_argument("--role", default="", help=argparse.SUPPRESS)
    ap.add_argument("--cfg", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.role:
        import logging

        import structlog

        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
        cfg = json.loads(args.cfg)
        {"writer": role_writer, "e2e-daemon": role_e2e_daemon, "engine": role_engine}[args.role](cfg)
        return 0

    if args.quick:
        nodes = [int(x) for x in args.nodes.split(",") if x] or [16]
        e2e_s, e2e_rate, eng_s = args.e2e_seconds or 8.0, args.e2e_rate or 200.0, [8.0]
        failures, burst_s, burst_x, burst_lines = 2, 1.0, 4.0, 60
    else:
        nodes = [int(x) for x in args.nodes.split(",") if x] or [256, 1024, 2048]
        e2e_s, e2e_rate = args.e2e_seconds or 18.0, args.e2e_rate or 600.0
        failures, burst_s, burst_x, burst_lines = 4, 4.0, 5.0, 600
        eng_s = [float(x) for x in args.engine_seconds.split(",") if x] or [24.0, 25.0, 60.0]
    eng_s = (eng_s * len(nodes))[: len(nodes)] if len(eng_s) < len(nodes) else eng_s

    lines = pool_lines()
    mean_bytes = statistics.mean(len(x.encode()) for x in lines)
    per_page = min(PAGE_EVENTS, math.floor(PAGE_BYTES / (mean_bytes + 26)))
    cap = MAX_PAGES * per_page  # what one poll of the real source reads at most
    per_id = dedupe_bytes_per_id(5_000 if args.quick else 50_000)
    per_raw = raw_bytes_per_event(2_000 if args.quick else 10_000)
    rows = []
    for i, n in enumerate(nodes):
        print(f"[scale] {n} nodes: end to end over moto, {e2e_rate:g} lines/s, {e2e_s:g} s", file=sys.stderr)
        e2e = phase_e2e(n, e2e_s, e2e_rate, failures, min(3.0, e2e_s / 4), burst_x)
        print(f"[scale] {n} nodes: engine, {n * LINES_PER_NODE_S:g} lines/s, {eng_s[i]:g} s", file=sys.stderr)
        eng = phase_engine(n, eng_s[i], failures, min(burst_s, eng_s[i] / 5), burst_lines, cap)
        ext = filter_extrapolation(n, mean_bytes)
        dedupe_mib = n * LINES_PER_NODE_S * (OVERLAP_S + POLL_LOGS_S) * per_id / 2**20
        pages_held = min(MAX_PAGES, ext["pages_per_scan"])
        raw_mib = pages_held * per_page * per_raw / 2**20
        measured_max = eng["rss_mib_max"] or 0.0
        rss_total = measured_max + dedupe_mib + raw_mib
        gmd_per_poll = e2e["get_metric_data_calls_per_poll"]
        rows.append(
            {
                "nodes": n,
                "events_per_s": eng["events_per_s"],
                "filter_calls_per_s": ext["filter_calls_per_s_needed"],
                "get_metric_data_calls_per_s": round(gmd_per_poll / POLL_METRICS_S, 3),
                "rss_mib": round(rss_total, 1),
                "rss_mib_start": eng["rss_mib_start"],
                "rss_mib_mid": eng["rss_mib_mid"],
                "rss_mib_end": eng["rss_mib_end"],
                "rss_mib_engine_max": eng["rss_mib_max"],
                "decision_p99_s": eng["decision_p99_s"],
                "decision_p50_s": eng["decision_p50_s"],
                "filter_calls_within_budget": ext["filter_calls_per_s_needed"] <= FILTER_BUDGET,
                "filter_calls_budget_per_s": FILTER_BUDGET,
                "get_metric_data_within_quota": gmd_per_poll / POLL_METRICS_S <= GMD_QUOTA
                and ext["get_metric_data_datapoints_per_s"] <= GMD_DATAPOINTS_QUOTA,
                "rss_within_256_mib": rss_total <= 256.0,
                "dedupe_memory_mib_extrapolated": round(dedupe_mib, 1),
                "dedupe_bytes_per_id_measured": round(per_id, 1),
                "raw_pages_memory_mib_extrapolated": round(raw_mib, 1),
                "raw_bytes_per_event_measured": round(per_raw, 1),
                "engine_full_rate": eng,
                "end_to_end_moto": e2e,
                "extrapolated": ext,
                "how": (
                    "MEASURED ON THE ENGINE ALONE: events_per_s (steady part), decision_p50/p99_s (line "
                    "written -> decision journaled), rss_mib_start/mid/end (steady part) and "
                    "rss_mib_engine_max:"
                    " the real Engine (observe mode, own process, real threads, policies and journal) fed in "
                    f"real time with SourceBatch objects at {n} x {LINES_PER_NODE_S:g} lines/s, bursts of "
                    f"{burst_lines} lines/node at start-up and teardown, at most {cap} lines per poll (the "
                    "real source's 50 pages), plus 6 metric samples/node/s; no HTTP, JSON decoding or "
                    "de-duplication. EXTRAPOLATED: rss_mib = rss_mib_engine_max + the logs source's dedupe "
                    f"memory (N x 15 x (O {OVERLAP_S:g} s + I {POLL_LOGS_S:g} s) ids x {per_id:.0f} B/id) + "
                    f"the pages one poll holds (min(50, pages per scan) x {per_page} events x {per_raw:.0f} "
                    "B/event), both per-item sizes measured with tracemalloc on the real code / JSON "
                    "decoding;"
                    " filter_calls_per_s = ceil(N x 15 x (I + O) / P) / I, P = min(10000, 1 MiB / "
                    f"({mean_bytes:.0f} + 26 B)), the real source's paging (the overlap window is re-read "
                    "every poll: end_to_end_moto.reread_factor is measured). MEASURED END TO END: "
                    "get_metric_data_calls_per_s = GetMetricData calls per metrics poll counted over HTTP to "
                    "moto (500 queries per call; moto given no datapoints) / the 5 s interval; "
                    f"end_to_end_moto: the whole real path at {e2e_rate:g} lines/s (what moto serves)."
                ),
            }
        )
    summary = {"scale": rows}
    for r in rows:
        e, x, g = r["end_to_end_moto"], r["extrapolated"], r["engine_full_rate"]
        print(
            f"{r['nodes']:>5} nodes | ENGINE {r['events_per_s']:,.0f} ev/s steady (capacity "
            f"{g['engine_capacity_events_per_s']:,.0f}/s of busy time, CPU {g['daemon_cpu_fraction']}), "
            f"decision p50/p99 {r['decision_p50_s']}/{r['decision_p99_s']} s, RSS start/mid/end/max "
            f"{r['rss_mib_start']}/{r['rss_mib_mid']}/{r['rss_mib_end']}/{g['rss_mib_max']} MiB | "
            f"+dedupe {r['dedupe_memory_mib_extrapolated']} +pages {r['raw_pages_memory_mib_extrapolated']}"
            f" = {r['rss_mib']} MiB | E2E moto {e['events_per_s']:,.0f} ev/s, FLE {e['filter_calls_per_s']}/s"
            f" ({e['filter_calls_per_poll_mean']}/poll, reread x{e['reread_factor']}), GMD "
            f"{e['get_metric_data_calls_per_poll']}/poll, p50/p99 {e['decision_p50_s']}/{e['decision_p99_s']}"
            f" s, RSS {e['rss_mib_start']}/{e['rss_mib_mid']}/{e['rss_mib_end']} MiB | FLE at full rate "
            f"{x['filter_calls_per_s_needed']}/s (no overlap re-read "
            f"{x['filter_calls_per_s_without_overlap_reread']}/s, filter pattern "
            f"{x['filter_calls_per_s_with_policy_filter_pattern']}/s), "
            f"GMD {x['get_metric_data_calls_per_s']}/s,"
            f" {x['get_metric_data_datapoints_per_s']:,} datapoints/s",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(summary))
    else:
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
