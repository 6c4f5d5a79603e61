"""``python -m trainer.node_agent``: per-node supervisor of the launcher and log shipper.

Usage::

    python -m trainer.node_agent --job J --node N --log-group G [--endpoint-url URL] [--region R]
        [--kmsg-file PATH] [--log-file PATH] [--no-cloudwatch] [--grace-s 10] -- CMD ARGS...

Runs CMD (normally ``torchrun ... -m trainer.train ...``) in its own session with stdout+stderr merged,
and with ``FTSUP_NODE``, ``FTSUP_JOB``, ``FTSUP_KMSG_FILE``, ``FTSUP_CW_ENDPOINT`` (when given) and
``PYTHONUNBUFFERED=1`` added to its environment. Every output line, and every line appended to the kmsg
file after start, is written verbatim to ``--log-file``, to this process's stdout and to the CloudWatch
Logs stream ``G/N`` (timestamped when read), like the CloudWatch agent shipping application logs and
dmesg. Lines are data only, never interpreted.

SIGTERM/SIGINT: SIGTERM to the child's process group, SIGKILL to it after ``--grace-s``; then drain the
output, flush CloudWatch and exit. Exit status is the child's (128+N when it died of signal N).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TextIO

from trainer.logship import CloudWatchShipper, KmsgTailer, fallback_urgency, policy_urgency

# After the child exits, keep draining at most this long: grandchildren that outlive it (e.g. orphaned
# workers) could otherwise hold the pipe open forever.
DRAIN_AFTER_EXIT_S = 5.0
_POLL_S = 0.2


def _agent_note(msg: str) -> None:
    """Diagnostics of the agent itself go to stderr, never into the shipped stream."""
    sys.stderr.write(f"node_agent: {msg}\n")
    sys.stderr.flush()


class LineSink:
    """Fans each line out to the log file, stdout and CloudWatch, serialised across producers."""

    def __init__(self, log_file: Path | None, echo: TextIO | None, shipper: CloudWatchShipper | None) -> None:
        self._file: TextIO | None = None
        if log_file is not None:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(log_file, "a", encoding="utf-8")  # noqa: SIM115 -- closed in close()
        self._echo = echo
        self._shipper = shipper
        self._lock = threading.Lock()

    def __call__(self, line: str) -> None:
        with self._lock:
            if self._file is not None:
                self._file.write(line + "\n")
                self._file.flush()
            if self._echo is not None:
                try:
                    self._echo.write(line + "\n")
                    self._echo.flush()
                except (OSError, ValueError):
                    self._echo = None  # our stdout went away; keep shipping regardless
            if self._shipper is not None:
                self._shipper.ship(line)

    def close(self) -> None:
        with self._lock:
            if self._shipper is not None:
                try:
                    self._shipper.close()
                except Exception as exc:
                    _agent_note(f"CloudWatch flush failed: {type(exc).__name__}: {exc}")
            if self._file is not None:
                self._file.close()


class ChildRunner:
    """Runs the command in a new session and pumps its merged output into ``on_line``."""

    def __init__(
        self, cmd: list[str], env: dict[str, str], on_line: Callable[[str], None], grace_s: float
    ) -> None:
        self._cmd = cmd
        self._env = env
        self._on_line = on_line
        self._grace_s = grace_s
        self._stop_requested = threading.Event()

    def request_stop(self) -> None:
        """Async-signal-safe: only sets a flag; the pump loop does the signalling."""
        self._stop_requested.set()

    def _signal_group(self, pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)

    def run(self) -> int:
        """Run to completion; returns the child's exit status (128+N for death by signal N)."""
        proc = subprocess.Popen(
            self._cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self._env,
            start_new_session=True,
        )
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        buf = b""
        kill_at: float | None = None
        killed = False
        exited_at: float | None = None
        while True:
            now = time.monotonic()
            if self._stop_requested.is_set() and kill_at is None and proc.poll() is None:
                self._signal_group(proc.pid, signal.SIGTERM)
                kill_at = now + self._grace_s
            if kill_at is not None and not killed and now >= kill_at and proc.poll() is None:
                self._signal_group(proc.pid, signal.SIGKILL)
                killed = True
            readable, _, _ = select.select([fd], [], [], _POLL_S)
            if readable:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break  # EOF: every writer of the pipe is gone
                *lines, buf = (buf + chunk).split(b"\n")
                for raw in lines:
                    self._on_line(raw.decode("utf-8", errors="replace").rstrip("\r"))
            if proc.poll() is not None:
                exited_at = exited_at if exited_at is not None else now
                if now - exited_at > DRAIN_AFTER_EXIT_S:
                    _agent_note("child exited but its output pipe is still open; stop draining")
                    break
        if buf:
            self._on_line(buf.decode("utf-8", errors="replace").rstrip("\r"))
        proc.stdout.close()
        rc = proc.wait()
        return 128 - rc if rc < 0 else rc


