"""Offline classification of log windows: one verdict per window, same ordering as the daemon."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from supervisor.classify.matcher import LogClassifier
from supervisor.classify.offline import WindowVerdict, classify_jsonl, classify_window
from supervisor.classify.policy import PolicySet, load_policies
from supervisor.config import default_policy_dir

FAULT_LOGS = Path(__file__).parent / "data" / "fault_logs"


@pytest.fixture(scope="module")
def policy() -> PolicySet:
    return load_policies([default_policy_dir()])


@pytest.fixture(scope="module")
def classifier(policy: PolicySet) -> LogClassifier:
    return LogClassifier(policy)


XID = "[ 5123.456789] NVRM: Xid (PCI:0000:3b:00): 79, pid=812, name=python, GPU has fallen off the bus."
GLOO = (
    "[rank0]: RuntimeError: [/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] "
    "Timed out waiting 20000ms for recv operation to complete"
)
SIGTERM = (
    "W1128 04:33:20.880000 8746 torch/distributed/elastic/multiprocessing/api.py:1028] "
    "Sending process 8803 closing signal SIGTERM"
)


def test_hardware_cause_beats_earlier_symptoms(classifier: LogClassifier) -> None:
    lines = ["step 1 ok", GLOO, SIGTERM, XID, "RuntimeError: CUDA error: unspecified launch failure"]
    v = classify_window(lines, classifier, window_id="w1")
    assert v == WindowVerdict("w1", "cordon_and_restart", "node", False, "gpu-fallen-off-bus", 3)


def test_symptoms_alone_mean_restart(classifier: LogClassifier) -> None:
    v = classify_window([SIGTERM, GLOO], classifier)
    assert (v.action, v.scope, v.recoverable, v.rule, v.root_cause_line) == (
        "restart",
        "job",
        True,
        "gloo-timeout",
        1,
    )


def test_noise_only_or_nothing_is_ignore(classifier: LogClassifier) -> None:
    for lines in (
        [SIGTERM, "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: "],
        [],
        ["hello"],
    ):
        v = classify_window(lines, classifier, window_id="w")
        assert v == WindowVerdict("w", "ignore", "none", True, None, None)


def test_code_bug_beats_the_peer_connection_it_closes(classifier: LogClassifier) -> None:
    lines = [
        "[rank0]: RuntimeError: [../gloo/transport/tcp/pair.cc:553] "
        "Connection closed by peer [127.0.0.1]:7905.",
        "[rank1]: KeyError: 'labels'",
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
    ]
    v = classify_window(lines, classifier)
    assert (v.action, v.scope, v.recoverable, v.rule, v.root_cause_line) == (
        "halt",
        "code",
        False,
        "python-exception",
        1,
    )


def _window(kind: str) -> list[str]:
    lines: list[str] = []
    for f in sorted(FAULT_LOGS.glob(f"{kind}.node-*.log")):
        lines += f.read_text(errors="replace").splitlines()
    return lines


EXPECTED = {
    "code_bug": ("halt", "code", "python-exception"),
    "collective_timeout": ("restart", "job", "gloo-timeout"),
    "sigkill": ("restart", "job", "rank-sigkilled"),
    "nan": ("restart", "job", "loss-not-finite-log"),
    "hang": ("ignore", "none", None),  # a hang shows in metrics (step stalls), not in logs
    "xid79": ("cordon_and_restart", "node", "gpu-fallen-off-bus"),
    "xid48": ("cordon_and_restart", "node", "gpu-xid-48-dbe"),
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_real_fault_logs_of_our_trainer(classifier: LogClassifier, kind: str) -> None:
    lines = _window(kind)
    if not lines:
        pytest.skip(f"no sample logs for {kind} in {FAULT_LOGS}")
    v = classify_window(lines, classifier, window_id=kind)
    assert (v.action, v.scope, v.rule) == EXPECTED[kind]
    if v.root_cause_line is not None:
        assert 0 <= v.root_cause_line < len(lines)


def test_jsonl_round_trip_and_malformed_lines(policy: PolicySet) -> None:
    inp = io.StringIO(
        "\n".join(
            [
                json.dumps({"id": "a", "lines": [GLOO, XID]}),
                "{not json",
                json.dumps({"id": 3, "lines": []}),
                "",
                json.dumps({"id": "b", "lines": ["ok", 5]}),
                json.dumps(["id", "lines"]),
                json.dumps({"id": "c", "lines": []}),
            ]
        )
        + "\n"
    )
    inp.name = "windows.jsonl"
    out, err = io.StringIO(), io.StringIO()
    rc = classify_jsonl(inp, out, policy, err)
    assert rc == 1
    got = [json.loads(line) for line in out.getvalue().splitlines()]
    assert got == [
        {
            "id": "a",
            "action": "cordon_and_restart",
            "scope": "node",
            "recoverable": False,
            "rule": "gpu-fallen-off-bus",
            "root_cause_line": 1,
        },
        {
            "id": "c",
            "action": "ignore",
            "scope": "none",
            "recoverable": True,
            "rule": None,
            "root_cause_line": None,
        },
    ]
    assert list(got[0]) == ["id", "action", "scope", "recoverable", "rule", "root_cause_line"]
    errs = err.getvalue().splitlines()
    assert [e.split(": ", 1)[0] for e in errs] == [
        "windows.jsonl:2",
        "windows.jsonl:3",
        "windows.jsonl:5",
        "windows.jsonl:6",
    ]
    assert "invalid JSON" in errs[0] and "'id' must be a string" in errs[1] and "'lines[1]'" in errs[2]


def test_jsonl_all_valid_returns_zero(policy: PolicySet) -> None:
    inp = io.StringIO(json.dumps({"id": "x", "lines": [SIGTERM]}) + "\n")
    out, err = io.StringIO(), io.StringIO()
    assert classify_jsonl(inp, out, policy, err) == 0
    assert err.getvalue() == ""
    assert json.loads(out.getvalue())["action"] == "ignore"
