"""DynamoDbLease against the moto server: conditional writes decide races, expiry hands over,
tokens grow, a deposed holder's renew fails."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from supervisor.ha import DynamoDbLease
from supervisor.sources.aws import AwsSettings, make_client

pytestmark = pytest.mark.chaos


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def table(settings: AwsSettings) -> Iterator[str]:
    """What deployment creates (ftsup never creates the table): partition key `job`."""
    client: Any = make_client("dynamodb", settings)
    name = f"ftsup-leases-{uuid.uuid4().hex[:8]}"
    client.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "job", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "job", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    yield name
    client.delete_table(TableName=name)


def lease(table: str, settings: AwsSettings, holder: str, clock: Clock, job: str = "job") -> DynamoDbLease:
    return DynamoDbLease(table, job, settings, lease_s=10, holder=holder, clock=clock, monotonic=clock)


def test_of_six_replicas_only_the_first_acquires(table: str, settings: AwsSettings) -> None:
    """The conditional write admits one holder. (Acquires run one after the other: a truly
    simultaneous race would test moto's server, which does not promise DynamoDB's atomicity.)"""
    clock = Clock()
    leases = [lease(table, settings, f"r{i}", clock) for i in range(6)]
    got = {one.holder: one.acquire() for one in leases}
    assert got == {"r0": 1, **{f"r{i}": None for i in range(1, 6)}}
    assert leases[3].current_holder() == ("r0", 1)


def test_expiry_hands_over_tokens_grow_and_the_deposed_cannot_renew(
    table: str, settings: AwsSettings
) -> None:
    clock = Clock()
    a, b = lease(table, settings, "a", clock), lease(table, settings, "b", clock)
    assert a.acquire() == 1
    assert b.acquire() is None
    clock.now += 6
    assert a.renew()
    clock.now += 6  # renewed 6 s ago: not expired
    assert b.acquire() is None
    clock.now += 5  # 11 s without renewal
    assert a.token is None  # a stopped believing on its own clock
    assert b.acquire() == 2
    assert not a.renew()
    assert a.acquire() is None
    assert b.renew() and b.current_holder() == ("b", 2)
    b.release()
    assert b.current_holder() == (None, 2)
    assert a.acquire() == 3


def test_leases_of_different_jobs_are_independent(table: str, settings: AwsSettings) -> None:
    clock = Clock()
    assert lease(table, settings, "a", clock, job="one").acquire() == 1
    assert lease(table, settings, "b", clock, job="two").acquire() == 1


def test_a_missing_table_is_an_error_not_a_lost_race(settings: AwsSettings) -> None:
    with pytest.raises(Exception, match=r"ResourceNotFound|non-existent|not found"):
        lease("no-such-table", settings, "a", Clock()).acquire()
