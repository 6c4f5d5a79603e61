"""The Kubernetes backend through the real `kubernetes` client, against a recording HTTP server.

No API server runs on these machines. `kube_server.KubeServer` listens on 127.0.0.1, answers with
recorded responses in the API server's shapes (tests/data/k8s/: a HyperPod EKS node, pods of a
JobSet, a JobSet, a PyTorchJob, Status objects for 404 / 409 / 429 / 503 / an eviction's 201) and
records what the client sends: method, path, query, Content-Type and JSON body. The tests assert
on those requests: the patch types (strategic merge for nodes, merge patch for custom objects),
the exact bodies, the resourceVersion preconditions, and which requests are never sent.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.act.hyperpod import HEALTH_LABEL, HyperPodLabelRemediator
from supervisor.act.hyperpod import from_settings as hyperpod_from_settings
from supervisor.act.kubernetes import (
    ANN_ATTEMPT,
    ANN_CORDONED,
    ANN_HALTED,
    ANN_LAST_ACTION,
    ANN_LAUNCHED_AT,
    KubeApi,
    KubeJobSpec,
    KubeNodeRemediator,
    KubernetesActuator,
    connect,
    from_settings,
)
from supervisor.act.remediate import (
    FileApprovalGate,
    NodeFault,
    NodeOp,
    Outcome,
    RateLimiter,
    RemediationRequest,
    RetryPolicy,
    SettingsError,
)
from supervisor.errors import StartupError
from supervisor.sources.aws import AwsSettings
from supervisor.vocabulary import Action, Verdict
from tests.act.kube_server import KubeServer, recorded, serve

NODE = "hyperpod-i-0123456789abcdef0"
OTHER = "hyperpod-i-0fedcba9876543210"
NODE_PATH = f"/api/v1/nodes/{NODE}"
PODS = "/api/v1/namespaces/training/pods"
JOBSET = "/apis/jobset.x-k8s.io/v1alpha2/namespaces/training/jobsets/llm"
PYTORCHJOB = "/apis/kubeflow.org/v1/namespaces/training/pytorchjobs/llm"
STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}
OUR_TAINT = {"key": "ftsup.io/unhealthy", "value": "gpu-fallen-off-bus", "effect": "NoSchedule"}

_keys = itertools.count()


@pytest.fixture
def server() -> Iterator[KubeServer]:
    yield from serve()


@pytest.fixture
def api(server: KubeServer) -> KubeApi:
    api = connect(host=server.url, connect_timeout_s=2, read_timeout_s=5, retry=RetryPolicy(3, 10))
    api.sleep = lambda s: None
    return api


def node(**spec: Any) -> dict[str, Any]:
    """The recorded node, with spec fields and ftsup's annotation changed as asked."""
    body = recorded("node")
    marked = spec.pop("marked", False)
    body["spec"].update(spec)
    if marked:
        body["metadata"]["annotations"][ANN_CORDONED] = "inc-1:cordon_and_restart"
    return body


def cordon(name: str = NODE, op: NodeOp = NodeOp.CORDON, key: str | None = None) -> RemediationRequest:
    return RemediationRequest(
        node=name,
        op=op,
        idempotency_key=key or f"inc-{next(_keys)}:cordon_and_restart",
        fault=NodeFault(rule="gpu-fallen-off-bus"),
    )


# ----------------------------------------------------------------------------- nodes


def test_cordon_is_one_strategic_merge_patch_with_taint_marker_and_resource_version(
    server: KubeServer, api: KubeApi
) -> None:
    server.answer("GET", NODE_PATH, 200, node())
    server.answer("PATCH", NODE_PATH, 200, node(unschedulable=True))

    result = KubeNodeRemediator(api).remediate(cordon(key="inc-7:cordon_and_restart"))

    assert result.outcome is Outcome.DONE, result.detail
    [patch] = server.sent()
    assert (patch.method, patch.path, patch.content_type) == ("PATCH", NODE_PATH, STRATEGIC)
    assert patch.body == {
        "metadata": {"resourceVersion": "48211", "annotations": {ANN_CORDONED: "inc-7:cordon_and_restart"}},
        "spec": {"taints": [GPU_TAINT, OUR_TAINT], "unschedulable": True},
    }


