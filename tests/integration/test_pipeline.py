"""Real full-resolution X-rays through S3 -> SQS -> handler -> DynamoDB, read back with the CLI."""

import json
import time
from pathlib import Path
from urllib.parse import unquote_plus

import pytest
from PIL import Image
from typer.testing import CliRunner

from pneumoscan.model import PneumoniaModel
from pneumoscan.results import OVERLAY_FOLDER, STRUCTURED_REPORT_FOLDER, get_result
from pneumoscan.settings import DEFAULT_INCOMING_PREFIX, RESULTS_PREFIX
from pneumoscan_cli.main import app

from .conftest import real_xrays, start_stack, stop_stack

BATCH = "integration"
runner = CliRunner()


def _cli(stack, *arguments):
    result = runner.invoke(app, list(arguments), env=stack.env)
    assert result.exit_code == 0, f"{arguments}: {result.output}\n--- local up log ---\n{stack.log()}"
    return result


@pytest.fixture(scope="module")
def uploaded_batch(local_stack, tmp_path_factory):
    """12 originals (6 per class) plus a text file named like a JPEG, uploaded with --wait."""
    folder = tmp_path_factory.mktemp("upload")
    for xray in real_xrays(per_class=6):
        (folder / xray.parent.name).mkdir(exist_ok=True)
        (folder / xray.parent.name / xray.name).symlink_to(xray)
    (folder / "notes.jpeg").write_text("referral letter, not an image")
    started = time.perf_counter()
    result = _cli(local_stack, "upload", str(folder), "--batch", BATCH, "--wait", "--timeout", "120")
    items = json.loads(_cli(local_stack, "results", "--batch", BATCH, "--format", "json").stdout)
    return folder, items, result.output, time.perf_counter() - started


def test_every_upload_has_one_item(uploaded_batch):
    folder, items, output, _ = uploaded_batch
    expected = sorted(f"incoming/{BATCH}/{path.relative_to(folder).as_posix()}"
                      for path in folder.rglob("*") if path.is_file())
    assert [item["object_key"] for item in items] == expected
    assert "13 result(s): 12 scored" in output


def test_xrays_are_scored_with_the_bundled_model(uploaded_batch):
    folder, items, _, _ = uploaded_batch
    model = PneumoniaModel()
    scored = [item for item in items if item["status"] == "SCORED"]
    assert len(scored) == 12
    for item in scored:
        assert 0.0 <= item["probability"] <= 1.0
        assert item["label"] == model.label(item["probability"])
        assert (item["model_version"], item["model_sha256"]) == (model.version, model.sha256[:16])
        assert item["batch"] == BATCH
        assert ("attention_day" in item) == (item["label"] == "PNEUMONIA" or bool(item.get("warnings")))
        with Image.open(folder / item["object_key"].removeprefix(f"incoming/{BATCH}/")) as original:
            assert (item["image_width"], item["image_height"]) == original.size
        assert item["timings_ms"]["total"] > 0


def test_a_non_image_ends_failed_with_a_reason(uploaded_batch):
    _, items, _, _ = uploaded_batch
    (failed,) = [item for item in items if item["status"] == "FAILED"]
    assert failed["object_key"] == f"incoming/{BATCH}/notes.jpeg"
    assert failed["reason"] == "not_an_image" and failed["error"]
    assert failed["attention_day"] == failed["scored_at"][:10]


def test_outcome_queries_find_the_same_positives_and_failures(local_stack, uploaded_batch):
    _, items, _, _ = uploaded_batch
    ours = {item["object_key"] for item in items}
    positives = json.loads(_cli(local_stack, "results", "--label", "pneumonia", "--since", "1h",
                                "--format", "json").stdout)
    assert {item["object_key"] for item in positives} & ours == {
        item["object_key"] for item in items if item.get("label") == "PNEUMONIA"}
    failures = json.loads(_cli(local_stack, "results", "--status", "failed", "--format", "json").stdout)
    assert f"incoming/{BATCH}/notes.jpeg" in {item["object_key"] for item in failures}


