"""Hostile log events through the daemon's path: StreamClassifier / LogClassifier, then the engine.

Hazards: a crash on odd bytes (1 MiB lines, invalid UTF-8, lone surrogates, NUL, ANSI escapes, CR
progress bars); misattribution (a line on node-0's stream that *says* "node-7 ... Xid 79" is node-0's
fault, never node-7's); a stream name with shell metacharacters reaching the actuator. The engine
test drives `Engine.process_batch` with a recording actuator (as tests/unit/test_engine.py does) and
checks that every action names a member of the job or no node at all.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.classify.matcher import MAX_EVIDENCE_CHARS, MAX_LINE_BYTES, LogClassifier, clean_text
from supervisor.classify.policy import PolicySet, load_policies
from supervisor.classify.units import StreamClassifier
from supervisor.config import default_policy_dir
from supervisor.engine import Engine
from supervisor.journal import Journal
from supervisor.vocabulary import Cursor, LogEvent, Mode, SourceBatch, SourceHealth, Verdict
from tests.builders import T0
from tests.fuzz.support import bounded, fuzz_settings
from tests.unit.test_engine import Clock, RecordingActuator, run_action

pytestmark = pytest.mark.fuzz

XID = "NVRM: Xid (PCI:0000:3b:00): 79, pid=16395, name=python, GPU has fallen off the bus."
FAULT_LINES = [
    f"[ 1536.275317] {XID}",
    "[rank0]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
    "RuntimeError: NCCL communicator was aborted on rank 3.",
    "Traceback (most recent call last):",
    '  File "train.py", line 9, in <module>',
    "    raise RuntimeError('NCCL timeout')",
    "KeyError: 'labels'",
    "terminate called after throwing an instance of 'c10::Error'",
    "  what():  CUDA error: an illegal memory access was encountered",
    "The above exception was the direct cause of the following exception:",
    "Exception ignored in: <function _MultiProcessingDataLoaderIter.__del__ at 0x7f>",
    '{"event": "step", "step": 12, "loss": 2.5}',
    "NCCL INFO NCCL_IB_TIMEOUT set by environment to 22",
    "",
]
HOSTILE_NAMES = [
    "node-0; rm -rf /",
    "$(reboot)",
    "`id`",
    "node-1\nnode-2",
    "--help",
    "-rf",
    "node 1",
    "NodeName=node-1 State=RESUME",
    "node-1,spec.nodeName!=x",
    "../../etc/passwd",
    "a/b/i-0123456789abcdef0",
    "ü",
    "\x00",
    "'\"",
    "x" * 600,
]
DECORATIONS = [
    "\x1b[31m",
    "\x1b[0m",
    "\x1b]0;title\x07",
    "\r",
    "\r\n",
    "\x00",
    "\ud800",
    "\udcff",
    "\t",
    "\x7f",
]


def _pad(n: int) -> str:
    return "=" * n


line_texts = st.one_of(
    st.sampled_from(FAULT_LINES),
    st.text(max_size=200),
    st.tuples(st.sampled_from([*HOSTILE_NAMES, "node-7", "node-1"]), st.sampled_from(FAULT_LINES)).map(
        lambda t: f"{t[0]} {t[1]}"  # a line crafted to look like another node's
    ),
    st.tuples(st.sampled_from(FAULT_LINES), st.lists(st.sampled_from(DECORATIONS), max_size=6)).map(
        lambda t: "".join(t[1]) + t[0] + "".join(reversed(t[1]))
    ),
    st.tuples(st.sampled_from(FAULT_LINES), st.sampled_from([1000, 300_000, MAX_LINE_BYTES + 7])).map(
        lambda t: t[0] + _pad(t[1]) if t[1] < MAX_LINE_BYTES else _pad(t[1]) + t[0]  # the cap cuts it
    ),
    st.sampled_from(["\r".join(f"{p}% |{'#' * (p // 5)}" for p in range(0, 101, 7)) + "\r" + XID]),
)
line_payloads = st.one_of(
    line_texts.map(lambda s: s),
    line_texts.map(lambda s: s.encode("utf-8", "surrogatepass")),  # bytes: lone surrogates are invalid UTF-8
    st.binary(max_size=300),
)
streams = st.sampled_from(["node-0", "node-1", *HOSTILE_NAMES])


@pytest.fixture(scope="module")
def policy() -> PolicySet:
    return load_policies([default_policy_dir()])


@pytest.fixture(scope="module")
def classifier(policy: PolicySet) -> LogClassifier:
    return LogClassifier(policy)


def _check_signals(signals: list[Any], fed: dict[str, str]) -> None:
    for s in signals:
        assert s.event_id in fed, s
        assert s.node == fed[s.event_id], (s.node, fed[s.event_id])  # the stream it came from, only
        assert len(s.evidence) <= MAX_EVIDENCE_CHARS + 2
        s.evidence.encode("utf-8")  # never a lone surrogate in what is journaled / alerted


@fuzz_settings(max_examples=150)
@given(items=st.lists(st.tuples(streams, line_payloads), max_size=40))
def test_hostile_lines_never_crash_or_misattribute(classifier: LogClassifier, items: list[Any]) -> None:
    fed = {f"e{i}": node for i, (node, _) in enumerate(items)}
    many = StreamClassifier(classifier)
    one = StreamClassifier(classifier)
    with bounded():
        texts = [t if isinstance(t, str) else t.decode("utf-8", "replace") for _, t in items]
        batch = [
            (node, text, T0 + i, f"e{i}", None)
            for i, ((node, _), text) in enumerate(zip(items, texts, strict=True))
        ]
        got_many = many.feed_many(batch, now=T0) + many.flush(T0 + 10)
        got_one: list[Any] = []
        for i, (node, payload) in enumerate(items):
            got_one += one.feed(node, payload, T0 + i, now=T0, event_id=f"e{i}")
        got_one += one.flush(T0 + 10)
    _check_signals(got_many, fed)
    _check_signals(got_one, fed)
    # feed_many is feed over many lines (str payloads; bytes are decoded the same way by both).
    if all(isinstance(t, str) for _, t in items):
        assert [(s.rule, s.node, s.event_id) for s in got_many] == [
            (s.rule, s.node, s.event_id) for s in got_one
        ]


@pytest.mark.parametrize(
    "text",
    [
        "x" * (MAX_LINE_BYTES * 2),
        "é" * MAX_LINE_BYTES,
        XID + "\x00" * MAX_LINE_BYTES,
        "\x1b[" * (MAX_LINE_BYTES // 2),
        "\r" * MAX_LINE_BYTES,
        "\ud800" * 100_000 + XID,
    ],
    ids=["2MiB", "multibyte", "nul", "ansi-bomb", "cr", "surrogates"],
)
def test_megabyte_lines_are_capped_and_cleaned(classifier: LogClassifier, text: str) -> None:
    with bounded(20):
        clean = clean_text(text)
        assert len(clean.encode("utf-8")) <= MAX_LINE_BYTES
        assert "\x00" not in clean and "\x1b" not in clean and "\r" not in clean
        sc = StreamClassifier(classifier)
        signals = sc.feed_many([("node-0", text, T0, "e0", None)]) + sc.flush(T0 + 10)
    _check_signals(signals, {"e0": "node-0"})


def test_a_line_naming_another_node_is_the_fault_of_the_stream_it_came_from(
    classifier: LogClassifier,
) -> None:
    sc = StreamClassifier(classifier)
    lines = [
        ("node-0", f"node-7 {XID}", T0, "a", None),
        ("node-0", f"[node-7] kernel: {XID}", T0 + 1, "b", None),
        ("node-0", f"\x1b[1mnode-7\x1b[0m\r{XID}", T0 + 2, "c", None),
    ]
    signals = sc.feed_many(lines) + sc.flush(T0 + 10)
    assert signals and {s.node for s in signals} == {"node-0"}
    assert all(s.rule == signals[0].rule for s in signals)


# ----------------------------------------------------------------------------- the engine


def _engine(tmp: Path, policy: PolicySet) -> tuple[Engine, RecordingActuator, Clock]:
    clock = Clock()
    actuator = RecordingActuator(clock)
    engine = Engine(
        job="job", policy=policy, journal=Journal(tmp / "journal.db"), actuator=actuator,
        mode=Mode.ACT, settle_s=4.0, clock=clock,
    )  # fmt: skip
    engine.launch()
    return engine, actuator, clock


def _batch(events: list[tuple[str, float, str]], n: int) -> SourceBatch:
    logs = tuple(LogEvent(f"e{n}-{i}", node, ts, text) for i, (node, ts, text) in enumerate(events))
    return SourceBatch("logs", logs, (), Cursor("logs", f'{{"n": {n}}}'), SourceHealth("logs", True, T0))


def _drain_actions(engine: Engine, actuator: RecordingActuator) -> None:
    while not engine._actions.empty():
        run_action(engine, actuator)


@fuzz_settings(max_examples=40)
@given(
    batches=st.lists(
        st.lists(
            st.tuples(streams, st.floats(0, 30), line_texts.filter(lambda t: len(t) < 5000)), max_size=12
        ),
        min_size=1,
        max_size=4,
    )
)
def test_engine_acts_only_on_members_of_the_job(policy: PolicySet, batches: list[Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        engine, actuator, clock = _engine(Path(tmp), policy)
        try:
            with bounded(15):
                for n, events in enumerate(batches):
                    clock.now = T0 + 30 * (n + 1)
                    members_before = set(actuator.nodes)
                    engine.process_batch(
                        _batch(
                            [(nd, T0 + 30 * n + dt, t) for nd, dt, t in events],
                            n,
                        )
                    )
                    clock.now += 10
                    engine.tick()
                    for action in list(engine._actions.queue):
                        if action is not None and action.node is not None:
                            assert action.node in members_before, action
                    _drain_actions(engine, actuator)
        finally:
            engine.journal.close()
    for action in actuator.applied:
        assert action.node is None or action.node in {"node-0", "node-1", "node-2"}, action
        assert action.kind is not Verdict.CORDON_AND_RESTART or action.node in {"node-0", "node-1"}


def test_engine_cordons_the_stream_that_reported_the_xid_not_the_node_it_names(
    tmp_path: Path, policy: PolicySet
) -> None:
    engine, actuator, clock = _engine(tmp_path, policy)
    clock.now = T0 + 5
    engine.process_batch(_batch([("node-0", T0 + 4, f"node-1 kernel: [ 1536.275317] {XID}")], 0))
    clock.now = T0 + 20
    engine.tick()
    _drain_actions(engine, actuator)
    (action,) = actuator.applied
    assert action.kind is Verdict.CORDON_AND_RESTART and action.node == "node-0"
    engine.journal.close()


def test_a_stream_outside_the_job_never_gets_a_node_action(tmp_path: Path, policy: PolicySet) -> None:
    engine, actuator, clock = _engine(tmp_path, policy)
    clock.now = T0 + 5
    engine.process_batch(_batch([("node-1; scontrol update NodeName=node-0 State=DRAIN", T0 + 4, XID)], 0))
    clock.now = T0 + 20
    engine.tick()
    _drain_actions(engine, actuator)
    assert all(a.node is None for a in actuator.applied)
    assert actuator.cordoned == []
    engine.journal.close()


def test_a_stream_name_with_a_lone_surrogate_does_not_crash_the_engine(
    tmp_path: Path, policy: PolicySet
) -> None:
    engine, _actuator, clock = _engine(tmp_path, policy)
    clock.now = T0 + 5
    engine.process_batch(_batch([("node-\ud800", T0 + 4, XID)], 0))  # JSON "\\ud800" from the API
    clock.now = T0 + 20
    engine.tick()
    engine.journal.close()


def test_a_progress_line_with_a_lone_surrogate_does_not_crash_the_engine(
    tmp_path: Path, policy: PolicySet
) -> None:
    engine, _actuator, clock = _engine(tmp_path, policy)
    clock.now = T0 + 5
    engine.process_batch(_batch([("node-0", T0 + 4, '\ud800{"event": "step", "step": 3}')], 0))
    engine.journal.close()