def test_cordoning_a_node_already_cordoned_and_tainted_sends_nothing(
    server: KubeServer, api: KubeApi
) -> None:
    server.answer("GET", NODE_PATH, 200, node(unschedulable=True, taints=[GPU_TAINT, OUR_TAINT], marked=True))
    result = KubeNodeRemediator(api).remediate(cordon())
    assert result.outcome is Outcome.NOOP
    assert "already cordoned (by ftsup)" in result.detail
    assert server.sent() == []


def test_an_operators_cordon_gets_our_taint_only_and_is_never_uncordoned(
    server: KubeServer, api: KubeApi
) -> None:
    nodes = KubeNodeRemediator(api)
    server.answer("GET", NODE_PATH, 200, node(unschedulable=True))  # answers are consumed in order
    server.answer("GET", NODE_PATH, 200, node(unschedulable=True, taints=[GPU_TAINT, OUR_TAINT]))
    server.answer("PATCH", NODE_PATH, 200, node())
    tainted = nodes.remediate(cordon())
    untainted = nodes.remediate(cordon(op=NodeOp.UNCORDON))

    assert tainted.outcome is Outcome.DONE and "cordoned by someone else" in tainted.detail
    assert untainted.outcome is Outcome.DONE and "its cordon is not ftsup's and stays" in untainted.detail
    first, second = server.sent()
    assert first.body == {
        "metadata": {"resourceVersion": "48211"},
        "spec": {"taints": [GPU_TAINT, OUR_TAINT]},
    }
    assert second.body == {"metadata": {"resourceVersion": "48211"}, "spec": {"taints": [GPU_TAINT]}}


def test_uncordon_undoes_exactly_what_ftsup_did(server: KubeServer, api: KubeApi) -> None:
    nodes = KubeNodeRemediator(api)
    server.answer("GET", NODE_PATH, 200, node(unschedulable=True, taints=[GPU_TAINT, OUR_TAINT], marked=True))
    server.answer("GET", NODE_PATH, 200, node())
    server.answer("PATCH", NODE_PATH, 200, node())

    done = nodes.remediate(cordon(op=NodeOp.UNCORDON))
    nothing = nodes.remediate(cordon(op=NodeOp.UNCORDON))  # the node now carries nothing of ours

    assert done.outcome is Outcome.DONE
    assert nothing.outcome is Outcome.NOOP and "left alone" in nothing.detail
    [patch] = server.sent()
    assert patch.content_type == STRATEGIC
    assert patch.body == {
        "metadata": {"resourceVersion": "48211", "annotations": {ANN_CORDONED: None}},
        "spec": {"taints": [GPU_TAINT], "unschedulable": False},
    }


def test_a_conflict_rereads_the_node_and_patches_again(server: KubeServer, api: KubeApi) -> None:
    server.answer("GET", NODE_PATH, 200, node())
    server.answer("PATCH", NODE_PATH, 409, recorded("status-409-node"))
    server.answer("PATCH", NODE_PATH, 200, node(unschedulable=True))

    result = KubeNodeRemediator(api).remediate(cordon())

    assert result.outcome is Outcome.DONE, result.detail
    assert [r.method for r in server.requests] == ["GET", "PATCH", "GET", "PATCH"]


