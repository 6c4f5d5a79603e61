"""Regenerate ``tests/data/fault_logs/<kind>.node-{0,1}.log`` from real 2-node runs.

    .venv/bin/python -m tests.trainer.make_fault_logs [--kinds code_bug,nan] [--out DIR]

Each run: a moto server as CloudWatch, two node agents wrapping ``torchrun`` on 127.0.0.1, the fault
aimed at node-1 / rank 1 at step ``--at-step``. The run goes on until every agent exits, or is stopped
``--observe-s`` seconds after the fault by SIGTERM to the agents (what a supervisor does). The saved files
are the agents' ``--log-file`` output, i.e. exactly the lines shipped to CloudWatch.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from tests.trainer.harness import REPO_ROOT, Job, free_port
from trainer.faults import FAULT_KINDS, FaultRequest, write_fault_request

# A hang is what a stalled job looks like *before* any collective timeout fires (production NCCL
# timeouts are minutes), so its sample uses a timeout longer than the observation window.
COLLECTIVE_TIMEOUT_S = {"hang": 120.0}
DEFAULT_COLLECTIVE_TIMEOUT_S = 10.0


def run_kind(
    kind: str, work: Path, endpoint: str, out: Path, at_step: int, observe_s: float
) -> list[int | None]:
    run_dir = work / kind
    shutil.rmtree(run_dir, ignore_errors=True)
    write_fault_request(
        run_dir / "faults",
        FaultRequest(id=f"{kind}-sample", kind=kind, node="node-1", rank=1, at_step=at_step),
    )
    timeout_s = COLLECTIVE_TIMEOUT_S.get(kind, DEFAULT_COLLECTIVE_TIMEOUT_S)
    train_args = ["--job", f"sample-{kind}", "--ckpt-every", "5", "--step-sleep-s", "0.2"]
    train_args += ["--collective-timeout-s", str(timeout_s), "--metrics-interval-s", "1"]
    job = Job(run_dir, f"sample-{kind}", endpoint, "/ftsup/samples", train_args, grace_s=10.0)
    with job:
        node1 = job.node("node-1")
        if not job.wait_for(lambda: bool(node1.events("fault")), timeout=120):
            raise RuntimeError(f"{kind}: fault never fired; see {node1.log_path}")
        fired = time.monotonic()
        job.wait_for(lambda: all(rc is not None for rc in job.returncodes()), timeout=observe_s)
        print(f"{kind}: exit codes after {time.monotonic() - fired:.1f}s: {job.returncodes()}", flush=True)
        codes = job.terminate(timeout=60)
    for node in job.nodes:
        shutil.copyfile(node.log_path, out / f"{kind}.{node.name}.log")
    print(f"{kind}: final agent exit codes {codes}", flush=True)
    return codes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--kinds", default=",".join(FAULT_KINDS))
    p.add_argument("--out", type=Path, default=REPO_ROOT / "tests" / "data" / "fault_logs")
    p.add_argument("--work", type=Path, default=None, help="run directories (default: a temp dir)")
    p.add_argument("--at-step", type=int, default=8)
    p.add_argument("--observe-s", type=float, default=20.0)
    args = p.parse_args()
    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        os.environ.setdefault(key, value)
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request access log

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="ftsup-fault-logs-"))
    try:
        for kind in args.kinds.split(","):
            run_kind(kind, work, f"http://127.0.0.1:{port}", args.out, args.at_step, args.observe_s)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
