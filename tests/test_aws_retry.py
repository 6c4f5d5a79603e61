"""Retry policy: what is transient, and that the attempt and time budgets really stop retrying."""

from __future__ import annotations

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
)

from supervisor.sources.aws import (
    ApiCallCounter,
    AwsSettings,
    call_with_retry,
    client_config,
    describe_error,
    is_retryable,
    make_client,
)


def client_error(code: str, status: int = 400, op: str = "FilterLogEvents") -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": f"{code} happened"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        op,
    )


@pytest.mark.parametrize(
    ("exc", "retryable"),
    [
        (client_error("ThrottlingException"), True),
        (client_error("Throttling"), True),
        (client_error("TooManyRequestsException", 429), True),
        (client_error("RequestLimitExceeded"), True),
        (client_error("ServiceUnavailable", 503), True),
        (client_error("InternalFailure", 500), True),
        (client_error("SomethingNew", 502), True),  # any 5xx
        (client_error("SomethingNew", 429), True),
        # Out of Live Tail sessions is a quota, not a throttle: waiting seconds will not help.
        (client_error("LimitExceededException"), False),
        (client_error("LimitExceededException", 500), False),
        (client_error("AccessDeniedException"), False),
        (client_error("UnrecognizedClientException"), False),
        (client_error("ValidationException"), False),
        (client_error("InvalidParameterException"), False),
        (client_error("ResourceNotFoundException"), False),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), True),
        (ConnectTimeoutError(endpoint_url="http://127.0.0.1:1"), True),
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), True),
        (ConnectionClosedError(endpoint_url="http://127.0.0.1:1"), True),
        (ConnectionResetError(104, "Connection reset by peer"), True),
        (TimeoutError("timed out"), True),
        (NoCredentialsError(), False),
        (ParamValidationError(report="bad"), False),
        (ValueError("bug"), False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_is_retryable_table(exc: BaseException, retryable: bool) -> None:
    assert is_retryable(exc) is retryable


class FakeTime:
    """A monotonic clock that only the injected sleep advances."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


class Failing:
    def __init__(self, exc: BaseException, failures: int, cost_s: float = 0.0, clock: FakeTime | None = None):
        self.exc = exc
        self.failures = failures
        self.calls = 0
        self.cost_s = cost_s
        self.clock = clock

    def __call__(self) -> str:
        self.calls += 1
        if self.clock is not None:
            self.clock.now += self.cost_s
        if self.calls <= self.failures:
            raise self.exc
        return "ok"


def test_retries_transient_errors_then_succeeds_and_counts_attempts() -> None:
    t = FakeTime()
    counter = ApiCallCounter()
    fn = Failing(client_error("ThrottlingException"), failures=2)
    out = call_with_retry(
        fn,
        AwsSettings(max_attempts=4),
        op="FilterLogEvents",
        counter=counter,
        sleep=t.sleep,
        monotonic=t.monotonic,
    )
    assert out == "ok"
    assert fn.calls == 3
    assert counter.get("FilterLogEvents") == 3
    assert len(t.sleeps) == 2
    assert all(0 <= s <= 5 for s in t.sleeps)


def test_attempt_budget_stops_and_reraises_last_error() -> None:
    t = FakeTime()
    fn = Failing(client_error("ThrottlingException"), failures=100)
    with pytest.raises(ClientError) as info:
        call_with_retry(fn, AwsSettings(max_attempts=3), op="x", sleep=t.sleep, monotonic=t.monotonic)
    assert info.value.response["Error"]["Code"] == "ThrottlingException"
    assert fn.calls == 3


def test_time_budget_stops_before_attempts_run_out() -> None:
    # Each attempt costs 4 s (e.g. a read timeout); a 10 s budget allows at most 3 attempts,
    # and no attempt may begin after the budget is spent.
    t = FakeTime()
    fn = Failing(ReadTimeoutError(endpoint_url="http://x"), failures=100, cost_s=4.0, clock=t)
    start = t.now
    with pytest.raises(ReadTimeoutError):
        call_with_retry(
            fn,
            AwsSettings(max_attempts=50, retry_budget_s=10.0),
            op="x",
            sleep=t.sleep,
            monotonic=t.monotonic,
        )
    assert 2 <= fn.calls <= 3
    # The last attempt began before the budget ran out.
    assert t.now - start - 4.0 < 10.0


def test_zero_budget_means_one_attempt() -> None:
    t = FakeTime()
    fn = Failing(client_error("ServiceUnavailable", 503), failures=100)
    with pytest.raises(ClientError):
        call_with_retry(
            fn, AwsSettings(max_attempts=10, retry_budget_s=0.0), op="x", sleep=t.sleep, monotonic=t.monotonic
        )
    assert fn.calls == 1
    assert t.sleeps == []


def test_non_retryable_error_is_raised_at_once() -> None:
    t = FakeTime()
    fn = Failing(client_error("AccessDeniedException"), failures=100)
    with pytest.raises(ClientError):
        call_with_retry(fn, AwsSettings(max_attempts=10), op="x", sleep=t.sleep, monotonic=t.monotonic)
    assert fn.calls == 1
    assert t.sleeps == []


def test_waits_are_jittered_and_capped() -> None:
    t = FakeTime()
    fn = Failing(client_error("Throttling"), failures=100)
    with pytest.raises(ClientError):
        call_with_retry(
            fn, AwsSettings(max_attempts=12, retry_budget_s=1e9), op="x", sleep=t.sleep, monotonic=t.monotonic
        )
    assert len(t.sleeps) == 11
    assert max(t.sleeps) <= 5.0
    assert len(set(t.sleeps)) > 1  # random, not a fixed schedule


def test_client_config_turns_off_botocore_retries_and_sets_timeouts() -> None:
    s = AwsSettings(
        region="eu-central-1", endpoint_url="http://127.0.0.1:9", connect_timeout_s=1.5, read_timeout_s=2.5
    )
    cfg = client_config(s)
    assert cfg.connect_timeout == 1.5
    assert cfg.read_timeout == 2.5
    assert cfg.retries == {"total_max_attempts": 1}
    client = make_client("logs", s)
    assert client.meta.region_name == "eu-central-1"
    assert client.meta.endpoint_url == "http://127.0.0.1:9"


def test_settings_reject_nonsense() -> None:
    with pytest.raises(ValueError):
        AwsSettings(max_attempts=0)
    with pytest.raises(ValueError):
        AwsSettings(read_timeout_s=0)


def test_api_call_counter_is_thread_safe() -> None:
    import threading

    counter = ApiCallCounter()

    def bump() -> None:
        for _ in range(1000):
            counter.inc("GetMetricData")

    threads = [threading.Thread(target=bump) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert counter.get("GetMetricData") == 8000
    assert counter.total() == 8000
    assert counter.snapshot() == {"GetMetricData": 8000}
    counter.reset()
    assert counter.total() == 0


def test_describe_error_names_the_code() -> None:
    assert (
        describe_error(client_error("ThrottlingException"))
        == "ThrottlingException: ThrottlingException happened"
    )
    assert describe_error(ValueError("x")) == "ValueError: x"
