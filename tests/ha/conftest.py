"""Fixtures of the HA tests that talk to DynamoDB on the moto server (tests/conftest.py's)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from supervisor.sources.aws import AwsSettings
from tests.ha.tables import create_tables, delete_tables


@pytest.fixture
def settings(moto_endpoint: str) -> AwsSettings:
    """The daemon's AWS settings, pointed at the session's moto server."""
    return AwsSettings(endpoint_url=moto_endpoint, connect_timeout_s=2, read_timeout_s=5, retry_budget_s=5)


@pytest.fixture
def tables(settings: AwsSettings) -> Iterator[tuple[str, str]]:
    """The lease and ledger tables as deploy/dynamodb/ftsup-ha.cfn.yaml creates them."""
    names = create_tables(settings)
    yield names
    delete_tables(settings, *names)
