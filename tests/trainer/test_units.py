"""Fast, in-process tests of the trainer's building blocks (no torchrun, no network)."""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

import pytest
import torch

from trainer.checkpoint import COMMIT_MARKER, scan_checkpoints, step_dir
from trainer.config import parse_config, resolve_attempt
from trainer.data import synthetic_batch
from trainer.faults import FaultInjector, FaultRequest, write_fault_request, xid_kernel_line
from trainer.jsonlog import JsonLogger, json_float
from trainer.logship import KmsgTailer

STEP_RE = re.compile(r'"event": "step", "step": (\d+)')
RESUME_RE = re.compile(r'"event": "resume", "step": (\d+)')


def test_json_lines_have_contract_key_order_and_match_supervisor_regexes() -> None:
    buf = io.StringIO()
    log = JsonLogger("demo", "node-0", 3, 1, 2, stream=buf)
    log.emit("step", step=12, loss=json_float(float("nan")), step_time_s=0.05, tokens_per_s=2500.0)
    log.emit("resume", step=40, checkpoint="/x/step_00000040")
    step_line, resume_line = buf.getvalue().splitlines()
    rec = json.loads(step_line)
    assert list(rec)[:8] == ["ts", "job", "node", "rank", "local_rank", "attempt", "event", "step"]
    assert rec["loss"] == "nan" and rec["rank"] == 3 and rec["local_rank"] == 1 and rec["attempt"] == 2
    assert STEP_RE.search(step_line) and STEP_RE.search(step_line).group(1) == "12"  # type: ignore[union-attr]
    assert RESUME_RE.search(resume_line).group(1) == "40"  # type: ignore[union-attr]


def test_json_float() -> None:
    assert json_float(float("inf")) == "inf" and json_float(float("-inf")) == "-inf"
    assert json_float(1.234567891, 4) == 1.2346


def test_resolve_attempt_precedence() -> None:
    assert resolve_attempt({"FTSUP_ATTEMPT": "4", "TORCHELASTIC_RESTART_COUNT": "1"}) == 4
    assert resolve_attempt({"TORCHELASTIC_RESTART_COUNT": "1"}) == 1
    assert resolve_attempt({}) == 0


def test_parse_config_defaults_and_inject(tmp_path: Path) -> None:
    cfg = parse_config(["--run-dir", str(tmp_path), "--inject", "nan", "--inject-node", "node-1"])
    assert cfg.fault_dir == tmp_path / "faults" and cfg.checkpoint_dir == tmp_path / "checkpoints"
    assert cfg.ckpt_every == 10 and cfg.keep_checkpoints == 3 and cfg.collective_timeout_s == 20.0
    assert cfg.metrics and cfg.metrics_namespace == "ftsup/Trainer" and cfg.steps == 0
    assert cfg.inject is not None and cfg.inject.kind == "nan" and cfg.inject.rank is None
    with pytest.raises(SystemExit):
        parse_config(["--run-dir", str(tmp_path), "--inject", "meteor"])


def test_synthetic_batch_is_deterministic_per_step_and_rank() -> None:
    cpu = torch.device("cpu")
    a = synthetic_batch(7, 1, 4, 16, 1234, cpu)
    assert torch.equal(a["input_ids"], synthetic_batch(7, 1, 4, 16, 1234, cpu)["input_ids"])
    assert not torch.equal(a["input_ids"], synthetic_batch(7, 0, 4, 16, 1234, cpu)["input_ids"])
    assert torch.equal(a["input_ids"][:, 1:], a["labels"][:, :-1])


def test_fault_request_targeting() -> None:
    req = FaultRequest.from_dict({"id": "f1", "kind": "sigkill", "node": "node-1", "rank": 1, "at_step": 5})
    assert req.targets("node-1", 1) and not req.targets("node-1", 0) and not req.targets("node-0", 1)
    assert not req.due(4, 0) and req.due(5, 0) and req.due(9, 3)
    anywhere = FaultRequest("f2", "hang", "*", None, None, 1)
    assert anywhere.targets("node-7", 5) and anywhere.due(1, 1) and not anywhere.due(1, 0)
    # Xid faults take out the whole node regardless of the rank field.
    assert FaultRequest("f3", "xid79", "node-1", 1).targets("node-1", 2)
    for bad in ({"id": "../x", "kind": "nan", "node": "n"}, {"id": "x", "kind": "boom", "node": "n"}, []):
        with pytest.raises(ValueError):
            FaultRequest.from_dict(bad)


