"""Leadership: wait for the lease, keep renewing it, fence every action, settle a predecessor's
unfinished actions on takeover.

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

import structlog

from supervisor.act.base import Actuator
from supervisor.ha.lease import Lease
from supervisor.journal import Journal
from supervisor.vocabulary import Action, ActionResult, Verdict

log = structlog.get_logger("ftsup.ha")



def token_note(token: int) -> str:
    """What an action's journaled result detail carries: the fencing token it was applied under."""
    return f" [lease token {token}]"


class Leadership:
    """One replica's view of its lease. `admit(action)` is the fence the engine's action thread
    calls immediately before `actuator.apply`: it renews the lease (one conditional write) and
    answers the token only when the lease is still held with the token leadership was gained
    under, with at least `guard_s` of local validity left; else None and the action is dropped."""

    def __init__(self, lease: Lease, *, renew_every_s: float, guard_s: float | None = None) -> None:
        if not 0 < renew_every_s < lease.lease_s:
            raise ValueError("renew_every_s must be positive and shorter than lease_s")
        self.lease = lease
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

    def admit(self, action: Action) -> int | None:
        token = self.token
        if token is None or self.lost.is_set():
            log.error("action fenced: not the leader", key=action.idempotency_key)
            return None
        try:
            renewed = self.lease.renew()
        except Exception as exc:
            log.warning("lease renew before an action failed", error=repr(exc))
            renewed = False
        if not renewed or self.lease.token != token or self.lease.valid_for() < self.guard_s:
            log.error("action fenced: lease no longer held", key=action.idempotency_key, token=token)
            if not renewed and self.lease.token is None:
                self.lost.set()
            return None
        self.admitted.append((action.idempotency_key, token))
        return token

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
        if release and self.holds():
            try:
                self.lease.release()
            except Exception as exc:
                log.warning("lease release failed; it expires by itself", error=repr(exc))
        self.token = None


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
        if action.kind is Verdict.HALT:
            done = not seen.running
        else:
            done = before is not None and seen.attempt > before
        now = clock()
        if done:
            result = ActionResult(
                action.idempotency_key,
                True,
                f"done by the previous leader: observed attempt {seen.attempt} "
                f"running={seen.running} on {', '.join(seen.nodes)}; not repeated",
                now,
                now,
                attempt=seen.attempt if seen.running else None,
                nodes=seen.nodes,
            )
        else:
            token = leadership.admit(action)
            if token is None:
                log.error("takeover stopped: lease lost while settling", key=action.idempotency_key)
                return out
            log.warning("intent not done by the previous leader: applying it", key=action.idempotency_key)
            applied = actuator.apply(action)
            result = ActionResult(
                applied.idempotency_key,
                applied.ok,
                applied.detail + token_note(token),
                applied.started_at,
                applied.finished_at,
                attempt=applied.attempt,
                nodes=applied.nodes,
            )
            seen = actuator.observe()
        journal.add_result(result)
        if action.kind is not Verdict.HALT and result.ok and before is not None and seen.attempt > before:
            journal.update_attempt(job, before, ended_at=result.started_at, end_reason=action.incident_id)
            journal.add_attempt(job, seen.attempt, seen.nodes, seen.launched_at or now, action.incident_id)
        log.warning(
            "intent settled on takeover", key=action.idempotency_key, ok=result.ok, detail=result.detail
        )
        out.append(result)
    return out
