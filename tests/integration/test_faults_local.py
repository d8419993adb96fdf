"""An outage, the DLQ commands and backfill against `pneumoscan local up` over real HTTP,
with the real worker processes (failed messages come back after 1 s; see conftest)."""

from __future__ import annotations

import json
import time

from typer.testing import CliRunner

import pytest

from image_cases import reference_bytes
from pneumoscan.events import parse_message
from pneumoscan.results import get_result
from pneumoscan_cli.main import app
from pneumoscan_cli.template import read_settings

from .conftest import running_stack

runner = CliRunner()
WAIT_S = 120


def _cli(stack, *arguments: str):
    result = runner.invoke(app, list(arguments), env=stack.env)
    assert result.exit_code == 0, f"{arguments}: {result.output}\n--- local up log ---\n{stack.log()[-3000:]}"
    return result


def _json_lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def _wait_for(condition, what: str, stack):
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}\n--- local up log ---\n{stack.log()[-3000:]}")


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory):
    """A stack of its own: the outage below must not touch other tests' results."""
    with running_stack(tmp_path_factory.mktemp("faults-stack")) as stack:
        yield stack


def test_a_table_outage_sends_messages_to_the_dlq_and_redrive_scores_them_once(own_stack):
    """The results table disappears (a real fault, no injection): every delivery fails, and after
    maxReceiveCount receives SQS moves each message to the DLQ. Once the table is back,
    `dlq redrive` gets every image scored exactly once."""
    target = own_stack.target
    dynamodb = target.client("dynamodb")
    settings = read_settings()
    dynamodb.delete_table(TableName=target.table)
    keys = [f"{target.incoming_prefix}outage/{name}.jpeg" for name in ("one", "two", "three")]
    for key in keys:
        target.client("s3").put_object(Bucket=target.bucket, Key=key, Body=reference_bytes())

    def in_dlq():
        rows = _dlq_rows(own_stack)
        return rows if sum(key in row["object_keys"] for row in rows for key in keys) == len(keys) else None

    rows = _wait_for(in_dlq, "all three messages in the DLQ", own_stack)
    assert all(row["receive_count"] >= 1 for row in rows)
    _wait_for(lambda: _queue_empty(target), "the source queue empty", own_stack)

    dynamodb.create_table(**settings.table_definition)  # the fault clears
    listed = _json_lines(_cli(own_stack, "dlq", "list", "--json").stdout)
    assert {row["result"] for row in listed if row["object_keys"]} == {"no result"}
    _cli(own_stack, "dlq", "redrive")

    def all_scored():
        found = [get_result(dynamodb, target.table, key, incoming_prefix=target.incoming_prefix, consistent=True)
                 for key in keys]
        return found if all(found) else None

    items = _wait_for(all_scored, "the redriven images scored", own_stack)
    assert [item["status"] for item in items] == ["SCORED"] * 3
    # The item is written before its message is deleted: a worker can still hold the last one.
    _wait_for(lambda: _queue_empty(target) and _dlq_rows(own_stack) == [], "both queues empty", own_stack)


def _dlq_rows(stack) -> list[dict]:
    """DLQ messages straight from SQS (the CLI's listing also reads the table, which is gone)."""
    target = stack.target
    sqs = target.client("sqs")
    messages = sqs.receive_message(QueueUrl=target.dead_letter_queue_url, MaxNumberOfMessages=10,
                                   VisibilityTimeout=0, MessageSystemAttributeNames=["ApproximateReceiveCount"]
                                   ).get("Messages", [])
    return [{"object_keys": [created.key for created in parse_message(message["Body"]).objects],
             "receive_count": int(message["Attributes"]["ApproximateReceiveCount"])} for message in messages]


def test_backfill_against_the_running_stack_adds_no_second_item(local_stack):
    target = local_stack.target
    keys = [f"{target.incoming_prefix}backfilled/{name}.jpeg" for name in ("one", "two")]
    for key in keys:
        target.client("s3").put_object(Bucket=target.bucket, Key=key, Body=reference_bytes())
    dynamodb = target.client("dynamodb")

    def items():
        found = [get_result(dynamodb, target.table, key, incoming_prefix=target.incoming_prefix, consistent=True)
                 for key in keys]
        return found if all(found) else None

    first = _wait_for(items, "both uploads scored", local_stack)

    unscored = _cli(local_stack, "backfill", "--only-unscored", "--prefix", "backfilled/")
    assert "enqueued 0" in unscored.output
    everything = _cli(local_stack, "backfill", "--prefix", "backfilled/")
    assert "enqueued 2" in everything.output

    # The handler recognises both as already scored by this model: the items keep their first write.
    time.sleep(2)
    _wait_for(lambda: _queue_empty(target), "the backfilled messages consumed", local_stack)
    assert [item["write_id"] for item in items()] == [item["write_id"] for item in first]


def _queue_empty(target) -> bool:
    attributes = target.client("sqs").get_queue_attributes(
        QueueUrl=target.queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return all(value == "0" for value in attributes.values())
