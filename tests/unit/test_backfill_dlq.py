"""`pneumoscan backfill` and `pneumoscan dlq list|redrive` against moto, resources built from template.yaml."""

from __future__ import annotations

import json
from types import SimpleNamespace

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws
from typer.testing import CliRunner

from event_cases import WRONG_SHAPES
from pneumoscan.events import parse_message
from pneumoscan.results import KEY, version_key
from pneumoscan_cli import backfill as backfill_module
from pneumoscan_cli import dlq as dlq_module
from pneumoscan_cli.aws import STATE_DIR_ENV, Target
from pneumoscan_cli.main import app
from pneumoscan_cli.template import create_resources, read_settings

OLD_MODEL, NEW_MODEL = "2026.11.20-9", "2026.11.25-10"
runner = CliRunner()


@pytest.fixture
def stack(monkeypatch, tmp_path):
    """Bucket, queue, DLQ and table as the template defines them, and a Target the commands resolve to."""
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / "state"))  # backfill checkpoints
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    settings = read_settings()
    with mock_aws():
        session = boto3.session.Session(region_name=settings.region)
        sqs, s3, dynamodb = session.client("sqs"), session.client("s3"), session.client("dynamodb")
        # No bucket notifications: these tests put the messages on the queues themselves.
        created = create_resources(settings, s3=s3, sqs=sqs, dynamodb=dynamodb, notifications=False)
        target = Target(bucket=settings.bucket, table=settings.table, region=settings.region,
                        queue_url=created.queue_url, dead_letter_queue_url=created.dead_letter_queue_url,
                        incoming_prefix=settings.incoming_prefix, source="test",
                        _clients={"s3": s3, "sqs": sqs, "dynamodb": dynamodb})
        for module in (backfill_module, dlq_module):
            monkeypatch.setattr(module, "resolve_target", lambda *args, **kwargs: target)
        yield target


def _put(target: Target, key: str, body: bytes = b"\xff\xd8\xff not really scored here") -> str:
    return target.client("s3").put_object(Bucket=target.bucket, Key=key, Body=body)["ETag"].strip('"')


def _result(target: Target, key: str, etag: str, model_version: str, status: str = "SCORED") -> None:
    target.client("dynamodb").put_item(TableName=target.table, Item={
        KEY: {"S": key}, "etag": {"S": etag}, "model_version": {"S": model_version}, "status": {"S": status},
        "batch": {"S": key.split("/")[1]}})


def _drain(target: Target, queue_url: str) -> list[str]:
    sqs, bodies = target.client("sqs"), []
    while True:
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", [])
        if not messages:
            return bodies
        for message in messages:
            bodies.append(message["Body"])
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])


def _enqueued_keys(target: Target) -> list[str]:
    keys = []
    for body in _drain(target, target.queue_url):
        parsed = parse_message(body)  # the handler's own parser must understand every message
        assert not parsed.skipped
        keys.extend(created.key for created in parsed.objects)
    return sorted(keys)


@pytest.fixture
def backlog(stack):
    """Objects in every state a backfill must tell apart; odd keys on purpose."""
    p = stack.incoming_prefix
    keys = {"old_model": f"{p}ward 3/patient+1 Zoë.jpeg", "unscored": f"{p}ward 3/b%20c.png",
            "current": f"{p}clinic/王芳.jpeg", "overwritten": f"{p}clinic/e.JPG",
            "failed_old": f"{p}clinic/broken.jpeg"}
    etags = {name: _put(stack, key) for name, key in keys.items()}
    _put(stack, f"{p}ward 3/", b"")             # a console-made "folder": no image
    _put(stack, "results/overlays/x.png")       # outside the incoming prefix
    _result(stack, keys["old_model"], etags["old_model"], OLD_MODEL)
    _result(stack, keys["current"], etags["current"], NEW_MODEL)
    _result(stack, keys["overwritten"], "an-earlier-etag", NEW_MODEL)
    _result(stack, keys["failed_old"], etags["failed_old"], OLD_MODEL, status="FAILED")
    return keys


def test_backfill_only_unscored_enqueues_objects_without_an_up_to_date_result(stack, backlog):
    outcome = runner.invoke(app, ["backfill", "--only-unscored"])

    assert outcome.exit_code == 0, outcome.output
    assert _enqueued_keys(stack) == sorted([backlog["unscored"], backlog["overwritten"]])
    assert "enqueued 2" in outcome.output


