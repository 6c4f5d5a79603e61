"""Fault injection between boto3 and CloudWatch (moto): the daemon keeps working, loses no event,
stays inside its API call budget, and reports itself degraded, not healthy, while blind.

The real daemon path (`supervisor.daemon.build` from a config file: CloudWatchLogsSource and
CloudWatchMetricsSource through boto3, the engine, the journal, the shared call budget) reads
through `FaultProxy` (tests/chaos/fault_proxy.py), while a writer puts countable log events and
metrics straight into moto. The scenario:

1. faults: every fault kind is scripted once per operation, then injected at random (seeded);
2. an outage longer than the test policy's absence and stall windows (10 s), during which the
   job keeps logging (one fault line to detect) and publishing heartbeats and steps;
3. recovery with faults, and late log events (stamped before what the daemon already read, within
   `overlap_s`), one of them a fault line;
4. drain: the job stops logging (heartbeats go on), the faults stop, the daemon catches up.

The call budget (5 calls/s, burst 3) is below what the polls (every 0.25 s and 0.5 s) and their
retries want, so it binds all along; without it this scenario peaks at about 20 calls/s.
Typical runtime: about 40 s (the daemon test) plus 5 s (the protocol test).
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError

from supervisor.config import load_config
from supervisor.daemon import Daemon, build
from supervisor.engine import Engine
from supervisor.journal import Journal
from supervisor.sources.aws import AwsSettings, error_code, is_retryable, make_client
from supervisor.vocabulary import SourceBatch
from tests.chaos.fault_proxy import Fault, FaultPlan, FaultProxy, max_in_window

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

NODES = ("node-0", "node-1")
NAMESPACE = "ftsup/chaos"
RATE, BURST = 5.0, 3  # aws.max_calls_per_s, aws.max_calls_burst: below what the polls want
MARKER = re.compile(r'"id": "([a-z0-9-]+)"')
ALL_FAULTS = tuple(Fault)
METRICS_FAULTS = tuple(f for f in Fault if f is not Fault.EMPTY_PAGE)

POLICY = """\
rules:
  - name: chaos-fault
    description: A fault line the chaos writer injects; each one is an incident to detect.
    match: {log: 'CHAOS-FAULT'}
    signal: chaos.fault
    class: recoverable
    scope: node
    action: restart         # observe mode: decided and journaled, never acted on
    severity: warning
    role: cause
    examples:
      match: ['{"chaos": "fault", "id": "f-1", "msg": "CHAOS-FAULT"}']
      no_match: ['{"chaos": "event", "id": "w-000001"}']
  - name: no-heartbeat
    description: No heartbeat for 10 s (shorter than the outage).
    match: {metric: heartbeat, absent_for: 10s}
    signal: node.heartbeat_lost
    class: non_recoverable
    scope: node
    action: cordon_and_restart
    severity: critical
    role: cause
  - name: no-step-progress
    description: The step has not advanced for 10 s (shorter than the outage).
    match: {metric: step, stalled_for: 10s}
    signal: training.hang
    class: recoverable
    scope: job
    action: restart
    severity: critical
    role: cause
