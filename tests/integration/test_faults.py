"""Duplicates, retries and faults through the real handler, S3 notifications and SQS (moto).

Every fault is injected at the HTTP layer of the handler's own boto3 clients (see
tests/faults.py), so its retry configuration and per-record failure handling run
as on AWS. After each fault clears, every image has exactly one item.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from pathlib import Path

import pytest
from botocore.retries import standard
from typer.testing import CliRunner

from faults import DYNAMODB_5XX, DYNAMODB_THROTTLING, S3_5XX, S3_SLOW_DOWN, Fault
from image_cases import reference_bytes
from pneumoscan.model import MODEL_DIR_ENV, ModelLoadError, default_model_dir
from pneumoscan.results import KEY
from pneumoscan_cli import dlq as dlq_module
from pneumoscan_cli import backfill as backfill_module
from pneumoscan_cli.aws import Target
from pneumoscan_cli.main import app as cli
from pneumoscan_cli.worker import FUNCTION_DIR, LambdaFunction

pytestmark = pytest.mark.integration
BYSTANDERS = ("bystander-1.jpeg", "bystander-2.jpeg")


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    """botocore's standard retries, attempts and all, without sleeping seconds between them."""
    monkeypatch.setattr(standard.ExponentialBackoff, "delay_amount", lambda self, context: 0.01)


def _upload(stack, *names: str) -> dict[str, str]:
    keys = {name: f"{stack.prefix}faults/{name}" for name in names}
    for key in keys.values():
        stack.put(key, reference_bytes())
    return keys


def _assert_exactly_one_scored_item_each(stack, keys) -> None:
    items = [item for item in stack.items() if item[KEY].startswith(stack.prefix)]
    assert sorted(item[KEY] for item in items) == sorted(keys)
    assert all(item["status"] == "SCORED" for item in items), [(i[KEY], i.get("reason")) for i in items]
    assert stack.queue_depth(stack.queue_url) == 0
    assert stack.queue_depth(stack.dead_letter_queue_url) == 0


def _dynamodb(app):
    return app.result_store.client


# -- transient faults ------------------------------------------------------------------------

@pytest.mark.parametrize(("service", "operation", "error"), [
    ("dynamodb", "PutItem", DYNAMODB_THROTTLING),
    ("dynamodb", "GetItem", DYNAMODB_5XX),
    ("s3", "GetObject", S3_5XX),
    ("s3", "GetObject", S3_SLOW_DOWN),
])
def test_a_brief_fault_is_absorbed_by_the_clients_retries(handler_stack, service, operation, error):
    stack = handler_stack
    client = stack.app.s3_client if service == "s3" else _dynamodb(stack.app)
    fault = Fault(client, operation, error, times=2)
    keys = _upload(stack, *BYSTANDERS)

    outcomes = stack.deliver()

    assert fault.injected == 2
    assert all(outcome.failed == 0 for outcome in outcomes)
    _assert_exactly_one_scored_item_each(stack, keys.values())


@pytest.mark.parametrize(("service", "operation", "error", "read_timeout"), [
    ("dynamodb", "PutItem", DYNAMODB_THROTTLING, False),
    ("dynamodb", "PutItem", DYNAMODB_5XX, False),
    ("dynamodb", "GetItem", DYNAMODB_5XX, False),
    ("s3", "GetObject", S3_5XX, False),
    ("s3", "GetObject", S3_SLOW_DOWN, False),
    ("s3", "GetObject", None, True),  # a read slower than the client's read timeout, every attempt
])
def test_a_lasting_fault_fails_only_its_record_which_is_scored_once_it_clears(
        handler_stack, service, operation, error, read_timeout):
    stack = handler_stack
    client = stack.app.s3_client if service == "s3" else _dynamodb(stack.app)
    keys = _upload(stack, "victim.jpeg", *BYSTANDERS)
    fault = Fault(client, operation, error, only_if="victim", read_timeout=read_timeout)

    first = stack.deliver()

    assert sum(outcome.failed for outcome in first) == 1
    assert fault.injected >= 5  # every attempt of the client's standard retries
    assert stack.item(keys["victim.jpeg"]) is None
    assert all(stack.item(keys[name])["status"] == "SCORED" for name in BYSTANDERS)
    assert stack.queue_depth(stack.queue_url) == 1  # back in the queue, not lost

    fault.clear()
    stack.deliver()

    _assert_exactly_one_scored_item_each(stack, keys.values())


