"""Write the real fault logs (tests/data/fault_logs) into CloudWatch Logs streams, one per node."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[1] / "data" / "fault_logs"


def timed_lines(kind: str, base: float) -> dict[str, list[tuple[float, str]]]:
    """Each node's lines of fault `kind` with event times: the trainer's own `ts` moved so that the
    earliest line of the run is at `base`; a line without `ts` (tracebacks, torchrun, kernel) takes
    the previous line's time plus 1 ms per line, so file order is kept."""
    raw = {node: (DATA / f"{kind}.{node}.log").read_text().splitlines() for node in ("node-0", "node-1")}
    first = min(_ts(line) or float("inf") for lines in raw.values() for line in lines)
    out: dict[str, list[tuple[float, str]]] = {}
    for node, lines in raw.items():
        t = base
        timed = []
        for line in lines:
            ts = _ts(line)
            t = base + (ts - first) if ts is not None else t + 0.001
            timed.append((t, line))
        out[node] = timed
    return out


def _ts(line: str) -> float | None:
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line).get("ts")
    except ValueError:
        return None
    return float(value) if isinstance(value, int | float) else None


def put_fault_logs(client: Any, group: str, kind: str, base: float) -> tuple[float, float]:
    """Ship fault `kind` (both nodes) into `group` starting at `base`; returns (first, last) event time."""
    with contextlib.suppress(client.exceptions.ResourceAlreadyExistsException):
        client.create_log_group(logGroupName=group)
    times: list[float] = []
    for node, lines in timed_lines(kind, base).items():
        with contextlib.suppress(client.exceptions.ResourceAlreadyExistsException):
            client.create_log_stream(logGroupName=group, logStreamName=node)
        events = [{"timestamp": int(t * 1000), "message": line} for t, line in lines if line]
        events.sort(key=lambda e: e["timestamp"])
        for i in range(0, len(events), 1000):
            client.put_log_events(logGroupName=group, logStreamName=node, logEvents=events[i : i + 1000])
        times += [e["timestamp"] / 1000 for e in events]
    return min(times), max(times)
