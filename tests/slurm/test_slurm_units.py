"""The Slurm backend's pure parts: parsing what Slurm really printed (tests/data/slurm/, captured from
a real 22.05 cluster by tests/slurm/capture_fixtures.py), hostlists, wait statuses, the drain reason's
sanitising, command building, node maps, and the retry policy (against small fake programs on disk, not
mocks: the code under test runs real subprocesses)."""

from __future__ import annotations

import json
import stat
import textwrap
from pathlib import Path
from typing import Any

import pytest

from supervisor.act.nodemap import NodeMap, NodeMapError, parse_instance_map
from supervisor.act.slurm import REASON_MAX_CHARS, SlurmActuator, SlurmJobSpec, drain_reason, rule_of
from supervisor.act.slurm_cli import (
    NODE_NAME_RE,
    SlurmCli,
    SlurmError,
    SlurmSettings,
    decode_wait_status,
    expand_hostlist,
    is_transient_failure,
    parse_job_id,
    parse_sinfo_json,
    parse_squeue_json,
)
from supervisor.vocabulary import Action, Verdict

DATA = Path(__file__).resolve().parents[1] / "data" / "slurm"


def read(name: str) -> str:
    return (DATA / name).read_text()


# ----------------------------------------------------------------------------- parsing real output


def test_sinfo_idle_lists_every_node_idle_and_usable() -> None:
    nodes = parse_sinfo_json(read("sinfo_idle.json"))
    assert [n.name for n in nodes] == ["node-0", "node-1", "node-2", "node-3"]
    assert all(n.idle and n.usable and not n.drained for n in nodes)
    assert all(n.partitions == ("debug",) for n in nodes)


def test_sinfo_tells_an_ftsup_drain_from_an_operator_drain() -> None:
    nodes = {n.name: n for n in parse_sinfo_json(read("sinfo_drained.json"))}
    ours, operators = nodes["node-1"], nodes["node-3"]
    assert ours.drained and not ours.usable and ours.state == "mixed"  # draining: the job still runs
    assert ours.reason == "ftsup: gpu-fallen-off-bus incident inc-0123456789ab"
    assert operators.drained and operators.reason == "bad DIMM, ticket 4711"
    assert operators.reason_set_by == "root" and operators.reason_changed_at
    assert nodes["node-2"].idle and not nodes["node-0"].idle  # node-0 runs the job (mixed)


def test_squeue_running_job_has_its_nodes_and_no_exit_yet() -> None:
    jobs = {j.name: j for j in parse_squeue_json(read("squeue_running.json"))}
    train = jobs["train"]
    assert train.state == "RUNNING" and train.running and not train.finished
    assert train.nodes == ("node-0", "node-1") and train.restart_count == 0 and train.requeue
    assert train.start_time and train.batch_host == "node-0" and train.partition == "debug"
    # squeue --json ignores filters: the finished job is in the same output, and is told apart.
    assert jobs["quick"].finished and jobs["quick"].exit_code == 0


def test_squeue_requeued_job_is_pending_with_a_higher_restart_count_and_no_nodes() -> None:
    train = next(j for j in parse_squeue_json(read("squeue_requeued.json")) if j.name == "train")
    assert train.state == "PENDING" and train.waiting and not train.running
    assert train.restart_count == 1 and train.nodes == () and train.state_reason == "BeginTime"


def test_squeue_finished_states_and_exit_codes() -> None:
    jobs = {j.name: j for j in parse_squeue_json(read("squeue_finished.json"))}
    assert jobs["broken"].state == "FAILED" and jobs["broken"].exit_status == 768
    assert jobs["broken"].exit_code == 3  # the raw wait status decoded
    assert jobs["train"].state == "CANCELLED" and jobs["train"].finished
    assert jobs["quick"].state == "COMPLETED"


def test_final_errors_are_not_retried() -> None:
    errors = json.loads(read("errors.json"))
    assert errors and not any(is_transient_failure(text) for text in errors.values())
    for text in (
        "squeue: error: Socket timed out on send/recv operation",
        "sinfo: error: Unable to contact slurm controller (connect failure)",
        "sbatch: error: Slurm temporarily unable to accept job, sleeping and retrying",
    ):
        assert is_transient_failure(text)


