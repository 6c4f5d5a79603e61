"""Nothing from a log line reaches a scheduler command except validated identifiers.

Slurm: the exact argv the actuator builds (`drain_command`, `halt_commands`, `plan`, and `apply`
against a recording fake CLI, no cluster) for hostile node names, decision reasons and incident ids.
Local: a refused cordon neither stops the job nor starts anything. Kubernetes: a hostile node name
never reaches a field selector.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.act.kubernetes import KubeJobSpec, KubernetesActuator
from supervisor.act.local import LocalActuator, LocalJobSpec
from supervisor.act.slurm import REASON_MAX_CHARS, SlurmActuator, SlurmJobSpec, drain_reason, halt_reason
from supervisor.act.slurm_cli import NODE_NAME_RE, SlurmError, SlurmNode, SlurmSettings
from supervisor.vocabulary import Action, Verdict
from tests.fuzz.support import bounded, fuzz_settings

pytestmark = pytest.mark.fuzz

SAFE_REASON = re.compile(r"ftsup: (?:halt: )?[a-z0-9._-]{1,64} incident [A-Za-z0-9._:-]{1,64}")
HOSTILE = [
    "node-1; rm -rf /",
    "$(reboot)",
    "`id`",
    "node-1\nnode-2",
    "--help",
    "-rf",
    "node 1",
    "NodeName=node-1 State=RESUME",
    "node-1 Reason=x",
    "node-1,spec.nodeName!=x",
    "../../etc",
    "\x00",
    "'\"",
    "",
]
hostile_text = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=80))
reasons = st.one_of(
    hostile_text,
    st.tuples(st.sampled_from(["gpu-fallen-off-bus", "Xid;79", "a b", ""]), hostile_text).map(
        lambda t: f"{t[0]} on {t[1]}: cordon it"
    ),
)
kinds = st.sampled_from([Verdict.RESTART, Verdict.CORDON_AND_RESTART, Verdict.HALT])
SINFO = ("node-0", "node-1", "node-2")


def _node(name: str) -> SlurmNode:
    return SlurmNode(name, "allocated", frozenset(), "", None, None, ("gpu",))


class RecordingCli:
    """The SlurmCli calls the actuator makes: sinfo reports SINFO; every command is recorded and fails
    (so `apply` stops after its first command, whose argv is what the test looks at)."""

    def __init__(self) -> None:
        self.settings = SlurmSettings()
        self.argvs: list[list[str]] = []

    def nodes(self) -> tuple[SlurmNode, ...]:
        return tuple(_node(n) for n in SINFO)

    def job(self, job_id: int | None) -> None:
        return None

    def run(self, argv: Sequence[str], **kw: Any) -> str:
        self.argvs.append(list(argv))
        raise SlurmError(argv, "recorded, not run", returncode=1, transient=False)


def _slurm(tmp: Path, cli: RecordingCli | None = None) -> SlurmActuator:
    spec = SlurmJobSpec(job="llm", state_dir=tmp, log_group="/g", job_id=42)
    return SlurmActuator(spec, cli=cli, sleep=lambda s: None)  # type: ignore[arg-type]


def _check_argv(argv: list[str]) -> None:
    """Every argument is a fixed word or `Key=value` with a validated value."""
    assert argv[0] in ("scontrol", "scancel", "sbatch"), argv
    for arg in argv[1:]:
        assert "\n" not in arg and "\x00" not in arg, argv
        if arg.startswith("NodeName="):
            node = arg.removeprefix("NodeName=")
            assert NODE_NAME_RE.fullmatch(node) and node in SINFO, argv
        elif arg.startswith(("Reason=", "Comment=")):
            assert SAFE_REASON.fullmatch(arg.split("=", 1)[1]), argv
        elif arg.startswith("JobId="):
            assert arg == "JobId=42", argv
        else:
            assert arg in ("update", "State=DRAIN", "State=RESUME", "requeue", "requeuehold", "42"), argv


@fuzz_settings(max_examples=300)
@given(rule=hostile_text, incident=hostile_text)
def test_drain_and_halt_reasons_are_safe_whatever_the_rule_and_incident(rule: str, incident: str) -> None:
    for reason in (
        drain_reason(rule, incident),
        halt_reason(Action(Verdict.HALT, "j", incident, "k", reason=f"{rule}: halt")),
    ):
        assert len(reason) <= REASON_MAX_CHARS
        assert SAFE_REASON.fullmatch(reason), reason


@fuzz_settings(max_examples=150)
@given(
    kind=kinds, node=st.one_of(st.sampled_from(SINFO), hostile_text), reason=reasons, incident=hostile_text
)
def test_slurm_commands_carry_only_validated_identifiers(
    tmp_path_factory: pytest.TempPathFactory, kind: Verdict, node: str, reason: str, incident: str
) -> None:
    action = Action(kind, "llm", incident, f"{incident}:{kind.value}", node=node, reason=reason)
    cli = RecordingCli()
    act = _slurm(tmp_path_factory.mktemp("slurm"), cli)
    with bounded():
        plan = act.plan(action)
        result = act.apply(action)
    for line in plan:
        if line.startswith(("scontrol ", "scancel ")):
            _check_argv(shlex.split(line))
    for argv in cli.argvs:
        _check_argv(argv)
    if kind is Verdict.CORDON_AND_RESTART and node not in SINFO:
        assert not result.ok
        assert not any(a[:2] == ["scontrol", "update"] and a[2].startswith("NodeName=") for a in cli.argvs)


def test_a_node_name_that_looks_like_an_option_or_assignment_is_refused(tmp_path: Path) -> None:
    for node in ("--help", "NodeName=node-1 State=RESUME", "node-1;reboot", "node-1 Reason=x"):
        cli = RecordingCli()
        act = _slurm(tmp_path, cli)
        result = act.apply(Action(Verdict.CORDON_AND_RESTART, "llm", "inc-1", f"k{node}", node=node))
        assert not result.ok and cli.argvs == [], (node, cli.argvs)
        assert act.plan(Action(Verdict.CORDON_AND_RESTART, "llm", "inc-1", "k", node=node))[0].startswith(
            "(refused"
        )


# ----------------------------------------------------------------------------- local


def test_local_refused_cordon_stops_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: a cordon of a node that is not a member (or with no spare left) was refused only
    after every node of the job had been stopped, leaving the job down."""
    spec = LocalJobSpec("llm", ("node-0", "node-1"), (), tmp_path, "/g")
    act = LocalActuator(spec)
    stopped: list[bool] = []
    started: list[int] = []
    monkeypatch.setattr(act, "_stop_all", lambda: stopped.append(True) or "x")
    monkeypatch.setattr(act, "_start_attempt", lambda attempt: started.append(attempt))
    for i, node in enumerate(["node-7; rm -rf /", "$(id)", "--help", "node-0"]):  # node-0: no spare left
        result = act.apply(Action(Verdict.CORDON_AND_RESTART, "llm", f"inc-{i}", f"k{i}", node=node))
        assert not result.ok
    assert stopped == [] and started == []
    assert act.observe().nodes == ("node-0", "node-1")


