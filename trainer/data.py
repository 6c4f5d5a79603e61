"""Synthetic byte sequences, deterministic per (seed, step, rank) so a resumed run sees the same data."""

from __future__ import annotations

import torch


def synthetic_batch(
    step: int, rank: int, batch_size: int, seq_len: int, seed: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Return ``{"input_ids", "labels"}`` (both ``(batch_size, seq_len)`` int64) for this step and rank.

    Each sequence is an arithmetic progression mod 256 with a random start and stride, so the model has
    something learnable (the loss falls) while the data stays a pure function of its arguments.
    """
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step * 1_009 + rank)
    start = torch.randint(0, 256, (batch_size, 1), generator=gen)
    stride = torch.randint(1, 8, (batch_size, 1), generator=gen)
    seq = (start + stride * torch.arange(seq_len + 1)) % 256
    return {"input_ids": seq[:, :-1].to(device), "labels": seq[:, 1:].to(device)}