def test_a_node_is_found_by_the_instance_id_in_its_provider_id(server: KubeServer, api: KubeApi) -> None:
    server.answer("GET", "/api/v1/nodes", 200, recorded("node-list"))
    health = KubeNodeRemediator(api).observe("i-0fedcba9876543210")  # a stream named after the instance
    assert (health.exists, health.healthy, health.state, health.target) == (True, True, "Ready", OTHER)
    assert health.detail == "aws:///us-east-1a/i-0fedcba9876543210"
    missing = KubeNodeRemediator(api).remediate(cordon("gpu-node-9"))
    assert missing.outcome is Outcome.NOOP and "no node gpu-node-9" in missing.detail


def test_transient_api_errors_are_retried_within_the_budget(server: KubeServer, api: KubeApi) -> None:
    server.answer("GET", NODE_PATH, 503, recorded("status-503"))
    server.answer("GET", NODE_PATH, 200, node())
    assert KubeNodeRemediator(api).observe(NODE).healthy is True
    assert len(server.requests) == 2
    server.answer("GET", "/api/v1/nodes/broken", 503, recorded("status-503"))
    assert KubeNodeRemediator(api).observe("broken").state == "unreachable"
    assert len(server.requests) == 2 + 3  # max_attempts, then it gives up


# ----------------------------------------------------------------------------- the job


def jobset(**annotations: str) -> dict[str, Any]:
    body = recorded("jobset")
    if annotations:
        body["metadata"]["annotations"] = annotations
    return body


def actuator(api: KubeApi, kind: str = "jobset", **spec: Any) -> KubernetesActuator:
    return KubernetesActuator(
        KubeJobSpec(job="llm-pretrain", namespace="training", kind=kind, name="llm", **spec),
        api,
        clock=lambda: 1_800_000_000.0,
        sleep=lambda s: None,
    )


def act(kind: Verdict, node: str | None = None, key: str = "inc-5:x") -> Action:
    reason = f"gpu-fallen-off-bus on {node}: cordon it" if node else "gloo-timeout: recoverable"
    return Action(
        kind=kind, job="llm-pretrain", incident_id="inc-5", idempotency_key=key, node=node, reason=reason
    )


def test_cordon_and_restart_cordons_evicts_then_restarts_the_jobset(server: KubeServer, api: KubeApi) -> None:
    server.answer("GET", JOBSET, 200, jobset())
    server.answer("GET", PODS, 200, recorded("pods-on-node"), field_selector=f"spec.nodeName={NODE}")
    server.answer("GET", PODS, 200, recorded("pods-all"))
    server.answer("GET", NODE_PATH, 200, node())
    server.answer("PATCH", NODE_PATH, 200, node(unschedulable=True))
    server.answer("POST", f"{PODS}/llm-workers-0-1-x7k2p/eviction", 201, recorded("status-201-eviction"))
    for pod in recorded("pods-all")["items"]:
        server.answer("DELETE", f"{PODS}/{pod['metadata']['name']}", 200, pod)
    server.answer("PATCH", JOBSET, 200, jobset())
    k = actuator(api)
    action = act(Verdict.CORDON_AND_RESTART, NODE, key="inc-5:cordon_and_restart")

    result = k.apply(action)

    assert result.ok, result.detail
    assert result.attempt == 1
    assert "pods on hyperpod-i-0123456789abcdef0: llm-workers-0-1-x7k2p evicted" in result.detail
    sent = server.sent()
    assert [(r.method, r.path) for r in sent] == [
        ("PATCH", NODE_PATH),
        ("POST", f"{PODS}/llm-workers-0-1-x7k2p/eviction"),
        ("DELETE", f"{PODS}/llm-workers-0-0-b9d4q"),
        ("DELETE", f"{PODS}/llm-workers-0-1-x7k2p"),
        ("PATCH", JOBSET),
    ]
    assert sent[0].body["spec"]["taints"][-1] == OUR_TAINT  # the rule named in the decision's reason
    eviction = sent[1]
    assert eviction.content_type == "application/json"
    assert eviction.body == {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": "llm-workers-0-1-x7k2p", "namespace": "training"},
        "deleteOptions": {"gracePeriodSeconds": 30},
    }
    assert sent[2].query == {"gracePeriodSeconds": ["30"]}
    assert (sent[4].content_type, sent[4].body) == (
        MERGE,
        {
            "metadata": {
                "annotations": {
                    ANN_ATTEMPT: "1",
                    ANN_LAUNCHED_AT: "1800000000.000",
                    ANN_LAST_ACTION: "inc-5:cordon_and_restart",
                }
            }
        },
    )
    pods_queries = [r.query for r in server.requests if r.path == PODS]
    assert pods_queries[0] == {
        "labelSelector": ["jobset.sigs.k8s.io/jobset-name=llm"],
        "fieldSelector": [f"spec.nodeName={NODE}"],
    }
    # The same key again changes nothing.
    before = len(server.requests)
    assert k.apply(action) is result
    assert len(server.requests) == before


