"""The daemon config loader: defaults, relative paths, and every problem with file:line:col."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping
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
    assert cfg.logging.format == "auto" and cfg.incidents.settle_s == 1.5
    assert cfg.sources.logs.poll_interval_s == 1.0
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
      kind: hyperpod
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
        "ftsup.yaml:9:3 actuator: kind hyperpod needs an actuator.hyperpod section "
        "(cluster: the HyperPod cluster)",
        "ftsup.yaml:9:3 actuator: kind hyperpod replaces or reboots nodes; name the actuator that restarts "
        "the job in actuator.job (slurm | kubernetes | local)",
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
        "ftsup.yaml:15:1 extra: unknown key 'extra' (expected one of: actuator, alerts, aws, ha, incidents, "
        "job, journal, logging, metrics_server, mode, policies, sources)",
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
                "ftsup.yaml:2:11 actuator: kind kubernetes needs an actuator.kubernetes section "
                "(kind and name: the JobSet or PyTorchJob)",
            ],
        ),
        (
            "job: {name: a, log_group: x}\nactuator: {kind: docker, local: {nodes: [], nproc_per_node: 0}}\n",
            [
                "ftsup.yaml:2:18 actuator.kind: invalid value 'docker' "
                "(expected one of: slurm | kubernetes | aws-asg | hyperpod | local | none)",
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


# ----------------------------------------------------------------------------- every actuator kind

REPO = Path(__file__).resolve().parent.parent
JOB = "job: {name: llm, log_group: /g}\n"

# One minimal, valid `actuator` section per kind.
KINDS = {
    "local": "actuator: {kind: local, local: {nodes: [a, b], spares: [c]}}\n",
    "none": "actuator: {kind: none, none: {nodes: [a, b]}}\n",
    "slurm": "actuator: {kind: slurm, slurm: {job_id: 42}}\n",
    "kubernetes": "actuator: {kind: kubernetes, kubernetes: {kind: jobset, name: llm}}\n",
    "aws-asg": "actuator: {kind: aws-asg, job: slurm, slurm: {job_name: llm}, aws_asg: {group: g}}\n",
    "hyperpod": "actuator: {kind: hyperpod, job: kubernetes, kubernetes: {kind: pytorchjob, name: llm},\n"
    "           hyperpod: {via: labels}}\n",
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_actuator_kind_loads(tmp_path: Path, kind: str) -> None:
    cfg = load_config(write(tmp_path, JOB + KINDS[kind]))
    act = cfg.actuator
    assert act.kind == kind
    expected_job = {"aws-asg": "slurm", "hyperpod": "kubernetes"}.get(kind, kind)
    assert act.job_kind == expected_job
    assert act.job == (expected_job if kind in ("aws-asg", "hyperpod") else None)
    assert bool(act.aws_asg) is (kind == "aws-asg") and bool(act.hyperpod) is (kind == "hyperpod")
    assert bool(act.kubernetes) is (expected_job == "kubernetes")
    if expected_job == "slurm":
        assert act.slurm.job_id == 42 or act.slurm.job_name == "llm"


def test_backend_blocks_are_kept_read_only_with_paths_resolved(tmp_path: Path) -> None:
    (tmp_path / "kube").mkdir()
    (tmp_path / "kube" / "config").write_text("{}\n")
    text = """\
    job: {name: llm, log_group: /g}
    actuator:
      kind: hyperpod
      job: kubernetes
      kubernetes: {kind: jobset, name: llm, kubeconfig: kube/config, context: prod}
      hyperpod:
        cluster: c
        approval_dir: approvals
        node_map: {ip-10-1-2-3.ec2.internal: i-0123456789abcdef0}
      node_ops: {gpu-xid-48-dbe: reboot, gpu-fallen-off-bus: replace}
    """
    act = load_config(write(tmp_path, text)).actuator
    assert act.kubernetes["kubeconfig"] == str(tmp_path / "kube" / "config")
    assert act.hyperpod["approval_dir"] == str(tmp_path / "approvals")
    node_map = act.hyperpod["node_map"]
    assert isinstance(node_map, Mapping) and dict(node_map) == {
        "ip-10-1-2-3.ec2.internal": "i-0123456789abcdef0"
    }
    assert dict(act.node_ops) == {"gpu-xid-48-dbe": "reboot", "gpu-fallen-off-bus": "replace"}
    with pytest.raises(TypeError):
        act.hyperpod["cluster"] = "other"  # type: ignore[index]


def test_every_backend_problem_is_reported_with_its_position(tmp_path: Path) -> None:
    """The backends' own readers judge their blocks; each problem lands on its key or value."""
    text = """\
    job: {name: llm, log_group: /g}
    mode: act
    actuator:
      kind: aws-asg
      job: kubernetes
      kubernetes:
        kind: deployment
        restart: reboot
        grace_period_s: -1
        kubeconfig: nowhere.yaml
      aws_asg:
        method: nuke
        node_map: {ip-10-0-1-2.ec2.internal: i-zzz}
        max_replaces: -1
        colour: blue
      hyperpod: {cluster: c}
      slurm: {job_id: 3}
      node_ops: {Bad: reboot, gpu-xid-48-dbe: wipe}
    """
    assert problems(write(tmp_path, text), tmp_path) == [
        "ftsup.yaml:7:5 actuator.kubernetes: missing required key 'name'",
        "ftsup.yaml:7:11 actuator.kubernetes.kind: must be one of jobset, pytorchjob, got 'deployment'",
        "ftsup.yaml:8:14 actuator.kubernetes.restart: must be one of delete-pods, suspend, got 'reboot'",
        "ftsup.yaml:9:21 actuator.kubernetes.grace_period_s: must be >= 0, got -1",
        "ftsup.yaml:10:17 actuator.kubernetes.kubeconfig: no such file: nowhere.yaml",
        "ftsup.yaml:12:5 actuator.aws_asg: missing required key 'group'",
        "ftsup.yaml:12:13 actuator.aws_asg.method: must be one of unhealthy, standby, got 'nuke'",
        "ftsup.yaml:13:42 actuator.aws_asg.node_map.ip-10-0-1-2.ec2.internal: "
        "must be an instance id (i-...), got 'i-zzz'",
        "ftsup.yaml:14:19 actuator.aws_asg.max_replaces: must be >= 0, got -1",
        "ftsup.yaml:15:5 actuator.aws_asg.colour: unknown key 'colour' (expected one of: approval_dir, "
        "group, lifecycle_hook, lifecycle_wait_s, lookup, max_reboots, max_replaces, method, node_map, "
        "respect_grace_period, tag_key, window_s)",
        "ftsup.yaml:16:13 actuator.hyperpod: actuator.hyperpod is only read with kind hyperpod "
        "(kind is 'aws-asg')",
        "ftsup.yaml:17:10 actuator.slurm: actuator.slurm is only read with kind slurm or job slurm "
        "(kind is 'aws-asg', job is 'kubernetes')",
        "ftsup.yaml:18:14 actuator.node_ops.Bad: invalid rule name 'Bad' (must match [a-z0-9][a-z0-9._-]*)",
        "ftsup.yaml:18:43 actuator.node_ops.gpu-xid-48-dbe: invalid value 'wipe' "
        "(expected one of: replace | reboot)",
    ]


