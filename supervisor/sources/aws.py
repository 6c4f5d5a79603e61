"""AWS plumbing shared by the CloudWatch sources: clients, retry policy, call counting.

Contracts:
- Every client built here has explicit connect/read timeouts and botocore's own retries
  switched off (`total_max_attempts=1`); `call_with_retry` owns retrying, so a call's
  worst case is bounded by `AwsSettings` alone (attempts and a wall-clock budget).
- `is_retryable` says yes only for transient failures (throttling, 5xx, connection and
  timeout errors). Access denied, validation, missing resources and quota exhaustion
  (`LimitExceededException`, e.g. out of Live Tail sessions) are final.
- `ApiCallCounter` counts attempts (what the account's API quota sees), not logical calls.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

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
    "ApiCallCounter",
    "AwsSettings",
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


class ApiCallCounter:
    """Thread-safe counts of API attempts by name (e.g. "FilterLogEvents")."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

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
    """

    def attempt() -> T:
        if counter is not None:
            counter.inc(op)
        return fn()

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
        retry=retry_if_exception(is_retryable),
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying(attempt)