def test_an_eviction_blocked_by_a_disruption_budget_falls_back_to_delete(
    server: KubeServer, api: KubeApi
) -> None:
    server.answer("GET", JOBSET, 200, jobset())
    server.answer("GET", PODS, 200, recorded("pods-on-node"), field_selector=f"spec.nodeName={NODE}")
    server.answer("GET", PODS, 200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []})
    server.answer("GET", NODE_PATH, 200, node())
    server.answer("PATCH", NODE_PATH, 200, node(unschedulable=True))
    server.answer("POST", f"{PODS}/llm-workers-0-1-x7k2p/eviction", 429, recorded("status-429-eviction"))
    server.answer("DELETE", f"{PODS}/llm-workers-0-1-x7k2p", 200, recorded("pods-on-node")["items"][0])
    server.answer("PATCH", JOBSET, 200, jobset())

    result = actuator(api).apply(act(Verdict.CORDON_AND_RESTART, NODE))

    assert result.ok, result.detail
    assert "deleted (eviction blocked by a PodDisruptionBudget)" in result.detail
    assert [r.method for r in server.sent()] == ["PATCH", "POST", "DELETE", "PATCH"]


def test_refuses_to_cordon_a_node_that_runs_no_pod_of_the_job(server: KubeServer, api: KubeApi) -> None:
    server.answer("GET", JOBSET, 200, jobset())
    server.answer("GET", PODS, 200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []})
    server.answer("GET", "/api/v1/nodes/ip-10-9-9-9", 200, node())

    result = actuator(api).apply(act(Verdict.CORDON_AND_RESTART, "ip-10-9-9-9"))

    assert not result.ok
    assert "no pod of jobsets.jobset.x-k8s.io/v1alpha2 training/llm runs there" in result.detail
    assert server.sent() == []


def test_an_action_the_job_object_already_records_is_not_done_again(server: KubeServer, api: KubeApi) -> None:
    server.answer("GET", JOBSET, 200, jobset(**{ANN_LAST_ACTION: "inc-5:restart", ANN_ATTEMPT: "4"}))
    result = actuator(api).apply(act(Verdict.RESTART, key="inc-5:restart"))  # a restarted daemon
    assert result.ok
    assert result.attempt == 4
    assert result.detail.startswith("already done")
    assert server.sent() == []


def test_pytorchjob_restart_by_suspend_waits_for_the_pods_then_resumes(
    server: KubeServer, api: KubeApi
) -> None:
    empty = {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []}
    server.answer("GET", PYTORCHJOB, 200, recorded("pytorchjob"))
    server.answer("GET", PODS, 200, recorded("pods-all"))
    server.answer("GET", PODS, 200, empty)
    server.answer("PATCH", PYTORCHJOB, 200, recorded("pytorchjob"))

    result = actuator(api, kind="pytorchjob", restart="suspend").apply(
        act(Verdict.RESTART, key="inc-6:restart")
    )

    assert result.ok, result.detail
    assert result.attempt == 3  # the object said attempt 2
    suspend, resume = server.sent()
    assert (suspend.content_type, suspend.body) == (
        MERGE,
        {"spec": {"runPolicy": {"suspend": True}}, "metadata": {"annotations": {}}},
    )
    assert resume.body == {
        "spec": {"runPolicy": {"suspend": False}},
        "metadata": {
            "annotations": {
                ANN_ATTEMPT: "3",
                ANN_LAUNCHED_AT: "1800000000.000",
                ANN_LAST_ACTION: "inc-6:restart",
            }
        },
    }
    assert [r.query["labelSelector"] for r in server.requests if r.path == PODS] == [
        ["training.kubeflow.org/job-name=llm"]
    ] * 2


