"""Leadership: wait for the lease, keep renewing it, fence every action, settle a predecessor's
unfinished actions on takeover.

With a shared action ledger (`ha.kind: dynamodb`, supervisor/ha/ledger.py) every admission is also
one fenced, conditional write of the action's intent to the ledger, so a key is acted on once across
replicas with separate journals; `take_over` settles the ledger's unfinished intents the way
`settle_pending` settles the journal's, and imports the ledger's history into this replica's journal.

Followers are passive: a replica that does not hold the lease runs no source, engine or action
thread and writes nothing to the journal; it only tries `Lease.acquire()` every `renew_every_s`.
When it wins, the daemon first settles the intents its predecessor journaled without a result
(`settle_pending`: observe the target; what is visibly done is journaled as done, never
repeated), then builds a fresh engine from the journal and the observed job, and starts it.
A leader that loses the lease (renewal refused, or not confirmed within its local validity)
stops acting at once (the fence refuses every action) and the daemon exits; its service manager
restarts it as a follower.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace

import structlog

from supervisor.act.base import LAUNCH_KIND, Actuator, observed_done
from supervisor.ha.lease import Lease
from supervisor.ha.ledger import ActionLedger, Entry, Intent, Outcome
from supervisor.journal import Journal
from supervisor.vocabulary import Action, ActionResult, JobObservation, Verdict

log = structlog.get_logger("ftsup.ha")


class LedgerError(RuntimeError):
    """The ledger could not admit what must be admitted before acting (unreachable, or it holds an
    unsettled intent of another leader): this replica does not act and steps down."""


def incident_attempt(journal: Journal) -> Callable[[Action], int | None]:
    """`Leadership(attempt_of=...)`: the attempt of the job the action's incident happened in, as
    journaled by the engine together with the intent."""

    def attempt_of(action: Action) -> int | None:
        incident = journal.incident(action.incident_id)
        return incident.attempt if incident is not None else None

    return attempt_of


def token_note(token: int) -> str:
    """What an action's journaled result detail carries: the fencing token it was applied under."""
    return f" [lease token {token}]"