"""


def _until(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def _wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    if not _until(predicate, timeout_s):
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


# ----------------------------------------------------------------------------- the proxy alone


def test_every_fault_reaches_boto3_as_the_error_botocore_parses(moto_endpoint: str) -> None:
    """Each fault, through real boto3 clients: the error class and code botocore makes of it, and
    that call_with_retry's classifier calls it transient; an empty page's invented token leads on
    to the real events."""
    direct = make_client("logs", AwsSettings(endpoint_url=moto_endpoint))
    group = f"/ftsup/chaos/proto-{uuid.uuid4().hex[:8]}"
    direct.create_log_group(logGroupName=group)
    direct.create_log_stream(logGroupName=group, logStreamName="node-0")
    now_ms = int(time.time() * 1000)
    direct.put_log_events(
        logGroupName=group, logStreamName="node-0", logEvents=[{"timestamp": now_ms, "message": "hello"}]
    )
    plan = FaultPlan(seed=1, hold_s=1.5)
    with FaultProxy(moto_endpoint, plan) as proxy:
        settings = AwsSettings(endpoint_url=proxy.url, connect_timeout_s=1.0, read_timeout_s=1.0)
        logs = make_client("logs", settings)
        cw = make_client("cloudwatch", settings)

        def filter_events(token: str | None = None) -> Any:
            kw: dict[str, Any] = {"logGroupName": group, "startTime": now_ms - 1000}
            if token:
                kw["nextToken"] = token
            return logs.filter_log_events(**kw)

        def metric_data() -> Any:
            query = {"Id": "m0", "MetricStat": {"Metric": {"Namespace": NAMESPACE, "MetricName": "x"},
                                                "Period": 1, "Stat": "Maximum"}}  # fmt: skip
            return cw.get_metric_data(
                MetricDataQueries=[query],  # type: ignore[list-item]
                StartTime=time.time() - 60,  # type: ignore[arg-type]
                EndTime=time.time(),  # type: ignore[arg-type]
            )

        expected: dict[Fault, tuple[type[Exception], str | None, str | None]] = {
            Fault.THROTTLE: (ClientError, "ThrottlingException", "Throttling"),
            Fault.HTTP_500: (ClientError, "InternalFailure", "InternalServiceError"),
            Fault.HTTP_503: (ClientError, "ServiceUnavailableException", "ServiceUnavailable"),
            Fault.TIMEOUT: (ReadTimeoutError, None, None),
            Fault.RESET: (ConnectionClosedError, None, None),
        }
        for fault, (cls, logs_code, cw_code) in expected.items():
            for op, call, code in (
                ("FilterLogEvents", filter_events, logs_code),
                ("GetMetricData", metric_data, cw_code),
            ):
                plan.script(op, fault)
                with pytest.raises(cls) as info:
                    call()
                assert error_code(info.value) == code, (fault, op)
                assert is_retryable(info.value), (fault, op)
        plan.script("FilterLogEvents", Fault.SLOW, Fault.EMPTY_PAGE, Fault.EMPTY_PAGE)
        assert [e["message"] for e in filter_events()["events"]] == ["hello"]  # slow, then served
        page = filter_events()
        assert page["events"] == [] and page["nextToken"]  # empty, yet more to come
        page = filter_events(page["nextToken"])
        assert page["events"] == [] and page["nextToken"]  # again: a chain of empty pages
        page = filter_events(page["nextToken"])
        assert [e["message"] for e in page["events"]] == ["hello"] and "nextToken" not in page
        plan.outage_on()
        for _ in range(3):
            with pytest.raises((ClientError, ConnectionClosedError)):
                metric_data()
        plan.outage_off()
        assert metric_data()["MetricDataResults"][0]["Id"] == "m0"
        faults = proxy.faults()
    assert faults == {
        "throttle": 2, "http_500": 2, "http_503": 2, "timeout": 2, "reset": 2, "slow": 1, "empty_page": 2,
        "outage:http_503": 1, "outage:reset": 1, "outage:throttle": 1,
    }  # fmt: skip


# ----------------------------------------------------------------------------- the daemon


class Writer:
    """The job: countable log lines on one stream per node, heartbeats and steps as metrics, all
    written straight to moto (never through the proxy)."""

    def __init__(self, endpoint: str, group: str, job: str) -> None:
        settings = AwsSettings(endpoint_url=endpoint, read_timeout_s=10.0)
        self.logs = make_client("logs", settings)
        self.cw = make_client("cloudwatch", settings)
        self.group = group
        self.job = job
        self.written: dict[str, tuple[str, float]] = {}  # marker -> (node, event time)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._stop_logs = threading.Event()
        self._threads: list[threading.Thread] = []
        self._seq = 0
        self.logs.create_log_group(logGroupName=group)
        for node in NODES:
            self.logs.create_log_stream(logGroupName=group, logStreamName=node)

    def put(self, node: str, marker: str, *, ts: float | None = None, fault: bool = False) -> float:
        at = time.time() if ts is None else ts
        doc = {"chaos": "fault" if fault else "event", "id": marker}
        if fault:
            doc["msg"] = "CHAOS-FAULT"
        event = {"timestamp": int(at * 1000), "message": json.dumps(doc)}
        self.logs.put_log_events(logGroupName=self.group, logStreamName=node, logEvents=[event])  # type: ignore[list-item]
        with self._lock:
            self.written[marker] = (node, at)
        return at

    def _log_loop(self, stop: threading.Event) -> None:
        while not stop.wait(0.2):
            self._seq += 1
            self.put(NODES[self._seq % 2], f"w-{self._seq:06d}")

    def _metric_loop(self, stop: threading.Event) -> None:
        step = 0
        while not stop.wait(1.0):
            step += 1
            now = time.time()
            data = [
                {"MetricName": name, "Value": value, "Timestamp": now, "StorageResolution": 1,
                 "Dimensions": [{"Name": "Job", "Value": self.job}, {"Name": "Node", "Value": node}]}
                for node in NODES
                for name, value in (("heartbeat", 1.0), ("step", float(step)))
            ]  # fmt: skip
            self.cw.put_metric_data(Namespace=NAMESPACE, MetricData=data)  # type: ignore[arg-type]

    def start(self) -> None:
        for stop, target in ((self._stop_logs, self._log_loop), (self._stop, self._metric_loop)):
            t = threading.Thread(target=target, args=(stop,), daemon=True)
            t.start()
            self._threads.append(t)

    def stop_logs(self) -> None:
        """The job stops logging; heartbeats and steps go on (else absence would rightly fire)."""
        self._stop_logs.set()
        self._threads[0].join(10)

    def stop(self) -> None:
        self._stop_logs.set()
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def markers(self) -> dict[str, tuple[str, float]]:
        with self._lock:
            return dict(self.written)


class Intake:
    """Records what the engine is handed (a wrapper of its batch intake, the sources untouched)."""

    def __init__(self, engine: Engine) -> None:
        self._lock = threading.Lock()
        self.event_ids: Counter[str] = Counter()
        self.markers: Counter[str] = Counter()
        self.newest = 0.0  # the newest log event time handed over
        inner = engine.process_batch

        def process_batch(batch: SourceBatch) -> None:
            with self._lock:
                for event in batch.logs:
                    self.event_ids[event.event_id] += 1
                    m = MARKER.search(event.text)
                    if m:
                        self.markers[m.group(1)] += 1
                    self.newest = max(self.newest, event.timestamp)
            inner(batch)

        engine.process_batch = process_batch  # type: ignore[method-assign]

    def seen(self) -> tuple[Counter[str], Counter[str], float]:
        with self._lock:
            return Counter(self.event_ids), Counter(self.markers), self.newest


@dataclass(frozen=True)
class Health:
    at: float  # time.monotonic()
    degraded: float | None
    logs_up: float | None
    metrics_up: float | None
    snapshot_degraded: tuple[str, ...]
    fault_signals: float | None  # ftsup_signals_total of the chaos-fault rule


class HealthSampler:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.samples: list[Health] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        reg = self.daemon.registry
        while not self._stop.wait(0.25):
            self.samples.append(
                Health(
                    time.monotonic(),
                    reg.get_sample_value("ftsup_degraded"),
                    reg.get_sample_value("ftsup_source_up", {"source": "logs"}),
                    reg.get_sample_value("ftsup_source_up", {"source": "metrics"}),
                    self.daemon.engine.snapshot().degraded,
                    reg.get_sample_value("ftsup_signals_total", {"rule": "chaos-fault"}),
                )
            )

    def __enter__(self) -> HealthSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def both_up(self) -> bool:
        return bool(self.samples) and self.samples[-1].logs_up == 1 and self.samples[-1].metrics_up == 1


STATS = {"heartbeat": "Maximum", "step": "Maximum"}


def write_config(tmp: Path, proxy_url: str, job: str, group: str) -> Path:
    (tmp / "policies").mkdir()
    (tmp / "policies" / "chaos.yaml").write_text(POLICY)
    doc = {
        "job": {"name": job, "log_group": group, "metrics_namespace": NAMESPACE},
        "mode": "observe",
        "aws": {
            "endpoint_url": proxy_url,
            "connect_timeout_s": 1.0,
            "read_timeout_s": 1.5,  # the proxy holds a "timeout" 2 s
            "max_attempts": 3,
            "retry_budget_s": 3.0,
            "max_calls_per_s": RATE,
            "max_calls_burst": BURST,
        },
        "sources": {
            "logs": {"poll_interval_s": 0.25, "overlap_s": 15.0, "max_pages_per_poll": 20},
            "metrics": {"poll_interval_s": 0.5, "period_s": 1, "lookback_s": 20.0, "stats": STATS},
        },
        "policies": ["policies"],
        "incidents": {"settle_s": 1.0},
        "actuator": {"kind": "none", "none": {"nodes": list(NODES)}},
        "journal": {"path": "ftsup.db"},
        "alerts": {"log": False},
        "metrics_server": {"port": None},
    }
    path = tmp / "ftsup.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture
def chaos(
    moto_endpoint: str, tmp_path: Path
) -> Iterator[tuple[FaultPlan, FaultProxy, Daemon, Writer, Intake]]:
    plan = FaultPlan(seed=20251128, hold_s=2.0, slow_s=(0.2, 0.8))
    proxy = FaultProxy(moto_endpoint, plan).start()
    job = f"chaos-{uuid.uuid4().hex[:8]}"
    group = f"/ftsup/chaos/{job}"
    writer = Writer(moto_endpoint, group, job)
    daemon = build(load_config(write_config(tmp_path, proxy.url, job, group)))
    intake = Intake(daemon.engine)
    try:
        yield plan, proxy, daemon, writer, intake
    finally:
        writer.stop()
        daemon.shutdown(stop_job=False)
        proxy.stop()


RATES = {
    "FilterLogEvents": {Fault.THROTTLE: 0.08, Fault.HTTP_500: 0.04, Fault.HTTP_503: 0.04, Fault.TIMEOUT: 0.02,
                        Fault.RESET: 0.05, Fault.SLOW: 0.08, Fault.EMPTY_PAGE: 0.15},
    "GetMetricData": {Fault.THROTTLE: 0.08, Fault.HTTP_500: 0.04, Fault.HTTP_503: 0.04, Fault.TIMEOUT: 0.02,
                      Fault.RESET: 0.05, Fault.SLOW: 0.08},
}  # fmt: skip


@pytest.mark.timeout(180)
def test_the_daemon_rides_out_faults_and_an_outage_without_losing_an_event(
    chaos: tuple[FaultPlan, FaultProxy, Daemon, Writer, Intake],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    plan, proxy, daemon, writer, intake = chaos
    started = time.monotonic()
    with HealthSampler(daemon) as health:
        daemon.start(launch=True)  # actuator none: the job is watched, never touched
        writer.start()
        _wait_for(health.both_up, 20, "both sources up")

        # 1. Faults: each kind once per operation (scripted), then at random.
        plan.script("FilterLogEvents", *ALL_FAULTS)
        plan.script("GetMetricData", *METRICS_FAULTS)
        plan.set_rates(RATES)
        _wait_for(lambda: plan.scripted_left() == 0, 30, "every scripted fault to be served")
        time.sleep(4.0)

        # 2. An outage longer than the absence and stall windows; the job keeps going meanwhile.
        plan.outage_on()
        outage_from, outage_wall = time.monotonic(), time.time()
        time.sleep(5.0)
        writer.put("node-0", "f-outage", fault=True)
        time.sleep(10.0)
        plan.outage_off()
        outage_to, recovered_wall = time.monotonic(), time.time()

        # 3. Recovery, faults still on, and late events: stamped behind what was already read.
        _wait_for(health.both_up, 20, "both sources up after the outage")
        lags: list[float] = []
        for i in range(6):
            time.sleep(1.0)
            _, _, newest = intake.seen()
            # Older than anything the daemon already read (so behind its cursor), within overlap_s.
            late = min(time.time() - 6.0, newest - 2.0)
            fault = i == 3
            writer.put(NODES[1], "f-late" if fault else f"late-{i}", ts=late, fault=fault)
            lags.append(newest - late)
        time.sleep(2.0)

        # 4. Drain: the job stops logging, the faults stop, the daemon catches up.
        writer.stop_logs()
        plan.set_rates({})
        written = writer.markers()
        # Soft waits: what is missing is named by the assertions below.
        _until(lambda: set(intake.seen()[1]) >= set(written), 20)

        def detected() -> bool:
            return daemon.registry.get_sample_value("ftsup_signals_total", {"rule": "chaos-fault"}) == 2

        _until(detected, 15)
        time.sleep(1.5)  # a last poll or two: nothing may arrive twice
    elapsed = time.monotonic() - started
    event_ids, markers, _ = intake.seen()
    registry = daemon.registry

    # No event lost, none delivered twice.
    lost = sorted(set(written) - set(markers))
    dupes = {m: n for m, n in markers.items() if n > 1} | {e: n for e, n in event_ids.items() if n > 1}
    assert not lost and not dupes, (lost, dupes)
    assert set(markers) == set(written)

    # Every fault kind was injected, through both operations where it applies.
    faults = proxy.faults()
    for fault in ALL_FAULTS:
        assert faults[fault.value] >= 1, fault
    assert sum(n for k, n in faults.items() if k.startswith("outage:")) >= 5
    ops = {r.op for r in proxy.records() if r.fault is not None and not r.outage}
    assert ops == {"FilterLogEvents", "GetMetricData"}

    # The fault line written during the outage was detected after catch-up, as an incident; the
    # late one after it too (observe mode folds it into that incident's hold: a counted signal).
    with Journal(tmp_path / "ftsup.db") as j:
        incidents = [r.incident for r in j.incidents(daemon.config.job.name)]
        decided = {d.decision.incident_id: d.decision.decided_at for d in j.decisions(daemon.config.job.name)}
    assert [(i.root_cause.rule, i.root_cause.node) for i in incidents] == [("chaos-fault", "node-0")], (
        incidents
    )
    assert '"f-outage"' in incidents[0].root_cause.evidence
    assert decided[incidents[0].incident_id] >= recovered_wall  # seen only once the daemon could see
    assert all(h.fault_signals == 0 for h in health.samples if h.at <= outage_to)
    assert registry.get_sample_value("ftsup_signals_total", {"rule": "chaos-fault"}) == 2

    # Blindness was never read as absence or a stall.
    for rule in ("no-heartbeat", "no-step-progress"):
        assert registry.get_sample_value("ftsup_signals_total", {"rule": rule}) == 0, rule

    # Degraded while blind (after the in-flight polls fail), healthy again after.
    # In-flight polls end within a retry budget (3 s) plus an attempt and a poll interval.
    blind = [h for h in health.samples if outage_from + 6.0 <= h.at <= outage_to]
    assert len(blind) >= 20
    assert all(h.degraded == 1 and h.logs_up == 0 and h.metrics_up == 0 for h in blind), blind
    assert all(h.snapshot_degraded == ("logs", "metrics") for h in blind)
    last = health.samples[-1]
    assert (last.degraded, last.logs_up, last.metrics_up, last.snapshot_degraded) == (0, 1, 1, ())

    # The call budget held at the proxy: no 1 s window saw more than rate + burst calls (the bucket's
    # exact bound; transport jitter would have to exceed 1/rate = 0.2 s to break it).
    times = [r.at for r in proxy.records()]
    peak = max_in_window(times, 1.0)
    assert peak <= RATE + BURST, peak
    waits = registry.get_sample_value("ftsup_api_budget_waits_total")
    denied = registry.get_sample_value("ftsup_api_budget_denied_total")

    kinds = ", ".join(f"{k}={n}" for k, n in sorted(faults.items()))
    with capsys.disabled():  # the figures belong in the CI log, not in captured output
        print(
            f"\nFIGURES fault-proxy: faults injected {sum(faults.values())} ({kinds}); "
            f"requests {len(times)}; outage {outage_to - outage_from:.0f} s; "
            f"events written {len(written)} received {len(markers)} lost {len(lost)} "
            f"duplicated {len(dupes)}; "
            f"late events {len(lags)} behind the cursor by {min(lags):.1f}-{max(lags):.1f} s; "
            f"calls/s max {peak} (1 s sliding window) vs budget {RATE:g}/s + burst {BURST}; "
            f"budget waits {waits:.0f} denied {denied:.0f}; "
            f"absence/stall signals 0; run {elapsed:.0f} s (outage started {outage_wall:.0f})"
        )
