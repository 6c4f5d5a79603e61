"""A real Prometheus server (Debian's `prometheus`, /usr/bin/prometheus) for the metrics tests.

`prometheus_server(target_port)` writes a throw-away prometheus.yml that scrapes
http://127.0.0.1:<target_port>/metrics every second, starts prometheus with its TSDB in the test's
tmp dir on a free loopback port, waits for /-/ready, and returns a client for /api/v1/query.
Teardown terminates it (then kills it). Without the binary the tests skip with the reason; with
FTSUP_REQUIRE_PROMETHEUS=1 (CI) they fail instead (scripts/install-system-deps.sh installs it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port

STARTUP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Prometheus:
    """A running Prometheus; `query` runs an instant query through its HTTP API."""

    url: str
    log: Path

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The result vector of `expr` (raises on an API error)."""
        q = urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{q}", timeout=5) as resp:
            doc = json.loads(resp.read())
        assert doc["status"] == "success", doc
        return list(doc["data"]["result"])

    def value(self, expr: str) -> float | None:
        """The single value of `expr`, or None when the vector is empty."""
        result = self.query(expr)
        if not result:
            return None
        assert len(result) == 1, result
        return float(result[0]["value"][1])

    def wait_for(self, expr: str, want: float, timeout_s: float = 30.0) -> float | None:
        """Polls `expr` until it equals `want` (or the timeout); returns the last value seen."""
        deadline = time.monotonic() + timeout_s
        got = self.value(expr)
        while got != want and time.monotonic() < deadline:
            time.sleep(0.5)
            got = self.value(expr)
        return got


def _binary() -> str:
    found = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
    )
    if found is None:
        message = "prometheus is not installed (scripts/install-system-deps.sh installs Debian's package)"
        if os.environ.get("FTSUP_REQUIRE_PROMETHEUS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture
def prometheus_server(tmp_path: Path) -> Iterator[Callable[[int], Prometheus]]:
    binary = _binary()
    procs: list[subprocess.Popen[bytes]] = []

    def start(target_port: int) -> Prometheus:
        workdir = tmp_path / "prometheus"
        workdir.mkdir()
        config = workdir / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: ftsup\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{target_port}']}}]\n"
        )
        port = free_port()
        log = workdir / "prometheus.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--storage.tsdb.retention.time=1h",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=workdir,
            )
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"prometheus exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return Prometheus(url, log)
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"prometheus not ready after {STARTUP_TIMEOUT_S}s:\n{log.read_text()[-3000:]}"
                )
            time.sleep(0.2)

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
