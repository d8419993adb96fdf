"""The scorer handler on moto: real full-resolution X-rays, real model, S3's own notifications."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote_plus

import pytest
from PIL import Image
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from botocore.exceptions import ClientError

from image_cases import FULLRES_DIR
from pneumoscan import results
from pneumoscan.model import default_model_dir as model_dir
from pneumoscan_cli.worker import FUNCTION_DIR, LambdaContext, sqs_record

DATA = FULLRES_DIR
pytestmark = pytest.mark.skipif(
    not DATA.is_dir() or not (model_dir() / "model.json").is_file(),
    reason="needs the shared data folder and a model in model/ (or $PNEUMOSCAN_MODEL_DIR)")

PNEUMONIA_XRAY = min((DATA / "PNEUMONIA").glob("*.jpeg"), default=None)
NORMAL_XRAY = DATA / "NORMAL" / "IM-0214-0001.jpeg"  # 8-bit greyscale, ~1.9 MP


def queued_event(stack) -> dict:
    """Everything S3 has notified so far, as one Lambda SQS event (messages stay in flight)."""
    messages = [m for m in stack.receive_raw() if "s3:TestEvent" not in m["Body"]]
    return {"Records": [sqs_record(m, stack.queue_arn, stack.settings.region) for m in messages]}


def with_version_ids(records: list[dict], *uploads: dict) -> list[dict]:
    """Real S3 puts the versionId of a versioned bucket's object in the event; moto leaves it out."""
    versions = {upload["ETag"].strip('"'): upload["VersionId"] for upload in uploads}
    for record in records:
        body = json.loads(record["body"])
        s3_object = body["Records"][0]["s3"]["object"]
        s3_object["versionId"] = versions[s3_object["eTag"]]
        record["body"] = json.dumps(body)
    return records


def invoke(stack, event: dict) -> dict:
    return stack.app.lambda_handler(event, LambdaContext("pneumoscan-scorer", 1024, 60, stack.settings.region))


def failed_ids(response: dict) -> list[str]:
    return [failure["itemIdentifier"] for failure in response["batchItemFailures"]]


class CallCounter:
    """Passes every call through to a boto3 client or table, counting operations by name."""

    def __init__(self, target, fail: dict | None = None):
        self._target, self._fail, self.calls = target, fail or {}, []

    def __getattr__(self, name):
        attribute = getattr(self._target, name)
        if not callable(attribute):
            return attribute

        def call(*args, **kwargs):
            self.calls.append(name)
            if name in self._fail:
                raise self._fail[name]
            return attribute(*args, **kwargs)
        return call


