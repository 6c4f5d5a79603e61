"""Distributed checkpoints (DCP + FSDP2 sharded state dicts) with an explicit commit protocol.

Layout: ``<root>/step_{N:08d}/`` holds DCP's per-rank shard files and ``.metadata``, plus ``COMMITTED``.
Protocol:
  * every rank saves its shards (``dcp.async_save`` on a dedicated gloo group, falling back to
    ``dcp.save``); DCP's coordinator (rank 0) writes ``.metadata`` only after gathering every rank's
    write results, so rank 0's save future completing means the whole checkpoint is on disk;
  * rank 0 then writes ``COMMITTED`` atomically (tmp + rename) and logs ``checkpoint_saved``;
  * on start, only the highest-step directory with ``COMMITTED`` is loaded; directories without it
    (a crash mid-save) are logged as ``checkpoint_ignored`` and removed, never loaded;
  * rank 0 keeps only the last ``keep`` committed checkpoints;
  * a step with a non-finite loss on any rank is never saved (``checkpoint_skipped``).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import async_save as dcp_async_save
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

from trainer.jsonlog import JsonLogger

COMMIT_MARKER = "COMMITTED"
_STEP_DIR_RE = re.compile(r"^step_(\d{8})$")


def step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:08d}"


def scan_checkpoints(root: Path) -> tuple[list[tuple[int, Path]], list[tuple[int, Path]]]:
    """Return ``(complete, incomplete)`` step directories under ``root``, each sorted by step."""
    complete: list[tuple[int, Path]] = []
    incomplete: list[tuple[int, Path]] = []
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return complete, incomplete
    for name in names:
        m = _STEP_DIR_RE.match(name)
        path = root / name
        if not m or not path.is_dir():
            continue
        (complete if (path / COMMIT_MARKER).is_file() else incomplete).append((int(m.group(1)), path))
    return sorted(complete), sorted(incomplete)


def _write_marker(path: Path, step: int) -> None:
    tmp = path / f".{COMMIT_MARKER}.tmp"
    with open(tmp, "w") as f:
        f.write(f"step={step} ts={time.time():.3f}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path / COMMIT_MARKER)


@dataclass
class _PendingSave:
    step: int
    path: Path
    future: Future[Any]
    started: float


class Checkpointer:
    """Saves, commits, prunes and restores checkpoints for one rank.

    ``group`` must be a gloo process group used only for checkpointing, so DCP's planning collectives in
    the async-save thread never interleave with FSDP's collectives on the default group.
    """

    def __init__(self, root: Path, keep: int, rank: int, group: dist.ProcessGroup, log: JsonLogger) -> None:
        self.root = root
        self._keep = keep
        self._rank = rank
        self._group = group
        self._log = log
        self._pending: _PendingSave | None = None
        self._async_ok = True

    # -- restore ---------------------------------------------------------------------------------
    def find_resume_point(self) -> tuple[int, Path] | None:
        """Collective: rank 0 picks the newest committed checkpoint and tells everyone (same answer on
        every rank even if a rank's view of the filesystem lags)."""
        choice: list[object] = [None]
        if self._rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            complete, incomplete = scan_checkpoints(self.root)
            for _, path in incomplete:
                self._log.emit("checkpoint_ignored", path=str(path), reason="incomplete")
                # Nothing is mid-save at startup, and a later save may reuse the name: drop stale shards.
                shutil.rmtree(path, ignore_errors=True)
            if complete:
                step, path = complete[-1]
                choice = [(step, str(path))]
        dist.broadcast_object_list(choice, src=0, group=self._group)
        if choice[0] is None:
            return None
        step, path_str = cast(tuple[int, str], choice[0])
        return int(step), Path(path_str)

    def load(self, model: nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> int:
        """Collective: load model + optimizer shards from ``path``; returns the step it holds."""
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state: dict[str, Any] = {"model": model_sd, "optim": optim_sd, "trainer": {"step": -1}}
        dcp_load(state, checkpoint_id=str(path), process_group=self._group)
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        return int(state["trainer"]["step"])

    # -- save ------------------------------------------------------------------------------------
    def save(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, loss: float) -> None:
        """Collective: start saving ``step`` unless any rank's loss is non-finite."""
        self.wait()  # one save in flight at a time; also frees the group for the collective below
        finite = torch.tensor([1 if math.isfinite(loss) else 0], dtype=torch.int32)
        dist.all_reduce(finite, op=dist.ReduceOp.MIN, group=self._group)
        if not int(finite.item()):
            if self._rank == 0:
                self._log.emit("checkpoint_skipped", step=step, reason="non-finite loss")
            return
        path = step_dir(self.root, step)
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state: dict[str, Any] = {"model": model_sd, "optim": optim_sd, "trainer": {"step": step}}
        started = time.monotonic()
        if self._async_ok:
            try:
                result = dcp_async_save(state, checkpoint_id=str(path), process_group=self._group)
                future = result.upload_completion if hasattr(result, "upload_completion") else result
                self._pending = _PendingSave(step, path, future, started)
                return
            except Exception as exc:
                self._async_ok = False
                self._log.emit("checkpoint_async_unavailable", error=f"{type(exc).__name__}: {exc}"[:500])
        dcp_save(state, checkpoint_id=str(path), process_group=self._group)
        self._commit(step, path, started)

    def poll(self) -> None:
        """Non-blocking: commit the in-flight save if it has finished."""
        if self._pending is not None and self._pending.future.done():
            self.wait()

    def wait(self) -> None:
        """Block until the in-flight save (if any) finishes, then commit it (rank 0)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            pending.future.result()
        except Exception as exc:
            self._log.emit(
                "checkpoint_failed", step=pending.step, path=str(pending.path), error=f"{exc}"[:500]
            )
            return
        self._commit(pending.step, pending.path, pending.started)

    def _commit(self, step: int, path: Path, started: float) -> None:
        if self._rank != 0:
            return
        if not (path / ".metadata").is_file():
            self._log.emit("checkpoint_failed", step=step, path=str(path), error="no .metadata after save")
            return
        _write_marker(path, step)
        self._log.emit(
            "checkpoint_saved", step=step, path=str(path), seconds=round(time.monotonic() - started, 3)
        )
        self._prune()

    def _prune(self) -> None:
        complete, _ = scan_checkpoints(self.root)
        for _, old in complete[: max(0, len(complete) - self._keep)]:
            # Un-commit first so a crash mid-delete can never leave a committed but partial directory.
            (old / COMMIT_MARKER).unlink(missing_ok=True)
            shutil.rmtree(old, ignore_errors=True)
