"""SageMaker HyperPod: reboot or replace a cluster node.

Two ways, both starting the same HyperPod recovery process:
- `HyperPodRemediator` (the API, any orchestrator): `BatchRebootClusterNodes` (soft recovery: the
  instance and its volumes stay) or `BatchReplaceClusterNodes` (new hardware: every instance
  volume, root and secondary, is destroyed).
- `HyperPodLabelRemediator` (HyperPod on EKS): label the Kubernetes node
  `sagemaker.amazonaws.com/node-health-status=UnschedulablePendingReboot` or
  `=UnschedulablePendingReplacement`, as `kubectl label --overwrite` would; HyperPod's
  node-recovery agent does the rest.

Which one runs is the caller's `NodeOp` (see `remediate.choose_op`: a non-recoverable or
critical root cause asks for REPLACE, a recoverable one for REBOOT).

Node identity: `node_map` (node -> instance id); a name that contains an EC2 instance id
(HyperPod EKS node names look like `hyperpod-i-0123456789abcdef0`); else `ListClusterNodes`
matched on the private DNS host name (Slurm node names on HyperPod are `ip-10-1-2-3`) or the
node logical id. The instance must be a node of the configured cluster (and instance group, if
one is set): anything else is refused.

Idempotency: a node that is already Pending, ShuttingDown, SystemUpdating, in a deep health
check, being attached/detached or NotFound is a no-op; so is a Failed entry `InstanceIdInUse`
(another operation holds it) or `InstanceIdNotFound` (gone). For labels: a node already labelled
UnschedulablePending* is a no-op.

Guards: replacement waits for approval when an `ApprovalGate` is configured (replacement wipes
the instance); both operations are rate-limited by persisted `RateLimiter`s. A request the
service refused (an error response or a Failed entry) gives its slot back.

moto does not implement these SageMaker calls: the tests use botocore's Stubber against the real
service model.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import boto3
from botocore.exceptions import ClientError

from supervisor.act.aws_node import AwsRemediator, Finish
from supervisor.act.remediate import (
    ApprovalGate,
    FileApprovalGate,
    GuardedRemediator,
    NodeHealth,
    NodeOp,
    Outcome,
    RateLimiter,
    RemediationRequest,
    RemediationResult,
    SettingsError,
    SettingsReader,
    node_op_limits_from,
)
from supervisor.sources.aws import (
    ApiCallCounter,
    AwsSettings,
    describe_error,
    error_code,
    make_client,
)

if TYPE_CHECKING:
    from mypy_boto3_sagemaker import SageMakerClient

__all__ = [
    "AWS_ACTIONS",
    "HEALTH_LABEL",
    "HyperPodLabelRemediator",
    "HyperPodRemediator",
    "HyperPodSettings",
    "NodeLabels",
    "check_settings",
    "from_settings",
    "uses_own_kubeconfig",
]

# Every AWS call this module makes, as IAM actions (deploy/iam/ftsup-node-replacement.json grants them).
AWS_ACTIONS = {
    "ListClusterNodes": "sagemaker:ListClusterNodes",
    "DescribeClusterNode": "sagemaker:DescribeClusterNode",
    "BatchRebootClusterNodes": "sagemaker:BatchRebootClusterNodes",
    "BatchReplaceClusterNodes": "sagemaker:BatchReplaceClusterNodes",
}

HEALTH_LABEL = "sagemaker.amazonaws.com/node-health-status"
LABEL_VALUE = {NodeOp.REBOOT: "UnschedulablePendingReboot", NodeOp.REPLACE: "UnschedulablePendingReplacement"}

INSTANCE_ID = re.compile(r"(?<![0-9a-z])i-[0-9a-f]{8}(?:[0-9a-f]{9})?(?![0-9a-z])")
# Statuses in which HyperPod is already doing something to the node: acting again is a no-op.
_BUSY = frozenset(
    {
        "Pending",
        "ShuttingDown",
        "SystemUpdating",
        "DeepHealthCheckInProgress",
        "NotFound",
        "DetachInProgress",
        "AttachInProgress",
    }
)
_MAX_LIST_PAGES = 50  # ListClusterNodes: 100 per page, so up to 5000 nodes


@dataclass(frozen=True, slots=True)
class HyperPodSettings:
    """The cluster (name or ARN) and how to find its nodes."""

    cluster: str
    node_map: Mapping[str, str] = field(default_factory=dict)
    instance_group: str | None = None  # only nodes of this instance group may be touched


@dataclass(frozen=True, slots=True)
class ClusterNode:
    """A HyperPod cluster node as ListClusterNodes / DescribeClusterNode report it."""

    instance_id: str
    instance_group: str
    status: str
    private_dns: str | None = None
    logical_id: str | None = None


def _node_from(row: Mapping[str, Any]) -> ClusterNode:
    status = row.get("InstanceStatus", {})
    return ClusterNode(
        instance_id=str(row.get("InstanceId", "")),
        instance_group=str(row.get("InstanceGroupName", "")),
        status=str(status.get("Status", "Unknown")),
        private_dns=cast("str | None", row.get("PrivateDnsHostname")),
        logical_id=cast("str | None", row.get("NodeLogicalId")),
    )


class HyperPodRemediator(AwsRemediator[HyperPodSettings]):
    """NodeRemediator over the SageMaker API: REBOOT and REPLACE. Thread-safe. Constructor: see
    AwsRemediator."""

    name = "hyperpod"
    supported_ops = frozenset({NodeOp.REBOOT, NodeOp.REPLACE})
    sagemaker: SageMakerClient

    def _connect(self, session: boto3.session.Session | None) -> None:
        self.sagemaker = cast("SageMakerClient", make_client("sagemaker", self.aws, session=session))

    # ------------------------------------------------------------------ node name -> cluster node

    def _describe(self, instance_id: str) -> ClusterNode | None:
        try:
            resp = self._call(
                "DescribeClusterNode",
                lambda: self.sagemaker.describe_cluster_node(
                    ClusterName=self.settings.cluster, NodeId=instance_id
                ),
            )
        except ClientError as exc:
            if error_code(exc) in ("ResourceNotFound", "ResourceNotFoundException", "ValidationException"):
                return None
            raise
        return _node_from(resp["NodeDetails"])

    def _list(self) -> list[ClusterNode]:
        nodes: list[ClusterNode] = []
        token: str | None = None
        for _ in range(_MAX_LIST_PAGES):
            kwargs: dict[str, Any] = {"ClusterName": self.settings.cluster, "MaxResults": 100}
            if self.settings.instance_group:
                kwargs["InstanceGroupNameContains"] = self.settings.instance_group
            if token:
                kwargs["NextToken"] = token

            def page(kw: dict[str, Any] = kwargs) -> Any:
                return self.sagemaker.list_cluster_nodes(**kw)

            resp = self._call("ListClusterNodes", page)
            nodes.extend(_node_from(row) for row in resp.get("ClusterNodeSummaries", []))
            token = resp.get("NextToken") or None
            if token is None:
                break
        return nodes

    def resolve(self, node: str) -> tuple[ClusterNode | None, str]:
        """The cluster node behind `node` and how it was found, or (None, why not)."""
        mapped = self.settings.node_map.get(node)
        found = INSTANCE_ID.search(node)
        instance_id = mapped or (found.group(0) if found else None)
        if instance_id is not None:
            how = "node_map" if mapped else "instance id in the node name"
            described = self._describe(instance_id)
            if described is None:
                return None, f"{instance_id} ({how}) is not a node of cluster {self.settings.cluster}"
            return described, how
        matches = [
            n
            for n in self._list()
            if node in (n.logical_id, n.private_dns) or (n.private_dns or "").split(".", 1)[0] == node
        ]
        if len(matches) == 1:
            return matches[0], "ListClusterNodes (private DNS name / logical id)"
        if not matches:
            return None, f"no node of cluster {self.settings.cluster} is named {node}"
        ids = ", ".join(m.instance_id for m in matches)
        return (
            None,
            f"{len(matches)} nodes of cluster {self.settings.cluster} match {node} ({ids}): ambiguous",
        )

    # ------------------------------------------------------------------ NodeRemediator

    def plan(self, request: RemediationRequest) -> list[str]:
        if request.op not in self.supported_ops:
            return [f"(hyperpod cannot {request.op.value} a node)"]
        steps = [f"map {request.node} to a node of HyperPod cluster {self.settings.cluster}; skip it if busy"]
        if request.op is NodeOp.REPLACE:
            if isinstance(self.gate, FileApprovalGate):
                steps.append(
                    f"wait for approval ({self.gate.directory}): replacement wipes the instance volumes"
                )
            limit = self.replace_limit
            steps.append(f"rate limit: at most {limit.max_ops} replacements per {limit.window_s:g}s")
            steps.append("BatchReplaceClusterNodes (new hardware, volumes destroyed)")
        else:
            limit = self.reboot_limit
            steps.append(f"rate limit: at most {limit.max_ops} reboots per {limit.window_s:g}s")
            steps.append("BatchRebootClusterNodes (instance and volumes kept)")
        return steps

    def _remediate(self, request: RemediationRequest, finish: Finish) -> RemediationResult:
        node, how = self.resolve(request.node)
        if node is None:
            return finish(Outcome.REFUSED, f"cannot map {request.node}: {how}")
        iid = node.instance_id
        group = self.settings.instance_group
        if group and node.instance_group != group:
            return finish(
                Outcome.REFUSED,
                f"{iid} is in instance group {node.instance_group}, not {group}; refusing",
                iid,
            )
        if node.status in _BUSY:
            return finish(Outcome.NOOP, f"{iid} is {node.status}: HyperPod is already on it", iid)
        refused, why = self.admit(request, iid)
        if refused is not None:
            return finish(refused, why, iid)
        limiter = self.limiter(request.op)
        outcome, detail = self._batch(request.op, iid, limiter, request.idempotency_key)
        return finish(outcome, f"{detail} ({why})" if outcome is Outcome.DONE else detail, iid)

    def _batch(self, op: NodeOp, iid: str, limiter: RateLimiter, key: str) -> tuple[Outcome, str]:
        cluster = self.settings.cluster
        try:
            if op is NodeOp.REPLACE:
                resp = self._call(
                    "BatchReplaceClusterNodes",
                    lambda: self.sagemaker.batch_replace_cluster_nodes(ClusterName=cluster, NodeIds=[iid]),
                )
            else:
                resp = self._call(
                    "BatchRebootClusterNodes",
                    lambda: self.sagemaker.batch_reboot_cluster_nodes(ClusterName=cluster, NodeIds=[iid]),
                )
        except ClientError as exc:
            limiter.release(key)
            return Outcome.FAILED, describe_error(exc)
        verb = "replacement" if op is NodeOp.REPLACE else "reboot"
        if iid in resp.get("Successful", []):
            return Outcome.DONE, f"HyperPod {verb} of {iid} started"
        limiter.release(key)  # a Failed entry: the service did nothing to the node
        for failed in resp.get("Failed", []):
            if failed.get("NodeId") != iid:
                continue
            code, message = failed.get("ErrorCode", ""), failed.get("Message", "")
            if code == "InstanceIdInUse":
                return Outcome.NOOP, f"{iid} is in use by another operation: {message}"
            if code == "InstanceIdNotFound":
                return Outcome.NOOP, f"{iid} is gone: {message}"
            return Outcome.FAILED, f"{verb} of {iid} failed: {code}: {message}"
        return Outcome.FAILED, f"{verb} of {iid}: the response names it neither Successful nor Failed"

    def observe(self, node: str) -> NodeHealth:
        """The node's HyperPod instance status (Running healthy, Failure unhealthy, else unknown)."""
        try:
            found, how = self.resolve(node)
        except Exception as exc:
            return NodeHealth(node, False, None, "unreachable", None, detail=describe_error(exc))
        if found is None:
            return NodeHealth(node, False, None, "unknown", None, detail=how)
        healthy = True if found.status == "Running" else False if found.status == "Failure" else None
        return NodeHealth(
            node,
            True,
            healthy,
            found.status,
            found.instance_id,
            detail=f"instance group {found.instance_group}",
        )