def test_later_slurm_json_shapes_parse_too() -> None:
    """23.02+ give states as lists and times as {set, number}: still understood."""
    doc = {
        "jobs": [
            {
                "job_id": 7,
                "name": "x",
                "job_state": ["RUNNING", "COMPLETING"],
                "nodes": "gpu[01-02]",
                "restart_cnt": 2,
                "start_time": {"set": True, "number": 100},
                "exit_code": {"return_code": {"set": True, "number": 3}, "signal": {"id": {"number": 0}}},
            }
        ],
        "errors": [],
    }
    (job,) = parse_squeue_json(json.dumps(doc))
    assert job.nodes == ("gpu01", "gpu02") and job.ending and not job.finished
    assert job.start_time == 100.0 and job.exit_code == 3 and job.restart_count == 2
    nodes = parse_sinfo_json(json.dumps({"nodes": [{"name": "a", "state": ["IDLE", "DRAIN"]}], "errors": []}))
    assert nodes[0].state == "idle" and nodes[0].drained and not nodes[0].idle


def test_output_that_is_not_slurm_json_is_an_error() -> None:
    with pytest.raises(SlurmError):
        parse_squeue_json("squeue: error: ...")
    with pytest.raises(SlurmError):
        parse_sinfo_json('{"meta": {}}')


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("node-[0-1]", ("node-0", "node-1")),
        ("node-[0,2-3]", ("node-0", "node-2", "node-3")),
        ("gpu[008-010]-ib", ("gpu008-ib", "gpu009-ib", "gpu010-ib")),
        ("a1,b[2-3],c", ("a1", "b2", "b3", "c")),
        ("rack[1-2]-n[1-2]", ("rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2")),
        ("", ()),
        ("(null)", ()),
    ],
)
def test_hostlists_expand_in_order(expr: str, names: tuple[str, ...]) -> None:
    assert expand_hostlist(expr) == names


@pytest.mark.parametrize("expr", ["node-[0-1", "node-0]", "node-[3-1]", "node-[a-b]", "node-[,1]"])
def test_malformed_hostlists_are_refused(expr: str) -> None:
    with pytest.raises(ValueError):
        expand_hostlist(expr)


@pytest.mark.parametrize(("status", "code"), [(0, 0), (768, 3), (9, 137), (15, 143), (None, None)])
def test_wait_status_decoding(status: int | None, code: int | None) -> None:
    assert decode_wait_status(status) == code


def test_sbatch_parsable_output() -> None:
    assert parse_job_id("42\n") == 42 and parse_job_id("43;cluster\n") == 43
    for bad in ("", "Submitted batch job 42", "0", "42abc", "-1"):
        with pytest.raises(SlurmError):
            parse_job_id(bad)


# ----------------------------------------------------------------------------- what reaches a command line


def _action(kind: Verdict, node: str | None = None, reason: str = "", incident: str = "inc-1") -> Action:
    return Action(kind, "j", incident, f"{incident}:{kind.value}", node=node, reason=reason)


def test_drain_reason_is_safe_whatever_the_rule_and_incident_hold() -> None:
    assert drain_reason("gpu-fallen-off-bus", "inc-83bf703504b5") == (
        "ftsup: gpu-fallen-off-bus incident inc-83bf703504b5"
    )
    hostile = drain_reason('x" State=RESUME Reason="$(reboot)\n', "inc-1; scancel -u root\x00" + "9" * 500)
    assert hostile.startswith("ftsup: ") and len(hostile) <= REASON_MAX_CHARS
    assert not set(hostile) & set("\"'$();=\n\x00`\\")
    assert hostile.count(" ") == 3  # "ftsup: <rule> incident <id>": no injected words


