"""Wiring: turn a validated Config into running parts (sources, engine, actuator, sinks, metrics).

This is the only module that knows every concrete class; `ftsup run` and `ftsup demo` both go
through `build()`, so the demo exercises exactly the production code path.
"""

from __future__ import annotations

import dataclasses
import math
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import structlog
from prometheus_client import CollectorRegistry

from supervisor.act.base import Actuator
from supervisor.act.external import ExternalJob
from supervisor.act.local import LocalActuator, LocalJobSpec
from supervisor.act.nodemap import NodeMap
from supervisor.act.remediate import (
    NodeFault,
    NodeOp,
    NodeRemediator,
    OpPolicy,
    RemediatingActuator,
    SettingsError,
)
from supervisor.act.slurm import SlurmActuator, SlurmJobSpec
from supervisor.act.slurm_cli import SlurmSettings
from supervisor.alert.base import AlertSink
from supervisor.alert.build import AlertContext
from supervisor.alert.http_sinks import AlertmanagerSink, PagerDutyAlertSink, SlackAlertSink
from supervisor.alert.outbox import Outbox
from supervisor.alert.router import AlertRouter
from supervisor.alert.sinks import DeliveryCallback, LogAlertSink, WebhookAlertSink
from supervisor.alert.sns import SnsAlertSink
from supervisor.classify.exits import EXIT_RULE
from supervisor.classify.policy import PolicySet, load_policies
from supervisor.config import NODE_KINDS, Config
from supervisor.engine import Engine
from supervisor.errors import StartupError
from supervisor.ha import (
    DynamoDbLease,
    DynamoDbLedger,
    FileLease,
    Leadership,
    Lease,
    LedgerError,
    incident_attempt,
    settle_takeover,
)
from supervisor.ha.ledger import LAUNCH_KEY
from supervisor.journal import Journal
from supervisor.report.metrics import SupervisorMetrics, bound_port, serve
from supervisor.sources.aws import ApiCallCounter, AwsSettings, BudgetObserver, RateBudget, make_client
from supervisor.sources.cloudwatch_logs import CloudWatchLogsSource
from supervisor.sources.cloudwatch_metrics import CloudWatchMetricsSource
from supervisor.vocabulary import Action, FailureClass, Mode, Role, Severity, Signal, Verdict

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
    # High availability (`ha:`): None for a single daemon. With a lease, start() must follow a
    # successful wait_for_leadership(); `make_engine` builds the leader's engine at that moment.
    leadership: Leadership | None = None
    make_engine: Callable[[], Engine] | None = None

    def wait_for_leadership(self, stop: threading.Event) -> bool:
        """HA: block as a passive follower until this replica holds the lease (then keep renewing
        it), or until `stop` is set (False). Without `ha:` it returns True at once."""
        if self.leadership is None:
            return True
        if not self.leadership.wait(stop):
            return False
        self.leadership.start_renewing()
        return True

    def start(self, *, launch: bool) -> None:
        ha = self.leadership
        if ha is not None:
            if not ha.holds():
                raise RuntimeError("HA: start() before this replica holds the lease")
            # Settle what the previous leader left half done (its journal's or the shared ledger's
            # intents), by observing the target, then build the engine from the journal and the job
            # as they are now, fenced by our token.
            settle_takeover(self.journal, self.actuator, self.config.job.name, ha)
            if self.make_engine is not None:
                self.engine = self.make_engine()
            self.engine.fence = ha
            if ha.ledger is None:
                launch = launch and not self.journal.attempts(self.config.job.name)  # else adopt the job
            elif ha.lost.is_set():
                launch = False  # stepping down while taking over: the run loop sees `lost` and exits
            else:  # separate journals: the ledger says whether the job was launched, once for all
                try:
                    launch = launch and ha.admit_launch(self.config.job.name)
                except LedgerError as exc:
                    raise StartupError(f"HA: {exc}") from exc
                if not launch:
                    self.engine.follow(self.actuator.observe())
        # What a killed daemon left half done is settled (by observing the target) before the job is
        # launched or adopted: a relaunch it did is journaled as its incident's, and never repeated.
        self.engine.reconcile()
        if launch:
            result = self.engine.launch()
            log.info("job launched", detail=result.detail)
            if ha is not None:
                ha.record_key(LAUNCH_KEY, result)
        self.engine.start()

    def clear_halt(self) -> None:
        """Let a job that ftsup halted run again (after a human looked at it)."""
        self.actuator.clear_halt()
        self.engine.clear_halt()

    def shutdown(self, *, stop_job: bool) -> None:
        self.engine.stop()
        if self.leadership is not None:
            self.leadership.stop(release=True)
        if stop_job:
            self.actuator.stop()
        for server in self._servers:
            stop = getattr(server, "shutdown", None)
            if callable(stop):
                stop()
        self.journal.close()


