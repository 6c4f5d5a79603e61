"""Scale within CloudWatch's API quotas: 256, 1,024 and 2,048 simulated nodes (issue 7, part 2).

Per node count, one **end-to-end run at the full rate** (MEASURED): a moto server (EmbeddedCloudWatch)
in a server process holds the job's log group, one stream per node; every node writes 15 lines/s of
realistic healthy lines (bench/classify.py's `make_stream` pool: JSON step lines, NCCL INFO chatter,
torchrun / c10d warnings, ...; its c10d connect-retry warning, printed while rendezvous retries,
only in the start-up burst: see STARTUP_ONLY) with a burst of `--burst-lines` lines per node at
start-up and another at teardown (healthy chatter plus a 12-line traceback from every node),
plus failure lines (Xid 79, Xid 48, NCCL watchdog timeout, CUDA OOM) injected on chosen nodes at
known times. One node in a hundred is slow: its lines become searchable 15 s after their time
(beyond the tail scan's overlap, within `overlap_s`), so the late sweep is exercised, and one
failure is injected on a slow node. The daemon process runs the real CloudWatchLogsSource and
CloudWatchMetricsSource over HTTP to that server with the shipped defaults (supervisor/config.py:
logs every 1 s, 5 s tail overlap, a 30 s late sweep every 15 s, the policy-derived filter pattern of
`sources.logs.filter_pattern: auto`, exactly as `supervisor.daemon` wires it; metrics every 5 s,
6 metrics per node) and the real Engine in observe mode (ExternalJob: never acts). This process
samples the daemon's RSS (VmRSS) and CPU time once a second.

What is simulated, and why: moto cannot serve 30,000 lines/s (its FilterLogEvents rescans every
stored event per page and does not implement regex filter patterns, returning everything for them).
So in the server process each stream's events are pre-generated into time-indexed arrays and
become searchable at their timestamp (+15 s for slow nodes); moto's FilterLogEvents handler
(`LogGroup.filter_log_events`) is replaced by a bisect over those arrays that applies the filter
pattern with `supervisor.classify.prefilter.cloudwatch_matches` (CloudWatch's regex semantics) and
pages like CloudWatch (at most 10,000 events or 1 MiB of messages + 26 B per event, a query's
result fixed at its first page). moto's HTTP front end, request parsing and JSON responses are
real, as are botocore, the source, the engine and the journal.

EXTRAPOLATED, per node count (formulas in each row's `extrapolated.how`): FilterLogEvents calls/s
without a filter pattern (`filter_pattern: none`) and with the filter at the pass rate measured on
the healthy stream, from the page size measured on the lines (bytes + 26 per event, 1 MiB pages).
NOT MODELLED: real CloudWatch bounds how much data one FilterLogEvents call scans server-side (an
undocumented budget; it then returns a page, possibly empty, with nextToken): a sparse filter over
a busy group can take more calls per scan than the matching events need. The source follows such
tokens (and counts them); this bench cannot measure that budget.

    python bench/scale.py [--quick] [--json] [--nodes 256,1024,2048] [--seconds 30,30,70]

With --json the last line is one JSON object {"scale": [{nodes, events_per_s, filter_calls_per_s,
get_metric_data_calls_per_s, rss_mib, rss_mib_start, rss_mib_end, decision_p99_s, how, ...}, ...]}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from array import array
from bisect import bisect_left, bisect_right
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from classify import make_stream  # noqa: E402

from supervisor.config import LogsSourceConfig, MetricsSourceConfig  # noqa: E402

JOB = "scale-job"
GROUP = "/ftsup/jobs/scale-job"
NAMESPACE = "ftsup/Trainer"
LINES_PER_NODE_S = 15.0  # steady rate, middle of the 10-20
LOGS = LogsSourceConfig()  # the shipped defaults
METRICS_CFG = MetricsSourceConfig()
METRICS = ("step", "loss", "loss_nonfinite", "heartbeat", "tokens_per_s", "step_time_s")
PAGE_EVENTS = 10_000
PAGE_BYTES = 1_048_576
FILTER_QUOTA = 10.0  # FilterLogEvents calls/s, most regions
FILTER_BUDGET = 0.4 * FILTER_QUOTA
GMD_QUOTA = 50.0  # GetMetricData calls/s
GMD_DATAPOINTS_QUOTA = 180_000.0  # datapoints/s
RSS_TARGET_MIB = 256.0
SLOW_DELAY_S = 15.0  # ingestion delay of the slow nodes: beyond the tail overlap, within overlap_s
BURST_S = 3.0

FAILURES = (
    (
        "gpu-fallen-off-bus",
        "[ 8812.{us:06d}] NVRM: Xid (PCI:0000:{bus:02x}:00): 79, pid={pid}, name=python, "
        "GPU has fallen off the bus.",
    ),
    (
        "gpu-xid-48-dbe",
        "[ 9120.{us:06d}] NVRM: Xid (PCI:0000:{bus:02x}:00): 48, pid={pid}, name=python, An uncorrectable "
        "double bit error (DBE) has been detected on GPU in the framebuffer at partition 0, subpartition 0.",
    ),
    (
        "nccl-watchdog-timeout",
        "[rank{rank}]:[E1128 04:10:11.{us:06d} {pid} ProcessGroupNCCL.cpp:616] [Rank {rank}] Watchdog caught "
        "collective operation timeout: WorkNCCL(SeqNum=88{k}, OpType=ALLREDUCE, NumelIn=1, NumelOut=1, "
        "Timeout(ms)=600000) ran for 600081 milliseconds before timing out.",
    ),
    (
        "cuda-out-of-memory",
        "[rank{rank}]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 3 has a "
        "total capacity of 79.11 GiB of which 1.02 GiB is free.",
    ),
)

STARTUP_ONLY = ("The client socket has failed to connect",)
"""Healthy lines torch prints while rendezvous retries (bench/classify.py's c10d connect warning): they
pass the filter (the c10d-store-error rule is case-insensitive and shares their words), and written
all run long they would be 1 line in 14. They are written in the start-up burst only; the row's
`extrapolated.filter_calls_per_s_with_filter_if_every_template_steady` gives the calls/s if a job
printed them all the time."""

TEARDOWN_TRACEBACK = (
    "[rank{rank}]: Traceback (most recent call last):",
    '[rank{rank}]:   File "/opt/train.py", line 212, in <module>',
    "[rank{rank}]:     main()",
    '[rank{rank}]:   File "/opt/train.py", line 160, in main',
    "[rank{rank}]:     loss = _train_step(model, optimizer, batch)",
    '[rank{rank}]:   File "/opt/conda/lib/python3.11/site-packages/torch/distributed/c10d_logger.py", '
    "line 83, in wrapper",
    "[rank{rank}]:     return func(*args, **kwargs)",
    "[rank{rank}]: torch.distributed.DistBackendError: NCCL communicator was aborted on rank {rank}.",
    "W1128 04:10:12.000000 {pid} torch/distributed/elastic/multiprocessing/api.py:890] Sending process "
    "{pid} closing signal SIGTERM",
    "E1128 04:10:12.000000 {pid} torch/distributed/elastic/multiprocessing/api.py:862] failed "
    "(exitcode: 1) local_rank: 0 (pid: {pid}) of binary: /opt/conda/bin/python",
    "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:",
    "[rank{rank}]: RuntimeError: NCCL communicator was aborted on rank {rank}.",
)


def node_name(i: int) -> str:
    return f"node-{i:04d}"


def failure_line(k: int) -> tuple[str, str]:
    rule, template = FAILURES[k % len(FAILURES)]
    return rule, template.format(us=123456 + k, bus=16 + k % 200, pid=4000 + k, rank=8 * k + 3, k=k)


def slow_nodes(n_nodes: int) -> list[int]:
    """One node in a hundred (at least one) whose lines are searchable SLOW_DELAY_S late."""
    return list(range(7, n_nodes, 100)) or [0]


FIRST_FAILURE_S = BURST_S + 4.0


def failure_plan(run_s: float, n_nodes: int, count: int) -> list[tuple[float, int, int]]:
    """(seconds after start, node index, kind) spread over the steady part; the first on a slow node
    (it becomes searchable SLOW_DELAY_S later: only the late sweep can read it)."""
    lo, hi = FIRST_FAILURE_S, max(FIRST_FAILURE_S + 1.0, run_s - BURST_S - 3.0)
    step = (hi - lo) / max(1, count - 1)
    plan = [(lo + k * step, (k * 7919 + 13) % n_nodes, k) for k in range(count)]
    if plan:
        plan[0] = (plan[0][0], slow_nodes(n_nodes)[0], plan[0][2])
    return plan


def drain_s(run_s: float) -> float:
    """How long the daemon runs past the end: the slow node's failure must be swept and decided."""
    # Searchable SLOW_DELAY_S after it was written, then the next sweep (sweep_interval_s), its
    # pages spread over a few polls, settle and decide: 15 s of margin for a loaded machine.
    swept_by = FIRST_FAILURE_S + SLOW_DELAY_S + LOGS.sweep_interval_s + 15.0
    return max(6.0, swept_by - run_s)


# ----------------------------------------------------------------------------- the server process


class _Stream:
    """One node's events: offsets (ms after t0, sorted), message ids, and the passing subset."""

    __slots__ = ("base", "delay_ms", "msg", "off", "pass_off", "pass_pos")

    def __init__(self, base: int, delay_ms: int) -> None:
        self.base = base
        self.delay_ms = delay_ms
        self.off = array("q")
        self.msg = array("I")
        self.pass_off = array("q")
        self.pass_pos = array("I")


def _build_streams(cfg: dict[str, Any], messages: list[str], passes: list[bool]) -> dict[str, _Stream]:
    """Pre-generate every node's events for the run (see the module docstring)."""
    n, run_ms = cfg["nodes"], int(cfg["run_s"] * 1000)
    pool_n = cfg["pool_n"]
    burst = cfg["burst_lines"]
    slow = set(slow_nodes(n))
    step_ms = 1000.0 / LINES_PER_NODE_S
    fails: dict[int, list[tuple[int, int]]] = {}
    for t, node, k in failure_plan(cfg["run_s"], n, cfg["failures"]):
        fails.setdefault(node, []).append((int(t * 1000), pool_n + k))
    tb_first = pool_n + cfg["failures"]
    # Rendezvous-time lines (STARTUP_ONLY) are written in the start-up burst only.
    later = [k for k in range(pool_n) if not any(x in messages[k] for x in STARTUP_ONLY)] or list(
        range(pool_n)
    )
    nl = len(later)
    streams: dict[str, _Stream] = {}
    burst_ms = int(BURST_S * 1000)
    for i in range(n):
        s = _Stream(base=(i + 1) * 10**10, delay_ms=int(SLOW_DELAY_S * 1000) if i in slow else 0)
        phase = (i * 7.3) % step_ms
        events: list[tuple[int, int]] = [
            (int(phase + j * step_ms), later[(i * 131 + j) % nl]) for j in range(int(run_ms / step_ms))
        ]
        events += [(int(b * burst_ms / burst), (i * 17 + b) % pool_n) for b in range(burst)]
        tear = run_ms - burst_ms
        events += [(tear + int(b * burst_ms / burst), later[(i * 29 + b) % nl]) for b in range(burst)]
        events += [(tear + 500 + 10 * b, tb_first + i * len(TEARDOWN_TRACEBACK) + b) for b in range(12)]
        events += fails.get(i, [])
        events.sort()
        s.off.extend([off for off, _ in events])
        s.msg.extend([m for _, m in events])
        keep = [pos for pos, (_, m) in enumerate(events) if passes[m]]
        s.pass_off.extend([events[pos][0] for pos in keep])
        s.pass_pos.extend(keep)
        streams[node_name(i)] = s
    return streams


def role_server(cfg: dict[str, Any]) -> None:
    """moto with the pre-generated log group (see the module docstring)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.logs import models as logs_models

    from supervisor.classify.prefilter import cloudwatch_matches
    from supervisor.local_cloudwatch import EmbeddedCloudWatch

    pattern = cfg["filter_pattern"]
    pool = make_stream(cfg["pool_n"], seed=11, failure_rate=0.0)
    messages = list(pool) + [failure_line(k)[1] for k in range(cfg["failures"])]
    for i in range(cfg["nodes"]):
        messages += [t.format(rank=8 * i, pid=4000 + i) for t in TEARDOWN_TRACEBACK]
    passes = [cloudwatch_matches(pattern, m) for m in messages] if pattern else [True] * len(messages)
    streams = _build_streams(cfg, messages, passes)
    stats = {"queries": 0, "pages": 0, "events_returned": 0}
    queries: dict[str, list[dict[str, Any]]] = {}
    t0_ms = [0]

    def window(name: str, s: _Stream, start: int, end: int, fp: str | None) -> list[dict[str, Any]]:
        now_off = int(time.time() * 1000) - t0_ms[0] - s.delay_ms
        lo, hi = start - t0_ms[0], min(end - t0_ms[0], now_off)
        if hi < lo:
            return []
        if fp and fp == pattern:
            offs, poss = s.pass_off, s.pass_pos
        elif not fp:
            offs, poss = s.off, None
        else:  # another pattern: evaluated line by line (not used by the bench)
            i, j = bisect_left(s.off, lo), bisect_right(s.off, hi)
            keep = [k for k in range(i, j) if cloudwatch_matches(fp, messages[s.msg[k]])]
            return [_event(name, s, k, t0_ms[0], messages) for k in keep]
        i, j = bisect_left(offs, lo), bisect_right(offs, hi)
        return [_event(name, s, poss[k] if poss is not None else k, t0_ms[0], messages) for k in range(i, j)]

    def filter_log_events(
        self: Any,
        log_group_name: str,
        log_stream_names: list[str],
        start_time: int,
        end_time: int,
        limit: int | None,
        next_token: str | None,
        filter_pattern: str,
        interleaved: bool,
    ) -> tuple[list[dict[str, Any]], str | None, list[dict[str, Any]]]:
        limit = limit or PAGE_EVENTS
        if next_token is None:
            events: list[dict[str, Any]] = []
            for name, s in streams.items():
                if not log_stream_names or name in log_stream_names:
                    events += window(name, s, start_time or 0, end_time or 2**62, filter_pattern or None)
            qid = f"q{stats['queries']}"
            stats["queries"] += 1
            queries[qid] = events
            while len(queries) > 64:  # abandoned queries (a failed poll) do not pile up
                del queries[next(iter(queries))]
            offset = 0
        else:
            qid, _, off = next_token.partition(":")
            events = queries.get(qid, [])
            offset = int(off or 0)
        page: list[dict[str, Any]] = []
        size = 0
        for e in events[offset : offset + limit]:
            size += len(e["message"].encode()) + 26
            if page and size > PAGE_BYTES:
                break
            page.append(e)
        stats["pages"] += 1
        stats["events_returned"] += len(page)
        end = offset + len(page)
        token = f"{qid}:{end}" if end < len(events) else None
        if token is None:
            queries.pop(qid, None)
        return page, token, []

    cw = EmbeddedCloudWatch().start()
    backend = logs_models.logs_backends[DEFAULT_ACCOUNT_ID]["us-east-1"]
    backend.create_log_group(GROUP, {})
    logs_models.LogGroup.filter_log_events = filter_log_events  # type: ignore[method-assign]
    Path(cfg["port_file"]).write_text(cw.endpoint_url)
    while not Path(cfg["go_file"]).exists():
        time.sleep(0.02)
    t0_ms[0] = int(json.loads(Path(cfg["go_file"]).read_text())["t0"] * 1000)
    while not Path(cfg["stop_file"]).exists():
        time.sleep(0.1)
    written, passing = 0, 0
    for s in streams.values():
        written += len(s.off)
        passing += len(s.pass_off)
    # Which healthy lines pass, and what share of the steady stream each is (the pool is uniform).
    passing_pool = [m for m, ok in zip(pool, passes, strict=False) if ok]
    shapes: dict[str, int] = {}
    for m in passing_pool:
        shape = re.sub(r"\d+", "N", m)[:90]
        shapes[shape] = shapes.get(shape, 0) + 1
    top = sorted(shapes.items(), key=lambda kv: -kv[1])[:3]
    Path(cfg["out"]).write_text(
        json.dumps(
            {
                **stats,
                "events_total": written,
                "events_passing": passing,
                "healthy_pass_rate": round(len(passing_pool) / len(pool), 4),
                "healthy_passing_shapes": [[shape, round(k / len(pool), 4)] for shape, k in top],
            }
        )
    )
    cw.stop()


def _event(name: str, s: _Stream, pos: int, t0_ms: int, messages: list[str]) -> dict[str, Any]:
    ts = t0_ms + s.off[pos]
    return {
        "logStreamName": name,
        "timestamp": ts,
        "message": messages[s.msg[pos]],
        "ingestionTime": ts + s.delay_ms,
        "eventId": str(s.base + pos),
    }


# ----------------------------------------------------------------------------- the daemon process


def role_daemon(cfg: dict[str, Any]) -> None:
    import boto3

    from supervisor.act.external import ExternalJob
    from supervisor.classify.policy import load_policies
    from supervisor.config import load_config
    from supervisor.daemon import logs_filter_pattern
    from supervisor.engine import Engine
    from supervisor.journal import Journal
    from supervisor.sources.aws import ApiCallCounter, AwsSettings, make_client
    from supervisor.sources.cloudwatch_logs import CloudWatchLogsSource
    from supervisor.sources.cloudwatch_metrics import CloudWatchMetricsSource
    from supervisor.vocabulary import Mode

    workdir = Path(cfg["workdir"])
    config = load_config(Path(cfg["config"]))
    policy = load_policies([Path(p) for p in config.policies])
    pattern, progress_metric = logs_filter_pattern(config, policy)
    nodes = [node_name(i) for i in range(cfg["nodes"])]
    journal = Journal(workdir / "ftsup.db")
    engine = Engine(
        job=JOB,
        policy=policy,
        journal=journal,
        actuator=ExternalJob(JOB, nodes),
        mode=Mode.OBSERVE,
        settle_s=config.incidents.settle_s,
        observe_hold_s=0.0,  # the injected failures are independent: none is folded into another
    )
    engine.progress_metric = progress_metric
    settings = AwsSettings(
        region="us-east-1", endpoint_url=cfg["endpoint"], read_timeout_s=60.0, retry_budget_s=30.0
    )
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )
    calls = ApiCallCounter()
    lc = config.sources.logs
    logs = CloudWatchLogsSource(
        make_client("logs", settings, session=session),
        GROUP,
        settings,
        overlap_s=lc.overlap_s,
        tail_overlap_s=lc.tail_overlap_s,
        sweep_interval_s=lc.sweep_interval_s,
        max_pages_per_poll=lc.max_pages_per_poll,
        counter=calls,
        filter_pattern=pattern,
        start_time=cfg["t0"] - 1.0,
    )
    stats: dict[str, Any] = {
        "log_events": 0,
        "busy_s": 0.0,
        "lag": [],
        "up": True,
        "seen_max": 0,
        "marks": [],
    }
    pages: list[int] = []
    orig_poll = logs.poll

    def poll() -> Any:
        before = calls.get("FilterLogEvents")
        batch = orig_poll()
        pages.append(calls.get("FilterLogEvents") - before)
        stats["seen_max"] = max(stats["seen_max"], logs.seen_ids)
        return batch

    logs.poll = poll  # type: ignore[method-assign]
    orig_process = engine.process_batch

    def process(batch: Any) -> None:
        t = time.perf_counter()
        orig_process(batch)
        stats["busy_s"] += time.perf_counter() - t
        if batch.source == "logs":
            stats["log_events"] += len(batch.logs)
            stats["lag"].append(batch.health.lag_s)
            stats["up"] = stats["up"] and batch.health.up

    engine.process_batch = process  # type: ignore[method-assign]
    mc = config.sources.metrics
    metrics = CloudWatchMetricsSource(
        make_client("cloudwatch", settings, session=session),
        NAMESPACE,
        JOB,
        engine.current_nodes,
        settings,
        stats=dict(mc.stats),
        period_s=mc.period_s,
        lookback_s=mc.lookback_s,
        counter=calls,
    )
    engine.add_source(logs, lc.poll_interval_s)
    engine.add_source(metrics, mc.poll_interval_s)
    started = time.time()
    engine.start()
    stop_at = cfg["t0"] + cfg["run_s"] + cfg["drain_s"]
    while time.time() < stop_at:
        time.sleep(1.0)
        stats["marks"].append(
            (round(time.time() - cfg["t0"], 2), calls.get("FilterLogEvents"), calls.get("GetMetricData"))
        )
    engine.stop(timeout_s=30.0)
    decisions = []
    for h in engine.snapshot().handled:
        root = h.incident.root_cause
        decisions.append(
            {
                "nodes": sorted({sig.node for sig in h.incident.signals if sig.node}),
                "rules": sorted({sig.rule for sig in h.incident.signals}),
                "decided_at": h.decision.decided_at,
                "root_rule": root.rule,
            }
        )
    lags = [x for x in stats.pop("lag") if x is not None]
    result = {
        **stats,
        "elapsed_s": time.time() - started,
        "calls": dict(calls.snapshot()),
        "pages_per_poll": pages,
        "decisions": decisions,
        "lag_max_s": max(lags, default=None),
        "lag_p50_s": statistics.median(lags) if lags else None,
        "filter_pattern": pattern,
        "progress_metric": progress_metric,
    }
    journal.close()
    Path(cfg["out"]).write_text(json.dumps(result))


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
    return round(xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))], 3)


def _latencies(
    decisions: list[dict[str, Any]], injected: list[dict[str, Any]]
) -> tuple[list[float], list[float], int]:
    """line written -> decision journaled, per injected failure (same node and rule, first after it);
    (all, on slow nodes, missed)."""
    lat, slow_lat, missed = [], [], 0
    for inj in injected:
        cands = [
            d["decided_at"] - inj["line_ts"]
            for d in decisions
            if inj["node"] in d["nodes"]
            and inj["rule"] in d["rules"]
            and d["decided_at"] >= inj["line_ts"] - 0.001
        ]
        if not cands:
            missed += 1
            continue
        lat.append(min(cands))
        if inj["slow"]:
            slow_lat.append(min(cands))
    return lat, slow_lat, missed


def _config_file(workdir: Path) -> Path:
    path = workdir / "ftsup.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            job: {{name: {JOB}, log_group: {GROUP}, metrics_namespace: {NAMESPACE}}}
            actuator: {{kind: none, none: {{nodes: [node-0000]}}}}
            """
        )
    )
    return path


