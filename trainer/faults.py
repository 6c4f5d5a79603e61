"""Fault injection: requests read from a fault directory (or the CLI) and executed for real.

A request is a JSON file ``*.json`` in the fault dir::

    {"id": str, "kind": str, "node": str, "rank": int|null, "at_step": int|null, "attempt": int|null,
     "persistent": bool (optional, default false)}

* ``node``: target node name, ``"*"`` = every node.
* ``rank``: target global rank, ``null`` = every rank on the target node(s). ``xid79``/``xid48`` are
  node-wide (a lost GPU takes every process on the host with it), so their ``rank`` is not consulted.
* ``at_step``: fire at the first step >= ``at_step``; ``null`` = the next step checked.
* ``attempt``: only in that attempt (``FTSUP_ATTEMPT``/torchelastic restart count); ``null`` = any.
* ``persistent``: a broken node rather than an event (a dead GPU): the request fires again in every
  process on the target node that reaches a due step, whatever its attempt, until the file is removed
  or the node stops being used (cordoned). Default false.

Before executing, a rank writes ``<id>.fired.<node>.<rank>`` into the fault dir and never fires an id
that has its marker (unless ``persistent``), so a fault survives restarts as a one-shot. Writers
should create request files atomically (:func:`write_fault_request` does tmp + rename); unparsable
files are ignored and re-read on the next step.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.jsonlog import JsonLogger

FAULT_KINDS: tuple[str, ...] = ("code_bug", "collective_timeout", "sigkill", "nan", "hang", "xid79", "xid48")
NODE_WIDE_KINDS = frozenset({"xid79", "xid48"})

# Message texts as printed by the NVIDIA kernel driver (NVRM) for these Xid codes.
XID_MESSAGES: dict[int, str] = {
    79: "GPU has fallen off the bus.",
    48: "An uncorrectable double bit error (DBE) has been detected on GPU in the framebuffer at "
    "partition 0, subpartition 0.",
}
XID_PCI_BUS = "0000:3b:00"
# Time left for the node agent to read and ship the kernel line before the processes die.
XID_SHIP_DELAY_S = 1.0

_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _opt_int(d: dict[str, Any], key: str) -> int | None:
    value = d.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be an int or null")
    return value


@dataclass(frozen=True)
class FaultRequest:
    """One fault to inject; see the module docstring for field semantics."""

    id: str
    kind: str
    node: str
    rank: int | None = None
    at_step: int | None = None
    attempt: int | None = None
    persistent: bool = False

    @classmethod
    def from_dict(cls, d: object) -> FaultRequest:
        """Validate a decoded JSON object; raises ``ValueError`` when it is not a valid request."""
        if not isinstance(d, dict):
            raise ValueError("fault request must be a JSON object")
        fid, kind, node = d.get("id"), d.get("kind"), d.get("node")
        if not isinstance(fid, str) or not _ID_RE.match(fid):
            raise ValueError("id must match [A-Za-z0-9._:-]{1,128}")  # it becomes part of a file name
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        if not isinstance(node, str) or not node:
            raise ValueError("node must be a non-empty string")
        persistent = d.get("persistent", False)
        if not isinstance(persistent, bool):
            raise ValueError("persistent must be a boolean")
        return cls(
            fid, kind, node, _opt_int(d, "rank"), _opt_int(d, "at_step"), _opt_int(d, "attempt"), persistent
        )

    def targets(self, node: str, rank: int) -> bool:
        """Whether this request is aimed at the process ``rank`` running on ``node``."""
        if self.node not in ("*", node):
            return False
        return self.rank is None or self.kind in NODE_WIDE_KINDS or self.rank == rank

    def due(self, step: int, attempt: int) -> bool:
        """Whether it should fire at ``step`` during ``attempt``."""
        if self.attempt is not None and self.attempt != attempt:
            return False
        return self.at_step is None or step >= self.at_step


def write_fault_request(fault_dir: Path, request: FaultRequest) -> Path:
    """Atomically publish ``request`` as ``<fault_dir>/<id>.json`` (tmp file + rename)."""
    fault_dir.mkdir(parents=True, exist_ok=True)
    final = fault_dir / f"{request.id}.json"
    tmp = fault_dir / f".{request.id}.json.tmp"
    tmp.write_text(json.dumps(asdict(request)))
    os.replace(tmp, final)
    return final


def xid_kernel_line(code: int, pid: int) -> str:
    """A dmesg-formatted NVRM Xid line, e.g. ``[ 1234.567890] NVRM: Xid (PCI:0000:3b:00): 79, ...``."""
    try:
        uptime = time.clock_gettime(time.CLOCK_BOOTTIME)  # dmesg stamps are seconds since boot
    except (AttributeError, OSError):
        uptime = time.monotonic()
    return (
        f"[{uptime:12.6f}] NVRM: Xid (PCI:{XID_PCI_BUS}): {code}, pid={pid}, name=python, "
        f"{XID_MESSAGES[code]}"
    )


def stall_forever() -> None:
    """Block this thread forever without error (a hung GPU / deadlocked rank); only a signal ends it."""
    while True:
        time.sleep(3600)


def poison_with_nan(model: nn.Module) -> None:
    """Fill this rank's shard of one parameter with NaN; FSDP's all-gather spreads it to every rank."""
    with torch.no_grad():
        for param in model.parameters():
            local = param.to_local() if hasattr(param, "to_local") else param.data
            if local.numel() > 0:
                local.fill_(float("nan"))
                return


class FaultInjector:
    """Per-rank view of the fault dir plus the optional CLI request; checked once per step."""

    def __init__(
        self,
        fault_dir: Path,
        node: str,
        rank: int,
        local_rank: int,
        attempt: int,
        log: JsonLogger,
        kmsg_file: Path | None,
        cli_request: FaultRequest | None = None,
    ) -> None:
        self._dir = fault_dir
        self._node = node
        self._rank = rank
        self._local_rank = local_rank
        self._attempt = attempt
        self._log = log
        self._kmsg_file = kmsg_file
        self._cli = cli_request
        self._fired: set[str] = set()
        # Parsed requests keyed by file name and validated against (mtime_ns, size) to skip re-reads.
        self._cache: dict[str, tuple[tuple[int, int], FaultRequest | None]] = {}
        with contextlib.suppress(OSError):
            self._dir.mkdir(parents=True, exist_ok=True)

    def _marker(self, fault_id: str) -> Path:
        return self._dir / f"{fault_id}.fired.{self._node}.{self._rank}"

    def _requests(self) -> list[FaultRequest]:
        out = [self._cli] if self._cli is not None else []
        try:
            names = sorted(n for n in os.listdir(self._dir) if n.endswith(".json") and not n.startswith("."))
        except OSError:
            return out
        for name in names:
            path = self._dir / name
            try:
                st = path.stat()
            except OSError:
                continue
            key = (st.st_mtime_ns, st.st_size)
            cached = self._cache.get(name)
            if cached is not None and cached[0] == key:
                req = cached[1]
            else:
                try:
                    req = FaultRequest.from_dict(json.loads(path.read_text()))
                except (OSError, ValueError):
                    req = None  # half-written or malformed: ignore, re-read when it changes
                self._cache[name] = (key, req)
            if req is not None:
                out.append(req)
        return out

    def due(self, step: int) -> FaultRequest | None:
        """The first not-yet-fired request that targets this rank and is due at ``step``."""
        for req in self._requests():
            if req.id in self._fired or not req.targets(self._node, self._rank):
                continue
            if not req.due(step, self._attempt):
                continue
            if not req.persistent and self._marker(req.id).exists():
                self._fired.add(req.id)
                continue
            return req
        return None

    def fire(self, req: FaultRequest, step: int, model: nn.Module) -> bool:
        """Execute ``req`` for real. Returns True when the caller must corrupt this step's batch
        (``code_bug``); the other kinds either return after taking effect (``nan``) or never return."""
        self._fired.add(req.id)
        with contextlib.suppress(OSError):
            self._marker(req.id).write_text(f"{time.time():.3f} step={step}\n")
        self._log.emit("fault", kind=req.kind, id=req.id, step=step)
        if req.kind == "code_bug":
            return True
        if req.kind == "nan":
            poison_with_nan(model)
            return False
        if req.kind in ("collective_timeout", "hang"):
            stall_forever()
        if req.kind == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        if req.kind in NODE_WIDE_KINDS:
            self._lose_gpu(int(req.kind.removeprefix("xid")))
        raise AssertionError(f"unhandled fault kind {req.kind}")

    def _lose_gpu(self, code: int) -> None:
        """Local rank 0 appends the Xid kernel line to the node's kmsg file; then every rank on the node
        is SIGKILLed, as the driver tearing down a lost GPU's contexts kills its processes."""
        if self._local_rank == 0 and self._kmsg_file is not None:
            with open(self._kmsg_file, "a") as f:
                f.write(xid_kernel_line(code, os.getpid()) + "\n")
        time.sleep(XID_SHIP_DELAY_S)
        os.kill(os.getpid(), signal.SIGKILL)