def test_a_write_applied_whose_response_was_lost_is_not_written_twice(handler_stack):
    stack = handler_stack
    keys = _upload(stack, "victim.jpeg", *BYSTANDERS)
    fault = Fault(_dynamodb(stack.app), "PutItem", DYNAMODB_5XX, only_if="victim", reaches_service=True)

    first = stack.deliver()

    assert sum(outcome.failed for outcome in first) == 1
    written = stack.item(keys["victim.jpeg"])
    assert written is not None  # the service applied it; the handler only saw 500s

    fault.clear()
    stack.deliver()

    assert stack.item(keys["victim.jpeg"])["write_id"] == written["write_id"]
    _assert_exactly_one_scored_item_each(stack, keys.values())


def test_slow_s3_reads_still_score_and_show_in_the_fetch_timing(handler_stack):
    stack = handler_stack
    fault = Fault(stack.app.s3_client, "GetObject", delay_s=1.0)
    keys = _upload(stack, "slow.jpeg")

    stack.deliver()

    assert fault.injected == 1
    item = stack.item(keys["slow.jpeg"])
    assert item["status"] == "SCORED"
    assert float(item["timings_ms"]["fetch"]) >= 1000
    _assert_exactly_one_scored_item_each(stack, keys.values())


# -- duplicates and retries -----------------------------------------------------------------

def test_the_same_message_delivered_twice_yields_one_item(handler_stack):
    stack = handler_stack
    keys = _upload(stack, "twice.jpeg")
    messages = stack.receive_raw()
    worker = stack.worker()

    worker.process(messages)
    first = stack.item(keys["twice.jpeg"])
    again = worker.process(messages)  # the same records, as an at-least-once redelivery

    assert again.failed == 0
    second = stack.item(keys["twice.jpeg"])
    assert second["write_id"] == first["write_id"] and second["scored_at"] == first["scored_at"]
    _assert_exactly_one_scored_item_each(stack, keys.values())


def test_the_same_object_uploaded_twice_unchanged_yields_one_item(handler_stack):
    stack = handler_stack
    keys = _upload(stack, "again.jpeg")
    stack.put(keys["again.jpeg"], reference_bytes())  # same bytes, a second event

    outcomes = stack.deliver()

    assert sum(outcome.received for outcome in outcomes) >= 2
    _assert_exactly_one_scored_item_each(stack, keys.values())


def test_one_message_raced_by_two_workers_yields_one_item(handler_stack):
    stack = handler_stack
    keys = _upload(stack, "raced.jpeg")
    messages = stack.receive_raw()
    containers = [stack.cold_start(), stack.cold_start()]
    # Two containers, as two processes would be: neither's metrics flush empties the other's.
    assert containers[0].metrics.metric_set is not containers[1].metrics.metric_set
    workers = [stack.worker(container.lambda_handler) for container in containers]
    both_read = threading.Barrier(2, timeout=30)
    for container in containers:
        # Both containers read "no item yet" before either writes: the worst interleaving.
        store = container.result_store
        real_save = store.save
        store.save = lambda item, seen, _save=real_save: (both_read.wait(), _save(item, seen))[1]
    outcomes = [None, None]

    def run(index):
        outcomes[index] = workers[index].process(messages)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert all(outcome is not None and outcome.error is None for outcome in outcomes)
    # The loser either recognises the winner's identical result, or fails its record for a retry
    # that then finds it; never a second item.
    stack.expire_in_flight()
    stack.deliver()
    _assert_exactly_one_scored_item_each(stack, keys.values())


def newer_model(tmp_path: Path, version: str = "2099.01.01-1") -> Path:
    """The same weights under a new version and checksum: a model upgrade, as far as items can tell."""
    folder = tmp_path / "newer-model"
    shutil.copytree(default_model_dir(), folder)
    metadata = json.loads((folder / "model.json").read_text())
    model_file = folder / metadata["file"]
    model_file.write_bytes(model_file.read_bytes() + b"\0" * 64)  # trailing bytes: a new artifact, same graph
    metadata.update(version=version, sha256=hashlib.sha256(model_file.read_bytes()).hexdigest())
    # The same graph, so the same feature statistics and population head: they follow the new checksum.
    for section in ("ood", "population"):
        if metadata.get(section):
            metadata[section]["model_sha256"] = metadata["sha256"]
    (folder / "model.json").write_text(json.dumps(metadata))
    return folder


