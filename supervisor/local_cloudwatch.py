"""An embedded CloudWatch-compatible endpoint (moto) for `ftsup demo`: no AWS account needed.

`EmbeddedCloudWatch` runs moto's `ThreadedMotoServer` in this process on a free loopback
port. Decisions:
- It does not touch `os.environ` by default (that would leak fake credentials into every
  other boto3 client of the process, e.g. a real SNS alert sink). In-process clients come
  from `.client()` / `.session()`, which carry dummy credentials; child processes (trainer,
  node agents) get what they need from `.env()`. `export_env=True` opts into setting the
  variables in this process too, restored on `stop()`.
- moto keeps its state per process, not per server: two embedded servers in one process
  (or one next to a test's moto server) see the same log groups and metrics.
- moto is an optional dependency (`ftsup[local]`), imported only on `start()`.
"""

from __future__ import annotations

import logging
import os
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, overload

import boto3

from supervisor.sources.aws import AwsSettings, make_client

if TYPE_CHECKING:
    from botocore.client import BaseClient
    from mypy_boto3_cloudwatch import CloudWatchClient
    from mypy_boto3_logs import CloudWatchLogsClient

__all__ = ["DUMMY_ACCESS_KEY", "DUMMY_SECRET_KEY", "ENDPOINT_ENV", "EmbeddedCloudWatch"]

ENDPOINT_ENV = "FTSUP_CW_ENDPOINT"
DUMMY_ACCESS_KEY = "testing"
DUMMY_SECRET_KEY = "testing"


class EmbeddedCloudWatch:
    """A moto server on 127.0.0.1 for CloudWatch Logs and Metrics (and whatever else moto serves).

    Use as a context manager, or call `start()` / `stop()`. `endpoint_url` is valid only
    while started. `stop()` is idempotent.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        region: str = "us-east-1",
        quiet: bool = True,
        export_env: bool = False,
    ) -> None:
        """port 0 lets the OS pick a free port (no race with other processes).

        quiet: silence werkzeug's per-request access log (a process-wide logger).
        export_env: also set `.env()` in `os.environ` while running (restored on stop).
        """
        self.host = host
        self.port = port
        self.region = region
        self.quiet = quiet
        self.export_env = export_env
        self._server: Any = None
        self._saved_env: dict[str, str | None] = {}

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> EmbeddedCloudWatch:
        """Start the server (blocks until it is accepting connections). Returns self."""
        if self._server is not None:
            return self
        from moto.server import ThreadedMotoServer

        if self.quiet:
            logging.getLogger("werkzeug").setLevel(logging.ERROR)
        server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
        server.start()
        self._server = server
        _, self.port = server.get_host_and_port()
        if self.export_env:
            for key, value in self.env().items():
                self._saved_env[key] = os.environ.get(key)
                os.environ[key] = value
        return self

    def stop(self) -> None:
        """Stop the server and restore exported environment variables; safe to call twice."""
        server, self._server = self._server, None
        if server is not None:
            server.stop()
        for key, old in self._saved_env.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
        self._saved_env.clear()

    def __enter__(self) -> EmbeddedCloudWatch:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    # ------------------------------------------------------------------ how to reach it

    @property
    def endpoint_url(self) -> str:
        """http://127.0.0.1:PORT; raises RuntimeError when not started."""
        if self._server is None:
            raise RuntimeError("EmbeddedCloudWatch is not running; call start() first")
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment a child process needs to reach this endpoint with dummy credentials."""
        return {
            ENDPOINT_ENV: self.endpoint_url,
            "AWS_ACCESS_KEY_ID": DUMMY_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET_KEY,
            "AWS_DEFAULT_REGION": self.region,
        }

    def settings(self, **overrides: Any) -> AwsSettings:
        """AwsSettings pointing at this endpoint; keyword overrides for timeouts and budgets."""
        fields: dict[str, Any] = {"region": self.region, "endpoint_url": self.endpoint_url}
        fields.update(overrides)
        return AwsSettings(**fields)

    def session(self) -> boto3.session.Session:
        """A boto3 session with dummy credentials (never the caller's real ones)."""
        return boto3.session.Session(
            aws_access_key_id=DUMMY_ACCESS_KEY,
            aws_secret_access_key=DUMMY_SECRET_KEY,
            region_name=self.region,
        )

    @overload
    def client(
        self, service: Literal["logs"], settings: AwsSettings | None = None
    ) -> CloudWatchLogsClient: ...
    @overload
    def client(
        self, service: Literal["cloudwatch"], settings: AwsSettings | None = None
    ) -> CloudWatchClient: ...
    @overload
    def client(self, service: str, settings: AwsSettings | None = None) -> BaseClient: ...
    def client(self, service: str, settings: AwsSettings | None = None) -> Any:
        """A client for `service` at this endpoint, built by `make_client` with dummy credentials."""
        return make_client(service, settings or self.settings(), session=self.session())
