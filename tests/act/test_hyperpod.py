"""SageMaker HyperPod reboot / replace through the SageMaker API.

moto does not implement BatchRebootClusterNodes, BatchReplaceClusterNodes, ListClusterNodes or
DescribeClusterNode, so these tests use botocore's `Stubber` on a real SageMaker client: the
Stubber validates every request we make against the installed botocore service model (operation
names, required parameters, patterns such as `i-[a-f0-9]{8}(?:[a-f0-9]{9})?`) and every canned
response against the model's output shapes, and fails on any call we did not expect. Nothing is
sent over the network. (The Kubernetes-label way is tested in test_kubernetes.py against a local
HTTP server speaking the Kubernetes API.)
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from botocore.stub import Stubber

from supervisor.act.hyperpod import HyperPodRemediator, HyperPodSettings, from_settings
from supervisor.act.remediate import (
    FileApprovalGate,
    NodeFault,
    NodeOp,
    Outcome,
    RateLimiter,
    RemediationRequest,
    SettingsError,
    choose_op,
)
from supervisor.sources.aws import AwsSettings
from supervisor.vocabulary import FailureClass, Severity

CLUSTER = "llm-pretrain"
IID = "i-0123456789abcdef0"
OTHER = "i-0fedcba9876543210"
_keys = itertools.count()


def node_row(
    iid: str = IID, status: str = "Running", group: str = "workers", dns: str = "ip-10-1-2-3"
) -> dict[str, Any]:
    return {
        "InstanceGroupName": group,
        "InstanceId": iid,
        "InstanceType": "ml.p5.48xlarge",
        "LaunchTime": datetime(2026, 11, 1, tzinfo=UTC),
        "InstanceStatus": {"Status": status, "Message": ""},
        "PrivateDnsHostname": f"{dns}.ec2.internal",
    }


def request(node: str, op: NodeOp, key: str | None = None) -> RemediationRequest:
    return RemediationRequest(
        node=node, op=op, idempotency_key=key or f"inc-{next(_keys)}:node", reason="xid"
    )


def make(
    tmp_path: Path, *, gate: FileApprovalGate | None = None, max_ops: int = 5, group: str | None = None
) -> HyperPodRemediator:
    state = tmp_path / "hp-ratelimit.json"
    return HyperPodRemediator(
        HyperPodSettings(cluster=CLUSTER, instance_group=group),
        AwsSettings(max_attempts=3),
        replace_limit=RateLimiter(state, max_ops=max_ops, window_s=3600, scope="replace"),
        reboot_limit=RateLimiter(state, max_ops=max_ops, window_s=3600, scope="reboot"),
        gate=gate,
        sleep=lambda s: None,
    )


@pytest.fixture
def hp(aws_env: None, tmp_path: Path) -> Iterator[tuple[HyperPodRemediator, Stubber]]:
    r = make(tmp_path)
    with Stubber(r.sagemaker) as stub:
        yield r, stub
        stub.assert_no_pending_responses()


def expect_describe(stub: Stubber, status: str = "Running", iid: str = IID, group: str = "workers") -> None:
    stub.add_response(
        "describe_cluster_node",
        {"NodeDetails": node_row(iid, status, group)},
        {"ClusterName": CLUSTER, "NodeId": iid},
    )


def test_the_installed_botocore_has_the_hyperpod_node_operations(
    hp: tuple[HyperPodRemediator, Stubber],
) -> None:
    names = set(hp[0].sagemaker.meta.service_model.operation_names)
    assert {
        "BatchRebootClusterNodes",
        "BatchReplaceClusterNodes",
        "ListClusterNodes",
        "DescribeClusterNode",
    } <= names


def test_recoverable_fault_reboots_the_node_named_after_its_instance(
    hp: tuple[HyperPodRemediator, Stubber],
) -> None:
    r, stub = hp
    op = choose_op(
        NodeFault(rule="gpu-xid-48", failure_class=FailureClass.RECOVERABLE, severity=Severity.WARNING)
    )
    assert op is NodeOp.REBOOT
    expect_describe(stub)
    stub.add_response(
        "batch_reboot_cluster_nodes", {"Successful": [IID]}, {"ClusterName": CLUSTER, "NodeIds": [IID]}
    )

    result = r.remediate(request(f"hyperpod-{IID}", op))  # the HyperPod EKS node name

    assert result.outcome is Outcome.DONE, result.detail
    assert result.target == IID
    assert result.detail.startswith(f"HyperPod reboot of {IID} started")
    assert r.counter.snapshot() == {"DescribeClusterNode": 1, "BatchRebootClusterNodes": 1}


def test_non_recoverable_fault_replaces_only_after_approval(aws_env: None, tmp_path: Path) -> None:
    gate = FileApprovalGate(tmp_path / "approvals")
    r = make(tmp_path, gate=gate)
    op = choose_op(NodeFault(rule="gpu-fallen-off-bus", failure_class=FailureClass.NON_RECOVERABLE))
    assert op is NodeOp.REPLACE
    req = request(IID, op, key="inc-9:cordon_and_restart:node")
    with Stubber(r.sagemaker) as stub:
        expect_describe(stub)
        pending = r.remediate(req)
        assert pending.outcome is Outcome.PENDING_APPROVAL, pending.detail
        assert str(gate.approved_path(req)) in pending.detail
        assert r.replace_limit.used() == 0

        gate.approved_path(req).touch()
        expect_describe(stub)
        stub.add_response(
            "batch_replace_cluster_nodes", {"Successful": [IID]}, {"ClusterName": CLUSTER, "NodeIds": [IID]}
        )
        done = r.remediate(req)
        stub.assert_no_pending_responses()
    assert done.outcome is Outcome.DONE, done.detail
    assert "replacement" in done.detail
    assert r.replace_limit.used() == 1


def test_slurm_node_name_is_found_by_private_dns_across_pages(hp: tuple[HyperPodRemediator, Stubber]) -> None:
    r, stub = hp
    stub.add_response(
        "list_cluster_nodes",
        {"ClusterNodeSummaries": [node_row(OTHER, dns="ip-10-1-2-4")], "NextToken": "page-2"},
        {"ClusterName": CLUSTER, "MaxResults": 100},
    )
    stub.add_response(
        "list_cluster_nodes",
        {"ClusterNodeSummaries": [node_row(IID, dns="ip-10-1-2-3")]},
        {"ClusterName": CLUSTER, "MaxResults": 100, "NextToken": "page-2"},
    )
    stub.add_response(
        "batch_reboot_cluster_nodes", {"Successful": [IID]}, {"ClusterName": CLUSTER, "NodeIds": [IID]}
    )

    result = r.remediate(request("ip-10-1-2-3", NodeOp.REBOOT))

    assert result.outcome is Outcome.DONE, result.detail
    assert result.target == IID


@pytest.mark.parametrize("status", ["ShuttingDown", "Pending", "SystemUpdating", "DeepHealthCheckInProgress"])
def test_a_node_hyperpod_is_already_working_on_is_a_noop(
    hp: tuple[HyperPodRemediator, Stubber], status: str
) -> None:
    r, stub = hp
    expect_describe(stub, status=status)
    result = r.remediate(request(IID, NodeOp.REPLACE))  # no Batch* call is stubbed: none may be made
    assert result.outcome is Outcome.NOOP, result.detail
    assert f"is {status}" in result.detail


def test_in_use_is_a_noop_and_invalid_status_a_failure_both_give_the_slot_back(
    hp: tuple[HyperPodRemediator, Stubber],
) -> None:
    r, stub = hp
    params = {"ClusterName": CLUSTER, "NodeIds": [IID]}
    expect_describe(stub)
    stub.add_response(
        "batch_replace_cluster_nodes",
        {"Failed": [{"NodeId": IID, "ErrorCode": "InstanceIdInUse", "Message": "reboot in progress"}]},
        params,
    )
    expect_describe(stub)
    stub.add_response(
        "batch_replace_cluster_nodes",
        {"Failed": [{"NodeId": IID, "ErrorCode": "InvalidInstanceStatus", "Message": "not running"}]},
        params,
    )

    in_use = r.remediate(request(IID, NodeOp.REPLACE))
    invalid = r.remediate(request(IID, NodeOp.REPLACE))

    assert in_use.outcome is Outcome.NOOP and "in use by another operation" in in_use.detail
    assert invalid.outcome is Outcome.FAILED and "InvalidInstanceStatus: not running" in invalid.detail
    assert r.replace_limit.used() == 0


def test_refuses_nodes_outside_the_cluster_or_instance_group(aws_env: None, tmp_path: Path) -> None:
    r = make(tmp_path, group="workers")
    with Stubber(r.sagemaker) as stub:
        stub.add_client_error(
            "describe_cluster_node",
            "ResourceNotFound",
            "node not found",
            400,
            expected_params={"ClusterName": CLUSTER, "NodeId": OTHER},
        )
        expect_describe(stub, group="controller")
        outside = r.remediate(request(OTHER, NodeOp.REPLACE))
        wrong_group = r.remediate(request(IID, NodeOp.REPLACE))
        stub.assert_no_pending_responses()
    assert outside.outcome is Outcome.REFUSED and f"is not a node of cluster {CLUSTER}" in outside.detail
    assert (
        wrong_group.outcome is Outcome.REFUSED
        and "instance group controller, not workers" in wrong_group.detail
    )
    assert r.remediate(request(IID, NodeOp.CORDON)).outcome is Outcome.REFUSED


def test_rate_limit_and_throttling_retry(aws_env: None, tmp_path: Path) -> None:
    r = make(tmp_path, max_ops=1)
    with Stubber(r.sagemaker) as stub:
        expect_describe(stub)
        stub.add_client_error("batch_reboot_cluster_nodes", "ThrottlingException", "slow down", 400)
        stub.add_response(
            "batch_reboot_cluster_nodes", {"Successful": [IID]}, {"ClusterName": CLUSTER, "NodeIds": [IID]}
        )
        expect_describe(stub, iid=OTHER)
        first = r.remediate(request(IID, NodeOp.REBOOT))
        second = r.remediate(request(OTHER, NodeOp.REBOOT))
        stub.assert_no_pending_responses()
    assert first.outcome is Outcome.DONE, first.detail
    assert r.counter.get("BatchRebootClusterNodes") == 2  # throttled once, retried with jitter
    assert second.outcome is Outcome.RATE_LIMITED
    assert "reboot rate limit: 1 of 1" in second.detail


def test_observe_reports_hyperpod_status(hp: tuple[HyperPodRemediator, Stubber]) -> None:
    r, stub = hp
    expect_describe(stub, status="Failure")
    health = r.observe(IID)
    assert (health.exists, health.healthy, health.state, health.target) == (True, False, "Failure", IID)


def test_from_settings_requires_approval_for_replacement_by_default(aws_env: None, tmp_path: Path) -> None:
    r = from_settings({"cluster": CLUSTER, "max_replaces": 1}, AwsSettings(), state_dir=tmp_path)
    assert isinstance(r, HyperPodRemediator)
    assert isinstance(r.gate, FileApprovalGate)
    assert r.gate.directory == tmp_path / "approvals"
    assert r.plan(request("n", NodeOp.REPLACE)) == [
        f"map n to a node of HyperPod cluster {CLUSTER}; skip it if busy",
        f"wait for approval ({tmp_path / 'approvals'}): replacement wipes the instance volumes",
        "rate limit: at most 1 replacements per 3600s",
        "BatchReplaceClusterNodes (new hardware, volumes destroyed)",
    ]
    free = from_settings({"cluster": CLUSTER, "require_approval": False}, AwsSettings(), state_dir=tmp_path)
    assert not isinstance(free.gate, FileApprovalGate)


def test_from_settings_names_every_problem(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as err:
        from_settings(
            {"via": "labels", "node_map": {"n": "i-zz"}, "window_s": 0}, AwsSettings(), state_dir=tmp_path
        )
    assert err.value.problems == (
        "actuator.hyperpod.node_map.n: must be an instance id (i-...), got 'i-zz'",
        "actuator.hyperpod.window_s: must be > 0, got 0",
    )
    with pytest.raises(SettingsError, match=r"actuator.hyperpod.via: labels: no Kubernetes API"):
        from_settings(
            {"via": "labels", "kubeconfig": str(tmp_path / "missing")}, AwsSettings(), state_dir=tmp_path
        )
    with pytest.raises(SettingsError, match=r"actuator.hyperpod.cluster: required"):
        from_settings({"kubeconfig": "x"}, AwsSettings(), state_dir=tmp_path)