def test_a_rescore_with_a_newer_model_replaces_the_item_and_keeps_the_previous_score(
        handler_stack, tmp_path, monkeypatch):
    stack = handler_stack
    keys = _upload(stack, "rescored.jpeg")
    messages = stack.receive_raw()
    stack.worker().process(messages)
    old = stack.item(keys["rescored.jpeg"])

    monkeypatch.setenv(MODEL_DIR_ENV, str(newer_model(tmp_path)))
    upgraded = stack.worker(stack.cold_start().lambda_handler)
    upgraded.process(messages)
    new = stack.item(keys["rescored.jpeg"])

    assert new["model_version"] == "2099.01.01-1" and new["model_sha256"] != old["model_sha256"]
    assert new["previous"]["model_version"] == old["model_version"]
    assert new["previous"]["probability"] == old["probability"]
    assert new["previous"]["label"] == old["label"]

    upgraded.process(messages)  # the rescore itself delivered twice
    assert stack.item(keys["rescored.jpeg"])["write_id"] == new["write_id"]
    _assert_exactly_one_scored_item_each(stack, keys.values())


def test_a_late_delivery_to_an_old_model_container_keeps_the_newer_result(handler_stack, tmp_path, monkeypatch):
    stack = handler_stack
    old_container = stack.app
    keys = _upload(stack, "late.jpeg")
    messages = stack.receive_raw()
    monkeypatch.setenv(MODEL_DIR_ENV, str(newer_model(tmp_path)))
    stack.worker(stack.cold_start().lambda_handler).process(messages)

    stack.worker(old_container.lambda_handler).process(messages)

    assert stack.item(keys["late.jpeg"])["model_version"] == "2099.01.01-1"


def _target(stack) -> Target:
    return Target(bucket=stack.settings.bucket, table=stack.settings.table, region=stack.settings.region,
                  queue_url=stack.queue_url, dead_letter_queue_url=stack.dead_letter_queue_url,
                  incoming_prefix=stack.prefix, source="test",
                  _clients={"s3": stack.s3, "sqs": stack.sqs, "dynamodb": stack.session.client("dynamodb")})


def test_backfill_after_a_model_upgrade_rescores_everything_once(handler_stack, tmp_path, monkeypatch):
    stack = handler_stack
    keys = _upload(stack, "one.jpeg", "two.jpeg", "three.jpeg")
    stack.deliver()
    monkeypatch.setenv(MODEL_DIR_ENV, str(newer_model(tmp_path)))
    upgraded = stack.cold_start()
    monkeypatch.setattr(backfill_module, "resolve_target", lambda *args, **kwargs: _target(stack))
    runner = CliRunner()

    outcome = runner.invoke(cli, ["backfill", "--model-older-than", "2099.01.01-1"])
    assert outcome.exit_code == 0, outcome.output
    stack.deliver(upgraded.lambda_handler)

    items = [stack.item(key) for key in keys.values()]
    assert all(item["model_version"] == "2099.01.01-1" and "previous" in item for item in items)
    again = runner.invoke(cli, ["backfill", "--model-older-than", "2099.01.01-1"])
    assert "enqueued 0" in again.output
    _assert_exactly_one_scored_item_each(stack, keys.values())


# -- the worker dying, the model missing -----------------------------------------------------

def test_a_worker_dying_mid_batch_loses_nothing_and_duplicates_nothing(handler_stack):
    stack = handler_stack
    keys = _upload(stack, *(f"batch-{index}.jpeg" for index in range(6)))
    store = stack.app.result_store
    real_save, saved = store.save, []

    def save_then_die(item, seen):
        result = real_save(item, seen)
        saved.append(item[KEY])
        if len(saved) == 3:
            raise SystemExit("container killed")  # no batch response, no deletes
        return result

    store.save = save_then_die
    with pytest.raises(SystemExit):
        stack.deliver()
    written_before = {key: stack.item(key)["write_id"] for key in saved}
    assert len(written_before) == 3

    stack.expire_in_flight()   # the visibility timeout passes
    stack.cold_start()         # a new container takes over
    stack.deliver()

    _assert_exactly_one_scored_item_each(stack, keys.values())
    assert {key: stack.item(key)["write_id"] for key in saved} == written_before


