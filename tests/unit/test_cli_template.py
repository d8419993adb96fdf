"""The local stack's settings come from template.yaml: checked against an independent parse."""

import json
import re
from pathlib import Path

import cfnlint.decode.cfn_yaml
import pytest

from pneumoscan_cli.template import (
    DEFAULT_TEMPLATE, LOCAL_STACK_NAME, Resolver, TemplateError, load_template, read_settings,
)

TEMPLATE = cfnlint.decode.cfn_yaml.load(str(DEFAULT_TEMPLATE))
RESOURCES = TEMPLATE["Resources"]
PARAMETERS = TEMPLATE["Parameters"]


def _default(reference):
    """A prefix as the template writes it: a parameter, or a parameter and a folder (`!Sub`)."""
    if not isinstance(reference, dict):
        return reference
    if "Ref" in reference:
        return PARAMETERS[reference["Ref"]]["Default"]
    return re.sub(r"\$\{(\w+)\}", lambda match: PARAMETERS[match.group(1)]["Default"], reference["Fn::Sub"])


def test_queue_settings_match_the_template():
    settings = read_settings()
    queue = RESOURCES[settings.queue.logical_id]["Properties"]
    dead_letter = RESOURCES[settings.dead_letter_queue.logical_id]["Properties"]
    assert settings.queue.visibility_timeout == int(_default(queue["VisibilityTimeout"]))
    assert settings.queue.retention == int(_default(queue["MessageRetentionPeriod"]))
    assert settings.dead_letter_queue.retention == int(_default(dead_letter["MessageRetentionPeriod"]))
    assert settings.max_receive_count == int(_default(queue["RedrivePolicy"]["maxReceiveCount"]))
    redrive = json.loads(settings.queue.attributes["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"].endswith(":" + settings.dead_letter_queue.name)
    # The issue's own invariants, as the template must keep them.
    assert settings.queue.visibility_timeout >= 6 * settings.function_timeout_s
    assert settings.dead_letter_queue.retention > settings.queue.retention


def test_event_source_and_environment_come_from_the_function():
    settings = read_settings()
    function = next(r for r in RESOURCES.values() if r["Type"] == "AWS::Serverless::Function")
    sqs_event = next(e["Properties"] for e in function["Properties"]["Events"].values() if e["Type"] == "SQS")
    assert settings.event_source.batch_size == _default(sqs_event["BatchSize"])
    assert settings.event_source.batching_window_s == _default(sqs_event["MaximumBatchingWindowInSeconds"])
    assert settings.event_source.maximum_concurrency == _default(sqs_event["ScalingConfig"]["MaximumConcurrency"])
    assert settings.event_source.report_batch_item_failures
    variables = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]
    assert set(variables) <= set(settings.environment)
    assert settings.environment["RESULTS_TABLE"] == settings.table
    assert settings.incoming_prefix == PARAMETERS["IncomingPrefix"]["Default"]


def test_table_keys_and_indexes_match_the_template():
    settings = read_settings()
    table = next(r for r in RESOURCES.values() if r["Type"] == "AWS::DynamoDB::Table")["Properties"]
    definition = settings.table_definition
    assert definition["KeySchema"] == table["KeySchema"]
    assert definition["AttributeDefinitions"] == table["AttributeDefinitions"]
    assert definition["GlobalSecondaryIndexes"] == table["GlobalSecondaryIndexes"]
    assert definition["BillingMode"] == table["BillingMode"]


def test_notification_filter_matches_the_template():
    settings = read_settings()
    bucket = next(r for r in RESOURCES.values() if r["Type"] == "AWS::S3::Bucket"
                  and "NotificationConfiguration" in r["Properties"])["Properties"]
    expected = bucket["NotificationConfiguration"]["QueueConfigurations"]
    assert [n["Events"] for n in settings.bucket_notifications] == [[e["Event"]] for e in expected]
    assert [n["Filter"]["Key"]["FilterRules"] for n in settings.bucket_notifications] == [
        [{"Name": rule["Name"], "Value": _default(rule["Value"])} for rule in e["Filter"]["S3Key"]["Rules"]]
        for e in expected]
    assert settings.bucket_versioning == (bucket["VersioningConfiguration"]["Status"] == "Enabled")
    assert [n["QueueArn"].rsplit(":", 1)[1] for n in settings.bucket_notifications] == [
        settings.queue.name, settings.return_queue.name]


