"""The shared AWS call budget (`aws.max_calls_per_s`): the token bucket, its use by call_with_retry
(a token before every attempt, bounded by the retry budget), its metrics and its config keys.

Every test runs on a fake clock: no test here waits or measures real time."""

from __future__ import annotations

import itertools
import math
import pickle
import textwrap
import threading
import uuid
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from prometheus_client import CollectorRegistry

from supervisor.config import load_config
from supervisor.daemon import call_budget
from supervisor.errors import ConfigError
from supervisor.report.metrics import SupervisorMetrics
from supervisor.sources.aws import (
    ApiBudgetExhausted,
    ApiCallCounter,
    AwsSettings,
    RateBudget,
    call_with_retry,
    error_code,
    is_retryable,
    make_client,
)
from supervisor.sources.cloudwatch_metrics import CloudWatchMetricsSource


class FakeClock:
    """A clock only `sleep` (or the test) advances; thread-safe enough for the lock-step tests."""

    def __init__(self, advance_on_sleep: bool = True) -> None:
        self.now = 100.0
        self.advance_on_sleep = advance_on_sleep
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        with self._lock:
            self.sleeps.append(s)
            if self.advance_on_sleep:
                self.now += s


def grant_times(budget: RateBudget, clock: FakeClock, n: int, timeout_s: float = 1e9) -> list[float]:
    """Acquire `n` tokens one after another; the moment each was granted (when acquire returned)."""
    out = []
    for _ in range(n):
        assert budget.acquire(timeout_s) is not None
        out.append(clock.now)
    return out


def max_in_window(times: list[float], window_s: float) -> int:
    """The most grants inside any closed interval [t, t + window_s]."""
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] < t - window_s - 1e-9:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


# ----------------------------------------------------------------------------- the bucket


def test_a_full_bucket_grants_the_burst_at_once_then_paces_at_the_rate() -> None:
    clock = FakeClock()
    budget = RateBudget(4.0, 3, clock=clock.monotonic, sleep=clock.sleep)
    times = grant_times(budget, clock, 11)
    assert times[:3] == [100.0] * 3  # the burst: no wait
    gaps = [b - a for a, b in itertools.pairwise(times[2:])]
    assert gaps == pytest.approx([0.25] * 8)  # then one token every 1/rate
    assert budget.stats().granted == 11 and budget.stats().waited == 8
    assert budget.stats().wait_s == pytest.approx(8 * 0.25)


@pytest.mark.parametrize(("rate", "burst"), [(1.0, 1), (5.0, 5), (8.0, 2), (0.5, 4)])
def test_no_window_ever_sees_more_than_burst_plus_rate_times_its_length(rate: float, burst: int) -> None:
    clock = FakeClock()
    budget = RateBudget(rate, burst, clock=clock.monotonic, sleep=clock.sleep)
    times: list[float] = []
    # Greedy callers with idle gaps in between (the bucket refills, up to `burst`).
    for round_ in range(6):
        times += grant_times(budget, clock, 3 * burst + 2)
        clock.now += round_ * 0.7
    for window in (0.5, 1.0, 2.0, 5.0):
        assert max_in_window(times, window) <= burst + math.floor(rate * window + 1e-9)


def test_an_idle_bucket_saves_up_no_more_than_the_burst() -> None:
    clock = FakeClock()
    budget = RateBudget(2.0, 3, clock=clock.monotonic, sleep=clock.sleep)
    grant_times(budget, clock, 3)
    clock.now += 3600.0  # an hour idle
    times = grant_times(budget, clock, 5)
    assert times[:3] == [times[0]] * 3 and times[3] == pytest.approx(times[0] + 0.5)