def run_one(n_nodes: int, run_s: float, failures: int, burst_lines: int, pool_n: int) -> dict[str, Any]:
    """One end-to-end run (see the module docstring); every figure measured."""
    from supervisor.classify.policy import load_policies
    from supervisor.config import load_config
    from supervisor.daemon import logs_filter_pattern

    drain = drain_s(run_s)
    with tempfile.TemporaryDirectory(prefix="ftsup-scale-") as tmp:
        d = Path(tmp)
        config_path = _config_file(d)
        config = load_config(config_path)
        pattern, _ = logs_filter_pattern(config, load_policies([Path(p) for p in config.policies]))
        scfg = {
            "nodes": n_nodes,
            "run_s": run_s,
            "failures": failures,
            "burst_lines": burst_lines,
            "pool_n": pool_n,
            "filter_pattern": pattern,
            "port_file": str(d / "port"),
            "go_file": str(d / "go"),
            "stop_file": str(d / "stop"),
            "out": str(d / "server.json"),
        }
        server = _spawn("server", scfg)
        try:
            deadline = time.time() + 180
            while not (d / "port").exists():
                if server.poll() is not None or time.time() > deadline:
                    _wait(server, "server", 1)
                    raise RuntimeError("server never served")
                time.sleep(0.05)
            t0 = time.time() + 2.0
            dcfg = {
                "nodes": n_nodes,
                "endpoint": (d / "port").read_text(),
                "workdir": tmp,
                "config": str(config_path),
                "out": str(d / "daemon.json"),
                "run_s": run_s,
                "drain_s": drain,
                "t0": t0,
            }
            (d / "go").write_text(json.dumps({"t0": t0}))
            daemon = _spawn("daemon", dcfg)
            samples = _sample(daemon, t0)
            _wait(daemon, "daemon", 60)
        finally:
            (d / "stop").write_text("")
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
        res = json.loads((d / "daemon.json").read_text())
        srv = json.loads((d / "server.json").read_text())
    slow = set(slow_nodes(n_nodes))
    injected = [
        {"node": node_name(node), "line_ts": t0 + t, "rule": failure_line(k)[0], "slow": node in slow}
        for t, node, k in failure_plan(run_s, n_nodes, failures)
    ]
    lat, slow_lat, missed = _latencies(res["decisions"], injected)
    normal = list(lat)
    for x in slow_lat:
        normal.remove(x)
    marks = res["marks"]
    # Steady part: after the start-up burst and its tail overlap, before the teardown burst.
    lo, hi = BURST_S + LOGS.tail_overlap_s + 2.0, run_s - BURST_S
    steady = [m for m in marks if lo <= m[0] <= hi]
    elapsed_all = marks[-1][0] if marks else res["elapsed_s"]
    fle_all = res["calls"].get("FilterLogEvents", 0)
    if len(steady) >= 2 and steady[-1][0] > steady[0][0]:
        span = steady[-1][0] - steady[0][0]
        fle_steady = (steady[-1][1] - steady[0][1]) / span
        gmd_steady = (steady[-1][2] - steady[0][2]) / span
    else:
        fle_steady = fle_all / max(1e-9, elapsed_all)
        gmd_steady = res["calls"].get("GetMetricData", 0) / max(1e-9, elapsed_all)
    peak10 = max(
        ((b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(marks, marks[10:], strict=False) if b[0] > a[0]),
        default=0.0,
    )
    inside = [s for s in samples if lo <= s[0] <= hi] or samples
    rss = {
        "rss_mib_start": inside[0][1] if inside else None,
        "rss_mib_mid": inside[len(inside) // 2][1] if inside else None,
        "rss_mib_end": inside[-1][1] if inside else None,
        "rss_mib_max": max((s[1] for s in samples), default=None),
    }
    half = len(inside) // 2
    growth = None
    if half >= 3:
        first, second = inside[:half], inside[half:]
        dt = (statistics.mean(s[0] for s in second) - statistics.mean(s[0] for s in first)) / 60.0
        growth = round((statistics.mean(s[1] for s in second) - statistics.mean(s[1] for s in first)) / dt, 2)
    cpu = [s[2] for s in samples]
    written = srv["events_total"]
    pass_rate = srv["events_passing"] / max(1, written)
    return {
        "nodes": n_nodes,
        "seconds": run_s,
        "lines_written": written,
        "lines_per_s_steady": n_nodes * LINES_PER_NODE_S,
        "lines_per_s_mean_with_bursts": round(written / run_s, 1),
        "burst_lines_per_node": burst_lines,
        "filter_pattern_chars": len(res["filter_pattern"] or ""),
        "filter_pass_rate": round(pass_rate, 4),
        "filter_pass_rate_healthy_lines": srv["healthy_pass_rate"],
        "filter_passing_healthy_shapes": srv["healthy_passing_shapes"],
        "events_delivered": res["log_events"],
        "events_delivered_per_s": round(res["log_events"] / run_s, 1),
        "filter_calls_per_s_steady": round(fle_steady, 3),
        "filter_calls_per_s_run": round(fle_all / max(1e-9, elapsed_all), 3),
        "filter_calls_per_s_peak_10s": round(peak10, 3),
        "filter_calls_total": fle_all,
        "pages_per_poll_max": max(res["pages_per_poll"], default=0),
        "pages_per_poll_mean": round(statistics.mean(res["pages_per_poll"]), 2)
        if res["pages_per_poll"]
        else 0,
        "server_queries": srv["queries"],
        "get_metric_data_calls_per_s": round(gmd_steady, 3),
        "get_metric_data_calls": res["calls"].get("GetMetricData", 0),
        "logs_lag_max_s": res["lag_max_s"],
        "logs_lag_p50_s": res["lag_p50_s"],
        "logs_up": res["up"],
        "dedupe_ids_max": res["seen_max"],
        "progress_metric": res["progress_metric"],
        "decision_latencies_s": [round(x, 3) for x in normal],
        "decision_p50_s": _pct(normal, 0.5),
        "decision_p99_s": _pct(normal, 0.99),
        "decision_latency_slow_node_s": [round(x, 3) for x in slow_lat],
        "failures_injected": len(injected),
        "failures_missed": missed,
        "engine_busy_s": round(res["busy_s"], 2),
        "daemon_cpu_s": cpu[-1] if cpu else None,
        "daemon_cpu_fraction": round(cpu[-1] / max(1e-9, samples[-1][0]), 3) if cpu else None,
        "steady_window_s": [lo, hi],
        "rss_growth_mib_per_min": growth,
        "rss_samples": [[t, r] for t, r, _ in samples[:: max(1, len(samples) // 30)]],
        **rss,
    }


def mean_event_bytes(lines: list[str]) -> float:
    return statistics.mean(len(x.encode()) + 26 for x in lines)


def extrapolate(
    n_nodes: int, bytes_per_event: float, pass_rate: float, pool_pass_rate: float
) -> dict[str, Any]:
    """FilterLogEvents calls/s from the source's scan windows and CloudWatch's page size."""
    rate = n_nodes * LINES_PER_NODE_S
    per_page = min(PAGE_EVENTS, math.floor(PAGE_BYTES / bytes_per_event))
    i, tail, o, s = LOGS.poll_interval_s, LOGS.tail_overlap_s, LOGS.overlap_s, LOGS.sweep_interval_s

    def calls(p: float) -> float:
        tail_calls = max(1, math.ceil(rate * p * (i + tail) / per_page)) / i
        sweep_calls = max(1, math.ceil(rate * p * (o + s) / per_page)) / s
        return tail_calls + sweep_calls

    gmd = math.ceil(len(METRICS) * n_nodes / 500) / METRICS_CFG.poll_interval_s
    return {
        "events_per_page": per_page,
        "filter_calls_per_s_no_filter": round(calls(1.0), 2),
        "filter_calls_per_s_with_filter": round(calls(pass_rate), 2),
        "filter_calls_per_s_with_filter_if_every_template_steady": round(calls(pool_pass_rate), 2),
        "filter_pass_rate_if_every_template_steady": pool_pass_rate,
        "get_metric_data_calls_per_s": round(gmd, 2),
        "get_metric_data_datapoints_per_s": round(
            len(METRICS) * n_nodes * METRICS_CFG.lookback_s / METRICS_CFG.poll_interval_s
        ),
        "how": (
            "calls/s = max(1, ceil(R x p x (I + T) / P)) / I + max(1, ceil(R x p x (O + S) / P)) / S "
            f"with R = {n_nodes} x {LINES_PER_NODE_S:g} lines/s, p the share of lines the filter passes "
            f"(1 without a filter), I = {i:g} s poll, T = {tail:g} s tail overlap, O = {o:g} s overlap, "
            f"S = {s:g} s sweep interval, P = min(10,000, 1 MiB / {bytes_per_event:.0f} B) events per page; "
            f"GetMetricData = ceil(6 N / 500) calls per {METRICS_CFG.poll_interval_s:g} s poll"
        ),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (one small node count)")
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    ap.add_argument("--nodes", default="", help="comma-separated node counts (default 256,1024,2048)")
    ap.add_argument("--seconds", default="", help="run length per node count (default 30,30,70)")
    ap.add_argument(
        "--burst-lines", type=int, default=None, help="lines per node in each burst (default 1000)"
    )
    ap.add_argument("--role", default="", help=argparse.SUPPRESS)
    ap.add_argument("--cfg", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.role:
        import logging

        import structlog

        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
        cfg = json.loads(args.cfg)
        {"server": role_server, "daemon": role_daemon}[args.role](cfg)
        return 0

    if args.quick:
        nodes = [int(x) for x in args.nodes.split(",") if x] or [64]
        secs = [float(x) for x in args.seconds.split(",") if x] or [24.0]
        failures, burst, pool_n = 4, args.burst_lines or 100, 1000
    else:
        nodes = [int(x) for x in args.nodes.split(",") if x] or [256, 1024, 2048]
        secs = [float(x) for x in args.seconds.split(",") if x] or [30.0, 30.0, 70.0]
        failures, burst, pool_n = 8, args.burst_lines or 1000, 4000
    secs = (secs * len(nodes))[: len(nodes)] if len(secs) < len(nodes) else secs

    bytes_per_event = mean_event_bytes(make_stream(pool_n, seed=11, failure_rate=0.0))
    rows = []
    for n, run_s in zip(nodes, secs, strict=False):
        print(f"[scale] {n} nodes, {n * LINES_PER_NODE_S:g} lines/s, {run_s:g} s", file=sys.stderr)
        e2e = run_one(n, run_s, failures, burst, pool_n)
        ext = extrapolate(n, bytes_per_event, e2e["filter_pass_rate"], e2e["filter_pass_rate_healthy_lines"])
        rss = e2e["rss_mib_max"] or 0.0
        fle = e2e["filter_calls_per_s_steady"]
        rows.append(
            {
                "nodes": n,
                "events_per_s": e2e["lines_per_s_steady"],
                "events_delivered_per_s": e2e["events_delivered_per_s"],
                "filter_calls_per_s": fle,
                "filter_calls_per_s_run": e2e["filter_calls_per_s_run"],
                "filter_calls_per_s_peak_10s": e2e["filter_calls_per_s_peak_10s"],
                "get_metric_data_calls_per_s": e2e["get_metric_data_calls_per_s"],
                "rss_mib": rss,
                "rss_mib_start": e2e["rss_mib_start"],
                "rss_mib_mid": e2e["rss_mib_mid"],
                "rss_mib_end": e2e["rss_mib_end"],
                "rss_growth_mib_per_min": e2e["rss_growth_mib_per_min"],
                "decision_p99_s": e2e["decision_p99_s"],
                "decision_p50_s": e2e["decision_p50_s"],
                "filter_calls_within_budget": fle <= FILTER_BUDGET
                and e2e["filter_calls_per_s_run"] <= FILTER_BUDGET,
                "filter_calls_budget_per_s": FILTER_BUDGET,
                "get_metric_data_within_quota": e2e["get_metric_data_calls_per_s"] <= GMD_QUOTA
                and ext["get_metric_data_datapoints_per_s"] <= GMD_DATAPOINTS_QUOTA,
                "rss_within_256_mib": rss <= RSS_TARGET_MIB,
                "kept_up": e2e["logs_up"] and e2e["failures_missed"] == 0,
                "end_to_end": e2e,
                "extrapolated": ext,
                "how": (
                    f"MEASURED END TO END at the full rate ({n} nodes x {LINES_PER_NODE_S:g} lines/s steady, "
                    f"{burst} lines/node bursts at start-up and teardown, {run_s:g} s): the real daemon "
                    "(CloudWatchLogsSource with the policy-derived filter pattern, CloudWatchMetricsSource, "
                    "Engine in observe mode, journal) in its own process over HTTP to a moto server whose "
                    "FilterLogEvents handler serves pre-generated events by time with CloudWatch's regex "
                    "semantics and page limits (module docstring). events_per_s: the job's lines/s the "
                    "daemon kept up with (all scanned server-side; events_delivered_per_s passed the filter "
                    "and were classified); filter_calls_per_s: FilterLogEvents calls/s over the steady part "
                    "(filter_calls_per_s_run: the whole run, bursts included); get_metric_data_calls_per_s: "
                    "counted over HTTP (moto holds no datapoints: its GetMetricData is too slow with them); "
                    "rss_mib: the daemon's peak VmRSS over the run (start/mid/end: the steady part); "
                    "decision_p50/p99_s: failure line written -> decision journaled, per failure injected on "
                    "a node whose lines are searchable at once (end_to_end.decision_latency_slow_node_s: "
                    f"on a node searchable {SLOW_DELAY_S:g} s late, read by the late sweep). "
                    "EXTRAPOLATED: extrapolated.* (calls/s without a filter, from the pass rate, and if the "
                    "c10d connect-retry warning, written here at start-up only, were 1 line in 14 all run "
                    "long)."
                ),
            }
        )
    summary = {"scale": rows}
    for r in rows:
        e, x = r["end_to_end"], r["extrapolated"]
        print(
            f"{r['nodes']:>5} nodes | {r['events_per_s']:,.0f} lines/s ({e['lines_written']:,} written, "
            f"{e['filter_pass_rate']:.1%} pass the {e['filter_pattern_chars']}-char filter, "
            f"{r['events_delivered_per_s']:,.0f}/s delivered) | FilterLogEvents "
            f"{r['filter_calls_per_s']}/s steady, {r['filter_calls_per_s_run']}/s run, peak "
            f"{r['filter_calls_per_s_peak_10s']}/s (extrapolated: no filter "
            f"{x['filter_calls_per_s_no_filter']}/s, c10d warning all run "
            f"{x['filter_calls_per_s_with_filter_if_every_template_steady']}/s) | GetMetricData "
            f"{r['get_metric_data_calls_per_s']}/s | RSS {r['rss_mib_start']}/"
            f"{r['rss_mib_mid']}/{r['rss_mib_end']} MiB steady, max {r['rss_mib']}, growth "
            f"{r['rss_growth_mib_per_min']} MiB/min | decision p50/p99 {r['decision_p50_s']}/"
            f"{r['decision_p99_s']} s, slow node {e['decision_latency_slow_node_s']} s, missed "
            f"{e['failures_missed']} | lag max {e['logs_lag_max_s']}",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(summary))
    else:
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
