"""`actuator.kind: slurm` in the config file: defaults, relative paths, every problem with file:line:col,
and the wiring in `daemon.build_actuator` (no Slurm needed: building runs no command)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from supervisor.act.slurm import SlurmActuator
from supervisor.config import load_config
from supervisor.daemon import aws_settings, build_actuator
from tests.test_config import problems

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "job.sbatch").write_text("#!/bin/bash\n")
    p = tmp_path / "ftsup.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_a_slurm_config_loads_with_defaults_and_resolved_paths(tmp_path: Path) -> None:
    (tmp_path / "nodes.txt").write_text("i-0abc ip-10-0-0-7\n")
    (tmp_path / "slurm.conf").write_text("")
    cfg = load_config(
        write(
            tmp_path,
            """\
            job: {name: llm, log_group: /g}
            mode: act
            actuator:
              kind: slurm
              slurm:
                script: job.sbatch
                script_args: [--ckpt-every, "5"]
                slurm_conf: slurm.conf
                env: {FTSUP_RUN_DIR: /fsx/run, FTSUP_NPROC_PER_NODE: 8}
                node_map: {trainer-a: node-0}
                instance_map_file: nodes.txt
                halt: hold
            """,
        )
    )
    s = cfg.actuator.slurm
    assert cfg.actuator.kind == "slurm"
    assert s.script == tmp_path / "job.sbatch" and s.slurm_conf == tmp_path / "slurm.conf"
    assert s.state_dir == tmp_path / "runs" / "llm" and s.job_id is None and s.halt == "hold"
    assert s.script_args == ("--ckpt-every", "5") and dict(s.env)["FTSUP_NPROC_PER_NODE"] == "8"
    assert dict(s.node_map) == {"trainer-a": "node-0"} and dict(s.instance_map) == {"i-0abc": "ip-10-0-0-7"}
    assert s.command_timeout_s == 30.0 and s.start_timeout_s == 600.0 and s.max_attempts == 4

    actuator = build_actuator(cfg, aws_settings(cfg), {"EXTRA": "1"})
    assert isinstance(actuator, SlurmActuator)
    assert actuator.spec.node_map.to_scheduler("trainer-a") == "node-0"
    assert actuator.spec.node_map.to_scheduler("i-0abc") == "ip-10-0-0-7"
    assert actuator.cli.environment()["SLURM_CONF"] == str(tmp_path / "slurm.conf")
    assert actuator.job_environment(0)["EXTRA"] == "1" and actuator.spec.halt == "hold"
    assert actuator.cli.history == []  # nothing ran


def test_every_slurm_problem_is_reported_with_its_position(tmp_path: Path) -> None:
    text = """\
    job: {name: llm, log_group: /g}
    actuator:
      kind: slurm
      slurm:
        script: missing.sbatch
        job_id: 0
        partition: "gpu partition"
        halt: reboot
        command_timeout_s: 0
        script_args: [--steps, 10]
        env: {"1BAD": x, OK: [1]}
        node_map: {trainer-a: "node 0"}
        instance_map_file: nowhere.json
        colour: blue
    """
    assert problems(write(tmp_path, text), tmp_path) == [
        "ftsup.yaml:5:5 actuator.slurm: give exactly one of script (submit it), job_id or job_name (adopt); "
        "got script and job_id",
        "ftsup.yaml:5:13 actuator.slurm.script: no such file: missing.sbatch",
        "ftsup.yaml:6:13 actuator.slurm.job_id: must be >= 1, got 0",
        "ftsup.yaml:7:16 actuator.slurm.partition: invalid partition name 'gpu partition' "
        "(must match [A-Za-z0-9][A-Za-z0-9._-]{0,63})",
        "ftsup.yaml:8:11 actuator.slurm.halt: invalid value 'reboot' (expected one of: cancel | hold)",
        "ftsup.yaml:9:24 actuator.slurm.command_timeout_s: must be > 0, got 0",
        'ftsup.yaml:10:28 actuator.slurm.script_args[1]: expected a string, got 10 (quote it: "10")',
        "ftsup.yaml:11:11 actuator.slurm.env.1BAD: invalid key '1BAD' "
        "(must match [A-Za-z_][A-Za-z0-9_]{0,127})",
        "ftsup.yaml:11:26 actuator.slurm.env.OK: expected a string, got a list",
        "ftsup.yaml:12:27 actuator.slurm.node_map.trainer-a: invalid value 'node 0' "
        "(must match [A-Za-z0-9][A-Za-z0-9._-]{0,62})",
        "ftsup.yaml:13:24 actuator.slurm.instance_map_file: no such file: nowhere.json",
        "ftsup.yaml:14:5 actuator.slurm.colour: unknown key 'colour' (expected one of: bin_dir, "
        "command_timeout_s, env, halt, instance_map_file, job_id, job_name, max_attempts, node_map, "
        "partition, retry_budget_s, sbatch_args, script, script_args, slurm_conf, start_timeout_s, "
        "state_dir, stop_timeout_s)",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "job: {name: a, log_group: x}\nactuator: {kind: slurm}\n",
            [
                "ftsup.yaml:2:11 actuator: kind slurm needs an actuator.slurm section "
                "(script, job_id or job_name)"
            ],
        ),
        (
            "job: {name: a, log_group: x}\nactuator: {kind: slurm, slurm: {}}\n",
            [
                "ftsup.yaml:2:32 actuator.slurm: give exactly one of script (submit it), job_id or job_name "
                "(adopt); got none of them"
            ],
        ),
        (
            "job: {name: a, log_group: x}\nactuator: {kind: local, slurm: {job_id: 5}}\n",
            ["ftsup.yaml:2:32 actuator.slurm: actuator.slurm is only read with kind slurm (kind is 'local')"],
        ),
        (
            "job: {name: a, log_group: x}\nactuator: {kind: slurm, slurm: {job_name: 'two words'}}\n",
            [
                "ftsup.yaml:2:43 actuator.slurm.job_name: invalid Slurm job name 'two words' "
                "(must match [A-Za-z0-9][A-Za-z0-9._-]{0,127})"
            ],
        ),
    ],
)
def test_small_broken_slurm_configs(tmp_path: Path, text: str, expected: list[str]) -> None:
    assert problems(write(tmp_path, text), tmp_path) == expected


def test_an_instance_map_file_that_says_nothing_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / "nodes.json").write_text("{}")
    text = "job: {name: a, log_group: x}\n"
    text += "actuator: {kind: slurm, slurm: {job_id: 5, instance_map_file: nodes.json}}\n"
    assert problems(write(tmp_path, text), tmp_path) == [
        "ftsup.yaml:2:63 actuator.slurm.instance_map_file: nodes.json: no instance-id -> node-name pair found"
    ]


def test_the_shipped_slurm_example_config_loads() -> None:
    cfg = load_config(REPO / "deploy" / "slurm" / "ftsup.slurm.example.yaml")
    assert cfg.actuator.kind == "slurm"
    assert cfg.actuator.slurm.script == REPO / "deploy" / "slurm" / "ftsup-train.sbatch"
    assert "--requeue" in cfg.actuator.slurm.script.read_text()
