"""Replaying the same stream split into batches anywhere gives the same decisions.

The sources hand the engine whatever each poll returned; where a poll boundary falls must never
change the root cause or the verdict. The stream is the real output of our trainer's faults
(tests/data/fault_logs), both nodes interleaved in time.
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.classify.policy import PolicySet, load_policies
from supervisor.config import default_policy_dir
from supervisor.engine import Engine
from supervisor.journal import Journal
from supervisor.vocabulary import LogEvent, Mode, SourceBatch, SourceHealth
from tests.builders import T0
from tests.unit.test_engine import Clock, RecordingActuator

DATA = Path(__file__).resolve().parents[1] / "data" / "fault_logs"
KINDS = ("collective_timeout", "xid79", "code_bug", "sigkill")


def stream(kind: str) -> list[LogEvent]:
    events = []
    for node in ("node-0", "node-1"):
        lines = (DATA / f"{kind}.{node}.log").read_text().splitlines()
        # Both nodes' lines span the same few seconds, in file order.
        events += [LogEvent(f"{node}-{i}", node, T0 + 10 + i * 0.01, text) for i, text in enumerate(lines)]
    return sorted(events, key=lambda e: (e.timestamp, e.event_id))


POLICY: PolicySet = load_policies([default_policy_dir()])
STREAMS = {kind: stream(kind) for kind in KINDS}


def replay(events: list[LogEvent], cuts: list[int]) -> list[tuple[str, str, str]]:
    with tempfile.TemporaryDirectory() as tmp:
        clock = Clock()
        journal = Journal(Path(tmp) / "journal.db")
        engine = Engine(
            job="job", policy=POLICY, journal=journal, actuator=RecordingActuator(clock), mode=Mode.OBSERVE,
            settle_s=4.0, clock=clock,
        )  # fmt: skip
        bounds = [0, *sorted(set(cuts)), len(events)]
        for start, end in itertools.pairwise(bounds):
            batch = tuple(events[start:end])
            if not batch:
                continue
            clock.now = batch[-1].timestamp + 1.0  # read back about a second after the last line
            engine.process_batch(SourceBatch("logs", batch, (), None, SourceHealth("logs", True, clock.now)))
            engine.tick()
        for _ in range(120):  # the engine keeps ticking: traceback units close, incidents settle
            clock.now += 0.5
            engine.tick()
        out = [
            (h.incident.root_cause.rule, h.incident.root_cause.node, h.decision.verdict.value)
            for h in engine.snapshot().handled
        ]
        journal.close()
        return out


@pytest.mark.parametrize("kind", KINDS)
def test_one_batch_replay_decides_each_fault_once(kind: str) -> None:
    decisions = replay(STREAMS[kind], [])
    assert len(decisions) == 1, decisions


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_any_split_gives_the_same_decisions(kind: str, data: st.DataObject) -> None:
    events = STREAMS[kind]
    cuts = data.draw(st.lists(st.integers(min_value=1, max_value=len(events) - 1), max_size=12))
    assert replay(events, cuts) == replay(events, [])
