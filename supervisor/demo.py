"""`ftsup demo`: the whole product on this machine, on embedded defaults, no AWS account.

It starts a CloudWatch-compatible endpoint (moto's server on a free 127.0.0.1 port), launches
a 2-node FSDP job with 1 spare through the local actuator, and injects three real faults in
turn, checking that each is classified and handled as expected:

1. a collective timeout (a rank stops taking part)  -> restart from the last checkpoint
2. Xid 79 on a node (GPU fallen off the bus)         -> cordon the node, restart on the spare
3. a code bug (a Python exception in user code)     -> halt and page

The daemon is the production one (`daemon.build` from a config file), acting on what it reads
back from CloudWatch Logs and Metrics over HTTP. When Prometheus Alertmanager is installed
(Debian's ``prometheus-alertmanager``; ``make test`` installs it), the demo also starts one on
127.0.0.1 and the daemon sends its alerts there: each incident must show up as one alert, grouped
by incident, as an on-call engineer would see it. Exit 0 only when every expectation held.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from supervisor.config import AlertSinkConfig, Config, load_config
from supervisor.daemon import Daemon, build
from supervisor.engine import Handled, Snapshot
from supervisor.journal import Journal
from supervisor.local_alertmanager import EmbeddedAlertmanager, alertmanager_binary
from supervisor.local_cloudwatch import EmbeddedCloudWatch
from supervisor.logs import configure_logging
from supervisor.report.timeline import build_timeline, render_text
from supervisor.vocabulary import Verdict

DEMO_CONFIG = Path(__file__).resolve().parent / "defaults" / "demo.yaml"


@dataclass(frozen=True)
class FaultStep:
    title: str
    kind: str  # a trainer fault kind (trainer/faults.py)
    node_index: int  # which current member gets the fault
    expect: Verdict


SCENARIO = (
    FaultStep("collective timeout: rank on {node} stops taking part in collectives", "collective_timeout", 1,
              Verdict.RESTART),
    FaultStep("Xid 79 on {node}: GPU has fallen off the bus", "xid79", 1, Verdict.CORDON_AND_RESTART),
    FaultStep("code bug: KeyError raised in user code on {node}", "code_bug", 0, Verdict.HALT),
)  # fmt: skip


class DemoFailed(Exception):
    pass


def inject(
    run_dir: Path, fault_id: str, kind: str, node: str, attempt: int, at_step: int | None = None
) -> None:
    """Write a fault request the trainer's ranks pick up at their next step, or at `at_step` (atomically).

    A fault meant for several ranks at once (a job-wide hang) needs `at_step`: each rank checks for
    requests at its own step boundary, so without it one rank could stall a step before another."""
    faults = run_dir / "faults"
    faults.mkdir(parents=True, exist_ok=True)
    body = {"id": fault_id, "kind": kind, "node": node, "rank": None, "at_step": at_step, "attempt": attempt}
    tmp = faults / f".{fault_id}.tmp"
    tmp.write_text(json.dumps(body))
    os.replace(tmp, faults / f"{fault_id}.json")


def wait_for(daemon: Daemon, what: str, done: Callable[[Snapshot], bool], timeout_s: float) -> Snapshot:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        snap = daemon.engine.snapshot()
        if done(snap):
            return snap
        time.sleep(0.25)
    raise DemoFailed(f"timed out after {timeout_s:.0f}s waiting for {what}")


def training_past_checkpoint(ckpt_every: int) -> Callable[[Snapshot], bool]:
    """True once the current attempt has trained past its first checkpoint (a fault then loses work
    that only a checkpoint can save), and no action is in flight."""

    def check(s: Snapshot) -> bool:
        start = s.resume_step or 0
        return s.last_step is not None and s.last_step >= start + ckpt_every + 2 and not s.acting

    return check


def training_resumed(s: Snapshot) -> bool:
    """True once the current attempt read a checkpoint back and trained past it."""
    return s.resume_step is not None and s.last_step is not None and s.last_step > s.resume_step


def newest_decided(s: Snapshot, seen: int) -> Handled | None:
    """The newest incident after the first `seen` whose decision was not to ignore it."""
    new = [h for h in s.handled[seen:] if h.decision.verdict is not Verdict.IGNORE]
    return new[-1] if new else None


def handled_more_than(seen: int) -> Callable[[Snapshot], bool]:
    """True once an incident after the first `seen` was decided and its action finished."""

    def check(s: Snapshot) -> bool:
        newest = newest_decided(s, seen)
        return newest is not None and newest.result is not None and not s.acting

    return check


def run_demo(out: TextIO = sys.stdout, workdir: Path | None = None) -> int:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    run_root = (workdir or Path("demo-run") / stamp).resolve()
    run_root.mkdir(parents=True, exist_ok=True)
    config = load_config(DEMO_CONFIG).with_overrides(
        run_dir=run_root / "job", journal_path=run_root / "ftsup.db", log_group=f"/ftsup/demo/{stamp}"
    )
    ckpt_every = config.trainer_checkpoint_every()

    def say(msg: str) -> None:
        print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", file=out, flush=True)

    # The daemon's own structured log (JSON lines) goes to a file; the terminal gets the story.
    daemon_log = open(run_root / "ftsup.log", "a", encoding="utf-8")  # noqa: SIM115 - closed below
    configure_logging("json", "info", stream=daemon_log)
    try:
        return _run(config, run_root, ckpt_every, say, out)
    finally:
        configure_logging("json", "warning")  # off the file before closing it (late lines: stderr)
        daemon_log.close()


def with_alertmanager(config: Config, url: str) -> Config:
    """`config` with one more alert sink: the Alertmanager at `url`."""
    sink = AlertSinkConfig(kind="alertmanager", name="alertmanager", url=url)
    alerts = dataclasses.replace(config.alerts, sinks=(*config.alerts.sinks, sink))
    return dataclasses.replace(config, alerts=alerts)


def seen_in_alertmanager(
    am: EmbeddedAlertmanager, journal_path: Path, job: str, incident_id: str, timeout_s: float = 20.0
) -> str:
    """How the incident's alert stands in Alertmanager: its state while it fires ("active",
    "suppressed"), or "resolved" once the journal's outbox shows the firing and the resolve both
    delivered to it (a restart incident resolves as soon as training steps again)."""
    deadline = time.monotonic() + timeout_s
    while True:
        for alert in am.alerts(job):
            if alert["labels"].get("incident") == incident_id:
                return str(alert.get("status", {}).get("state", "unknown"))
        journal = _reopen(journal_path)
        try:
            delivered = {
                row.alert_id
                for row in journal.outbox("alertmanager")
                if row.delivered_at is not None and row.alert_id.startswith(incident_id + ":")
            }
        finally:
            journal.close()
        if {f"{incident_id}:firing", f"{incident_id}:resolved"} <= delivered:
            return "resolved"
        if time.monotonic() > deadline:
            raise DemoFailed(f"incident {incident_id} did not reach Alertmanager within {timeout_s:.0f}s")
        time.sleep(0.2)


def _run(config: Config, run_root: Path, ckpt_every: int, say: Callable[[str], None], out: TextIO) -> int:
    with contextlib.ExitStack() as stack:
        cw = stack.enter_context(EmbeddedCloudWatch(export_env=True))
        say(f"CloudWatch-compatible endpoint (moto server) at {cw.endpoint_url}")
        am: EmbeddedAlertmanager | None = None
        if alertmanager_binary() is not None:
            am = stack.enter_context(EmbeddedAlertmanager(run_root / "alertmanager"))
            config = with_alertmanager(config, am.url)
            say(f"Prometheus Alertmanager at {am.url} (alerts grouped by incident)")
        else:
            say("Prometheus Alertmanager is not installed: alerts go to the daemon log only")
        daemon = build(config, endpoint_override=cw.endpoint_url, env=cw.env())
        say(f"run directory {run_root}; journal {config.journal.path}; daemon log {run_root / 'ftsup.log'}")
        if daemon.metrics_port:
            say(f"Prometheus metrics on http://127.0.0.1:{daemon.metrics_port}/metrics")
        failures: list[str] = []
        try:
            daemon.start(launch=True)
            snap = daemon.engine.snapshot()
            spares = ", ".join(config.actuator.local.spares)
            say(f"launched attempt {snap.attempt} on {', '.join(snap.nodes)} (spares: {spares})")
            for i, step in enumerate(SCENARIO, start=1):
                snap = wait_for(
                    daemon, "training to pass a checkpoint", training_past_checkpoint(ckpt_every), 240
                )
                node = snap.nodes[step.node_index]
                say(f"training at step {snap.last_step} (attempt {snap.attempt}); injecting fault {i}: "
                    + step.title.format(node=node))  # fmt: skip
                seen = len(snap.handled)
                inject(Path(config.actuator.local.run_dir), f"demo-{i}", step.kind, node, snap.attempt)
                snap = wait_for(daemon, f"fault {i} to be detected and handled", handled_more_than(seen), 240)
                handled = newest_decided(snap, seen)
                assert handled is not None  # handled_more_than waited for it
                failures += check_step(step, node, handled, say)
                if am is not None:
                    incident_id = handled.incident.incident_id
                    state = seen_in_alertmanager(am, config.journal.path, config.job.name, incident_id)
                    groups = len(am.groups(config.job.name))
                    say(f"  Alertmanager: the incident's alert is {state}; {groups} firing group(s)")
                if step.expect is Verdict.HALT:
                    break
                snap = wait_for(daemon, f"training to resume after fault {i}", training_resumed, 240)
                if not snap.resume_step:
                    failures.append(f"fault {i}: attempt {snap.attempt} did not resume from a checkpoint")
                say(f"attempt {snap.attempt} on {', '.join(snap.nodes)} resumed from the checkpoint of step "
                    f"{snap.resume_step}; now at step {snap.last_step}")  # fmt: skip
                if step.expect is Verdict.CORDON_AND_RESTART and node in snap.nodes:
                    failures.append(f"fault {i}: {node} is still a member after being cordoned")
        except DemoFailed as exc:
            failures.append(str(exc))
        finally:
            daemon.shutdown(stop_job=True)
        print("", file=out)
        print(render_text(build_timeline(_reopen(config.journal.path), config.job.name)), file=out)
        if failures:
            say("FAILED:\n  - " + "\n  - ".join(failures))
            return 1
        say("all three faults were classified and handled as expected; training resumed from a checkpoint "
            "after each recoverable fault")  # fmt: skip
        return 0


def check_step(step: FaultStep, node: str, handled: Handled, say: Callable[[str], None]) -> list[str]:
    d, inc, r = handled.decision, handled.incident, handled.result
    root = inc.root_cause
    say(f"  incident {inc.incident_id}: root cause {root.rule} on {root.node} ({len(inc.signals)} signals)")
    say(f"  decision: {d.verdict.value} - {d.reason}")
    if r is not None:
        say(f"  action {'succeeded' if r.ok else 'FAILED'}: {r.detail}")
    problems = []
    if d.verdict is not step.expect:
        problems.append(f"{step.kind}: expected {step.expect.value}, got {d.verdict.value} ({d.reason})")
    if step.expect is Verdict.CORDON_AND_RESTART and d.node != node:
        problems.append(f"{step.kind}: expected {node} to be cordoned, got {d.node}")
    if r is None or not r.ok:
        problems.append(f"{step.kind}: action did not succeed: {r.detail if r else 'no result'}")
    return problems


def _reopen(path: str | Path) -> Journal:
    return Journal(Path(path))