class Leadership:
    """One replica's view of its lease. `admit(action)` is the fence the engine's action thread
    calls immediately before `actuator.apply`: it renews the lease (one conditional write) and
    answers the token only when the lease is still held with the token leadership was gained
    under, with at least `guard_s` of local validity left; else None: the action is dropped and
    the replica steps down (`lost` is set; the daemon exits and a successor settles the intent).

    With a `ledger`, an action is admitted only when its intent is also written to the ledger under
    that token (one transaction fenced by the lease item); when the ledger already holds the key with
    a result, `admit` answers that result instead (the action was done by some replica: never
    repeated); when it cannot tell (unreachable, or another token's intent without a result), it
    answers None and the replica steps down (`lost` is set): fail closed. `record` writes the result
    after the action. `attempt_of` gives the attempt of the action's incident, stored with the intent
    so that a successor can settle it by observing the target."""

    def __init__(
        self,
        lease: Lease,
        *,
        renew_every_s: float,
        guard_s: float | None = None,
        ledger: ActionLedger | None = None,
        attempt_of: Callable[[Action], int | None] | None = None,
    ) -> None:
        if not 0 < renew_every_s < lease.lease_s:
            raise ValueError("renew_every_s must be positive and shorter than lease_s")
        self.lease = lease
        self.ledger = ledger
        self.attempt_of = attempt_of
        self.renew_every_s = renew_every_s
        self.guard_s = lease.lease_s / 4 if guard_s is None else guard_s
        self.token: int | None = None  # the token leadership was gained under
        self.lost = threading.Event()
        self.admitted: list[tuple[str, int]] = []  # (idempotency key, token), in order
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def wait(self, stop: threading.Event) -> bool:
        """Block until this replica holds the lease (True) or `stop` is set (False)."""
        while not stop.is_set():
            try:
                token = self.lease.acquire()
            except Exception as exc:  # the lease store is unreachable: stay a follower, try again
                log.warning("lease acquire failed", error=repr(exc))
                token = None
            if token is not None:
                self.token = token
                self.lost.clear()
                log.info("leadership gained", holder=self.lease.holder, token=token)
                return True
            stop.wait(self.renew_every_s)
        return False

    def holds(self) -> bool:
        return self.token is not None and not self.lost.is_set() and self.lease.token == self.token

    def _renewed(self, key: str) -> int | None:
        """The fence's lease half: one renewal with the token leadership was gained under."""
        token = self.token
        if token is None or self.lost.is_set():
            log.error("action fenced: not the leader", key=key)
            return None
        try:
            renewed = self.lease.renew()
        except Exception as exc:
            log.warning("lease renew before an action failed", error=repr(exc))
            renewed = False
        if not renewed or self.lease.token != token or self.lease.valid_for() < self.guard_s:
            # Also when the renewal only failed to get through: a leader that drops an action and
            # stays on would leave its incident unhandled; stepping down lets a successor (or this
            # replica, restarted) settle the journaled intent or decide the incident again.
            self._step_down("action fenced: lease no longer held", key=key, token=token)
            return None
        return token

    def _step_down(self, why: str, **kw: object) -> None:
        log.error("this replica stops acting and steps down (fail closed)", why=why, **kw)
        self.lost.set()

    def _admit_intent(self, intent: Intent) -> int | ActionResult | None:
        token = self._renewed(intent.key)
        if token is None:
            return None
        if self.ledger is None:
            self.admitted.append((intent.key, token))
            return token
        try:
            got = self.ledger.admit(intent, token)
        except Exception as exc:
            self._step_down("the ledger did not admit the action", key=intent.key, error=repr(exc))
            return None
        if got.outcome is Outcome.ADMITTED:
            self.admitted.append((intent.key, token))
            return token
        if got.outcome is Outcome.RECORDED and got.entry is not None and got.entry.result is not None:
            done = got.entry.result
            log.warning(
                "action already done: its recorded result is used, the action is not repeated",
                key=intent.key,
                by_token=got.entry.result_token,
            )
            note = f" [recorded in the ledger under lease token {got.entry.result_token}; not repeated]"
            return replace(done, detail=done.detail + note)
        if got.outcome is Outcome.FENCED:
            self._step_down("action fenced by the ledger: the lease names another holder", key=intent.key)
            return None
        owner = got.entry.token if got.entry is not None else None
        self._step_down(
            "the ledger holds this action unsettled by another leader", key=intent.key, owner=owner
        )
        return None

    def admit(self, action: Action) -> int | ActionResult | None:
        """The fence before `actuator.apply(action)`: the token to act under; the result the ledger
        recorded for this key (do not act, use it); or None (do not act)."""
        attempt = self.attempt_of(action) if self.attempt_of is not None else None
        return self._admit_intent(Intent.of(action, attempt))

    def record(self, action: Action, result: ActionResult) -> None:
        """After an admitted action: its result into the ledger (no ledger: nothing to do). A failure
        is logged, never raised: the intent stays unsettled and the next leader settles it by
        observing the target."""
        self.record_key(action.idempotency_key, result)

    def record_key(self, key: str, result: ActionResult) -> None:
        token = self.token
        if self.ledger is None or token is None:
            return
        try:
            if not self.ledger.record(key, result, token):
                log.warning("ledger result refused: the intent belongs to another leader now", key=key)
        except Exception as exc:
            log.warning("ledger result not written; the next leader settles it", key=key, error=repr(exc))

    def admit_launch(self, job: str) -> bool:
        """Whether this leader launches `job` now: without a ledger always True (the caller asks its
        journal); with one, True only when this call admitted the job's launch (one per job across all
        replicas), False when a launch is recorded. Raises LedgerError when it cannot tell."""
        if self.ledger is None:
            return True
        got = self._admit_intent(Intent.launch(job))
        if isinstance(got, ActionResult):
            return False
        if got is None:
            raise LedgerError(f"the launch of {job} could not be admitted (see the log)")
        return True

    def take_over(self, entry: Entry) -> int | ActionResult | None:
        """On takeover: make a predecessor's unsettled ledger intent this leader's before settling it.
        The token to settle it under; the result another replica recorded meanwhile; or None (lease
        lost: stop settling). Raises when the ledger does not answer (the takeover fails closed)."""
        token = self._renewed(entry.intent.key)
        if token is None or self.ledger is None:
            return None
        got = self.ledger.take_over(entry, token)
        if got.outcome is Outcome.ADMITTED:
            self.admitted.append((entry.intent.key, token))
            return token
        if got.outcome is Outcome.RECORDED and got.entry is not None and got.entry.result is not None:
            return got.entry.result
        self._step_down("an unsettled ledger intent could not be taken over", key=entry.intent.key)
        return None

    def start_renewing(self, on_lost: Callable[[], None] | None = None) -> None:
        """Renew every `renew_every_s` on a thread; when the lease is lost, set `lost` and call
        `on_lost` once. A renewal that fails for transport reasons is retried until the local
        validity runs out."""

        def loop() -> None:
            while not self._stop.wait(self.renew_every_s):
                try:
                    self.lease.renew()
                except Exception as exc:
                    log.warning("lease renew failed", error=repr(exc))
                if self.lease.token != self.token:
                    log.error("leadership lost", holder=self.lease.holder, token=self.token)
                    self.lost.set()
                    if on_lost is not None:
                        on_lost()
                    return

        self._thread = threading.Thread(target=loop, name="ftsup-lease", daemon=True)
        self._thread.start()

    def stop(self, *, release: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
        # Released also after stepping down (lost set) while the lease itself is still ours, so a
        # successor need not wait for it to expire; a release is conditional on our token anyway.
        if release and self.token is not None and self.lease.token == self.token:
            try:
                self.lease.release()
            except Exception as exc:
                log.warning("lease release failed; it expires by itself", error=repr(exc))
        self.token = None


def _done_result(key: str, seen: JobObservation, now: float) -> ActionResult:
    return ActionResult(
        key,
        True,
        f"done by the previous leader: observed attempt {seen.attempt} "
        f"running={seen.running} on {', '.join(seen.nodes)}; not repeated",
        now,
        now,
        attempt=seen.attempt if seen.running else None,
        nodes=seen.nodes,
    )


def _carry_out(actuator: Actuator, intent: Intent, token: int, clock: Callable[[], float]) -> ActionResult:
    """Apply the intent's action (or launch the job) now, under `token`; never raises."""
    action = intent.action()
    log.warning("intent not done by the previous leader: carrying it out", key=intent.key, token=token)
    try:
        done = actuator.apply(action) if action is not None else actuator.launch()
    except Exception as exc:  # the actuator contract says it does not raise; be safe anyway
        now = clock()
        done = ActionResult(intent.key, False, f"actuator raised: {exc!r}", now, now)
    return replace(done, idempotency_key=intent.key, detail=done.detail + token_note(token))


def _journal_settled(
    journal: Journal,
    job: str,
    intent: Intent,
    result: ActionResult,
    seen: JobObservation,
    now: float,
) -> None:
    """What settling found, into this replica's journal: the intent, its result, the new attempt."""
    action = intent.action()
    if action is not None:
        journal.add_intent(action, intent.plan)
    journal.add_result(result)
    before = intent.attempt
    if intent.kind == LAUNCH_KIND:
        if result.ok and seen.running:
            journal.add_attempt(job, seen.attempt, seen.nodes, seen.launched_at or now, None)
    elif intent.kind != Verdict.HALT.value and result.ok and before is not None and seen.attempt > before:
        journal.update_attempt(job, before, ended_at=result.started_at, end_reason=intent.incident_id)
        journal.add_attempt(job, seen.attempt, seen.nodes, seen.launched_at or now, intent.incident_id)


def _import(journal: Journal, job: str, entry: Entry) -> None:
    """A result the ledger holds (done by whichever replica), into this replica's journal, so its
    reports, restart budget and pending intents agree with the ledger. First records win."""
    result = entry.result
    if result is None:
        return
    intent = entry.intent
    action = intent.action()
    if action is not None:
        journal.add_intent(action, intent.plan)
    journal.add_result(result)
    if not result.ok or result.attempt is None or intent.kind == Verdict.HALT.value:
        return
    cause = None if intent.kind == LAUNCH_KIND else intent.incident_id
    journal.add_attempt(job, result.attempt, result.nodes, result.finished_at, cause)


def settle_ledger(
    journal: Journal,
    actuator: Actuator,
    job: str,
    leadership: Leadership,
    entries: list[Entry],
    clock: Callable[[], float] = time.time,
) -> list[ActionResult]:
    """On takeover with a ledger: settle every ledger intent of `job` without a result, exactly like
    `settle_pending` settles the journal's: take the intent over (a fenced conditional write, so its
    old owner can no longer record a result), observe the target; visibly done -> recorded ok, not
    repeated; visibly not done -> carried out now under this leader's token. Each outcome is recorded
    in the ledger and journaled here. Stops (the rest stays unsettled) when the lease is lost."""
    out: list[ActionResult] = []
    for entry in entries:
        if entry.result is not None or entry.intent.job != job:
            continue
        intent = entry.intent
        got = leadership.take_over(entry)
        if got is None:
            log.error("takeover stopped: lease lost while settling the ledger", key=intent.key)
            return out
        seen = actuator.observe()
        now = clock()
        if isinstance(got, ActionResult):
            result = got  # its old owner recorded it after all
        elif observed_done(intent.kind, intent.node, intent.attempt, seen):
            result = _done_result(intent.key, seen, now)
        else:
            result = _carry_out(actuator, intent, got, clock)
            seen = actuator.observe()
        if not isinstance(got, ActionResult):
            leadership.record_key(intent.key, result)
        _journal_settled(journal, job, intent, result, seen, now)
        log.warning("ledger intent settled on takeover", key=intent.key, ok=result.ok, detail=result.detail)
        out.append(result)
    return out


def settle_takeover(
    journal: Journal,
    actuator: Actuator,
    job: str,
    leadership: Leadership,
    clock: Callable[[], float] = time.time,
) -> list[ActionResult]:
    """Everything a new leader settles before its engine runs. Without a ledger: `settle_pending`.
    With one: the ledger's unsettled intents (`settle_ledger`), then the ledger's history into this
    journal, then this journal's own leftovers (admitted through the ledger like any action). A
    ledger that cannot be read or written raises: the replica must not act on a guess."""
    ledger = leadership.ledger
    if ledger is None:
        return settle_pending(journal, actuator, job, leadership, clock)
    entries = ledger.entries()
    out = settle_ledger(journal, actuator, job, leadership, entries, clock)
    for entry in entries:  # first: a local intent the ledger has a result for is settled by it
        _import(journal, job, entry)
    if leadership.lost.is_set():
        return out
    return out + settle_pending(journal, actuator, job, leadership, clock)


def settle_pending(
    journal: Journal,
    actuator: Actuator,
    job: str,
    leadership: Leadership,
    clock: Callable[[], float] = time.time,
) -> list[ActionResult]:
    """On takeover, before any engine runs: settle every intent of `job` journaled without a result.

    The target is observed: a restart (or cordon and restart) whose job now runs a newer attempt
    than the incident's, or a halt whose job no longer runs, was done by the previous leader and is
    journaled as done (ok, with the observed attempt), never repeated. An action that is visibly not
    done is carried out now, fenced by this leader's token like any other action, so the incident
    is finished. What is left (the lease lost meanwhile) stays pending for the engine's
    `reconcile()` or the next leader."""
    out: list[ActionResult] = []
    for action in journal.pending_intents():
        if action.job != job:
            continue
        incident = journal.incident(action.incident_id)
        seen = actuator.observe()
        before = incident.attempt if incident is not None else None
        intent = Intent.of(action, before)
        now = clock()
        if observed_done(intent.kind, intent.node, before, seen):
            result = _done_result(action.idempotency_key, seen, now)
        else:
            admitted = leadership.admit(action)
            if admitted is None:
                log.error("takeover stopped: lease lost while settling", key=action.idempotency_key)
                return out
            if isinstance(admitted, ActionResult):
                result = admitted  # the ledger says some replica did it: not repeated
            else:
                result = _carry_out(actuator, intent, admitted, clock)
                leadership.record(action, result)
            seen = actuator.observe()
        _journal_settled(journal, job, intent, result, seen, now)
        log.warning(
            "intent settled on takeover", key=action.idempotency_key, ok=result.ok, detail=result.detail
        )
        out.append(result)
    return out