def test_a_wait_longer_than_the_timeout_is_refused_at_once_and_reserves_nothing() -> None:
    clock = FakeClock()
    budget = RateBudget(1.0, 1, clock=clock.monotonic, sleep=clock.sleep)
    assert budget.acquire(0.0) == 0.0
    assert budget.acquire(0.5) is None  # the next token is 1 s away
    assert clock.sleeps == []  # refused without waiting
    assert budget.acquire(1.0) == pytest.approx(1.0)  # the slot was not taken by the refusal
    assert budget.stats().denied == 1 and budget.stats().granted == 2


def test_waiters_reserve_successive_slots_first_come_first_served() -> None:
    # Sleep does not advance the clock: as if every caller asked at the same instant on its own
    # thread. Each must be given its own slot, later callers later slots.
    clock = FakeClock(advance_on_sleep=False)
    budget = RateBudget(10.0, 2, clock=clock.monotonic, sleep=clock.sleep)
    waits = [budget.acquire(10.0) for _ in range(6)]
    assert waits == pytest.approx([0.0, 0.0, 0.1, 0.2, 0.3, 0.4])
    assert budget.acquire(0.45) is None  # the next slot is 0.5 s away


def test_concurrent_callers_each_get_a_distinct_slot() -> None:
    clock = FakeClock(advance_on_sleep=False)
    budget = RateBudget(50.0, 5, clock=clock.monotonic, sleep=clock.sleep)
    waits: list[float] = []
    lock = threading.Lock()

    def caller() -> None:
        for _ in range(25):
            w = budget.acquire(1e9)
            assert w is not None
            with lock:
                waits.append(w)

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(waits) == 200
    slots = sorted(round(w * 50) for w in waits)  # the slot index each caller was given
    assert slots == [0] * 5 + list(range(1, 196))
    assert budget.stats() == budget.stats()  # stable snapshot
    assert budget.stats().granted == 200


def test_nonsense_is_refused() -> None:
    with pytest.raises(ValueError):
        RateBudget(0.0, 1)
    with pytest.raises(ValueError):
        RateBudget(-1.0, 1)
    with pytest.raises(ValueError):
        RateBudget(1.0, 0)


# ----------------------------------------------------------------------------- call_with_retry


