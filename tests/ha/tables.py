"""The DynamoDB tables of `ha: {kind: dynamodb}`, created on the moto server from the deployment's own
CloudFormation template (deploy/dynamodb/ftsup-ha.cfn.yaml), so tests run against the key schemas an
operator deploys."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import yaml

from supervisor.sources.aws import AwsSettings, make_client

TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "dynamodb" / "ftsup-ha.cfn.yaml"


def create_tables(settings: AwsSettings) -> tuple[str, str]:
    """Create the lease and ledger tables of the template under fresh names: (lease, ledger)."""
    template: dict[str, Any] = yaml.safe_load(TEMPLATE.read_text())
    client: Any = make_client("dynamodb", settings)
    suffix = uuid.uuid4().hex[:8]
    names: dict[str, str] = {}
    for logical, param in (("LeaseTable", "LeaseTableName"), ("LedgerTable", "LedgerTableName")):
        props = template["Resources"][logical]["Properties"]
        assert props["TableName"] == {"Ref": param}
        name = f"{template['Parameters'][param]['Default']}-{suffix}"
        client.create_table(
            TableName=name,
            KeySchema=props["KeySchema"],
            AttributeDefinitions=props["AttributeDefinitions"],
            BillingMode=props["BillingMode"],
        )
        names[logical] = name
    return names["LeaseTable"], names["LedgerTable"]


def delete_tables(settings: AwsSettings, *names: str) -> None:
    client: Any = make_client("dynamodb", settings)
    for name in names:
        client.delete_table(TableName=name)
