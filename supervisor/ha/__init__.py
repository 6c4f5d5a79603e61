"""High availability: leases with fencing tokens, so that of several ftsup replicas exactly one acts;
with `ha.kind: dynamodb`, a shared action ledger so that each action is done once across replicas
that keep separate journals."""

from supervisor.ha.leader import (
    Leadership,
    LedgerError,
    incident_attempt,
    settle_ledger,
    settle_pending,
    settle_takeover,
    token_note,
)
from supervisor.ha.lease import DynamoDbLease, FileLease, Lease, default_holder
from supervisor.ha.ledger import ActionLedger, Admission, DynamoDbLedger, Entry, Intent, Outcome

__all__ = [
    "ActionLedger",
    "Admission",
    "DynamoDbLease",
    "DynamoDbLedger",
    "Entry",
    "FileLease",
    "Intent",
    "Leadership",
    "Lease",
    "LedgerError",
    "Outcome",
    "default_holder",
    "incident_attempt",
    "settle_ledger",
    "settle_pending",
    "settle_takeover",
    "token_note",
]
