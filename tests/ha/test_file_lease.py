"""FileLease: one leader per machine; fencing tokens grow; a SIGKILLed leader is replaced within lease_s."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from supervisor.ha import FileLease, Leadership
from supervisor.vocabulary import Action, Verdict

pytestmark = pytest.mark.chaos

ROOT = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_holder_tokens_grow_and_a_deposed_holder_cannot_renew(tmp_path: Path) -> None:
    clock = Clock()
    a = FileLease(tmp_path / "lease", lease_s=10, holder="a", clock=clock, monotonic=clock)
    b = FileLease(tmp_path / "lease", lease_s=10, holder="b", clock=clock, monotonic=clock)
    assert a.acquire() == 1
    assert b.acquire() is None
    assert a.current_holder() == ("a", 1)
    clock.now += 5
    assert a.renew() and b.acquire() is None
    clock.now += 9  # renewed at +5: still held at +14
    assert b.acquire() is None
    clock.now += 2  # a stopped renewing for more than lease_s
    assert a.valid_for() == 0 and a.token is None  # a stops believing before b can take over
    assert b.acquire() == 2
    assert not a.renew()  # deposed: its token is gone for good
    assert a.acquire() is None
    b.release()
    assert a.acquire() == 3  # a release frees it at once; the token still grows


def test_leadership_fences_actions_of_a_deposed_leader(tmp_path: Path) -> None:
    clock = Clock()
    a = FileLease(tmp_path / "lease", lease_s=10, holder="a", clock=clock, monotonic=clock)
    b = FileLease(tmp_path / "lease", lease_s=10, holder="b", clock=clock, monotonic=clock)
    leader = Leadership(a, renew_every_s=2)
    assert leader.wait(threading.Event())
    action = Action(Verdict.RESTART, "job", "inc-1", "inc-1:restart")
    assert leader.admit(action) == 1
    clock.now += 11
    assert b.acquire() == 2
    assert leader.admit(action) is None
    assert leader.lost.is_set()
    assert leader.admitted == [("inc-1:restart", 1)]


HOLDER = textwrap.dedent(
    """
    import sys, time
    import structlog
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    from supervisor.ha import FileLease
    lease = FileLease(sys.argv[1], lease_s=float(sys.argv[2]))
    while (token := lease.acquire()) is None:
        time.sleep(0.1)
    print("LEADER", token, time.time(), flush=True)
    while True:
        time.sleep(0.3)
        if not lease.renew():
            print("LOST", flush=True)
            sys.exit(1)
    """
)


def _spawn(path: Path, lease_s: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), str(lease_s)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_two_processes_one_leader_and_takeover_after_sigkill(tmp_path: Path) -> None:
    lease_s = 2.0
    path = tmp_path / "lease"
    first = _spawn(path, lease_s)
    second: subprocess.Popen[str] | None = None
    try:
        assert first.stdout is not None
        line = first.stdout.readline().split()
        assert line[:2] == ["LEADER", "1"]
        second = _spawn(path, lease_s)
        assert second.stdout is not None
        os.set_blocking(second.stdout.fileno(), False)
        time.sleep(lease_s * 1.5)  # the first renews: the second never gets it
        assert second.stdout.readline() == ""
        assert second.poll() is None
        killed_at = time.time()
        first.send_signal(signal.SIGKILL)
        first.wait()
        os.set_blocking(second.stdout.fileno(), True)
        words = second.stdout.readline().split()
        assert words[:2] == ["LEADER", "2"]
        assert float(words[2]) - killed_at <= lease_s + 1.0  # within lease_s (+ its poll interval)
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
