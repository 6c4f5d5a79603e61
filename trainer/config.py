"""Command-line contract of ``python -m trainer.train`` and its resolved configuration."""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass
from pathlib import Path

DEFAULT_NAMESPACE = "ftsup/Trainer"


@dataclass(frozen=True)
class ModelArgs:
    """Size of the byte-level GPT (vocab is fixed at 256)."""

    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 4
    seq_len: int = 64
    batch_size: int = 8


@dataclass(frozen=True)
class InjectArgs:
    """A fault requested on the command line; same fields and semantics as a fault-request file."""

    kind: str
    node: str
    rank: int | None
    at_step: int | None
    attempt: int | None


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``trainer.train`` needs, resolved from argv and the environment."""

    job: str
    node: str
    run_dir: Path
    steps: int
    ckpt_every: int
    keep_checkpoints: int
    collective_timeout_s: float
    step_sleep_s: float
    seed: int
    model: ModelArgs
    fault_dir: Path
    inject: InjectArgs | None
    metrics: bool
    metrics_endpoint_url: str | None
    metrics_namespace: str
    metrics_interval_s: float
    region: str

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"


def resolve_attempt(env: dict[str, str] | None = None) -> int:
    """Attempt number: ``FTSUP_ATTEMPT`` if set, else ``TORCHELASTIC_RESTART_COUNT``, else 0."""
    env = dict(os.environ) if env is None else env
    for key in ("FTSUP_ATTEMPT", "TORCHELASTIC_RESTART_COUNT"):
        raw = env.get(key, "").strip()
        if raw:
            try:
                return int(raw)
            except ValueError:
                continue
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer.train", description=__doc__)
    p.add_argument("--job", default=os.environ.get("FTSUP_JOB") or "job")
    p.add_argument("--node", default=os.environ.get("FTSUP_NODE") or socket.gethostname())
    p.add_argument("--run-dir", required=True, type=Path, help="checkpoints go to RUN_DIR/checkpoints")
    p.add_argument("--steps", type=int, default=0, help="stop after this step; 0 = run until killed")
    p.add_argument("--ckpt-every", type=int, default=10)
    p.add_argument("--keep-checkpoints", type=int, default=3)
    p.add_argument("--collective-timeout-s", type=float, default=20.0)
    p.add_argument("--step-sleep-s", type=float, default=0.0, help="throttle: sleep after each step")
    p.add_argument("--seed", type=int, default=1234)
    # Model size.
    p.add_argument("--n-layers", type=int, default=ModelArgs.n_layers)
    p.add_argument("--d-model", type=int, default=ModelArgs.d_model)
    p.add_argument("--n-heads", type=int, default=ModelArgs.n_heads)
    p.add_argument("--seq-len", type=int, default=ModelArgs.seq_len)
    p.add_argument("--batch-size", type=int, default=ModelArgs.batch_size, help="per-rank sequences/step")
    # Faults.
    p.add_argument("--fault-dir", type=Path, default=None, help="default RUN_DIR/faults")
    p.add_argument("--inject", default=None, help="fault kind to inject (see trainer.faults.FAULT_KINDS)")
    p.add_argument("--inject-node", default="*", help='target node name; "*" = every node')
    p.add_argument("--inject-rank", type=int, default=None, help="global rank; omitted = every rank")
    p.add_argument("--inject-at-step", type=int, default=None, help="first step >= this; omitted = next")
    p.add_argument("--inject-attempt", type=int, default=None, help="only on this attempt; omitted = any")
    # Metrics.
    p.add_argument("--metrics", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--metrics-endpoint-url", default=os.environ.get("FTSUP_CW_ENDPOINT") or None)
    p.add_argument("--metrics-namespace", default=DEFAULT_NAMESPACE)
    p.add_argument("--metrics-interval-s", type=float, default=2.0)
    p.add_argument("--region", default=os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")
    return p


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """Parse argv into a :class:`TrainConfig`; exits with usage on invalid input (argparse)."""
    parser = build_parser()
    a = parser.parse_args(argv)
    if a.ckpt_every < 1:
        parser.error("--ckpt-every must be >= 1")
    if a.keep_checkpoints < 1:
        parser.error("--keep-checkpoints must be >= 1")
    if a.d_model % a.n_heads:
        parser.error("--d-model must be divisible by --n-heads")
    inject = None
    if a.inject:
        from trainer.faults import FAULT_KINDS

        if a.inject not in FAULT_KINDS:
            parser.error(f"--inject must be one of {', '.join(FAULT_KINDS)}")
        inject = InjectArgs(a.inject, a.inject_node, a.inject_rank, a.inject_at_step, a.inject_attempt)
    run_dir: Path = a.run_dir
    return TrainConfig(
        job=a.job,
        node=a.node,
        run_dir=run_dir,
        steps=a.steps,
        ckpt_every=a.ckpt_every,
        keep_checkpoints=a.keep_checkpoints,
        collective_timeout_s=a.collective_timeout_s,
        step_sleep_s=a.step_sleep_s,
        seed=a.seed,
        model=ModelArgs(a.n_layers, a.d_model, a.n_heads, a.seq_len, a.batch_size),
        fault_dir=a.fault_dir if a.fault_dir is not None else run_dir / "faults",
        inject=inject,
        metrics=a.metrics,
        metrics_endpoint_url=a.metrics_endpoint_url,
        metrics_namespace=a.metrics_namespace,
        metrics_interval_s=a.metrics_interval_s,
        region=a.region,
    )