def _urgency(dirs: list[Path] | None) -> Callable[[str], bool]:
    """The shipper's "send this line now" test: the policies' own rules, or a coarse fallback."""
    try:
        if dirs is None:
            from supervisor.config import default_policy_dir

            dirs = [default_policy_dir()]
        return policy_urgency(dirs)
    except Exception as exc:  # shipping must go on; it only loses the early send
        _agent_note(
            f"urgent-line policies unavailable, using the fallback pattern: {type(exc).__name__}: {exc}"
        )
        return fallback_urgency


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Split ``argv`` at the first ``--``: agent options before it, the child command after it."""
    if "--" not in argv:
        raise SystemExit("usage: python -m trainer.node_agent [options] -- CMD ARGS...")
    split = argv.index("--")
    own, cmd = argv[:split], argv[split + 1 :]
    p = argparse.ArgumentParser(prog="python -m trainer.node_agent", description=__doc__)
    p.add_argument("--job", required=True)
    p.add_argument("--node", required=True)
    p.add_argument("--log-group", required=True)
    p.add_argument("--endpoint-url", default=None, help="CloudWatch endpoint (also passed to the job)")
    p.add_argument("--region", default=os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")
    p.add_argument("--kmsg-file", type=Path, default=None, help="default ./kmsg-<node>.log")
    p.add_argument("--log-file", type=Path, default=None)
    p.add_argument("--no-cloudwatch", action="store_true")
    p.add_argument("--grace-s", type=float, default=10.0)
    p.add_argument(
        "--urgent-policies",
        type=Path,
        action="append",
        default=None,
        help="policy dir(s) whose rules mark a line to ship at once (default: the shipped packs)",
    )
    args = p.parse_args(own)
    if not cmd:
        p.error("missing command after --")
    return args, cmd


def main(argv: list[str] | None = None) -> int:
    args, cmd = parse_args(sys.argv[1:] if argv is None else argv)
    kmsg_file: Path = (args.kmsg_file or Path(f"kmsg-{args.node}.log")).resolve()

    shipper: CloudWatchShipper | None = None
    if not args.no_cloudwatch:
        try:
            shipper = CloudWatchShipper(
                args.log_group,
                args.node,
                args.region,
                args.endpoint_url,
                urgent=_urgency(args.urgent_policies),
            )
        except Exception as exc:  # the job must run even when logs cannot be shipped
            _agent_note(f"CloudWatch shipping disabled: {type(exc).__name__}: {exc}")
    sink = LineSink(args.log_file, sys.stdout, shipper)

    env = dict(os.environ)
    env.update(FTSUP_NODE=args.node, FTSUP_JOB=args.job, FTSUP_KMSG_FILE=str(kmsg_file), PYTHONUNBUFFERED="1")
    if args.endpoint_url:
        env["FTSUP_CW_ENDPOINT"] = args.endpoint_url

    runner = ChildRunner(cmd, env, sink, args.grace_s)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        runner.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    tailer = KmsgTailer(kmsg_file, sink)
    tailer.start()
    try:
        rc = runner.run()
    finally:
        tailer.stop()
        sink.close()
    _agent_note(f"child exited with status {rc}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
