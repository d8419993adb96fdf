"""The S3 Batch Operations path: the enqueuer function on moto SQS, and `pneumoscan batch-ops`
against moto S3 and a recorded s3control request (moto does not implement CreateJob)."""

from __future__ import annotations

import importlib
import json
import sys

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import ANY, Stubber
from moto import mock_aws
from typer.testing import CliRunner

from pneumoscan.events import parse_message
from pneumoscan_cli import batch_operations
from pneumoscan_cli.aws import Target
from pneumoscan_cli.main import app
from pneumoscan_cli.template import read_settings
from pneumoscan_cli.worker import FUNCTION_DIR

SETTINGS = read_settings()
ACCOUNT = "123456789012"
FUNCTION_ARN = f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:pneumoscan-BatchEnqueueFunction-abc"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/pneumoscan-BatchOperationsRole-abc"
runner = CliRunner()


@pytest.fixture
def aws(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", SETTINGS.region)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        yield boto3.session.Session(region_name=SETTINGS.region)


# -- the enqueuer function -----------------------------------------------------------------------
@pytest.fixture
def enqueuer(aws, monkeypatch):
    queue_url = aws.client("sqs").create_queue(QueueName="scoring")["QueueUrl"]
    monkeypatch.setenv("SCORING_QUEUE_URL", queue_url)
    monkeypatch.setenv("INCOMING_PREFIX", SETTINGS.incoming_prefix)
    monkeypatch.setenv("IMAGES_BUCKET", "archive")
    monkeypatch.syspath_prepend(str(FUNCTION_DIR))
    sys.modules.pop("batch_enqueue", None)
    module = importlib.import_module("batch_enqueue")
    module.queue_url = queue_url
    yield module
    sys.modules.pop("batch_enqueue", None)


def batch_event(*keys: str, version: str | None = "v1", bucket: str = "archive") -> dict:
    """What Batch Operations sends (schema 1.0): one task, the key URL-encoded as in the manifest."""
    from urllib.parse import quote_plus
    return {"invocationSchemaVersion": "1.0", "invocationId": "inv-1", "job": {"id": "job-1"},
            "tasks": [{"taskId": f"t{index}", "s3Key": quote_plus(key, safe="/"), "s3VersionId": version,
                       "s3BucketArn": f"arn:aws:s3:::{bucket}"} for index, key in enumerate(keys)]}


def queued(module) -> list[str]:
    sqs = module.sqs
    messages = sqs.receive_message(QueueUrl=module.queue_url, MaxNumberOfMessages=10).get("Messages", [])
    return [message["Body"] for message in messages]


def test_each_task_becomes_the_notification_the_scorer_parses(enqueuer):
    key = f"{SETTINGS.incoming_prefix}ward 3/patient+1 Zoë.jpeg"
    response = enqueuer.lambda_handler(batch_event(key), None)

    assert response["invocationId"] == "inv-1" and response["treatMissingKeysAs"] == "PermanentFailure"
    assert [(r["taskId"], r["resultCode"]) for r in response["results"]] == [("t0", "Succeeded")]
    (body,) = queued(enqueuer)
    (created,) = parse_message(body).objects
    assert (created.bucket, created.key, created.version_id) == ("archive", key, "v1")


def test_keys_outside_the_incoming_prefix_fail_permanently_and_are_not_enqueued(enqueuer):
    response = enqueuer.lambda_handler(batch_event("results/overlays/x.png", f"{SETTINGS.incoming_prefix}b/"), None)

    assert {r["resultCode"] for r in response["results"]} == {"PermanentFailure"}
    assert queued(enqueuer) == []


def test_objects_of_another_bucket_fail_permanently(enqueuer):
    response = enqueuer.lambda_handler(batch_event(f"{SETTINGS.incoming_prefix}b/a.jpeg", bucket="other"), None)

    assert response["results"][0]["resultCode"] == "PermanentFailure"
    assert queued(enqueuer) == []


def test_a_failed_send_is_a_temporary_failure_batch_operations_retries(enqueuer, monkeypatch):
    def throttled(**_):
        raise ClientError({"Error": {"Code": "RequestThrottled", "Message": "slow down"}}, "SendMessage")
    monkeypatch.setattr(enqueuer.sqs, "send_message", throttled)

    response = enqueuer.lambda_handler(batch_event(f"{SETTINGS.incoming_prefix}b/a.jpeg"), None)

    assert response["results"][0]["resultCode"] == "TemporaryFailure"
    assert "RequestThrottled" in response["results"][0]["resultString"]


# -- the CLI ----------------------------------------------------------------------------------
@pytest.fixture
def target(aws, monkeypatch):
    s3 = aws.client("s3")
    s3.create_bucket(Bucket=SETTINGS.bucket)
    s3control = boto3.client("s3control", region_name=SETTINGS.region)
    target = Target(bucket=SETTINGS.bucket, table=SETTINGS.table, region=SETTINGS.region,
                    incoming_prefix=SETTINGS.incoming_prefix, batch_function_arn=FUNCTION_ARN,
                    batch_role_arn=ROLE_ARN, source="test", _clients={"s3": s3, "s3control": s3control})
    monkeypatch.setattr(batch_operations, "resolve_target", lambda *args, **kwargs: target)
    return target


@pytest.fixture
def key_list(tmp_path):
    path = tmp_path / "keys.csv"
    p = SETTINGS.incoming_prefix
    path.write_text(f"key\n{p}ward 3/a b.jpeg\n{p}clinic/王芳.jpeg\nresults/overlays/x.png\n{p}clinic/\n"
                    f"other-bucket,{p}ward 3/c.jpeg\n{SETTINGS.bucket},{p}ward 3/d.jpeg\n", encoding="utf-8")
    return path


def expected_request(manifest_arn: str, manifest_format: str, fields: bool) -> dict:
    spec = {"Format": manifest_format} | ({"Fields": ["Bucket", "Key"]} if fields else {})
    return {
        "AccountId": ACCOUNT, "ConfirmationRequired": False,
        "Operation": {"LambdaInvoke": {"FunctionArn": FUNCTION_ARN, "InvocationSchemaVersion": "1.0"}},
        "Report": {"Bucket": f"arn:aws:s3:::{SETTINGS.bucket}", "Prefix": "results/batch-operations/reports",
                   "Format": "Report_CSV_20180820", "Enabled": True, "ReportScope": "AllTasks"},
        "Manifest": {"Spec": spec, "Location": {"ObjectArn": manifest_arn, "ETag": ANY}},
        "ClientRequestToken": ANY, "Description": ANY, "Priority": 10, "RoleArn": ROLE_ARN}


def test_create_from_a_key_list_uploads_a_csv_manifest_and_creates_the_job(target, key_list):
    s3control = target.client("s3control")
    with Stubber(s3control) as stub:
        stub.add_response("create_job", {"JobId": "job-42"},
                          expected_request(ANY, "S3BatchOperations_CSV_20180820", fields=True))
        outcome = runner.invoke(app, ["batch-ops", "create", "--keys", str(key_list)])
        stub.assert_no_pending_responses()

    assert outcome.exit_code == 0, outcome.output
    assert "job-42" in outcome.stdout
    s3 = target.client("s3")
    (manifest,) = s3.list_objects_v2(Bucket=target.bucket, Prefix="results/batch-operations/manifests/")["Contents"]
    p = SETTINGS.incoming_prefix
    # Only objects under the incoming prefix; keys URL-encoded as the CSV manifest format requires.
    assert s3.get_object(Bucket=target.bucket, Key=manifest["Key"])["Body"].read().decode().splitlines() == [
        f"{target.bucket},{p}ward+3/a+b.jpeg", f"{target.bucket},{p}clinic/%E7%8E%8B%E8%8A%B3.jpeg",
        f"{target.bucket},{p}ward+3/d.jpeg"]


def test_the_request_names_the_uploaded_manifest_and_its_etag(target, key_list):
    sent = []
    target.client("s3control").meta.events.register(
        "before-parameter-build.s3-control.CreateJob", lambda params, **_: sent.append(dict(params)))
    with Stubber(target.client("s3control")) as stub:
        stub.add_response("create_job", {"JobId": "job-1"}, expected_request(ANY, ANY, fields=True))
        outcome = runner.invoke(app, ["batch-ops", "create", "--keys", str(key_list), "--prefix", "ward 3/"])
    assert outcome.exit_code == 0, outcome.output

    location = sent[0]["Manifest"]["Location"]
    manifest_key = location["ObjectArn"].removeprefix(f"arn:aws:s3:::{target.bucket}/")
    stored = target.client("s3").get_object(Bucket=target.bucket, Key=manifest_key)
    assert location["ETag"] == stored["ETag"].strip('"')
    assert stored["Body"].read().decode().splitlines() == [
        f"{target.bucket},{SETTINGS.incoming_prefix}ward+3/a+b.jpeg",
        f"{target.bucket},{SETTINGS.incoming_prefix}ward+3/d.jpeg"]


def test_dry_run_prints_the_job_and_creates_nothing(target, key_list):
    with Stubber(target.client("s3control")) as stub:  # no response queued: any call would fail
        outcome = runner.invoke(app, ["batch-ops", "create", "--keys", str(key_list), "--dry-run", "--hold"])
        stub.assert_no_pending_responses()

    assert outcome.exit_code == 0, outcome.output
    shown = json.loads(outcome.stdout)
    assert shown["objects_in_manifest"] == 3
    job = shown["CreateJob"]
    assert job["Operation"]["LambdaInvoke"]["FunctionArn"] == FUNCTION_ARN and job["ConfirmationRequired"] is True
    assert job["Report"]["ReportScope"] == "AllTasks"
    assert "Contents" not in target.client("s3").list_objects_v2(Bucket=target.bucket)


def test_create_from_an_inventory_manifest_uses_its_etag(target):
    s3 = target.client("s3")
    s3.create_bucket(Bucket="inventory")
    etag = s3.put_object(Bucket="inventory", Key="images/daily/2026-11-26T01-00Z/manifest.json",
                         Body=b'{"files": []}')["ETag"].strip('"')
    request = expected_request("arn:aws:s3:::inventory/images/daily/2026-11-26T01-00Z/manifest.json",
                               "S3InventoryReport_CSV_20161130", fields=False)
    request["Manifest"]["Location"]["ETag"] = etag
    with Stubber(target.client("s3control")) as stub:
        stub.add_response("create_job", {"JobId": "job-7"}, request)
        outcome = runner.invoke(app, ["batch-ops", "create", "--inventory",
                                      "s3://inventory/images/daily/2026-11-26T01-00Z/manifest.json"])
        stub.assert_no_pending_responses()
    assert outcome.exit_code == 0, outcome.output


def test_create_needs_exactly_one_manifest_and_the_stack_names(target, key_list):
    assert runner.invoke(app, ["batch-ops", "create"]).exit_code != 0
    assert runner.invoke(app, ["batch-ops", "create", "--keys", str(key_list),
                               "--inventory", "s3://a/b/manifest.json"]).exit_code != 0
    target.batch_function_arn = None
    missing = runner.invoke(app, ["batch-ops", "create", "--keys", str(key_list)])
    assert missing.exit_code != 0 and "BatchEnqueueFunctionArn" in missing.output


def test_status_shows_progress_and_the_report(target):
    with Stubber(target.client("s3control")) as stub:
        stub.add_response("describe_job", {"Job": {
            "JobId": "job-42", "Status": "Complete",
            "ProgressSummary": {"TotalNumberOfTasks": 3, "NumberOfTasksSucceeded": 2, "NumberOfTasksFailed": 1},
            "Report": {"Bucket": f"arn:aws:s3:::{target.bucket}", "Prefix": "results/batch-operations/reports",
                       "Format": "Report_CSV_20180820", "Enabled": True, "ReportScope": "AllTasks"}}},
            {"AccountId": ACCOUNT, "JobId": "job-42"})
        outcome = runner.invoke(app, ["batch-ops", "status", "job-42"])
    assert outcome.exit_code == 0, outcome.output
    assert "Complete" in outcome.output and "succeeded 2" in outcome.output and "failed 1" in outcome.output
    assert f"s3://{target.bucket}/results/batch-operations/reports/job-job-42/" in outcome.output


def test_the_enqueuer_artifact_holds_only_its_handler_and_the_event_module(tmp_path):
    import subprocess

    artifact = tmp_path / "artifact"
    subprocess.run(["make", "-s", "-f", str(FUNCTION_DIR / "Makefile"), "build-BatchEnqueueFunction",
                    f"ARTIFACTS_DIR={artifact}"], check=True, capture_output=True)
    files = sorted(path.relative_to(artifact).as_posix() for path in artifact.rglob("*") if path.is_file())
    assert files == ["batch_enqueue.py", "pneumoscan/__init__.py", "pneumoscan/events.py"]
    # It imports on its own (boto3 comes with the runtime), not from this repository.
    run = subprocess.run([sys.executable, "-I", "-c", "import sys; sys.path.insert(0, '.'); import batch_enqueue"],
                         cwd=artifact, capture_output=True, text=True,
                         env={"SCORING_QUEUE_URL": "https://sqs/q", "IMAGES_BUCKET": "images",
                              "AWS_DEFAULT_REGION": "us-east-1"})
    assert run.returncode == 0, run.stderr
