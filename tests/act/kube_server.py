"""A recording stand-in for the Kubernetes API server, for tests of the real `kubernetes` client.

It listens on 127.0.0.1, answers each (method, path) with queued recorded responses (JSON files
from tests/data/k8s/, shaped as the API server sends them), and records every request exactly as
the client sent it: method, path, query, Content-Type, JSON body. It has no logic of its own: a
test queues what a real server would answer and asserts on what the client asked.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

DATA = Path(__file__).resolve().parents[1] / "data" / "k8s"


def recorded(name: str) -> Any:
    """A fresh copy of tests/data/k8s/<name>.json."""
    return copy.deepcopy(json.loads((DATA / f"{name}.json").read_text()))


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str | None
    body: Any


class KubeServer:
    """Queue answers with `answer(method, path, status, body)`; the last one for a route repeats.
    A route with a fieldSelector wins over the same path without one."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._routes: dict[tuple[str, str, str | None], list[tuple[int, Any]]] = {}
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                with server._lock:
                    server.requests.append(
                        Request(
                            self.command,
                            url.path,
                            parse_qs(url.query),
                            self.headers.get("Content-Type"),
                            body,
                        )
                    )
                    selector = parse_qs(url.query).get("fieldSelector", [None])[0]
                    queue = server._routes.get((self.command, url.path, selector)) or server._routes.get(
                        (self.command, url.path, None)
                    )
                    if queue:
                        status, payload = queue.pop(0) if len(queue) > 1 else queue[0]
                    else:
                        status, payload = (
                            404,
                            {
                                "kind": "Status",
                                "apiVersion": "v1",
                                "metadata": {},
                                "status": "Failure",
                                "message": f"no recorded answer for {self.command} {url.path}",
                                "reason": "NotFound",
                                "code": 404,
                            },
                        )
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def answer(
        self, method: str, path: str, status: int, body: Any, *, field_selector: str | None = None
    ) -> None:
        """Queue an answer for (method, path), or only for requests with that fieldSelector."""
        with self._lock:
            self._routes.setdefault((method, path, field_selector), []).append((status, body))

    def clear(self) -> None:
        """Forget every queued answer and recorded request."""
        with self._lock:
            self._routes.clear()
            self.requests.clear()

    def sent(self, method: str | None = None) -> list[Request]:
        """Requests other than GETs (what changed the cluster), or those of one method."""
        with self._lock:
            if method is None:
                return [r for r in self.requests if r.method != "GET"]
            return [r for r in self.requests if r.method == method]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve() -> Iterator[KubeServer]:
    server = KubeServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
