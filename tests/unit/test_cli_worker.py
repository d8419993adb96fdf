"""The local event-source worker: Lambda's SQS event shape, deleting only successes, redrive."""

import json
import time

import boto3
import pytest
from moto import mock_aws

from pneumoscan_cli.worker import QueueWorker

REGION = "us-east-1"


@pytest.fixture
def queues():
    with mock_aws():
        sqs = boto3.client("sqs", region_name=REGION)
        dead_letter_url = sqs.create_queue(QueueName="dlq")["QueueUrl"]
        dead_letter_arn = sqs.get_queue_attributes(
            QueueUrl=dead_letter_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        queue_url = sqs.create_queue(QueueName="work", Attributes={
            "VisibilityTimeout": "360",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dead_letter_arn, "maxReceiveCount": 2})})["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        yield sqs, queue_url, queue_arn, dead_letter_url


def _bodies(sqs, url):
    messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0).get("Messages", [])
    return sorted(message["Body"] for message in messages)


class FailsPoison:
    """A handler that reports the records whose body is `poison` as failed, like process_partial_response."""

    def __init__(self):
        self.events, self.contexts = [], []

    def __call__(self, event, context):
        self.events.append(event)
        self.contexts.append(context)
        return {"batchItemFailures": [{"itemIdentifier": record["messageId"]}
                                      for record in event["Records"] if record["body"] == "poison"]}


def test_records_have_lambdas_sqs_event_shape(queues):
    sqs, queue_url, queue_arn, _ = queues
    sqs.send_message(QueueUrl=queue_url, MessageBody="hello")
    handler = FailsPoison()
    worker = QueueWorker(sqs, queue_url, queue_arn, handler, region=REGION, batch_size=10, timeout_s=60)
    worker.process(worker.receive_batch())
    (record,) = handler.events[0]["Records"]
    assert record["body"] == "hello"
    assert record["eventSource"] == "aws:sqs" and record["eventSourceARN"] == queue_arn
    assert record["awsRegion"] == REGION
    assert record["attributes"]["ApproximateReceiveCount"] == "1"
    assert {"SentTimestamp", "ApproximateFirstReceiveTimestamp", "SenderId"} <= set(record["attributes"])
    assert {"messageId", "receiptHandle", "md5OfBody", "messageAttributes"} <= set(record)
    context = handler.contexts[0]
    assert 0 < context.get_remaining_time_in_millis() <= 60_000
    assert context.aws_request_id and context.invoked_function_arn.startswith("arn:aws:lambda:")


def test_only_successes_are_deleted_and_a_poison_message_reaches_the_dlq(queues):
    sqs, queue_url, queue_arn, dead_letter_url = queues
    for body in ("a", "poison", "b"):
        sqs.send_message(QueueUrl=queue_url, MessageBody=body)
    worker = QueueWorker(sqs, queue_url, queue_arn, FailsPoison(), region=REGION, batch_size=10, retry_after_s=0)

    outcome = worker.process(worker.receive_batch())
    assert (outcome.received, outcome.deleted, outcome.failed) == (3, 2, 1)

    second = worker.process(worker.receive_batch())  # the poison message's second (= maxReceiveCount) receive
    assert (second.received, second.failed) == (1, 1)
    # SQS moves it on the receive after maxReceiveCount, and nothing is left to process.
    assert _bodies(sqs, queue_url) == []
    assert _bodies(sqs, dead_letter_url) == ["poison"]


def test_without_retry_after_a_failed_message_waits_for_the_visibility_timeout(queues):
    sqs, queue_url, queue_arn, _ = queues
    sqs.send_message(QueueUrl=queue_url, MessageBody="poison")
    worker = QueueWorker(sqs, queue_url, queue_arn, FailsPoison(), region=REGION)
    worker.process(worker.receive_batch())
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == "0"
    assert attributes["ApproximateNumberOfMessagesNotVisible"] == "1"


def test_a_handler_that_raises_fails_the_whole_batch(queues):
    sqs, queue_url, queue_arn, _ = queues
    for body in ("a", "b"):
        sqs.send_message(QueueUrl=queue_url, MessageBody=body)

    def broken(event, context):
        raise RuntimeError("init failed")

    worker = QueueWorker(sqs, queue_url, queue_arn, broken, region=REGION, retry_after_s=0)
    outcome = worker.process(worker.receive_batch())
    assert (outcome.received, outcome.deleted, outcome.failed) == (2, 0, 2)
    assert "init failed" in outcome.error
    assert _bodies(sqs, queue_url) == ["a", "b"]


def test_batches_are_capped_at_the_batch_size(queues):
    sqs, queue_url, queue_arn, _ = queues
    for index in range(5):
        sqs.send_message(QueueUrl=queue_url, MessageBody=str(index))
    worker = QueueWorker(sqs, queue_url, queue_arn, FailsPoison(), region=REGION, batch_size=3)
    assert len(worker.receive_batch()) == 3


def test_a_handler_past_the_function_timeout_triggers_the_timeout_action(queues):
    sqs, queue_url, queue_arn, _ = queues
    sqs.send_message(QueueUrl=queue_url, MessageBody="slow")
    timed_out = []

    def slow(event, context):
        time.sleep(1.5)
        return {"batchItemFailures": []}

    worker = QueueWorker(sqs, queue_url, queue_arn, slow, region=REGION, timeout_s=1, on_timeout=timed_out.append)
    worker.process(worker.receive_batch())
    assert timed_out == [1]

    sqs.send_message(QueueUrl=queue_url, MessageBody="quick")
    worker.handler = FailsPoison()
    worker.process(worker.receive_batch())
    assert timed_out == [1]  # a handler that finishes in time cancels the timer