def test_suspend_restart_whose_pods_never_go_fails_and_stays_suspended(
    server: KubeServer, api: KubeApi
) -> None:
    server.answer("GET", PYTORCHJOB, 200, recorded("pytorchjob"))
    server.answer("GET", PODS, 200, recorded("pods-all"))
    server.answer("PATCH", PYTORCHJOB, 200, recorded("pytorchjob"))
    ticks = itertools.count(step=10.0)
    k = KubernetesActuator(
        KubeJobSpec("llm-pretrain", "training", "pytorchjob", "llm", restart="suspend", suspend_wait_s=30),
        api,
        sleep=lambda s: None,
        monotonic=lambda: next(ticks),
    )
    result = k.apply(act(Verdict.RESTART))
    assert not result.ok
    assert "did not go within 30s; left suspended" in result.detail
    assert len(server.sent()) == 1


def test_halt_suspends_and_marks_and_a_halted_job_is_not_relaunched_until_cleared(
    server: KubeServer, api: KubeApi
) -> None:
    server.answer("GET", JOBSET, 200, jobset())
    server.answer("PATCH", JOBSET, 200, jobset())
    k = actuator(api)
    result = k.apply(act(Verdict.HALT, key="inc-8:halt"))
    assert result.ok and result.attempt is None
    [halt] = server.sent()
    assert (halt.content_type, halt.body) == (
        MERGE,
        {
            "spec": {"suspend": True},
            "metadata": {"annotations": {ANN_HALTED: "inc-8:halt", ANN_LAST_ACTION: "inc-8:halt"}},
        },
    )

    server.clear()
    server.answer("GET", JOBSET, 200, jobset(**{ANN_HALTED: "inc-8:halt"}))
    server.answer("PATCH", JOBSET, 200, jobset())
    with pytest.raises(StartupError, match="halted by ftsup"):
        k.launch()
    k.clear_halt()
    [clear] = server.sent()
    assert clear.body == {"spec": {"suspend": False}, "metadata": {"annotations": {ANN_HALTED: None}}}


def test_observe_reads_pods_annotations_and_ftsup_cordons(server: KubeServer, api: KubeApi) -> None:
    cordoned = recorded("node-list")
    cordoned["items"][0]["spec"]["unschedulable"] = True
    cordoned["items"][0]["metadata"]["annotations"][ANN_CORDONED] = "inc-1:cordon_and_restart"
    cordoned["items"][1]["spec"]["unschedulable"] = True  # cordoned by an operator: not ours
    server.answer("GET", PYTORCHJOB, 200, recorded("pytorchjob"))
    server.answer("GET", PODS, 200, recorded("pods-all"))
    server.answer("GET", "/api/v1/nodes", 200, cordoned, field_selector="spec.unschedulable=true")

    seen = actuator(api, kind="pytorchjob").observe()

    assert seen.nodes == (NODE, OTHER)
    assert seen.exit_codes == ((NODE, 1), (OTHER, None))
    assert seen.running
    assert (seen.attempt, seen.launched_at) == (2, 1795833610.25)
    assert seen.cordoned == (NODE,)
    assert seen.spares == ()


