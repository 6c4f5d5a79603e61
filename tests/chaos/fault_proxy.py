"""A fault-injecting reverse HTTP proxy between boto3 and a moto server, on 127.0.0.1.

    plan = FaultPlan(seed=7, rates={"FilterLogEvents": {Fault.THROTTLE: 0.1, Fault.EMPTY_PAGE: 0.2}})
    with FaultProxy(moto_endpoint, plan) as proxy:
        client = make_client("logs", AwsSettings(endpoint_url=proxy.url, ...))
        plan.script("GetMetricData", Fault.RESET, Fault.TIMEOUT)   # the next two such calls
        plan.outage_on(); ...; plan.outage_off()                  # everything fails meanwhile
        proxy.records()                                            # every request: op, time, fault

Wire protocols (botocore 1.44 as pinned here, checked against its parsers and on the wire):
- CloudWatch Logs speaks awsJson1_1: ``POST /``, ``X-Amz-Target: Logs_20140328.<Op>``. Errors are
  ``{"__type": code, "message": ...}`` with the HTTP status.
- CloudWatch (monitoring) lists ``smithy-rpc-v2-cbor``, ``json`` and ``query``; botocore picks the
  first it prefers (``json``): awsJson1_0, ``X-Amz-Target: GraniteServiceVersion20100801.<Op>``.
  The service is awsQuery-compatible, so an error also carries ``x-amzn-query-error: Code;Type``
  and botocore takes the code from it (e.g. ``Throttling``, the classic CloudWatch code).
- Should a botocore prefer rpc-v2-cbor (``/service/<svc>/operation/<Op>``) or query (``Action=``
  in a form body), errors are written in those encodings too (a CBOR map, an XML ErrorResponse).

Faults (`Fault`): THROTTLE (400 ThrottlingException for logs, Throttling for metrics), HTTP_500,
HTTP_503, TIMEOUT (the request is swallowed and the connection held `hold_s`, past the client's
read timeout, then closed), RESET (the connection is aborted with a TCP RST: SO_LINGER 0), SLOW
(forwarded after `slow_s`), EMPTY_PAGE (FilterLogEvents only: a page with no events and an
invented nextToken; the follow-up request carrying that token is mapped back to the real one).
An outage fails every request (cycling through `outage_faults`) until switched off.

Everything the proxy decides is drawn from one seeded `random.Random` under a lock; the order in
which concurrent requests draw is the threads', so a run is reproducible in its mix, not request
for request. moto does not check SigV4 signatures, so rewriting a body (a mapped nextToken) is
harmless there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import itertools
import json
import random
import socket
import struct
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

__all__ = ["Fault", "FaultPlan", "FaultProxy", "Record", "max_in_window"]

EMPTY_TOKEN_PREFIX = "ftsup-chaos-empty-"
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
     "transfer-encoding", "upgrade", "content-length"}
)  # fmt: skip


class Fault(StrEnum):
    THROTTLE = "throttle"
    HTTP_500 = "http_500"
    HTTP_503 = "http_503"
    TIMEOUT = "timeout"
    RESET = "reset"
    SLOW = "slow"
    EMPTY_PAGE = "empty_page"


# Faults that only make sense for one operation (others get no fault when drawn).
ONLY_FOR = {Fault.EMPTY_PAGE: "FilterLogEvents"}


@dataclass(frozen=True, slots=True)
class Record:
    """One request as the proxy saw it. `at` is time.monotonic() when its head was read."""

    op: str
    at: float
    fault: Fault | None
    outage: bool
    status: int | None  # what the client was sent; None for a timeout, a reset, or not yet answered


class FaultPlan:
    """What to do to each request: scripted faults first, then the outage, then seeded chance.

    `rates` maps an operation (or "*" for any) to {fault: probability}; the probabilities of one
    operation are drawn as one categorical choice (their sum must be <= 1). `script(op, ...)`
    queues faults for the next requests of `op`, in order, ahead of chance. While an outage is on,
    every request fails with the next of `outage_faults` (scripts wait until it is over).
    Thread-safe.
    """

    def __init__(
        self,
        *,
        seed: int,
        rates: Mapping[str, Mapping[Fault, float]] | None = None,
        outage_faults: Sequence[Fault] = (Fault.HTTP_503, Fault.RESET, Fault.THROTTLE),
        slow_s: tuple[float, float] = (0.2, 0.6),
        hold_s: float = 2.0,
    ) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._rates: dict[str, dict[Fault, float]] = {}
        self.set_rates(rates or {})
        self._scripts: dict[str, list[Fault]] = {}
        self._outage = False
        self._outage_cycle = itertools.cycle(outage_faults)
        self.slow_s = slow_s
        self.hold_s = hold_s

    def set_rates(self, rates: Mapping[str, Mapping[Fault, float]]) -> None:
        """Replace the chance of each fault per operation ("*": any operation without its own)."""
        clean: dict[str, dict[Fault, float]] = {}
        for op, table in rates.items():
            total = sum(table.values())
            if total > 1.0 + 1e-9 or any(p < 0 for p in table.values()):
                raise ValueError(f"fault probabilities of {op} must be >= 0 and sum to <= 1, got {total}")
            clean[op] = dict(table)
        with self._lock:
            self._rates = clean

    def script(self, op: str, *faults: Fault) -> None:
        """The next requests of `op` get these faults, in order (after any already scripted)."""
        with self._lock:
            self._scripts.setdefault(op, []).extend(faults)

    def scripted_left(self, op: str | None = None) -> int:
        with self._lock:
            if op is not None:
                return len(self._scripts.get(op, ()))
            return sum(len(v) for v in self._scripts.values())

    def outage_on(self) -> None:
        with self._lock:
            self._outage = True

    def outage_off(self) -> None:
        with self._lock:
            self._outage = False

    @property
    def in_outage(self) -> bool:
        with self._lock:
            return self._outage

    def choose(self, op: str) -> tuple[Fault | None, bool]:
        """(the fault for this request of `op` or None, whether it is an outage's)."""
        with self._lock:
            if self._outage:
                return next(self._outage_cycle), True
            queued = self._scripts.get(op)
            if queued:
                return queued.pop(0), False
            table = self._rates.get(op, self._rates.get("*", {}))
            x = self._rng.random()
            for fault, p in table.items():
                if x < p:
                    if ONLY_FOR.get(fault, op) != op:
                        return None, False
                    return fault, False
                x -= p
            return None, False

    def slow_delay(self) -> float:
        with self._lock:
            return self._rng.uniform(*self.slow_s)

    def fresh_token(self) -> str:
        with self._lock:
            return f"{EMPTY_TOKEN_PREFIX}{self._rng.getrandbits(64):016x}"


# ----------------------------------------------------------------------------- wire formats


@dataclass(frozen=True, slots=True)
class _Call:
    op: str
    protocol: str  # "json", "cbor" or "query"
    service: str  # "logs", "monitoring" or "" (unknown)
    json_version: str  # "1.0" / "1.1" for json


def _identify(path: str, headers: Mapping[str, str], body: bytes) -> _Call:
    target = headers.get("x-amz-target")
    ctype = headers.get("content-type", "")
    if target:
        prefix, _, op = target.partition(".")
        service = (
            "logs" if prefix.startswith("Logs_") else "monitoring" if prefix.startswith("Granite") else ""
        )
        version = "1.1" if "1.1" in ctype else "1.0"
        return _Call(op, "json", service, version)
    if "/operation/" in path:
        parts = path.split("/")
        op = parts[-1]
        service = "monitoring" if "Granite" in path else "logs" if "Logs_" in path else ""
        return _Call(op, "cbor", service, "")
    form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
    op = form.get("Action", ["Unknown"])[0]
    return _Call(op, "query", "monitoring", "")


# fault -> (HTTP status, logs' JSON code, CloudWatch's (query) code, query error type, message)
_ERRORS = {
    Fault.THROTTLE: (400, "ThrottlingException", "Throttling", "Sender", "Rate exceeded"),
    Fault.HTTP_500: (500, "InternalFailure", "InternalServiceError", "Receiver", "internal failure (chaos)"),
    Fault.HTTP_503: (
        503,
        "ServiceUnavailableException",
        "ServiceUnavailable",
        "Server",
        "unavailable (chaos)",
    ),
}


def _cbor_text(s: str) -> bytes:
    raw = s.encode("utf-8")
    n = len(raw)
    if n < 24:
        head = bytes([0x60 | n])
    elif n < 256:
        head = bytes([0x78, n])
    else:
        head = bytes([0x79]) + struct.pack(">H", n)
    return head + raw


def cbor_map(items: Mapping[str, str]) -> bytes:
    """A CBOR map of text strings (all an rpc-v2-cbor error body needs); fewer than 24 items."""
    if len(items) >= 24:
        raise ValueError("too many items for this tiny encoder")
    return bytes([0xA0 | len(items)]) + b"".join(_cbor_text(k) + _cbor_text(v) for k, v in items.items())


def error_response(call: _Call, fault: Fault) -> tuple[int, dict[str, str], bytes]:
    """The error `fault` means, in the wire format of `call`: (status, headers, body)."""
    status, json_code, query_code, kind, message = _ERRORS[fault]
    rid = f"chaos-{random.getrandbits(48):012x}"
    headers = {"x-amzn-RequestId": rid}
    code = json_code if call.service != "monitoring" else query_code
    if call.protocol == "query":
        body = (
            '<ErrorResponse xmlns="http://monitoring.amazonaws.com/doc/2010-08-01/">'
            f"<Error><Type>{kind}</Type><Code>{query_code}</Code><Message>{message}</Message></Error>"
            f"<RequestId>{rid}</RequestId></ErrorResponse>"
        ).encode()
        headers["Content-Type"] = "text/xml"
        return status, headers, body
    if call.service == "monitoring":
        headers["x-amzn-query-error"] = f"{query_code};{kind}"
    if call.protocol == "cbor":
        headers["Content-Type"] = "application/cbor"
        headers["smithy-protocol"] = "rpc-v2-cbor"
        return status, headers, cbor_map({"__type": code, "message": message})
    headers["Content-Type"] = f"application/x-amz-json-{call.json_version}"
    return status, headers, json.dumps({"__type": code, "message": message}).encode()


# ----------------------------------------------------------------------------- the proxy


class FaultProxy:
    """A threaded reverse proxy on 127.0.0.1 in front of `upstream` (http://host:port), applying
    `plan` to every request. Use as a context manager, or `start()` / `stop()`."""

    def __init__(self, upstream: str, plan: FaultPlan, *, upstream_timeout_s: float = 30.0) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        if parsed.scheme != "http" or not parsed.hostname or not parsed.port:
            raise ValueError(f"upstream must be http://host:port, got {upstream!r}")
        self.upstream = (parsed.hostname, parsed.port)
        self.plan = plan
        self.upstream_timeout_s = upstream_timeout_s
        self._records: list[Record] = []
        self._lock = threading.Lock()
        self._tokens: dict[str, str | None] = {}  # invented token -> the real one (None: first page)
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(_Handler):
            owner = proxy

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FaultProxy is not running")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # ------------------------------------------------------------------ what happened

    def records(self, op: str | None = None) -> list[Record]:
        with self._lock:
            return [r for r in self._records if op is None or r.op == op]

    def faults(self) -> Counter[str]:
        """Faults injected by kind ("outage:<kind>" for an outage's)."""
        out: Counter[str] = Counter()
        for r in self.records():
            if r.fault is not None:
                out[f"outage:{r.fault.value}" if r.outage else r.fault.value] += 1
        return out

    def _record(self, rec: Record) -> int:
        with self._lock:
            self._records.append(rec)
            return len(self._records) - 1

    def _settle(self, index: int, fault: Fault | None, status: int | None) -> None:
        with self._lock:
            self._records[index] = dataclasses.replace(self._records[index], fault=fault, status=status)

    def _map_token(self, invented: str) -> str | None:
        with self._lock:
            return self._tokens.get(invented, invented)

    def _invent_token(self, real: str | None) -> str:
        token = self.plan.fresh_token()
        with self._lock:
            self._tokens[token] = real
        return token


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"  # keep-alive, as botocore's pool expects

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self._handle()

    def do_GET(self) -> None:
        self._handle()

    def _handle(self) -> None:
        proxy = self.owner
        at = time.monotonic()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        call = _identify(self.path, headers, body)
        if call.op == "FilterLogEvents" and call.protocol == "json":
            body = self._unmap_token(body)
        fault, outage = proxy.plan.choose(call.op)
        # Recorded at once (a held "timeout" must count while it is held), settled when answered.
        index = proxy._record(Record(call.op, at, fault, outage, None))
        status: int | None = None
        try:
            if fault is Fault.TIMEOUT:
                proxy._stopping.wait(proxy.plan.hold_s)  # past the client's read timeout
                self.close_connection = True
            elif fault is Fault.RESET:
                self._reset()
            elif fault in _ERRORS:
                assert fault is not None
                status, hdrs, payload = error_response(call, fault)
                self._reply(status, hdrs, payload)
            elif fault is Fault.EMPTY_PAGE and call.op == "FilterLogEvents" and call.protocol == "json":
                real = json.loads(body or b"{}").get("nextToken")
                page = {"events": [], "searchedLogStreams": [], "nextToken": proxy._invent_token(real)}
                status = 200
                self._reply(200, {"Content-Type": "application/x-amz-json-1.1"}, json.dumps(page).encode())
            else:
                if fault is Fault.SLOW:
                    proxy._stopping.wait(proxy.plan.slow_delay())
                elif fault is Fault.EMPTY_PAGE:  # not a JSON FilterLogEvents: nothing to fake, none recorded
                    fault = None
                status = self._forward(body, headers)
        finally:
            proxy._settle(index, fault, status)

    def _unmap_token(self, body: bytes) -> bytes:
        try:
            doc = json.loads(body)
        except ValueError:
            return body
        token = doc.get("nextToken")
        if not isinstance(token, str) or not token.startswith(EMPTY_TOKEN_PREFIX):
            return body
        real = self.owner._map_token(token)
        if real is None:
            doc.pop("nextToken")
        else:
            doc["nextToken"] = real
        return json.dumps(doc).encode()

    def _reset(self) -> None:
        """Abort the connection with a TCP RST (SO_LINGER on, timeout 0, then close)."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()

    def _reply(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _forward(self, body: bytes, headers: Mapping[str, str]) -> int:
        proxy = self.owner
        host, port = proxy.upstream
        conn = http.client.HTTPConnection(host, port, timeout=proxy.upstream_timeout_s)
        try:
            out = {k: v for k, v in headers.items() if k not in HOP_BY_HOP}
            out["content-length"] = str(len(body))
            conn.request(self.command, self.path, body=body, headers=out)
            resp = conn.getresponse()
            payload = resp.read()
            hdrs = {k: v for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP}
            self._reply(resp.status, hdrs, payload)
            return resp.status
        finally:
            conn.close()


def max_in_window(times: Iterable[float], window_s: float = 1.0) -> int:
    """The most of `times` inside any half-open interval (t - window_s, t] (a sliding window)."""
    ts = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(ts):
        while ts[lo] <= t - window_s:
            lo += 1
        best = max(best, hi - lo + 1)
    return best