def test_the_rule_is_read_from_the_decision_reason() -> None:
    cordon = _action(Verdict.CORDON_AND_RESTART, "node-1", "gpu-fallen-off-bus on node-1: cordon it, ...")
    assert rule_of(cordon) == "gpu-fallen-off-bus"
    assert rule_of(_action(Verdict.RESTART, reason="gloo-timeout: recoverable, restart")) == "gloo-timeout"
    assert rule_of(_action(Verdict.HALT, reason="restart budget exhausted: 3 relaunches")) == "halt"


def _actuator(tmp_path: Path, **kw: Any) -> SlurmActuator:
    spec = SlurmJobSpec(job="llm", state_dir=tmp_path, log_group="/g", script=tmp_path / "job.sbatch", **kw)
    return SlurmActuator(spec, SlurmSettings(bin_dir=tmp_path / "no-such-bin"))


def test_plan_shows_the_exact_commands_without_running_any(tmp_path: Path) -> None:
    act = _actuator(tmp_path)
    act._job_id = 42  # as if submitted
    cordon = _action(Verdict.CORDON_AND_RESTART, "node-1", "gpu-fallen-off-bus on node-1: cordon it")
    plan = act.plan(cordon)
    assert plan[0] == (
        "scontrol update NodeName=node-1 State=DRAIN 'Reason=ftsup: gpu-fallen-off-bus incident inc-1'"
    )
    assert plan[1] == "scontrol requeue 42"
    assert act.plan(_action(Verdict.HALT, reason="python-exception: non_recoverable"))[:2] == [
        "scontrol update JobId=42 'Comment=ftsup: halt: python-exception incident inc-1'",
        "scancel 42",
    ]
    assert "(refused" in act.plan(_action(Verdict.CORDON_AND_RESTART, "node-1 State=RESUME"))[0]
    assert act.cli.history == []  # planning runs nothing


def test_sbatch_command_and_the_environment_the_job_gets(tmp_path: Path) -> None:
    act = _actuator(tmp_path, partition="gpu", sbatch_args=("--nodes=4",), script_args=("--ckpt-every", "5"),
                    env={"FTSUP_RUN_DIR": "/fsx/run"}, endpoint_url="http://127.0.0.1:5000")  # fmt: skip
    argv = act.sbatch_command("tok")
    assert argv == [
        "sbatch", "--parsable", "--job-name=llm", "--comment=ftsup-submit:tok", "--partition=gpu",
        "--nodes=4", str(tmp_path / "job.sbatch"), "--ckpt-every", "5",
    ]  # fmt: skip
    env = act.job_environment(3)
    assert env["FTSUP_ATTEMPT_BASE"] == "3" and env["FTSUP_RUN_DIR"] == "/fsx/run"
    assert env["FTSUP_CW_ENDPOINT"] == "http://127.0.0.1:5000" and env["FTSUP_LOG_GROUP"] == "/g"


def test_node_names_allowed_on_a_command_line() -> None:
    for ok in ("node-0", "ip-10-1-2-3", "gpu001.cluster"):
        assert NODE_NAME_RE.fullmatch(ok)
    for bad in ("", "node 1", "node-1;reboot", "a=b", "node[1-2]", "-rf", "n" * 64, "node-1\n"):
        assert not NODE_NAME_RE.fullmatch(bad)


