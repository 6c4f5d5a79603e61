"""`ftsup run`'s wiring of every actuator kind: config file -> `daemon.build()` -> the right actuator,
talking to the right service.

Nothing here is a stand-in: EC2 Auto Scaling is the moto server over HTTP (`moto_endpoint`), the
Kubernetes API is the recording server of tests/act/kube_server.py reached through a kubeconfig
file by the real `kubernetes` client, and HyperPod (which moto lacks) is only built, never called.
The end-to-end test applies one cordon_and_restart through the built actuator: the JobSet is
cordoned / evicted / restarted on the recording server, then the group marks the instance Unhealthy
in moto, and a recoverable root cause journaled for another incident reboots instead.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from supervisor.act.aws_asg import AsgRemediator
from supervisor.act.external import ExternalJob
from supervisor.act.hyperpod import HyperPodLabelRemediator, HyperPodRemediator
from supervisor.act.kubernetes import KubernetesActuator
from supervisor.act.local import LocalActuator
from supervisor.act.remediate import FileApprovalGate, NodeFault, RemediatingActuator
from supervisor.act.slurm import SlurmActuator
from supervisor.classify.policy import load_policies
from supervisor.config import Config, default_policy_dir, load_config
from supervisor.daemon import Daemon, IncidentFaults, build, remediation_state_dir
from supervisor.errors import StartupError
from supervisor.journal import Journal
from supervisor.vocabulary import Action, FailureClass, Role, Scope, Severity, Verdict
from tests.act.kube_server import KubeServer, recorded, serve
from tests.act.test_aws_asg import make_group, members
from tests.builders import incident, signal

REPO = Path(__file__).resolve().parents[2]
NODE = "hyperpod-i-0123456789abcdef0"  # the recorded node (tests/data/k8s/node.json)
NODE_PATH = f"/api/v1/nodes/{NODE}"
PODS = "/api/v1/namespaces/training/pods"
JOBSET = "/apis/jobset.x-k8s.io/v1alpha2/namespaces/training/jobsets/llm"
QUIET = """\
sources: {logs: {enabled: false}, metrics: {enabled: false}}
metrics_server: {port: null}
journal: {path: state/ftsup.db}
"""


@pytest.fixture
def kube() -> Iterator[KubeServer]:
    yield from serve()


def kubeconfig(tmp_path: Path, server: KubeServer) -> Path:
    """A kubeconfig naming the recording server (plain HTTP, no credentials)."""
    path = tmp_path / "kubeconfig.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "test", "cluster": {"server": server.url}}],
                "users": [{"name": "test", "user": {}}],
                "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
                "current-context": "test",
            }
        )
    )
    return path


def config(tmp_path: Path, actuator: str, *, aws: str = "{region: us-east-1}", mode: str = "act") -> Config:
    text = f"job: {{name: llm, log_group: /g}}\nmode: {mode}\naws: {aws}\n{QUIET}actuator:\n"
    text += textwrap.indent(textwrap.dedent(actuator), "  ")
    path = tmp_path / "ftsup.yaml"
    path.write_text(text)
    return load_config(path)


@pytest.fixture
def built() -> Iterator[Callable[[Config], Daemon]]:
    """`daemon.build`, for daemons shut down (journal closed, job left alone) when the test ends."""
    daemons: list[Daemon] = []

    def build_daemon(cfg: Config) -> Daemon:
        d = build(cfg)
        daemons.append(d)
        return d

    yield build_daemon
    for d in daemons:
        d.shutdown(stop_job=False)


def cordon_action(key: str, incident_id: str) -> Action:
    return Action(
        kind=Verdict.CORDON_AND_RESTART,
        job="llm",
        incident_id=incident_id,
        idempotency_key=key,
        node=NODE,
        reason=f"gpu-fallen-off-bus on {NODE}: cordon it, restart on spare x",
    )


def answer_cordon_and_restart(kube: KubeServer) -> None:
    """What the API server answers to a JobSet cordon_and_restart (as in test_kubernetes)."""
    kube.answer("GET", JOBSET, 200, recorded("jobset"))
    kube.answer("GET", PODS, 200, recorded("pods-on-node"), field_selector=f"spec.nodeName={NODE}")
    kube.answer("GET", PODS, 200, recorded("pods-all"))
    kube.answer("GET", NODE_PATH, 200, recorded("node"))
    kube.answer("PATCH", NODE_PATH, 200, recorded("node"))
    kube.answer("POST", f"{PODS}/llm-workers-0-1-x7k2p/eviction", 201, recorded("status-201-eviction"))
    for pod in recorded("pods-all")["items"]:
        kube.answer("DELETE", f"{PODS}/{pod['metadata']['name']}", 200, pod)
    kube.answer("PATCH", JOBSET, 200, recorded("jobset"))


# ----------------------------------------------------------------------------- aws-asg


def test_aws_asg_wraps_the_job_actuator_and_replaces_or_reboots_as_the_root_cause_says(
    moto_endpoint: str,
    clients: tuple[Any, Any],
    kube: KubeServer,
    tmp_path: Path,
    built: Callable[[Config], Daemon],
) -> None:
    group, ids = make_group(clients)
    cfg = config(
        tmp_path,
        f"""\
        kind: aws-asg
        job: kubernetes
        kubernetes: {{namespace: training, kind: jobset, name: llm, kubeconfig: {kubeconfig(tmp_path, kube)}}}
        aws_asg: {{group: {group}, node_map: {{{NODE}: {ids[1]}}}, max_replaces: 1}}
        """,
        aws=f"{{region: us-east-1, endpoint_url: '{moto_endpoint}', max_attempts: 2}}",
    )
    d = built(cfg)

    act = d.actuator
    assert isinstance(act, RemediatingActuator)
    assert isinstance(act.inner, KubernetesActuator) and isinstance(act.remediator, AsgRemediator)
    state = tmp_path / "state" / "llm.aws-asg"
    assert remediation_state_dir(cfg) == state and state.is_dir()
    assert act.remediator.replace_limit.path == state / "actuator-aws_asg-ratelimit.json"
    assert isinstance(act.fault_of, IncidentFaults) and act.fault_of.journal is d.journal

    # Nothing journaled yet: the rule in the reason, as the policy defines it (critical) -> replace.
    action = cordon_action("inc-1:cordon_and_restart", "inc-1")
    assert any("SetInstanceHealth Unhealthy" in step for step in act.plan(action))
    answer_cordon_and_restart(kube)
    result = act.apply(action)

    assert result.ok, result.detail
    assert f"aws-asg replace {NODE}: done: {ids[1]} marked Unhealthy" in result.detail
    assert members(clients, group)[ids[1]] == ("InService", "Unhealthy")
    assert (kube.sent()[0].method, kube.sent()[0].path) == ("PATCH", NODE_PATH)  # cordoned first
    assert d.calls.get("SetInstanceHealth") == 1  # the daemon's counter sees the remediator's calls

    # A recoverable warning journaled as the root cause of another incident on that node -> reboot.
    root = signal(
        "gpu-xid-48-dbe",
        node=NODE,
        verdict=Verdict.CORDON_AND_RESTART,
        scope=Scope.NODE,
        role=Role.CAUSE,
        failure_class=FailureClass.RECOVERABLE,
        severity=Severity.WARNING,
    )
    inc = incident(root, incident_id="inc-2", job="llm")
    with d.journal.transaction():
        d.journal.add_signals("llm", 0, inc.signals)
        d.journal.add_incident(inc)
    again = act.apply(cordon_action("inc-2:cordon_and_restart", "inc-2"))
    assert again.ok, again.detail
    # Reboot was chosen; the instance is already Unhealthy (the first replacement): nothing to do.
    assert f"aws-asg reboot {NODE}: noop: {ids[1]} is already marked Unhealthy" in again.detail
    assert d.calls.get("RebootInstances") == 0 and d.calls.get("SetInstanceHealth") == 1


def test_aws_asg_with_a_local_job_finds_instances_by_tag_and_node_ops_choose_reboot(
    moto_endpoint: str, clients: tuple[Any, Any], tmp_path: Path, built: Callable[[Config], Daemon]
) -> None:
    group, ids = make_group(clients, size=2)
    cfg = config(
        tmp_path,
        f"""\
        kind: aws-asg
        job: local
        local: {{nodes: [{group}-node-0, {group}-node-1], spares: [spare-0], run_dir: run}}
        aws_asg: {{group: {group}, lookup: tag}}
        node_ops: {{gpu-fallen-off-bus: reboot}}
        """,
        aws=f"{{region: us-east-1, endpoint_url: '{moto_endpoint}', max_attempts: 2}}",
    )
    d = built(cfg)
    act = d.actuator
    assert isinstance(act, RemediatingActuator) and isinstance(act.inner, LocalActuator)
    assert isinstance(act.remediator, AsgRemediator)
    assert act.policy.by_rule == {"gpu-fallen-off-bus": "reboot"}

    node = f"{group}-node-1"
    health = act.remediator.observe(node)  # tag lookup and group membership, through moto
    assert (health.exists, health.healthy, health.target) == (True, True, ids[1])
    action = Action(
        Verdict.CORDON_AND_RESTART, "llm", "inc-9", "inc-9:cordon_and_restart", node=node,
        reason=f"gpu-fallen-off-bus on {node}: cordon it",
    )  # fmt: skip
    # node_ops overrides the critical rule's replacement; the local job's plan comes first.
    steps = act.plan(action)
    assert (
        steps[0].startswith("stop attempt")
        and steps[-1] == "aws-asg: RebootInstances (instance and disks kept)"
    )


# ----------------------------------------------------------------------------- kubernetes, hyperpod


def test_kubernetes_is_built_from_its_kubeconfig_and_adopts_the_jobset(
    kube: KubeServer, tmp_path: Path, built: Callable[[Config], Daemon]
) -> None:
    cfg = config(
        tmp_path,
        f"""\
        kind: kubernetes
        kubernetes: {{namespace: training, kind: jobset, name: llm, kubeconfig: {kubeconfig(tmp_path, kube)},
                     spare_selector: node.kubernetes.io/instance-type=p5.48xlarge}}
        """,
    )
    d = built(cfg)
    assert isinstance(d.actuator, KubernetesActuator)
    kube.answer("GET", JOBSET, 200, recorded("jobset"))
    kube.answer("GET", PODS, 200, recorded("pods-all"))
    kube.answer("GET", "/api/v1/nodes", 200, recorded("node-list"))

    result = d.actuator.launch()

    assert result.ok, result.detail
    assert result.detail.startswith("watching jobsets.jobset.x-k8s.io/v1alpha2 training/llm (attempt 0) on ")
    assert {r.path for r in kube.requests} == {JOBSET, PODS, "/api/v1/nodes"}
    assert kube.sent() == []  # adopting changes nothing


def test_hyperpod_on_eks_labels_nodes_through_the_job_actuators_connection(
    kube: KubeServer, tmp_path: Path, built: Callable[[Config], Daemon]
) -> None:
    cfg = config(
        tmp_path,
        f"""\
        kind: hyperpod
        job: kubernetes
        kubernetes: {{namespace: training, kind: pytorchjob, name: llm,
                     kubeconfig: {kubeconfig(tmp_path, kube)}}}
        hyperpod: {{via: labels, approval_dir: approvals}}
        """,
    )
    d = built(cfg)
    act = d.actuator
    assert isinstance(act, RemediatingActuator) and isinstance(act.inner, KubernetesActuator)
    assert isinstance(act.remediator, HyperPodLabelRemediator)
    assert act.remediator.api is act.inner.api  # one connection, one RBAC identity
    assert isinstance(act.remediator.gate, FileApprovalGate)
    assert act.remediator.gate.directory == tmp_path / "approvals"


def test_hyperpod_api_way_keeps_approvals_and_rate_limits_next_to_the_journal(
    aws_env: None, tmp_path: Path, built: Callable[[Config], Daemon]
) -> None:
    cfg = config(
        tmp_path,
        """\
        kind: hyperpod
        job: slurm
        slurm: {job_id: 42}
        hyperpod: {cluster: llm-pretrain, instance_group: workers}
        """,
    )
    d = built(cfg)
    act = d.actuator
    assert isinstance(act, RemediatingActuator) and isinstance(act.remediator, HyperPodRemediator)
    assert act.remediator.settings.cluster == "llm-pretrain"
    state = tmp_path / "state" / "llm.hyperpod"
    assert (
        isinstance(act.remediator.gate, FileApprovalGate)
        and act.remediator.gate.directory == state / "approvals"
    )
    assert act.remediator.reboot_limit.path == state / "actuator-hyperpod-ratelimit.json"


@pytest.mark.parametrize(
    ("actuator", "expected"),
    [
        ("kind: none\nnone: {nodes: [a, b]}\n", ExternalJob),
        ("kind: local\nlocal: {nodes: [a, b], run_dir: run}\n", LocalActuator),
        ("kind: slurm\nslurm: {job_id: 42}\n", SlurmActuator),  # building runs no Slurm command
    ],
    ids=["none", "local", "slurm"],
)
def test_the_job_kinds_build_their_own_actuator(
    tmp_path: Path, built: Callable[[Config], Daemon], actuator: str, expected: type
) -> None:
    d = built(config(tmp_path, actuator, mode="observe"))
    assert type(d.actuator) is expected


# ----------------------------------------------------------------------------- refusals


def test_a_kubeconfig_the_client_cannot_use_is_a_startup_error(tmp_path: Path) -> None:
    (tmp_path / "kubeconfig.yaml").write_text("apiVersion: v1\nkind: Config\n")  # exists: config check passes
    cfg = config(
        tmp_path, "kind: kubernetes\nkubernetes: {kind: jobset, name: llm, kubeconfig: kubeconfig.yaml}\n"
    )
    with pytest.raises(StartupError, match=r"actuator.kubernetes: cannot set up the Kubernetes client"):
        build(cfg)


def test_node_ops_naming_a_rule_no_policy_defines_is_a_startup_error(aws_env: None, tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        "kind: hyperpod\njob: slurm\nslurm: {job_id: 1}\nhyperpod: {cluster: c}\n"
        "node_ops: {gpu-xid-480: reboot}\n",
    )
    with pytest.raises(StartupError, match="node_ops names rules the policies do not define: gpu-xid-480"):
        build(cfg)


# ----------------------------------------------------------------------------- fault_of


def test_incident_faults_reads_the_journal_then_the_policy(tmp_path: Path) -> None:
    policy = load_policies([default_policy_dir()])
    journal = Journal(tmp_path / "j.db")
    faults = IncidentFaults(journal, policy)
    try:
        xid79 = policy.rule("gpu-fallen-off-bus")
        by_reason = faults(cordon_action("k", "inc-unjournaled"))
        assert by_reason == NodeFault(xid79.name, xid79.failure_class, xid79.severity)
        assert (
            faults(Action(Verdict.RESTART, "llm", "i", "k", reason="restart budget exhausted")) == NodeFault()
        )
        assert faults(Action(Verdict.RESTART, "llm", "i", "k", reason="no-such-rule: x")) == NodeFault(
            "no-such-rule"
        )

        # Journaled: the root cause is elsewhere; on the action's node the most severe cause wins.
        elsewhere = signal("gloo-timeout", node="other", role=Role.CAUSE, severity=Severity.CRITICAL)
        mild = signal("ecc-warning", node=NODE, role=Role.CAUSE, severity=Severity.WARNING, at=1)
        hard = signal(
            "gpu-xid-79",
            node=NODE,
            role=Role.CAUSE,
            failure_class=FailureClass.NON_RECOVERABLE,
            severity=Severity.CRITICAL,
            at=2,
        )
        noise = signal("torchrun-teardown", node=NODE, role=Role.NOISE, severity=Severity.CRITICAL, at=3)
        inc = incident(elsewhere, mild, hard, noise, incident_id="inc-3", job="llm")
        with journal.transaction():
            journal.add_signals("llm", 0, inc.signals)
            journal.add_incident(inc)
        got = faults(cordon_action("k3", "inc-3"))
        assert got == NodeFault("gpu-xid-79", FailureClass.NON_RECOVERABLE, Severity.CRITICAL)
    finally:
        journal.close()


# ----------------------------------------------------------------------------- shipped manifests


def test_the_config_in_the_k8s_configmap_passes_config_check(tmp_path: Path) -> None:
    """deploy/k8s/configmap.yaml's ftsup.yaml, with its in-container policy paths pointed at the checkout."""
    docs = {
        d["metadata"]["name"]: d for d in yaml.safe_load_all((REPO / "deploy/k8s/configmap.yaml").read_text())
    }
    text: Any = docs["ftsup-config"]["data"]["ftsup.yaml"]
    text, n = re.subn(r"(?m)^policies: .*$", f"policies: [{default_policy_dir()}]", text)
    assert n == 1
    (tmp_path / "ftsup.yaml").write_text(text)
    cfg = load_config(tmp_path / "ftsup.yaml")
    assert cfg.actuator.kind == "kubernetes" and cfg.actuator.kubernetes["name"] == "llm"
