"""The daemon's configuration file: strict loading into frozen dataclasses.

`load_config(path)` reads one YAML file and checks it as strictly as the policies: unknown keys,
wrong types, out-of-range numbers, invalid names and URLs are all reported together in one
`ConfigError` whose problems name ``file:line:col path``. Every key is optional except
``job.name`` and ``job.log_group``. Relative paths (``policies``, ``journal.path``,
``actuator.local.run_dir``, the paths of ``actuator.slurm``, ``approval_dir`` and ``kubeconfig`` of
the backend blocks) are resolved against the config file's directory; the loaded `Config` holds
absolute paths. The ``kubernetes``, ``aws_asg`` and ``hyperpod`` blocks are checked by their
backends' own readers (`check_settings` of supervisor.act.kubernetes / aws_asg / hyperpod, the code
their `from_settings` runs), and each problem they name is placed at its file:line:col.

Example (all values shown are the defaults unless marked)::

    job:
      name: demo                                  # required
      log_group: /ftsup/jobs/demo                 # required
      metrics_namespace: ftsup/Trainer
      progress:                                   # RE2, with a named group `step`; null disables
        step:   '"event": "step", "step": (?P<step>\\d+)'
        resume: '"event": "resume", "step": (?P<step>\\d+)'
    aws: {region: us-east-1, endpoint_url: null, connect_timeout_s: 3.0, read_timeout_s: 10.0,
          max_attempts: 4, retry_budget_s: 20.0,
          max_calls_per_s: null,                  # e.g. 4: API calls/s of ALL sources together
          max_calls_burst: null}                  #   (retries too); burst default: ceil(max_calls_per_s)
    sources:
      logs:    {enabled: true, poll_interval_s: 1.0, overlap_s: 30.0, max_pages_per_poll: 50,
                tail_overlap_s: 5.0, sweep_interval_s: 15.0,    # see sources.cloudwatch_logs
                filter_pattern: auto}             # auto (from the policies) | none | '<pattern>'
      metrics: {enabled: true, poll_interval_s: 5.0, period_s: 1, lookback_s: 60.0, stats: {...}}
    policies: [policies]                          # default: the shipped policies/ directory
    mode: observe                                 # observe | act
    incidents: {settle_s: 1.5}                # counted from when the first failing line was written
    actuator:
      kind: local                                 # slurm | kubernetes | aws-asg | hyperpod | local | none
      job: null                                   # aws-asg, hyperpod (required): slurm | kubernetes |
                                                  # local, restarts the job; its block is read too
      local: {nodes: [node-0, node-1], spares: [], nproc_per_node: 1, run_dir: runs/<job.name>,
              stop_grace_s: 10.0, trainer_args: [], python: null}
      none:  {nodes: [...]}                       # kind none: the job's nodes (log stream names)
      slurm:                                      # kind slurm: exactly one of script, job_id, job_name
        script: deploy/slurm/ftsup-train.sbatch   # submitted with sbatch --parsable --job-name=<job.name>
        script_args: []                           # after the script (the shipped one: trainer arguments)
        sbatch_args: []                           # extra sbatch options, e.g. ["--nodes=4"]
        job_id: null                              # or adopt this job
        job_name: null                            # or adopt the newest active job with this name
        partition: null                           # spares are counted in it (default: the job's partition)
        slurm_conf: null                          # SLURM_CONF for every command (default: Slurm's lookup)
        bin_dir: null                             # where sbatch, squeue, ... live (default: PATH)
        state_dir: runs/<job.name>                # actuator-state.json (job id, attempts, action records)
        command_timeout_s: 30.0
        max_attempts: 4                           # retries of safe commands on transient failures ...
        retry_budget_s: 30.0                      # ... within this many seconds
        start_timeout_s: 600.0                    # how long launch / requeue wait for the job to run
        stop_timeout_s: 120.0                     # how long a halt waits for the job to end
        halt: cancel                              # cancel (scancel) | hold (scontrol requeuehold)
        env: {}                                   # extra environment for sbatch (reaches the job)
        node_map: {}                              # {log stream name: Slurm node name}; default identity
        instance_map_file: null                   # instance id -> node name (see supervisor.act.nodemap)
      kubernetes: {namespace: default, kind: jobset, name: llm, ...}   # see kubernetes.from_settings
      aws_asg: {group: NAME, method: unhealthy, lookup: none, ...}    # see aws_asg.from_settings
      hyperpod: {cluster: NAME, via: api, require_approval: true, ...} # see hyperpod.from_settings
      node_ops: {}                                # aws-asg, hyperpod: {rule: reboot | replace} overrides
    journal: {path: ftsup.db}
    alerts:
      log: true                                   # a structured log line per alert
      webhooks: [{url: https://..., timeout_s: 5.0}]   # generic JSON webhooks (also a sink kind)
      inhibit_window_s: 600.0                     # a root cause's alert inhibits symptoms this close
      redeliver_every_s: 60.0                     # undelivered alerts (journal outbox) retried this often
      sinks:                                      # each: kind, name (default: the kind), timeout_s: 5.0,
                                                  #       max_attempts: 5, budget_s: 60.0, and per kind:
        - {kind: alertmanager, url: http://alertmanager:9093, ttl_s: 86400}
        - {kind: sns, topic_arn: "arn:aws:sns:us-east-1:123456789012:ftsup-alerts"}
        - {kind: slack, webhook_url: https://hooks.slack.com/services/...}
        - {kind: pagerduty, routing_key: ..., events_url: https://events.pagerduty.com/v2/enqueue,
           page_only: true}
        - {kind: webhook, url: https://...}
    metrics_server: {address: 127.0.0.1, port: 9464}   # port null = off, 0 = any free port
    logging: {format: auto, level: info}                # auto | json | console
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import re2

from supervisor.act.nodemap import NodeMapError, load_instance_map
from supervisor.act.remediate import SettingsError
from supervisor.classify.policy import METRIC_RE, re2_options
from supervisor.classify.policy import NAME_RE as RULE_NAME_RE
from supervisor.errors import ConfigError, PathPart, Problem, format_path
from supervisor.vocabulary import Mode
from supervisor.yamlpos import Checker, DataPath, load_yaml_file, type_name

NODE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
JOB_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
LOG_GROUP_RE = re.compile(r"[A-Za-z0-9._/#-]{1,512}")
REGION_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
STAT_RE = re.compile(r"Average|Sum|Minimum|Maximum|SampleCount|p\d{1,2}(?:\.\d+)?")

ACTUATOR_KINDS = ("slurm", "kubernetes", "aws-asg", "hyperpod", "local", "none")
# Kinds that replace or reboot the bad node and leave the job to another actuator (`actuator.job`).
NODE_KINDS = ("aws-asg", "hyperpod")
# What `actuator.job` may name: an actuator that restarts the job without a node.
JOB_ACTUATOR_KINDS = ("slurm", "kubernetes", "local")
NODE_OPS = ("replace", "reboot")
# Keys of the backend blocks that hold paths: resolved against the config file's directory.
BACKEND_PATH_KEYS = ("approval_dir", "kubeconfig")
SLURM_HALT_MODES = ("cancel", "hold")
SLURM_PARTITION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SLURM_JOB_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
STREAM_RE = re.compile(r"[^:*\x00-\x1f]{1,512}")  # a CloudWatch log stream name
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

DEFAULT_STATS: Mapping[str, str] = MappingProxyType(
    {
        "step": "Maximum",
        "loss": "Average",
        "loss_nonfinite": "Maximum",
        "heartbeat": "Maximum",
        "tokens_per_s": "Average",
        "step_time_s": "Average",
        "compute_probe_s": "Maximum",
    }
)
DEFAULT_STEP_PATTERN = r'"event": "step", "step": (?P<step>\d+)'
DEFAULT_RESUME_PATTERN = r'"event": "resume", "step": (?P<step>\d+)'
# The trainer's line for a committed checkpoint (trainer/checkpoint.py `_commit`), with the save
# duration it reports when present.
DEFAULT_CHECKPOINT_PATTERN = (
    r'"event": "checkpoint_saved", "step": (?P<step>\d+)(?:.*"seconds": (?P<seconds>[0-9]+(?:\.[0-9]+)?))?'
)


def default_policy_dir() -> Path:
    """The shipped rule packs: the checkout's ``policies/`` (source and editable installs), else the
    copy a wheel installs under ``<prefix>/share/ftsup/policies``."""
    checkout = Path(__file__).resolve().parent.parent / "policies"
    if checkout.is_dir():
        return checkout
    return Path(sys.prefix) / "share" / "ftsup" / "policies"


# ----------------------------------------------------------------------------- model


@dataclass(frozen=True, slots=True)
class ProgressPatterns:
    """RE2 patterns with a named group ``step`` that read training progress from log lines.

    ``checkpoint`` reads a committed checkpoint (group ``step``; optional group ``seconds``, the save
    duration) for goodput accounting; None disables it. It is not a config-file key yet: the default
    reads the reference trainer's ``checkpoint_saved`` lines.
    """

    step: str | None = DEFAULT_STEP_PATTERN
    resume: str | None = DEFAULT_RESUME_PATTERN
    checkpoint: str | None = DEFAULT_CHECKPOINT_PATTERN


@dataclass(frozen=True, slots=True)
class JobConfig:
    name: str
    log_group: str
    metrics_namespace: str = "ftsup/Trainer"
    progress: ProgressPatterns = field(default_factory=ProgressPatterns)


@dataclass(frozen=True, slots=True)
class AwsConfig:
    region: str = "us-east-1"
    endpoint_url: str | None = None
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 10.0
    max_attempts: int = 4
    retry_budget_s: float = 20.0
    # One token bucket shared by the sources' AWS calls (FilterLogEvents, GetMetricData), retries
    # included; None = no budget. A call waits for a token at most its retry budget, then fails as
    # throttled (supervisor.sources.aws.RateBudget). Actions, alerts and the lease never wait on it.
    max_calls_per_s: float | None = None
    max_calls_burst: int | None = None


@dataclass(frozen=True, slots=True)
class LogsSourceConfig:
    """`filter_pattern`: "auto" (derived from the policies, supervisor.classify.prefilter), "none"
    (no server-side filter), or a literal CloudWatch filter pattern sent as is."""

    enabled: bool = True
    poll_interval_s: float = 1.0
    overlap_s: float = 30.0
    max_pages_per_poll: int = 50
    tail_overlap_s: float = 5.0
    sweep_interval_s: float = 15.0
    filter_pattern: str = "auto"


@dataclass(frozen=True, slots=True)
class MetricsSourceConfig:
    """`stats` maps a metric name to the CloudWatch statistic read for it (read-only mapping)."""

    enabled: bool = True
    poll_interval_s: float = 5.0
    period_s: int = 1
    lookback_s: float = 60.0
    stats: Mapping[str, str] = field(default_factory=lambda: DEFAULT_STATS)


@dataclass(frozen=True, slots=True)
class SourcesConfig:
    logs: LogsSourceConfig = field(default_factory=LogsSourceConfig)
    metrics: MetricsSourceConfig = field(default_factory=MetricsSourceConfig)


DEFAULT_SETTLE_S = 1.5
"""Seconds after the first failing line was written that an incident waits for related lines."""


@dataclass(frozen=True, slots=True)
class IncidentsConfig:
    settle_s: float = DEFAULT_SETTLE_S


@dataclass(frozen=True, slots=True)
class LocalActuatorConfig:
    """`python` None = the interpreter running ftsup. `run_dir` is absolute after loading."""

    nodes: tuple[str, ...] = ("node-0", "node-1")
    spares: tuple[str, ...] = ()
    nproc_per_node: int = 1
    run_dir: Path = Path("runs")
    stop_grace_s: float = 10.0
    trainer_args: tuple[str, ...] = ()
    python: str | None = None


@dataclass(frozen=True, slots=True)
class ExternalJobConfig:
    """`kind: none`: a job launched by someone else (a scheduler, a human), watched in observe mode."""

    nodes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SlurmActuatorConfig:
    """`kind: slurm`: a Slurm batch job (see supervisor.act.slurm). Paths are absolute after loading;
    exactly one of `script`, `job_id`, `job_name` is set when the kind is slurm. `instance_map` is the
    parsed `instance_map_file` (instance id -> Slurm node name)."""

    script: Path | None = None
    script_args: tuple[str, ...] = ()
    sbatch_args: tuple[str, ...] = ()
    job_id: int | None = None
    job_name: str | None = None
    partition: str | None = None
    slurm_conf: Path | None = None
    bin_dir: Path | None = None
    state_dir: Path = Path("runs")
    command_timeout_s: float = 30.0
    max_attempts: int = 4
    retry_budget_s: float = 30.0
    start_timeout_s: float = 600.0
    stop_timeout_s: float = 120.0
    halt: str = "cancel"
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    node_map: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    instance_map_file: Path | None = None
    instance_map: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


def _empty() -> Mapping[str, object]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class ActuatorConfig:
    """Where ftsup acts (`kind`, one of ACTUATOR_KINDS) and each backend's settings.

    `job` is set only for the node kinds (aws-asg, hyperpod): the actuator that restarts the job
    (one of JOB_ACTUATOR_KINDS), whose own section is read as if it were the kind; `job_kind` is
    that actuator for every kind. `kubernetes`, `aws_asg` and `hyperpod` are the blocks exactly as
    their backends' `from_settings` read them (checked at load by the backend's own reader, paths
    absolute), read-only; empty unless used. `node_ops` maps a rule name to the node operation
    (`replace` | `reboot`) that overrides what the rule's class and severity would choose.
    """

    kind: str = "local"
    local: LocalActuatorConfig = field(default_factory=LocalActuatorConfig)
    none: ExternalJobConfig = field(default_factory=ExternalJobConfig)
    slurm: SlurmActuatorConfig = field(default_factory=SlurmActuatorConfig)
    job: str | None = None
    kubernetes: Mapping[str, object] = field(default_factory=_empty)
    aws_asg: Mapping[str, object] = field(default_factory=_empty)
    hyperpod: Mapping[str, object] = field(default_factory=_empty)
    node_ops: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def job_kind(self) -> str:
        """The kind of the actuator that restarts the job: `job` for the node kinds, else `kind`."""
        return self.job or self.kind


@dataclass(frozen=True, slots=True)
class JournalConfig:
    path: Path = Path("ftsup.db")


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    url: str
    timeout_s: float = 5.0


ALERT_SINK_KINDS = ("alertmanager", "sns", "slack", "pagerduty", "webhook")
ALERT_SINK_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
SNS_TOPIC_ARN_RE = re.compile(r"arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}(?:\.fifo)?")
PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
# Keys every `alerts.sinks[]` entry may have, then the keys of each kind (the first one is required).
_ALERT_SINK_COMMON = ("kind", "name", "timeout_s", "max_attempts", "budget_s")
_ALERT_SINK_KEYS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "alertmanager": ("url", "ttl_s"),
        "sns": ("topic_arn",),
        "slack": ("webhook_url",),
        "pagerduty": ("routing_key", "events_url", "page_only"),
        "webhook": ("url",),
    }
)


@dataclass(frozen=True, slots=True)
class AlertSinkConfig:
    """One entry of `alerts.sinks`. `url` is the Alertmanager base URL, the webhook URL or the Slack
    webhook URL (`webhook_url` in the file); `topic_arn` is for sns; `routing_key`, `events_url`,
    `page_only` for pagerduty; `ttl_s` for alertmanager. `name` is unique (default: the kind) and
    names the sink in metrics and in the journal's alert outbox."""

    kind: str
    name: str
    url: str | None = None
    topic_arn: str | None = None
    routing_key: str | None = None
    events_url: str = PAGERDUTY_EVENTS_URL
    page_only: bool = True
    ttl_s: float = 24 * 3600.0
    timeout_s: float = 5.0
    max_attempts: int = 5
    budget_s: float = 60.0


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    """`alerts`: the log sink, the generic webhooks (kept for older files), the other sinks, how
    long a root cause's alert inhibits its symptoms' alerts, how often undelivered alerts are retried."""

    log: bool = True
    webhooks: tuple[WebhookConfig, ...] = ()
    sinks: tuple[AlertSinkConfig, ...] = ()
    inhibit_window_s: float = 600.0
    redeliver_every_s: float = 60.0