def test_fault_injector_fires_once_and_ignores_garbage(tmp_path: Path) -> None:
    fault_dir = tmp_path / "faults"
    write_fault_request(fault_dir, FaultRequest("bug-1", "code_bug", "node-1", 1, at_step=3))
    (fault_dir / "half-written.json").write_text('{"id": "x", "ki')
    log = JsonLogger("j", "node-1", 1, 0, 0, stream=io.StringIO())
    inj = FaultInjector(fault_dir, "node-1", 1, 0, 0, log, None)
    assert inj.due(2) is None
    req = inj.due(3)
    assert req is not None and req.id == "bug-1"
    assert inj.fire(req, 3, torch.nn.Linear(2, 2)) is True  # code_bug -> caller corrupts the batch
    assert (fault_dir / "bug-1.fired.node-1.1").exists()
    assert inj.due(4) is None
    # A restarted process (fresh injector) must not fire it again either.
    assert FaultInjector(fault_dir, "node-1", 1, 0, 1, log, None).due(10) is None
    # Other ranks are unaffected.
    assert FaultInjector(fault_dir, "node-1", 0, 0, 0, log, None).due(10) is None


def test_nan_fault_poisons_parameters(tmp_path: Path) -> None:
    model = torch.nn.Linear(4, 4)
    log = JsonLogger("j", "n", 0, 0, 0, stream=io.StringIO())
    inj = FaultInjector(tmp_path, "n", 0, 0, 0, log, None, FaultRequest("cli-nan", "nan", "*"))
    req = inj.due(1)
    assert req is not None and inj.fire(req, 1, model) is False
    assert torch.isnan(model(torch.ones(1, 4))).all()


def test_xid_kernel_lines_are_dmesg_formatted() -> None:
    line79 = xid_kernel_line(79, 4242)
    assert re.fullmatch(
        r"\[ *\d+\.\d{6}\] NVRM: Xid \(PCI:0000:3b:00\): 79, pid=4242, name=python, "
        r"GPU has fallen off the bus\.",
        line79,
    )
    line48 = xid_kernel_line(48, 7)
    assert line48.endswith(
        "NVRM: Xid (PCI:0000:3b:00): 48, pid=7, name=python, An uncorrectable double bit error (DBE) "
        "has been detected on GPU in the framebuffer at partition 0, subpartition 0."
    )


def test_scan_checkpoints_separates_committed(tmp_path: Path) -> None:
    for step, committed in ((10, True), (20, True), (30, False)):
        d = step_dir(tmp_path, step)
        d.mkdir()
        if committed:
            (d / COMMIT_MARKER).write_text("ok")
    (tmp_path / "not_a_step").mkdir()
    complete, incomplete = scan_checkpoints(tmp_path)
    assert [s for s, _ in complete] == [10, 20] and [s for s, _ in incomplete] == [30]
    assert scan_checkpoints(tmp_path / "missing") == ([], [])


def test_kmsg_tailer_ships_only_new_complete_lines(tmp_path: Path) -> None:
    kmsg = tmp_path / "kmsg.log"
    kmsg.write_text("old line before the agent started\n")
    got: list[str] = []
    tailer = KmsgTailer(kmsg, got.append, poll_s=0.05)
    tailer.start()
    with open(kmsg, "a") as f:
        f.write("[  1.000000] first\n[  2.000000] par")
        f.flush()
        time.sleep(0.3)
        f.write("tial\n")
    time.sleep(0.3)
    tailer.stop()
    assert got == ["[  1.000000] first", "[  2.000000] partial"]
    assert KmsgTailer(tmp_path / "new" / "kmsg", got.append) and (tmp_path / "new" / "kmsg").exists()
