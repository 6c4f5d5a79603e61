"""Amazon SNS: one `Publish` per alert, from the sink's own thread.

The client is built with supervisor.sources.aws.make_client (explicit connect / read timeouts,
botocore's retries off) and each publish goes through call_with_retry (jittered, bounded by attempts
and a time budget, only transient errors retried). What still fails is kept in the outbox and retried
later (QueuedAlertSink).

Message: ``MessageStructure=json``: ``default`` / ``email`` get the plain text (payloads.text_body);
``sqs``, ``lambda``, ``http``, ``https`` get the version-1 JSON document (sinks.alert_payload).
Subject: ``[FIRING] <summary>`` made SNS-safe (ASCII, no control characters, <= 100 chars).
Message attributes: incident_id, status, severity, job (for subscription filter policies).
A FIFO topic (``.fifo``) gets MessageGroupId = job and MessageDeduplicationId = the alert id.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from supervisor.alert.outbox import alert_id
from supervisor.alert.payloads import text_body
from supervisor.alert.sinks import QueuedAlertSink, _PermanentFailure, _RetryableFailure, alert_payload
from supervisor.sources.aws import ApiCallCounter, AwsSettings, call_with_retry, describe_error, is_retryable
from supervisor.vocabulary import Alert

TOPIC_ARN_RE = re.compile(r"arn:aws[a-z-]*:sns:([a-z0-9-]+):(\d{12}):([A-Za-z0-9_-]{1,256}(?:\.fifo)?)")
_SUBJECT_BAD = re.compile(r"[^\x20-\x7e]")


def sns_subject(alert: Alert) -> str:
    """An SNS-safe subject: printable ASCII, starts with a letter, number or punctuation, <= 100."""
    subject = _SUBJECT_BAD.sub("?", f"[{alert.status.upper()}] {alert.summary}").strip() or "ftsup alert"
    return subject if len(subject) <= 100 else subject[:97] + "..."


def sns_publish_args(alert: Alert, topic_arn: str) -> dict[str, Any]:
    """The keyword arguments of `sns.publish` for `alert` (pure)."""
    doc = json.dumps(alert_payload(alert), sort_keys=True, ensure_ascii=False)
    text = text_body(alert)
    message = {"default": text, "email": text, "sqs": doc, "lambda": doc, "http": doc, "https": doc}
    args: dict[str, Any] = {
        "TopicArn": topic_arn,
        "Subject": sns_subject(alert),
        "Message": json.dumps(message, ensure_ascii=False),
        "MessageStructure": "json",
        "MessageAttributes": {
            name: {"DataType": "String", "StringValue": value}
            for name, value in (
                ("incident_id", alert.incident_id),
                ("status", alert.status),
                ("severity", alert.severity.value),
                ("job", alert.job),
            )
        },
    }
    if topic_arn.endswith(".fifo"):
        args["MessageGroupId"] = alert.job
        args["MessageDeduplicationId"] = hashlib.sha256(alert_id(alert).encode()).hexdigest()[:64]
    return args


class SnsAlertSink(QueuedAlertSink):
    """Publishes each alert to `topic_arn` with `client` (an SNS client from make_client).
    The retries are call_with_retry's, bounded by `aws` (max_attempts, retry_budget_s); the queued
    sink itself makes one round per alert (max_attempts=1) and then relies on the outbox."""

    kind = "sns"

    def __init__(
        self,
        client: Any,
        topic_arn: str,
        aws: AwsSettings,
        *,
        counter: ApiCallCounter | None = None,
        **kw: Any,
    ) -> None:
        if not TOPIC_ARN_RE.fullmatch(topic_arn):
            raise ValueError(f"not an SNS topic ARN: {topic_arn!r}")
        self.client = client
        self.topic_arn = topic_arn
        self.aws = aws
        self.counter = counter
        kw.setdefault("name", "sns")
        kw.setdefault("max_attempts", 1)
        kw.setdefault("timeout_s", aws.connect_timeout_s + aws.read_timeout_s)
        super().__init__(**kw)

    def _deliver_once(self, alert: Alert) -> None:
        args = sns_publish_args(alert, self.topic_arn)
        try:
            call_with_retry(
                lambda: self.client.publish(**args), self.aws, op="sns.Publish", counter=self.counter
            )
        except Exception as exc:
            if is_retryable(exc):
                raise _RetryableFailure(describe_error(exc)) from exc
            raise _PermanentFailure(describe_error(exc)) from exc
