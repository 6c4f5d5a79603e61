"""A real Prometheus Alertmanager on 127.0.0.1 for the demo and the tests (Debian's
``prometheus-alertmanager``; ``scripts/install-system-deps.sh`` installs it).

`EmbeddedAlertmanager` starts it with a throw-away configuration that does what a team's own would:
one notification group per incident, and an inhibit rule by which a root cause's alert
(``role="cause"``) silences its symptoms' alerts (``role="symptom"``) of the same job. It waits
until ``/-/ready`` answers and stops the process on `stop` (or leaving the ``with`` block). Reading
its API (`alerts`, `groups`) is what an on-call engineer's UI does.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

CONFIG = """\
route:
  receiver: blackhole
  group_by: [incident]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: blackhole
inhibit_rules:
  - source_matchers: ['role="cause"', 'source="ftsup"']
    target_matchers: ['role="symptom"', 'source="ftsup"']
    equal: [job]
"""


def alertmanager_binary() -> str | None:
    """The Alertmanager executable on PATH (Debian names it prometheus-alertmanager), or None."""
    return shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedAlertmanager:
    """One isolated Alertmanager (no cluster gossip) with its state under `workdir`."""

    def __init__(self, workdir: Path, config: str = CONFIG, ready_timeout_s: float = 30.0) -> None:
        binary = alertmanager_binary()
        if binary is None:
            raise FileNotFoundError(
                "prometheus-alertmanager is not installed (scripts/install-system-deps.sh)"
            )
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "alertmanager.yml").write_text(config)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "alertmanager.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={workdir / 'alertmanager.yml'}",
                    f"--storage.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--cluster.listen-address=",  # no gossip: a single, isolated instance
                    "--log.level=warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            self._wait_ready(ready_timeout_s)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"alertmanager exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=1.0) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                tail = self.log.read_text()[-2000:]
                raise RuntimeError(f"alertmanager not ready after {timeout_s:.0f} s: {tail}")
            time.sleep(0.1)

    def get(self, path: str) -> Any:
        """GET `path` of its API as JSON (5 s timeout)."""
        with urllib.request.urlopen(self.url + path, timeout=5.0) as response:
            return json.loads(response.read())

    def alerts(self, job: str) -> list[dict[str, Any]]:
        """The alerts it holds for `job`: firing ones, inhibited ones included (resolved ones are gone)."""
        return [a for a in self.get("/api/v2/alerts") if a["labels"].get("job") == job]

    def groups(self, job: str) -> list[dict[str, Any]]:
        """Its notification groups holding alerts of `job`, with only those alerts."""
        out = []
        for group in self.get("/api/v2/alerts/groups"):
            alerts = [a for a in group["alerts"] if a["labels"].get("job") == job]
            if alerts:
                out.append({**group, "alerts": alerts})
        return out

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10.0)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5.0)

    def __enter__(self) -> EmbeddedAlertmanager:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