def test_spares_are_ready_schedulable_nodes_of_the_selector_outside_the_job(
    server: KubeServer, api: KubeApi
) -> None:
    server.answer("GET", JOBSET, 200, jobset())
    server.answer("GET", PODS, 200, recorded("pods-on-node"))
    server.answer("GET", "/api/v1/nodes", 200, recorded("node-list"))
    seen = actuator(api, spare_selector="sagemaker.amazonaws.com/instance-group-name=workers").observe()
    assert seen.nodes == (NODE,)
    assert seen.spares == (OTHER,)
    spare_query = [
        r.query for r in server.requests if r.path == "/api/v1/nodes" and "labelSelector" in r.query
    ]
    assert spare_query[0]["labelSelector"] == ["sagemaker.amazonaws.com/instance-group-name=workers"]


def test_plan_names_every_step(api: KubeApi) -> None:
    assert actuator(api).plan(act(Verdict.CORDON_AND_RESTART, NODE, key="k")) == [
        f"check {NODE} runs a pod of jobsets.jobset.x-k8s.io/v1alpha2 training/llm "
        "(jobset.sigs.k8s.io/jobset-name=llm)",
        f"node {NODE}: spec.unschedulable=true, taint ftsup.io/unhealthy=gpu-fallen-off-bus:NoSchedule, "
        "annotation ftsup.io/cordoned (strategic merge patch with resourceVersion)",
        f"evict (policy/v1) the job's pods on {NODE} (grace 30s)",
        "delete the pods of jobsets.jobset.x-k8s.io/v1alpha2 training/llm "
        "(jobset.sigs.k8s.io/jobset-name=llm); its controller recreates them",
        "annotate ftsup.io/attempt+1, ftsup.io/last-action=k",
    ]


def test_from_settings_names_every_problem(api: KubeApi) -> None:
    with pytest.raises(SettingsError) as err:
        from_settings({"restart": "reboot", "grace_period_s": -1, "namespce": "x"}, job="j", api=api)
    assert err.value.problems == (
        "actuator.kubernetes.kind: required: one of jobset, pytorchjob",
        "actuator.kubernetes.name: required",
        "actuator.kubernetes.restart: must be one of delete-pods, suspend, got 'reboot'",
        "actuator.kubernetes.grace_period_s: must be >= 0, got -1",
        "actuator.kubernetes.namespce: unknown key",
    )
    k = from_settings({"kind": "pytorchjob", "name": "llm", "namespace": "training"}, job="j", api=api)
    assert k.spec.selector == "training.kubeflow.org/job-name=llm"


# ----------------------------------------------------------------------------- HyperPod's node label


def labelled(value: str | None) -> dict[str, Any]:
    body = node()
    if value is None:
        del body["metadata"]["labels"][HEALTH_LABEL]
    else:
        body["metadata"]["labels"][HEALTH_LABEL] = value
    return body


def hyperpod_labels(
    api: KubeApi, tmp_path: Path, gate: FileApprovalGate | None = None
) -> HyperPodLabelRemediator:
    return HyperPodLabelRemediator(
        api,
        replace_limit=RateLimiter(tmp_path / "rl.json", max_ops=2, window_s=3600, scope="replace"),
        reboot_limit=RateLimiter(tmp_path / "rl.json", max_ops=2, window_s=3600, scope="reboot"),
        gate=gate,
    )


@pytest.mark.parametrize(
    ("op", "value"),
    [(NodeOp.REPLACE, "UnschedulablePendingReplacement"), (NodeOp.REBOOT, "UnschedulablePendingReboot")],
)
def test_hyperpod_label_way_sets_the_node_health_label(
    server: KubeServer, api: KubeApi, tmp_path: Path, op: NodeOp, value: str
) -> None:
    server.answer("GET", NODE_PATH, 200, labelled("Schedulable"))
    server.answer("PATCH", NODE_PATH, 200, labelled(value))

    result = hyperpod_labels(api, tmp_path).remediate(cordon(op=op))

    assert result.outcome is Outcome.DONE, result.detail
    [patch] = server.sent()
    assert (patch.content_type, patch.body) == (
        STRATEGIC,
        {"metadata": {"labels": {HEALTH_LABEL: value}, "resourceVersion": "48211"}},
    )


