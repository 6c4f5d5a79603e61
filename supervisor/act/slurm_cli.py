"""Slurm's command-line tools as typed calls: argument lists, timeouts, bounded retries, JSON parsing.

Contracts:
- Every command runs as an argument list (never through a shell), with `stdin` closed, a hard timeout
  (`SlurmSettings.command_timeout_s`) and `SLURM_CONF` (when configured) in its environment.
- `SlurmCli.run(..., retry=True)` retries only *transient* failures (a timeout, the controller not
  answering, "Socket timed out", "Resource temporarily unavailable", ...) with jittered exponential
  waits, bounded by `max_attempts` and by `retry_budget_s` measured from the first attempt. Callers
  pass `retry=True` only where repeating the command is harmless (reads, drain, resume, scancel);
  `scontrol requeue` and `sbatch` are never retried blindly (see supervisor.act.slurm).
- Slurm 22.05's `squeue --json` and `sinfo --json` ignore their filters (`-j`, `-t`, `-n`): they always
  return every job / node, and the parsers here filter in code.
- The parsers accept both 22.05's shapes (`job_state: "RUNNING"`, `state: "idle"`) and later ones
  (`job_state: ["RUNNING"]`, `state: ["IDLE", "DRAIN"]`), and never raise on a missing optional field.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from tenacity import RetryCallState

from supervisor.act.remediate import RetryPolicy, retry_call

log = structlog.get_logger(__name__)

# Slurm node names that may ever reach a command line: what slurm.conf allows in practice, and
# nothing a shell or scontrol's own parser could read as syntax (no spaces, '=', ',', quotes, brackets).
NODE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
JOB_ID_RE = re.compile(r"[1-9][0-9]{0,11}")

# Job states (base states; `squeue --json` reports one of these, or a list of state + flags later).
RUNNING_STATES = frozenset(
    {"RUNNING", "CONFIGURING", "SIGNALING", "STAGE_OUT", "RESIZING", "SUSPENDED", "STOPPED"}
)
WAITING_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"})
ENDING_STATES = frozenset({"COMPLETING"})
FINISHED_STATES = frozenset(
    {
        "COMPLETED",
        "CANCELLED",
        "FAILED",
        "TIMEOUT",
        "NODE_FAIL",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
        "OUT_OF_MEMORY",
        "REVOKED",
        "SPECIAL_EXIT",
    }
)

# Node base states / flags that mean a node cannot take new work.
_UNUSABLE_NODE_STATES = frozenset({"down", "error", "future", "unknown", "inval", "invalid"})
_UNUSABLE_NODE_FLAGS = frozenset(
    {"DRAIN", "DRAINING", "DRAINED", "FAIL", "MAINTENANCE", "NOT_RESPONDING", "POWERED_DOWN",
     "POWERING_DOWN", "POWER_DOWN", "REBOOT_REQUESTED", "REBOOT_ISSUED", "RESERVED", "INVALID_REG"}
)  # fmt: skip

# Failures worth another attempt: the controller or the network, not the request.
_TRANSIENT_MARKERS = (
    "socket timed out",
    "unable to contact slurm controller",
    "slurm controller not responding",
    "communication connection failure",
    "connection refused",
    "connection reset",
    "resource temporarily unavailable",
    "zero bytes were transmitted or received",
    "temporarily unable to accept job",
    "slurm backup controller in standby mode",
    "slurmctld is not responding",
    "transport endpoint",
    "munge",  # the local munged restarting: credentials cannot be made for a moment
)


class SlurmError(Exception):
    """A Slurm command failed. `transient` says whether trying again later may succeed."""

    def __init__(self, argv: Sequence[str], message: str, *, returncode: int | None, transient: bool) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.transient = transient
        self.message = message
        super().__init__(f"{' '.join(self.argv)}: {message}")


def is_transient_failure(stderr: str) -> bool:
    """Whether a Slurm client's error text names a transient condition (see `_TRANSIENT_MARKERS`)."""
    text = stderr.lower()
    return any(marker in text for marker in _TRANSIENT_MARKERS)


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, SlurmError) and exc.transient


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class SlurmNode:
    """One node as `sinfo --json` reports it. `state` is the lower-case base state ("idle", "mixed",
    "allocated", "down", ...); `flags` the upper-case state flags ("DRAIN", "NOT_RESPONDING", ...)."""

    name: str
    state: str
    flags: frozenset[str]
    reason: str
    reason_set_by: str | None
    reason_changed_at: float | None
    partitions: tuple[str, ...]

    @property
    def drained(self) -> bool:
        """Drained or draining (either way no new job lands here)."""
        return "DRAIN" in self.flags or self.state in ("drain", "drained", "draining")

    @property
    def usable(self) -> bool:
        """Can take new work now: up, not drained, not failing."""
        return (
            self.state not in _UNUSABLE_NODE_STATES
            and not self.drained
            and not (self.flags & _UNUSABLE_NODE_FLAGS)
        )

    @property
    def idle(self) -> bool:
        return self.usable and self.state == "idle"