def throttled(op: str = "FilterLogEvents") -> ClientError:
    return ClientError(
        {"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}, "ResponseMetadata": {}},  # type: ignore[typeddict-item]
        op,
    )


class Flaky:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise throttled()
        return "ok"


def test_every_attempt_takes_a_token_retries_included() -> None:
    clock = FakeClock()
    budget = RateBudget(100.0, 10, clock=clock.monotonic, sleep=clock.sleep)
    counter = ApiCallCounter(budget=budget)
    fn = Flaky(failures=2)
    out = call_with_retry(
        fn,
        AwsSettings(max_attempts=4, retry_budget_s=60.0),
        op="FilterLogEvents",
        counter=counter,
        sleep=clock.sleep,
        monotonic=clock.monotonic,
    )
    assert out == "ok" and fn.calls == 3
    assert budget.stats().granted == 3 == counter.get("FilterLogEvents")


def test_waiting_for_a_token_is_bounded_by_what_is_left_of_the_retry_budget() -> None:
    clock = FakeClock()
    budget = RateBudget(0.25, 1, clock=clock.monotonic, sleep=clock.sleep)  # a token every 4 s
    counter = ApiCallCounter(budget=budget)
    settings = AwsSettings(max_attempts=4, retry_budget_s=5.0)
    kw = {"op": "GetMetricData", "counter": counter, "sleep": clock.sleep, "monotonic": clock.monotonic}
    assert call_with_retry(lambda: "a", settings, **kw) == "a"  # type: ignore[arg-type]
    t0 = clock.now
    assert call_with_retry(lambda: "b", settings, **kw) == "b"  # type: ignore[arg-type]
    assert clock.now - t0 == pytest.approx(4.0)  # waited for the next token: within the 5 s budget
    fn = Flaky(failures=5)
    t1 = clock.now
    with pytest.raises(ApiBudgetExhausted) as info:
        # Two tokens in a row are needed (a throttled attempt, then its retry): the retry's token
        # would come 4 s after the first, past what is left of a 5 s budget after its own 4 s wait.
        call_with_retry(fn, settings, **kw)  # type: ignore[arg-type]
    exc = info.value
    assert fn.calls == 1  # the first attempt ran (and was throttled); its retry got no token
    assert error_code(exc) == "ApiCallBudgetExhausted" and exc.operation_name == "GetMetricData"
    assert is_retryable(exc)  # to callers a throttle: try again later (an SNS alert stays pending)
    again = pickle.loads(pickle.dumps(exc))  # crosses a process boundary intact
    assert type(again) is ApiBudgetExhausted and again.response["Error"] == exc.response["Error"]
    assert clock.now - t1 <= 5.0  # never waited past the call's own retry budget
    assert budget.stats().denied == 1


def test_a_refused_attempt_is_not_retried_nor_counted_as_a_call() -> None:
    clock = FakeClock()
    budget = RateBudget(0.1, 1, clock=clock.monotonic, sleep=clock.sleep)  # a token every 10 s
    counter = ApiCallCounter(budget=budget)
    assert budget.acquire(0.0) == 0.0  # someone else spent the burst
    calls = []
    with pytest.raises(ApiBudgetExhausted):
        call_with_retry(
            lambda: calls.append(1),
            AwsSettings(max_attempts=10, retry_budget_s=2.0),
            op="FilterLogEvents",
            counter=counter,
            sleep=clock.sleep,
            monotonic=clock.monotonic,
        )
    assert calls == [] and counter.total() == 0
    assert clock.sleeps == []  # refused at once, no retry loop
    assert budget.stats().denied == 1


def test_without_a_budget_nothing_changes() -> None:
    clock = FakeClock()
    counter = ApiCallCounter()
    assert counter.budget is None
    out = [
        call_with_retry(lambda: 1, AwsSettings(), op="x", counter=counter, sleep=clock.sleep)
        for _ in range(50)
    ]
    assert out == [1] * 50 and clock.sleeps == []


# ----------------------------------------------------------------------------- metrics


def test_waits_and_refusals_are_exported_as_metrics() -> None:
    registry = CollectorRegistry()
    metrics = SupervisorMetrics(registry, ["logs"], ["r"])
    assert registry.get_sample_value("ftsup_api_budget_waits_total") == 0
    assert registry.get_sample_value("ftsup_api_budget_denied_total") == 0
    clock = FakeClock()
    budget = RateBudget(2.0, 1, clock=clock.monotonic, sleep=clock.sleep, observer=metrics)
    assert budget.acquire(0.0) == 0.0
    assert budget.acquire(5.0) == pytest.approx(0.5)
    assert budget.acquire(0.1) is None
    assert registry.get_sample_value("ftsup_api_budget_waits_total") == 1
    assert registry.get_sample_value("ftsup_api_budget_wait_seconds_total") == pytest.approx(0.5)
    assert registry.get_sample_value("ftsup_api_budget_denied_total") == 1


# ----------------------------------------------------------------------------- a real source


@pytest.mark.integration
def test_a_source_without_a_token_reports_itself_blind(moto_endpoint: str) -> None:
    settings = AwsSettings(
        endpoint_url=moto_endpoint, connect_timeout_s=2.0, read_timeout_s=5.0, retry_budget_s=0.5
    )
    budget = RateBudget(0.001, 1)  # one call, then none for 1000 s
    counter = ApiCallCounter(budget=budget)
    source = CloudWatchMetricsSource(
        make_client("cloudwatch", settings),
        "ftsup/test",
        f"job-{uuid.uuid4().hex[:8]}",
        lambda: ["node-0"],
        settings,
        stats={"heartbeat": "Maximum"},
        lookback_s=5.0,
        counter=counter,
    )
    first = source.poll()
    assert first.health.up, first.health.error
    second = source.poll()
    assert not second.health.up and second.metrics == ()
    assert second.health.error is not None and "ApiCallBudgetExhausted" in second.health.error
    assert counter.get("GetMetricData") == 1 and budget.stats().denied == 1


# ----------------------------------------------------------------------------- config


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "ftsup.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_config_keys_build_one_budget(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "job: {name: j, log_group: /g}\naws: {max_calls_per_s: 2.5}\n"))
    assert cfg.aws.max_calls_per_s == 2.5 and cfg.aws.max_calls_burst is None
    budget = call_budget(cfg)
    assert budget is not None and budget.rate_per_s == 2.5 and budget.burst == 3  # ceil(rate)
    cfg = load_config(
        write(tmp_path, "job: {name: j, log_group: /g}\naws: {max_calls_per_s: 10, max_calls_burst: 25}\n")
    )
    budget = call_budget(cfg)
    assert budget is not None and (budget.rate_per_s, budget.burst) == (10.0, 25)
    assert call_budget(load_config(write(tmp_path, "job: {name: j, log_group: /g}\n"))) is None


def test_config_problems_name_their_position(tmp_path: Path) -> None:
    text = """\
    job: {name: j, log_group: /g}
    aws:
      retry_budget_s: 4
      max_calls_per_s: 0.1
      max_calls_burst: 0
    """
    with pytest.raises(ConfigError) as ei:
        load_config(write(tmp_path, text))
    got = [str(p).replace(str(tmp_path) + "/", "") for p in ei.value.problems]
    assert got == [
        "ftsup.yaml:4:20 aws.max_calls_per_s: must allow one call within aws.retry_budget_s (4 s): "
        "at least 0.25, got 0.1",
        "ftsup.yaml:5:20 aws.max_calls_burst: must be >= 1, got 0",
    ]
    text = """\
    job: {name: j, log_group: /g}
    aws: {max_calls_burst: 5, max_calls_per_s: -1}
    """
    with pytest.raises(ConfigError) as ei:
        load_config(write(tmp_path, text))
    got = [str(p).replace(str(tmp_path) + "/", "") for p in ei.value.problems]
    assert got == [
        "ftsup.yaml:2:44 aws.max_calls_per_s: must be > 0, got -1",
    ]
    with pytest.raises(ConfigError) as ei:
        load_config(write(tmp_path, "job: {name: j, log_group: /g}\naws: {max_calls_burst: 5}\n"))
    got = [str(p).replace(str(tmp_path) + "/", "") for p in ei.value.problems]
    assert got == [
        "ftsup.yaml:2:24 aws.max_calls_burst: needs aws.max_calls_per_s (the budget it bursts above)"
    ]


def test_only_the_budgeted_operations_draw_from_the_budget() -> None:
    # The daemon budgets the sources' reads; an action or lease call never waits behind them.
    clock = FakeClock()
    budget = RateBudget(0.001, 1, clock=clock.monotonic, sleep=clock.sleep)  # one token, then ~none
    counter = ApiCallCounter(budget=budget, budgeted_ops=frozenset({"FilterLogEvents"}))
    settings = AwsSettings(max_attempts=1, retry_budget_s=1.0)
    kw = {"counter": counter, "sleep": clock.sleep, "monotonic": clock.monotonic}
    assert call_with_retry(lambda: "read", settings, op="FilterLogEvents", **kw) == "read"  # type: ignore[arg-type]
    for _ in range(5):
        assert call_with_retry(lambda: "act", settings, op="SetInstanceHealth", **kw) == "act"  # type: ignore[arg-type]
    assert budget.stats().granted == 1 and counter.get("SetInstanceHealth") == 5
    with pytest.raises(ApiBudgetExhausted):
        call_with_retry(lambda: "read", settings, op="FilterLogEvents", **kw)  # type: ignore[arg-type]
