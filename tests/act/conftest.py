"""Fixtures shared by the actuator tests (the moto server itself is in tests/conftest.py)."""

from __future__ import annotations

from typing import Any

import boto3
import pytest


@pytest.fixture
def clients(moto_endpoint: str) -> tuple[Any, Any]:
    """(ec2, autoscaling) clients of the shared moto server."""
    kw: dict[str, Any] = {"region_name": "us-east-1", "endpoint_url": moto_endpoint}
    return boto3.client("ec2", **kw), boto3.client("autoscaling", **kw)