def test_return_queues_come_from_the_template():
    settings = read_settings(parameter_overrides={"ReturnMaxReceiveCount": "3"})
    queue = RESOURCES["ReturnQueue"]["Properties"]
    assert settings.return_queue.name == f"{LOCAL_STACK_NAME}-returnqueue"
    assert settings.return_dead_letter_queue.name == f"{LOCAL_STACK_NAME}-returndeadletterqueue"
    assert settings.return_queue.visibility_timeout == queue["VisibilityTimeout"]
    assert json.loads(settings.return_queue.attributes["RedrivePolicy"]) == {
        "deadLetterTargetArn": f"arn:aws:sqs:us-east-1:123456789012:{settings.return_dead_letter_queue.name}",
        "maxReceiveCount": 3}


def test_parameter_overrides_apply_and_unknown_ones_are_refused():
    settings = read_settings(parameter_overrides={"MaxReceiveCount": "2", "IncomingPrefix": "scans/"})
    assert settings.max_receive_count == 2
    assert settings.incoming_prefix == "scans/"
    assert settings.bucket_notifications[0]["Filter"]["Key"]["FilterRules"][0]["Value"] == "scans/"
    with pytest.raises(TemplateError, match="NoSuchParameter"):
        read_settings(parameter_overrides={"NoSuchParameter": "1"})


def test_resolver_evaluates_the_intrinsics_the_template_uses(tmp_path: Path):
    template_path = tmp_path / "template.yaml"
    template_path.write_text("""
Parameters:
  Env: {Type: String, Default: dev}
Conditions:
  IsDev: !Equals [!Ref Env, dev]
Resources:
  Queue: {Type: AWS::SQS::Queue}
  Named: {Type: AWS::SQS::Queue, Properties: {QueueName: !Sub "${AWS::StackName}-${Env}-named"}}
""")
    resolver = Resolver(load_template(template_path))
    assert resolver.resolve({"Fn::GetAtt": ["Queue", "Arn"]}).endswith(f":{LOCAL_STACK_NAME}-queue")
    assert resolver.name_of("Named") == f"{LOCAL_STACK_NAME}-dev-named"
    assert resolver.resolve({"Fn::Select": [1, {"Fn::Split": ["/", "a/b/c"]}]}) == "b"
    assert resolver.resolve({"Fn::Join": ["-", ["x", {"Ref": "Env"}]]}) == "x-dev"
    assert resolver.resolve({"Fn::If": ["IsDev", "yes", "no"]}) == "yes"
    assert resolver.resolve({"Fn::Sub": "${!Literal} ${Queue.Arn}"}).startswith("${Literal} arn:aws:sqs:")
    with pytest.raises(TemplateError, match="Fn::ImportValue"):
        resolver.resolve({"Fn::ImportValue": "x"})


def test_workers_get_the_functions_environment_pointed_at_the_local_endpoint(tmp_path, monkeypatch):
    from pneumoscan_cli.aws import Target
    from pneumoscan_cli.local import LocalStack

    monkeypatch.setenv("AWS_PROFILE", "someone-real")
    settings = read_settings()
    stack = LocalStack(settings, model_dir=tmp_path)
    stack.target = Target(bucket=settings.bucket, table=settings.table, region=settings.region,
                          endpoint_url="http://127.0.0.1:1234", source="local")
    environment = stack.worker_environment()
    globals_variables = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]
    for name in globals_variables:
        expected = str(tmp_path) if name == "PNEUMOSCAN_MODEL_DIR" else settings.environment[name]
        assert environment[name] == expected
    assert environment["AWS_ENDPOINT_URL"] == "http://127.0.0.1:1234"
    assert environment["RESULTS_TABLE"] == settings.table
    assert "AWS_PROFILE" not in environment  # real credentials never reach the local stack
