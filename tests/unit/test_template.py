"""template.yaml: the flow, the lock-down, and the contract with pneumoscan.results."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pneumoscan import results, settings
from pneumoscan.telemetry import STATS_PREFIX
from pneumoscan_cli.template import load_template

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
VENV_BIN = Path(sys.executable).parent
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"


@pytest.fixture(scope="module")
def template():
    return load_template(TEMPLATE)


@pytest.fixture(scope="module")
def resources(template):
    return template["Resources"]


def statements(policy_document):
    return policy_document["Statement"]


def as_list(value):
    return value if isinstance(value, list) else [value]


def test_cfn_lint_is_clean():
    run = subprocess.run([VENV_BIN / "cfn-lint", TEMPLATE], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_sam_validate_lint_is_clean():
    run = subprocess.run([VENV_BIN / "sam", "validate", "--lint", "--template", TEMPLATE],
                         capture_output=True, text=True, cwd=ROOT, env={"SAM_CLI_TELEMETRY": "0",
                                                                        "PATH": f"{VENV_BIN}:/usr/bin:/bin",
                                                                        "AWS_DEFAULT_REGION": "us-east-1"})
    assert run.returncode == 0, run.stdout + run.stderr


def test_checkov_finds_no_failed_check_and_every_skip_is_justified(resources):
    if not CHECKOV.exists():
        pytest.fail("checkov is missing: `make test` installs it into .venv-checkov")
    run = subprocess.run([CHECKOV, "-f", TEMPLATE, "--skip-download", "--output", "json", "--quiet"],
                         capture_output=True, text=True, cwd=ROOT)
    report = json.loads(run.stdout)
    summary = report["summary"]
    failed = [f"{c['check_id']} {c['resource']}" for c in report["results"]["failed_checks"]]
    assert summary["failed"] == 0, failed
    assert summary["passed"] > 20 and summary["parsing_errors"] == 0
    for logical_id, resource in resources.items():
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
            assert len(skip.get("comment", "")) > 40, f"{logical_id} skips {skip['id']} without a reason"


def test_bucket_policies_deny_every_request_without_tls(resources):
    for policy_id, bucket_id in (("ImagesBucketPolicy", "ImagesBucket"), ("AccessLogsBucketPolicy", "AccessLogsBucket")):
        policy = resources[policy_id]["Properties"]
        assert policy["Bucket"] == {"Ref": bucket_id}
        deny = [s for s in statements(policy["PolicyDocument"]) if s["Effect"] == "Deny"]
        assert len(deny) == 1, policy_id
        assert deny[0]["Principal"] == "*" and deny[0]["Action"] == "s3:*"
        assert deny[0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        assert deny[0]["Resource"] == [{"Fn::GetAtt": [bucket_id, "Arn"]}, {"Fn::Sub": f"${{{bucket_id}.Arn}}/*"}]


def test_function_role_allows_exactly_the_actions_it_needs(resources):
    policy = resources["ScorerFunction"]["Properties"]["Policies"]
    granted = {sid["Sid"]: (sorted(as_list(sid["Action"])), sid["Resource"]) for sid in statements(policy[0])}
    assert len(policy) == 1 and all(s["Effect"] == "Allow" for s in statements(policy[0]))
    assert granted == {
        "ReadUploadsOnly": (["s3:GetObject", "s3:GetObjectVersion"], {"Fn::Sub": "${ImagesBucket.Arn}/${IncomingPrefix}*"}),
        "TellDeletedFromDenied": (["s3:ListBucket"], {"Fn::GetAtt": ["ImagesBucket", "Arn"]}),
        "WriteOverlaysOnly": (["s3:PutObject"], {"Fn::Sub": "${ImagesBucket.Arn}/${ResultsPrefix}*"}),
        "WriteOwnResults": (["dynamodb:GetItem", "dynamodb:PutItem"], {"Fn::GetAtt": ["ResultsTable", "Arn"]}),
        "AddToStatsCounters": (["dynamodb:UpdateItem"], {"Fn::GetAtt": ["ResultsTable", "Arn"]}),
        "UseDataKey": (["kms:Decrypt", "kms:GenerateDataKey"], {"Fn::GetAtt": ["DataKey", "Arn"]}),
    }
    # Updates reach only the stats counters' partitions, never a result item.
    counters = next(s for s in statements(policy[0]) if s["Sid"] == "AddToStatsCounters")
    assert counters["Condition"] == {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": [f"{STATS_PREFIX}*"]}}
    # Polling rights come from the SQS event source, which SAM scopes to that one queue.
    event = resources["ScorerFunction"]["Properties"]["Events"]["Uploads"]
    assert event["Type"] == "SQS" and event["Properties"]["Queue"] == {"Fn::GetAtt": ["ScoringQueue", "Arn"]}


def test_images_bucket_is_locked_down(resources):
    bucket = resources["ImagesBucket"]
    properties = bucket["Properties"]
    assert all(properties["PublicAccessBlockConfiguration"][flag] is True for flag in
               ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"))
    encryption = properties["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
    assert encryption["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    assert properties["VersioningConfiguration"]["Status"] == "Enabled"
    assert any("NoncurrentVersionExpiration" in rule for rule in properties["LifecycleConfiguration"]["Rules"])
    assert properties["LoggingConfiguration"]["DestinationBucketName"] == {"Ref": "AccessLogsBucket"}
    assert bucket["DeletionPolicy"] == bucket["UpdateReplacePolicy"] == "Retain"


def test_only_the_incoming_prefix_notifies_the_queue(template, resources):
    queue_configurations = resources["ImagesBucket"]["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
    assert len(queue_configurations) == 2
    notification, returned = queue_configurations
    assert notification["Event"] == "s3:ObjectCreated:*"
    assert notification["Queue"] == {"Fn::GetAtt": ["ScoringQueue", "Arn"]}
    assert notification["Filter"]["S3Key"]["Rules"] == [{"Name": "prefix", "Value": {"Ref": "IncomingPrefix"}}]
    # The structured reports, and nothing else the pipeline writes, notify the gateway's return queue.
    assert returned["Event"] == "s3:ObjectCreated:*"
    assert returned["Queue"] == {"Fn::GetAtt": ["ReturnQueue", "Arn"]}
    assert returned["Filter"]["S3Key"]["Rules"] == [
        {"Name": "prefix", "Value": {"Fn::Sub": f"${{ResultsPrefix}}{results.STRUCTURED_REPORT_FOLDER}"}}]
    parameters = template["Parameters"]
    assert parameters["IncomingPrefix"]["Default"] == settings.DEFAULT_INCOMING_PREFIX
    assert parameters["ResultsPrefix"]["Default"] == settings.RESULTS_PREFIX
    assert not settings.RESULTS_PREFIX.startswith(settings.DEFAULT_INCOMING_PREFIX)


@pytest.mark.parametrize("policy_id, queue_id", [("ScoringQueuePolicy", "ScoringQueue"),
                                                  ("ReturnQueuePolicy", "ReturnQueue")])
def test_queue_policy_names_the_bucket_that_notifies_it(resources, policy_id, queue_id):
    """The bucket name is spelled twice to break the bucket <-> queue policy cycle: keep them equal."""
    bucket_name = resources["ImagesBucket"]["Properties"]["BucketName"]["Fn::Sub"]
    policy = resources[policy_id]["Properties"]
    assert policy["Queues"] == [{"Ref": queue_id}]
    allow, = statements(policy["PolicyDocument"])
    source_arn = allow["Condition"]["ArnEquals"]["aws:SourceArn"]["Fn::Sub"]
    assert source_arn[0] == "arn:${AWS::Partition}:s3:::" + bucket_name[0]
    assert source_arn[1] == bucket_name[1]
    assert allow["Principal"] == {"Service": "s3.amazonaws.com"} and allow["Action"] == "sqs:SendMessage"
    assert allow["Resource"] == {"Fn::GetAtt": [queue_id, "Arn"]}
    assert allow["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
    assert policy_id in resources["ImagesBucket"]["DependsOn"]


def test_gateway_policy_allows_exactly_what_the_gateway_does(resources):
    """Put under the incoming prefix, read the SRs, consume the return queue: nothing else."""
    policy = resources["GatewayPolicy"]
    assert policy["Type"] == "AWS::IAM::ManagedPolicy"
    document = policy["Properties"]["PolicyDocument"]
    assert all(s["Effect"] == "Allow" and "Condition" not in s for s in statements(document))
    granted = {s["Sid"]: (sorted(as_list(s["Action"])), s["Resource"]) for s in statements(document)}
    assert granted == {
        "PutReceivedInstances": (["s3:PutObject"], {"Fn::Sub": "${ImagesBucket.Arn}/${IncomingPrefix}*"}),
        "ReadStructuredReports": (["s3:GetObject"], {"Fn::Sub": "${ImagesBucket.Arn}/${ResultsPrefix}sr/*"}),
        "ReceiveReturnNotifications": (
            ["sqs:ChangeMessageVisibility", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ReceiveMessage"],
            {"Fn::GetAtt": ["ReturnQueue", "Arn"]}),
        "UseDataKey": (["kms:Decrypt", "kms:GenerateDataKey"], {"Fn::GetAtt": ["DataKey", "Arn"]}),
    }


def test_return_queue_is_encrypted_and_dead_letters_after_its_tries(template, resources):
    queue = resources["ReturnQueue"]["Properties"]
    dead_letters = resources["ReturnDeadLetterQueue"]["Properties"]
    assert queue["KmsMasterKeyId"] == dead_letters["KmsMasterKeyId"] == {"Ref": "DataKey"}
    assert queue["RedrivePolicy"] == {"deadLetterTargetArn": {"Fn::GetAtt": ["ReturnDeadLetterQueue", "Arn"]},
                                      "maxReceiveCount": {"Ref": "ReturnMaxReceiveCount"}}
    assert dead_letters["MessageRetentionPeriod"] > queue["MessageRetentionPeriod"]
    for output in ("ReturnQueueUrl", "ReturnDeadLetterQueueUrl", "GatewayPolicyArn"):
        assert output in template["Outputs"]


def test_queue_redrive_and_timeouts(template, resources):
    queue = resources["ScoringQueue"]["Properties"]
    dlq = resources["ScoringDeadLetterQueue"]["Properties"]
    function_timeout = template["Globals"]["Function"]["Timeout"]
    assert queue["VisibilityTimeout"] >= 6 * function_timeout
    assert dlq["MessageRetentionPeriod"] > queue["MessageRetentionPeriod"]
    assert queue["RedrivePolicy"] == {"deadLetterTargetArn": {"Fn::GetAtt": ["ScoringDeadLetterQueue", "Arn"]},
                                      "maxReceiveCount": {"Ref": "MaxReceiveCount"}}
    assert queue["KmsMasterKeyId"] == dlq["KmsMasterKeyId"] == {"Ref": "DataKey"}


# The slowest input per image at the template's memory: a 4096 x 4096 JPEG 2000 lossless DICOM,
# 2.2 s of one x86 core to score, stretched by 1769/1024 (0.58 vCPU at 1024 MB), with room for a
# slower core and the first DICOM import.
SLOWEST_IMAGE_S = 5


def test_the_function_timeout_holds_a_full_batch_of_the_slowest_images(template, resources):
    parameters = template["Parameters"]
    batch_size = parameters["BatchSize"]["Default"]
    assert template["Globals"]["Function"]["Timeout"] >= batch_size * SLOWEST_IMAGE_S
    # Lambda refuses a batch over 10 messages without a batching window.
    assert batch_size <= 10 or parameters["MaximumBatchingWindowInSeconds"]["Default"] >= 1
    # A record retried once (back after the visibility timeout) does not look like a stall.
    assert resources["ScoringQueue"]["Properties"]["VisibilityTimeout"] < parameters["QueueAgeAlarmSeconds"]["Default"]


def test_function_is_python313_arm64_built_by_makefile_with_partial_batch_responses(template, resources):
    function = resources["ScorerFunction"]
    globals_ = template["Globals"]["Function"]
    assert globals_["Runtime"] == "python3.13" and globals_["Architectures"] == ["arm64"]
    assert function["Metadata"]["BuildMethod"] == "makefile"
    assert (ROOT / function["Properties"]["CodeUri"] / "Makefile").is_file()
    event = function["Properties"]["Events"]["Uploads"]["Properties"]
    assert event["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert event["BatchSize"] == {"Ref": "BatchSize"}
    assert event["MaximumBatchingWindowInSeconds"] == {"Ref": "MaximumBatchingWindowInSeconds"}
    assert event["ScalingConfig"] == {"MaximumConcurrency": {"Ref": "MaximumConcurrency"}}


def test_globals_set_every_setting_the_handler_reads(template):
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["RESULTS_TABLE"] == {"Ref": "ResultsTable"}
    assert variables["INCOMING_PREFIX"] == {"Ref": "IncomingPrefix"}
    assert variables["PNEUMOSCAN_MODEL_DIR"] == "/var/task/model"
    assert variables["POWERTOOLS_SERVICE_NAME"] == "pneumoscan"
    assert variables["POWERTOOLS_METRICS_NAMESPACE"] == "Pneumoscan"
    assert {"LOG_LEVEL", "MAX_OBJECT_BYTES", "INFERENCE_THREADS", "RESULTS_PREFIX"} <= set(variables)


def test_table_key_design_matches_the_results_contract(resources):
    table = resources["ResultsTable"]
    properties = table["Properties"]
    assert properties["BillingMode"] == "PAY_PER_REQUEST"
    assert properties["KeySchema"] == [{"AttributeName": results.BATCH, "KeyType": "HASH"},
                                       {"AttributeName": results.KEY, "KeyType": "RANGE"}]
    indexes = {index["IndexName"]: index for index in properties["GlobalSecondaryIndexes"]}
    assert set(indexes) == {results.ATTENTION_INDEX, results.STUDY_INDEX}
    assert [k["AttributeName"] for k in indexes[results.ATTENTION_INDEX]["KeySchema"]] == [
        results.ATTENTION_DAY, results.SCORED_AT]
    assert [k["AttributeName"] for k in indexes[results.STUDY_INDEX]["KeySchema"]] == [results.STUDY_UID, results.KEY]
    # No ALL projection: an index write costs the listing fields, not the whole item again.
    assert indexes[results.ATTENTION_INDEX]["Projection"] == {
        "ProjectionType": "INCLUDE", "NonKeyAttributes": list(results.LISTING_FIELDS)}
    assert indexes[results.STUDY_INDEX]["Projection"] == {
        "ProjectionType": "INCLUDE", "NonKeyAttributes": list(results.STUDY_LISTING_FIELDS)}
    assert properties["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert properties["DeletionProtectionEnabled"] is True
    assert table["DeletionPolicy"] == table["UpdateReplacePolicy"] == "Retain"


def test_alarms_watch_the_dlq_the_queue_age_and_function_errors(resources):
    alarms = {(r["Properties"]["Namespace"], r["Properties"]["MetricName"]): r["Properties"]
              for logical_id, r in resources.items() if r["Type"] == "AWS::CloudWatch::Alarm"
              and "MetricName" in r["Properties"] and logical_id != "ReturnDeadLetterQueueNotEmptyAlarm"}
    assert resources["ReturnDeadLetterQueueNotEmptyAlarm"]["Properties"]["Dimensions"][0]["Value"] == {
        "Fn::GetAtt": ["ReturnDeadLetterQueue", "QueueName"]}
    assert alarms[("AWS/SQS", "ApproximateNumberOfMessagesVisible")]["Dimensions"][0]["Value"] == {
        "Fn::GetAtt": ["ScoringDeadLetterQueue", "QueueName"]}
    assert alarms[("AWS/SQS", "ApproximateAgeOfOldestMessage")]["Dimensions"][0]["Value"] == {
        "Fn::GetAtt": ["ScoringQueue", "QueueName"]}
    assert alarms[("AWS/Lambda", "Errors")]["Dimensions"][0]["Value"] == {"Ref": "ScorerFunction"}


def test_outputs_name_what_the_cli_needs(template):
    assert {"ImagesBucketName", "ScoringQueueUrl", "DeadLetterQueueUrl", "ResultsTableName",
            "IncomingPrefix"} <= set(template["Outputs"])


def test_sample_events_exist_for_sam_local_invoke():
    for name in ("sqs-s3-object-created.json", "sqs-s3-test-event.json"):
        event = json.loads((ROOT / "events" / name).read_text())
        assert event["Records"][0]["eventSource"] == "aws:sqs"


def _substituted(sub, parameters, resources):
    """Fn::Sub [text, variables] with the template's Parameter defaults and placeholder names."""
    import re

    text, variables = sub if isinstance(sub, list) else (sub, {})
    def value(match):
        name = match.group(1)
        if name in parameters:
            return str(parameters[name]["Default"])
        return f"<{name}>"
    return re.sub(r"\$\{([^}]+)\}", value, text)


