"""The `ha:` config section (strict, file:line:col) and the engine's fence before every apply."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from supervisor.classify.policy import load_policies
from supervisor.config import Config, default_policy_dir, load_config
from supervisor.engine import Engine
from supervisor.errors import ConfigError
from supervisor.journal import Journal
from supervisor.vocabulary import Action, ActionResult, JobObservation, Mode, Verdict

JOB = "job: {name: demo, log_group: /g}\n"


def _load(tmp_path: Path, text: str) -> Config:
    p = tmp_path / "ftsup.yaml"
    p.write_text(JOB + text)
    return load_config(p)


def _problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        _load(tmp_path, text)
    return [str(p).replace(str(tmp_path) + "/", "") for p in ei.value.problems]


def test_ha_section_loads(tmp_path: Path) -> None:
    none = _load(tmp_path, "")
    assert none.ha.kind == "none"
    f = _load(tmp_path, "ha: {kind: file, lease_s: 9, path: lease}\n").ha
    assert (f.kind, f.lease_s, f.renew_every_s, f.path) == ("file", 9.0, 3.0, tmp_path / "lease")
    d = _load(tmp_path, "ha: {kind: dynamodb, table: ftsup-leases, renew_every_s: 2}\n").ha
    assert (d.kind, d.table, d.renew_every_s) == ("dynamodb", "ftsup-leases", 2.0)
    assert d.ledger_table == "ftsup-leases-actions"  # the default of deploy/dynamodb/ftsup-ha.cfn.yaml
    d = _load(tmp_path, "ha: {kind: dynamodb, table: leases, ledger_table: actions}\n").ha
    assert (d.table, d.ledger_table) == ("leases", "actions")
    assert f.ledger_table is None and none.ha.ledger_table is None


def test_ha_section_problems_name_file_line_and_column(tmp_path: Path) -> None:
    out = _problems(tmp_path, "ha:\n  kind: raft\n  lease_s: -1\n  colour: red\n")
    assert any(p.startswith("ftsup.yaml:3:9") and "ha.kind" in p for p in out), out
    assert any(p.startswith("ftsup.yaml:4:") and "ha.lease_s" in p for p in out), out
    assert any(p.startswith("ftsup.yaml:5:") and "colour" in p for p in out), out
    out = _problems(tmp_path, "ha: {kind: dynamodb}\n")
    assert any("table" in p for p in out), out
    out = _problems(tmp_path, "ha: {kind: file, lease_s: 5, renew_every_s: 5, table: t1x}\n")
    assert any("renew_every_s" in p for p in out) and any("ha.table" in p for p in out), out
    out = _problems(tmp_path, "ha:\n  kind: file\n  ledger_table: actions\n")
    assert any(p.startswith("ftsup.yaml:4:3") and "ha.ledger_table" in p for p in out), out
    out = _problems(tmp_path, "ha:\n  kind: dynamodb\n  table: leases\n  ledger_table: leases\n")
    assert any(p.startswith("ftsup.yaml:5:17") and "must differ" in p for p in out), out
    out = _problems(tmp_path, "ha:\n  kind: dynamodb\n  table: leases\n  ledger_table: a b\n")
    assert any(p.startswith("ftsup.yaml:5:17") and "DynamoDB table name" in p for p in out), out


class OneJob:
    def __init__(self) -> None:
        self.applied: list[Action] = []

    def launch(self) -> ActionResult:
        return ActionResult("launch", True, "", time.time(), time.time(), 0, ("n0",))

    def plan(self, action: Action) -> list[str]:
        return []

    def apply(self, action: Action) -> ActionResult:
        self.applied.append(action)
        return ActionResult(action.idempotency_key, True, "done", time.time(), time.time(), 1, ("n0",))

    def observe(self) -> JobObservation:
        return JobObservation("job", 0, ("n0",), (), (), True, time.time())

    def stop(self) -> None:
        pass

    def clear_halt(self) -> None:
        pass


class Fence:
    def __init__(self, token: int | ActionResult | None) -> None:
        self.token = token
        self.recorded: list[tuple[Action, ActionResult]] = []

    def admit(self, action: Action) -> int | ActionResult | None:
        return self.token

    def record(self, action: Action, result: ActionResult) -> None:
        self.recorded.append((action, result))


@pytest.mark.parametrize("token", [None, 7])
def test_the_action_thread_applies_only_what_the_fence_admits(tmp_path: Path, token: int | None) -> None:
    actuator = OneJob()
    engine = Engine(
        job="job", policy=load_policies([default_policy_dir()]), journal=Journal(tmp_path / "j.db"),
        actuator=actuator, mode=Mode.ACT,
    )  # fmt: skip
    engine.fence = Fence(token)
    action = Action(Verdict.RESTART, "job", "inc-1", "inc-1:restart")
    engine._actions.put(action)
    engine._actions.put(None)
    engine._action_loop()
    fence = engine.fence
    assert isinstance(fence, Fence)
    if token is None:
        assert actuator.applied == [] and engine._inbox.empty()  # dropped: nothing journaled
        assert fence.recorded == []
    else:
        assert actuator.applied == [action]
        _, result = engine._inbox.get_nowait()  # type: ignore[misc]
        assert result.detail == "done [lease token 7]"
        assert fence.recorded == [(action, result)]  # the result goes to the ledger too
    engine.journal.close()


def test_an_action_the_ledger_recorded_as_done_is_not_applied_again(tmp_path: Path) -> None:
    actuator = OneJob()
    engine = Engine(
        job="job", policy=load_policies([default_policy_dir()]), journal=Journal(tmp_path / "j.db"),
        actuator=actuator, mode=Mode.ACT,
    )  # fmt: skip
    recorded = ActionResult("inc-1:restart", True, "restarted [lease token 1] [recorded ...]", 1.0, 2.0, 1)
    fence = Fence(recorded)
    engine.fence = fence
    action = Action(Verdict.RESTART, "job", "inc-1", "inc-1:restart")
    engine._actions.put(action)
    engine._actions.put(None)
    engine._action_loop()
    assert actuator.applied == [] and fence.recorded == []
    assert engine._inbox.get_nowait() == (action, recorded)  # completed with the recorded result
    engine.journal.close()
