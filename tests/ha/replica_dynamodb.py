"""One ftsup replica on its own host, as far as state goes: the real Daemon HA path with the
DynamoDB lease and the shared action ledger (built by `supervisor.daemon.build_leadership` from an
`ha: {kind: dynamodb}` config) and a journal of its own, supervising tests/ha/replica.py's
file-state job.

    python -m tests.ha.replica_dynamodb WORKDIR NAME HANG RUN_S ENDPOINT LEASE_TABLE LEDGER_TABLE

NAME names the replica's journal (`WORKDIR/journal-NAME.db`); HANG as in tests/ha/replica.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import structlog

from supervisor.config import Config, HaConfig, JobConfig
from supervisor.daemon import build_leadership
from supervisor.journal import Journal
from supervisor.sources.aws import ApiCallCounter, AwsSettings
from supervisor.vocabulary import Mode
from tests.ha.replica import JOB, LEASE_S, RENEW_S, run_replica


def main() -> int:
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    workdir, name, hang, run_s = Path(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
    endpoint, lease_table, ledger_table = sys.argv[5], sys.argv[6], sys.argv[7]
    journal = Journal(workdir / f"journal-{name}.db")
    ha = HaConfig("dynamodb", LEASE_S, RENEW_S, lease_table, None, ledger_table)
    config = Config(job=JobConfig(JOB, "group"), mode=Mode.ACT, ha=ha)
    aws = AwsSettings(endpoint_url=endpoint, connect_timeout_s=1, read_timeout_s=2, retry_budget_s=1)
    leadership = build_leadership(config, aws, ApiCallCounter(), journal)
    return run_replica(workdir, hang, run_s, config, journal, leadership)


if __name__ == "__main__":
    sys.exit(main())
