"""High availability: leases with fencing tokens, so that of several ftsup replicas exactly one acts."""

from supervisor.ha.leader import Leadership, settle_pending, token_note
from supervisor.ha.lease import DynamoDbLease, FileLease, Lease, default_holder

__all__ = [
    "DynamoDbLease",
    "FileLease",
    "Leadership",
    "Lease",
    "default_holder",
    "settle_pending",
    "token_note",
]
