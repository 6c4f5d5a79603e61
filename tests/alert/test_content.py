"""What an on-call engineer reads: secrets redacted, ranks and instances named, links that open."""

from __future__ import annotations

import dataclasses
from urllib.parse import urlsplit

import pytest

from supervisor.alert.build import AlertContext, also_seen, build_alert, rank_of
from supervisor.alert.links import incident_query, insights_url, log_stream_url
from supervisor.alert.redact import MASK, redact
from tests.test_alerts import CORDON, INCIDENT, OK, ROOT, T0

SECRETS = [
    ("creds AKIAIOSFODNN7EXAMPLE in env", "creds [REDACTED] in env"),
    ("session ASIAY34FZKBOKMUTVV7A expired", "session [REDACTED] expired"),
    ("aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "aws_secret_access_key=[REDACTED]"),
    ('{"SecretAccessKey": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}', '{"SecretAccessKey": "[REDACTED]"}'),
    ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.abc", "Authorization: Bearer [REDACTED]"),
    ("GET https://bob:hunter2@db.example.com/x failed", "GET https://bob:[REDACTED]@db.example.com/x failed"),
    ("wandb url ?token=abc123&run=7", "wandb url ?token=[REDACTED]&run=7"),
    ("PASSWORD: s3cr3t, retrying", "PASSWORD: [REDACTED], retrying"),
    ("export HF_TOKEN=hf_aaaaaaaaaaaaaaaaaaaaaaaaaa", "export HF_TOKEN=[REDACTED]"),
    ("cloned with ghp_0123456789abcdefghijABCDEFGHIJ", "cloned with [REDACTED]"),
    ("api_key='sk-proj-aaaaaaaaaaaaaaaaaaaaaaaaa'", "api_key='[REDACTED]'"),
]
HARMLESS = [
    '{"event": "step", "step": 12, "tokens_per_s": 1556.7, "loss": 5.71}',
    "NCCL INFO NCCL_IB_TIMEOUT set by environment to 22",
    "NVRM: Xid (PCI:0000:3b:00): 79, pid=812, GPU has fallen off the bus.",
    "basic configuration of the token embeddings",
    "[Rank 3] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=42)",
]


@pytest.mark.parametrize(("line", "expected"), SECRETS)
def test_redact_masks_secrets(line: str, expected: str) -> None:
    assert redact(line) == expected
    assert redact(redact(line)) == redact(line)  # idempotent


@pytest.mark.parametrize("line", HARMLESS)
def test_redact_leaves_ordinary_log_lines_alone(line: str) -> None:
    assert redact(line) == line


def test_secrets_in_evidence_and_action_detail_never_reach_the_alert() -> None:
    leaky_root = dataclasses.replace(ROOT, evidence=ROOT.evidence + " AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE")
    incident = dataclasses.replace(INCIDENT, root_cause=leaky_root, signals=(leaky_root,))
    failed = dataclasses.replace(OK, ok=False, detail="sbatch: https://ops:pa55word@slurm.internal refused")
    alert = build_alert(incident, CORDON, failed, budget_left=1, now=T0)
    text = repr(alert)
    assert "AKIAIOSFODNN7EXAMPLE" not in text and "pa55word" not in text
    assert MASK in dict(alert.details)["root_cause"] and MASK in alert.evidence[0]
    assert MASK in alert.summary


@pytest.mark.parametrize(
    ("line", "rank"),
    [
        ('{"node": "node-1", "rank": 3, "event": "start"}', "3"),
        ("[Rank 12] Watchdog caught collective operation timeout", "12"),
        ("[rank5]:[E ProcessGroupNCCL.cpp:1316] timeout", "5"),
        ("worker rank=7 exited", "7"),
        ("NVRM: Xid (PCI:0000:3b:00): 79", None),
        ("local_rank: 2", None),
    ],
)
def test_rank_is_read_from_the_line(line: str, rank: str | None) -> None:
    assert rank_of(line) == rank


def test_alert_names_instance_rank_and_links_to_the_logs() -> None:
    root = dataclasses.replace(
        ROOT, evidence="[rank1]: NVRM: Xid (PCI:0000:3b:00): 79, GPU has fallen off the bus."
    )
    incident = dataclasses.replace(INCIDENT, root_cause=root, signals=(root, *INCIDENT.signals[2:]))
    context = AlertContext(
        region="eu-west-1", log_group="/ftsup/jobs/llama", instance_ids={"node-1": "i-0abc"}
    )
    alert = build_alert(incident, CORDON, OK, budget_left=2, now=T0 + 41, context=context)
    labels, details = dict(alert.labels), dict(alert.details)
    assert labels["instance_id"] == details["instance_id"] == "i-0abc"
    assert details["rank"] == "1"
    console = urlsplit(details["logs_console"])
    assert console.netloc == "eu-west-1.console.aws.amazon.com"
    assert "log-group/$252Fftsup$252Fjobs$252Fllama/log-events/node-1$3Fstart$3D" in console.fragment
    insights = details["logs_insights"]
    assert insights.startswith(
        "https://eu-west-1.console.aws.amazon.com/cloudwatch/home?region=eu-west-1#logsV2:"
    )
    assert "~source~(~'*2fftsup*2fjobs*2fllama)" in insights
    assert "~start~'2024-05-01T11*3a59*3a01.000Z" in insights  # first signal minus 60 s


def test_no_context_means_no_links() -> None:
    details = dict(build_alert(INCIDENT, CORDON, OK, budget_left=2, now=T0).details)
    assert "logs_console" not in details and "instance_id" not in details


def test_links_match_the_console_formats() -> None:
    assert log_stream_url("us-east-1", "/a/b", "node 1", T0, T0 + 1) == (
        "https://us-east-1.console.aws.amazon.com/cloudwatch/home?region=us-east-1#logsV2:log-groups/"
        "log-group/$252Fa$252Fb/log-events/node$25201$3Fstart$3D1714564800000$26end$3D1714564801000"
    )
    assert insights_url("cn-north-1", ["g"], "fields @message", T0, T0 + 60).startswith(
        "https://cn-north-1.console.amazonaws.cn/cloudwatch/home?region=cn-north-1#logsV2:logs-insights"
        "$3FqueryDetail$3D~(end~'2024-05-01T12*3a01*3a00.000Z~start~'2024-05-01T12*3a00*3a00.000Z"
        "~timeType~'ABSOLUTE~tz~'UTC~editorString~'fields*20*40message"
    )
    assert incident_query(["node-0", 'we"ird']) == (
        "fields @timestamp, @logStream, @message\n"
        '| filter @logStream in ["node-0", "we\\"ird"]\n| sort @timestamp asc\n| limit 1000'
    )


def test_one_alert_per_incident_not_per_rank() -> None:
    """512 ranks' collective timeouts on 63 nodes and one Xid: one alert, the rest folded in."""
    symptoms = tuple(
        dataclasses.replace(
            INCIDENT.signals[0],
            node=f"node-{n}",
            timestamp=T0 + 2 + r * 0.001,
            evidence=f"[Rank {r}] timeout",
        )
        for r in range(512)
        for n in [2 + r % 63]
    )
    incident = dataclasses.replace(INCIDENT, signals=(ROOT, *symptoms))
    alert = build_alert(incident, CORDON, OK, budget_left=2, now=T0)
    assert dict(alert.labels)["node"] == "node-1"
    assert dict(alert.details)["also_seen"] == (
        "also seen on 63 nodes: node-10, node-11, node-12, ... (nccl-watchdog-timeout x512)"
    )
    assert also_seen(dataclasses.replace(INCIDENT, signals=(ROOT,))) is None
    assert len(alert.evidence) == 5