def logs_filter_pattern(config: Config, policy: PolicySet) -> tuple[str | None, str | None]:
    """`sources.logs.filter_pattern` resolved: (the FilterLogEvents filterPattern or None, the
    metric the engine reads training progress from, or None when step lines still arrive).

    ``auto`` derives the pattern from the policies (supervisor.classify.prefilter); per-step lines
    are then left out when the metrics source reads the ``step`` metric, which carries the same
    progress. The outcome is logged once, pattern included (``logs.filter_pattern``)."""
    setting = config.sources.logs.filter_pattern
    if setting == "none" or not config.sources.logs.enabled:
        log.info("logs.filter_pattern", mode="none", pattern=None)
        return None, None
    if setting != "auto":
        log.info("logs.filter_pattern", mode="literal", pattern=setting)
        return setting, None
    from supervisor.classify.prefilter import derive_filter_pattern

    m = config.sources.metrics
    step_metric = m.enabled and "step" in m.stats
    d = derive_filter_pattern(policy, config.job.progress, include_step=not step_metric)
    log.info(
        "logs.filter_pattern",
        mode="auto",
        pattern=d.pattern,
        literals=len(d.literals),
        step_lines=d.includes_step,
        unkeyable=[f"{n}: {w}" for n, w in d.unkeyable],
    )
    if d.pattern is None:
        return None, None
    return d.pattern, (None if d.includes_step else "step")


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


SOURCE_OPS = frozenset({"FilterLogEvents", "GetMetricData"})
"""The AWS operations the sources call: what `aws.max_calls_per_s` budgets."""


def call_budget(config: Config, observer: BudgetObserver | None = None) -> RateBudget | None:
    """`aws.max_calls_per_s`: the one token bucket the sources' AWS calls draw from (it rides on the
    daemon's ApiCallCounter); burst `aws.max_calls_burst`, default ceil(rate). None: no budget."""
    a = config.aws
    if a.max_calls_per_s is None:
        return None
    burst = a.max_calls_burst or max(1, math.ceil(a.max_calls_per_s))
    return RateBudget(a.max_calls_per_s, burst, observer=observer)


