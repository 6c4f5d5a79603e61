"""Fixtures for the Slurm tests: one real throw-away cluster per test session.

`slurm_cluster` (session scope) starts munged, slurmctld and four slurmds (node-0..node-3 on 127.0.0.1)
in a temporary directory and stops all of it (and every job process it left) at the end, even when a
test fails. `slurm` hands it to a test after a reset (no job, every node idle and resumed), so tests do
not see each other's drains and jobs.

When Slurm is not installed (`scripts/install-system-deps.sh` installs it; `make test` runs that first),
the cluster tests skip with the reason; with FTSUP_REQUIRE_SLURM=1 (CI) they fail instead.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.slurm.cluster import ClusterSpec, LocalSlurmCluster, missing_binaries, reap_stale_labs

LAB_PREFIX = "ftsup-slurm-"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/slurm carries the `slurm` marker (`pytest -m slurm` selects them all)."""
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.slurm)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[LocalSlurmCluster]:
    missing = missing_binaries()
    if missing:
        message = f"Slurm not installed ({', '.join(missing)}); run scripts/install-system-deps.sh"
        if os.environ.get("FTSUP_REQUIRE_SLURM") == "1":
            pytest.fail(message)
        pytest.skip(message)
    if os.geteuid() != 0:
        pytest.skip("the local Slurm cluster runs its daemons as root")
    reap_stale_labs(Path(tempfile.gettempdir()), LAB_PREFIX)
    root = Path(tempfile.mkdtemp(prefix=LAB_PREFIX))
    cluster = LocalSlurmCluster(root, ClusterSpec())
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        if os.environ.get("FTSUP_KEEP_SLURM_LAB") != "1":
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def slurm(slurm_cluster: LocalSlurmCluster) -> Iterator[LocalSlurmCluster]:
    slurm_cluster.reset()
    yield slurm_cluster
    slurm_cluster.reset()
