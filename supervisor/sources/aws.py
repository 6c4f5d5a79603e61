"""AWS plumbing shared by the CloudWatch sources: clients, retry policy, call counting.

Contracts:
- Every client built here has explicit connect/read timeouts and botocore's own retries
  switched off (`total_max_attempts=1`); `call_with_retry` owns retrying, so a call's
  worst case is bounded by `AwsSettings` alone (attempts and a wall-clock budget).
- `is_retryable` says yes only for transient failures (throttling, 5xx, connection and
  timeout errors). Access denied, validation, missing resources and quota exhaustion
  (`LimitExceededException`, e.g. out of Live Tail sessions) are final.
- `ApiCallCounter` counts attempts (what the account's API quota sees), not logical calls.
- `RateBudget` (`aws.max_calls_per_s`) is a token bucket shared by every AWS call of one daemon:
  it rides on the daemon's one `ApiCallCounter`, and `call_with_retry` takes a token before every
  attempt (retries included), waiting at most what is left of the call's retry budget. No token in
  time raises `ApiBudgetExhausted`, a throttling ClientError that callers handle like AWS's own
  throttling (a source reports itself blind), and that `call_with_retry` does not retry.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, overload

import boto3
import structlog
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ProxyConnectionError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)
from tenacity.stop import stop_base

if TYPE_CHECKING:
    from botocore.client import BaseClient
    from mypy_boto3_cloudwatch import CloudWatchClient
    from mypy_boto3_logs import CloudWatchLogsClient

__all__ = [
    "ApiBudgetExhausted",
    "ApiCallCounter",
    "AwsSettings",
    "BudgetObserver",
    "BudgetStats",
    "RateBudget",
    "call_with_retry",
    "client_config",
    "describe_error",
    "error_code",
    "is_retryable",
    "make_client",
]

log = structlog.get_logger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class AwsSettings:
    """Where and how patiently to talk to AWS (or a compatible endpoint such as moto).

    `max_attempts` and `retry_budget_s` bound `call_with_retry`: whichever is reached first
    stops retrying. One attempt can still take up to `connect_timeout_s + read_timeout_s`, so
    the worst case of one logical call is about `retry_budget_s + connect_timeout_s + read_timeout_s`.
    """

    region: str = "us-east-1"
    endpoint_url: str | None = None
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 10.0
    max_attempts: int = 4
    retry_budget_s: float = 20.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.connect_timeout_s <= 0 or self.read_timeout_s <= 0:
            raise ValueError("timeouts must be > 0")
        if self.retry_budget_s < 0:
            raise ValueError(f"retry_budget_s must be >= 0, got {self.retry_budget_s}")


def client_config(settings: AwsSettings) -> Config:
    """botocore Config with explicit timeouts and botocore retries off (tenacity retries)."""
    return Config(
        region_name=settings.region,
        connect_timeout=settings.connect_timeout_s,
        read_timeout=settings.read_timeout_s,
        retries={"total_max_attempts": 1},
    )


@overload
def make_client(
    service: Literal["logs"], settings: AwsSettings, *, session: boto3.session.Session | None = None
) -> CloudWatchLogsClient: ...
@overload
def make_client(
    service: Literal["cloudwatch"], settings: AwsSettings, *, session: boto3.session.Session | None = None
) -> CloudWatchClient: ...
@overload
def make_client(
    service: str, settings: AwsSettings, *, session: boto3.session.Session | None = None
) -> BaseClient: ...
def make_client(service: str, settings: AwsSettings, *, session: boto3.session.Session | None = None) -> Any:
    """A boto3 client for `service` with `client_config(settings)`, region and endpoint.

    `session` supplies credentials (e.g. dummy ones for an embedded moto endpoint); by
    default a fresh `boto3.session.Session()` uses the standard credential chain. The
    client is thread-safe; building one is not cheap, so build once and reuse.
    """
    sess = session if session is not None else boto3.session.Session()
    return sess.client(  # type: ignore[call-overload]
        service,
        region_name=settings.region,
        endpoint_url=settings.endpoint_url,
        config=client_config(settings),
    )


# ----------------------------------------------------------------------------- classification

_THROTTLING_CODES = frozenset(
    {
        "ApiCallBudgetExhausted",  # our own budget (RateBudget): a throttle, seen from the caller
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "RequestThrottledException",
        "SlowDown",
        "ProvisionedThroughputExceededException",
        "BandwidthLimitExceeded",
    }
)
_TRANSIENT_CODES = frozenset(
    {
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalFailure",
        "InternalError",
        "InternalServerError",
        "InternalServiceError",
        "InternalServiceFault",
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
    }
)
# Never retried, whatever the HTTP status says: quota exhaustion is not a throttle.
_FINAL_CODES = frozenset({"LimitExceededException"})

_TRANSIENT_BOTOCORE = (
    EndpointConnectionError,
    ConnectTimeoutError,
    ReadTimeoutError,
    ConnectionClosedError,
    ProxyConnectionError,
    ResponseStreamingError,
    BotoConnectionError,
)


def error_code(exc: BaseException) -> str | None:
    """The AWS error code of a ClientError (e.g. "ThrottlingException"), else None."""
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code")
        return str(code) if code else None
    return None


def _http_status(exc: ClientError) -> int | None:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if isinstance(status, int) else None


def is_retryable(exc: BaseException) -> bool:
    """True for transient failures worth another attempt.

    Retryable: throttling codes, HTTP 5xx and 429, ServiceUnavailable / InternalFailure
    and kin, botocore connection / endpoint / connect- and read-timeout errors, and OS-level
    connection resets and timeouts. Not retryable: everything else, notably access denied,
    validation errors, ResourceNotFoundException, and LimitExceededException (which also
    means "out of Live Tail sessions" and will not clear by waiting a few seconds).
    """
    if isinstance(exc, ClientError):
        code = error_code(exc)
        if code in _FINAL_CODES:
            return False
        if code in _THROTTLING_CODES or code in _TRANSIENT_CODES:
            return True
        status = _http_status(exc)
        return status is not None and (status >= 500 or status == 429)
    if isinstance(exc, _TRANSIENT_BOTOCORE):
        return True
    # Raw socket-level failures that escaped botocore's wrapping.
    return isinstance(exc, ConnectionError | TimeoutError)


def describe_error(exc: BaseException) -> str:
    """A one-line description of a failure for `SourceHealth.error` and logs."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code', 'ClientError')}: {err.get('Message', str(exc))}"
    return f"{type(exc).__name__}: {exc}"