def test_backfill_model_older_than_rescored_old_results_and_the_unscored(stack, backlog):
    outcome = runner.invoke(app, ["backfill", "--model-older-than", NEW_MODEL])

    assert outcome.exit_code == 0, outcome.output
    assert _enqueued_keys(stack) == sorted([backlog["old_model"], backlog["unscored"], backlog["failed_old"]])


def test_backfill_without_a_filter_enqueues_every_object_under_the_prefix(stack, backlog):
    outcome = runner.invoke(app, ["backfill"])

    assert outcome.exit_code == 0, outcome.output
    assert _enqueued_keys(stack) == sorted(backlog.values())


def test_backfill_tells_folder_placeholders_from_objects_by_size_not_key_shape(stack):
    p = stack.incoming_prefix
    _put(stack, f"{p}slashes/", b"")
    _put(stack, f"{p}slashes/scan/")  # holds bytes: an object, whatever its key looks like

    outcome = runner.invoke(app, ["backfill", "--prefix", "slashes/"])

    assert outcome.exit_code == 0, outcome.output
    assert _enqueued_keys(stack) == [f"{p}slashes/scan/"]


def test_backfill_prefix_is_relative_to_the_incoming_prefix(stack, backlog):
    outcome = runner.invoke(app, ["backfill", "--prefix", "clinic/"])

    assert outcome.exit_code == 0, outcome.output
    assert _enqueued_keys(stack) == sorted(key for key in backlog.values() if "/clinic/" in key)


def test_backfill_dry_run_sends_nothing(stack, backlog):
    outcome = runner.invoke(app, ["backfill", "--dry-run"])

    assert outcome.exit_code == 0, outcome.output
    assert "would enqueue 5" in outcome.output
    assert _enqueued_keys(stack) == []


def test_backfill_filters_are_alternatives(stack):
    outcome = runner.invoke(app, ["backfill", "--only-unscored", "--model-older-than", NEW_MODEL])

    assert outcome.exit_code != 0


def test_backfill_messages_look_like_s3_notifications(stack, backlog):
    runner.invoke(app, ["backfill", "--prefix", "ward 3/"])
    record = json.loads(_drain(stack, stack.queue_url)[0])["Records"][0]

    assert record["eventName"].startswith("ObjectCreated:")
    assert record["s3"]["bucket"]["name"] == stack.bucket
    # S3 URL-encodes keys in notifications, spaces as '+', so a literal '+' must be %2B.
    assert " " not in record["s3"]["object"]["key"]
    assert "%2B" in record["s3"]["object"]["key"] or "%25" in record["s3"]["object"]["key"]


def test_version_order_is_numeric():
    ordered = ["1.2.0", "1.10.0", "2026.11.20-9", "2026.11.25-2", "2026.11.25-10", "2027.1.1-1"]
    assert sorted(ordered, key=version_key) == ordered


