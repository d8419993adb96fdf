"""Which stack a command talks to: --stack outputs, --endpoint-url, or the local state file."""

import json

import boto3
import pytest
from moto import mock_aws

from pneumoscan_cli import aws

STACK_TEMPLATE = {
    "Resources": {"Queue": {"Type": "AWS::SQS::Queue"}},
    "Outputs": {
        "ImagesBucketName": {"Value": "images-bucket"},
        "IncomingPrefix": {"Value": "scans/"},
        "ScoringQueueUrl": {"Value": {"Ref": "Queue"}},
        "DeadLetterQueueUrl": {"Value": "https://sqs/dlq"},
        "ResultsTableName": {"Value": "results-table"},
    },
}


@pytest.fixture(autouse=True)
def no_local_stack(tmp_path, monkeypatch):
    monkeypatch.setenv(aws.STATE_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")


def test_stack_outputs_name_the_resources():
    with mock_aws():
        boto3.client("cloudformation", region_name="eu-west-1").create_stack(
            StackName="pneumoscan", TemplateBody=json.dumps(STACK_TEMPLATE))
        target = aws.resolve_target(stack="pneumoscan", region="eu-west-1")
    assert (target.bucket, target.table, target.incoming_prefix) == ("images-bucket", "results-table", "scans/")
    assert target.dead_letter_queue_url == "https://sqs/dlq" and "Queue" in target.queue_url
    assert target.endpoint_url is None and not target.is_local


def test_a_stack_without_the_outputs_is_refused():
    with mock_aws():
        boto3.client("cloudformation", region_name="eu-west-1").create_stack(
            StackName="other", TemplateBody=json.dumps({"Resources": STACK_TEMPLATE["Resources"]}))
        with pytest.raises(aws.TargetError, match="ImagesBucketName"):
            aws.resolve_target(stack="other", region="eu-west-1")


def test_endpoint_url_needs_names_unless_it_is_the_local_stack():
    with pytest.raises(aws.TargetError, match="--bucket"):
        aws.resolve_target(endpoint_url="http://127.0.0.1:9")
    target = aws.resolve_target(endpoint_url="http://127.0.0.1:9", bucket="b", table="t")
    assert (target.bucket, target.table, target.endpoint_url) == ("b", "t", "http://127.0.0.1:9")

    aws.write_state(aws.Target(bucket="lb", table="lt", region="us-east-1", endpoint_url="http://127.0.0.1:9",
                               queue_url="http://127.0.0.1:9/q", source="local"))
    local = aws.resolve_target(endpoint_url="http://127.0.0.1:9/")
    assert (local.bucket, local.table, local.queue_url, local.is_local) == ("lb", "lt", "http://127.0.0.1:9/q", True)


def test_stack_and_endpoint_together_are_refused():
    with pytest.raises(aws.TargetError, match="alternatives"):
        aws.resolve_target(stack="s", endpoint_url="http://x")


def test_the_local_state_file_is_the_default():
    with pytest.raises(aws.TargetError, match="local up"):
        aws.resolve_target()
    aws.write_state(aws.Target(bucket="lb", table="lt", region="us-east-1", endpoint_url="http://127.0.0.1:9",
                               source="local"), pid=1)
    target = aws.resolve_target()
    assert (target.bucket, target.endpoint_url, target.is_local) == ("lb", "http://127.0.0.1:9", True)
