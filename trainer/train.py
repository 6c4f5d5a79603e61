"""``python -m trainer.train``: the reference FSDP2 training worker (run under ``torchrun``).

Every rank prints JSON lines (see :mod:`trainer.jsonlog`): ``start``, ``resume``/``fresh_start``,
``step`` (every step), ``checkpoint_saved``/``checkpoint_skipped``/``checkpoint_ignored``, ``fault``,
``metrics_error`` and ``done``. Exit status: 0 after ``--steps``; an exception (with traceback, recorded
for torchrun's failure summary) on errors such as a collective timeout; death by signal for injected
``sigkill``/``xid*`` faults.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.elastic.multiprocessing.errors import record
from torch.distributed.fsdp import fully_shard

from trainer.checkpoint import Checkpointer
from trainer.config import TrainConfig, parse_config, resolve_attempt
from trainer.data import synthetic_batch
from trainer.faults import FaultInjector, FaultRequest
from trainer.jsonlog import JsonLogger, json_float
from trainer.metrics import MetricsPublisher
from trainer.model import GPT
from trainer.probe import compute_probe

_PR_SET_PDEATHSIG = 1
PROBE_EVERY = 10  # steps between compute probes (a few ms each)


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL us if torchrun dies: torchrun starts workers in their own session, so a
    SIGKILLed launcher would otherwise leave orphaned ranks holding devices and the log pipe open."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # parent already gone before prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)


def _setup_distributed(cfg: TrainConfig) -> tuple[str, torch.device]:
    """Initialise the default process group with the short collective timeout; return backend, device."""
    timeout = timedelta(seconds=cfg.collective_timeout_s)
    if torch.cuda.is_available():
        # Let NCCL's watchdog abort the process on a timed-out collective instead of hanging.
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl", timeout=timeout, device_id=device)
        return "nccl", device
    dist.init_process_group(backend="gloo", timeout=timeout)
    return "gloo", torch.device("cpu")


def _build_model(cfg: TrainConfig, device: torch.device) -> nn.Module:
    torch.manual_seed(cfg.seed)  # identical init on every rank before sharding
    model = GPT(cfg.model).to(device)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor]) -> float:
    """Forward, backward (FSDP all-gather / reduce-scatter), optimizer step; returns the local loss."""
    logits = model(batch["input_ids"])
    labels = batch["labels"]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.item())


@record
def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(argv)
    _die_with_parent()
    attempt = resolve_attempt()
    backend, device = _setup_distributed(cfg)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    log = JsonLogger(cfg.job, cfg.node, rank, local_rank, attempt)
    log.emit("start", world_size=world_size, backend=backend, device=str(device), pid=os.getpid())

    # Checkpoint collectives get their own gloo group: the async-save thread runs them concurrently
    # with FSDP's collectives, and async save needs a CPU-capable group even when training uses NCCL.
    ckpt_group = dist.new_group(backend="gloo", timeout=timedelta(seconds=cfg.collective_timeout_s))
    ckpt = Checkpointer(cfg.checkpoint_dir, cfg.keep_checkpoints, rank, ckpt_group, log)

    model = _build_model(cfg, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)

    resume = ckpt.find_resume_point()
    if resume is None:
        step = 0
        log.emit("fresh_start", step=0)
    else:
        step = ckpt.load(model, optimizer, resume[1])
        log.emit("resume", step=step, checkpoint=str(resume[1]))

    metrics: MetricsPublisher | None = None
    if cfg.metrics and local_rank == 0:
        metrics = MetricsPublisher(
            cfg.job,
            cfg.node,
            log,
            cfg.metrics_namespace,
            cfg.region,
            cfg.metrics_endpoint_url,
            cfg.metrics_interval_s,
        )
        if step > 0:
            metrics.update(step)  # progress is visible before the first resumed step completes
        metrics.start()

    cli_fault = None
    if cfg.inject is not None:
        i = cfg.inject
        # A stable id, so the fired marker keeps a CLI fault one-shot across torchrun restarts too.
        cli_id = f"cli-{i.kind}-{i.node}-{i.rank}-{i.at_step}-{i.attempt}".replace("*", "all")
        cli_fault = FaultRequest(
            id=cli_id.replace("None", "x"),
            kind=i.kind,
            node=i.node,
            rank=i.rank,
            at_step=i.at_step,
            attempt=i.attempt,
        )
    kmsg = os.environ.get("FTSUP_KMSG_FILE")
    faults = FaultInjector(
        cfg.fault_dir, cfg.node, rank, local_rank, attempt, log, Path(kmsg) if kmsg else None, cli_fault
    )

    tokens_per_step = cfg.model.batch_size * cfg.model.seq_len
    model.train()
    while cfg.steps == 0 or step < cfg.steps:
        step += 1
        started = time.perf_counter()
        batch = synthetic_batch(step, rank, cfg.model.batch_size, cfg.model.seq_len, cfg.seed, device)
        request = faults.due(step)
        if request is not None and faults.fire(request, step, model):
            del batch["labels"]  # code_bug: a data-pipeline regression drops a key the step needs
        loss = _train_step(model, optimizer, batch)
        if cfg.step_sleep_s > 0:
            time.sleep(cfg.step_sleep_s)
        step_time = time.perf_counter() - started
        tokens_per_s = tokens_per_step / step_time if step_time > 0 else 0.0
        log.emit(
            "step",
            step=step,
            loss=json_float(loss, 4),
            step_time_s=round(step_time, 4),
            tokens_per_s=round(tokens_per_s, 1),
        )
        if metrics is not None:
            probe = compute_probe(device) if step % PROBE_EVERY == 0 else None
            metrics.update(step, loss, step_time, tokens_per_s, probe)
        ckpt.poll()
        if step % cfg.ckpt_every == 0:
            ckpt.save(step, model, optimizer, loss)

    ckpt.wait()
    log.emit("done", step=step)
    if metrics is not None:
        metrics.stop()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