def test_dashboard_body_is_json_and_shows_what_operators_need(template, resources):
    body = _substituted(resources["OperationsDashboard"]["Properties"]["DashboardBody"]["Fn::Sub"],
                        template["Parameters"], resources)
    widgets = json.loads(body)["widgets"]
    titles = " ".join(widget["properties"]["title"].lower() for widget in widgets)
    for topic in ("throughput", "latency per stage", "queue", "dead-letter", "positive", "failed", "warned",
                  "model version"):
        assert topic in titles, topic


def test_rate_alarms_use_the_metrics_the_function_emits_and_the_band_parameters(template, resources):
    emitted = {"ImagesScored", "ImagesFailed", "ImagesWarned", "Positives"}  # pneumoscan.telemetry, service only
    for alarm_id, band in (("PositiveRateOutOfBandAlarm", ("PositiveRateLow", "PositiveRateHigh")),
                           ("WarnedRateOutOfBandAlarm", ("WarnedRateLow", "WarnedRateHigh"))):
        alarm = resources[alarm_id]["Properties"]
        stats = [query["MetricStat"] for query in alarm["Metrics"] if "MetricStat" in query]
        assert {stat["Metric"]["MetricName"] for stat in stats} <= emitted
        assert all(stat["Period"] == 3600 and stat["Stat"] == "Sum" for stat in stats)
        assert all(stat["Metric"]["Namespace"] == "Pneumoscan" for stat in stats)
        (expression,) = [query["Expression"]["Fn::Sub"] for query in alarm["Metrics"] if "Expression" in query]
        assert all(f"${{{name}}}" in expression for name in (*band, "RateAlarmMinImages"))
        assert alarm["TreatMissingData"] == "notBreaching"
    namespace = template["Globals"]["Function"]["Environment"]["Variables"]["POWERTOOLS_METRICS_NAMESPACE"]
    service = template["Globals"]["Function"]["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"]
    assert (namespace, service) == ("Pneumoscan", "pneumoscan")