def build_slurm_actuator(config: Config, aws: AwsSettings, env: Mapping[str, str]) -> SlurmActuator:
    """`actuator.kind: slurm`. `env` (like the local actuator's) reaches the job through sbatch."""
    s = config.actuator.slurm
    state_dir = Path(s.state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    spec = SlurmJobSpec(
        job=config.job.name,
        state_dir=state_dir,
        log_group=config.job.log_group,
        script=s.script,
        script_args=tuple(s.script_args),
        sbatch_args=tuple(s.sbatch_args),
        job_id=s.job_id,
        job_name=s.job_name,
        partition=s.partition,
        halt=s.halt,
        start_timeout_s=s.start_timeout_s,
        stop_timeout_s=s.stop_timeout_s,
        endpoint_url=aws.endpoint_url,
        region=aws.region,
        env={**env, **s.env},
        node_map=NodeMap(explicit=s.node_map, instances=s.instance_map),
    )
    settings = SlurmSettings(
        slurm_conf=s.slurm_conf,
        bin_dir=s.bin_dir,
        command_timeout_s=s.command_timeout_s,
        max_attempts=s.max_attempts,
        retry_budget_s=s.retry_budget_s,
    )
    return SlurmActuator(spec, settings)


def build_local_actuator(config: Config, aws: AwsSettings, env: Mapping[str, str]) -> LocalActuator:
    """`actuator.kind: local` (or `job: local`): the job as processes on this machine."""
    local = config.actuator.local
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


def build_kubernetes_actuator(config: Config) -> Actuator:
    """`actuator.kind: kubernetes` (or `job: kubernetes`): a JobSet / PyTorchJob. Reads the kubeconfig
    (or the in-cluster service account) and sends no request; a cluster it cannot even describe is
    a StartupError."""
    from supervisor.act import kubernetes  # the Kubernetes client only when it is used

    try:
        return kubernetes.from_settings(config.actuator.kubernetes, job=config.job.name)
    except SettingsError as exc:
        raise StartupError(str(exc)) from exc
    except Exception as exc:  # kubeconfig unreadable, no in-cluster service account, no context
        raise StartupError(
            f"actuator.kubernetes: cannot set up the Kubernetes client ({type(exc).__name__}: {exc}); "
            "set kubeconfig (and context), or run ftsup in the cluster with its service account"
        ) from exc


def build_job_actuator(config: Config, aws: AwsSettings, env: Mapping[str, str]) -> Actuator:
    """The actuator that runs and restarts the job: `actuator.job_kind` (slurm, kubernetes, local, none)."""
    kind = config.actuator.job_kind
    if kind == "none":
        return ExternalJob(config.job.name, config.actuator.none.nodes)
    if kind == "slurm":
        return build_slurm_actuator(config, aws, env)
    if kind == "kubernetes":
        return build_kubernetes_actuator(config)
    if kind == "local":
        return build_local_actuator(config, aws, env)
    raise ValueError(f"actuator kind {kind!r} does not run a job")


def remediation_state_dir(config: Config) -> Path:
    """Where a node kind (aws-asg, hyperpod) keeps its rate-limit record, and HyperPod its pending
    approvals unless `approval_dir` says otherwise: `<journal directory>/<job name>.<kind>`, next to
    the journal, so that a daemon restart finds both (a crash loop never gets a fresh budget)."""
    journal_dir = Path(config.journal.path).resolve().parent
    return journal_dir / f"{config.job.name}.{config.actuator.kind}"


_RULE_IN_REASON = re.compile(r"([a-z0-9][a-z0-9._-]*)(?: on |:)")
_SEVERITY_RANK = {Severity.CRITICAL: 0, Severity.WARNING: 1, Severity.INFO: 2}


@dataclass(frozen=True)
class IncidentFaults:
    """`fault_of` for RemediatingActuator: why an action's node is remediated, so that reboot or
    replace follows the root cause's rule, class and severity (`remediate.choose_op`).

    In order: the journaled incident (`journal.incident(action.incident_id)`): its root cause when
    that is on the action's node, else the most severe cause signal on that node; else the rule the
    action's reason names (decide() writes "<rule> on <node>: ...") as the loaded policy defines it
    (the engine plans an action before it journals the incident, so plan() and apply() agree);
    else nothing is known (`NodeFault()`: OpPolicy's default). Never raises: a journal that cannot
    be read falls back to the policy.
    """

    journal: Journal
    policy: PolicySet

    def __call__(self, action: Action) -> NodeFault:
        try:
            incident = self.journal.incident(action.incident_id)
        except Exception as exc:
            log.warning("fault lookup: journal unreadable", incident=action.incident_id, error=repr(exc))
            incident = None
        if incident is not None:
            cause = self._on_node(incident.root_cause, incident.signals, action.node)
            return NodeFault(cause.rule, cause.failure_class, cause.severity)
        m = _RULE_IN_REASON.match(action.reason)
        if m is None:
            return NodeFault()
        try:
            rule = self.policy.rule(m.group(1))
        except KeyError:
            return NodeFault(m.group(1))
        return NodeFault(rule.name, rule.failure_class, rule.severity)

    @staticmethod
    def _on_node(root: Signal, signals: tuple[Signal, ...], node: str | None) -> Signal:
        if node is None or root.node == node:
            return root
        here = [s for s in signals if s.node == node and s.role is Role.CAUSE]
        if not here:
            return root
        return min(
            here,
            key=lambda s: (s.failure_class is not FailureClass.NON_RECOVERABLE, _SEVERITY_RANK[s.severity]),
        )


def build_remediator(
    config: Config, aws: AwsSettings, job_actuator: Actuator, counter: ApiCallCounter | None
) -> NodeRemediator:
    """`actuator.kind: aws-asg | hyperpod`: the NodeRemediator from its block, its state under
    `remediation_state_dir`. With `job: kubernetes`, HyperPod's `via: labels` uses the job
    actuator's Kubernetes connection unless its block names a kubeconfig or context."""
    act = config.actuator
    state_dir = remediation_state_dir(config)
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        if act.kind == "aws-asg":
            from supervisor.act import aws_asg

            return aws_asg.from_settings(act.aws_asg, aws, state_dir=state_dir, counter=counter)
        from supervisor.act import hyperpod

        kube = None
        if not hyperpod.uses_own_kubeconfig(act.hyperpod):
            from supervisor.act.kubernetes import KubernetesActuator

            if isinstance(job_actuator, KubernetesActuator):
                kube = job_actuator.api
        return hyperpod.from_settings(act.hyperpod, aws, state_dir=state_dir, counter=counter, kube=kube)
    except SettingsError as exc:
        raise StartupError(str(exc)) from exc


def build_actuator(
    config: Config,
    aws: AwsSettings,
    env: Mapping[str, str],
    *,
    fault_of: Callable[[Action], NodeFault] | None = None,
    counter: ApiCallCounter | None = None,
) -> Actuator:
    """The actuator `config.actuator` describes. For slurm, kubernetes, local and none: that actuator.
    For aws-asg and hyperpod: a RemediatingActuator whose inner actuator (`actuator.job`) restarts the
    job without the node and whose remediator then reboots or replaces it, choosing by `fault_of`
    (default: nothing known) and `actuator.node_ops`. `counter` counts the AWS calls a remediator
    makes. Nothing is started and no request is sent; a backend that cannot be set up raises
    StartupError."""
    act = config.actuator
    job_actuator = build_job_actuator(config, aws, env)
    if act.kind not in NODE_KINDS:
        return job_actuator
    remediator = build_remediator(config, aws, job_actuator, counter)
    policy = OpPolicy(by_rule={rule: NodeOp(op) for rule, op in act.node_ops.items()})
    return RemediatingActuator(
        job_actuator, remediator, policy=policy, fault_of=fault_of or (lambda action: NodeFault())
    )


def alert_sink_names(config: Config) -> list[str]:
    """The names of the alert sinks `build_alert_router` builds, in order (metrics label values)."""
    a = config.alerts
    return (
        (["log"] if a.log else [])
        + [f"webhook-{i}" for i in range(len(a.webhooks))]
        + [s.name for s in a.sinks]
    )


def alert_context(config: Config) -> AlertContext:
    """What alerts link to: the job's log group in the configured region, and the instance ids the
    Slurm actuator's instance map knows (node -> instance id)."""
    instances = {node: instance for instance, node in config.actuator.slurm.instance_map.items()}
    return AlertContext(region=config.aws.region, log_group=config.job.log_group, instance_ids=instances)


def build_alert_router(
    config: Config,
    aws: AwsSettings,
    outbox: Outbox,
    on_delivery: DeliveryCallback | None = None,
    counter: ApiCallCounter | None = None,
) -> AlertRouter:
    """Every configured alert sink behind one AlertRouter (dedupe, inhibition). Delivering sinks
    record what they are given in `outbox` (the journal) and retry what is pending, also what a
    previous daemon left. Nothing is sent here; each sink only starts its worker thread."""
    a = config.alerts
    sinks: list[AlertSink] = []
    if a.log:
        sinks.append(LogAlertSink(on_delivery=on_delivery))
    common: dict[str, Any] = {
        "outbox": outbox,
        "on_delivery": on_delivery,
        "redeliver_every_s": a.redeliver_every_s,
    }
    for i, hook in enumerate(a.webhooks):
        sinks.append(WebhookAlertSink(hook.url, timeout_s=hook.timeout_s, name=f"webhook-{i}", **common))
    for s in a.sinks:
        kw: dict[str, Any] = {
            **common,
            "name": s.name,
            "timeout_s": s.timeout_s,
            "max_attempts": s.max_attempts,
            "budget_s": s.budget_s,
        }
        if s.kind == "alertmanager" and s.url:
            sinks.append(AlertmanagerSink(s.url, ttl_s=s.ttl_s, **kw))
        elif s.kind == "slack" and s.url:
            sinks.append(SlackAlertSink(s.url, **kw))
        elif s.kind == "webhook" and s.url:
            sinks.append(WebhookAlertSink(s.url, **kw))
        elif s.kind == "pagerduty" and s.routing_key:
            sinks.append(
                PagerDutyAlertSink(s.routing_key, events_url=s.events_url, page_only=s.page_only, **kw)
            )
        elif s.kind == "sns" and s.topic_arn:
            region = s.topic_arn.split(":")[3]
            sns_aws = dataclasses.replace(aws, region=region)
            kw.pop("max_attempts")
            kw.pop("budget_s")
            kw.pop("timeout_s")
            sinks.append(
                SnsAlertSink(make_client("sns", sns_aws), s.topic_arn, sns_aws, counter=counter, **kw)
            )
    return AlertRouter(sinks, outbox=outbox, inhibit_window_s=a.inhibit_window_s)


def build(
    config: Config,
    *,
    endpoint_override: str | None = None,
    env: Mapping[str, str] | None = None,
    mode: Mode | None = None,
    actuator: Actuator | None = None,
) -> Daemon:
    """Build every part from the config. Nothing starts until Daemon.start(). `actuator`, when
    given, replaces the one `config.actuator` describes (embedding; the chaos test's file-state job)."""
    aws = aws_settings(config, endpoint_override)
    policy = load_policies([Path(p) for p in config.policies])
    unknown = sorted(set(config.actuator.node_ops) - {r.name for r in policy.rules})
    if unknown:
        raise StartupError(
            f"actuator.node_ops names rules the policies do not define: {', '.join(unknown)} "
            f"(policies: {', '.join(str(p) for p in config.policies)})"
        )
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
        sinks=alert_sink_names(config),
        jobs=[config.job.name],
    )
    journal = Journal(Path(config.journal.path))
    # One call budget shared by the sources' reads (actions, alerts and the lease never wait on it).
    calls = ApiCallCounter(budget=call_budget(config, metrics), budgeted_ops=SOURCE_OPS)
    try:
        if actuator is None:
            actuator = build_actuator(
                config, aws, env or {}, fault_of=IncidentFaults(journal, policy), counter=calls
            )
    except BaseException:
        journal.close()
        raise
    ha_on = config.ha.kind != "none"

    def make_sinks() -> list[AlertSink]:
        return [build_alert_router(config, aws, journal, metrics.alert, calls)]

    try:
        # HA: a passive follower delivers no alert (not even the outbox its leader left pending):
        # the leader's engine gets its sinks when leadership is gained (Daemon.make_engine).
        sinks: list[AlertSink] = [] if ha_on else make_sinks()
    except BaseException:
        journal.close()
        raise

    def make_engine(sinks: list[AlertSink]) -> Engine:
        """The engine with its sources, state read from the journal and the job as they are now."""
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
        engine.alert_context = alert_context(config)
        add_sources(engine)
        return engine

    logs_filter, progress_metric = logs_filter_pattern(config, policy)

    def add_sources(engine: Engine) -> None:
        if config.sources.logs.enabled:
            logs_cfg = config.sources.logs
            engine.progress_metric = progress_metric
            engine.add_source(
                CloudWatchLogsSource(
                    make_client("logs", aws),
                    config.job.log_group,
                    aws,
                    overlap_s=logs_cfg.overlap_s,
                    tail_overlap_s=logs_cfg.tail_overlap_s,
                    sweep_interval_s=logs_cfg.sweep_interval_s,
                    max_pages_per_poll=logs_cfg.max_pages_per_poll,
                    counter=calls,
                    filter_pattern=logs_filter,
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

    engine = make_engine(sinks)
    daemon = Daemon(config, policy, engine, journal, actuator, registry, calls)
    if ha_on:
        try:
            daemon.leadership = build_leadership(config, aws, calls, journal)
        except BaseException:
            journal.close()
            raise
        daemon.make_engine = lambda: make_engine(make_sinks())
    server_cfg = config.metrics_server
    if server_cfg.port is not None:
        server, _thread = serve(registry, server_cfg.address, server_cfg.port)
        daemon._servers.append(server)
        daemon.metrics_port = bound_port(server)
    return daemon


def build_lease(config: Config, aws: AwsSettings, counter: ApiCallCounter | None = None) -> Lease:
    """The lease `ha:` describes: `file` (default path: `<journal>.lease` next to the journal) or
    `dynamodb` (the item of this job in `ha.table`, region and endpoint from `aws:`)."""
    ha = config.ha
    if ha.kind == "file":
        path = ha.path or Path(f"{Path(config.journal.path).resolve()}.lease")
        return FileLease(path, lease_s=ha.lease_s)
    if ha.kind == "dynamodb" and ha.table:
        return DynamoDbLease(ha.table, config.job.name, aws, lease_s=ha.lease_s, counter=counter)
    raise StartupError(f"ha.kind {ha.kind!r}: no lease to build")


def build_leadership(
    config: Config, aws: AwsSettings, counter: ApiCallCounter | None = None, journal: Journal | None = None
) -> Leadership:
    """The lease of `build_lease`; with `kind: dynamodb` also the shared action ledger in
    `ha.ledger_table`, whose intents carry the incident's attempt read from `journal`."""
    lease = build_lease(config, aws, counter)
    ledger = None
    if isinstance(lease, DynamoDbLease) and config.ha.ledger_table:
        ledger = DynamoDbLedger(config.ha.ledger_table, lease)
    return Leadership(
        lease,
        renew_every_s=config.ha.renew_every_s,
        ledger=ledger,
        attempt_of=incident_attempt(journal) if journal is not None else None,
    )


def run_forever(daemon: Daemon) -> int:
    """`ftsup run`: supervise until SIGTERM/SIGINT, or until the job halts or finishes."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal received; shutting down", signal=signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ha = daemon.leadership
    if not daemon.wait_for_leadership(stop):  # HA: a passive follower until it holds the lease
        daemon.shutdown(stop_job=False)
        return 0
    daemon.start(launch=True)  # the local job starts; an external job is adopted as it is
    code = 0
    stop_job = ha is None  # HA: a leader that steps down leaves the job to its successor
    try:
        while not stop.wait(1.0):
            if ha is not None and ha.lost.is_set():
                log.error("leadership lost: this replica stops acting and exits")
                code = 4
                break
            snap = daemon.engine.snapshot()
            if snap.halted and not snap.acting:
                log.warning("job halted; the daemon stays down until a human relaunches it")
                code = 3
                stop_job = True
                break
            if not snap.acting:
                seen = daemon.actuator.observe()
                finished = seen.exit_codes and all(c == 0 for _, c in seen.exit_codes)
                if finished:
                    log.info("job finished", attempt=seen.attempt)
                    time.sleep(2.0)  # let the last lines be read and journaled
                    stop_job = True
                    break
    finally:
        daemon.shutdown(stop_job=stop_job)
    return code
