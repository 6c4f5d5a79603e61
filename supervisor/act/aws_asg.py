"""EC2 Auto Scaling: the group replaces a bad node's instance.

Replace (the default way): `SetInstanceHealth(HealthStatus='Unhealthy', ShouldRespectGracePeriod=False)`;
the group terminates the instance and launches a new one from its launch template. With
`method: standby` the instance goes to Standby instead (`EnterStandby`, desired capacity kept):
the group launches a replacement at once and the bad instance stays, out of service, for a human
to inspect and terminate. Reboot: `ec2:RebootInstances` (the instance and its disks stay).

Before acting, every time:
1. the node name is mapped to an instance id: `node_map` first; a name that is an instance id;
   else an EC2 lookup (`lookup: tag` matches tag `tag_key` = node name; `lookup: private_dns`
   matches a full private DNS name `ip-10-0-1-2.ec2.internal` exactly, and a short host name
   `ip-10-0-1-2` by its private address 10.0.1.2). No match or several matches: refused,
   nothing is done.
2. the instance must belong to the configured group (`DescribeAutoScalingInstances`); an
   instance of another group, or of none, is refused.
3. idempotency at the target: an instance already Unhealthy, terminating, in Standby, detached
   or gone (terminated, unknown to EC2) is a no-op with a message saying which.
4. replacements may need approval (`approval_dir`) and are rate-limited (`max_replaces` per
   `window_s`, persisted under `state_dir`); reboots have their own limit (`max_reboots`).

Optional `lifecycle_hook`: the group holds terminating instances in Terminating:Wait for a
termination hook that ftsup owns; after marking the instance Unhealthy ftsup waits up to
`lifecycle_wait_s` for that state and completes the hook with CONTINUE.

Every AWS call goes through `call_with_retry` (timeouts from AwsSettings, jittered retries
within a budget) and is counted in the ApiCallCounter under its API name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

import boto3
from botocore.exceptions import ClientError

from supervisor.act.aws_node import AwsRemediator, Finish
from supervisor.act.remediate import (
    FileApprovalGate,
    NodeHealth,
    NodeOp,
    Outcome,
    RateLimiter,
    RemediationRequest,
    RemediationResult,
    SettingsReader,
    node_op_limits_from,
)
from supervisor.sources.aws import ApiCallCounter, AwsSettings, describe_error, make_client

if TYPE_CHECKING:
    from mypy_boto3_autoscaling import AutoScalingClient
    from mypy_boto3_autoscaling.type_defs import AutoScalingInstanceDetailsTypeDef
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ec2.type_defs import FilterTypeDef

__all__ = ["AWS_ACTIONS", "AsgRemediator", "AsgSettings", "check_settings", "from_settings"]

# Every AWS call this module makes, as IAM actions (deploy/iam/ftsup-node-replacement.json grants them).
AWS_ACTIONS = {
    "DescribeAutoScalingInstances": "autoscaling:DescribeAutoScalingInstances",
    "SetInstanceHealth": "autoscaling:SetInstanceHealth",
    "EnterStandby": "autoscaling:EnterStandby",
    "CompleteLifecycleAction": "autoscaling:CompleteLifecycleAction",
    "DescribeInstances": "ec2:DescribeInstances",
    "RebootInstances": "ec2:RebootInstances",
}

INSTANCE_ID = re.compile(r"i-[0-9a-f]{8}(?:[0-9a-f]{9})?")
_IP_NAME = re.compile(r"ip-(\d{1,3})-(\d{1,3})-(\d{1,3})-(\d{1,3})")
_LIVE_STATES = ["pending", "running", "stopping", "stopped"]


@dataclass(frozen=True, slots=True)
class AsgSettings:
    """One Auto Scaling group and how to find and replace its instances (see the module docstring)."""

    group: str
    method: Literal["unhealthy", "standby"] = "unhealthy"
    node_map: Mapping[str, str] = field(default_factory=dict)
    lookup: Literal["none", "tag", "private_dns"] = "none"
    tag_key: str = "Name"
    respect_grace_period: bool = False
    lifecycle_hook: str | None = None
    lifecycle_wait_s: float = 60.0
    lifecycle_poll_s: float = 5.0

    def __post_init__(self) -> None:
        bad = {n: i for n, i in self.node_map.items() if not INSTANCE_ID.fullmatch(i)}
        if bad:
            raise ValueError(f"node_map values must be instance ids (i-...), got {bad}")


@dataclass(frozen=True, slots=True)
class _Member:
    """An instance as the group reports it."""

    instance_id: str
    group: str
    lifecycle: str
    health: str


class AsgRemediator(AwsRemediator[AsgSettings]):
    """NodeRemediator for an EC2 Auto Scaling group: REPLACE and REBOOT. Thread-safe (boto3
    clients are; the rate limiter locks). Constructor: see AwsRemediator."""

    name = "aws-asg"
    supported_ops = frozenset({NodeOp.REPLACE, NodeOp.REBOOT})
    asg: AutoScalingClient
    ec2: EC2Client

    def _connect(self, session: boto3.session.Session | None) -> None:
        self.asg = cast("AutoScalingClient", make_client("autoscaling", self.aws, session=session))
        self.ec2 = cast("EC2Client", make_client("ec2", self.aws, session=session))

    # ------------------------------------------------------------------ calls

    def _member(self, instance_id: str) -> _Member | None:
        resp = self._call(
            "DescribeAutoScalingInstances",
            lambda: self.asg.describe_auto_scaling_instances(InstanceIds=[instance_id]),
        )
        rows: list[AutoScalingInstanceDetailsTypeDef] = resp["AutoScalingInstances"]
        for row in rows:
            if row["InstanceId"] == instance_id:
                return _Member(
                    instance_id, row["AutoScalingGroupName"], row["LifecycleState"], row["HealthStatus"]
                )
        return None

    def _ec2_state(self, instance_id: str) -> str:
        """The instance's EC2 state name, or "not-found"."""
        try:
            resp = self._call(
                "DescribeInstances", lambda: self.ec2.describe_instances(InstanceIds=[instance_id])
            )
        except ClientError as exc:
            if (exc.response.get("Error", {}).get("Code") or "").startswith("InvalidInstanceID"):
                return "not-found"
            raise
        for reservation in resp.get("Reservations", []):
            for instance in reservation.get("Instances", []):
                if instance.get("InstanceId") == instance_id:
                    return str(instance.get("State", {}).get("Name", "unknown"))
        return "not-found"

    # ------------------------------------------------------------------ node name -> instance id

    def resolve(self, node: str) -> tuple[str | None, str]:
        """(instance id, how it was found) or (None, why not). Several matches: None (ambiguous)."""
        mapped = self.settings.node_map.get(node)
        if mapped is not None:
            return mapped, "node_map"
        if INSTANCE_ID.fullmatch(node):
            return node, "the node name is an instance id"
        filters: list[FilterTypeDef]
        if self.settings.lookup == "tag":
            filters = [{"Name": f"tag:{self.settings.tag_key}", "Values": [node]}]
            how = f"EC2 tag {self.settings.tag_key}={node}"
        elif self.settings.lookup == "private_dns":
            ip = _IP_NAME.fullmatch(node.split(".", 1)[0])
            if "." in node:
                filters = [{"Name": "private-dns-name", "Values": [node]}]
                how = f"private DNS name {node}"
            elif ip is not None:  # a short host name ip-A-B-C-D is the private address A.B.C.D
                address = ".".join(ip.groups())
                filters = [{"Name": "private-ip-address", "Values": [address]}]
                how = f"private address {address}"
            else:
                return None, f"{node} is neither a private DNS name nor ip-A-B-C-D"
        else:
            return None, f"{node} is not in node_map and lookup is off"
        filters.append({"Name": "instance-state-name", "Values": _LIVE_STATES})
        resp = self._call("DescribeInstances", lambda: self.ec2.describe_instances(Filters=filters))
        found = sorted(
            {
                str(i["InstanceId"])
                for r in resp.get("Reservations", [])
                for i in r.get("Instances", [])
                if "InstanceId" in i
            }
        )
        if len(found) == 1:
            return found[0], how
        if not found:
            return None, f"no live instance has {how}"
        return None, f"{len(found)} instances have {how} ({', '.join(found)}): ambiguous"

    # ------------------------------------------------------------------ NodeRemediator

    def plan(self, request: RemediationRequest) -> list[str]:
        s = self.settings
        steps = [
            f"map {request.node} to an instance id; check it is a member of Auto Scaling group {s.group}"
        ]
        if request.op is NodeOp.REBOOT:
            return [*steps, "RebootInstances (instance and disks kept)"]
        if request.op is not NodeOp.REPLACE:
            return [f"(aws-asg cannot {request.op.value} a node)"]
        if isinstance(self.gate, FileApprovalGate):
            steps.append(f"wait for approval ({self.gate.directory})")
        limit = self.replace_limit
        steps.append(f"rate limit: at most {limit.max_ops} replacements per {limit.window_s:g}s")
        if s.method == "standby":
            steps.append(
                "EnterStandby (desired capacity kept): the group launches a replacement; "
                "the old instance stays for inspection"
            )
        else:
            steps.append(
                "SetInstanceHealth Unhealthy (ShouldRespectGracePeriod="
                f"{s.respect_grace_period}): the group terminates and replaces it"
            )
            if s.lifecycle_hook:
                steps.append(
                    f"complete lifecycle hook {s.lifecycle_hook} (CONTINUE) once it is in Terminating:Wait"
                )
        return steps

    def _remediate(self, request: RemediationRequest, finish: Finish) -> RemediationResult:
        instance_id, how = self.resolve(request.node)
        if instance_id is None:
            return finish(Outcome.REFUSED, f"cannot map {request.node} to one instance: {how}")
        member = self._member(instance_id)
        stop = self._precheck(request, instance_id, member)
        if stop is not None:
            return finish(stop[0], stop[1], instance_id)
        assert member is not None
        return self._act(request, member, finish)

    def _precheck(
        self, request: RemediationRequest, instance_id: str, member: _Member | None
    ) -> tuple[Outcome, str] | None:
        """A final answer (no-op or refusal) when nothing should be done, else None."""
        group = self.settings.group
        if member is None:
            state = self._ec2_state(instance_id)
            if state in ("not-found", "terminated", "shutting-down"):
                return (
                    Outcome.NOOP,
                    f"{instance_id} is gone (EC2 state {state}): nothing to {request.op.value}",
                )
            return (
                Outcome.REFUSED,
                f"{instance_id} (EC2 state {state}) is not in any Auto Scaling group; refusing",
            )
        if member.group != group:
            return (
                Outcome.REFUSED,
                f"{instance_id} belongs to Auto Scaling group {member.group}, not {group}; refusing",
            )
        health = member.health.capitalize()
        life = member.lifecycle
        if life.startswith("Terminat"):
            if life == "Terminating:Wait" and self.settings.lifecycle_hook and request.op is NodeOp.REPLACE:
                self._complete_hook(instance_id)
                return Outcome.NOOP, (
                    f"{instance_id} already terminating; "
                    f"completed lifecycle hook {self.settings.lifecycle_hook}"
                )
            return Outcome.NOOP, f"{instance_id} is already {life}: being replaced"
        if health == "Unhealthy":
            return Outcome.NOOP, f"{instance_id} is already marked Unhealthy: {group} is replacing it"
        if life in ("Standby", "EnteringStandby", "Detaching", "Detached"):
            return Outcome.NOOP, f"{instance_id} is {life}: out of service already"
        if life != "InService":
            return Outcome.NOOP, f"{instance_id} is {life}, not InService: not acting now"
        return None

    def _act(self, request: RemediationRequest, member: _Member, finish: Finish) -> RemediationResult:
        iid = member.instance_id
        key = request.idempotency_key
        refused, why = self.admit(request, iid)
        if refused is not None:
            return finish(refused, why, iid)
        limiter = self.limiter(request.op)
        try:
            if request.op is NodeOp.REBOOT:
                self._call("RebootInstances", lambda: self.ec2.reboot_instances(InstanceIds=[iid]))
                return finish(Outcome.DONE, f"rebooting {iid} ({why})", iid)
            if self.settings.method == "standby":
                self._call(
                    "EnterStandby",
                    lambda: self.asg.enter_standby(
                        AutoScalingGroupName=self.settings.group,
                        InstanceIds=[iid],
                        ShouldDecrementDesiredCapacity=False,
                    ),
                )
                return finish(
                    Outcome.DONE,
                    f"{iid} put in Standby; {self.settings.group} launches a replacement; "
                    f"terminate {iid} after inspecting it ({why})",
                    iid,
                )
            self._call(
                "SetInstanceHealth",
                lambda: self.asg.set_instance_health(
                    InstanceId=iid,
                    HealthStatus="Unhealthy",
                    ShouldRespectGracePeriod=self.settings.respect_grace_period,
                ),
            )
        except ClientError as exc:
            limiter.release(key)  # an error response: nothing was done
            return finish(Outcome.FAILED, describe_error(exc), iid)
        detail = f"{iid} marked Unhealthy; {self.settings.group} replaces it ({why})"
        if self.settings.lifecycle_hook:
            detail += "; " + self._wait_and_complete_hook(iid)
        return finish(Outcome.DONE, detail, iid)

    def _complete_hook(self, instance_id: str) -> None:
        hook = self.settings.lifecycle_hook
        assert hook is not None
        self._call(
            "CompleteLifecycleAction",
            lambda: self.asg.complete_lifecycle_action(
                LifecycleHookName=hook,
                AutoScalingGroupName=self.settings.group,
                LifecycleActionResult="CONTINUE",
                InstanceId=instance_id,
            ),
        )

    def _wait_and_complete_hook(self, instance_id: str) -> str:
        """Poll (bounded by lifecycle_wait_s) for Terminating:Wait, then complete the hook."""
        deadline = self.monotonic() + self.settings.lifecycle_wait_s
        while True:
            member = self._member(instance_id)
            state = member.lifecycle if member is not None else "gone"
            if state == "Terminating:Wait":
                self._complete_hook(instance_id)
                return f"completed lifecycle hook {self.settings.lifecycle_hook} (CONTINUE)"
            if state in ("Terminating:Proceed", "Terminated", "gone"):
                return f"{instance_id} is {state}: lifecycle hook not waiting"
            if self.monotonic() + self.settings.lifecycle_poll_s > deadline:
                return (
                    f"{instance_id} still {state} after {self.settings.lifecycle_wait_s:g}s; "
                    f"lifecycle hook {self.settings.lifecycle_hook} left to its heartbeat timeout"
                )
            self.sleep(self.settings.lifecycle_poll_s)

    def observe(self, node: str) -> NodeHealth:
        """The instance's state in the group (`LifecycleState/HealthStatus`); never raises."""
        try:
            instance_id, how = self.resolve(node)
            if instance_id is None:
                return NodeHealth(node, False, None, "unknown", None, detail=how)
            member = self._member(instance_id)
        except Exception as exc:
            return NodeHealth(node, False, None, "unreachable", None, detail=describe_error(exc))
        if member is None:
            return NodeHealth(node, False, None, "not-in-group", instance_id)
        healthy = member.lifecycle == "InService" and member.health.capitalize() == "Healthy"
        return NodeHealth(
            node,
            member.group == self.settings.group,
            healthy,
            f"{member.lifecycle}/{member.health.capitalize()}",
            instance_id,
            detail=f"group {member.group}",
        )