@pytest.mark.parametrize(
    ("actuator", "expected"),
    [
        (
            "{kind: aws-asg, aws_asg: {group: g}}",
            [
                "ftsup.yaml:2:11 actuator: kind aws-asg replaces or reboots nodes; name the actuator that "
                "restarts the job in actuator.job (slurm | kubernetes | local)"
            ],
        ),
        (  # `none` watches only: it can restart nothing, so no node would ever be replaced
            "{kind: hyperpod, job: none, hyperpod: {cluster: c}, none: {nodes: [a]}}",
            [
                "ftsup.yaml:2:33 actuator.job: invalid value 'none' "
                "(expected one of: slurm | kubernetes | local)",
                "ftsup.yaml:2:69 actuator.none: actuator.none is only read with kind none "
                "(kind is 'hyperpod')",
            ],
        ),
        (
            "{kind: hyperpod, job: slurm, hyperpod: {cluster: c}}",
            [
                "ftsup.yaml:2:11 actuator: job slurm needs an actuator.slurm section "
                "(script, job_id or job_name)"
            ],
        ),
        (
            "{kind: aws-asg, job: kubernetes, aws_asg: [g]}",
            [
                "ftsup.yaml:2:11 actuator: job kubernetes needs an actuator.kubernetes section "
                "(kind and name: the JobSet or PyTorchJob)",
                "ftsup.yaml:2:53 actuator.aws_asg: expected a mapping, got a list",
            ],
        ),
        (
            "{kind: slurm, job: local, slurm: {job_id: 1}, node_ops: {x: reboot}}",
            [
                "ftsup.yaml:2:30 actuator.job: actuator.job is only read with kind aws-asg or hyperpod "
                "(kind is 'slurm')",
                "ftsup.yaml:2:67 actuator.node_ops: actuator.node_ops is only read with kind aws-asg or "
                "hyperpod (kind is 'slurm')",
            ],
        ),
        (
            "{kind: local, kubernetes: {kind: jobset, name: x}, aws_asg: {group: g}}",
            [
                "ftsup.yaml:2:37 actuator.kubernetes: actuator.kubernetes is only read with kind kubernetes "
                "(kind is 'local')",
                "ftsup.yaml:2:71 actuator.aws_asg: actuator.aws_asg is only read with kind aws-asg "
                "(kind is 'local')",
            ],
        ),
        (
            "{kind: hyperpod, job: local, hyperpod: {via: api, kubeconfig: k, require_approval: 1}}",
            [
                "ftsup.yaml:2:50 actuator.hyperpod: missing required key 'cluster'",
                "ftsup.yaml:2:73 actuator.hyperpod.kubeconfig: no such file: k",
                "ftsup.yaml:2:73 actuator.hyperpod.kubeconfig: only read with via: labels",
                "ftsup.yaml:2:94 actuator.hyperpod.require_approval: must be true or false, got 1",
            ],
        ),
    ],
)
def test_small_broken_actuator_sections(tmp_path: Path, actuator: str, expected: list[str]) -> None:
    assert problems(write(tmp_path, f"{JOB}actuator: {actuator}\n"), tmp_path) == expected