def client_error(code: str, status: int, operation: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "injected"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


def test_a_full_resolution_xray_is_scored_into_one_item(handler_stack):
    stack = handler_stack
    key = f"{stack.prefix}ward-7/patient one.jpeg"
    uploaded = stack.put(key, PNEUMONIA_XRAY.read_bytes())

    response = invoke(stack, queued_event(stack))

    assert response == {"batchItemFailures": []}
    item = stack.item(key)
    model = stack.app.model
    assert item["status"] == results.STATUS_SCORED and 0.0 <= item["probability"] <= 1.0
    assert item["label"] == model.label(float(item["probability"]))
    assert float(item["threshold"]) == pytest.approx(model.threshold)
    assert (item["model_version"], item["model_sha256"]) == (model.version, model.sha256[:16])
    # The stack scores one bucket: no item repeats its name.
    assert item["batch"] == "ward-7" and "bucket" not in item
    assert item["version_id"] == uploaded["VersionId"] and item["etag"] == uploaded["ETag"].strip('"')
    assert (item["image_format"], item["image_mode"]) == ("JPEG", "L")
    assert (item["image_width"], item["image_height"]) == Image.open(PNEUMONIA_XRAY).size
    assert item["size_bytes"] == PNEUMONIA_XRAY.stat().st_size
    assert {"fetch", "decode", "inference", "total"} <= set(item["timings_ms"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", item["scored_at"])
    # Only a positive (or warned) score is listed by the sparse attention index, under its UTC day.
    assert item.get("attention_day") == (item["scored_at"][:10] if results.needs_attention(item) else None)
    assert len(stack.items()) == 1


def test_keys_with_spaces_plus_and_unicode_arrive_decoded(handler_stack):
    stack = handler_stack
    keys = [f"{stack.prefix}b/a b+c.jpeg", f"{stack.prefix}b/Jürgen Østergaard 100%.JPEG", f"{stack.prefix}root.jpg"]
    for key in keys:
        stack.put(key, NORMAL_XRAY.read_bytes())

    assert invoke(stack, queued_event(stack)) == {"batchItemFailures": []}

    assert {item[results.KEY]: item["batch"] for item in stack.items()} == {
        keys[0]: "b", keys[1]: "b", keys[2]: results.ROOT_BATCH}
    assert all(item["status"] == results.STATUS_SCORED for item in stack.items())


@pytest.mark.parametrize("body, reason", [
    (b"", "empty"),
    (b"%PDF-1.7 this is a referral letter, not a radiograph", "not_an_image"),
    (b"just some text named like an image\n" * 40, "not_an_image"),
])
def test_bad_input_is_recorded_failed_and_the_record_succeeds(handler_stack, body, reason):
    stack = handler_stack
    key = f"{stack.prefix}b/scan.jpeg"
    stack.put(key, body)

    assert invoke(stack, queued_event(stack)) == {"batchItemFailures": []}

    item = stack.item(key)
    assert item["status"] == results.STATUS_FAILED and item["reason"] == reason and item["error"]
    assert item["attention_day"] == item["scored_at"][:10]
    assert "probability" not in item and "label" not in item


def body_reads(client, monkeypatch) -> list[int]:
    """Bytes read from each GetObject body (an unread, closed body records nothing)."""
    reads, real_get_object = [], client.get_object

    def get_object(**kwargs):
        response = real_get_object(**kwargs)
        real_read = response["Body"].read
        response["Body"].read = lambda *args: (data := real_read(*args), reads.append(len(data)))[0]
        return response
    monkeypatch.setattr(client, "get_object", get_object)
    return reads


def test_an_object_above_the_size_cap_is_never_downloaded(handler_stack, monkeypatch):
    stack = handler_stack
    key = f"{stack.prefix}b/huge.jpeg"
    stack.put(key, NORMAL_XRAY.read_bytes())
    monkeypatch.setattr(stack.app, "settings", dataclasses.replace(stack.app.settings, max_object_bytes=1000))
    s3 = CallCounter(stack.app.s3_client)
    monkeypatch.setattr(stack.app, "s3_client", s3)
    reads = body_reads(stack.app.s3_client._target, monkeypatch)

    assert invoke(stack, queued_event(stack)) == {"batchItemFailures": []}

    item = stack.item(key)
    assert (item["status"], item["reason"]) == (results.STATUS_FAILED, "object_too_large")
    assert item["size_bytes"] == NORMAL_XRAY.stat().st_size
    # One GET, refused from its Content-Length: the body is closed unread, and no HEAD is made.
    assert s3.calls == ["get_object"] and reads == []


def test_an_object_deleted_before_scoring_is_recorded_missing(handler_stack):
    stack = handler_stack
    key = f"{stack.prefix}b/gone.jpeg"
    stack.put(key, NORMAL_XRAY.read_bytes())
    stack.s3.delete_object(Bucket=stack.settings.bucket, Key=key)

    assert invoke(stack, queued_event(stack)) == {"batchItemFailures": []}

    item = stack.item(key)
    assert (item["status"], item["reason"]) == (results.STATUS_FAILED, "object_missing")


@pytest.mark.parametrize("event_shape", ["aws", "moto"])
def test_the_same_event_delivered_twice_yields_one_item_and_one_download(handler_stack, monkeypatch, event_shape):
    stack = handler_stack
    key = f"{stack.prefix}b/twice.jpeg"
    upload = stack.put(key, PNEUMONIA_XRAY.read_bytes())
    event = queued_event(stack)
    if event_shape == "aws":
        event["Records"] = with_version_ids(event["Records"], upload)
    invoke(stack, event)
    first = stack.item(key)
    s3 = CallCounter(stack.app.s3_client)
    monkeypatch.setattr(stack.app, "s3_client", s3)
    reads = body_reads(s3._target, monkeypatch)

    assert invoke(stack, event) == {"batchItemFailures": []}

    assert stack.item(key)["write_id"] == first["write_id"]
    # An event without a versionId (moto's) names no version: S3 is asked which one is current,
    # by the GET whose headers answer before its body is read (and it never is).
    assert len(stack.items()) == 1 and s3.calls == ([] if event_shape == "aws" else ["get_object"])
    assert reads == []


def test_delete_then_reupload_of_the_same_bytes_is_scored_again(handler_stack):
    stack = handler_stack
    key = f"{stack.prefix}b/again.jpeg"
    stack.put(key, NORMAL_XRAY.read_bytes())
    invoke(stack, queued_event(stack))
    first = stack.item(key)
    stack.s3.delete_object(Bucket=stack.settings.bucket, Key=key)
    again = stack.put(key, NORMAL_XRAY.read_bytes())

    assert invoke(stack, queued_event(stack)) == {"batchItemFailures": []}

    item = stack.item(key)
    assert item["status"] == results.STATUS_SCORED and item["write_id"] != first["write_id"]
    assert item["version_id"] == again["VersionId"] != first["version_id"]


def test_an_object_missing_result_never_stands_for_a_later_upload_of_the_same_bytes(handler_stack):
    stack = handler_stack
    key = f"{stack.prefix}b/back.jpeg"
    stack.put(key, NORMAL_XRAY.read_bytes())
    stack.s3.delete_object(Bucket=stack.settings.bucket, Key=key)
    invoke(stack, queued_event(stack))
    assert stack.item(key)["reason"] == "object_missing"
    back = stack.put(key, NORMAL_XRAY.read_bytes())

    assert invoke(stack, queued_event(stack)) == {"batchItemFailures": []}

    item = stack.item(key)
    assert item["status"] == results.STATUS_SCORED and item["version_id"] == back["VersionId"]


def test_a_late_event_of_an_overwritten_upload_never_rescores_the_current_version(handler_stack, monkeypatch):
    stack = handler_stack
    key = f"{stack.prefix}b/overwritten.jpeg"
    first = stack.put(key, NORMAL_XRAY.read_bytes())
    stack.put(key, PNEUMONIA_XRAY.read_bytes())
    records = queued_event(stack)["Records"]  # moto's shape: ETags, no versionId
    older_event = next(r for r in records if first["ETag"].strip('"') in r["body"])
    latest_event = next(r for r in records if r is not older_event)
    invoke(stack, {"Records": [latest_event]})
    scored = stack.item(key)
    reads = body_reads(stack.app.s3_client, monkeypatch)

    assert invoke(stack, {"Records": [older_event]}) == {"batchItemFailures": []}

    assert stack.item(key) == scored
    assert reads == []  # the GET's ETag says the event is superseded: its body is never read


def test_a_superseded_version_is_skipped_and_the_latest_is_scored(handler_stack):
    stack = handler_stack
    key = f"{stack.prefix}b/replaced.jpeg"
    first = stack.put(key, NORMAL_XRAY.read_bytes())
    latest = stack.put(key, PNEUMONIA_XRAY.read_bytes())
    records = with_version_ids(queued_event(stack)["Records"], first, latest)
    older_event = next(r for r in records if first["VersionId"] in r["body"])
    latest_event = next(r for r in records if latest["VersionId"] in r["body"])

    # Delivered out of order: the older upload's event comes last and must not win.
    assert invoke(stack, {"Records": [latest_event]}) == {"batchItemFailures": []}
    assert invoke(stack, {"Records": [older_event]}) == {"batchItemFailures": []}
    assert stack.item(key)["version_id"] == latest["VersionId"]
    assert stack.item(key)["etag"] == latest["ETag"].strip('"')


def test_a_newer_model_rescores_and_keeps_the_previous_score(handler_stack):
    stack = handler_stack
    key = f"{stack.prefix}b/rescore.jpeg"
    stack.put(key, PNEUMONIA_XRAY.read_bytes())
    event = queued_event(stack)
    invoke(stack, event)
    older = stack.item(key)
    # The same item as an older model left it.
    stack.table.put_item(Item=dict(older, model_sha256="0" * 64, model_version="2026.01.01-1"))

    assert invoke(stack, event) == {"batchItemFailures": []}

    item = stack.item(key)
    assert item["model_sha256"] == stack.app.model.sha256[:16]
    assert item["previous"]["model_version"] == "2026.01.01-1"
    assert item["previous"]["probability"] == older["probability"]


@pytest.mark.parametrize("operation, error", [
    ("put_item", client_error("ProvisionedThroughputExceededException", 400, "PutItem")),
    ("put_item", client_error("InternalServerError", 500, "PutItem")),
])
def test_dynamodb_throttling_or_5xx_fails_only_that_record(handler_stack, monkeypatch, operation, error):
    stack = handler_stack
    stack.put(f"{stack.prefix}b/one.jpeg", NORMAL_XRAY.read_bytes())
    stack.put(f"{stack.prefix}b/two.jpeg", NORMAL_XRAY.read_bytes())
    event = queued_event(stack)
    client = stack.app.result_store.client
    flaky = CallCounter(client, fail={operation: error})
    monkeypatch.setattr(stack.app.result_store, "client", flaky)
    # Only the first record meets the fault.
    original_score = stack.app._score_object

    def score_then_recover(created):
        try:
            original_score(created)
        finally:
            monkeypatch.setattr(stack.app.result_store, "client", client)
    monkeypatch.setattr(stack.app, "_score_object", score_then_recover)

    response = invoke(stack, event)

    assert failed_ids(response) == [event["Records"][0]["messageId"]]
    assert [item[results.KEY] for item in stack.items()] == [unquote_plus(json.loads(event["Records"][1]["body"])[
        "Records"][0]["s3"]["object"]["key"])]


def test_s3_5xx_fails_the_record_for_redelivery(handler_stack, monkeypatch):
    stack = handler_stack
    stack.put(f"{stack.prefix}b/one.jpeg", NORMAL_XRAY.read_bytes())
    event = queued_event(stack)
    monkeypatch.setattr(stack.app, "s3_client", CallCounter(
        stack.app.s3_client, fail={"get_object": client_error("InternalError", 500, "GetObject")}))

    # The only record failed: the whole invocation fails and Lambda redelivers the batch.
    with pytest.raises(BatchProcessingError):
        invoke(stack, event)
    assert stack.items() == []


def test_s3_test_event_is_acknowledged(handler_stack):
    stack = handler_stack
    messages = stack.receive_raw()
    assert any("s3:TestEvent" in m["Body"] for m in messages)
    event = {"Records": [sqs_record(m, stack.queue_arn, stack.settings.region) for m in messages]}

    assert invoke(stack, event) == {"batchItemFailures": []}
    assert stack.items() == []


def test_an_unknown_message_is_recorded_failed_not_retried(handler_stack):
    stack = handler_stack
    stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=json.dumps({"hello": "world"}))
    messages = [m for m in stack.receive_raw() if "s3:TestEvent" not in m["Body"]]
    event = {"Records": [sqs_record(m, stack.queue_arn, stack.settings.region) for m in messages]}

    assert invoke(stack, event) == {"batchItemFailures": []}
    assert invoke(stack, event) == {"batchItemFailures": []}

    [item] = stack.items()
    assert item[results.KEY] == f"sqs-message/{messages[0]['MessageId']}"
    assert (item["status"], item["reason"], item["batch"]) == (
        results.STATUS_FAILED, "unknown_event", results.UNKNOWN_EVENT_BATCH)


def test_logs_show_a_key_digest_never_the_key_in_one_compact_line_per_image(handler_stack, monkeypatch):
    stack = handler_stack
    log = io.StringIO()
    monkeypatch.setattr(stack.app.logger.registered_handler, "stream", log)
    key = f"{stack.prefix}b/patient-qzxw-doe.jpeg"
    stack.put(key, NORMAL_XRAY.read_bytes())
    stack.put(f"{stack.prefix}b/patient-qzxw-doe.txt.jpeg", b"not an image")

    invoke(stack, queued_event(stack))

    logs = log.getvalue()
    assert '"message":"image scored"' in logs and '"reason":"not_an_image"' in logs
    assert results.key_digest(key) in logs
    assert "qzxw" not in logs
    [line] = [json.loads(text) for text in logs.splitlines() if results.key_digest(key) in text]
    # One compact line per image: the outcome and what ties it to its object and message; the
    # time, request, trace and service come once per invocation (Lambda's lines, the log group).
    assert set(line) == {"level", "message", "correlation_id", "object", "status", "write", "total_ms", "label",
                         "probability"}
    assert (line["message"], line["status"], line["write"]) == ("image scored", "SCORED", "written")


def cold_start(model_directory: Path) -> subprocess.CompletedProcess:
    environment = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    environment.update(PNEUMOSCAN_MODEL_DIR=str(model_directory), RESULTS_TABLE="results", IMAGES_BUCKET="images",
                       AWS_DEFAULT_REGION="us-east-1", POWERTOOLS_TRACE_DISABLED="true")
    return subprocess.run([sys.executable, "-c", "import app"], cwd=FUNCTION_DIR, env=environment,
                          capture_output=True, text=True, timeout=120)


def test_a_missing_model_fails_the_cold_start_loudly(tmp_path):
    run = cold_start(tmp_path)
    assert run.returncode != 0
    assert "the model could not be loaded" in run.stdout and "ModelLoadError" in run.stderr


def test_a_corrupt_model_fails_the_cold_start_loudly(tmp_path):
    metadata = json.loads((model_dir() / "model.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps(metadata))
    tflite = (model_dir() / metadata["file"]).read_bytes()
    (tmp_path / metadata["file"]).write_bytes(tflite[: len(tflite) // 2])

    run = cold_start(tmp_path)

    assert run.returncode != 0 and "sha256" in run.stderr


def test_debug_logging_shows_keys_in_clear(handler_stack, monkeypatch):
    stack = handler_stack
    log = io.StringIO()
    monkeypatch.setattr(stack.app.logger.registered_handler, "stream", log)
    monkeypatch.setattr(stack.app, "settings", dataclasses.replace(stack.app.settings, log_keys_in_clear=True))
    key = f"{stack.prefix}b/patient-qzxw-doe.jpeg"
    stack.put(key, NORMAL_XRAY.read_bytes())

    invoke(stack, queued_event(stack))

    assert key in log.getvalue()


def test_each_invocation_adds_its_counts_to_the_hourly_stats_item(handler_stack):
    stack = handler_stack
    stack.put(f"{stack.prefix}ward-7/a.jpeg", NORMAL_XRAY.read_bytes())
    stack.put(f"{stack.prefix}ward-7/b.jpeg", PNEUMONIA_XRAY.read_bytes())
    stack.put(f"{stack.prefix}ward-7/c.jpeg", b"not an image")
    invoke(stack, queued_event(stack))
    stack.put(f"{stack.prefix}ward-7/d.jpeg", NORMAL_XRAY.read_bytes())
    invoke(stack, queued_event(stack))

    results_by_key = {item[results.KEY]: item for item in stack.items()}
    (counters,) = stack.stats_items()
    hour = min(item["scored_at"] for item in results_by_key.values())[:13]
    assert counters["batch"] == f"_stats#{hour[:10]}"
    assert counters[results.KEY] == f"_stats#{hour}#{stack.app.model.version}#ward-7"
    positives = sum(item.get("label") == "PNEUMONIA" for item in results_by_key.values())
    assert (counters["images"], counters["scored"], counters["failed"], counters["positives"]) == (4, 3, 1, positives)
    assert float(counters["probability_sum"]) == pytest.approx(
        sum(float(item.get("probability", 0)) for item in results_by_key.values()), abs=1e-5)
    assert sum(value for name, value in counters.items() if name.startswith("handler_ms_le_")) == 4


def test_a_duplicate_delivery_is_not_counted_twice(handler_stack):
    stack = handler_stack
    stack.put(f"{stack.prefix}b/a.jpeg", NORMAL_XRAY.read_bytes())
    event = queued_event(stack)
    invoke(stack, event)
    invoke(stack, event)

    (counters,) = stack.stats_items()
    assert counters["images"] == 1