# ----------------------------------------------------------------------------- the Kubernetes-label way


class NodeLabels(Protocol):
    """What the label way needs of a Kubernetes API (supervisor.act.kubernetes.KubeApi has it)."""

    def get_node(self, name: str) -> dict[str, Any] | None: ...

    def patch_node(self, name: str, body: Mapping[str, Any]) -> dict[str, Any]: ...


class HyperPodLabelRemediator(GuardedRemediator):
    """NodeRemediator for HyperPod on EKS that sets the node-health-status label. REBOOT, REPLACE.

    Only a HyperPod node (one that carries the label at all) is touched; an UnschedulablePending*
    value already there is a no-op. The patch carries the node's resourceVersion, so it never
    overwrites a change made since it was read.
    """

    name = "hyperpod-labels"
    supported_ops = frozenset({NodeOp.REBOOT, NodeOp.REPLACE})

    def __init__(
        self,
        api: NodeLabels,
        *,
        replace_limit: RateLimiter,
        reboot_limit: RateLimiter,
        gate: ApprovalGate | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(replace_limit=replace_limit, reboot_limit=reboot_limit, gate=gate, clock=clock)
        self.api = api

    def plan(self, request: RemediationRequest) -> list[str]:
        if request.op not in self.supported_ops:
            return [f"(hyperpod-labels cannot {request.op.value} a node)"]
        steps = []
        if request.op is NodeOp.REPLACE and isinstance(self.gate, FileApprovalGate):
            steps.append(f"wait for approval ({self.gate.directory}): replacement wipes the instance volumes")
        steps.append(f"label node {request.node} {HEALTH_LABEL}={LABEL_VALUE[request.op]}")
        return steps

    def remediate(self, request: RemediationRequest) -> RemediationResult:
        started = self.clock()
        node_name = request.node

        def finish(outcome: Outcome, detail: str) -> RemediationResult:
            return RemediationResult(node_name, request.op, outcome, detail, started, self.clock(), node_name)

        if request.op not in self.supported_ops:
            return finish(Outcome.REFUSED, f"hyperpod-labels cannot {request.op.value} a node")
        try:
            node = self.api.get_node(node_name)
            if node is None:
                return finish(Outcome.NOOP, f"node {node_name} is gone")
            labels = node.get("metadata", {}).get("labels") or {}
            current = labels.get(HEALTH_LABEL)
            if current is None:
                return finish(
                    Outcome.REFUSED, f"node {node_name} has no {HEALTH_LABEL} label: not a HyperPod node"
                )
            if str(current).startswith("UnschedulablePending"):
                return finish(Outcome.NOOP, f"node {node_name} is already {current}")
            refused, why = self.admit(request, node_name)
            if refused is not None:
                return finish(refused, why)
            limiter = self.limiter(request.op)
            value = LABEL_VALUE[request.op]
            version = node.get("metadata", {}).get("resourceVersion")
            try:
                self.api.patch_node(
                    node_name, {"metadata": {"labels": {HEALTH_LABEL: value}, "resourceVersion": version}}
                )
            except Exception:
                limiter.release(request.idempotency_key)
                raise
            return finish(Outcome.DONE, f"labelled {node_name} {HEALTH_LABEL}={value} (was {current}; {why})")
        except Exception as exc:
            return finish(Outcome.FAILED, f"{type(exc).__name__}: {exc}")

    def observe(self, node: str) -> NodeHealth:
        try:
            found = self.api.get_node(node)
        except Exception as exc:
            return NodeHealth(node, False, None, "unreachable", None, detail=f"{type(exc).__name__}: {exc}")
        if found is None:
            return NodeHealth(node, False, None, "gone", None)
        value = str((found.get("metadata", {}).get("labels") or {}).get(HEALTH_LABEL, "unlabelled"))
        healthy = True if value == "Schedulable" else False if value.startswith("Unschedulable") else None
        return NodeHealth(node, True, healthy, value, node)


@dataclass(frozen=True, slots=True)
class _Parsed:
    """A `hyperpod` block, checked: everything a remediator needs but its connections."""

    via: str
    settings: HyperPodSettings
    replace_limit: RateLimiter
    reboot_limit: RateLimiter
    gate: ApprovalGate | None
    kubeconfig: str | None
    context: str | None


def _parse(settings: Mapping[str, object], *, state_dir: Path | None, prefix: str) -> _Parsed:
    """Read the block (see from_settings); SettingsError names every problem. No I/O."""
    read = SettingsReader(settings, prefix)
    via = read.choice("via", "api", ("api", "labels"))
    cluster = read.text("cluster", required=via == "api") or ""
    node_map = read.str_map("node_map")
    for node, iid in node_map.items():
        if not re.fullmatch(INSTANCE_ID.pattern, iid):
            read.problem(f"node_map.{node}", f"must be an instance id (i-...), got {iid!r}")
    group = read.text("instance_group")
    replace_limit, reboot_limit = node_op_limits_from(read, state_dir=state_dir)
    approval_dir = read.text("approval_dir")
    require = read.flag("require_approval", True)
    kubeconfig = read.text("kubeconfig")
    context = read.text("context")
    if via == "api" and (kubeconfig or context):
        read.problem("kubeconfig", "only read with via: labels")
    read.done()
    gate: ApprovalGate | None = None
    if approval_dir:
        gate = FileApprovalGate(Path(approval_dir))
    elif require:
        gate = FileApprovalGate((state_dir or Path(".")) / "approvals")
    return _Parsed(
        via,
        HyperPodSettings(cluster=cluster, node_map=node_map, instance_group=group),
        replace_limit,
        reboot_limit,
        gate,
        kubeconfig,
        context,
    )


def check_settings(settings: Mapping[str, object], *, prefix: str = "actuator.hyperpod") -> None:
    """Check the `hyperpod` block exactly as from_settings does, without building clients, connecting
    to Kubernetes or touching the disk (what `ftsup config check` runs). Raises SettingsError."""
    _parse(settings, state_dir=None, prefix=prefix)


def uses_own_kubeconfig(settings: Mapping[str, object]) -> bool:
    """Whether a `via: labels` block names its own cluster (`kubeconfig` or `context`); when it does
    not, a caller that already holds a KubeApi for the job's cluster may pass it as `kube`."""
    return bool(settings.get("kubeconfig") or settings.get("context"))


def from_settings(
    settings: Mapping[str, object],
    aws: AwsSettings,
    *,
    state_dir: Path | None,
    session: boto3.session.Session | None = None,
    counter: ApiCallCounter | None = None,
    kube: NodeLabels | None = None,
    prefix: str = "actuator.hyperpod",
) -> HyperPodRemediator | HyperPodLabelRemediator:
    """Build a HyperPod remediator from the `hyperpod` config block; SettingsError names every problem.

    Keys:
      cluster: NAME-or-ARN              required for via: api
      via: api | labels                 the SageMaker API (default) or the EKS node label
      node_map: {node: i-...}           explicit node name -> instance id (api)
      instance_group: NAME              only touch nodes of this instance group (api)
      max_replaces: 2, max_reboots: 4, window_s: 3600   rate limits (persisted in state_dir)
      approval_dir: PATH                replacements wait for PATH/<key>.approved
      require_approval: true            with no approval_dir: false allows replacement without a human
      kubeconfig: PATH, context: NAME   via: labels: the cluster (default: in-cluster, else ~/.kube/config)
    `kube` replaces the connection for via: labels (an existing supervisor.act.kubernetes.KubeApi).
    Replacement wipes the instance, so it needs approval unless `require_approval: false`: with
    `require_approval` left true and no `approval_dir`, approvals go to `state_dir/approvals`.
    """
    parsed = _parse(settings, state_dir=state_dir, prefix=prefix)
    if parsed.via == "labels" and kube is None:
        from supervisor.act.kubernetes import connect  # the Kubernetes client only when labels are used

        try:
            kube = connect(
                kubeconfig=str(Path(parsed.kubeconfig).expanduser()) if parsed.kubeconfig else None,
                context=parsed.context,
            )
        except Exception as exc:
            raise SettingsError(
                [f"{prefix}.via: labels: no Kubernetes API ({type(exc).__name__}: {exc})"]
            ) from exc
    if parsed.via == "labels":
        assert kube is not None
        return HyperPodLabelRemediator(
            kube, replace_limit=parsed.replace_limit, reboot_limit=parsed.reboot_limit, gate=parsed.gate
        )
    return HyperPodRemediator(
        parsed.settings,
        aws,
        replace_limit=parsed.replace_limit,
        reboot_limit=parsed.reboot_limit,
        gate=parsed.gate,
        session=session,
        counter=counter,
    )
