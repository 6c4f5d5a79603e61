"""Fixtures for the alert tests: a real Prometheus Alertmanager on 127.0.0.1 and local HTTP receivers."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from supervisor.local_alertmanager import EmbeddedAlertmanager, alertmanager_binary

ALERTMANAGER_BIN = alertmanager_binary()


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedAlertmanager]:
    """Debian's prometheus-alertmanager on a free loopback port with the throw-away config of
    `supervisor.local_alertmanager` (group by incident; a cause inhibits its symptoms)."""
    if ALERTMANAGER_BIN is None:
        pytest.skip("prometheus-alertmanager is not installed (scripts/install-system-deps.sh)")
    with EmbeddedAlertmanager(tmp_path_factory.mktemp("alertmanager")) as am:
        yield am


def wait_for(check: Any, timeout_s: float = 10.0, every_s: float = 0.05) -> Any:
    """Polls `check()` until it returns something truthy; returns it, or fails after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s (last: {got!r})")
        time.sleep(every_s)


@dataclass
class Receiver:
    """A real HTTP server on 127.0.0.1 recording JSON POSTs. `status` answers every POST (e.g. 503 to
    play an outage); `stop()` / `start()` take it off the port and back on the same port."""

    status: int = 202
    posts: list[Any] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    requests: int = 0
    port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with rec.lock:
                    rec.requests += 1
                    status = rec.status
                    if 200 <= status < 300:
                        rec.posts.append(json.loads(body))
                        rec.paths.append(self.path)
                self.send_response(status)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    rec.start()
    try:
        yield rec
    finally:
        rec.stop()