def test_spec_needs_exactly_one_job_source(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        SlurmJobSpec(job="j", state_dir=tmp_path, log_group="/g")
    with pytest.raises(ValueError):
        SlurmJobSpec(job="j", state_dir=tmp_path, log_group="/g", job_id=1, job_name="x")
    with pytest.raises(ValueError):
        SlurmJobSpec(job="j", state_dir=tmp_path, log_group="/g", job_id=1, halt="reboot")


# ----------------------------------------------------------------------------- node maps


def test_node_map_identity_explicit_and_instance_ids() -> None:
    assert NodeMap().to_scheduler("node-1") == "node-1" and NodeMap().identity
    nm = NodeMap(explicit={"trainer-a": "node-0"}, instances={"i-0abc": "ip-10-0-0-7"})
    assert nm.to_scheduler("trainer-a") == "node-0" and nm.to_stream("node-0") == "trainer-a"
    assert nm.to_scheduler("i-0abc") == "ip-10-0-0-7" and nm.to_stream("ip-10-0-0-7") == "i-0abc"
    assert nm.to_scheduler("LifecycleConfig/workers/i-0abc") == "ip-10-0-0-7"
    assert nm.to_scheduler("node-9") == "node-9" and nm.to_stream("node-9") == "node-9"


def test_instance_map_formats() -> None:
    assert parse_instance_map('{"i-1": "ip-10-0-0-1"}') == {"i-1": "ip-10-0-0-1"}
    two = {"i-1": "ip-10-0-0-1", "i-2": "ip-10-0-0-2"}
    assert parse_instance_map("i-1: ip-10-0-0-1\ni-2: ip-10-0-0-2\n") == two
    assert parse_instance_map("# hyperpod\ni-1 ip-10-0-0-1\n\ni-2 ip-10-0-0-2  # spare\n") == {
        "i-1": "ip-10-0-0-1",
        "i-2": "ip-10-0-0-2",
    }
    described = {"NodeDetails": {"InstanceId": "i-9", "PrivateDnsHostname": "ip-10-1-2-3.ec2.internal"}}
    assert parse_instance_map(json.dumps(described)) == {"i-9": "ip-10-1-2-3"}
    listed = {"Nodes": [{"InstanceId": "i-8", "NodeName": "gpu-8"}, {"InstanceId": "i-7"}]}
    assert parse_instance_map(json.dumps(listed)) == {"i-8": "gpu-8"}
    for bad in ("", "{}", "i-1 a b\n", '{"i-1": 3}', "{not json"):
        with pytest.raises(NodeMapError):
            parse_instance_map(bad, "map.txt")


# ----------------------------------------------------------------------------- retries (fake programs)


def _program(bin_dir: Path, name: str, body: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/bash\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_transient_failures_are_retried_within_the_budget(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    _program(bin_dir, "sinfo", f"""\
        n=$(cat {tmp_path}/count 2>/dev/null || echo 0); echo $((n + 1)) > {tmp_path}/count
        if [ "$n" -lt 2 ]; then echo "sinfo: error: Socket timed out on send/recv operation" >&2; exit 1; fi
        cat {DATA}/sinfo_idle.json
        """)  # fmt: skip
    sleeps: list[float] = []
    cli = SlurmCli(SlurmSettings(bin_dir=bin_dir, max_attempts=4), sleep=sleeps.append)
    assert len(cli.nodes()) == 4
    assert (tmp_path / "count").read_text().strip() == "3" and len(sleeps) == 2
    assert all(0 <= s <= 5 for s in sleeps)  # jittered, capped


def test_final_failures_and_exhausted_budgets_raise_without_more_tries(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    _program(bin_dir, "scontrol", f"""\
        echo x >> {tmp_path}/calls; echo "Invalid job id specified for job $2" >&2; exit 1
        """)  # fmt: skip
    _program(bin_dir, "squeue", f"""\
        echo x >> {tmp_path}/squeue-calls; echo "Unable to contact slurm controller (connect failure)" >&2
        exit 1
        """)  # fmt: skip
    cli = SlurmCli(SlurmSettings(bin_dir=bin_dir, max_attempts=3), sleep=lambda s: None)
    with pytest.raises(SlurmError) as final:
        cli.run(["scontrol", "requeue", "5"], retry=True)
    assert not final.value.transient and (tmp_path / "calls").read_text().count("x") == 1
    with pytest.raises(SlurmError) as transient:
        cli.jobs()
    assert transient.value.transient and (tmp_path / "squeue-calls").read_text().count("x") == 3


def test_every_command_has_a_timeout(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    _program(bin_dir, "squeue", "exec sleep 30\n")
    cli = SlurmCli(SlurmSettings(bin_dir=bin_dir, command_timeout_s=0.3, max_attempts=1))
    with pytest.raises(SlurmError, match=r"timed out after 0\.3s") as err:
        cli.run(["squeue", "--json"], retry=True)
    assert err.value.transient and cli.history[-1].seconds < 5
