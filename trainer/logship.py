"""Log shipping for the node agent: CloudWatch Logs via watchtower, and a kmsg (dmesg) file tailer.

Shipped lines are untrusted data: they are passed as a ``%s`` argument and formatted with a bare
``%(message)s`` formatter, never parsed or interpolated.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

# Lines that may be a failure are sent at once instead of waiting for the next batch: every second
# between a failure and the supervisor's decision costs training time, while healthy lines (the
# bulk) keep riding the 1 s batches. The node agent asks the supervisor's own policies
# (`policy_urgency`); this coarse pattern is the fallback when they cannot be loaded.
URGENT_FALLBACK_RE = re.compile(
    r"rror|ERROR|xception|Traceback|NCCL WARN|Xid|NVRM|[Kk]illed|terminate called|[Ss]ignal|FAIL|[Ff]atal"
    r"|[Tt]imed out|[Tt]imeout|[Aa]bort|[Pp]anic|[Ss]egmentation fault|[Oo]ut of memory|oom-kill"
)
URGENT_MIN_GAP_S = 0.1  # at most ~10 early sends a second, however many failure lines pour out


def fallback_urgency(line: str) -> bool:
    return URGENT_FALLBACK_RE.search(line) is not None


def policy_urgency(policy_dirs: Sequence[Path]) -> Callable[[str], bool]:
    """Urgent = some rule of these policy packs (or a traceback's structure line) may match the line.

    Raises whatever loading the packs raises (`PolicyError`); the caller falls back."""
    from supervisor.classify.matcher import LogClassifier
    from supervisor.classify.policy import load_policies

    classifier = LogClassifier(load_policies(list(policy_dirs)))
    return classifier.any_match


class CloudWatchShipper:
    """Ships lines to one CloudWatch Logs stream (``log_group``/``node``) through watchtower.

    The event timestamp is the moment :meth:`ship` is called (watchtower uses ``LogRecord.created``).
    Thread-safe; lines from concurrent producers keep their call order. Lines `urgent` says yes to
    ask watchtower's sender to send its batch now (at most every ``URGENT_MIN_GAP_S``); the rest are
    sent every ``send_interval_s``.
    """

    def __init__(
        self,
        log_group: str,
        stream: str,
        region: str,
        endpoint_url: str | None,
        send_interval_s: float = 1.0,
        urgent: Callable[[str], bool] = fallback_urgency,
    ) -> None:
        self._urgent = urgent
        import watchtower  # imported lazily: only the shipping path needs it

        client: Any = boto3.client(
            "logs",
            region_name=region,
            endpoint_url=endpoint_url,
            config=Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 3}),
        )
        self._handler = watchtower.CloudWatchLogHandler(
            log_group_name=log_group,
            log_stream_name=stream,
            boto3_client=client,
            send_interval=send_interval_s,  # type: ignore[arg-type]  # a float works (a deadline sum)
            create_log_group=True,
        )
        # watchtower creates a missing stream lazily from its sender thread and *drops* every record
        # emitted while that is in progress (its recursion guard), which loses a job's first lines.
        # Creating the stream up front keeps that path from ever running.
        # Best effort: if this fails, watchtower's lazy creation is still there as a fallback.
        with contextlib.suppress(Exception):
            client.create_log_stream(logGroupName=log_group, logStreamName=stream)
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        # A private, non-propagating logger so shipped lines never reach other handlers.
        self._logger = logging.Logger(f"ftsup.node_agent.ship.{stream}", level=logging.INFO)
        self._logger.propagate = False
        self._logger.addHandler(self._handler)
        self._lock = threading.Lock()
        self._urgent_at = 0.0

    def ship(self, line: str) -> None:
        if not line:
            return  # CloudWatch rejects empty messages
        with self._lock:  # keeps record creation time and queue order consistent across threads
            self._logger.info("%s", line)
            if self._urgent(line):
                now = time.monotonic()
                if now - self._urgent_at >= URGENT_MIN_GAP_S:
                    self._urgent_at = now
                    self._send_now()

    def _send_now(self) -> None:
        """Ask watchtower's sender threads to send what they hold, without waiting for them
        (``flush()`` would block the caller until CloudWatch answered)."""
        handler: Any = self._handler
        for q in list(handler.queues.values()):
            q.put(handler.FLUSH)

    def close(self) -> None:
        """Flush everything queued and stop watchtower's sender threads."""
        with self._lock:
            self._handler.flush()
            self._handler.close()


class KmsgTailer:
    """Follows a kernel-log file from its end (only lines appended after start), like ``dmesg -w``.

    Creates the file empty when it does not exist. Calls ``on_line`` with each complete line (without
    the newline) from a daemon thread; a trailing partial line waits until its newline arrives.
    """

    def __init__(self, path: Path, on_line: Callable[[str], None], poll_s: float = 0.2) -> None:
        self._path = path
        self._on_line = on_line
        self._poll_s = poll_s
        self._stop = threading.Event()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
        self._offset = path.stat().st_size
        self._partial = b""
        self._thread = threading.Thread(target=self._run, name="kmsg-tail", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop after one final read, so lines written just before shutdown are still delivered."""
        self._stop.set()
        self._thread.join(timeout=5)

    def _read_new(self) -> None:
        try:
            size = self._path.stat().st_size
        except OSError:
            return
        if size < self._offset:  # truncated/rotated: start over from the beginning
            self._offset, self._partial = 0, b""
        if size == self._offset:
            return
        with open(self._path, "rb") as f:
            f.seek(self._offset)
            data = f.read(size - self._offset)
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        for raw in lines:
            self._on_line(raw.decode("utf-8", errors="replace").rstrip("\r"))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._read_new()
            self._stop.wait(self._poll_s)
        self._read_new()
