"""Slurm actuator: the job is a Slurm batch job; ftsup drives it with Slurm's own tools.

- launch:             `sbatch --parsable` of the job script (submitted with `--requeue`), or adopt a job
                      that already exists (by id, by name, or the one a previous daemon submitted).
- restart:            `scontrol requeue <job>`: Slurm stops the run and queues the job again; the trainer
                      resumes from its newest complete checkpoint. Waits (bounded) until it runs again.
- cordon_and_restart: `scontrol update NodeName=<node> State=DRAIN Reason="ftsup: <rule> incident <id>"`,
                      then the requeue: a drained node takes no new work, so the job runs again elsewhere.
- halt:               record the reason on the job (`Comment=`), then `scancel` (or, with `halt: hold`,
                      `scontrol requeuehold`: the job stays queued, held, until a human releases it).
- observe:            `squeue --json` and `sinfo --json` (Slurm 22.05 ignores their filters: selected
                      here), mapped to a JobObservation: attempt = attempt base + Slurm's restart count.

Safety:
- Every command is an argument list with a timeout (supervisor.act.slurm_cli). Reads, drain, resume and
  scancel are retried on transient failures; `scontrol requeue` and `sbatch` never blindly: after a
  failed or timed-out attempt Slurm is observed first (did the restart count move? is a job with this
  submission's token queued?) and only then is the command tried again.
- A node name reaches a command line only after it matched NODE_NAME_RE *and* `sinfo --json` reported
  it. Text derived from logs never reaches a command line, except as the one `Reason=` list element,
  built from the rule name and incident id, reduced to a safe alphabet and capped in length.
- Only nodes whose drain reason starts with "ftsup:" are ever resumed (`resume()`); an operator's drain
  is never touched, not even its reason (draining an operator-drained node is a no-op).
- Every action is idempotent per `action.idempotency_key`: its steps and result are kept in
  STATE_DIR/actuator-state.json, and each step first observes Slurm (a drained node is not drained
  again, a job whose restart count moved past the one recorded before the action is not requeued again).
  At start-up, actions a previous daemon left unfinished are reconciled by observing Slurm, never by
  acting: what happened is recorded, nothing is repeated.
- `stop()` leaves the job alone: it is the scheduler's, and restarting the daemon must not end training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shlex
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from supervisor.act.nodemap import NodeMap
from supervisor.act.slurm_cli import (
    JOB_ID_RE,
    NODE_NAME_RE,
    SlurmCli,
    SlurmError,
    SlurmJob,
    SlurmNode,
    SlurmSettings,
    parse_job_id,
)
from supervisor.errors import StartupError
from supervisor.vocabulary import Action, ActionResult, JobObservation, Verdict

log = structlog.get_logger("ftsup.act.slurm")

REASON_PREFIX = "ftsup:"
REASON_MAX_CHARS = 120
HALT_MODES = ("cancel", "hold")
_RULE_IN_REASON = re.compile(r"([a-z0-9][a-z0-9._-]{0,63})(?: on |:)")
_UNSAFE_RULE = re.compile(r"[^a-z0-9._-]")
_UNSAFE_ID = re.compile(r"[^A-Za-z0-9._:-]")
_MAX_RECORDS = 200


def drain_reason(rule: str, incident_id: str) -> str:
    """`ftsup: <rule> incident <id>` from a safe alphabet only, at most REASON_MAX_CHARS characters.

    The rule name and incident id may be derived from log text; whatever they hold, the result has no
    quote, `=`, whitespace run or control character, and always starts with REASON_PREFIX."""
    safe_rule = _UNSAFE_RULE.sub("", rule.lower())[:64] or "rule"
    safe_id = _UNSAFE_ID.sub("", incident_id)[:64] or "unknown"
    return f"{REASON_PREFIX} {safe_rule} incident {safe_id}"[:REASON_MAX_CHARS]


def halt_reason(action: Action) -> str:
    """The reason a halt records on the job: `ftsup: halt: <rule> incident <id>` (safe, capped)."""
    reason = drain_reason(rule_of(action), action.incident_id)
    return reason.replace(REASON_PREFIX, f"{REASON_PREFIX} halt:", 1)[:REASON_MAX_CHARS]


def rule_of(action: Action) -> str:
    """The rule an action stems from, read from its decision reason ("<rule> on <node>: ...",
    "<rule>: ..."); the action kind when the reason names none (a budget halt)."""
    m = _RULE_IN_REASON.match(action.reason)
    return m.group(1) if m else action.kind.value


@dataclass(frozen=True)
class SlurmJobSpec:
    """What the Slurm actuator runs and how. Exactly one of `script`, `job_id`, `job_name` says where
    the job comes from: submit `script` (as `--job-name=<job>`), or adopt job `job_id`, or adopt the
    newest active job named `job_name`. `env` is added to sbatch's environment, which Slurm passes to
    the job (with FTSUP_JOB, FTSUP_LOG_GROUP, FTSUP_CW_ENDPOINT, AWS_DEFAULT_REGION, FTSUP_ATTEMPT_BASE)."""

    job: str
    state_dir: Path
    log_group: str
    script: Path | None = None
    script_args: tuple[str, ...] = ()
    sbatch_args: tuple[str, ...] = ()
    job_id: int | None = None
    job_name: str | None = None
    partition: str | None = None
    halt: str = "cancel"
    start_timeout_s: float = 600.0  # how long launch / requeue wait for the job to run (again)
    stop_timeout_s: float = 120.0  # how long a halt waits for the job to end
    poll_interval_s: float = 1.0
    observe_ttl_s: float = 1.0  # observe() answers from a reading at most this old
    endpoint_url: str | None = None
    region: str = "us-east-1"
    env: Mapping[str, str] = field(default_factory=dict)
    node_map: NodeMap = field(default_factory=NodeMap)
    max_delay_s: float = 600.0  # upper bound on a backoff wait inside apply()

    def __post_init__(self) -> None:
        sources = [s for s in (self.script, self.job_id, self.job_name) if s is not None]
        if len(sources) != 1:
            raise ValueError("exactly one of script, job_id, job_name must be given")
        if self.halt not in HALT_MODES:
            raise ValueError(f"halt must be one of {', '.join(HALT_MODES)}")


@dataclass(frozen=True)
class _Seen:
    """One reading of Slurm: the job (None if Slurm does not know it) and every node."""

    job: SlurmJob | None
    nodes: tuple[SlurmNode, ...]
    at: float

    def node(self, name: str) -> SlurmNode | None:
        return next((n for n in self.nodes if n.name == name), None)


class _Refused(Exception):
    """An action that must not go ahead (unknown node, no job); the message is the result's detail."""