@dataclass(frozen=True, slots=True)
class _Parsed:
    """An `aws_asg` block, checked: everything an AsgRemediator needs but its AWS clients."""

    settings: AsgSettings
    replace_limit: RateLimiter
    reboot_limit: RateLimiter
    approval_dir: str | None


def _parse(settings: Mapping[str, object], *, state_dir: Path | None, prefix: str) -> _Parsed:
    """Read the block (see from_settings); SettingsError names every problem. No I/O."""
    read = SettingsReader(settings, prefix)
    group = read.text("group", required=True) or ""
    method = read.choice("method", "unhealthy", ("unhealthy", "standby"))
    node_map = read.str_map("node_map")
    for node, iid in node_map.items():
        if not INSTANCE_ID.fullmatch(iid):
            read.problem(f"node_map.{node}", f"must be an instance id (i-...), got {iid!r}")
    lookup = read.choice("lookup", "none", ("none", "tag", "private_dns"))
    tag_key = read.text("tag_key", "Name") or "Name"
    grace = read.flag("respect_grace_period", False)
    hook = read.text("lifecycle_hook")
    wait_s = read.number("lifecycle_wait_s", 60.0)
    replace_limit, reboot_limit = node_op_limits_from(read, state_dir=state_dir)
    approval_dir = read.text("approval_dir")
    read.done()
    return _Parsed(
        AsgSettings(
            group=group,
            method=cast(Literal["unhealthy", "standby"], method),
            node_map=node_map,
            lookup=cast(Literal["none", "tag", "private_dns"], lookup),
            tag_key=tag_key,
            respect_grace_period=grace,
            lifecycle_hook=hook,
            lifecycle_wait_s=wait_s,
        ),
        replace_limit,
        reboot_limit,
        approval_dir,
    )


