"""What the AWS node backends (aws_asg, hyperpod) share: their constructor, retried AWS calls and the
frame of `remediate` (unsupported op refused, any outside failure a FAILED result, never raised).

Kept apart from supervisor.act.remediate so that reading the config never imports boto3.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

import boto3

from supervisor.act.remediate import (
    ApprovalGate,
    GuardedRemediator,
    NodeOp,
    Outcome,
    RateLimiter,
    RemediationRequest,
    RemediationResult,
)
from supervisor.sources.aws import ApiCallCounter, AwsSettings, call_with_retry, describe_error

__all__ = ["AwsRemediator", "Finish"]

S = TypeVar("S")


class Finish(Protocol):
    """Ends one remediate() call: the result for `outcome` and `detail`, on `target` when known."""

    def __call__(self, outcome: Outcome, detail: str, target: str | None = None) -> RemediationResult: ...


class AwsRemediator(GuardedRemediator, Generic[S]):
    """A NodeRemediator over AWS APIs. Subclasses set `name` and `supported_ops`, build their clients
    in `_connect` and act in `_remediate`. Thread-safe as long as the subclass is (boto3 clients are;
    the rate limiters lock)."""

    name: str
    supported_ops: frozenset[NodeOp]

    def __init__(
        self,
        settings: S,
        aws: AwsSettings,
        *,
        replace_limit: RateLimiter,
        reboot_limit: RateLimiter,
        gate: ApprovalGate | None = None,
        session: boto3.session.Session | None = None,
        counter: ApiCallCounter | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(replace_limit=replace_limit, reboot_limit=reboot_limit, gate=gate, clock=clock)
        self.settings = settings
        self.aws = aws
        self.counter = counter if counter is not None else ApiCallCounter()
        self.sleep = sleep
        self.monotonic = monotonic
        self._connect(session)

    def _connect(self, session: boto3.session.Session | None) -> None:
        """Build the AWS clients (make_client with `self.aws` and `session`)."""
        raise NotImplementedError

    def _call(self, op: str, fn: Callable[[], Any]) -> Any:
        """`fn()` through call_with_retry, counted under `op` (the API name)."""
        return call_with_retry(
            fn, self.aws, op=op, counter=self.counter, sleep=self.sleep, monotonic=self.monotonic
        )

    def remediate(self, request: RemediationRequest) -> RemediationResult:
        started = self.clock()

        def finish(outcome: Outcome, detail: str, target: str | None = None) -> RemediationResult:
            return RemediationResult(request.node, request.op, outcome, detail, started, self.clock(), target)

        if request.op not in self.supported_ops:
            return finish(Outcome.REFUSED, f"{self.name} cannot {request.op.value} a node")
        try:
            return self._remediate(request, finish)
        except Exception as exc:  # never raise for an outside failure
            return finish(Outcome.FAILED, describe_error(exc))

    def _remediate(self, request: RemediationRequest, finish: Finish) -> RemediationResult:
        """Carry out a supported `request`; may raise (remediate turns that into FAILED)."""
        raise NotImplementedError
