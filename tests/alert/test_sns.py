"""Amazon SNS against the moto server: publish, then read the message back from an SQS subscription."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3

from supervisor.alert.build import build_alert
from supervisor.alert.sinks import alert_payload
from supervisor.alert.sns import SnsAlertSink
from supervisor.journal import Journal
from supervisor.sources.aws import ApiCallCounter, AwsSettings, make_client
from tests.test_alerts import CORDON, INCIDENT, OK, T0

ALERT = build_alert(INCIDENT, CORDON, OK, budget_left=2, now=T0 + 41)


def test_sns_publishes_to_the_topic_and_subscribers_get_the_alert(moto_endpoint: str, tmp_path: Path) -> None:
    aws = AwsSettings(endpoint_url=moto_endpoint, connect_timeout_s=2, read_timeout_s=5, retry_budget_s=5)
    sns: Any = make_client("sns", aws)
    sqs = boto3.client("sqs", region_name="us-east-1", endpoint_url=moto_endpoint)
    topic = sns.create_topic(Name="ftsup-alerts-test")["TopicArn"]
    queue_url = sqs.create_queue(QueueName="ftsup-alerts-test")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)

    journal = Journal(tmp_path / "j.db")
    counter = ApiCallCounter()
    sink = SnsAlertSink(sns, topic, aws, counter=counter, outbox=journal)
    sink.send(ALERT)
    sink.close(10.0)
    assert (sink.delivered, sink.failed) == (1, 0)
    assert counter.get("sns.Publish") == 1
    assert journal.outbox("sns")[0].delivered_at is not None

    got = sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=2, MaxNumberOfMessages=10)["Messages"]
    assert len(got) == 1
    envelope = json.loads(got[0]["Body"])
    assert envelope["Subject"].startswith("[FIRING] gpu.xid.79 on node-1")
    assert json.loads(envelope["Message"]) == alert_payload(ALERT)  # the sqs protocol gets the JSON
    assert envelope["MessageAttributes"]["incident_id"]["Value"] == "inc-1"
    journal.close()


def test_sns_unknown_topic_is_kept_pending(moto_endpoint: str, tmp_path: Path) -> None:
    aws = AwsSettings(endpoint_url=moto_endpoint, connect_timeout_s=2, read_timeout_s=5, retry_budget_s=2)
    journal = Journal(tmp_path / "j.db")
    sink = SnsAlertSink(
        make_client("sns", aws), "arn:aws:sns:us-east-1:123456789012:missing", aws, outbox=journal
    )
    sink.send(ALERT)
    sink.close(10.0)
    assert (sink.delivered, sink.failed) == (0, 1)
    (row,) = journal.outbox_pending("sns")
    assert row.attempts == 1 and row.last_error
    journal.close()