def test_send_batches_resends_entries_sqs_refused_once():
    sqs = boto3.client("sqs", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    url = "https://sqs.us-east-1.amazonaws.com/123456789012/q"
    bodies = [f"body-{index}" for index in range(3)]
    with Stubber(sqs) as stub:
        stub.add_response("send_message_batch", {
            "Successful": [{"Id": "0", "MessageId": "m0", "MD5OfMessageBody": "x"},
                           {"Id": "2", "MessageId": "m2", "MD5OfMessageBody": "x"}],
            "Failed": [{"Id": "1", "SenderFault": False, "Code": "InternalError"}]},
            {"QueueUrl": url, "Entries": [{"Id": str(i), "MessageBody": b} for i, b in enumerate(bodies)]})
        stub.add_response("send_message_batch", {
            "Successful": [{"Id": "1", "MessageId": "m1", "MD5OfMessageBody": "x"}], "Failed": []},
            {"QueueUrl": url, "Entries": [{"Id": "1", "MessageBody": "body-1"}]})

        assert backfill_module.send_batches(sqs, url, bodies) == 3


def test_send_batches_gives_up_loudly_when_sqs_refuses_twice():
    sqs = boto3.client("sqs", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    url = "https://sqs.us-east-1.amazonaws.com/123456789012/q"
    refused = {"Successful": [], "Failed": [{"Id": "0", "SenderFault": False, "Code": "InternalError"}]}
    with Stubber(sqs) as stub:
        stub.add_response("send_message_batch", refused)
        stub.add_response("send_message_batch", refused)

        with pytest.raises(backfill_module.EnqueueError, match="refused 1"):
            backfill_module.send_batches(sqs, url, ["only"])


# -- dlq ----------------------------------------------------------------------------------

@pytest.fixture
def dead_letters(stack):
    """Three messages in the DLQ: two S3 notifications (one with a FAILED result) and junk."""
    p = stack.incoming_prefix
    scored_key, unscored_key = f"{p}night/a b.jpeg", f"{p}night/ü+.png"
    _result(stack, scored_key, "etag", NEW_MODEL, status="FAILED")
    sqs = stack.client("sqs")
    bodies = [backfill_module.notification_body(stack, backfill_module.StoredObject(key, "etag", 10))
              for key in (scored_key, unscored_key)] + ["not json at all"]
    for body in bodies:
        sqs.send_message(QueueUrl=stack.dead_letter_queue_url, MessageBody=body)
    return {"bodies": bodies, "keys": [scored_key, unscored_key]}


def _depth(target: Target, queue_url: str) -> int:
    attributes = target.client("sqs").get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"])


def test_dlq_list_shows_every_message_and_consumes_none(stack, dead_letters):
    outcome = runner.invoke(app, ["dlq", "list", "--json"])

    assert outcome.exit_code == 0, outcome.output
    rows = [json.loads(line) for line in outcome.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 3
    by_key = {tuple(row["object_keys"]): row for row in rows}
    assert by_key[(dead_letters["keys"][0],)]["result"] == "FAILED"
    assert by_key[(dead_letters["keys"][1],)]["result"] == "no result"
    assert by_key[()]["result"] == "not an S3 event"
    # Released at once: visible again, nothing deleted.
    assert _depth(stack, stack.dead_letter_queue_url) == 3


@pytest.mark.parametrize("view", [["--json"], []], ids=["json", "table"])
def test_dlq_list_shows_every_message_however_malformed(stack, view):
    sqs = stack.client("sqs")
    for body in WRONG_SHAPES.values():
        sqs.send_message(QueueUrl=stack.dead_letter_queue_url, MessageBody=body)

    outcome = runner.invoke(app, ["dlq", "list", *view], env={"COLUMNS": "200"})

    assert outcome.exit_code == 0, outcome.output
    if view:
        rows = [json.loads(line) for line in outcome.stdout.splitlines() if line.startswith("{")]
        assert len(rows) == len(WRONG_SHAPES)
        assert all(row["object_keys"] == [] and row["result"] == "not an S3 event" and row["problem"]
                   for row in rows)
    else:
        assert f"{len(WRONG_SHAPES)} message(s)" in outcome.stdout
    assert _depth(stack, stack.dead_letter_queue_url) == len(WRONG_SHAPES)


def test_dlq_list_table_and_limit(stack, dead_letters):
    outcome = runner.invoke(app, ["dlq", "list", "--limit", "2"])

    assert outcome.exit_code == 0, outcome.output
    assert "2 message(s)" in outcome.stdout


def test_dlq_redrive_moves_every_message_back_unchanged(stack, dead_letters):
    outcome = runner.invoke(app, ["dlq", "redrive"])

    assert outcome.exit_code == 0, outcome.output
    assert "redrove 3 of 3" in outcome.output
    assert _depth(stack, stack.dead_letter_queue_url) == 0
    assert sorted(_drain(stack, stack.queue_url)) == sorted(dead_letters["bodies"])


def test_dlq_redrive_limit_leaves_the_rest(stack, dead_letters):
    outcome = runner.invoke(app, ["dlq", "redrive", "--limit", "1"])

    assert outcome.exit_code == 0, outcome.output
    assert _depth(stack, stack.dead_letter_queue_url) == 2
    assert len(_drain(stack, stack.queue_url)) == 1


class DiesAfter:
    """An SQS client that forwards `calls` SendMessageBatch calls, then dies as a killed run would."""

    def __init__(self, sqs, calls: int):
        self.sqs, self.calls = sqs, calls

    def send_message_batch(self, **arguments):
        if self.calls == 0:
            raise KeyboardInterrupt
        self.calls -= 1
        return self.sqs.send_message_batch(**arguments)


@pytest.fixture
def archive(stack):
    """250 objects: three chunks of at most 100 keys."""
    keys = [f"{stack.incoming_prefix}archive/{index:04d}.jpeg" for index in range(250)]
    for key in keys:
        _put(stack, key, b"x")
    return keys


def test_an_interrupted_backfill_resumes_after_the_last_chunk_it_finished(stack, archive, tmp_path, monkeypatch):
    monkeypatch.setattr(backfill_module, "CHECKPOINT_EVERY_S", 0)  # a checkpoint after every chunk
    checkpoint = tmp_path / "job.json"
    sqs = stack.client("sqs")
    stack._clients["sqs"] = DiesAfter(sqs, calls=13)  # chunk 1 (10 calls) sent, chunk 2 part-sent
    interrupted = runner.invoke(app, ["backfill", "--prefix", "archive/", "--checkpoint", str(checkpoint)])
    assert interrupted.exit_code != 0
    saved = json.loads(checkpoint.read_text())
    assert (saved["last_key"], saved["listed"], saved["enqueued"]) == (archive[99], 100, 100)

    stack._clients["sqs"] = sqs
    resumed = runner.invoke(app, ["backfill", "--prefix", "archive/", "--checkpoint", str(checkpoint)])

    assert resumed.exit_code == 0, resumed.output
    assert "resuming after 100 object(s)" in resumed.output and "enqueued 250" in resumed.output
    enqueued = _enqueued_keys(stack)
    assert sorted(set(enqueued)) == archive
    assert len(enqueued) == 250 + 30  # only the part-sent chunk's 30 messages went twice
    assert not checkpoint.exists()  # finished: the next run starts afresh


def test_a_checkpoint_of_another_backfill_is_refused_not_resumed(stack, archive, tmp_path, monkeypatch):
    monkeypatch.setattr(backfill_module, "CHECKPOINT_EVERY_S", 0)
    checkpoint = tmp_path / "job.json"
    stack._clients["sqs"], sqs = DiesAfter(stack.client("sqs"), calls=10), stack.client("sqs")
    runner.invoke(app, ["backfill", "--prefix", "archive/", "--checkpoint", str(checkpoint)])
    stack._clients["sqs"] = sqs

    other = runner.invoke(app, ["backfill", "--only-unscored", "--prefix", "archive/", "--checkpoint", str(checkpoint)])
    assert other.exit_code != 0 and "checkpoint of another backfill" in other.output

    restarted = runner.invoke(app, ["backfill", "--only-unscored", "--prefix", "archive/", "--restart",
                                    "--checkpoint", str(checkpoint)])
    assert restarted.exit_code == 0, restarted.output
    assert "enqueued 250" in restarted.output


def test_the_default_checkpoint_is_one_file_per_job(stack):
    one = backfill_module.default_checkpoint("b", "incoming/", "all")
    assert one == backfill_module.default_checkpoint("b", "incoming/", "all")
    assert one != backfill_module.default_checkpoint("b", "incoming/ward/", "all")
    assert one != backfill_module.default_checkpoint("b", "incoming/", "only-unscored")


def test_rate_limit_paces_messages():
    clock, slept = [0.0], []

    def sleep(seconds):
        slept.append(seconds)
        clock[0] += seconds

    limit = backfill_module.RateLimit(20, clock=lambda: clock[0], sleep=sleep)
    for _ in range(4):
        limit.wait(10)  # 40 messages at 20/s: the last batch may go at t = 1.5 s
    assert clock[0] == pytest.approx(1.5)
    assert backfill_module.RateLimit(None).interval == 0


def test_backfill_rate_option_is_used_for_every_send(stack, archive, monkeypatch):
    waits = []
    monkeypatch.setattr(backfill_module.RateLimit, "wait", lambda self, count: waits.append((self.interval, count)))
    outcome = runner.invoke(app, ["backfill", "--prefix", "archive/", "--rate", "50"])
    assert outcome.exit_code == 0, outcome.output
    assert sum(count for _, count in waits) == 250 and {interval for interval, _ in waits} == {0.02}


def test_checkpoints_are_written_at_most_once_a_second(stack, archive, tmp_path, monkeypatch):
    ticks = iter(range(1000))
    clock = SimpleNamespace(monotonic=lambda: next(ticks) * 0.4)  # 0.4 s later at every look
    monkeypatch.setattr(backfill_module, "time", clock)
    saves = []
    monkeypatch.setattr(backfill_module.Checkpoint, "save", lambda self, path: saves.append(self.last_key))
    outcome = runner.invoke(app, ["backfill", "--prefix", "archive/", "--no-count",
                                  "--checkpoint", str(tmp_path / "job.json")])
    assert outcome.exit_code == 0, outcome.output
    assert saves == [archive[-1]]  # chunks at 0.4, 0.8 and 1.2 s after the start: only the third saves