def test_hyperpod_label_way_is_idempotent_refuses_other_nodes_and_waits_for_approval(
    server: KubeServer, api: KubeApi, tmp_path: Path
) -> None:
    gate = FileApprovalGate(tmp_path / "approvals")
    r = hyperpod_labels(api, tmp_path, gate)
    server.answer("GET", NODE_PATH, 200, labelled("UnschedulablePendingReboot"))
    server.answer("GET", NODE_PATH, 200, labelled(None))
    server.answer("GET", NODE_PATH, 200, labelled("Schedulable"))

    assert r.remediate(cordon(op=NodeOp.REPLACE)).outcome is Outcome.NOOP
    assert r.remediate(cordon(op=NodeOp.REPLACE)).outcome is Outcome.REFUSED
    pending = r.remediate(cordon(op=NodeOp.REPLACE))
    assert pending.outcome is Outcome.PENDING_APPROVAL
    assert server.sent() == []
    assert r.observe(NODE).state == "Schedulable"


def test_hyperpod_factory_builds_the_label_way_on_a_kube_api(api: KubeApi, tmp_path: Path) -> None:
    r = hyperpod_from_settings({"via": "labels"}, AwsSettings(), state_dir=tmp_path, kube=api)
    assert isinstance(r, HyperPodLabelRemediator)
    assert r.plan(cordon(op=NodeOp.REPLACE)) == [
        f"wait for approval ({tmp_path / 'approvals'}): replacement wipes the instance volumes",
        f"label node {NODE} {HEALTH_LABEL}=UnschedulablePendingReplacement",
    ]


# ----------------------------------------------------------------------------- least privilege


def _rbac_grants() -> set[tuple[str, str, str, str | None]]:
    """(apiGroup, resource, verb, namespace or None for cluster-wide) from deploy/k8s/rbac.yaml."""
    import yaml

    docs = list(
        yaml.safe_load_all((Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "rbac.yaml").read_text())
    )
    grants = set()
    for doc in docs:
        if doc["kind"] not in ("ClusterRole", "Role"):
            continue
        namespace = doc["metadata"].get("namespace")
        for rule in doc["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        grants.add((group, resource, verb, namespace))
    return grants


def _needed(method: str, path: str) -> tuple[str, str, str, str | None]:
    """The RBAC (apiGroup, resource, verb, namespace) a request needs."""
    parts = path.strip("/").split("/")
    if parts[0] == "api":  # /api/v1/...
        group, rest = "", parts[2:]
    else:  # /apis/{group}/{version}/...
        group, rest = parts[1], parts[3:]
    namespace = None
    if rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
    named = len(rest) > 1
    verb = {"GET": "get" if named else "list", "PATCH": "patch", "DELETE": "delete", "POST": "create"}[method]
    return group, resource, verb, namespace


def test_rbac_grants_exactly_the_verbs_the_backend_uses(
    server: KubeServer, api: KubeApi, tmp_path: Path
) -> None:
    """Every request of a cordon_and_restart, a suspend restart, a halt and its clearing, observe with
    spares, an uncordon and the HyperPod label is allowed by deploy/k8s/rbac.yaml, and every grant
    there is used."""
    server.answer("GET", JOBSET, 200, jobset())
    server.answer("GET", PYTORCHJOB, 200, recorded("pytorchjob"))
    server.answer("GET", PODS, 200, recorded("pods-on-node"), field_selector=f"spec.nodeName={NODE}")
    server.answer("GET", PODS, 200, recorded("pods-all"))
    server.answer("GET", PODS, 200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []})
    server.answer("GET", NODE_PATH, 200, labelled("Schedulable"))
    server.answer("GET", "/api/v1/nodes", 200, recorded("node-list"))
    for path in (NODE_PATH, JOBSET, PYTORCHJOB):
        server.answer("PATCH", path, 200, {} if path != NODE_PATH else node())
    server.answer("POST", f"{PODS}/llm-workers-0-1-x7k2p/eviction", 201, recorded("status-201-eviction"))
    for pod in recorded("pods-all")["items"]:
        server.answer("DELETE", f"{PODS}/{pod['metadata']['name']}", 200, pod)
    js = actuator(api, spare_selector="sagemaker.amazonaws.com/instance-group-name=workers")
    assert js.apply(act(Verdict.CORDON_AND_RESTART, NODE, key="a")).ok
    js.observe()
    assert js.apply(act(Verdict.HALT, key="b")).ok
    js.clear_halt()
    assert actuator(api, kind="pytorchjob", restart="suspend").apply(act(Verdict.RESTART, key="c")).ok
    KubeNodeRemediator(api).remediate(cordon(op=NodeOp.UNCORDON))
    hyperpod_labels(api, tmp_path).remediate(cordon(op=NodeOp.REBOOT))

    used = {_needed(r.method, r.path) for r in server.requests}
    grants = _rbac_grants()
    cluster_wide = {(g, r, v) for g, r, v, ns in grants if ns is None}
    for group, resource, verb, namespace in used:
        assert (group, resource, verb) in cluster_wide or (group, resource, verb, namespace) in grants
    assert {(g, r, v) for g, r, v, _ in grants} == {(g, r, v) for g, r, v, _ in used}


