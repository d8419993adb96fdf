"""Every kind of input through the REAL handler on moto: each ends SCORED or FAILED with a
clear reason, nothing is retried forever, and the rest of the batch goes on."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from event_cases import WRONG_SHAPES
import image_cases
from image_cases import CASES, LARGE_CASE, reference_bytes
from pneumoscan.results import KEY
from pneumoscan_cli.main import app as cli

# Same image, other encodings: the score may move only as much as re-encoding moves pixels.
SAME_IMAGE_TOLERANCE = 0.05


def _key(stack, name: str) -> str:
    return f"{stack.prefix}inputs/{name}"


def _assert_nothing_left_queued(stack) -> None:
    assert stack.queue_depth(stack.queue_url) == 0
    assert stack.queue_depth(stack.dead_letter_queue_url) == 0


def test_every_input_kind_ends_scored_or_failed_with_its_reason(handler_stack):
    stack = handler_stack
    stack.put(_key(stack, "reference.jpeg"), reference_bytes())
    for case in CASES + [LARGE_CASE]:
        stack.put(_key(stack, case.name + case.suffix), case.make())

    outcomes = stack.deliver()

    assert sum(outcome.received for outcome in outcomes) >= len(CASES) + 2
    assert all(outcome.failed == 0 and outcome.error is None for outcome in outcomes)
    _assert_nothing_left_queued(stack)
    reference = stack.item(_key(stack, "reference.jpeg"))
    assert reference["status"] == "SCORED"
    for case in CASES + [LARGE_CASE]:
        item = stack.item(_key(stack, case.name + case.suffix))
        assert item is not None, case.name
        assert item["status"] == case.status, (case.name, item.get("reason"), item.get("error"))
        assert item["batch"] == "inputs"
        if case.status == "SCORED":
            assert abs(float(item["probability"]) - float(reference["probability"])) < SAME_IMAGE_TOLERANCE, case.name
            assert item["label"] in ("NORMAL", "PNEUMONIA")
            assert (int(item["image_width"]), int(item["image_height"])) in {
                (1522, 1221), (7100, 7040)}, case.name
            assert ("ignored_metadata" in item) == case.ignores_metadata, (case.name, item.get("ignored_metadata"))
        else:
            assert item["reason"] == case.reason, (case.name, item["reason"], item.get("error"))
            assert item["error"]
            assert item["attention_day"] == item["scored_at"][:10]
            assert "probability" not in item


@pytest.mark.parametrize("name", [
    "with space.jpeg", "plus+sign.jpeg", "literal%20percent.jpeg", "ünïcödé 王芳.jpeg",
    "deep/er/folder/x.JPEG", "a+b c%2B.jpeg",
])
def test_odd_keys_are_scored_under_their_exact_key(handler_stack, name):
    stack = handler_stack
    key = f"{stack.prefix}odd keys+ü/{name}"
    stack.put(key, reference_bytes())

    stack.deliver()

    item = stack.item(key)
    assert item is not None and item["status"] == "SCORED"
    assert item["batch"] == "odd keys+ü"
    _assert_nothing_left_queued(stack)


def test_an_object_over_the_size_cap_is_refused_from_its_content_length(handler_stack, monkeypatch):
    stack = handler_stack
    monkeypatch.setenv("MAX_OBJECT_BYTES", str(100_000))
    handler = stack.cold_start()
    read = []
    real_get_object = handler.s3_client.get_object

    def get_object(**kwargs):
        response = real_get_object(**kwargs)
        real_read = response["Body"].read
        response["Body"].read = lambda *args: read.append(kwargs["Key"]) or real_read(*args)
        return response
    monkeypatch.setattr(handler.s3_client, "get_object", get_object)
    big = _key(stack, "big.jpeg")
    stack.put(big, reference_bytes())  # ~450 KB

    stack.deliver()

    item = stack.item(big)
    assert item["status"] == "FAILED" and item["reason"] == "object_too_large"
    assert int(item["size_bytes"]) == len(reference_bytes())
    assert big not in read  # refused from the GET's Content-Length, the body closed unread
    _assert_nothing_left_queued(stack)


def test_an_object_deleted_before_scoring_is_recorded_as_missing(handler_stack):
    stack = handler_stack
    gone, kept = _key(stack, "gone.jpeg"), _key(stack, "kept.jpeg")
    stack.put(gone, reference_bytes())
    stack.put(kept, reference_bytes())
    stack.s3.delete_object(Bucket=stack.settings.bucket, Key=gone)

    stack.deliver()

    assert stack.item(gone)["status"] == "FAILED"
    assert stack.item(gone)["reason"] == "object_missing"
    assert stack.item(kept)["status"] == "SCORED"
    _assert_nothing_left_queued(stack)


@pytest.mark.parametrize("body", [
    "not json", "[1, 2, 3]", json.dumps({"Records": [{"eventSource": "aws:s3"}]}),
    json.dumps({"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {}}}]}),
    json.dumps({"hello": "world"}),
])
def test_an_unknown_event_shape_is_recorded_once_and_the_batch_goes_on(handler_stack, body):
    stack = handler_stack
    good = _key(stack, "good.jpeg")
    stack.put(good, reference_bytes())
    message_id = stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=body)["MessageId"]

    stack.deliver()

    unknown = stack.item(f"sqs-message/{message_id}")
    assert unknown["status"] == "FAILED" and unknown["reason"] == "unknown_event"
    assert stack.item(good)["status"] == "SCORED"
    _assert_nothing_left_queued(stack)


@pytest.mark.parametrize("body", WRONG_SHAPES.values(), ids=WRONG_SHAPES.keys())
def test_valid_json_of_the_wrong_shape_is_recorded_once_and_logged_by_the_handler(handler_stack, caplog, body):
    stack = handler_stack
    good = _key(stack, "good.jpeg")
    stack.put(good, reference_bytes())
    message_id = stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=body)["MessageId"]

    outcomes = stack.deliver(rounds=2)

    assert all(outcome.failed == 0 for outcome in outcomes)
    assert sum(1 for message in stack.delivered if message["MessageId"] == message_id) == 1
    unknown = stack.item(f"sqs-message/{message_id}")
    assert unknown["status"] == "FAILED" and unknown["reason"] == "unknown_event" and unknown["error"]
    assert stack.item(good)["status"] == "SCORED"
    _assert_nothing_left_queued(stack)
    handler_log = [entry for entry in caplog.records if entry.name == stack.app.logger.name]
    assert any(entry.levelname == "ERROR" and getattr(entry, "error", None) == unknown["error"]
               for entry in handler_log), [entry.getMessage() for entry in handler_log]


def test_an_event_naming_another_bucket_never_touches_the_objects_item(handler_stack):
    stack = handler_stack
    key = _key(stack, "same-key.jpeg")
    stack.put(key, reference_bytes())
    stack.deliver()
    scored = stack.item(key)
    stack.s3.create_bucket(Bucket="someone-elses-bucket")
    stack.s3.put_object(Bucket="someone-elses-bucket", Key=key, Body=image_cases.png_grey_8bit())
    body = json.dumps({"Records": [{
        "eventName": "ObjectCreated:Put", "eventTime": "2026-11-25T21:00:00.000Z",
        "s3": {"bucket": {"name": "someone-elses-bucket"},
               "object": {"key": key, "size": 10, "eTag": "a-different-object"}}}]})
    message_id = stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=body)["MessageId"]

    stack.deliver()

    assert stack.item(key) == scored
    unknown = stack.item(f"sqs-message/{message_id}")
    assert unknown["reason"] == "unknown_event" and "not the configured bucket" in unknown["error"]
    _assert_nothing_left_queued(stack)


def test_a_key_ending_in_a_slash_is_decided_by_its_size(handler_stack):
    stack = handler_stack
    xray, placeholder = _key(stack, "looks-like-a-folder/"), _key(stack, "a-real-folder/")
    stack.put(xray, reference_bytes())
    stack.put(placeholder, b"")

    stack.deliver()

    assert stack.item(xray)["status"] == "SCORED"
    assert stack.item(placeholder) is None
    _assert_nothing_left_queued(stack)


def test_the_s3_test_event_is_acknowledged_without_an_item(handler_stack):
    stack = handler_stack
    body = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Time": "2026-11-25T21:00:00.000Z",
                       "Bucket": stack.settings.bucket, "RequestId": "r", "HostId": "h"})
    stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=body)

    stack.deliver()

    assert [item[KEY] for item in stack.items()] == []
    _assert_nothing_left_queued(stack)


def test_pneumoscan_score_reports_what_the_lambda_records(handler_stack, tmp_path):
    stack = handler_stack
    for case in CASES:
        name = case.name + case.suffix
        (tmp_path / name).write_bytes(case.make())
        stack.put(_key(stack, name), case.make())
    stack.deliver()

    outcome = CliRunner().invoke(cli, ["score", "--json", str(tmp_path)])

    assert outcome.exit_code == 0, outcome.output
    offline = {json.loads(line)["image"].rsplit("/", 1)[-1]: json.loads(line)
               for line in outcome.stdout.splitlines() if line.startswith("{")}
    assert len(offline) == len(CASES)
    for name, scored in offline.items():
        item = stack.item(_key(stack, name))
        assert (scored["status"], scored.get("reason")) == (item["status"], item.get("reason")), name
        assert scored["ignored_metadata"] == item.get("ignored_metadata"), name
        if item["status"] == "SCORED":
            assert scored["label"] == item["label"]
            assert abs(scored["probability"] - float(item["probability"])) < 1e-5, name
