"""The daemon config loader: defaults, relative paths, and every problem with file:line:col."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from supervisor.config import (
    DEFAULT_STEP_PATTERN,
    Config,
    MetricsServerConfig,
    default_policy_dir,
    load_config,
)
from supervisor.errors import ConfigError
from supervisor.vocabulary import Mode


def write(tmp_path: Path, text: str, name: str = "ftsup.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def problems(path: Path, tmp_path: Path) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    return [str(p).replace(str(tmp_path) + "/", "") for p in ei.value.problems]


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "job: {name: demo, log_group: /ftsup/jobs/demo}\n"))
    assert isinstance(cfg, Config)
    assert cfg.job.name == "demo" and cfg.job.log_group == "/ftsup/jobs/demo"
    assert cfg.job.metrics_namespace == "ftsup/Trainer" and cfg.job.progress.step == DEFAULT_STEP_PATTERN
    assert cfg.mode is Mode.OBSERVE
    assert cfg.policies == (default_policy_dir(),)
    assert cfg.journal.path == tmp_path / "ftsup.db"
    assert cfg.actuator.kind == "local" and cfg.actuator.local.run_dir == tmp_path / "runs" / "demo"
    assert cfg.actuator.local.nodes == ("node-0", "node-1") and cfg.actuator.local.python is None
    assert cfg.metrics_server == MetricsServerConfig("127.0.0.1", 9464)
    assert cfg.sources.metrics.stats["step"] == "Maximum" and cfg.sources.logs.overlap_s == 30.0
    assert cfg.aws.max_attempts == 4 and cfg.aws.endpoint_url is None
    assert cfg.logging.format == "auto" and cfg.incidents.settle_s == 5.0
    assert default_policy_dir().is_dir()


def test_full_config(tmp_path: Path) -> None:
    (tmp_path / "site-policies").mkdir()
    text = """\
    job:
      name: demo
      log_group: /ftsup/jobs/demo
      metrics_namespace: ftsup/Trainer
      progress:
        step:   '"event": "step", "step": (?P<step>\\d+)'
        resume: null
    aws: {region: us-west-2, endpoint_url: "http://127.0.0.1:5000", connect_timeout_s: 1, max_attempts: 2}
    sources:
      logs:    {enabled: true, poll_interval_s: 1.0, overlap_s: 10, max_pages_per_poll: 5}
      metrics: {enabled: false, period_s: 60, stats: {step: Maximum, loss: p99}}
    policies: [site-policies]
    mode: act
    incidents: {settle_s: 2}
    actuator:
      kind: local
      local: {nodes: [node-0, node-1], spares: [node-2], nproc_per_node: 2, run_dir: /tmp/run,
              stop_grace_s: 3, trainer_args: ["--ckpt-every", "7"], python: /usr/bin/python3}
    journal: {path: state/ftsup.db}
    alerts: {log: false, webhooks: [{url: "https://hooks.example.com/x", timeout_s: 2}]}
    metrics_server: {address: 0.0.0.0, port: null}
    logging: {format: json, level: debug}
    """
    cfg = load_config(write(tmp_path, text))
    assert cfg.job.progress.resume is None
    assert cfg.aws.region == "us-west-2" and cfg.aws.endpoint_url == "http://127.0.0.1:5000"
    assert cfg.sources.metrics.enabled is False and dict(cfg.sources.metrics.stats) == {
        "step": "Maximum",
        "loss": "p99",
    }
    assert cfg.policies == (tmp_path / "site-policies",)
    assert cfg.mode is Mode.ACT and cfg.incidents.settle_s == 2.0
    local = cfg.actuator.local
    assert local.spares == ("node-2",) and local.nproc_per_node == 2 and local.run_dir == Path("/tmp/run")
    assert local.python == "/usr/bin/python3" and cfg.trainer_checkpoint_every() == 7
    assert cfg.journal.path == tmp_path / "state" / "ftsup.db"
    assert cfg.alerts.log is False and cfg.alerts.webhooks[0].url == "https://hooks.example.com/x"
    assert cfg.metrics_server.port is None and cfg.logging.level == "debug"
    over = cfg.with_overrides(run_dir=tmp_path / "r", journal_path=tmp_path / "j.db", log_group="/g")
    assert over.actuator.local.run_dir == tmp_path / "r" and over.journal.path == tmp_path / "j.db"
    assert over.job.log_group == "/g" and cfg.job.log_group == "/ftsup/jobs/demo"


def test_every_problem_is_reported_with_its_position(tmp_path: Path) -> None:
    text = """\
    job:
      name: demo
      progress: {step: '(\\d+)', resume: '(?=x)'}
    aws: {endpoint_url: "ftp://x", max_attempts: true}
    sources:
      metrics: {period_s: 7, stats: {step: Median}}
    mode: watch
    actuator:
      kind: slurm
      local: {nodes: [node-0, "bad name"], spares: [node-0], trainer_args: [--ckpt-every, 10]}
    alerts: {webhooks: [{url: "http://", timeout_s: 0}]}
    metrics_server: {port: 70000}
    logging: {format: xml}
    policies: [nowhere]
    extra: 1
    """
    got = problems(write(tmp_path, text), tmp_path)
    assert got == [
        "ftsup.yaml:2:3 job: missing required key 'log_group'",
        "ftsup.yaml:3:20 job.progress.step: pattern needs a named group 'step', e.g. (?P<step>\\d+)",
        "ftsup.yaml:3:37 job.progress.resume: lookaround is not supported (RE2 syntax): (?=",
        "ftsup.yaml:4:21 aws.endpoint_url: invalid URL 'ftp://x' (expected http:// or https:// with a host)",
        "ftsup.yaml:4:46 aws.max_attempts: expected an integer, got a boolean (true)",
        "ftsup.yaml:6:23 sources.metrics.period_s: must be 1, 5, 10, 30 or a multiple of 60 "
        "(CloudWatch periods), got 7",
        "ftsup.yaml:6:40 sources.metrics.stats.step: invalid statistic 'Median' "
        "(must match Average|Sum|Minimum|Maximum|SampleCount|p\\d{1,2}(?:\\.\\d+)?)",
        "ftsup.yaml:7:7 mode: invalid value 'watch' (expected one of: observe | act)",
        "ftsup.yaml:9:9 actuator.kind: actuator kind 'slurm' is not available yet (available: local, none)",
        "ftsup.yaml:10:27 actuator.local.nodes[1]: invalid node name 'bad name' "
        "(must match [A-Za-z0-9][A-Za-z0-9._-]{0,62})",
        "ftsup.yaml:10:49 actuator.local.spares[0]: node 'node-0' is listed both in nodes and in spares",
        'ftsup.yaml:10:87 actuator.local.trainer_args[1]: expected a string, got 10 (quote it: "10")',
        "ftsup.yaml:11:27 alerts.webhooks[0].url: invalid URL 'http://' "
        "(expected http:// or https:// with a host)",
        "ftsup.yaml:11:49 alerts.webhooks[0].timeout_s: must be > 0, got 0",
        "ftsup.yaml:12:24 metrics_server.port: must be <= 65535, got 70000",
        "ftsup.yaml:13:19 logging.format: invalid value 'xml' (expected one of: auto | json | console)",
        "ftsup.yaml:14:12 policies[0]: no such file or directory: nowhere",
        "ftsup.yaml:15:1 extra: unknown key 'extra' (expected one of: actuator, alerts, aws, incidents, job, "
        "journal, logging, metrics_server, mode, policies, sources)",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ["ftsup.yaml:1:1: empty config: 'job' (with name and log_group) is required"]),
        ("- a\n", ["ftsup.yaml:1:1: expected a mapping, got a list"]),
        (
            "job: {name: 'bad/name', log_group: x}\nactuator: {kind: kubernetes}\n",
            [
                "ftsup.yaml:1:13 job.name: invalid job name 'bad/name' "
                "(must match [A-Za-z0-9][A-Za-z0-9._-]{0,127})",
                "ftsup.yaml:2:18 actuator.kind: actuator kind 'kubernetes' is not available yet "
                "(available: local, none)",
            ],
        ),
        (
            "job: {name: a, log_group: x}\nactuator: {kind: docker, local: {nodes: [], nproc_per_node: 0}}\n",
            [
                "ftsup.yaml:2:18 actuator.kind: invalid value 'docker' (expected one of: local | none)",
                "ftsup.yaml:2:41 actuator.local.nodes: needs at least one node",
                "ftsup.yaml:2:61 actuator.local.nproc_per_node: must be >= 1, got 0",
            ],
        ),
        (
            "job: {name: a, log_group: x}\njob: {name: b, log_group: y}\n",
            ["ftsup.yaml:2:1 job: duplicate key 'job' (first at line 1, col 1)"],
        ),
    ],
)
def test_small_broken_configs(tmp_path: Path, text: str, expected: list[str]) -> None:
    assert problems(write(tmp_path, text), tmp_path) == expected


def test_shipped_demo_config_loads() -> None:
    demo = Path(__file__).resolve().parent.parent / "supervisor" / "defaults" / "demo.yaml"
    if not demo.exists():
        pytest.skip("no demo config")
    cfg = load_config(demo)
    assert cfg.actuator.local.spares and cfg.trainer_checkpoint_every() >= 1