def test_the_shipped_manifests_config_and_site_policy_load(api: KubeApi, tmp_path: Path) -> None:
    """deploy/k8s/configmap.yaml: its actuator.kubernetes block builds an actuator, and its site
    policy loads on top of the shipped packs and makes Xid 48 recoverable (reboot, not replace)."""
    import yaml

    from supervisor.act.remediate import choose_op
    from supervisor.classify.policy import load_policies
    from supervisor.vocabulary import FailureClass

    root = Path(__file__).resolve().parents[2]
    maps = {
        d["metadata"]["name"]: d
        for d in yaml.safe_load_all((root / "deploy" / "k8s" / "configmap.yaml").read_text())
    }
    config = yaml.safe_load(maps["ftsup-config"]["data"]["ftsup.yaml"])
    k = from_settings(config["actuator"]["kubernetes"], job=config["job"]["name"], api=api)
    assert (k.spec.kind, k.spec.restart, k.spec.selector) == (
        "jobset",
        "delete-pods",
        "jobset.sigs.k8s.io/jobset-name=llm",
    )
    site = tmp_path / "site"
    site.mkdir()
    (site / "site.yaml").write_text(maps["ftsup-policies"]["data"]["site.yaml"])
    rules = {r.name: r for r in load_policies([root / "policies", site]).rules}
    xid48 = rules["gpu-xid-48-dbe"]
    assert xid48.failure_class is FailureClass.RECOVERABLE
    assert choose_op(NodeFault(xid48.name, xid48.failure_class, xid48.severity)) is NodeOp.REBOOT


def test_an_unreachable_api_server_is_retried_then_reported_never_read_as_a_failure() -> None:
    from tests.conftest import free_port

    api = connect(
        host=f"http://127.0.0.1:{free_port()}", connect_timeout_s=1, read_timeout_s=1, retry=RetryPolicy(3, 5)
    )
    slept: list[float] = []
    api.sleep = slept.append
    health = KubeNodeRemediator(api).observe(NODE)
    assert health.state == "unreachable" and "NewConnectionError" in health.detail
    assert len(slept) == 2  # three attempts, jittered waits between them

    seen = actuator(api).observe()  # blind: unknown, not "stopped with errors"
    assert seen.running and seen.exit_codes == ()
    result = actuator(api).apply(act(Verdict.RESTART))
    assert not result.ok and "restart failed" in result.detail
