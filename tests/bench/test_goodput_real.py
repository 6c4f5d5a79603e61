"""bench/goodput_real.py, its pure parts: the fault schedule, the time scaling and the ETTR / token
accounting from the trainer's step lines; and the persistent fault request it injects (trainer.faults).
The real runs themselves are `make bench`'s (minutes of torchrun on every core)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import goodput_real as g  # noqa: E402

from supervisor.classify.policy import load_policies  # noqa: E402
from trainer.faults import FaultInjector, FaultRequest, write_fault_request  # noqa: E402
from trainer.jsonlog import JsonLogger  # noqa: E402

# ------------------------------------------------------------------------------------------ schedule


def test_schedule_is_seeded_and_spread_over_training_time() -> None:
    a = g.make_schedule(7)
    assert a == g.make_schedule(7)
    assert a != g.make_schedule(8)
    assert Counter(f.kind for f in a) == Counter(g.FAULT_MIX)
    times = [f.train_s for f in a]
    assert times[0] == 8.0  # first_s
    assert times == sorted(set(times))  # strictly increasing
    for i, t in enumerate(times):  # every_s apart, +/- 20 % jitter
        assert abs(t - (8.0 + 9.0 * i)) <= 0.2 * 9.0 + 1e-9
    assert Counter(f.member for f in a) == Counter({0: 3, 1: 2})  # dealt evenly over 2 members
    assert [f.index for f in a] == list(range(len(a)))
    assert {f.kind for f in a if f.persistent} == {"xid79"}
    assert len({f.fault_id for f in a}) == len(a)


def test_schedule_edge_cases() -> None:
    assert g.make_schedule(1, kinds=()) == ()
    one = g.make_schedule(1, kinds=("hang",), first_s=10.0)
    assert [(f.train_s, f.kind, f.member) for f in one] == [(10.0, "hang", 0)]
    for bad in ({"first_s": 0.0}, {"every_s": -1.0}, {"jitter": 0.5}):
        with pytest.raises(ValueError):
            g.make_schedule(1, **bad)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ scaling


def test_scaled_durations_follow_the_simulator() -> None:
    from simulate import Params

    p = Params()
    s = g.Scaled.of(1 / 60)
    assert s.collective_timeout_s == pytest.approx(p.nccl_timeout_s / 60, abs=1e-3)
    assert s.human_s == pytest.approx((p.human_ack_day.p50_s + p.human_triage_s) / 60, abs=1e-3)
    assert s.human_node_s == pytest.approx((p.human_ack_day.p50_s + p.human_triage_node_s) / 60, abs=1e-3)
    assert s.relaunch_at_scale_s == pytest.approx(p.restart_s / 60, abs=1e-3)
    assert s.hang_floor_s == pytest.approx(g.shipped_hang_floor_s() / 60, abs=1e-3)
    assert s.stall_floor_s == max(s.hang_floor_s, g.STALL_FLOOR_MIN_S)
    slow = g.Scaled.of(1.0)  # unscaled: the shipped floor is above the machine's minimum
    assert slow.stall_floor_s == g.shipped_hang_floor_s()


def test_scaled_policies_load_and_scale_only_durations(tmp_path: Path) -> None:
    shipped = load_policies([ROOT / "policies" / "budgets.yaml"]).budgets
    (tmp_path / "budgets.yaml").write_text(g.scaled_budgets_yaml(0.1))
    (tmp_path / "training.yaml").write_text(g.scaled_training_yaml(33.0))
    ps = load_policies([tmp_path / "training.yaml", tmp_path / "budgets.yaml"])
    b = ps.budgets
    assert b.restart.max == shipped.restart.max
    assert b.restart.within_s == pytest.approx(shipped.restart.within_s * 0.1, abs=1e-3)
    assert b.restart.backoff_max_s == pytest.approx(shipped.restart.backoff_max_s * 0.1, abs=1e-3)
    assert b.cordon.max_fraction == shipped.cordon.max_fraction
    assert b.flapping.min_interval_s == pytest.approx(shipped.flapping.min_interval_s * 0.1, abs=1e-3)
    assert b.lemon.watch_after_return_s == pytest.approx(shipped.lemon.watch_after_return_s * 0.1, abs=1e-3)
    hang = ps.rule("no-step-progress")
    assert hang.match.stalled_for == 33.0
    original = load_policies([ROOT / "policies" / "training.yaml"])
    others = {r.name: r.match for r in original.rules if r.name != "no-step-progress"}
    assert {r.name: r.match for r in ps.rules if r.name != "no-step-progress"} == others


# ------------------------------------------------------------------------------------------ accounting

T0 = 1_000.0


def line(event: str, ts: float, rank: int = 0, attempt: int = 0, **fields: object) -> str:
    rec = {"ts": ts, "job": "j", "node": f"node-{rank}", "rank": rank, "local_rank": 0, "attempt": attempt}
    return json.dumps({**rec, "event": event, **fields})


def process(
    attempt: int, start: float, resume: int | None, steps: range, ckpts: tuple[int, ...], dt: float = 0.25
) -> list[str]:
    """One rank-0 process: start, resume (or fresh start), a step line every dt, checkpoints."""
    out = [line("start", start, attempt=attempt, world_size=2)]
    t = start + 1.0
    out.append(line("fresh_start", t, attempt=attempt, step=0) if resume is None else
               line("resume", t, attempt=attempt, step=resume, checkpoint="x"))  # fmt: skip
    for s in steps:
        t += dt
        out.append(line("step", t, attempt=attempt, step=s, loss=1.0, step_time_s=0.2, tokens_per_s=1.0))
        out.append(line("step", t, rank=1, attempt=attempt, step=s, loss=1.0, step_time_s=0.2))
        if s in ckpts:
            out.append(line("checkpoint_saved", t + 0.01, attempt=attempt, step=s))
    return out


def test_segments_keep_rank0_processes_and_skip_noise() -> None:
    lines = [
        "some torchrun warning",
        *process(0, T0, None, range(1, 4), (3,)),
        '{"ts": broken',
        *process(1, T0 + 10, 3, range(4, 6), ()),
    ]
    segs = g.segments_from_lines(lines)
    assert [(s.resume_step, [r.step for r in s.steps]) for s in segs] == [(0, [1, 2, 3]), (3, [4, 5])]
    assert segs[0].checkpoints == ((3, pytest.approx(T0 + 1.76)),)
    assert segs[0].world_size == 2
    assert segs[0].steps[0].dur == 0.2  # a process's first step: its own step_time_s
    assert segs[0].steps[1].dur == pytest.approx(0.25)  # then the time between step lines


def test_account_counts_work_redone_after_a_restart_once() -> None:
    # attempt 0 trains 1..12 (checkpoints 5, 10) and dies; attempt 1 resumes from 10 and trains 11..20.
    segs = g.segments_from_lines(
        [*process(0, T0, None, range(1, 13), (5, 10)), *process(1, T0 + 20, 10, range(11, 21), (15, 20))]
    )
    acc = g.account(segs, T0, 100.0, tokens_per_step=1024)
    assert acc.kept_steps == 20 and acc.tokens == 20 * 1024
    assert acc.trained_steps == 22 and acc.lost_steps == 2 and acc.unsaved_steps == 0
    assert acc.productive_s == pytest.approx(2 * 0.2 + 18 * 0.25, abs=0.01)
    assert acc.ettr == pytest.approx(acc.productive_s / 100.0, abs=1e-4)
    assert acc.lost_s == pytest.approx(0.5, abs=0.01)
    assert acc.processes == 2
    assert acc.first_step_s == pytest.approx(1.25)
    assert acc.outages_s == (pytest.approx(21.25 - 4.0),)  # last step 12 at T0+4.0 -> step 11 at T0+21.25


def test_account_resume_from_an_older_checkpoint_loses_more() -> None:
    # The checkpoint of step 10 was not usable: attempt 1 resumes from 5, so 6..12 are redone.
    segs = g.segments_from_lines(
        [*process(0, T0, None, range(1, 13), (5, 10)), *process(1, T0 + 20, 5, range(6, 16), (10, 15))]
    )
    acc = g.account(segs, T0, 100.0, tokens_per_step=10)
    assert acc.kept_steps == 15 and acc.lost_steps == 7 and acc.tokens == 150


def test_account_stops_at_the_window_and_its_last_checkpoint() -> None:
    segs = g.segments_from_lines(process(0, T0, None, range(1, 41), (5, 10, 15, 20, 25, 30, 35, 40)))
    # Step s is logged at T0 + 1 + 0.25 s. A 5.9 s window sees steps 1..19; checkpoint 15 covers 1..15.
    acc = g.account(segs, T0, 5.9, tokens_per_step=1)
    assert acc.trained_steps == 19 and acc.kept_steps == 15 and acc.unsaved_steps == 4
    assert acc.lost_steps == 0
    # A process that starts after the window is ignored; nothing trained: ETTR 0.
    late = g.segments_from_lines(process(0, T0 + 50, None, range(1, 5), (2,)))
    none = g.account(late, T0, 10.0, tokens_per_step=1)
    assert none.ettr == 0.0 and none.tokens == 0 and none.processes == 0 and none.first_step_s is None


def test_ratio() -> None:
    assert g.ratio(0.3, 0.6) == 0.5
    assert g.ratio(0.3, 0.0) is None


def test_log_tail_sees_each_nodes_latest_step(tmp_path: Path) -> None:
    d = tmp_path / "nodes" / "node-0"
    d.mkdir(parents=True)
    log = d / "attempt-0.log"
    log.write_text(line("step", T0, step=1) + "\n" + line("step", T0 + 1, step=2)[:20])  # a partial line
    tail = g.LogTail(tmp_path)
    assert tail.training(["node-0"], T0 + 1.0)
    assert not tail.training(["node-0"], T0 + g.TRAINING_RECENT_S + 0.5)
    assert not tail.training(["node-0", "node-1"], T0 + 0.5)  # node-1 never stepped
    with open(log, "a") as f:
        f.write(line("step", T0 + 1, step=2)[20:] + "\n")
    tail.poll()
    assert tail.last_step_ts["node-0"] == T0 + 1


# ------------------------------------------------------------------------------------------ dead node


def injector(fault_dir: Path, node: str, attempt: int) -> FaultInjector:
    log = JsonLogger("j", node, 0, 0, attempt, stream=open("/dev/null", "w"))  # noqa: SIM115
    return FaultInjector(fault_dir, node, 0, 0, attempt, log, None)


def test_a_persistent_fault_strikes_every_process_on_its_node(tmp_path: Path) -> None:
    write_fault_request(tmp_path, FaultRequest("dead", "xid79", "node-1", persistent=True))
    write_fault_request(tmp_path, FaultRequest("once", "sigkill", "node-1"))
    first = injector(tmp_path, "node-1", 0)
    got = first.due(1)
    assert got is not None and got.id == "dead" and got.persistent
    # fire() would kill this process: leave the marker it writes for both requests, as two deaths would.
    (tmp_path / "dead.fired.node-1.0").write_text("x")
    (tmp_path / "once.fired.node-1.0").write_text("x")
    later = injector(tmp_path, "node-1", 1)  # a relaunch on the same node
    again = later.due(6)
    assert again is not None and again.id == "dead"
    assert injector(tmp_path, "node-2", 2).due(6) is None  # the spare that replaced it is healthy
    (tmp_path / "dead.json").unlink()
    assert injector(tmp_path, "node-1", 3).due(7) is None  # the one-shot fault stays fired


def test_persistent_must_be_a_boolean() -> None:
    body = {"id": "x", "kind": "xid79", "node": "n"}
    assert not FaultRequest.from_dict(body).persistent
    assert FaultRequest.from_dict({**body, "persistent": True}).persistent
    with pytest.raises(ValueError):
        FaultRequest.from_dict({**body, "persistent": "yes"})