def test_offline_score_agrees_with_the_pipeline(local_stack, uploaded_batch):
    folder, items, _, _ = uploaded_batch
    by_key = {item["object_key"]: item for item in items}
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    lines = _cli(local_stack, "score", *map(str, files), "--json").stdout.splitlines()
    assert len(lines) == len(files)
    for line in lines:
        offline = json.loads(line)
        assert set(offline) >= {"image", "status", "probability", "label", "error"}
        pipeline = by_key[f"incoming/{BATCH}/{Path(offline['image']).relative_to(folder).as_posix()}"]
        assert offline["status"] == pipeline["status"]
        assert offline["label"] == pipeline.get("label")
        assert offline["reason"] == pipeline.get("reason")
        if offline["probability"] is not None:
            assert offline["probability"] == pytest.approx(pipeline["probability"], abs=1e-5)


def test_a_message_that_keeps_failing_ends_in_the_dead_letter_queue(tmp_path):
    """A cold start that cannot load the model fails every invocation: after maxReceiveCount
    receives SQS moves the message to the DLQ, and no item is written for it."""
    broken_model = tmp_path / "no-model"
    broken_model.mkdir()
    stack = start_stack(tmp_path, "--retry-after", "0", "--model-dir", str(broken_model),
                        "--parameter-overrides", "MaximumBatchingWindowInSeconds=0",
                        "--parameter-overrides", "MaxReceiveCount=3")
    try:
        target = stack.target
        xray = real_xrays(per_class=1)[0]
        key = f"incoming/poison/{xray.name}"
        target.client("s3").put_object(Bucket=target.bucket, Key=key, Body=xray.read_bytes())
        sqs = target.client("sqs")
        deadline, moved = time.monotonic() + 60, {}
        while time.monotonic() < deadline and key not in moved:
            response = sqs.receive_message(QueueUrl=target.dead_letter_queue_url, MaxNumberOfMessages=10,
                                           WaitTimeSeconds=1, VisibilityTimeout=0,
                                           MessageSystemAttributeNames=["ApproximateReceiveCount"])
            moved = {unquote_plus(record["s3"]["object"]["key"]): int(message["Attributes"]["ApproximateReceiveCount"])
                     for message in response.get("Messages", [])
                     for record in json.loads(message["Body"]).get("Records", [])}
        assert key in moved, stack.log()
        # Received maxReceiveCount times from the queue (plus this receive from the DLQ).
        assert moved[key] == 3 + 1
        assert "handler init failed" in stack.log()
        queue = sqs.get_queue_attributes(QueueUrl=target.queue_url, AttributeNames=["All"])["Attributes"]
        assert queue["ApproximateNumberOfMessages"] == "0"
        assert get_result(target.client("dynamodb"), target.table, key) is None
    finally:
        assert stop_stack(stack) == 0


def test_heat_maps_are_stored_in_the_items_and_nothing_else_is_written(local_stack, uploaded_batch):
    _, items, _, _ = uploaded_batch
    target = local_stack.target
    s3, sqs = target.client("s3"), target.client("sqs")
    for item in (item for item in items if item["status"] == "SCORED"):
        assert "overlay_key" not in item and item["heat_map"] and item["cam"]["heat_peak"] > 0
    # Other tests share the stack (DICOM uploads write structured reports): look only at this batch's.
    for folder in (OVERLAY_FOLDER, STRUCTURED_REPORT_FOLDER):
        prefix = f"{RESULTS_PREFIX}{folder}{DEFAULT_INCOMING_PREFIX}{BATCH}/"
        assert s3.list_objects_v2(Bucket=target.bucket, Prefix=prefix)["KeyCount"] == 0, prefix
    # The worker deletes a batch's messages just after its items are written: give it a moment.
    deadline, in_queue = time.monotonic() + 15, None
    while in_queue != ("0", "0") and time.monotonic() < deadline:
        attributes = sqs.get_queue_attributes(QueueUrl=target.queue_url, AttributeNames=["All"])["Attributes"]
        in_queue = (attributes["ApproximateNumberOfMessages"], attributes["ApproximateNumberOfMessagesNotVisible"])
        time.sleep(0.2)
    assert in_queue == ("0", "0"), "the pipeline (or something else) put messages on the queue"