def _broken_model(tmp_path: Path, damage: str) -> Path:
    folder = tmp_path / f"model-{damage}"
    shutil.copytree(default_model_dir(), folder)
    metadata = json.loads((folder / "model.json").read_text())
    model_file = folder / metadata["file"]
    if damage == "missing_file":
        model_file.unlink()
    elif damage == "flipped_bytes":
        data = bytearray(model_file.read_bytes())
        data[len(data) // 2] ^= 0xFF
        model_file.write_bytes(bytes(data))
    elif damage == "not_a_model":  # checksum right, content garbage: only the runtime can tell
        model_file.write_bytes(b"this is not a flatbuffer" * 100)
        metadata["sha256"] = hashlib.sha256(model_file.read_bytes()).hexdigest()
        (folder / "model.json").write_text(json.dumps(metadata))
    elif damage == "bad_metadata":
        (folder / "model.json").write_text("{ not json")
    elif damage == "empty_folder":
        shutil.rmtree(folder)
        folder.mkdir()
    return folder


@pytest.mark.parametrize("damage", ["missing_file", "flipped_bytes", "not_a_model", "bad_metadata", "empty_folder"])
def test_a_missing_or_corrupt_model_fails_every_record_until_it_is_fixed(
        handler_stack, tmp_path, monkeypatch, caplog, damage):
    stack = handler_stack
    keys = _upload(stack, "a.jpeg", "b.jpeg", "c.jpeg")
    good_model = default_model_dir()
    monkeypatch.setenv(MODEL_DIR_ENV, str(_broken_model(tmp_path, damage)))
    with pytest.raises(ModelLoadError):
        stack.cold_start()  # fail fast: at init, not per image
    assert any(record.levelname == "ERROR" and "model could not be loaded" in record.getMessage()
               for record in caplog.records)  # loud

    function = LambdaFunction(FUNCTION_DIR)   # the local worker's stand-in for the Lambda runtime's init
    outcomes = stack.deliver(function)
    assert all(outcome.error for outcome in outcomes)
    assert sum(outcome.failed for outcome in outcomes) == sum(outcome.received for outcome in outcomes) >= 3
    assert [item for item in stack.items() if item[KEY].startswith(stack.prefix)] == []

    monkeypatch.setenv(MODEL_DIR_ENV, str(good_model))  # a good model is deployed
    stack.deliver(LambdaFunction(FUNCTION_DIR))
    _assert_exactly_one_scored_item_each(stack, keys.values())


def test_a_poison_message_ends_in_the_dlq_after_max_receive_count_and_redrives(handler_stack, monkeypatch):
    stack = handler_stack
    keys = _upload(stack, "poison.jpeg", *BYSTANDERS)
    fault = Fault(_dynamodb(stack.app), "PutItem", DYNAMODB_5XX, only_if="poison")
    max_receive_count = stack.settings.max_receive_count

    stack.deliver(rounds=max_receive_count + 1)

    assert stack.queue_depth(stack.queue_url) == 0
    assert stack.queue_depth(stack.dead_letter_queue_url) == 1
    assert stack.item(keys["poison.jpeg"]) is None
    monkeypatch.setattr(dlq_module, "resolve_target", lambda *args, **kwargs: _target(stack))
    runner = CliRunner()
    listed = runner.invoke(cli, ["dlq", "list", "--json"])
    rows = [json.loads(line) for line in listed.stdout.splitlines() if line.startswith("{")]
    assert [row["object_keys"] for row in rows] == [[keys["poison.jpeg"]]]
    assert rows[0]["result"] == "no result" and rows[0]["receive_count"] >= 1

    fault.clear()
    assert runner.invoke(cli, ["dlq", "redrive"]).exit_code == 0
    stack.deliver()

    _assert_exactly_one_scored_item_each(stack, keys.values())
