"""The daemon's configuration file: strict loading into frozen dataclasses.

`load_config(path)` reads one YAML file and checks it as strictly as the policies: unknown keys,
wrong types, out-of-range numbers, invalid names and URLs are all reported together in one
`ConfigError` whose problems name ``file:line:col path``. Every key is optional except
``job.name`` and ``job.log_group``. Relative paths (``policies``, ``journal.path``,
``actuator.local.run_dir``) are resolved against the config file's directory; the loaded `Config`
holds absolute paths.

Example (all values shown are the defaults unless marked)::

    job:
      name: demo                                  # required
      log_group: /ftsup/jobs/demo                 # required
      metrics_namespace: ftsup/Trainer
      progress:                                   # RE2, with a named group `step`; null disables
        step:   '"event": "step", "step": (?P<step>\\d+)'
        resume: '"event": "resume", "step": (?P<step>\\d+)'
    aws: {region: us-east-1, endpoint_url: null, connect_timeout_s: 3.0, read_timeout_s: 10.0,
          max_attempts: 4, retry_budget_s: 20.0}
    sources:
      logs:    {enabled: true, poll_interval_s: 2.0, overlap_s: 30.0, max_pages_per_poll: 50}
      metrics: {enabled: true, poll_interval_s: 5.0, period_s: 1, lookback_s: 60.0, stats: {...}}
    policies: [policies]                          # default: the shipped policies/ directory
    mode: observe                                 # observe | act
    incidents: {settle_s: 5.0}
    actuator:
      kind: local                                 # slurm | kubernetes | aws-asg | hyperpod: not yet
      local: {nodes: [node-0, node-1], spares: [], nproc_per_node: 1, run_dir: runs/<job.name>,
              stop_grace_s: 10.0, trainer_args: [], python: null}
    journal: {path: ftsup.db}
    alerts: {log: true, webhooks: [{url: https://..., timeout_s: 5.0}]}
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

from supervisor.classify.policy import METRIC_RE, re2_options
from supervisor.errors import ConfigError, Problem
from supervisor.vocabulary import Mode
from supervisor.yamlpos import Checker, DataPath, load_yaml_file

NODE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
JOB_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
LOG_GROUP_RE = re.compile(r"[A-Za-z0-9._/#-]{1,512}")
REGION_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
STAT_RE = re.compile(r"Average|Sum|Minimum|Maximum|SampleCount|p\d{1,2}(?:\.\d+)?")

ACTUATOR_KINDS = ("local", "none")
FUTURE_ACTUATOR_KINDS = ("slurm", "kubernetes", "aws-asg", "hyperpod")
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
    }
)
DEFAULT_STEP_PATTERN = r'"event": "step", "step": (?P<step>\d+)'
DEFAULT_RESUME_PATTERN = r'"event": "resume", "step": (?P<step>\d+)'


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
    """RE2 patterns with a named group ``step`` that read training progress from log lines."""

    step: str | None = DEFAULT_STEP_PATTERN
    resume: str | None = DEFAULT_RESUME_PATTERN


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


@dataclass(frozen=True, slots=True)
class LogsSourceConfig:
    enabled: bool = True
    poll_interval_s: float = 2.0
    overlap_s: float = 30.0
    max_pages_per_poll: int = 50


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


@dataclass(frozen=True, slots=True)
class IncidentsConfig:
    settle_s: float = 5.0


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
class ActuatorConfig:
    kind: str = "local"
    local: LocalActuatorConfig = field(default_factory=LocalActuatorConfig)
    none: ExternalJobConfig = field(default_factory=ExternalJobConfig)


@dataclass(frozen=True, slots=True)
class JournalConfig:
    path: Path = Path("ftsup.db")


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    url: str
    timeout_s: float = 5.0


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    log: bool = True
    webhooks: tuple[WebhookConfig, ...] = ()


@dataclass(frozen=True, slots=True)
class MetricsServerConfig:
    """`port` None = no metrics server; 0 = any free port."""

    address: str = "127.0.0.1"
    port: int | None = 9464


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
        )
        m = _section(ck, p, value, keys)
        region = d.region
        if "region" in m:
            region = ck.string((*p, "region"), m["region"], pattern=REGION_RE, what="region") or region
        endpoint = None
        if m.get("endpoint_url") is not None:
            endpoint = _url(ck, (*p, "endpoint_url"), m["endpoint_url"])
        return AwsConfig(
            region=region,
            endpoint_url=endpoint,
            connect_timeout_s=self.num(m, p, "connect_timeout_s", d.connect_timeout_s, positive=True),
            read_timeout_s=self.num(m, p, "read_timeout_s", d.read_timeout_s, positive=True),
            max_attempts=self.int_(m, p, "max_attempts", d.max_attempts, minimum=1, maximum=100),
            retry_budget_s=self.num(m, p, "retry_budget_s", d.retry_budget_s, positive=True),
        )

    def sources(self, value: object) -> SourcesConfig:
        ck = self.ck
        p: DataPath = ("sources",)
        m = _section(ck, p, value, ("logs", "metrics"))
        lp = (*p, "logs")
        lm = _section(
            ck, lp, m.get("logs"), ("enabled", "poll_interval_s", "overlap_s", "max_pages_per_poll")
        )
        ld = LogsSourceConfig()
        logs = LogsSourceConfig(
            enabled=self.bool_(lm, lp, "enabled", ld.enabled),
            poll_interval_s=self.num(lm, lp, "poll_interval_s", ld.poll_interval_s, positive=True),
            overlap_s=self.num(lm, lp, "overlap_s", ld.overlap_s, minimum=0),
            max_pages_per_poll=self.int_(lm, lp, "max_pages_per_poll", ld.max_pages_per_poll, minimum=1),
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
        ck = self.ck
        p: DataPath = ("actuator",)
        m = _section(ck, p, value, ("kind", "local", "none"))
        kind = "local"
        if "kind" in m:
            k = m["kind"]
            if isinstance(k, str) and k in FUTURE_ACTUATOR_KINDS:
                ck.problem(
                    (*p, "kind"),
                    f"actuator kind {k!r} is not available yet (available: {', '.join(ACTUATOR_KINDS)})",
                )
            else:
                kind = ck.choice((*p, "kind"), k, ACTUATOR_KINDS) or kind
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
            ck.problem(np, f"actuator.none is only read with kind none (kind is {kind!r})")
        return ActuatorConfig(kind, local, external)

    def alerts(self, value: object) -> AlertsConfig:
        ck = self.ck
        p: DataPath = ("alerts",)
        m = _section(ck, p, value, ("log", "webhooks"))
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
        return AlertsConfig(log=self.bool_(m, p, "log", True), webhooks=tuple(hooks))

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
        incidents=IncidentsConfig(loader.num(inc, ("incidents",), "settle_s", 5.0, minimum=0)),
        actuator=loader.actuator(top.get("actuator"), job.name),
        journal=JournalConfig(journal_path),
        alerts=loader.alerts(top.get("alerts")),
        metrics_server=loader.metrics_server(top.get("metrics_server")),
        logging=loader.logging(top.get("logging")),
        source=p.resolve(),
    )
    if config.actuator.kind == "none" and config.mode is Mode.ACT:
        ck.problem(("mode",), "mode act needs an actuator; with actuator kind none ftsup can only observe")
    if problems:
        raise ConfigError(sorted(problems, key=Problem.sort_key))
    return config