def check_settings(settings: Mapping[str, object], *, prefix: str = "actuator.aws_asg") -> None:
    """Check the `aws_asg` block exactly as from_settings does, without building AWS clients or
    touching the disk (what `ftsup config check` runs). Raises SettingsError naming every problem."""
    _parse(settings, state_dir=None, prefix=prefix)


def from_settings(
    settings: Mapping[str, object],
    aws: AwsSettings,
    *,
    state_dir: Path | None,
    session: boto3.session.Session | None = None,
    counter: ApiCallCounter | None = None,
    prefix: str = "actuator.aws_asg",
) -> AsgRemediator:
    """Build an AsgRemediator from the `aws_asg` config block. Raises SettingsError naming every problem.

    Keys (only `group` is required):
      group: NAME                         the Auto Scaling group that owns the job's instances
      method: unhealthy | standby         how to replace (default unhealthy)
      node_map: {node: i-...}             explicit node name -> instance id
      lookup: none | tag | private_dns    how to find names not in node_map (default none)
      tag_key: Name                       the tag holding the node name, for lookup: tag
      respect_grace_period: false         ShouldRespectGracePeriod of SetInstanceHealth
      lifecycle_hook: NAME                a termination hook ftsup completes (CONTINUE)
      lifecycle_wait_s: 60                how long to wait for Terminating:Wait
      max_replaces: 2, max_reboots: 4, window_s: 3600   rate limits (persisted in state_dir)
      approval_dir: PATH                  replacements wait for PATH/<key>.approved (default: none needed)
    """
    parsed = _parse(settings, state_dir=state_dir, prefix=prefix)
    return AsgRemediator(
        parsed.settings,
        aws,
        replace_limit=parsed.replace_limit,
        reboot_limit=parsed.reboot_limit,
        gate=FileApprovalGate(Path(parsed.approval_dir)) if parsed.approval_dir else None,
        session=session,
        counter=counter,
    )
