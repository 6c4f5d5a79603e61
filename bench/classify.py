"""Classification throughput: the shipped policy pack over a realistic log stream, one core.

The stream is what a healthy multi-node FSDP job writes, plus rare failures: about 99.9% healthy
lines (JSON step lines, NCCL INFO chatter, torchrun / c10d warnings, deprecation warnings, DataLoader
progress, Python logging lines) and 0.1% failure lines (Xids, NCCL timeouts, tracebacks, OOM).
Lines are generated from a fixed seed, so every run sees the same stream.

Measured, in the same process:
* ftsup: the daemon's own path, `StreamClassifier.feed_many` over batches of 1,000 lines as the
  engine gets them from a poll (input cleaning, traceback folding, RE2 set scans of 128-line chunks
  for every rule at once, per-line matching only in chunks with a hit, the winning rule's regex for
  the evidence);
* baseline: a plain loop of Python ``re.search`` over the same rules' patterns (best rule first,
  stopping at the first match), the obvious way to write a classifier.

    python bench/classify.py [--lines N] [--json]

With --json the last line of output is one JSON object:
``{"lines_per_s": float, "baseline_lines_per_s": float, "rules": int, "lines": int, ...}``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from supervisor.classify.matcher import LogClassifier
from supervisor.classify.policy import LogMatch, load_policies
from supervisor.classify.units import StreamClassifier
from supervisor.config import default_policy_dir

HEALTHY = (
    '{{"ts": {ts:.3f}, "job": "llm-70b", "node": "node-{node}", "rank": {rank}, "local_rank": {lr}, '
    '"attempt": 0, "event": "step", "step": {step}, "loss": {loss:.4f}, "step_time_s": 1.{ms:03d}, '
    '"tokens_per_s": {tps}.4}}',
    "node-{node}:{pid}:{pid} [{lr}] NCCL INFO Channel {ch:02d}/32 :    0   1   2   3   4   5   6   7",
    "node-{node}:{pid}:{pid} [{lr}] NCCL INFO NCCL_IB_TIMEOUT set by environment to 22.",
    "node-{node}:{pid}:{pid} [{lr}] NCCL INFO NCCL_IB_RETRY_CNT set by environment to 13.",
    "node-{node}:{pid}:{pid} [{lr}] NCCL INFO NET/OFI Selected Provider is efa (found 4 nics)",
    "node-{node}:{pid}:{pid} [{lr}] NCCL INFO comm 0x5555{pid:x} rank {rank} nRanks 512 nNodes 64 "
    "localRanks 8 localRank {lr} MNNVL 0",
    "node-{node}:{pid}:{pid} [{lr}] NCCL INFO NET/Plugin: Failed to find ncclNetPlugin_v8 symbol.",
    "[rank{rank}]:[W{mm}{dd} 04:{mi:02d}:{ss:02d}.{us:06d} {pid} torch/distributed/fsdp/_state_dict_utils.py:"
    "827] Warning: FSDP.state_dict_type() and FSDP.set_state_dict_type() are being deprecated.",
    "/opt/conda/lib/python3.11/site-packages/torch/utils/checkpoint.py:464: UserWarning: "
    "torch.utils.checkpoint: the use_reentrant parameter should be passed explicitly.",
    "{date} 04:{mi:02d}:{ss:02d},{ms:03d} - INFO - megatron.training - iteration {step}/ 100000 | "
    "consumed samples: {tps} | elapsed time per iteration (ms): 1{ms:03d}.2 | learning rate: 2.9E-04 | "
    "lm loss: {loss:.6E} | loss scale: 1.0 | grad norm: 0.{ms:03d} | number of skipped iterations: 0 |",
    "[{date} 04:{mi:02d}:{ss:02d},{ms:03d}] [INFO] [logging.py:96:log_dist] [Rank 0] step={step}, "
    "skipped=0, lr=[0.0003], mom=[(0.9, 0.95)]",
    "[W socket.cpp:663] [c10d] The client socket has failed to connect to [node-0]:29500 "
    "(errno: 99 - Cannot assign requested address).",
    "I{mm}{dd} 04:{mi:02d}:{ss:02d}.{us:06d} {pid} torch/distributed/elastic/agent/server/api.py:525] "
    "[default] Rendezvous complete for workers. Result:",
    " 45%|████▌     | {step}/100000 [1:02:03<1:15:00, 1.{ms:03d}s/it]",
    "[{date} 04:{mi:02d}:{ss:02d}] checkpoint saved to /fsx/ckpt/step_{step} in 41.{ms:03d}s",
)

FAILURES = (
    "[ {sec}.{us:06d}] NVRM: Xid (PCI:0000:{bus:02x}:00): 79, pid={pid}, name=python, "
    "GPU has fallen off the bus.",
    "[rank{rank}]:[E{mm}{dd} 04:{mi:02d}:{ss:02d}.{us:06d} {pid} ProcessGroupNCCL.cpp:616] [Rank {rank}] "
    "Watchdog caught collective operation timeout: WorkNCCL(SeqNum={step}, OpType=ALLREDUCE, NumelIn=1, "
    "NumelOut=1, Timeout(ms)=600000) ran for 600081 milliseconds before timing out.",
    "[rank{rank}]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU {lr} has a "
    "total capacity of 79.11 GiB of which 1.02 GiB is free.",
    "[rank{rank}]: KeyError: 'labels'",
    "[ {sec}.{us:06d}] NVRM: Xid (PCI:0000:{bus:02x}:00): 48, pid={pid}, name=python, An uncorrectable "
    "double bit error (DBE) has been detected on GPU in the framebuffer at partition 0, subpartition 0.",
)


def make_stream(n: int, seed: int = 7, failure_rate: float = 0.001) -> list[str]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        templates = FAILURES if rnd.random() < failure_rate else HEALTHY
        t = templates[rnd.randrange(len(templates))]
        node = rnd.randrange(64)
        lr = rnd.randrange(8)
        out.append(
            t.format(
                ts=1795840000 + i * 0.01,
                node=node,
                rank=node * 8 + lr,
                lr=lr,
                step=1000 + i // 512,
                loss=2.0 + rnd.random(),
                ms=rnd.randrange(1000),
                tps=rnd.randrange(100000, 999999),
                pid=rnd.randrange(1000, 99999),
                ch=rnd.randrange(32),
                mm=11,
                dd=28,
                mi=rnd.randrange(60),
                ss=rnd.randrange(60),
                us=rnd.randrange(1000000),
                date="2026-11-28",
                sec=rnd.randrange(100, 99999),
                bus=rnd.randrange(256),
            )
        )
    return out


BATCH = 1000
"""Lines per engine batch (a FilterLogEvents page holds up to 10,000 events)."""


def run_ftsup(lines: list[str], classifier: LogClassifier) -> tuple[float, int]:
    items = [("node-0", line, float(i), None, None) for i, line in enumerate(lines)]
    stream = StreamClassifier(classifier)
    found = 0
    started = time.perf_counter()
    for b in range(0, len(items), BATCH):
        found += len(stream.feed_many(items[b : b + BATCH]))
    found += len(stream.flush())
    return time.perf_counter() - started, found


def run_baseline(lines: list[str], patterns: list[re.Pattern[str]]) -> tuple[float, int]:
    found = 0
    started = time.perf_counter()
    for line in lines:
        for p in patterns:
            if p.search(line) is not None:
                found += 1
                break
    return time.perf_counter() - started, found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=1_000_000, help="lines in the stream (default 1,000,000)")
    ap.add_argument("--baseline-lines", type=int, default=100_000, help="lines for the re.search loop")
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = ap.parse_args(argv)

    policy = load_policies([default_policy_dir()])
    classifier = LogClassifier(policy)
    log_rules = classifier.rules  # best first, the order the baseline tries them in
    patterns = [re.compile(r.match.pattern, re.MULTILINE) for r in log_rules if isinstance(r.match, LogMatch)]
    lines = make_stream(args.lines)
    healthy_share = 1.0 - sum(1 for _ in lines if classifier.classify("n", _, 0.0) is not None) / len(lines)

    run_ftsup(lines[:20_000], classifier)  # warm up (RE2's DFA cache fills on first use)
    best = min(run_ftsup(lines, classifier)[0] for _ in range(3))
    base_lines = lines[: min(args.baseline_lines, len(lines))]
    base = min(run_baseline(base_lines, patterns)[0] for _ in range(2))
    result = {
        "lines_per_s": round(len(lines) / best, 1),
        "baseline_lines_per_s": round(len(base_lines) / base, 1),
        "rules": len(policy.rules),
        "log_rules": len(patterns),
        "lines": len(lines),
        "baseline_lines": len(base_lines),
        "healthy_share": round(healthy_share, 5),
        "speedup": round((len(lines) / best) / (len(base_lines) / base), 2),
    }
    print(f"rules loaded:          {result['rules']} ({result['log_rules']} log rules)")
    print(f"stream:                {len(lines):,} lines, {healthy_share:.3%} yielding no signal")
    print(f"ftsup (RE2 set):       {result['lines_per_s']:>12,.0f} lines/s  (best of 3, one core)")
    print(
        f"baseline (re loop):    {result['baseline_lines_per_s']:>12,.0f} lines/s"
        f"  ({len(base_lines):,} lines)"
    )
    print(f"speedup:               {result['speedup']:>12.1f}x")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
