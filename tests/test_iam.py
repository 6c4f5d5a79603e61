"""Least privilege: the IAM documents in deploy/iam grant exactly the AWS calls the code makes.

An AST walk over supervisor/ finds every call on a boto3 client: receivers assigned from
`make_client(...)` / `boto3.client(...)` (directly or through `cast`), parameters and attributes
typed as a client, and the conventional client attributes (`client`, `asg`, `ec2`, `sagemaker`).
Each method is mapped to its API operation with botocore's service models, then to the one
document that must grant it: observe (logs and metrics reads), node replacement (ASG, EC2,
SageMaker), alerts (SNS), high availability (the DynamoDB lease table). No document may grant an
action the code never calls.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import botocore.session
import pytest

ROOT = Path(__file__).resolve().parents[1]
IAM = ROOT / "deploy" / "iam"
DOCUMENT_OF_SERVICE = {
    "logs": "ftsup-observe.json",
    "cloudwatch": "ftsup-observe.json",
    "autoscaling": "ftsup-node-replacement.json",
    "ec2": "ftsup-node-replacement.json",
    "sagemaker": "ftsup-node-replacement.json",
    "sns": "ftsup-alerts.json",
    "dynamodb": "ftsup-ha.json",
}
# API operations IAM does not authorize as such, and the IAM actions it checks instead: a
# transaction's items (supervisor/ha/ledger.py writes ConditionCheck, Put and Update items).
IAM_ACTIONS_OF = {
    "dynamodb:TransactWriteItems": ("dynamodb:ConditionCheckItem", "dynamodb:PutItem", "dynamodb:UpdateItem"),
}
# Modules that only talk to a local emulator (moto) for demos and tests, never to an account.
LOCAL_ONLY = {"local_cloudwatch.py", "demo.py"}
CLIENT_NAMES = {"client", "asg", "ec2", "sagemaker", "sns_client", "logs_client", "metrics_client"}
NOT_API = {"close", "get_paginator", "can_paginate", "meta", "exceptions", "get_waiter"}


def _operations() -> dict[str, dict[str, str]]:
    """service -> {python method name: API operation name}."""
    session = botocore.session.get_session()
    out: dict[str, dict[str, str]] = {}
    for service in DOCUMENT_OF_SERVICE:
        model = session.get_service_model(service)
        out[service] = {botocore.xform_name(op): op for op in model.operation_names}
    return out


def _make_client_service(node: ast.AST) -> str | None:
    """The service of `make_client("svc", ...)` / `boto3.client("svc")` found inside `node`."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            fn = sub.func
            name = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""
            if name in ("make_client", "client") and sub.args and isinstance(sub.args[0], ast.Constant):
                value = sub.args[0].value
                if isinstance(value, str) and value in DOCUMENT_OF_SERVICE:
                    return value
    return None


def _receiver_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _is_client_annotation(node: ast.expr | None) -> bool:
    return node is not None and any(
        isinstance(n, ast.Name | ast.Constant)
        and str(getattr(n, "id", getattr(n, "value", ""))).endswith("Client")
        for n in ast.walk(node)
    )


def code_calls() -> dict[str, set[str]]:
    """IAM action ("logs:FilterLogEvents") -> the files calling it."""
    ops = _operations()
    found: dict[str, set[str]] = {}
    problems: list[str] = []
    for path in sorted((ROOT / "supervisor").rglob("*.py")):
        if path.name in LOCAL_ONLY:
            continue
        tree = ast.parse(path.read_text(), str(path))
        clients: dict[str, str | None] = {n: None for n in CLIENT_NAMES}
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                service = _make_client_service(node.value) if node.value is not None else None
                annotated = isinstance(node, ast.AnnAssign) and _is_client_annotation(node.annotation)
                for t in targets:
                    name = _receiver_name(t)
                    if name and (service or annotated):
                        clients[name] = service or clients.get(name)
            elif isinstance(node, ast.arg) and _is_client_annotation(node.annotation):
                clients.setdefault(node.arg, None)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            receiver = _receiver_name(node.func.value)
            if receiver not in clients:
                continue
            method = node.func.attr
            if method in NOT_API:
                continue
            known = clients[receiver]
            services = [known] if known else [s for s, m in ops.items() if method in m]
            services = [s for s in services if method in ops[s]]
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if len(services) != 1:
                problems.append(f"{where}: {receiver}.{method}() maps to {services or 'no AWS operation'}")
                continue
            found.setdefault(f"{services[0]}:{ops[services[0]][method]}", set()).add(where)
    assert not problems, "\n".join(problems)
    return found


def granted() -> dict[str, set[str]]:
    """document name -> the actions it grants."""
    out: dict[str, set[str]] = {}
    for name in set(DOCUMENT_OF_SERVICE.values()):
        doc = json.loads((IAM / name).read_text())
        actions: set[str] = set()
        for st in doc["Statement"]:
            assert st["Effect"] == "Allow"
            listed = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
            assert all("*" not in a for a in listed), f"{name}: wildcard action in {listed}"
            actions.update(listed)
        out[name] = actions
    return out


def test_iam_documents_grant_exactly_the_aws_calls_the_code_makes() -> None:
    calls = code_calls()
    # The walk sees the calls it must (else this test would pass vacuously).
    assert {"logs:FilterLogEvents", "cloudwatch:GetMetricData", "sns:Publish"} <= set(calls)
    for op, actions in IAM_ACTIONS_OF.items():
        for action in actions if op in calls else ():
            calls.setdefault(action, set()).update(calls[op])
        calls.pop(op, None)
    docs = granted()
    expected: dict[str, set[str]] = {name: set() for name in docs}
    for action in calls:
        expected[DOCUMENT_OF_SERVICE[action.split(":", 1)[0]]].add(action)
    for name in sorted(docs):
        missing = expected[name] - docs[name]
        unused = docs[name] - expected[name]
        assert not missing, f"{name} lacks {sorted(missing)}, called at {[sorted(calls[a]) for a in missing]}"
        assert not unused, f"{name} grants {sorted(unused)}, which the code never calls"
    everywhere = [a for name in docs for a in docs[name]]
    assert len(everywhere) == len(set(everywhere)), "an action is granted by more than one document"


def test_observe_is_read_only() -> None:
    observe = granted()["ftsup-observe.json"]
    verbs = ("Get", "Filter", "Describe", "List")
    assert all(a.split(":", 1)[1].startswith(verbs) for a in observe), observe


@pytest.mark.parametrize("name", sorted(LOCAL_ONLY))
def test_local_only_modules_are_not_imported_by_the_daemon(name: str) -> None:
    """The modules the walk skips are for demos against a local emulator, never the daemon's path."""
    module = f"supervisor.{name.removesuffix('.py')}"
    for path in ("daemon.py", "engine.py", "sources/cloudwatch_logs.py", "sources/cloudwatch_metrics.py"):
        assert module not in (ROOT / "supervisor" / path).read_text()