def test_stats_counts_the_batch_from_the_counter_items(local_stack, uploaded_batch):
    _, items, _, _ = uploaded_batch
    positives = sum(item.get("label") == "PNEUMONIA" for item in items)
    deadline = time.monotonic() + 30
    while True:  # the counters are added after the invocation's last item is written
        rows = json.loads(_cli(local_stack, "stats", "--since", "2h", "--by", "batch", "--format", "json").stdout)
        row = next((row for row in rows if row["batch"] == BATCH), None)
        if (row and row["images"] >= 13) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert row is not None, rows
    assert (row["images"], row["scored"], row["failed"], row["positives"]) == (13, 12, 1, positives)
    assert row["mean_probability"] == pytest.approx(
        sum(item["probability"] for item in items if item["status"] == "SCORED") / 12, abs=1e-4)
    assert row["handler_ms_p50"] is not None and row["end_to_end_s_p95"] is not None

    # Other tests share the stack: the day's table counts their images too.
    table = _cli(local_stack, "stats", "--since", "2h", "--batch", BATCH)
    assert "13" in table.stdout


def test_a_key_near_s3s_limit_is_scored_with_its_heat_map(local_stack, tmp_path):
    xray = real_xrays(per_class=1)[0]
    deep = tmp_path / ("a" * 250) / ("b" * 250) / ("c" * 250) / ("d" * 231)
    deep.mkdir(parents=True)
    (deep / "x.jpeg").symlink_to(xray)
    _cli(local_stack, "upload", str(tmp_path), "--batch", "long-keys", "--wait", "--timeout", "120")
    items = json.loads(_cli(local_stack, "results", "--batch", "long-keys", "--format", "json").stdout)

    assert [len(item["object_key"].encode()) for item in items] == [1010]
    # The heat map is in the item (an overlay PNG's key near the limit: the unit tests, OverlayImages=all).
    assert items[0]["status"] == "SCORED" and items[0]["heat_map"]


def test_delete_then_reupload_of_the_same_bytes_is_scored_again_and_waited_for(local_stack, tmp_path):
    (tmp_path / "again.jpeg").symlink_to(real_xrays(per_class=1)[0])
    _cli(local_stack, "upload", str(tmp_path), "--batch", "again", "--wait", "--timeout", "120")
    target = local_stack.target
    s3, key = target.client("s3"), f"{target.incoming_prefix}again/again.jpeg"
    first = json.loads(_cli(local_stack, "results", "--batch", "again", "--format", "json").stdout)[0]
    s3.delete_object(Bucket=target.bucket, Key=key)

    _cli(local_stack, "upload", str(tmp_path), "--batch", "again", "--wait", "--timeout", "120")

    second = json.loads(_cli(local_stack, "results", "--batch", "again", "--format", "json").stdout)[0]
    current = s3.head_object(Bucket=target.bucket, Key=key)
    assert second["status"] == "SCORED" and second["version_id"] == current["VersionId"] != first["version_id"]


def test_positives_carry_the_bundled_heads_subtype_and_results_filters_it(local_stack, uploaded_batch):
    _, items, _, _ = uploaded_batch
    head = PneumoniaModel().metadata.subtype
    assert head is not None, "the bundled model has no subtype head: run make subtype"
    shown = {}
    for item in items:
        if item.get("label") != "PNEUMONIA":
            assert "subtype" not in item and "subtype_probability" not in item
            continue
        probability = item["subtype_probability"]
        uncertain = bool(head.uncertain(probability))
        assert ("subtype_uncertain" in item["warnings"]) == uncertain
        assert item.get("subtype") == (None if uncertain else str(head.subtypes(probability)))
        shown[item["object_key"]] = item.get("subtype") or "uncertain"
    assert shown, "no positive in the batch"
    for subtype in ("bacterial", "viral", "uncertain"):
        listed = json.loads(_cli(local_stack, "results", "--batch", BATCH, "--subtype", subtype,
                                 "--format", "json").stdout)
        assert [item["object_key"] for item in listed] == sorted(k for k, v in shown.items() if v == subtype)
