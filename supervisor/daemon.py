"""Wiring: turn a validated Config into running parts (sources, engine, actuator, sinks, metrics).

This is the only module that knows every concrete class; `ftsup run` and `ftsup demo` both go
through `build()`, so the demo exercises exactly the production code path.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import structlog
from prometheus_client import CollectorRegistry

from supervisor.act.base import Actuator
from supervisor.act.external import ExternalJob
from supervisor.act.local import LocalActuator, LocalJobSpec
from supervisor.alert.base import AlertSink
from supervisor.alert.sinks import LogAlertSink, WebhookAlertSink
from supervisor.classify.exits import EXIT_RULE
from supervisor.classify.policy import PolicySet, load_policies
from supervisor.config import Config
from supervisor.engine import Engine
from supervisor.journal import Journal
from supervisor.report.metrics import SupervisorMetrics, bound_port, serve
from supervisor.sources.aws import ApiCallCounter, AwsSettings, make_client
from supervisor.sources.cloudwatch_logs import CloudWatchLogsSource
from supervisor.sources.cloudwatch_metrics import CloudWatchMetricsSource
from supervisor.vocabulary import Mode, Verdict

log = structlog.get_logger("ftsup.daemon")


@dataclass
class Daemon:
    config: Config
    policy: PolicySet
    engine: Engine
    journal: Journal
    actuator: Actuator
    registry: CollectorRegistry
    calls: ApiCallCounter
    metrics_port: int | None = None
    _servers: list[object] = field(default_factory=list)

    def start(self, *, launch: bool) -> None:
        if launch:
            result = self.engine.launch()
            log.info("job launched", detail=result.detail)
        self.engine.start()

    def clear_halt(self) -> None:
        """Let a job that ftsup halted run again (after a human looked at it)."""
        self.actuator.clear_halt()
        self.engine.clear_halt()

    def shutdown(self, *, stop_job: bool) -> None:
        self.engine.stop()
        if stop_job:
            self.actuator.stop()
        for server in self._servers:
            stop = getattr(server, "shutdown", None)
            if callable(stop):
                stop()
        self.journal.close()


def aws_settings(config: Config, endpoint_override: str | None = None) -> AwsSettings:
    a = config.aws
    return AwsSettings(
        region=a.region,
        endpoint_url=endpoint_override or a.endpoint_url,
        connect_timeout_s=a.connect_timeout_s,
        read_timeout_s=a.read_timeout_s,
        max_attempts=a.max_attempts,
        retry_budget_s=a.retry_budget_s,
    )


def build_actuator(config: Config, aws: AwsSettings, env: Mapping[str, str]) -> Actuator:
    act = config.actuator
    if act.kind == "none":
        return ExternalJob(config.job.name, act.none.nodes)
    if act.kind != "local":
        raise ValueError(f"actuator kind {act.kind!r} is not available in this build")
    local = act.local
    run_dir = Path(local.run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = LocalJobSpec(
        job=config.job.name,
        nodes=tuple(local.nodes),
        spares=tuple(local.spares),
        run_dir=run_dir,
        log_group=config.job.log_group,
        nproc_per_node=local.nproc_per_node,
        trainer_args=tuple(local.trainer_args),
        endpoint_url=aws.endpoint_url,
        region=aws.region,
        stop_grace_s=local.stop_grace_s,
        env=dict(env),
        python=local.python or sys.executable,
    )
    return LocalActuator(spec)


def build(
    config: Config,
    *,
    endpoint_override: str | None = None,
    env: Mapping[str, str] | None = None,
    mode: Mode | None = None,
) -> Daemon:
    """Build every part from the config. Nothing starts until Daemon.start()."""
    aws = aws_settings(config, endpoint_override)
    policy = load_policies([Path(p) for p in config.policies])
    registry = CollectorRegistry()
    sources = [
        n
        for n, on in (("logs", config.sources.logs.enabled), ("metrics", config.sources.metrics.enabled))
        if on
    ]
    metrics = SupervisorMetrics(
        registry,
        sources=sources,
        rules=[*(r.name for r in policy.rules), EXIT_RULE],
        verdicts=[v.value for v in Verdict],
        sinks=(["log"] if config.alerts.log else [])
        + [f"webhook-{i}" for i in range(len(config.alerts.webhooks))],
        jobs=[config.job.name],
    )
    journal = Journal(Path(config.journal.path))
    actuator = build_actuator(config, aws, env or {})
    sinks: list[AlertSink] = []
    if config.alerts.log:
        sinks.append(LogAlertSink(on_delivery=metrics.alert))
    for i, hook in enumerate(config.alerts.webhooks):
        sinks.append(
            WebhookAlertSink(
                hook.url,
                timeout_s=hook.timeout_s,
                name=f"webhook-{i}",
                on_delivery=metrics.alert,
            )
        )
    engine = Engine(
        job=config.job.name,
        policy=policy,
        journal=journal,
        actuator=actuator,
        mode=mode or Mode(config.mode),
        settle_s=config.incidents.settle_s,
        progress=config.job.progress,
        sinks=sinks,
        metrics=metrics,
    )
    calls = ApiCallCounter()
    if config.sources.logs.enabled:
        logs_cfg = config.sources.logs
        engine.add_source(
            CloudWatchLogsSource(
                make_client("logs", aws),
                config.job.log_group,
                aws,
                overlap_s=logs_cfg.overlap_s,
                max_pages_per_poll=logs_cfg.max_pages_per_poll,
                counter=calls,
            ),
            logs_cfg.poll_interval_s,
        )
    if config.sources.metrics.enabled:
        m = config.sources.metrics
        engine.add_source(
            CloudWatchMetricsSource(
                make_client("cloudwatch", aws),
                config.job.metrics_namespace,
                config.job.name,
                engine.current_nodes,
                aws,
                stats=dict(m.stats),
                period_s=m.period_s,
                lookback_s=m.lookback_s,
                counter=calls,
            ),
            m.poll_interval_s,
        )
    daemon = Daemon(config, policy, engine, journal, actuator, registry, calls)
    server_cfg = config.metrics_server
    if server_cfg.port is not None:
        server, _thread = serve(registry, server_cfg.address, server_cfg.port)
        daemon._servers.append(server)
        daemon.metrics_port = bound_port(server)
    return daemon


def run_forever(daemon: Daemon) -> int:
    """`ftsup run`: supervise until SIGTERM/SIGINT, or until the job halts or finishes."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal received; shutting down", signal=signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    daemon.start(launch=True)  # the local job starts; an external job is adopted as it is
    code = 0
    try:
        while not stop.wait(1.0):
            snap = daemon.engine.snapshot()
            if snap.halted and not snap.acting:
                log.warning("job halted; the daemon stays down until a human relaunches it")
                code = 3
                break
            if not snap.acting:
                seen = daemon.actuator.observe()
                finished = seen.exit_codes and all(c == 0 for _, c in seen.exit_codes)
                if finished:
                    log.info("job finished", attempt=seen.attempt)
                    time.sleep(2.0)  # let the last lines be read and journaled
                    break
    finally:
        daemon.shutdown(stop_job=True)
    return code