class SlurmActuator:
    """Implements supervisor.act.base.Actuator for a Slurm batch job. Thread-safe: actions are
    serialised; observe() may run while an action waits for the job to start."""

    def __init__(
        self,
        spec: SlurmJobSpec,
        settings: SlurmSettings | None = None,
        *,
        cli: SlurmCli | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.spec = spec
        self.cli = cli or SlurmCli(settings or SlurmSettings())
        self._clock = clock
        self._sleep = sleep
        self._act_lock = threading.RLock()  # one action (or launch) at a time
        self._state_lock = threading.RLock()  # the fields below
        self._job_id: int | None = spec.job_id
        self._attempt_base = 0
        self._halted = False
        self._held = False  # halted with `scontrol requeuehold`: launch releases it
        self._cancelled = False  # halted with `scancel`: launch (after clear_halt) submits it afresh
        self._halt_reason: str | None = None
        self._requeued_at: float | None = None
        self._last_attempt = -1
        self._last_nodes: tuple[str, ...] = ()
        self._records: dict[str, dict[str, Any]] = {}
        self._cache: _Seen | None = None
        self._restore()

    # ------------------------------------------------------------------ state that outlives the daemon

    @property
    def state_path(self) -> Path:
        return self.spec.state_dir / "actuator-state.json"

    @property
    def job_id(self) -> int | None:
        return self._job_id

    @property
    def halted(self) -> bool:
        return self._halted

    def _restore(self) -> None:
        if not self.state_path.exists():
            return
        try:
            saved = json.loads(self.state_path.read_text())
            if saved.get("kind") != "slurm":
                raise ValueError(f"written by the {saved.get('kind', 'local')!r} actuator")
            job_id = saved.get("job_id")
            self._attempt_base = int(saved.get("attempt_base", 0))
            self._last_attempt = int(saved.get("last_attempt", -1))
            if job_id is not None and (self.spec.job_id is None or self.spec.job_id == int(job_id)):
                self._job_id = int(job_id)  # the job ftsup last drove, even if it resubmitted it since
            elif self.spec.job_id is not None:
                self._attempt_base = self._last_attempt + 1  # the config names another job: adopt it
            self._halted = bool(saved.get("halted", False))
            self._held = bool(saved.get("held", False))
            self._cancelled = bool(saved.get("cancelled", False))
            self._halt_reason = saved.get("halt_reason")
            self._requeued_at = saved.get("requeued_at")
            self._last_nodes = tuple(str(n) for n in saved.get("last_nodes", ()))
            self._records = {str(k): dict(v) for k, v in saved.get("actions", {}).items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StartupError(
                f"{self.state_path}: unreadable actuator state ({exc!r}); move it aside to start afresh"
            ) from exc

    def _persist(self) -> None:
        with self._state_lock:
            if len(self._records) > _MAX_RECORDS:
                for key in list(self._records)[: len(self._records) - _MAX_RECORDS]:
                    del self._records[key]
            state = {
                "kind": "slurm",
                "job": self.spec.job,
                "job_id": self._job_id,
                "attempt_base": self._attempt_base,
                "halted": self._halted,
                "held": self._held,
                "cancelled": self._cancelled,
                "halt_reason": self._halt_reason,
                "requeued_at": self._requeued_at,
                "last_attempt": self._last_attempt,
                "last_nodes": list(self._last_nodes),
                "actions": self._records,
            }
            self.spec.state_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.state_path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
            os.replace(tmp, self.state_path)

    def clear_halt(self) -> None:
        """A human has looked at the halted job: launch() may release (hold) or resubmit (cancel) it."""
        with self._act_lock:
            self._halted = False
            self._persist()

    # ------------------------------------------------------------------ reading Slurm

    def _read(self, *, fresh: bool = True) -> _Seen:
        """Read the job and every node. `fresh=False` accepts a reading up to observe_ttl_s old."""
        now = self._clock()
        with self._state_lock:
            cached = self._cache
        if not fresh and cached is not None and now - cached.at < self.spec.observe_ttl_s:
            return cached
        nodes = self.cli.nodes()
        job_id = self._job_id
        job = self.cli.job(job_id) if job_id is not None else None
        seen = _Seen(job, nodes, now)
        with self._state_lock:
            self._cache = seen
        return seen

    def _attempt_of(self, job: SlurmJob | None) -> int:
        if job is None:
            return max(self._last_attempt, 0)
        return self._attempt_base + job.restart_count

    def _streams(self, names: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(self.spec.node_map.to_stream(n) for n in names)

    def _partition(self, seen: _Seen) -> str | None:
        if self.spec.partition:
            return self.spec.partition
        return seen.job.partition if seen.job is not None and seen.job.partition else None

    def _spares(self, seen: _Seen, members: tuple[str, ...]) -> tuple[str, ...]:
        part = self._partition(seen)
        return tuple(
            n.name
            for n in seen.nodes
            if n.idle and n.name not in members and (part is None or not n.partitions or part in n.partitions)
        )

    @staticmethod
    def _ftsup_drained(seen: _Seen) -> tuple[str, ...]:
        return tuple(n.name for n in seen.nodes if n.drained and n.reason.startswith(REASON_PREFIX))

    def observe(self) -> JobObservation:
        """The job as Slurm reports it now (a reading at most observe_ttl_s old).

        attempt: the attempt base plus Slurm's restart count. nodes: the allocated nodes (empty while
        pending), as ftsup names them (node map). exit_codes: (node, None) for each node while it runs;
        (node, code) once it ended, code being the batch script's status (a job that ended in any state
        but COMPLETED never reports 0); () while pending. A job Slurm no longer knows counts as ended
        with status 1. When Slurm cannot be read, the last known shape with no exit codes: blindness
        is not a failure of the job."""
        try:
            seen = self._read(fresh=False)
        except SlurmError as exc:
            log.warning("slurm unreadable; observation is the last known state", error=str(exc))
            return JobObservation(
                job=self.spec.job,
                attempt=max(self._last_attempt, 0),
                nodes=self._streams(self._last_nodes),
                spares=(),
                cordoned=(),
                running=True,
                launched_at=None,
            )
        return self._observation(seen)

    def _observation(self, seen: _Seen) -> JobObservation:
        job = seen.job
        members = job.nodes if job is not None else ()
        attempt = self._attempt_of(job)
        with self._state_lock:
            if job is not None:
                self._last_attempt = max(self._last_attempt, attempt)
                if members:
                    self._last_nodes = members
        exit_codes: tuple[tuple[str, int | None], ...] = ()
        streams = self._streams(members)
        if job is None:
            if self._job_id is not None and not self._halted:
                gone = self._streams(self._last_nodes) or (self.spec.job,)
                exit_codes = tuple((n, 1) for n in gone)
        elif job.running or job.ending:
            exit_codes = tuple((n, None) for n in streams)
        elif job.finished:
            code = job.exit_code if job.exit_code is not None else 1
            if job.state != "COMPLETED" and code == 0:
                code = 1
            exit_codes = tuple((n, code) for n in streams or (self.spec.job,))
        launched = job.start_time if job is not None and (job.running or job.ending or job.finished) else None
        if job is not None and job.waiting:
            launched = self._requeued_at or job.submit_time
        return JobObservation(
            job=self.spec.job,
            attempt=attempt,
            nodes=streams,
            spares=self._streams(self._spares(seen, members)),
            cordoned=self._streams(self._ftsup_drained(seen)),
            running=job is not None and job.running,
            launched_at=launched,
            exit_codes=exit_codes,
        )

    def validate_node(self, stream: str, seen: _Seen | None = None) -> str:
        """The Slurm name of the node ftsup calls `stream`, checked: it matches NODE_NAME_RE and
        `sinfo --json` reports it. Raises _Refused otherwise (nothing reaches a command line)."""
        name = self.spec.node_map.to_scheduler(stream)
        if not NODE_NAME_RE.fullmatch(name):
            raise _Refused(f"refusing node {stream!r}: {name!r} is not a valid Slurm node name")
        seen = seen or self._read()
        if seen.node(name) is None:
            raise _Refused(f"refusing node {stream!r}: Slurm reports no node named {name!r}")
        return name

    # ------------------------------------------------------------------ commands (exact argv)

    def _job_arg(self) -> str:
        job_id = self._job_id
        if job_id is None or not JOB_ID_RE.fullmatch(str(job_id)):
            raise _Refused("no Slurm job to act on (none submitted or adopted)")
        return str(job_id)

    def drain_command(self, node: str, reason: str) -> list[str]:
        return ["scontrol", "update", f"NodeName={node}", "State=DRAIN", f"Reason={reason}"]

    def resume_command(self, node: str) -> list[str]:
        return ["scontrol", "update", f"NodeName={node}", "State=RESUME"]

    def requeue_command(self) -> list[str]:
        return ["scontrol", "requeue", self._job_arg()]

    def halt_commands(self, reason: str) -> list[list[str]]:
        job = self._job_arg()
        comment = ["scontrol", "update", f"JobId={job}", f"Comment={reason}"]
        if self.spec.halt == "hold":
            return [comment, ["scontrol", "requeuehold", job]]
        return [comment, ["scancel", job]]

    def sbatch_command(self, token: str) -> list[str]:
        """sbatch's argv; it runs in state_dir, the job's working directory unless the script says
        otherwise (`#SBATCH --chdir`). The token in the comment finds this submission after a failure."""
        spec = self.spec
        assert spec.script is not None
        argv = ["sbatch", "--parsable", f"--job-name={spec.job}", f"--comment=ftsup-submit:{token}"]
        if spec.partition:
            argv.append(f"--partition={spec.partition}")
        return [*argv, *spec.sbatch_args, str(spec.script), *spec.script_args]

    def job_environment(self, attempt_base: int) -> dict[str, str]:
        """What sbatch passes on to the job (Slurm exports the submitting environment by default)."""
        env = dict(self.spec.env)
        env.update(
            {
                "FTSUP_JOB": self.spec.job,
                "FTSUP_LOG_GROUP": self.spec.log_group,
                "FTSUP_ATTEMPT_BASE": str(attempt_base),
                "AWS_DEFAULT_REGION": self.spec.region,
            }
        )
        if self.spec.endpoint_url:
            env["FTSUP_CW_ENDPOINT"] = self.spec.endpoint_url
        return env

    # ------------------------------------------------------------------ Actuator protocol

    def plan(self, action: Action) -> list[str]:
        """The exact commands apply() would run, one per line (observe mode prints them)."""
        reason = drain_reason(rule_of(action), action.incident_id)
        try:
            if action.kind is Verdict.HALT:
                steps = [shlex.join(c) for c in self.halt_commands(halt_reason(action))]
                return [*steps, "keep the run directory and checkpoints for inspection; do not relaunch"]
            if action.kind is Verdict.IGNORE:
                return ["nothing to do"]
            steps = []
            if action.kind is Verdict.CORDON_AND_RESTART:
                node = self.spec.node_map.to_scheduler(action.node or "")
                if not NODE_NAME_RE.fullmatch(node):
                    raise _Refused(f"{node[:64]!r} is not a valid Slurm node name; nothing would be done")
                steps.append(shlex.join(self.drain_command(node, reason)))
            if action.delay_s > 0:
                steps.append(f"wait {action.delay_s:g}s (backoff)")
            steps.append(shlex.join(self.requeue_command()))
            steps.append(
                f"wait up to {self.spec.start_timeout_s:g}s for job {self._job_id} to run again "
                "(drained nodes take no new work); the trainer resumes from its latest checkpoint"
            )
            return steps
        except _Refused as exc:
            return [f"(refused: {exc})"]

    def launch(self) -> ActionResult:
        """Submit the job (attempt 0), or adopt the one a previous daemon submitted / the config names.

        Refuses a job that was halted until clear_halt(). Actions a previous daemon left unfinished are
        reconciled first, by observing Slurm (nothing is repeated). Waits up to start_timeout_s for the
        job to run, so the result names its nodes; a job still pending after that is reported as such."""
        with self._act_lock:
            started = self._clock()
            if self._halted:
                raise StartupError(
                    f"job {self.spec.job} (Slurm job {self._job_id}) was halted ({self._halt_reason}); "
                    f"see {self.state_path}; inspect it, then run with --clear-halt to launch it again"
                )
            notes = self._reconcile_records()
            try:
                how = self._adopt_or_submit()
            except (SlurmError, _Refused) as exc:
                raise StartupError(f"cannot launch job {self.spec.job} on Slurm: {exc}") from exc
            seen = self._wait_running(restart_before=None)
            job = seen.job
            state = f"{job.state} on {', '.join(job.nodes) or '(no nodes yet)'}" if job else "unknown"
            if job is not None and job.waiting:
                state += f" (reason {job.state_reason})"
            detail = f"{how}: Slurm job {self._job_id} {state}, attempt {self._attempt_of(job)}"
            if notes:
                detail += f"; {notes}"
            obs = self._observation(seen)
            self._persist()
            return ActionResult(
                idempotency_key=f"{self.spec.job}:launch:{obs.attempt}",
                ok=True,
                detail=detail,
                started_at=started,
                finished_at=self._clock(),
                attempt=obs.attempt,
                nodes=obs.nodes,
            )

    def _adopt_or_submit(self) -> str:
        if self._job_id is not None:
            job = self.cli.job(self._job_id)
            if job is not None and self._cancelled and job.finished and self.spec.script is not None:
                self._attempt_base = self._last_attempt + 1
                self._cancelled = False
                return self._submit(f"job {job.job_id} was cancelled by a halt; submitted")
            if job is not None:
                if self._held:
                    self.cli.run(["scontrol", "release", str(job.job_id)], retry=True)
                    self._held = False
                    return f"released held job {job.job_id}"
                return f"adopted job {job.job_id}"
            if self.spec.script is None:
                raise _Refused(f"Slurm no longer knows job {self._job_id} and there is no script to submit")
            self._attempt_base = self._last_attempt + 1
            return self._submit(f"Slurm no longer knows job {self._job_id}; submitted")
        if self.spec.job_name is not None:
            found = [j for j in self.cli.jobs() if j.name == self.spec.job_name and not j.finished]
            if not found:
                raise _Refused(f"no active Slurm job named {self.spec.job_name!r} to adopt")
            self._job_id = max(found, key=lambda j: j.job_id).job_id
            self._persist()
            return f"adopted job {self._job_id} by name {self.spec.job_name!r}"
        self._attempt_base = self._last_attempt + 1
        return self._submit("submitted")

    def _submit(self, how: str) -> str:
        """sbatch, never blindly twice: after a failed attempt, a job carrying this submission's token
        in its comment is adopted instead of submitting again."""
        assert self.spec.script is not None
        token = uuid.uuid4().hex[:12]
        argv = self.sbatch_command(token)
        self.spec.state_dir.mkdir(parents=True, exist_ok=True)
        env = self.job_environment(self._attempt_base)
        error: SlurmError | None = None
        for _ in range(self.cli.settings.max_attempts):
            try:
                # Run from the state directory: a job without --chdir works (and writes its output) there.
                out = self.cli.run(argv, retry=False, extra_env=env, cwd=self.spec.state_dir)
                self._job_id = parse_job_id(out)
                break
            except SlurmError as exc:
                error = exc
                if not exc.transient:
                    raise
                queued = [j for j in self.cli.jobs() if j.comment == f"ftsup-submit:{token}"]
                if queued:
                    self._job_id = queued[0].job_id
                    break
                self._sleep(min(5.0, self.spec.poll_interval_s * 2))
        else:
            assert error is not None
            raise error
        self._requeued_at = None
        self._persist()
        return f"{how} {self.spec.script} as job {self._job_id}"

    def apply(self, action: Action) -> ActionResult:
        """Carry out one action; the same idempotency key again (in this process or after a restart)
        returns the first result, with nothing done twice."""
        with self._act_lock:
            record = self._records.get(action.idempotency_key)
            if record is not None and record.get("result") is not None:
                first = _result_from(record["result"])
                return dataclasses.replace(
                    first, detail=f"already applied under this idempotency key; nothing done: {first.detail}"
                )
            started = self._clock()
            if record is None:
                record = {"kind": action.kind.value, "incident": action.incident_id, "node": action.node,
                          "started_at": started, "steps": {}}  # fmt: skip
                self._records[action.idempotency_key] = record
            try:
                ok, detail = self._apply(action, record)
            except _Refused as exc:
                ok, detail = False, str(exc)
            except SlurmError as exc:
                ok, detail = False, f"Slurm command failed: {exc}"
            seen = self._safe_read()
            obs = self._observation(seen) if seen is not None else None
            running = obs is not None and action.kind is not Verdict.HALT and ok
            result = ActionResult(
                idempotency_key=action.idempotency_key,
                ok=ok,
                detail=detail,
                started_at=started,
                finished_at=self._clock(),
                attempt=obs.attempt if running and obs is not None else None,
                nodes=obs.nodes if obs is not None else (),
            )
            record["result"] = _result_to(result)
            self._persist()
            log.info("slurm action", key=action.idempotency_key, ok=ok, detail=detail)
            return result

    def _safe_read(self) -> _Seen | None:
        try:
            return self._read()
        except SlurmError:
            return None

    def _apply(self, action: Action, record: dict[str, Any]) -> tuple[bool, str]:
        if self._halted:
            return False, "the job is halted; refusing to act until a human relaunches it"
        if action.kind is Verdict.IGNORE:
            return True, "nothing to do"
        self._job_arg()  # refuses when there is no job
        seen = self._read()
        steps: dict[str, str] = record["steps"]
        if "restart_before" not in record:
            record["restart_before"] = seen.job.restart_count if seen.job is not None else None
            record["job_id"] = self._job_id
            self._persist()
        if action.kind is Verdict.HALT:
            return True, self._halt(action, seen, steps)
        done: list[str] = []
        if action.kind is Verdict.CORDON_AND_RESTART:
            if action.node is None:
                raise _Refused("cordon_and_restart names no node")
            node = self.validate_node(action.node, seen)
            record["slurm_node"] = node
            done.append(self._drain(node, drain_reason(rule_of(action), action.incident_id), seen, steps))
        if action.delay_s > 0 and "requeue" not in steps:
            self._sleep(min(action.delay_s, self.spec.max_delay_s))
            done.append(f"waited {action.delay_s:g}s (backoff)")
        done.append(self._requeue(record, steps))
        return True, "; ".join(done)

    # ------------------------------------------------------------------ steps (each observes first)

    def _drain(self, node: str, reason: str, seen: _Seen, steps: dict[str, str]) -> str:
        current = seen.node(node)
        assert current is not None  # validate_node checked it
        if current.drained:
            if current.reason.startswith(REASON_PREFIX):
                steps["drain"] = "already"
                return f"{node} already drained by ftsup (reason {current.reason!r}): not drained again"
            steps["drain"] = "operator"
            return f"{node} already drained by someone else (reason {current.reason!r}): left as it is"
        self.cli.run(self.drain_command(node, reason), retry=True)  # idempotent: same state, same reason
        steps["drain"] = "done"
        self._persist()
        return f"drained {node} (reason {reason!r})"

    def _requeue(self, record: dict[str, Any], steps: dict[str, str]) -> str:
        before = record.get("restart_before")
        job_id = self._job_arg()
        seen = self._wait_not_completing()
        job = seen.job
        how: str
        wait_for_count = before  # wait for a run after this restart count; None: any run
        if job is None:
            if self.spec.script is None:
                raise _Refused(f"Slurm no longer knows job {job_id} and there is no script to resubmit")
            self._attempt_base = self._last_attempt + 1
            how = self._submit(f"Slurm no longer knows job {job_id}; resubmitted")
            wait_for_count = None
            record["restart_before"] = None
            record["job_id"] = self._job_id
        elif before is not None and job.restart_count > before:
            how = f"job {job_id} already requeued (restart count {before} -> {job.restart_count}): not again"
        elif job.waiting:
            how = f"job {job_id} is {job.state} ({job.state_reason}): it starts by itself, nothing to requeue"
            wait_for_count = None
        else:
            how = self._requeue_once(job, before)
            wait_for_count = job.restart_count
        steps["requeue"] = "done"
        with self._state_lock:
            self._requeued_at = self._clock()
            self._cache = None
        self._persist()
        seen = self._wait_running(restart_before=wait_for_count)
        job = seen.job
        if job is not None and job.running:
            since = time.strftime("%H:%M:%S", time.localtime(job.start_time)) if job.start_time else "now"
            return f"{how}; running again on {', '.join(job.nodes)} since {since}"
        state = f"{job.state} ({job.state_reason})" if job is not None else "unknown to Slurm"
        return f"{how}; not running yet after {self.spec.start_timeout_s:g}s: {state}"

    def _requeue_once(self, job: SlurmJob, before: int | None) -> str:
        """`scontrol requeue`, retried only after observing that the previous try did not take effect."""
        argv = self.requeue_command()
        was = f"job {job.job_id} (restart count {job.restart_count}"
        last: SlurmError | None = None
        for _ in range(self.cli.settings.max_attempts):
            try:
                self.cli.run(argv, retry=False)
                return f"requeued {was} -> {job.restart_count + 1})"
            except SlurmError as exc:
                last = exc
                now = self.cli.job(job.job_id)
                if now is not None and now.restart_count > job.restart_count:
                    return f"requeued {was} -> {now.restart_count})"
                if not exc.transient:
                    raise
                self._sleep(self.spec.poll_interval_s)
        assert last is not None
        raise last

    def _halt(self, action: Action, seen: _Seen, steps: dict[str, str]) -> str:
        reason = halt_reason(action)
        comment, stop = self.halt_commands(reason)
        job = seen.job
        parts: list[str] = []
        if job is None or (job.finished and self.spec.halt == "cancel"):
            parts.append(f"job {self._job_id} already ended ({job.state if job else 'unknown to Slurm'})")
        else:
            with contextlib.suppress(SlurmError):  # the reason is a courtesy; the halt must go ahead
                self.cli.run(comment, retry=True)
            if self.spec.halt == "hold" and job.waiting:
                stop = ["scontrol", "hold", str(job.job_id)]  # requeuehold refuses a pending job
            # scancel (or requeuehold, which also holds an ended job) is harmless to repeat.
            self.cli.run(stop, retry=True)
            parts.append(shlex.join(stop))
            deadline = time.monotonic() + self.spec.stop_timeout_s
            while time.monotonic() < deadline:
                now = self.cli.job(int(self._job_arg()))
                if now is None or now.finished or (self.spec.halt == "hold" and now.waiting):
                    break
                self._sleep(self.spec.poll_interval_s)
        steps["halt"] = "done"
        with self._state_lock:
            self._halted = True
            self._held = self.spec.halt == "hold"
            self._cancelled = self.spec.halt == "cancel"
            self._halt_reason = reason
            self._cache = None
        self._persist()
        return f"halted ({reason}): {'; '.join(parts)}; files kept for inspection"

    def _wait_not_completing(self, timeout_s: float = 120.0) -> _Seen:
        """Slurm refuses to requeue a job that is still completing: wait (bounded) for it to finish."""
        deadline = time.monotonic() + timeout_s
        seen = self._read()
        while seen.job is not None and seen.job.ending and time.monotonic() < deadline:
            self._sleep(self.spec.poll_interval_s)
            seen = self._read()
        return seen

    def _wait_running(self, restart_before: int | None) -> _Seen:
        """Until the job runs (a run that started after a requeue, when `restart_before` is given),
        ends, or start_timeout_s passes. Returns the last reading."""
        deadline = time.monotonic() + self.spec.start_timeout_s
        while True:
            seen = self._read()
            job = seen.job
            moved = restart_before is None or (job is not None and job.restart_count > restart_before)
            if job is None or (moved and (job.running or job.finished)) or time.monotonic() >= deadline:
                return seen
            self._sleep(self.spec.poll_interval_s)

    # ------------------------------------------------------------------ after a daemon restart

    def _reconcile_records(self) -> str:
        """Actions a previous daemon started but never finished: record what Slurm shows happened."""
        notes = []
        for key, record in self._records.items():
            if record.get("result") is not None:
                continue
            seen = self._safe_read()
            observed = []
            node = record.get("slurm_node")
            if node and seen is not None:
                n = seen.node(node)
                drained = n is not None and n.drained and n.reason.startswith(REASON_PREFIX)
                observed.append(f"{node} {'drained' if drained else 'not drained'}")
            before = record.get("restart_before")
            job = seen.job if seen is not None else None
            if before is not None and job is not None:
                observed.append(f"restart count {before} -> {job.restart_count}")
            now = self._clock()
            text = "interrupted by a daemon restart; observed " + (", ".join(observed) or "nothing")
            record["result"] = _result_to(ActionResult(key, False, text, record.get("started_at", now), now))
            notes.append(f"{key}: {text}")
        if notes:
            self._persist()
        return "; ".join(notes)

    # ------------------------------------------------------------------ beyond the protocol

    def resume(self, stream: str) -> ActionResult:
        """Return a node ftsup drained to service (`State=RESUME`). Refused for a node drained by anyone
        else (its reason does not start with "ftsup:"), for a node not drained, and for unknown names."""
        with self._act_lock:
            started = self._clock()
            key = f"{self.spec.job}:resume:{stream}:{started:.0f}"
            try:
                seen = self._read()
                node = self.validate_node(stream, seen)
                current = seen.node(node)
                assert current is not None
                if not current.drained:
                    raise _Refused(f"{node} is not drained ({current.state}); nothing to resume")
                if not current.reason.startswith(REASON_PREFIX):
                    raise _Refused(
                        f"{node} was drained by someone else (reason {current.reason!r}); ftsup resumes "
                        "only nodes it drained"
                    )
                self.cli.run(self.resume_command(node), retry=True)
                ok, detail = True, f"resumed {node} (was drained: {current.reason!r})"
            except _Refused as exc:
                ok, detail = False, str(exc)
            except SlurmError as exc:
                ok, detail = False, f"Slurm command failed: {exc}"
            with self._state_lock:
                self._cache = None
            return ActionResult(key, ok, detail, started, self._clock())

    def stop(self) -> None:
        """Leave the job running: it belongs to Slurm, and a daemon restart must not end training."""
        log.info("daemon stopping; the Slurm job is left as it is", job_id=self._job_id)


def _result_to(result: ActionResult) -> dict[str, Any]:
    return {
        "key": result.idempotency_key,
        "ok": result.ok,
        "detail": result.detail,
        "started_at": result.started_at,
        "finished_at": result.finished_at,
        "attempt": result.attempt,
        "nodes": list(result.nodes),
    }


def _result_from(d: Mapping[str, Any]) -> ActionResult:
    return ActionResult(
        idempotency_key=str(d["key"]),
        ok=bool(d["ok"]),
        detail=str(d["detail"]),
        started_at=float(d["started_at"]),
        finished_at=float(d["finished_at"]),
        attempt=None if d.get("attempt") is None else int(d["attempt"]),
        nodes=tuple(str(n) for n in d.get("nodes", ())),
    )
