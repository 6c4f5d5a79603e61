"""Structured JSON-lines logging shared by every trainer process.

Contract (the supervisor parses these lines): each line is one ``json.dumps`` object whose first keys are,
in this order, ``ts``, ``job``, ``node``, ``rank``, ``local_rank``, ``attempt``, ``event``, followed by
event-specific keys. Default separators are kept so that regexes such as
``"event": "step", "step": (\\d+)`` match.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from typing import TextIO


def json_float(value: float, ndigits: int = 6) -> float | str:
    """Return ``value`` rounded, or the strings ``"nan"``/``"inf"``/``"-inf"`` when it is not finite.

    ``json.dumps`` would otherwise emit the non-JSON tokens ``NaN``/``Infinity``.
    """
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return round(value, ndigits)


class JsonLogger:
    """Writes one flushed JSON line per event, with the fixed identity prefix.

    Thread-safe: the metrics thread logs through the same instance as the training loop.
    """

    def __init__(
        self,
        job: str,
        node: str,
        rank: int,
        local_rank: int,
        attempt: int,
        stream: TextIO | None = None,
    ) -> None:
        self._prefix: dict[str, object] = {
            "job": job,
            "node": node,
            "rank": rank,
            "local_rank": local_rank,
            "attempt": attempt,
        }
        self._stream = stream if stream is not None else sys.stdout
        self._lock = threading.Lock()

    def emit(self, event: str, **fields: object) -> None:
        """Write ``{"ts", <identity>, "event": event, **fields}`` as one line and flush it."""
        record: dict[str, object] = {"ts": round(time.time(), 3), **self._prefix, "event": event}
        record.update(fields)
        line = json.dumps(record)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()