@dataclass(frozen=True, slots=True)
class SlurmJob:
    """One job as `squeue --json` reports it (only what ftsup needs).

    `state` is the base state ("RUNNING", "PENDING", ...); `nodes` the allocated nodes in order (empty
    while pending); `exit_status` the raw wait status Slurm records (768 = exit 3, 9 = SIGKILL);
    times are epoch seconds, None when Slurm reports 0 / unset.
    """

    job_id: int
    name: str
    state: str
    state_flags: frozenset[str]
    state_reason: str
    restart_count: int
    nodes: tuple[str, ...]
    partition: str
    batch_host: str | None
    submit_time: float | None
    start_time: float | None
    end_time: float | None
    exit_status: int | None
    comment: str
    requeue: bool
    user: str

    @property
    def running(self) -> bool:
        return self.state in RUNNING_STATES

    @property
    def waiting(self) -> bool:
        return self.state in WAITING_STATES

    @property
    def ending(self) -> bool:
        return self.state in ENDING_STATES or "COMPLETING" in self.state_flags

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES and not self.ending

    @property
    def exit_code(self) -> int | None:
        """The batch script's exit status as a shell reports it: code, or 128+N for signal N."""
        return decode_wait_status(self.exit_status)


def decode_wait_status(status: int | None) -> int | None:
    """A raw wait(2) status (what Slurm stores) as a shell exit code: 768 -> 3, 9 -> 137."""
    if status is None:
        return None
    if status & 0x7F:
        return 128 + (status & 0x7F)
    return (status >> 8) & 0xFF


# ----------------------------------------------------------------------------- parsing


def expand_hostlist(expr: str) -> tuple[str, ...]:
    """Expand a Slurm hostlist (`node-[0-1,3]`, `gpu[001-003]-ib`, `a1,b[2-3]`) into names, in order.

    Zero-padding of a range follows its first bound (`[01-10]` -> 01, 02, ..., 10). An empty string or
    Slurm's "(null)" is no host. Raises ValueError on malformed brackets."""
    expr = expr.strip()
    if not expr or expr == "(null)":
        return ()
    out: list[str] = []
    for item in _split_top_level(expr):
        out.extend(_expand_item(item))
    return tuple(out)


def _split_top_level(expr: str) -> list[str]:
    items: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in expr:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in hostlist {expr!r}")
        if ch == "," and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth != 0:
        raise ValueError(f"unbalanced '[' in hostlist {expr!r}")
    items.append("".join(current))
    return [i for i in items if i]


def _expand_item(item: str) -> list[str]:
    start = item.find("[")
    if start < 0:
        return [item]
    end = item.find("]", start)
    if end < 0:
        raise ValueError(f"unbalanced '[' in hostlist item {item!r}")
    prefix, body, rest = item[:start], item[start + 1 : end], item[end + 1 :]
    tails = _expand_item(rest) if rest else [""]
    out: list[str] = []
    for part in body.split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            if not (lo.isdigit() and hi.isdigit()) or int(hi) < int(lo):
                raise ValueError(f"bad range {part!r} in hostlist item {item!r}")
            width = len(lo)
            values = [str(v).zfill(width) for v in range(int(lo), int(hi) + 1)]
        else:
            if not part:
                raise ValueError(f"empty element in hostlist item {item!r}")
            values = [part]
        for value in values:
            out.extend(f"{prefix}{value}{tail}" for tail in tails)
    return out


def _as_str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _as_time(value: object) -> float | None:
    """Epoch seconds; 22.05 gives ints, later versions {"set": bool, "number": int}."""
    if isinstance(value, dict):
        if not value.get("set", True):
            return None
        value = value.get("number")
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return float(value)


