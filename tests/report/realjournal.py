"""A journal the production engine writes while it reads real trainer fault logs.

The lines are the real output of our trainer's faults (tests/data/fault_logs, both nodes), fed through
`supervisor.engine.Engine` in act mode with the in-memory actuator of the engine tests, so every record
(attempts, steps, checkpoints, incidents, decisions, actions) is the engine's own. Three runs are chained
as the three attempts of one job: a collective timeout (restart), Xid 79 on node-1 (cordon, restart on the
spare node-2), a code bug (halt). Each run's lines keep their own time intervals (the trainer's ``ts``) and
are shifted to start a second after the engine relaunched the job, and end where the engine acted (the
action stops the processes); a line without ``ts`` (tracebacks,
torchrun, kernel lines) takes its own glog time prefix when it has one, else the time of the line before
it in the same file.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

from supervisor.classify.policy import load_policies
from supervisor.config import default_policy_dir
from supervisor.engine import Engine
from supervisor.journal import Journal
from supervisor.vocabulary import LogEvent, Mode, SourceBatch, SourceHealth
from tests.unit.test_engine import Clock, RecordingActuator, run_action

DATA = Path(__file__).resolve().parents[1] / "data" / "fault_logs"
SCENARIO = ("collective_timeout", "xid79", "code_bug")
JOB = "job"


_GLOG = re.compile(r"^\[?[IWEF](\d\d)(\d\d) (\d\d):(\d\d):(\d\d(?:\.\d+)?) ")


def _line_time(text: str, last: float | None) -> float | None:
    """A line's own time: the trainer's ``ts``, or a torch/glog prefix (``W1128 04:41:17.109950 ...``,
    bracketed or not; UTC, on the date of the line before it); None for lines that carry none."""
    if text.startswith("{"):
        try:
            return float(json.loads(text)["ts"])
        except (ValueError, KeyError, TypeError):
            return None
    m = _GLOG.match(text)
    if m is None or last is None:
        return None
    day = datetime.fromtimestamp(last, tz=UTC)
    month, dom, hh, mm, ss = m.groups()
    whole = datetime(day.year, int(month), int(dom), int(hh), int(mm), tzinfo=UTC).timestamp()
    return max(last, whole + float(ss))


def _events(kind: str, nodes: tuple[str, ...], start: float) -> list[LogEvent]:
    """The run's lines of both source nodes (node-0, node-1), renamed to the attempt's members and
    shifted so the earliest line is at `start`."""
    raw: list[tuple[str, int, float, str]] = []
    for src, node in zip(("node-0", "node-1"), nodes, strict=True):
        last: float | None = None
        pending: list[tuple[int, str]] = []
        for i, text in enumerate((DATA / f"{kind}.{src}.log").read_text().splitlines()):
            ts = _line_time(text, last)
            if ts is not None:
                last = ts
                for j, t in pending:  # lines before the first JSON line take its time
                    raw.append((node, j, ts, t))
                pending = []
            if last is None:
                pending.append((i, text))
            else:
                raw.append((node, i, last, text))
    origin = min(t for _, _, t, _ in raw)
    events = [
        LogEvent(f"{kind}-{node}-{i}", node, start + (t - origin) + i * 1e-6, text)
        for node, i, t, text in raw
    ]
    return sorted(events, key=lambda e: (e.timestamp, e.event_id))


def build_real_journal(path: Path, t0: float = 1_800_000_000.0) -> Path:
    """Writes the journal at `path` (a new file) and returns it."""
    clock = Clock()
    clock.now = t0
    journal = Journal(path)
    actuator = RecordingActuator(clock)
    engine = Engine(
        job=JOB,
        policy=load_policies([default_policy_dir()]),
        journal=journal,
        actuator=actuator,
        mode=Mode.ACT,
        settle_s=4.0,
        clock=clock,
    )
    engine.launch()
    for kind in SCENARIO:
        events = _events(kind, tuple(actuator.nodes), clock.now + 1.0)
        k = 0
        while engine._actions.empty():
            if k < len(events):  # polls of ten lines, read back a second after the last one
                batch = tuple(events[k : k + 10])
                k += 10
                clock.now = max(clock.now, batch[-1].timestamp + 1.0)
                health = SourceHealth("logs", True, clock.now)
                engine.process_batch(SourceBatch("logs", batch, (), None, health))
            else:  # the stream ended: incidents settle and are decided, tracebacks close
                clock.now += 0.25
                assert clock.now < events[-1].timestamp + 120, f"{kind}: no action was decided"
            engine.tick()
        # The action stops the job's processes: the run's later lines were never written.
        clock.now += 0.5
        run_action(engine, actuator)
    journal.close()
    return path
