"""`pneumoscan local up` builds what template.yaml describes, and Ctrl-C stops all of it."""

import json
import os
import re
import signal
import time
from pathlib import Path

import cfnlint.decode.cfn_yaml
import pytest
from botocore.exceptions import ClientError
from typer.testing import CliRunner

from pneumoscan_cli.aws import STATE_FILE
from pneumoscan_cli.main import app
from pneumoscan_cli.template import DEFAULT_TEMPLATE

from .conftest import start_stack, stop_stack

TEMPLATE = cfnlint.decode.cfn_yaml.load(str(DEFAULT_TEMPLATE))
RESOURCES, PARAMETERS = TEMPLATE["Resources"], TEMPLATE["Parameters"]


def _value(value):
    """A property's literal, its Parameter's default, or a `!Sub` of Parameters with their defaults."""
    if isinstance(value, dict) and "Ref" in value:
        return PARAMETERS[value["Ref"]]["Default"]
    if isinstance(value, dict) and "Fn::Sub" in value:
        return re.sub(r"\$\{(\w+)\}", lambda match: str(PARAMETERS[match.group(1)]["Default"]), value["Fn::Sub"])
    return value


def _of_type(resource_type, having=None):
    return next(resource["Properties"] for resource in RESOURCES.values()
                if resource["Type"] == resource_type and (having is None or having in resource["Properties"]))


def test_local_resources_match_the_template(local_stack):
    target = local_stack.target
    sqs, s3, dynamodb = target.client("sqs"), target.client("s3"), target.client("dynamodb")

    queue = _of_type("AWS::SQS::Queue", having="RedrivePolicy")
    attributes = sqs.get_queue_attributes(QueueUrl=target.queue_url, AttributeNames=["All"])["Attributes"]
    assert int(attributes["VisibilityTimeout"]) == _value(queue["VisibilityTimeout"])
    assert int(attributes["MessageRetentionPeriod"]) == _value(queue["MessageRetentionPeriod"])
    redrive = json.loads(attributes["RedrivePolicy"])
    assert int(redrive["maxReceiveCount"]) == _value(queue["RedrivePolicy"]["maxReceiveCount"])
    dead_letter_arn = sqs.get_queue_attributes(
        QueueUrl=target.dead_letter_queue_url, AttributeNames=["All"])["Attributes"]
    assert redrive["deadLetterTargetArn"] == dead_letter_arn["QueueArn"]
    dead_letter_id = queue["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]
    assert int(dead_letter_arn["MessageRetentionPeriod"]) == \
        RESOURCES[dead_letter_id]["Properties"]["MessageRetentionPeriod"]

    table = _of_type("AWS::DynamoDB::Table")
    description = dynamodb.describe_table(TableName=target.table)["Table"]
    assert description["KeySchema"] == table["KeySchema"]
    assert description["BillingModeSummary"]["BillingMode"] == table["BillingMode"]
    assert {index["IndexName"]: (index["KeySchema"], index["Projection"])
            for index in description["GlobalSecondaryIndexes"]} == {
        index["IndexName"]: (index["KeySchema"], index["Projection"]) for index in table["GlobalSecondaryIndexes"]}

    bucket = _of_type("AWS::S3::Bucket", having="NotificationConfiguration")
    notifications = s3.get_bucket_notification_configuration(Bucket=target.bucket)["QueueConfigurations"]
    expected = bucket["NotificationConfiguration"]["QueueConfigurations"]
    assert [n["Events"] for n in notifications] == [[e["Event"]] for e in expected]
    queue_urls = {"ScoringQueue": target.queue_url, "ReturnQueue": target.return_queue_url}
    assert [n["QueueArn"] for n in notifications] == [
        sqs.get_queue_attributes(QueueUrl=queue_urls[e["Queue"]["Fn::GetAtt"][0]],
                                 AttributeNames=["QueueArn"])["Attributes"]["QueueArn"] for e in expected]
    returns = sqs.get_queue_attributes(QueueUrl=target.return_queue_url, AttributeNames=["All"])["Attributes"]
    return_queue = RESOURCES["ReturnQueue"]["Properties"]
    assert int(returns["VisibilityTimeout"]) == return_queue["VisibilityTimeout"]
    assert int(json.loads(returns["RedrivePolicy"])["maxReceiveCount"]) == \
        _value(return_queue["RedrivePolicy"]["maxReceiveCount"])
    assert json.loads(returns["RedrivePolicy"])["deadLetterTargetArn"] == sqs.get_queue_attributes(
        QueueUrl=target.return_dead_letter_queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    assert [sorted((rule["Name"].lower(), rule["Value"]) for rule in n["Filter"]["Key"]["FilterRules"])
            for n in notifications] == [
        sorted((rule["Name"].lower(), _value(rule["Value"])) for rule in e["Filter"]["S3Key"]["Rules"])
        for e in expected]
    assert s3.get_bucket_versioning(Bucket=target.bucket).get("Status") == \
        bucket["VersioningConfiguration"]["Status"]


def test_status_reports_the_running_stack(local_stack):
    result = CliRunner().invoke(app, ["local", "status"], env=local_stack.env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["endpoint_url"] == local_stack.state["endpoint_url"]


def _workers_of(queue_url):
    """pids of the worker processes polling this queue (their command line names it)."""
    wanted = ["pneumoscan_cli.worker", "--queue-url", queue_url]
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            arguments = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:  # gone meanwhile, or not a process
            continue
        if any(arguments[index:index + 3] == wanted for index in range(len(arguments))):
            pids.append(int(proc.name))
    return pids


def test_a_dead_worker_is_replaced_and_ctrl_c_stops_everything(tmp_path):
    stack = start_stack(tmp_path, "--workers", "2")
    workers = stack.state["workers"]
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)  # as a Lambda environment can vanish mid-batch
    deadline = time.monotonic() + 20
    while "worker-1 exited" not in stack.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "starting a new one" in stack.log()
    replacement = _workers_of(stack.state["queue_url"])
    assert len(replacement) == 2 and workers[0] not in replacement
    assert stop_stack(stack) == 0, stack.log()
    assert _workers_of(stack.state["queue_url"]) == []
    assert not (tmp_path / STATE_FILE).exists()


def test_the_local_stack_refuses_keys_s3_refuses(local_stack):
    target = local_stack.target
    s3 = target.client("s3")
    longest = "results/" + "k" * (1024 - len("results/"))  # outside the notification prefix: never scored
    s3.put_object(Bucket=target.bucket, Key=longest, Body=b"x")

    with pytest.raises(ClientError) as refused:
        s3.put_object(Bucket=target.bucket, Key=longest + "k", Body=b"x")

    assert refused.value.response["Error"]["Code"] == "KeyTooLongError"