def _as_int(value: object) -> int | None:
    if isinstance(value, dict):
        if not value.get("set", True) or value.get("infinite"):
            return None
        value = value.get("number")
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _states(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def _document(text: str, key: str, what: str) -> list[dict[str, Any]]:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise SlurmError([what], f"output is not JSON ({exc})", returncode=0, transient=False) from exc
    if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
        raise SlurmError([what], f"JSON has no {key!r} list", returncode=0, transient=False)
    errors = doc.get("errors")
    if isinstance(errors, list) and errors:
        raise SlurmError([what], f"reported errors: {errors!r}", returncode=0, transient=True)
    return [item for item in doc[key] if isinstance(item, dict)]


def parse_sinfo_json(text: str) -> tuple[SlurmNode, ...]:
    """Every node in `sinfo --json` output, by name (duplicates, one per partition, merged)."""
    nodes: dict[str, SlurmNode] = {}
    for raw in _document(text, "nodes", "sinfo --json"):
        name = _as_str(raw.get("name"))
        if not name:
            continue
        states = _states(raw.get("state"))
        flags = {f.upper() for f in _states(raw.get("state_flags"))}
        base = states[0].lower() if states else "unknown"
        flags |= {s.upper() for s in states[1:]}  # 23.02+: ["IDLE", "DRAIN"]
        reason_by = raw.get("reason_set_by_user")
        partitions = tuple(p for p in raw.get("partitions") or () if isinstance(p, str))
        node = SlurmNode(
            name=name,
            state=base,
            flags=frozenset(flags),
            reason=_as_str(raw.get("reason")),
            reason_set_by=reason_by if isinstance(reason_by, str) and reason_by else None,
            reason_changed_at=_as_time(raw.get("reason_changed_at")),
            partitions=partitions,
        )
        seen = nodes.get(name)
        if seen is not None:
            node = dataclasses.replace(seen, partitions=tuple(dict.fromkeys((*seen.partitions, *partitions))))
        nodes[name] = node
    return tuple(nodes.values())


def parse_squeue_json(text: str) -> tuple[SlurmJob, ...]:
    """Every job in `squeue --json` output (22.05 ignores filters: callers select in code)."""
    jobs: list[SlurmJob] = []
    for raw in _document(text, "jobs", "squeue --json"):
        job_id = _as_int(raw.get("job_id"))
        if job_id is None:
            continue
        states = _states(raw.get("job_state"))
        base = states[0].upper() if states else "UNKNOWN"
        nodes = _allocated_nodes(raw)
        jobs.append(
            SlurmJob(
                job_id=job_id,
                name=_as_str(raw.get("name")),
                state=base,
                state_flags=frozenset(s.upper() for s in states[1:]),
                state_reason=_as_str(raw.get("state_reason")),
                restart_count=_as_int(raw.get("restart_cnt")) or 0,
                nodes=nodes,
                partition=_as_str(raw.get("partition")),
                batch_host=_as_str(raw.get("batch_host")) or None,
                submit_time=_as_time(raw.get("submit_time")),
                start_time=_as_time(raw.get("start_time")),
                end_time=_as_time(raw.get("end_time")),
                exit_status=_exit_status(raw.get("exit_code")),
                comment=_as_str(raw.get("comment")),
                requeue=bool(raw.get("requeue")),
                user=_as_str(raw.get("user_name")),
            )
        )
    return tuple(jobs)


def _exit_status(value: object) -> int | None:
    if isinstance(value, dict):  # 23.02+: {"status": [...], "return_code": {...}, "signal": {...}}
        code = _as_int(value.get("return_code"))
        sig = value.get("signal")
        signal_id = _as_int(sig.get("id")) if isinstance(sig, dict) else None
        if signal_id:
            return signal_id & 0x7F
        return None if code is None else (code & 0xFF) << 8
    return _as_int(value)


def _allocated_nodes(raw: Mapping[str, Any]) -> tuple[str, ...]:
    resources = raw.get("job_resources")
    if isinstance(resources, dict):
        allocated = resources.get("allocated_nodes")
        if isinstance(allocated, list):
            names = [_as_str(n.get("nodename")) for n in allocated if isinstance(n, dict)]
            if names and all(names):
                return tuple(names)
    try:
        return expand_hostlist(_as_str(raw.get("nodes")))
    except ValueError:
        return ()


def parse_job_id(sbatch_output: str) -> int:
    """The job id `sbatch --parsable` printed ("42" or "42;cluster")."""
    first = sbatch_output.strip().splitlines()[0] if sbatch_output.strip() else ""
    value = first.split(";", 1)[0].strip()
    if not JOB_ID_RE.fullmatch(value):
        raise SlurmError(["sbatch", "--parsable"], f"unexpected output {sbatch_output[:200]!r}",
                         returncode=0, transient=False)  # fmt: skip
    return int(value)


# ----------------------------------------------------------------------------- running commands


@dataclass(frozen=True, slots=True)
class SlurmSettings:
    """How to reach Slurm. `bin_dir` None = the programs on PATH; `slurm_conf` None = Slurm's default
    lookup (a configless or /etc/slurm setup); `env` is added to every command's environment."""

    slurm_conf: Path | None = None
    bin_dir: Path | None = None
    command_timeout_s: float = 30.0
    max_attempts: int = 4
    retry_budget_s: float = 30.0
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.command_timeout_s <= 0:
            raise ValueError("command_timeout_s must be > 0")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.retry_budget_s < 0:
            raise ValueError("retry_budget_s must be >= 0")


@dataclass(frozen=True, slots=True)
class CommandRecord:
    """One command as it ran (for tests and the journal's detail): argv, exit status, seconds."""

    argv: tuple[str, ...]
    returncode: int | None
    seconds: float


class SlurmCli:
    """Runs Slurm's programs. Thread-safe. `history` keeps the last commands run (argv, status, seconds)
    for tests and diagnostics."""

    def __init__(
        self,
        settings: SlurmSettings,
        *,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        history_limit: int = 500,
    ) -> None:
        self.settings = settings
        self._sleep = sleep
        self._monotonic = monotonic
        self.history: list[CommandRecord] = []  # newest last, bounded
        self._history_limit = history_limit
        self._history_lock = threading.Lock()

    def program(self, name: str) -> str:
        return str(self.settings.bin_dir / name) if self.settings.bin_dir else name

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.settings.env)
        if self.settings.slurm_conf is not None:
            env["SLURM_CONF"] = str(self.settings.slurm_conf)
        return env

    def run(
        self,
        argv: Sequence[str],
        *,
        retry: bool,
        extra_env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> str:
        """Run `argv` (argv[0] a Slurm program name) in `cwd`; return its stdout. Raises SlurmError on a
        non-zero exit, a timeout, or a missing program. With `retry`, transient failures are tried again."""
        if not retry:
            return self._once(argv, extra_env, cwd)
        return retry_call(
            lambda: self._once(argv, extra_env, cwd),
            RetryPolicy(self.settings.max_attempts, self.settings.retry_budget_s),
            retryable=_retryable,
            sleep=self._sleep,
            monotonic=self._monotonic,
            multiplier=0.3,
            before_sleep=self._log_retry,
        )

    @staticmethod
    def _log_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        log.warning("slurm.retry", attempt=state.attempt_number, sleep_s=round(state.upcoming_sleep, 2),
                    error=str(exc))  # fmt: skip

    def _once(self, argv: Sequence[str], extra_env: Mapping[str, str] | None, cwd: Path | None) -> str:
        args = [self.program(argv[0]), *argv[1:]]
        env = self.environment()
        if extra_env:
            env.update(extra_env)
        started = self._monotonic()
        try:
            proc = subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                env=env,
                cwd=cwd,
                timeout=self.settings.command_timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            self._record(argv, None, started)
            raise SlurmError(argv, f"timed out after {self.settings.command_timeout_s:g}s",
                             returncode=None, transient=True) from exc  # fmt: skip
        except OSError as exc:  # not installed, not executable
            self._record(argv, None, started)
            raise SlurmError(argv, f"cannot run: {exc}", returncode=None, transient=False) from exc
        self._record(argv, proc.returncode, started)
        if proc.returncode != 0:
            message = (proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}")[:1000]
            raise SlurmError(
                argv, message, returncode=proc.returncode, transient=is_transient_failure(message)
            )
        return proc.stdout

    def _record(self, argv: Sequence[str], code: int | None, started: float) -> None:
        with self._history_lock:
            self.history.append(CommandRecord(tuple(argv), code, self._monotonic() - started))
            if len(self.history) > self._history_limit:
                del self.history[: len(self.history) - self._history_limit]

    # ------------------------------------------------------------------ typed reads

    def nodes(self) -> tuple[SlurmNode, ...]:
        """Every node the controller knows (`sinfo --json`)."""
        return parse_sinfo_json(self.run(["sinfo", "--json"], retry=True))

    def jobs(self) -> tuple[SlurmJob, ...]:
        """Every job the controller still remembers (`squeue --json`; finished ones for MinJobAge)."""
        return parse_squeue_json(self.run(["squeue", "--json"], retry=True))

    def job(self, job_id: int) -> SlurmJob | None:
        """One job by id, or None when the controller does not know it (never submitted, or purged)."""
        return next((j for j in self.jobs() if j.job_id == job_id), None)