def test_a_bad_job_actuator_leaves_its_sections_unjudged(tmp_path: Path) -> None:
    """With `job` unreadable, ftsup cannot tell which sections it reads: it names only the job."""
    text = f"{JOB}actuator: {{kind: aws-asg, job: [slurm], aws_asg: {{group: g}}, slurm: {{job_id: 1}}}}\n"
    assert problems(write(tmp_path, text), tmp_path) == [
        "ftsup.yaml:2:32 actuator.job: invalid value a list (expected one of: slurm | kubernetes | local)"
    ]


# ----------------------------------------------------------------------------- the shipped examples

EXAMPLES = sorted((REPO / "deploy" / "examples").glob("*.yaml"))


def test_there_is_an_example_for_every_kind() -> None:
    from supervisor.config import ACTUATOR_KINDS

    names = {p.stem for p in EXAMPLES}
    assert set(ACTUATOR_KINDS) <= names, f"no example for {set(ACTUATOR_KINDS) - names}"


@pytest.mark.parametrize(
    "path",
    [
        *EXAMPLES,
        REPO / "deploy" / "ftsup.example.yaml",
        REPO / "deploy" / "slurm" / "ftsup.slurm.example.yaml",
    ],
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_ftsup_config_check_accepts_the_example(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from supervisor.cli import main

    assert main(["config", "check", str(path)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert out.startswith(f"ok: {path}")
    cfg = load_config(path)
    if path.parent.name == "examples":
        assert cfg.actuator.kind == path.stem.removesuffix("-eks")


def test_every_actuator_example_in_the_readme_loads(tmp_path: Path) -> None:
    """The `actuator:` snippets of README "Actuators: where ftsup acts", each under a minimal job."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Actuators: where ftsup acts", 1)[1].split("\n## ", 1)[0]
    snippets = [s for s in re.findall(r"```yaml\n(.*?)```", section, re.S) if s.startswith("actuator:")]
    kinds = set()
    (tmp_path / "slurm").mkdir()
    (tmp_path / "slurm" / "ftsup-train.sbatch").write_text("#!/bin/bash\n")  # ../slurm/... from examples/
    (tmp_path / "examples").mkdir()
    for i, snippet in enumerate(snippets):
        path = tmp_path / "examples" / f"readme-{i}.yaml"
        path.write_text(JOB + snippet)
        kinds.add(load_config(path).actuator.kind)
    assert kinds == {"slurm", "kubernetes", "aws-asg", "hyperpod", "local", "none"}
