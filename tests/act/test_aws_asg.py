"""EC2 Auto Scaling node replacement against a real moto server over HTTP.

Each test builds its own launch template and Auto Scaling group (unique names) on the shared
moto server, so every call goes through botocore's real serialisation, our timeouts and retries.

What moto does and does not simulate (so what the tests can observe):
- SetInstanceHealth: moto records HealthStatus=Unhealthy but does not run the group's health-check
  replacement; the tests check the mark (what AWS acts on) and that a second request is a no-op.
- EnterStandby with desired capacity kept: moto launches the replacement instance, so the
  `standby` method is observed end to end (a new InService instance appears).
- TerminateInstanceInAutoScalingGroup: moto terminates and replaces; used to make a "gone" instance.
- CompleteLifecycleAction is not implemented by moto: that path uses botocore's Stubber, which
  validates our request against the real service model.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.stub import Stubber

from supervisor.act.aws_asg import AsgRemediator, AsgSettings, from_settings
from supervisor.act.remediate import (
    FileApprovalGate,
    NodeOp,
    Outcome,
    RateLimiter,
    RemediationRequest,
    SettingsError,
)
from supervisor.sources.aws import AwsSettings

_keys = itertools.count()


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def aws(endpoint: str) -> AwsSettings:
    return AwsSettings(endpoint_url=endpoint, connect_timeout_s=2, read_timeout_s=10, max_attempts=2)


def make_group(clients: tuple[Any, Any], size: int = 3, name: str | None = None) -> tuple[str, list[str]]:
    """An ASG with `size` InService instances, each tagged Name=node-<i>; returns (group, ids)."""
    ec2, asg = clients
    group = name or f"ftsup-{uuid.uuid4().hex[:8]}"
    ec2.create_launch_template(
        LaunchTemplateName=f"lt-{group}",
        LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "p5.48xlarge"},
    )
    asg.create_auto_scaling_group(
        AutoScalingGroupName=group,
        LaunchTemplate={"LaunchTemplateName": f"lt-{group}", "Version": "$Latest"},
        MinSize=size,
        MaxSize=size + 1,
        DesiredCapacity=size,
        AvailabilityZones=["us-east-1a"],
    )
    ids = [
        i["InstanceId"]
        for i in asg.describe_auto_scaling_groups(AutoScalingGroupNames=[group])["AutoScalingGroups"][0][
            "Instances"
        ]
    ]
    for n, iid in enumerate(ids):
        ec2.create_tags(Resources=[iid], Tags=[{"Key": "Name", "Value": f"{group}-node-{n}"}])
    return group, ids


def members(clients: tuple[Any, Any], group: str) -> dict[str, tuple[str, str]]:
    """instance id -> (LifecycleState, HealthStatus) for the group."""
    _, asg = clients
    rows = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[group])["AutoScalingGroups"][0][
        "Instances"
    ]
    return {r["InstanceId"]: (r["LifecycleState"], r["HealthStatus"]) for r in rows}


def remediator(
    endpoint: str,
    settings: AsgSettings,
    tmp_path: Path,
    *,
    max_replaces: int = 5,
    clock: FakeClock | None = None,
    gate: FileApprovalGate | None = None,
) -> AsgRemediator:
    clock = clock or FakeClock()
    state = tmp_path / "asg-ratelimit.json"
    return AsgRemediator(
        settings,
        aws(endpoint),
        replace_limit=RateLimiter(state, max_ops=max_replaces, window_s=3600, scope="replace", clock=clock),
        reboot_limit=RateLimiter(state, max_ops=5, window_s=3600, scope="reboot", clock=clock),
        gate=gate,
        clock=clock,
    )


def replace(node: str, key: str | None = None, op: NodeOp = NodeOp.REPLACE) -> RemediationRequest:
    return RemediationRequest(
        node=node, op=op, idempotency_key=key or f"inc-{next(_keys)}:cordon_and_restart:node", reason="xid 79"
    )


# ----------------------------------------------------------------------------- replace


def test_replace_marks_the_instance_unhealthy_without_grace_period(
    clients: tuple[Any, Any], moto_endpoint: str, tmp_path: Path
) -> None:
    group, ids = make_group(clients)
    r = remediator(moto_endpoint, AsgSettings(group=group, lookup="tag"), tmp_path)

    result = r.remediate(replace(f"{group}-node-1"))

    assert result.outcome is Outcome.DONE, result.detail
    assert result.target == ids[1]
    assert "marked Unhealthy" in result.detail
    assert members(clients, group)[ids[1]] == ("InService", "Unhealthy")
    assert {i: s for i, s in members(clients, group).items() if i != ids[1]} == {
        ids[0]: ("InService", "Healthy"),
        ids[2]: ("InService", "Healthy"),
    }
    assert r.counter.get("SetInstanceHealth") == 1
    health = r.observe(f"{group}-node-1")
    assert (health.exists, health.healthy, health.state, health.target) == (
        True,
        False,
        "InService/Unhealthy",
        ids[1],
    )


def test_replacing_an_instance_already_unhealthy_is_a_noop_with_a_clear_message(
    clients: tuple[Any, Any], moto_endpoint: str, tmp_path: Path
) -> None:
    group, ids = make_group(clients)
    r = remediator(moto_endpoint, AsgSettings(group=group, node_map={"gpu-7": ids[0]}), tmp_path)
    first = r.remediate(replace("gpu-7"))
    second = r.remediate(replace("gpu-7"))  # a new intent (another incident) about the same node

    assert first.outcome is Outcome.DONE
    assert second.outcome is Outcome.NOOP
    assert second.ok
    assert "already marked Unhealthy" in second.detail
    assert r.counter.get("SetInstanceHealth") == 1
    assert r.replace_limit.used() == 1  # the no-op took no slot


def test_standby_method_gets_a_replacement_launched_and_keeps_the_bad_instance(
    clients: tuple[Any, Any], moto_endpoint: str, tmp_path: Path
) -> None:
    group, ids = make_group(clients)
    r = remediator(moto_endpoint, AsgSettings(group=group, method="standby", lookup="tag"), tmp_path)

    result = r.remediate(replace(f"{group}-node-0"))

    assert result.outcome is Outcome.DONE, result.detail
    after = members(clients, group)
    assert after[ids[0]][0] == "Standby"  # kept for inspection
    in_service = [i for i, (life, _) in after.items() if life == "InService"]
    assert len(in_service) == 3 and ids[0] not in in_service  # moto launched the replacement
    assert r.remediate(replace(f"{group}-node-0")).outcome is Outcome.NOOP


def test_an_instance_already_gone_is_a_noop(
    clients: tuple[Any, Any], moto_endpoint: str, tmp_path: Path
) -> None:
    group, ids = make_group(clients)
    _, asg = clients
    asg.terminate_instance_in_auto_scaling_group(InstanceId=ids[2], ShouldDecrementDesiredCapacity=False)
    r = remediator(moto_endpoint, AsgSettings(group=group), tmp_path)

    result = r.remediate(replace(ids[2]))  # the node name is the instance id

    assert result.outcome is Outcome.NOOP, result.detail
    assert "is gone" in result.detail
    assert r.counter.get("SetInstanceHealth") == 0
    unknown = r.remediate(replace("i-0123456789abcdef0"))
    assert unknown.outcome is Outcome.NOOP and "not-found" in unknown.detail


# ----------------------------------------------------------------------------- refusals


def test_refuses_an_instance_of_another_group_or_of_none(
    clients: tuple[Any, Any], moto_endpoint: str, tmp_path: Path
) -> None:
    ours, _ = make_group(clients, size=1)
    theirs, their_ids = make_group(clients, size=1)
    ec2, _ = clients
    loose = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    r = remediator(moto_endpoint, AsgSettings(group=ours, node_map={"a": their_ids[0], "b": loose}), tmp_path)

    other = r.remediate(replace("a"))
    none = r.remediate(replace("b"))
    unknown = r.remediate(replace("node-that-does-not-exist"))

    assert other.outcome is Outcome.REFUSED and f"belongs to Auto Scaling group {theirs}" in other.detail
    assert none.outcome is Outcome.REFUSED and "not in any Auto Scaling group" in none.detail
    assert unknown.outcome is Outcome.REFUSED and "cannot map" in unknown.detail
    assert members(clients, theirs)[their_ids[0]] == ("InService", "Healthy")
    assert r.counter.get("SetInstanceHealth") == 0
    assert r.replace_limit.used() == 0


def test_private_dns_lookup_by_short_host_name_and_full_name(
    clients: tuple[Any, Any], moto_endpoint: str, tmp_path: Path
) -> None:
    group, ids = make_group(clients, size=2)
    ec2, _ = clients
    dns = ec2.describe_instances(InstanceIds=[ids[1]])["Reservations"][0]["Instances"][0]["PrivateDnsName"]
    r = remediator(moto_endpoint, AsgSettings(group=group, lookup="private_dns"), tmp_path)

    assert r.resolve(dns.split(".")[0])[0] == ids[1]  # ip-A-B-C-D, as `hostname -s` prints it
    assert r.resolve(dns)[0] == ids[1]
    assert r.resolve("gpu-node-3") == (None, "gpu-node-3 is neither a private DNS name nor ip-A-B-C-D")


# ----------------------------------------------------------------------------- rate limit and approval


def test_rate_limit_holds_across_a_restart_and_reopens_after_the_window(
    clients: tuple[Any, Any], moto_endpoint: str, tmp_path: Path
) -> None:
    group, ids = make_group(clients)
    clock = FakeClock()
    settings = AsgSettings(group=group, lookup="tag")
    first = remediator(moto_endpoint, settings, tmp_path, max_replaces=1, clock=clock)

    assert first.remediate(replace(f"{group}-node-0")).outcome is Outcome.DONE
    limited = first.remediate(replace(f"{group}-node-1"))
    assert limited.outcome is Outcome.RATE_LIMITED
    assert "1 of 1 within 3600s already used" in limited.detail

    # A new daemon (new objects, same state file) must not get a fresh budget.
    restarted = remediator(moto_endpoint, settings, tmp_path, max_replaces=1, clock=clock)
    assert restarted.remediate(replace(f"{group}-node-1")).outcome is Outcome.RATE_LIMITED
    assert members(clients, group)[ids[1]] == ("InService", "Healthy")

    clock.now += 3601
    assert restarted.remediate(replace(f"{group}-node-1")).outcome is Outcome.DONE
    assert members(clients, group)[ids[1]] == ("InService", "Unhealthy")


def test_replacement_waits_for_approval_when_an_approval_dir_is_configured(
    clients: tuple[Any, Any], moto_endpoint: str, tmp_path: Path
) -> None:
    group, ids = make_group(clients, size=2)
    gate = FileApprovalGate(tmp_path / "approvals")
    r = remediator(moto_endpoint, AsgSettings(group=group, lookup="tag"), tmp_path, gate=gate)
    request = replace(f"{group}-node-0", key="inc-1:cordon_and_restart:node")

    pending = r.remediate(request)
    assert pending.outcome is Outcome.PENDING_APPROVAL
    assert pending.ok
    assert gate.pending_path(request).exists()
    assert members(clients, group)[ids[0]] == ("InService", "Healthy")
    assert r.replace_limit.used() == 0

    gate.approved_path(request).touch()
    assert r.remediate(request).outcome is Outcome.DONE
    assert members(clients, group)[ids[0]] == ("InService", "Unhealthy")


def test_reboot_uses_ec2_reboot_and_needs_no_approval(
    clients: tuple[Any, Any], moto_endpoint: str, tmp_path: Path
) -> None:
    group, ids = make_group(clients, size=1)
    r = remediator(
        moto_endpoint, AsgSettings(group=group, lookup="tag"), tmp_path, gate=FileApprovalGate(tmp_path / "a")
    )
    result = r.remediate(replace(f"{group}-node-0", op=NodeOp.REBOOT))
    assert result.outcome is Outcome.DONE, result.detail
    assert r.counter.get("RebootInstances") == 1
    assert members(clients, group)[ids[0]] == ("InService", "Healthy")
    assert r.remediate(replace(f"{group}-node-0", op=NodeOp.CORDON)).outcome is Outcome.REFUSED


# ----------------------------------------------------------------------------- lifecycle hook (Stubber)


@pytest.fixture
def stubbed(aws_env: None, tmp_path: Path) -> Iterator[tuple[AsgRemediator, Stubber]]:
    """An AsgRemediator whose autoscaling client is stubbed (no endpoint is contacted)."""
    r = AsgRemediator(
        AsgSettings(
            group="train",
            node_map={"gpu-1": "i-0123456789abcdef0"},
            lifecycle_hook="ftsup-drain",
            lifecycle_wait_s=30,
            lifecycle_poll_s=5,
        ),
        AwsSettings(max_attempts=3),
        replace_limit=RateLimiter(None, max_ops=2, window_s=3600, scope="replace"),
        reboot_limit=RateLimiter(None, max_ops=2, window_s=3600, scope="reboot"),
        sleep=lambda s: None,
    )
    with Stubber(r.asg) as stub:
        yield r, stub
        stub.assert_no_pending_responses()


def _instance(state: str, health: str = "Healthy") -> dict[str, Any]:
    return {
        "AutoScalingInstances": [
            {
                "InstanceId": "i-0123456789abcdef0",
                "AutoScalingGroupName": "train",
                "AvailabilityZone": "us-east-1a",
                "LifecycleState": state,
                "HealthStatus": health,
                "ProtectedFromScaleIn": False,
            }
        ]
    }


def test_lifecycle_hook_is_completed_once_the_instance_waits_on_it(
    stubbed: tuple[AsgRemediator, Stubber],
) -> None:
    """moto has no CompleteLifecycleAction: botocore's Stubber checks our requests against the real
    autoscaling model. A throttled SetInstanceHealth is retried (call_with_retry)."""
    r, stub = stubbed
    iid = "i-0123456789abcdef0"
    stub.add_response("describe_auto_scaling_instances", _instance("InService"), {"InstanceIds": [iid]})
    stub.add_client_error("set_instance_health", "Throttling", "Rate exceeded", 400)
    expected = {"InstanceId": iid, "HealthStatus": "Unhealthy", "ShouldRespectGracePeriod": False}
    stub.add_response("set_instance_health", {}, expected)
    stub.add_response(
        "describe_auto_scaling_instances", _instance("InService", "Unhealthy"), {"InstanceIds": [iid]}
    )
    stub.add_response(
        "describe_auto_scaling_instances", _instance("Terminating:Wait", "Unhealthy"), {"InstanceIds": [iid]}
    )
    stub.add_response(
        "complete_lifecycle_action",
        {},
        {
            "LifecycleHookName": "ftsup-drain",
            "AutoScalingGroupName": "train",
            "LifecycleActionResult": "CONTINUE",
            "InstanceId": iid,
        },
    )

    result = r.remediate(replace("gpu-1"))

    assert result.outcome is Outcome.DONE, result.detail
    assert "completed lifecycle hook ftsup-drain (CONTINUE)" in result.detail
    assert r.counter.get("SetInstanceHealth") == 2  # one throttled attempt, one success


def test_a_refused_call_gives_its_rate_limit_slot_back(stubbed: tuple[AsgRemediator, Stubber]) -> None:
    r, stub = stubbed
    iid = "i-0123456789abcdef0"
    stub.add_response("describe_auto_scaling_instances", _instance("InService"), {"InstanceIds": [iid]})
    stub.add_client_error("set_instance_health", "AccessDenied", "not allowed", 403)

    result = r.remediate(replace("gpu-1"))

    assert result.outcome is Outcome.FAILED
    assert not result.ok
    assert "AccessDenied" in result.detail
    assert r.replace_limit.used() == 0


# ----------------------------------------------------------------------------- settings


def test_from_settings_names_every_problem(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as err:
        from_settings(
            {"method": "nuke", "node_map": {"a": "not-an-id"}, "max_replaces": -1, "colour": "red"},
            AwsSettings(),
            state_dir=tmp_path,
        )
    assert err.value.problems == (
        "actuator.aws_asg.group: required",
        "actuator.aws_asg.method: must be one of unhealthy, standby, got 'nuke'",
        "actuator.aws_asg.node_map.a: must be an instance id (i-...), got 'not-an-id'",
        "actuator.aws_asg.max_replaces: must be >= 0, got -1",
        "actuator.aws_asg.colour: unknown key",
    )


def test_from_settings_builds_a_persisted_rate_limit(aws_env: None, tmp_path: Path) -> None:
    r = from_settings(
        {
            "group": "train",
            "lookup": "tag",
            "max_replaces": 1,
            "window_s": 600,
            "approval_dir": str(tmp_path / "ok"),
        },
        AwsSettings(),
        state_dir=tmp_path,
    )
    assert r.settings.group == "train"
    assert r.replace_limit.path == tmp_path / "actuator-aws_asg-ratelimit.json"
    assert (r.replace_limit.max_ops, r.replace_limit.window_s) == (1, 600)
    assert isinstance(r.gate, FileApprovalGate)
    assert r.plan(replace("n")) == [
        "map n to an instance id; check it is a member of Auto Scaling group train",
        f"wait for approval ({tmp_path / 'ok'})",
        "rate limit: at most 1 replacements per 600s",
        "SetInstanceHealth Unhealthy (ShouldRespectGracePeriod=False): the group terminates and replaces it",
    ]


# ----------------------------------------------------------------------------- least privilege


def test_iam_policy_grants_exactly_the_calls_the_node_backends_make() -> None:
    """deploy/iam/ftsup-node-replacement.json == the calls aws_asg.py and hyperpod.py make (read
    from their source: every `self.asg.x(`, `self.ec2.x(`, `self.sagemaker.x(`)."""
    import json
    import re

    from supervisor.act import aws_asg, hyperpod

    root = Path(__file__).resolve().parents[2]
    policy = json.loads((root / "deploy" / "iam" / "ftsup-node-replacement.json").read_text())
    granted = {a for st in policy["Statement"] for a in st["Action"]}
    declared = {**aws_asg.AWS_ACTIONS, **hyperpod.AWS_ACTIONS}
    assert granted == set(declared.values())
    for module in (aws_asg, hyperpod):
        source = Path(str(module.__file__)).read_text()
        called = {
            "".join(w.capitalize() for w in m.split("_"))
            for m in re.findall(r"self\.(?:asg|ec2|sagemaker)\.([a-z_]+)\(", source)
        }
        assert called == set(module.AWS_ACTIONS), module.__name__