@dataclass(frozen=True, slots=True)
class MetricsServerConfig:
    """`port` None = no metrics server; 0 = any free port."""

    address: str = "127.0.0.1"
    port: int | None = 9464


HA_KINDS = ("none", "file", "dynamodb")
DYNAMODB_TABLE_RE = re.compile(r"[A-Za-z0-9_.-]{3,255}")


@dataclass(frozen=True, slots=True)
class HaConfig:
    """`ha:` several replicas, exactly one acts (supervisor/ha). `kind: none`: a single daemon.
    `file`: replicas on one machine share `path` (the lease file, default next to the journal) and
    the journal; `dynamodb`: one item per job in `table` (region and endpoint from `aws:`), and the
    shared action ledger in `ledger_table` (default `<table>-actions`; partition key `job`, sort key
    `idempotency_key`), since each replica then has its own journal."""

    kind: str = "none"
    lease_s: float = 15.0
    renew_every_s: float = 5.0
    table: str | None = None
    path: Path | None = None
    ledger_table: str | None = None


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    format: str = "auto"
    level: str = "info"


@dataclass(frozen=True, slots=True)
class Config:
    """The whole daemon configuration. `source` is the file it was loaded from (None if built in code)."""

    job: JobConfig
    aws: AwsConfig = field(default_factory=AwsConfig)
    sources: SourcesConfig = field(default_factory=SourcesConfig)
    policies: tuple[Path, ...] = field(default_factory=lambda: (default_policy_dir(),))
    mode: Mode = Mode.OBSERVE
    incidents: IncidentsConfig = field(default_factory=IncidentsConfig)
    actuator: ActuatorConfig = field(default_factory=ActuatorConfig)
    journal: JournalConfig = field(default_factory=JournalConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    metrics_server: MetricsServerConfig = field(default_factory=MetricsServerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    ha: HaConfig = field(default_factory=HaConfig)
    source: Path | None = None

    def with_overrides(
        self,
        *,
        run_dir: Path | str | None = None,
        journal_path: Path | str | None = None,
        log_group: str | None = None,
        mode: Mode | None = None,
    ) -> Config:
        """A copy with the given run directory, journal path, log group or mode replaced."""
        cfg = self
        if run_dir is not None:
            local = dataclasses.replace(cfg.actuator.local, run_dir=Path(run_dir))
            cfg = dataclasses.replace(cfg, actuator=dataclasses.replace(cfg.actuator, local=local))
        if journal_path is not None:
            cfg = dataclasses.replace(cfg, journal=JournalConfig(Path(journal_path)))
        if log_group is not None:
            cfg = dataclasses.replace(cfg, job=dataclasses.replace(cfg.job, log_group=log_group))
        if mode is not None:
            cfg = dataclasses.replace(cfg, mode=mode)
        return cfg

    def trainer_checkpoint_every(self, default: int = 10) -> int:
        """The ``--ckpt-every N`` the local actuator passes to the trainer (`default` if absent)."""
        args = self.actuator.local.trainer_args
        for i, arg in enumerate(args):
            value: str | None = None
            if arg == "--ckpt-every" and i + 1 < len(args):
                value = args[i + 1]
            elif arg.startswith("--ckpt-every="):
                value = arg.split("=", 1)[1]
            if value is not None:
                try:
                    return int(value)
                except ValueError:
                    return default
        return default


# ----------------------------------------------------------------------------- loading


def _section(ck: Checker, path: DataPath, value: object, allowed: tuple[str, ...]) -> dict[str, Any]:
    """A mapping section (absent or null = empty); problems recorded, {} when not a mapping."""
    if value is None:
        return {}
    m = ck.mapping(path, value, allowed=allowed)
    return m if m is not None else {}


def _url(ck: Checker, path: DataPath, value: object) -> str | None:
    s = ck.string(path, value)
    if s is None:
        return None
    try:
        parts = urlsplit(s)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        ck.problem(path, f"invalid URL {s!r} (expected http:// or https:// with a host)")
        return None
    return s


def _progress(ck: Checker, path: DataPath, value: object) -> str | None:
    s = ck.string(path, value)
    if s is None:
        return None
    try:
        regex = re2.compile(s, re2_options())
    except re2.error as exc:
        from supervisor.classify.policy import explain_re2_error

        raw = exc.args[0] if exc.args else ""
        ck.problem(
            path, explain_re2_error(raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw))
        )
        return None
    if "step" not in regex.groupindex:
        ck.problem(path, "pattern needs a named group 'step', e.g. (?P<step>\\d+)")
        return None
    return s


def _frozen(value: Any) -> Any:
    """`value` with every mapping read-only (MappingProxyType) and every list a tuple."""
    if isinstance(value, dict):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


def _nodes(ck: Checker, path: DataPath, value: object, *, allow_empty: bool) -> tuple[str, ...] | None:
    if not isinstance(value, list):
        ck.problem(path, "expected a list of node names")
        return None
    out: list[str] = []
    ok = True
    for i, item in enumerate(value):
        name = ck.string((*path, i), item, pattern=NODE_RE, what="node name")
        if name is None:
            ok = False
        elif name in out:
            ck.problem((*path, i), f"duplicate node {name!r}")
            ok = False
        else:
            out.append(name)
    if not out and not allow_empty and ok:
        ck.problem(path, "needs at least one node")
        return None
    return tuple(out) if ok else None


class _Loader:
    def __init__(self, ck: Checker, base: Path) -> None:
        self.ck = ck
        self.base = base

    def path(self, p: DataPath, value: object) -> Path | None:
        s = self.ck.string(p, value)
        if s is None:
            return None
        q = Path(s).expanduser()
        return q if q.is_absolute() else (self.base / q)

    def num(self, m: dict[str, Any], p: DataPath, key: str, default: float, **kw: Any) -> float:
        if key not in m:
            return default
        v = self.ck.number((*p, key), m[key], **kw)
        return default if v is None else v

    def int_(self, m: dict[str, Any], p: DataPath, key: str, default: int, **kw: Any) -> int:
        if key not in m:
            return default
        v = self.ck.integer((*p, key), m[key], **kw)
        return default if v is None else v

    def bool_(self, m: dict[str, Any], p: DataPath, key: str, default: bool) -> bool:
        if key not in m:
            return default
        v = self.ck.boolean((*p, key), m[key])
        return default if v is None else v

    def job(self, value: object) -> JobConfig:
        ck = self.ck
        p: DataPath = ("job",)
        m = ck.mapping(
            p,
            value,
            allowed=("name", "log_group", "metrics_namespace", "progress"),
            required=("name", "log_group"),
        )
        m = m or {}
        name = ck.string((*p, "name"), m["name"], pattern=JOB_RE, what="job name") if "name" in m else None
        group = (
            ck.string((*p, "log_group"), m["log_group"], pattern=LOG_GROUP_RE, what="log group")
            if "log_group" in m
            else None
        )
        ns = "ftsup/Trainer"
        if "metrics_namespace" in m:
            ns = ck.string((*p, "metrics_namespace"), m["metrics_namespace"]) or ns
            if len(ns) > 255:
                ck.problem((*p, "metrics_namespace"), "must be at most 255 characters")
        progress = ProgressPatterns()
        if "progress" in m:
            pp = (*p, "progress")
            pm = _section(ck, pp, m["progress"], ("step", "resume"))
            step = progress.step
            resume = progress.resume
            if "step" in pm:
                step = None if pm["step"] is None else _progress(ck, (*pp, "step"), pm["step"])
            if "resume" in pm:
                resume = None if pm["resume"] is None else _progress(ck, (*pp, "resume"), pm["resume"])
            progress = ProgressPatterns(step, resume)
        return JobConfig(name or "invalid", group or "invalid", ns, progress)

    def aws(self, value: object) -> AwsConfig:
        ck = self.ck
        p: DataPath = ("aws",)
        d = AwsConfig()
        keys = (
            "region",
            "endpoint_url",
            "connect_timeout_s",
            "read_timeout_s",
            "max_attempts",
            "retry_budget_s",
            "max_calls_per_s",
            "max_calls_burst",
        )
        m = _section(ck, p, value, keys)
        region = d.region
        if "region" in m:
            region = ck.string((*p, "region"), m["region"], pattern=REGION_RE, what="region") or region
        endpoint = None
        if m.get("endpoint_url") is not None:
            endpoint = _url(ck, (*p, "endpoint_url"), m["endpoint_url"])
        retry_budget_s = self.num(m, p, "retry_budget_s", d.retry_budget_s, positive=True)
        return AwsConfig(
            region=region,
            endpoint_url=endpoint,
            connect_timeout_s=self.num(m, p, "connect_timeout_s", d.connect_timeout_s, positive=True),
            read_timeout_s=self.num(m, p, "read_timeout_s", d.read_timeout_s, positive=True),
            max_attempts=self.int_(m, p, "max_attempts", d.max_attempts, minimum=1, maximum=100),
            retry_budget_s=retry_budget_s,
            **self._call_budget(m, p, retry_budget_s),
        )

    def _call_budget(self, m: dict[str, Any], p: DataPath, retry_budget_s: float) -> dict[str, Any]:
        """aws.max_calls_per_s (null: no budget) and aws.max_calls_burst (needs a rate)."""
        ck = self.ck
        rate = None
        if m.get("max_calls_per_s") is not None:
            rate = ck.number((*p, "max_calls_per_s"), m["max_calls_per_s"], positive=True, maximum=10_000)
            if rate is not None and rate * retry_budget_s < 1.0:
                # A call waits for a token at most its retry budget: a slower refill would refuse
                # every call once the burst is spent.
                ck.problem(
                    (*p, "max_calls_per_s"),
                    f"must allow one call within aws.retry_budget_s ({retry_budget_s:g} s): "
                    f"at least {1.0 / retry_budget_s:.3g}, got {rate:g}",
                )
                rate = None
        burst = None
        if m.get("max_calls_burst") is not None:
            burst = ck.integer((*p, "max_calls_burst"), m["max_calls_burst"], minimum=1, maximum=100_000)
            if burst is not None and m.get("max_calls_per_s") is None:
                ck.problem((*p, "max_calls_burst"), "needs aws.max_calls_per_s (the budget it bursts above)")
        return {"max_calls_per_s": rate, "max_calls_burst": burst}

    def _filter_pattern(self, m: dict[str, Any], p: DataPath, default: str) -> str:
        """sources.logs.filter_pattern: auto | none | a literal CloudWatch filter pattern."""
        if "filter_pattern" not in m:
            return default
        path = (*p, "filter_pattern")
        s = self.ck.string(path, m["filter_pattern"])
        if s is None:
            return default
        if len(s) > 1024 or "\n" in s:
            self.ck.problem(
                path, f"a CloudWatch filter pattern is one line of at most 1024 characters (got {len(s)})"
            )
            return default
        return s

    def sources(self, value: object) -> SourcesConfig:
        ck = self.ck
        p: DataPath = ("sources",)
        m = _section(ck, p, value, ("logs", "metrics"))
        lp = (*p, "logs")
        lm = _section(
            ck,
            lp,
            m.get("logs"),
            (
                "enabled",
                "poll_interval_s",
                "overlap_s",
                "max_pages_per_poll",
                "tail_overlap_s",
                "sweep_interval_s",
                "filter_pattern",
            ),
        )
        ld = LogsSourceConfig()
        overlap = self.num(lm, lp, "overlap_s", ld.overlap_s, minimum=0)
        tail = self.num(lm, lp, "tail_overlap_s", min(ld.tail_overlap_s, overlap), minimum=0)
        if tail > overlap:
            ck.problem((*lp, "tail_overlap_s"), f"must be <= overlap_s ({overlap:g}), got {tail:g}")
        logs = LogsSourceConfig(
            enabled=self.bool_(lm, lp, "enabled", ld.enabled),
            poll_interval_s=self.num(lm, lp, "poll_interval_s", ld.poll_interval_s, positive=True),
            overlap_s=overlap,
            max_pages_per_poll=self.int_(lm, lp, "max_pages_per_poll", ld.max_pages_per_poll, minimum=1),
            tail_overlap_s=min(tail, overlap),
            sweep_interval_s=self.num(lm, lp, "sweep_interval_s", ld.sweep_interval_s, positive=True),
            filter_pattern=self._filter_pattern(lm, lp, ld.filter_pattern),
        )
        mp = (*p, "metrics")
        mm = _section(
            ck, mp, m.get("metrics"), ("enabled", "poll_interval_s", "period_s", "lookback_s", "stats")
        )
        md = MetricsSourceConfig()
        period = self.int_(mm, mp, "period_s", md.period_s, minimum=1)
        if period not in (1, 5, 10, 30) and period % 60 != 0:
            ck.problem(
                (*mp, "period_s"),
                f"must be 1, 5, 10, 30 or a multiple of 60 (CloudWatch periods), got {period}",
            )
        stats: Mapping[str, str] = md.stats
        if "stats" in mm:
            sp = (*mp, "stats")
            sm = mm["stats"]
            if not isinstance(sm, dict):
                ck.problem(sp, "expected a mapping of metric name to CloudWatch statistic")
            else:
                checked: dict[str, str] = {}
                for k, v in sm.items():
                    if not isinstance(k, str) or not METRIC_RE.fullmatch(k):
                        ck.problem((*sp, str(k)), f"invalid metric name {k!r}", key=True)
                        continue
                    stat = ck.string((*sp, k), v, pattern=STAT_RE, what="statistic")
                    if stat is not None:
                        checked[k] = stat
                stats = MappingProxyType(checked)
        return SourcesConfig(
            logs,
            MetricsSourceConfig(
                enabled=self.bool_(mm, mp, "enabled", md.enabled),
                poll_interval_s=self.num(mm, mp, "poll_interval_s", md.poll_interval_s, positive=True),
                period_s=period,
                lookback_s=self.num(mm, mp, "lookback_s", md.lookback_s, positive=True),
                stats=stats,
            ),
        )

    def policies(self, value: object) -> tuple[Path, ...]:
        ck = self.ck
        p: DataPath = ("policies",)
        if value is None:
            return (default_policy_dir(),)
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items:
            ck.problem(p, "expected a list of policy files or directories")
            return ()
        out: list[Path] = []
        for i, item in enumerate(items):
            ip = (*p, i) if not isinstance(value, str) else p
            q = self.path(ip, item)
            if q is None:
                continue
            if not q.exists():
                ck.problem(ip, f"no such file or directory: {q}")
                continue
            out.append(q)
        return tuple(out)

    def actuator(self, value: object, job_name: str) -> ActuatorConfig:
        """The `actuator` section: the kind, its job actuator (`job`, node kinds only) and the blocks
        they read. A block given for a kind that does not read it is a problem (never ignored)."""
        ck = self.ck
        p: DataPath = ("actuator",)
        sections = ("kind", "job", "local", "none", "slurm", "kubernetes", "aws_asg", "hyperpod", "node_ops")
        m = _section(ck, p, value, sections)
        kind = "local"
        if "kind" in m:
            kind = ck.choice((*p, "kind"), m["kind"], ACTUATOR_KINDS) or kind
        # The actuator that restarts the job; None: unknown (a bad `job`), so its blocks go unjudged.
        job_kind: str | None = kind
        job: str | None = None
        if kind in NODE_KINDS:
            job_kind = None
            if m.get("job") is None:
                ck.problem(
                    p,
                    f"kind {kind} replaces or reboots nodes; name the actuator that restarts the job "
                    f"in actuator.job ({' | '.join(JOB_ACTUATOR_KINDS)})",
                )
            else:
                job = job_kind = ck.choice((*p, "job"), m["job"], JOB_ACTUATOR_KINDS)
        elif m.get("job") is not None:
            ck.problem(
                (*p, "job"),
                f"actuator.job is only read with kind {' or '.join(NODE_KINDS)} (kind is {kind!r})",
            )

        def unread(section: str, reader: str) -> None:
            """`actuator.<section>` is given, but neither the kind nor the job actuator reads it."""
            if kind in NODE_KINDS and reader in JOB_ACTUATOR_KINDS:
                if job_kind is not None:
                    ck.problem(
                        (*p, section),
                        f"actuator.{section} is only read with kind {reader} or job {reader} "
                        f"(kind is {kind!r}, job is {job_kind!r})",
                    )
            else:
                ck.problem(
                    (*p, section), f"actuator.{section} is only read with kind {reader} (kind is {kind!r})"
                )

        lp = (*p, "local")
        keys = ("nodes", "spares", "nproc_per_node", "run_dir", "stop_grace_s", "trainer_args", "python")
        lm = _section(ck, lp, m.get("local"), keys)
        d = LocalActuatorConfig()
        nodes = d.nodes
        if "nodes" in lm:
            nodes = _nodes(ck, (*lp, "nodes"), lm["nodes"], allow_empty=False) or nodes
        spares = d.spares
        if "spares" in lm and lm["spares"] is not None:
            got = _nodes(ck, (*lp, "spares"), lm["spares"], allow_empty=True)
            if got is not None:
                spares = got
                for i, s in enumerate(got):
                    if s in nodes:
                        ck.problem((*lp, "spares", i), f"node {s!r} is listed both in nodes and in spares")
        run_dir = self.base / "runs" / job_name
        if "run_dir" in lm:
            run_dir = self.path((*lp, "run_dir"), lm["run_dir"]) or run_dir
        trainer_args: tuple[str, ...] = ()
        if "trainer_args" in lm and lm["trainer_args"] is not None:
            ta = lm["trainer_args"]
            if not isinstance(ta, list):
                ck.problem((*lp, "trainer_args"), "expected a list of strings")
            else:
                args: list[str] = []
                for i, a in enumerate(ta):
                    if isinstance(a, str):
                        args.append(a)
                    elif isinstance(a, int | float) and not isinstance(a, bool):
                        ck.problem(
                            (*lp, "trainer_args", i), f'expected a string, got {a!r} (quote it: "{a}")'
                        )
                    else:
                        ck.problem((*lp, "trainer_args", i), "expected a string")
                trainer_args = tuple(args)
        python = None
        if lm.get("python") is not None:
            python = ck.string((*lp, "python"), lm["python"])
        local = LocalActuatorConfig(
            nodes=nodes,
            spares=spares,
            nproc_per_node=self.int_(lm, lp, "nproc_per_node", d.nproc_per_node, minimum=1, maximum=1024),
            run_dir=run_dir,
            stop_grace_s=self.num(lm, lp, "stop_grace_s", d.stop_grace_s, positive=True),
            trainer_args=trainer_args,
            python=python,
        )
        external = ExternalJobConfig()
        np: DataPath = (*p, "none")
        nm = _section(ck, np, m.get("none"), ("nodes",))
        if kind == "none":
            if "nodes" not in nm:
                ck.problem(
                    np, "kind none watches a job launched elsewhere: list its nodes (log stream names)"
                )
            else:
                external = ExternalJobConfig(_nodes(ck, (*np, "nodes"), nm["nodes"], allow_empty=False) or ())
        elif nm:
            unread("none", "none")
        slurm = SlurmActuatorConfig(state_dir=self.base / "runs" / job_name)
        sp: DataPath = (*p, "slurm")
        if job_kind == "slurm":
            if m.get("slurm") is None:
                who = "kind" if kind == "slurm" else "job"
                ck.problem(p, f"{who} slurm needs an actuator.slurm section (script, job_id or job_name)")
            else:
                slurm = self.slurm(sp, m["slurm"], job_name)
        elif m.get("slurm") is not None:
            unread("slurm", "slurm")
        blocks: dict[str, Mapping[str, object]] = {}
        for section, reader, needs in (
            ("kubernetes", "kubernetes", "kind and name: the JobSet or PyTorchJob"),
            ("aws_asg", "aws-asg", "group: the Auto Scaling group"),
            ("hyperpod", "hyperpod", "cluster: the HyperPod cluster"),
        ):
            given = m.get(section)
            if reader in (kind, job_kind):
                if given is None:
                    who = "kind" if kind == reader else "job"
                    ck.problem(p, f"{who} {reader} needs an actuator.{section} section ({needs})")
                else:
                    blocks[section] = self.backend_block((*p, section), given, reader, job_name)
            elif given is not None:
                unread(section, reader)
        node_ops: Mapping[str, str] = MappingProxyType({})
        if m.get("node_ops") is not None:
            if kind in NODE_KINDS:
                node_ops = self._node_ops((*p, "node_ops"), m["node_ops"])
            else:
                ck.problem(
                    (*p, "node_ops"),
                    f"actuator.node_ops is only read with kind {' or '.join(NODE_KINDS)} (kind is {kind!r})",
                )
        return ActuatorConfig(
            kind,
            local,
            external,
            slurm,
            job=job,
            kubernetes=blocks.get("kubernetes", _empty()),
            aws_asg=blocks.get("aws_asg", _empty()),
            hyperpod=blocks.get("hyperpod", _empty()),
            node_ops=node_ops,
        )

    def _node_ops(self, path: DataPath, value: object) -> Mapping[str, str]:
        """`{rule name: replace | reboot}`; every bad entry recorded."""
        if not isinstance(value, dict):
            self.ck.problem(path, f"expected a mapping of rule name to {' | '.join(NODE_OPS)}")
            return MappingProxyType({})
        out: dict[str, str] = {}
        for rule, op in value.items():
            if not isinstance(rule, str) or not RULE_NAME_RE.fullmatch(rule):
                self.ck.problem(
                    (*path, str(rule)),
                    f"invalid rule name {rule!r} (must match {RULE_NAME_RE.pattern})",
                    key=True,
                )
                continue
            chosen = self.ck.choice((*path, rule), op, NODE_OPS)
            if chosen is not None:
                out[rule] = chosen
        return MappingProxyType(out)

    def backend_block(self, p: DataPath, value: object, kind: str, job_name: str) -> Mapping[str, object]:
        """A kubernetes / aws_asg / hyperpod block, checked by its backend's own reader (the same code
        `from_settings` runs, without connecting anywhere); each problem it names is placed at its
        key's (or value's) file:line:col. Paths (`approval_dir`, `kubeconfig`) are resolved against
        the config file's directory; a `kubeconfig` must exist. Returns the block read-only."""
        ck = self.ck
        if not isinstance(value, dict):
            ck.problem(p, f"expected a mapping, got {type_name(value)}")
            return _empty()
        block: dict[str, object] = {}
        for k, v in value.items():
            if isinstance(k, str):
                block[k] = v
            else:
                ck.problem((*p, str(k)), f"keys must be strings, got {type_name(k)}", key=True)
        for key in BACKEND_PATH_KEYS:
            raw = block.get(key)
            if isinstance(raw, str) and raw:
                resolved = self.path((*p, key), raw)
                if resolved is None:
                    continue
                if key == "kubeconfig" and not resolved.is_file():
                    ck.problem((*p, key), f"no such file: {resolved}")
                block[key] = str(resolved)
        try:  # each backend (and its client library) is imported only when its block is used
            if kind == "kubernetes":
                from supervisor.act import kubernetes

                kubernetes.check_settings(block, job=job_name, prefix=format_path(p))
            elif kind == "aws-asg":
                from supervisor.act import aws_asg

                aws_asg.check_settings(block, prefix=format_path(p))
            else:
                from supervisor.act import hyperpod

                hyperpod.check_settings(block, prefix=format_path(p))
        except SettingsError as exc:
            for line in exc.problems:
                self._settings_problem(p, block, line, exc.known)
        frozen: Mapping[str, object] = _frozen(block)
        return frozen

    def _settings_problem(
        self, p: DataPath, block: Mapping[str, object], line: str, known: frozenset[str]
    ) -> None:
        """Place one `prefix.key.sub: message` line from a backend's SettingsReader in the document.

        The key path is matched against the block itself (longest key first, since node names in a
        `node_map` may contain dots); what does not match (a missing key) is reported at the
        deepest part that exists."""
        prefix = format_path(p) + "."
        if not line.startswith(prefix):
            self.ck.problem(p, line)
            return
        rest = line[len(prefix) :]
        path: list[PathPart] = list(p)
        node: object = block
        while isinstance(node, Mapping):
            keys = sorted((k for k in node if isinstance(k, str)), key=len, reverse=True)
            hit = next((k for k in keys if rest.startswith(k + ".") or rest.startswith(k + ": ")), None)
            if hit is None:
                break
            path.append(hit)
            node = node[hit]
            rest = rest[len(hit) :]
            if rest.startswith(": "):
                rest = rest[2:]
                message = rest
                if message == "unknown key":
                    expected = ", ".join(sorted(known))
                    message = (
                        f"unknown key {hit!r} (expected one of: {expected})"
                        if known
                        else f"unknown key {hit!r}"
                    )
                    self.ck.problem(tuple(path), message, key=True)
                else:
                    self.ck.problem(tuple(path), message)
                return
            rest = rest[1:]
        key, _, message = rest.partition(": ")
        if message == "required" and "." not in key:
            self.ck.problem(tuple(path), f"missing required key {key!r}")
            return
        self.ck.problem((*path, *key.split(".")), message or key)

    def _strings(self, path: DataPath, value: object) -> tuple[str, ...]:
        """A list of argument strings; a number is refused with a hint to quote it."""
        if value is None:
            return ()
        if not isinstance(value, list):
            self.ck.problem(path, "expected a list of strings")
            return ()
        out: list[str] = []
        for i, a in enumerate(value):
            if isinstance(a, str):
                out.append(a)
            elif isinstance(a, int | float) and not isinstance(a, bool):
                self.ck.problem((*path, i), f'expected a string, got {a!r} (quote it: "{a}")')
            else:
                self.ck.problem((*path, i), "expected a string")
        return tuple(out)

    def _string_map(
        self,
        path: DataPath,
        value: object,
        key_re: re.Pattern[str],
        value_re: re.Pattern[str] | None,
        what: str,
    ) -> Mapping[str, str]:
        if value is None:
            return MappingProxyType({})
        if not isinstance(value, dict):
            self.ck.problem(path, f"expected a mapping of {what}")
            return MappingProxyType({})
        out: dict[str, str] = {}
        for k, v in value.items():
            if not isinstance(k, str) or not key_re.fullmatch(k):
                self.ck.problem((*path, str(k)), f"invalid key {k!r} (must match {key_re.pattern})", key=True)
                continue
            if isinstance(v, int | float) and not isinstance(v, bool) and value_re is None:
                v = str(v)  # environment values: 8 and "8" mean the same
            checked = self.ck.string((*path, k), v, pattern=value_re, what="value")
            if checked is not None:
                out[k] = checked
        return MappingProxyType(out)

    def _existing(self, path: DataPath, value: object, *, directory: bool = False) -> Path | None:
        q = self.path(path, value)
        if q is None:
            return None
        if not (q.is_dir() if directory else q.is_file()):
            self.ck.problem(path, f"no such {'directory' if directory else 'file'}: {q}")
            return None
        return q

    def slurm(self, p: DataPath, value: object, job_name: str) -> SlurmActuatorConfig:
        """The `actuator.slurm` section; every problem recorded with its position."""
        ck = self.ck
        keys = tuple(f.name for f in dataclasses.fields(SlurmActuatorConfig) if f.name != "instance_map")
        m = _section(ck, p, value, keys)
        d = SlurmActuatorConfig()
        given = [k for k in ("script", "job_id", "job_name") if m.get(k) is not None]
        if len(given) != 1:
            which = " and ".join(given) if given else "none of them"
            ck.problem(p, f"give exactly one of script (submit it), job_id or job_name (adopt); got {which}")
        script = self._existing((*p, "script"), m["script"]) if m.get("script") is not None else None
        job_id = None
        if m.get("job_id") is not None:
            job_id = ck.integer((*p, "job_id"), m["job_id"], minimum=1, maximum=10**12 - 1)
        slurm_job_name = None
        if m.get("job_name") is not None:
            slurm_job_name = ck.string(
                (*p, "job_name"), m["job_name"], pattern=SLURM_JOB_NAME_RE, what="Slurm job name"
            )
        partition = None
        if m.get("partition") is not None:
            partition = ck.string(
                (*p, "partition"), m["partition"], pattern=SLURM_PARTITION_RE, what="partition name"
            )
        slurm_conf = self._existing((*p, "slurm_conf"), m["slurm_conf"]) if m.get("slurm_conf") else None
        bin_dir = self._existing((*p, "bin_dir"), m["bin_dir"], directory=True) if m.get("bin_dir") else None
        state_dir = self.base / "runs" / job_name
        if m.get("state_dir") is not None:
            state_dir = self.path((*p, "state_dir"), m["state_dir"]) or state_dir
        halt = d.halt
        if "halt" in m:
            halt = ck.choice((*p, "halt"), m["halt"], SLURM_HALT_MODES) or halt
        instance_file = None
        instances: Mapping[str, str] = MappingProxyType({})
        if m.get("instance_map_file") is not None:
            instance_file = self._existing((*p, "instance_map_file"), m["instance_map_file"])
            if instance_file is not None:
                try:
                    loaded = load_instance_map(instance_file)
                except NodeMapError as exc:
                    ck.problem((*p, "instance_map_file"), str(exc))
                else:
                    bad = sorted(v for v in loaded.values() if not NODE_RE.fullmatch(v))
                    if bad:
                        ck.problem(
                            (*p, "instance_map_file"), f"invalid Slurm node names: {', '.join(bad[:5])}"
                        )
                    instances = MappingProxyType(loaded)
        return SlurmActuatorConfig(
            script=script,
            script_args=self._strings((*p, "script_args"), m.get("script_args")),
            sbatch_args=self._strings((*p, "sbatch_args"), m.get("sbatch_args")),
            job_id=job_id,
            job_name=slurm_job_name,
            partition=partition,
            slurm_conf=slurm_conf,
            bin_dir=bin_dir,
            state_dir=state_dir,
            command_timeout_s=self.num(m, p, "command_timeout_s", d.command_timeout_s, positive=True),
            max_attempts=self.int_(m, p, "max_attempts", d.max_attempts, minimum=1, maximum=20),
            retry_budget_s=self.num(m, p, "retry_budget_s", d.retry_budget_s, minimum=0),
            start_timeout_s=self.num(m, p, "start_timeout_s", d.start_timeout_s, positive=True),
            stop_timeout_s=self.num(m, p, "stop_timeout_s", d.stop_timeout_s, positive=True),
            halt=halt,
            env=self._string_map((*p, "env"), m.get("env"), ENV_NAME_RE, None, "NAME: value"),
            node_map=self._string_map(
                (*p, "node_map"), m.get("node_map"), STREAM_RE, NODE_RE, "log stream name: Slurm node name"
            ),
            instance_map_file=instance_file,
            instance_map=instances,
        )

    def alerts(self, value: object) -> AlertsConfig:
        ck = self.ck
        p: DataPath = ("alerts",)
        m = _section(ck, p, value, ("log", "webhooks", "sinks", "inhibit_window_s", "redeliver_every_s"))
        hooks: list[WebhookConfig] = []
        if m.get("webhooks") is not None:
            wl = m["webhooks"]
            if not isinstance(wl, list):
                ck.problem((*p, "webhooks"), "expected a list of {url, timeout_s}")
            else:
                for i, w in enumerate(wl):
                    wp = (*p, "webhooks", i)
                    wm = ck.mapping(wp, w, allowed=("url", "timeout_s"), required=("url",))
                    if wm is None:
                        continue
                    url = _url(ck, (*wp, "url"), wm["url"]) if "url" in wm else None
                    timeout = self.num(wm, wp, "timeout_s", 5.0, positive=True)
                    if url is not None:
                        hooks.append(WebhookConfig(url, timeout))
        sinks: list[AlertSinkConfig] = []
        if m.get("sinks") is not None:
            sl = m["sinks"]
            if not isinstance(sl, list):
                ck.problem((*p, "sinks"), f"expected a list of sinks (kind: {' | '.join(ALERT_SINK_KINDS)})")
            else:
                names: dict[str, int] = {}
                for i, entry in enumerate(sl):
                    sink = self.alert_sink((*p, "sinks", i), entry)
                    if sink is None:
                        continue
                    if sink.name in names:
                        ck.problem(
                            (*p, "sinks", i),
                            f"sink name {sink.name!r} is already used by alerts.sinks[{names[sink.name]}] "
                            "(give each sink of the same kind a distinct name)",
                        )
                        continue
                    names[sink.name] = i
                    sinks.append(sink)
        d = AlertsConfig()
        return AlertsConfig(
            log=self.bool_(m, p, "log", True),
            webhooks=tuple(hooks),
            sinks=tuple(sinks),
            inhibit_window_s=self.num(m, p, "inhibit_window_s", d.inhibit_window_s, minimum=0),
            redeliver_every_s=self.num(m, p, "redeliver_every_s", d.redeliver_every_s, positive=True),
        )

    def alert_sink(self, p: DataPath, value: object) -> AlertSinkConfig | None:
        """One `alerts.sinks[]` entry: `kind` picks the keys allowed (and the one required)."""
        ck = self.ck
        if not isinstance(value, dict):
            kinds = " | ".join(ALERT_SINK_KINDS)
            ck.problem(p, f"expected a mapping with kind ({kinds}), got {type_name(value)}")
            return None
        if "kind" not in value:
            ck.problem(p, f"missing required key 'kind' ({' | '.join(ALERT_SINK_KINDS)})")
            return None
        kind = ck.choice((*p, "kind"), value["kind"], ALERT_SINK_KINDS)
        if kind is None:
            return None
        own = _ALERT_SINK_KEYS[kind]
        sm = ck.mapping(p, value, allowed=(*_ALERT_SINK_COMMON, *own), required=(own[0],))
        if sm is None or own[0] not in sm:
            return None
        d = AlertSinkConfig(kind, kind)
        name = kind
        if "name" in sm:
            name = ck.string((*p, "name"), sm["name"], pattern=ALERT_SINK_NAME_RE, what="sink name") or kind
        common: dict[str, Any] = {
            "timeout_s": self.num(sm, p, "timeout_s", d.timeout_s, positive=True, maximum=300),
            "max_attempts": self.int_(sm, p, "max_attempts", d.max_attempts, minimum=1, maximum=50),
            "budget_s": self.num(sm, p, "budget_s", d.budget_s, positive=True, maximum=3600),
        }
        if kind == "sns":
            arn = ck.string(
                (*p, "topic_arn"), sm["topic_arn"], pattern=SNS_TOPIC_ARN_RE, what="SNS topic ARN"
            )
            return AlertSinkConfig(kind, name, topic_arn=arn, **common) if arn else None
        if kind == "pagerduty":
            key = ck.string((*p, "routing_key"), sm["routing_key"])
            events = d.events_url
            if "events_url" in sm:
                events = _url(ck, (*p, "events_url"), sm["events_url"]) or events
            page_only = self.bool_(sm, p, "page_only", d.page_only)
            if key is None:
                return None
            return AlertSinkConfig(
                kind, name, routing_key=key, events_url=events, page_only=page_only, **common
            )
        url = _url(ck, (*p, own[0]), sm[own[0]])
        if url is None:
            return None
        if kind == "alertmanager":
            ttl = self.num(sm, p, "ttl_s", d.ttl_s, positive=True)
            return AlertSinkConfig(kind, name, url=url, ttl_s=ttl, **common)
        return AlertSinkConfig(kind, name, url=url, **common)

    def metrics_server(self, value: object) -> MetricsServerConfig:
        ck = self.ck
        p: DataPath = ("metrics_server",)
        m = _section(ck, p, value, ("address", "port"))
        d = MetricsServerConfig()
        address = d.address
        if "address" in m:
            address = ck.string((*p, "address"), m["address"]) or address
        port = d.port
        if "port" in m:
            port = (
                None if m["port"] is None else ck.integer((*p, "port"), m["port"], minimum=0, maximum=65535)
            )
        return MetricsServerConfig(address, port)

    def logging(self, value: object) -> LoggingConfig:
        ck = self.ck
        p: DataPath = ("logging",)
        m = _section(ck, p, value, ("format", "level"))
        fmt = ck.choice((*p, "format"), m["format"], LOG_FORMATS) if "format" in m else "auto"
        level = ck.choice((*p, "level"), m["level"], LOG_LEVELS) if "level" in m else "info"
        return LoggingConfig(fmt or "auto", level or "info")

    def ha(self, value: object) -> HaConfig:
        ck = self.ck
        p: DataPath = ("ha",)
        m = _section(ck, p, value, ("kind", "lease_s", "renew_every_s", "table", "path", "ledger_table"))
        d = HaConfig()
        kind = (ck.choice((*p, "kind"), m["kind"], HA_KINDS) or d.kind) if "kind" in m else d.kind
        lease_s = self.num(m, p, "lease_s", d.lease_s, positive=True)
        renew = self.num(m, p, "renew_every_s", d.renew_every_s, positive=True)
        if "renew_every_s" in m and renew >= lease_s:
            ck.problem((*p, "renew_every_s"), f"must be shorter than lease_s ({lease_s:g})")
        elif "renew_every_s" not in m:
            renew = min(renew, lease_s / 3)
        table = None
        if m.get("table") is not None:
            table = ck.string(
                (*p, "table"), m["table"], pattern=DYNAMODB_TABLE_RE, what="DynamoDB table name"
            )
        path = self.path((*p, "path"), m["path"]) if m.get("path") is not None else None
        if kind == "dynamodb" and table is None and "table" not in m:
            ck.problem(p, "kind dynamodb needs 'table' (the DynamoDB table holding the lease)")
        if kind != "dynamodb" and "table" in m:
            ck.problem((*p, "table"), f"only for kind dynamodb (kind is {kind})", key=True)
        if kind != "file" and "path" in m:
            ck.problem((*p, "path"), f"only for kind file (kind is {kind})", key=True)
        ledger = None
        if kind != "dynamodb" and "ledger_table" in m:
            ck.problem((*p, "ledger_table"), f"only for kind dynamodb (kind is {kind})", key=True)
        elif m.get("ledger_table") is not None:
            ledger = ck.string(
                (*p, "ledger_table"), m["ledger_table"], pattern=DYNAMODB_TABLE_RE, what="DynamoDB table name"
            )
            if ledger is not None and ledger == table:
                ck.problem((*p, "ledger_table"), "must differ from table (the ledger has a sort key)")
        elif kind == "dynamodb" and table is not None:
            ledger = f"{table}-actions"
            if not DYNAMODB_TABLE_RE.fullmatch(ledger):
                ck.problem((*p, "table"), "too long to derive ledger_table from it: set ledger_table")
        return HaConfig(kind, lease_s, renew, table, path, ledger)


TOP_KEYS = (
    "job",
    "aws",
    "sources",
    "policies",
    "mode",
    "incidents",
    "actuator",
    "journal",
    "alerts",
    "metrics_server",
    "logging",
    "ha",
)


def load_config(path: str | Path) -> Config:
    """Load and check the daemon config at `path`; raise `ConfigError` listing every problem."""
    p = Path(path)
    doc = load_yaml_file(p, str(path))
    problems: list[Problem] = []
    ck = Checker(doc, problems)
    base = p.resolve().parent
    loader = _Loader(ck, base)
    top = ck.mapping((), doc.data, allowed=TOP_KEYS, required=("job",)) if doc.data is not None else None
    if doc.data is None:
        ck.problem((), "empty config: 'job' (with name and log_group) is required")
    top = top or {}
    job = loader.job(top["job"]) if "job" in top else JobConfig("invalid", "invalid")
    mode = Mode.OBSERVE
    if "mode" in top:
        chosen = ck.choice(("mode",), top["mode"], [m.value for m in Mode])
        mode = Mode(chosen) if chosen else mode
    inc = _section(ck, ("incidents",), top.get("incidents"), ("settle_s",))
    journal_path = base / "ftsup.db"
    jm = _section(ck, ("journal",), top.get("journal"), ("path",))
    if "path" in jm:
        journal_path = loader.path(("journal", "path"), jm["path"]) or journal_path
    config = Config(
        job=job,
        aws=loader.aws(top.get("aws")),
        sources=loader.sources(top.get("sources")),
        policies=loader.policies(top.get("policies")),
        mode=mode,
        incidents=IncidentsConfig(loader.num(inc, ("incidents",), "settle_s", DEFAULT_SETTLE_S, minimum=0)),
        actuator=loader.actuator(top.get("actuator"), job.name),
        journal=JournalConfig(journal_path),
        alerts=loader.alerts(top.get("alerts")),
        metrics_server=loader.metrics_server(top.get("metrics_server")),
        logging=loader.logging(top.get("logging")),
        ha=loader.ha(top.get("ha")),
        source=p.resolve(),
    )
    if config.actuator.kind == "none" and config.mode is Mode.ACT:
        ck.problem(("mode",), "mode act needs an actuator; with actuator kind none ftsup can only observe")
    if problems:
        raise ConfigError(sorted(problems, key=Problem.sort_key))
    return config
