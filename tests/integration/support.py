"""Helpers for the end-to-end tests: a config file for a local job against the test's moto server."""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from supervisor.config import Config, default_policy_dir, load_config

FAST_TRAINER = [
    "--ckpt-every", "5", "--collective-timeout-s", "15", "--step-sleep-s", "0.2", "--metrics-interval-s", "1",
]  # fmt: skip


def shipped_policies_without_budgets() -> list[str]:
    """Every shipped rule file, but budgets come from the test (quick backoff)."""
    return [str(p) for p in sorted(default_policy_dir().glob("*.yaml")) if p.name != "budgets.yaml"]


def write_config(
    tmp: Path,
    endpoint: str,
    *,
    mode: str = "act",
    spares: tuple[str, ...] = ("node-2",),
    overrides: str | None = None,
    budgets: str = "budgets: {restart: {max: 5, within: 1h, backoff: 1s, backoff_max: 2s}}\n",
    trainer_args: tuple[str, ...] = (),
    webhook: str | None = None,
) -> Config:
    """Write a real config file (and policy overlay) under `tmp` and load it with the real loader."""
    overlay = tmp / "site-policies"
    overlay.mkdir(exist_ok=True)
    (overlay / "budgets.yaml").write_text(budgets)
    if overrides:
        (overlay / "overrides.yaml").write_text(overrides)
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    doc = {
        "job": {"name": name, "log_group": f"/ftsup/test/{name}"},
        "mode": mode,
        "aws": {"endpoint_url": endpoint},
        "sources": {
            "logs": {"poll_interval_s": 1.0, "overlap_s": 10.0},
            "metrics": {"poll_interval_s": 1.0, "period_s": 1, "lookback_s": 30.0},
        },
        "policies": [*shipped_policies_without_budgets(), str(overlay)],
        "incidents": {"settle_s": 4.0},
        "actuator": {
            "kind": "local",
            "local": {
                "nodes": ["node-0", "node-1"],
                "spares": list(spares),
                "run_dir": "job",
                "stop_grace_s": 5.0,
                "trainer_args": [*FAST_TRAINER, *trainer_args],
            },
        },
        "journal": {"path": "ftsup.db"},
        "alerts": {"log": True, "webhooks": [{"url": webhook, "timeout_s": 5.0}] if webhook else []},
        "metrics_server": {"port": 0},
    }
    path = tmp / "ftsup.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return load_config(path)


class WebhookReceiver:
    """A real HTTP server on 127.0.0.1 that records the JSON bodies POSTed to it."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.received = received
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
