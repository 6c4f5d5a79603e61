"""A fixed compute probe: the time one node takes for the same small piece of local work.

In synchronous data-parallel training every rank's step time is the same (the collectives make the
fast ranks wait for the slow one), so step time cannot say *which* node is slow. A fixed amount of
local work, timed between device synchronisations and without any collective, can: a throttled or
degraded GPU (or an overloaded host) takes longer than its peers. Published as ``compute_probe_s``;
the straggler rule compares each node with the median of the others (NVRx's straggler detection does
the same with kernel timings).
"""

from __future__ import annotations

import time

import torch

PROBE_SIZE = 256
PROBE_REPS = 8


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compute_probe(device: torch.device, size: int = PROBE_SIZE, reps: int = PROBE_REPS) -> float:
    """Seconds for `reps` chained `size`x`size` matmuls on `device` (a few ms on a CPU core)."""
    with torch.no_grad():
        a = torch.full((size, size), 1.0 / size, device=device)
        b = torch.eye(size, device=device)
        _sync(device)
        started = time.perf_counter()
        for _ in range(reps):
            a = a @ b
        _sync(device)
        return time.perf_counter() - started