def test_local_node_command_keeps_a_node_name_one_argument(tmp_path: Path) -> None:
    spec = LocalJobSpec("llm", ("node-0",), (), tmp_path, "/g")
    argv = LocalActuator(spec).node_command("node-0", 0, 1, 29500)
    assert argv[argv.index("--node") + 1] == "node-0"


# ----------------------------------------------------------------------------- kubernetes


class RecordingKube:
    """The KubeApi calls the actuator makes; records field selectors and node lookups."""

    def __init__(self) -> None:
        self.selectors: list[str | None] = []
        self.node_lookups: list[str] = []

    def list_pods(
        self, namespace: str, label_selector: str, *, field_selector: str | None = None
    ) -> list[Any]:
        self.selectors.append(field_selector)
        return []

    def get_node(self, name: str) -> None:
        self.node_lookups.append(name)
        return None

    def list_nodes(self, **kw: Any) -> list[Any]:
        return []


@fuzz_settings(max_examples=150)
@given(node=st.one_of(st.sampled_from(["node-0", "ip-10-1-2-3.ec2.internal"]), hostile_text))
def test_kubernetes_field_selectors_carry_only_valid_node_names(node: str) -> None:
    api = RecordingKube()
    act = KubernetesActuator(KubeJobSpec("llm", "training", "jobset", "llm"), api)  # type: ignore[arg-type]
    action = Action(Verdict.CORDON_AND_RESTART, "llm", "inc-1", "k", node=node, reason="r on x: y")
    with bounded():
        ok, _ = act._cordon_and_clear(action)
    assert not ok  # no pod of the job runs on the node in this fake
    for selector in api.selectors:
        assert selector is not None
        value = selector.removeprefix("spec.nodeName=")
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]*", value), selector
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,252}", node):
        assert api.selectors == [] and api.node_lookups == []