# ----------------------------------------------------------------------------- counting


class BudgetObserver(Protocol):
    """Told about waits and refusals of a `RateBudget` (SupervisorMetrics implements it)."""

    def api_budget_wait(self, seconds: float) -> None: ...

    def api_budget_denied(self) -> None: ...


@dataclass(frozen=True, slots=True)
class BudgetStats:
    """What a `RateBudget` has done: tokens granted (at once or after a wait), attempts that
    waited and for how long in all, and attempts refused (no token within their retry budget)."""

    granted: int
    waited: int
    wait_s: float
    denied: int


class RateBudget:
    """A thread-safe token bucket: `rate_per_s` tokens a second, at most `burst` saved up.

    Contract: over any interval of length T, at most `burst + rate_per_s * T` tokens are granted
    (a grant is the moment `acquire` returns), however many threads ask. Waiters are served in the
    order they asked: a caller that must wait reserves the next free slot (the bucket goes into
    debt) and sleeps until it, so a steady stream of new callers cannot starve an older one.
    `acquire(timeout_s)` never waits longer than `timeout_s`: when the next free slot is further
    away it reserves nothing and returns None at once.

    Hand-written rather than a library: the limit on each wait is the caller's *remaining* retry
    budget (it changes per attempt, which pyrate-limiter's per-limiter `max_delay` cannot say), and
    the clock and sleep are injectable so tests need no real time.
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        observer: BudgetObserver | None = None,
    ) -> None:
        if not rate_per_s > 0:
            raise ValueError(f"rate_per_s must be > 0, got {rate_per_s}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        self.rate_per_s = float(rate_per_s)
        self.burst = int(burst)
        self.observer = observer
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = float(burst)  # starts full; negative = slots reserved by waiters
        self._at = clock()
        self._granted = 0
        self._waited = 0
        self._wait_s = 0.0
        self._denied = 0

    def acquire(self, timeout_s: float) -> float | None:
        """Take one token, waiting for it at most `timeout_s` seconds.

        Returns the seconds waited (0.0 when a token was there), or None when no token can be had
        within `timeout_s` (then nothing is reserved and the call returns at once).
        """
        with self._lock:
            now = self._clock()
            self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate_per_s)
            self._at = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                self._granted += 1
                return 0.0
            wait = (1.0 - self._tokens) / self.rate_per_s
            if wait > timeout_s:
                self._denied += 1
                denied = True
            else:
                self._tokens -= 1.0  # reserve the next slot
                self._granted += 1
                self._waited += 1
                self._wait_s += wait
                denied = False
        observer = self.observer
        if denied:
            if observer is not None:
                observer.api_budget_denied()
            return None
        if observer is not None:
            observer.api_budget_wait(wait)
        self._sleep(wait)
        return wait

    def stats(self) -> BudgetStats:
        with self._lock:
            return BudgetStats(self._granted, self._waited, self._wait_s, self._denied)


class ApiBudgetExhausted(ClientError):
    """No token of this daemon's `RateBudget` within what was left of a call's retry budget.

    A ClientError with code "ApiCallBudgetExhausted" and HTTP status 429, so that every caller
    handles it as AWS's own throttling: `is_retryable` says yes (try again later: an SNS alert stays
    pending, a source reports itself blind and re-reads next poll), while `call_with_retry` does not
    retry it (the call's retry budget is what ran out).
    """

    CODE = "ApiCallBudgetExhausted"

    def __init__(self, op: str, message: str) -> None:
        response: dict[str, Any] = {
            "Error": {"Code": self.CODE, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": 429},  # the status AWS gives a throttled call
        }
        super().__init__(response, op)  # type: ignore[arg-type]  # botocore's TypedDict wants every key

    def __reduce__(self) -> tuple[type[ApiBudgetExhausted], tuple[str, str]]:
        # ClientError pickles as (response, operation_name): not this constructor's arguments.
        return ApiBudgetExhausted, (self.operation_name, str(self.response["Error"].get("Message", "")))


class ApiCallCounter:
    """Thread-safe counts of API attempts by name (e.g. "FilterLogEvents").

    `budget`, when set, is the `RateBudget` that `call_with_retry` calls of the operations in
    `budgeted_ops` (None: every operation) given this counter draw from: one counter per daemon, so
    one budget shared by all of its sources. The daemon budgets the sources' reads only: an action,
    an alert or a lease renewal must never wait behind a backlog of log pages.
    """

    def __init__(self, budget: RateBudget | None = None, budgeted_ops: frozenset[str] | None = None) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self.budget = budget
        self.budgeted_ops = budgeted_ops

    def budget_for(self, op: str) -> RateBudget | None:
        """The budget a call of `op` draws from, if any."""
        if self.budget is None or (self.budgeted_ops is not None and op not in self.budgeted_ops):
            return None
        return self.budget

    def inc(self, api: str, n: int = 1) -> None:
        with self._lock:
            self._counts[api] = self._counts.get(api, 0) + n

    def get(self, api: str) -> int:
        with self._lock:
            return self._counts.get(api, 0)

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def snapshot(self) -> Mapping[str, int]:
        """A copy of all counts, safe to keep."""
        with self._lock:
            return dict(self._counts)

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()


# ----------------------------------------------------------------------------- retrying


class _stop_when_budget_spent(stop_base):
    """Stop when the next attempt would start after `budget_s` from the first one.

    Uses an injectable monotonic clock (tenacity's own stop_after_delay reads the real
    clock, which a fast test with a fake sleep cannot advance).
    """

    def __init__(self, budget_s: float, monotonic: Callable[[], float]) -> None:
        self.budget_s = budget_s
        self.monotonic = monotonic
        self.started = monotonic()

    def __call__(self, retry_state: RetryCallState) -> bool:
        elapsed = self.monotonic() - self.started
        return elapsed + retry_state.upcoming_sleep >= self.budget_s


def call_with_retry(
    fn: Callable[[], T],
    settings: AwsSettings,
    *,
    op: str,
    counter: ApiCallCounter | None = None,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> T:
    """Call `fn()` and retry it while it fails with `is_retryable` errors.

    Waits are jittered exponential (`wait_random_exponential(multiplier=0.2, max=5)`).
    Stops after `settings.max_attempts` attempts, or when the next attempt would begin
    after `settings.retry_budget_s` (measured from the first attempt), whichever comes
    first; then the last error is re-raised unchanged. Non-retryable errors are raised
    at once. Each attempt is counted under `op` in `counter`. `sleep` and `monotonic` are
    injectable so tests can run budgets without waiting.

    With a budget for `op` (`counter.budget_for`), every attempt first takes a token from it,
    waiting at most what is left of `settings.retry_budget_s`; none in time raises
    `ApiBudgetExhausted` (not retried here, not counted as an attempt: it never reached AWS).
    """
    budget = counter.budget_for(op) if counter is not None else None
    started = monotonic()

    def attempt() -> T:
        if budget is not None:
            left = max(0.0, settings.retry_budget_s - (monotonic() - started))
            if budget.acquire(left) is None:
                log.warning("aws.budget.exhausted", op=op, rate_per_s=budget.rate_per_s, waited_up_to_s=left)
                raise ApiBudgetExhausted(
                    op,
                    f"no API call token within {left:.1f} s (aws.max_calls_per_s {budget.rate_per_s:g}, "
                    f"burst {budget.burst})",
                )
        if counter is not None:
            counter.inc(op)
        return fn()

    def should_retry(exc: BaseException) -> bool:
        return is_retryable(exc) and not isinstance(exc, ApiBudgetExhausted)

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        log.warning(
            "aws.retry",
            op=op,
            attempt=state.attempt_number,
            sleep_s=round(state.upcoming_sleep, 3),
            error=describe_error(exc) if exc is not None else None,
        )

    retrying = Retrying(
        sleep=sleep,
        stop=stop_after_attempt(settings.max_attempts)
        | _stop_when_budget_spent(settings.retry_budget_s, monotonic),
        wait=wait_random_exponential(multiplier=0.2, max=5),
        retry=retry_if_exception(should_retry),
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying(attempt)
