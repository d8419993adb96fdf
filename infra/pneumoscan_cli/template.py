"""Read the settings of the local stack from template.yaml, the one source of truth.

The SAM template is parsed with a YAML loader that keeps CloudFormation's short-form
tags (`!Ref`, `!Sub`, `!GetAtt`, ...) as their long-form dicts, then the few values the
local stack needs are resolved: Parameter defaults, pseudo parameters, and the local
names and ARNs of the template's own resources.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pneumoscan.settings import DEFAULT_INCOMING_PREFIX, INCOMING_PREFIX_ENV

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TEMPLATE = REPO_ROOT / "template.yaml"

LOCAL_REGION = "us-east-1"
LOCAL_ACCOUNT = "123456789012"  # moto's default account
LOCAL_STACK_NAME = "pneumoscan-local"
LOCAL_STACK_UUID = "10ca1000-0000-4000-8000-000000000000"

# SQS's and Lambda's own defaults, used where the template leaves a property out.
SQS_DEFAULT_VISIBILITY_TIMEOUT = 30
SQS_DEFAULT_RETENTION = 345_600
LAMBDA_DEFAULT_TIMEOUT = 3
LAMBDA_DEFAULT_MEMORY = 128
SQS_EVENT_DEFAULT_BATCH_SIZE = 10


class TemplateError(ValueError):
    """template.yaml lacks something the local stack needs, or uses what it cannot resolve."""


class _CloudFormationLoader(yaml.SafeLoader):
    """SafeLoader that turns `!Tag value` into CloudFormation's long form `{"Fn::Tag": value}`."""


def _construct_tag(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if tag_suffix == "Ref":
        return {"Ref": value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{tag_suffix}": value}


_CloudFormationLoader.add_multi_constructor("!", _construct_tag)


def load_template(path: Path | str = DEFAULT_TEMPLATE) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as stream:
            document = yaml.load(stream, Loader=_CloudFormationLoader)  # noqa: S506 - SafeLoader subclass
    except OSError as exc:
        raise TemplateError(f"cannot read {path}: {exc}") from exc
    if not isinstance(document, dict) or "Resources" not in document:
        raise TemplateError(f"{path} is not a CloudFormation/SAM template (no Resources)")
    return document


def local_physical_name(stack_name: str, logical_id: str) -> str:
    """The name CloudFormation would generate, made S3-safe: `<stack>-<logicalid>` in lower case."""
    return f"{stack_name}-{logical_id}".lower()


class Resolver:
    """Evaluates the intrinsic functions the local stack meets in template.yaml."""

    def __init__(self, template: dict[str, Any], stack_name: str = LOCAL_STACK_NAME,
                 region: str = LOCAL_REGION, account: str = LOCAL_ACCOUNT,
                 parameter_overrides: dict[str, str] | None = None):
        self.template = template
        self.stack_name = stack_name
        self.region = region
        self.account = account
        self.parameters = {name: spec.get("Default")
                           for name, spec in (template.get("Parameters") or {}).items()}
        unknown = sorted(set(parameter_overrides or {}) - set(self.parameters))
        if unknown:
            raise TemplateError(f"the template has no parameter(s) {', '.join(unknown)}")
        self.parameters.update(parameter_overrides or {})
        self._names: dict[str, str] = {}

    def resource(self, logical_id: str) -> dict[str, Any]:
        try:
            return self.template["Resources"][logical_id]
        except KeyError as exc:
            raise TemplateError(f"template has no resource {logical_id}") from exc

    def name_of(self, logical_id: str) -> str:
        """Physical name: the resolved name property if the template sets one, else generated."""
        if logical_id not in self._names:
            resource = self.resource(logical_id)
            name_property = _NAME_PROPERTY.get(resource["Type"])
            properties = resource.get("Properties") or {}
            explicit = properties.get(name_property) if name_property else None
            self._names[logical_id] = (self.resolve(explicit) if explicit is not None
                                       else local_physical_name(self.stack_name, logical_id))
        return self._names[logical_id]

    def arn_of(self, logical_id: str) -> str:
        kind = self.resource(logical_id)["Type"]
        name = self.name_of(logical_id)
        if kind == "AWS::SQS::Queue":
            return f"arn:aws:sqs:{self.region}:{self.account}:{name}"
        if kind == "AWS::S3::Bucket":
            return f"arn:aws:s3:::{name}"
        if kind == "AWS::DynamoDB::Table":
            return f"arn:aws:dynamodb:{self.region}:{self.account}:table/{name}"
        raise TemplateError(f"no local ARN for {logical_id} ({kind})")

    def _pseudo(self, name: str) -> str | None:
        return {"AWS::StackName": self.stack_name, "AWS::Region": self.region,
                "AWS::AccountId": self.account, "AWS::Partition": "aws",
                "AWS::URLSuffix": "amazonaws.com", "AWS::StackId": self.stack_id}.get(name)

    @property
    def stack_id(self) -> str:
        return f"arn:aws:cloudformation:{self.region}:{self.account}:stack/{self.stack_name}/{LOCAL_STACK_UUID}"

    def _ref(self, name: str) -> Any:
        if name in self.parameters:
            if self.parameters[name] is None:
                raise TemplateError(f"parameter {name} has no Default; pass it as an override")
            return self.parameters[name]
        pseudo = self._pseudo(name)
        if pseudo is not None:
            return pseudo
        resource = self.resource(name)
        if resource["Type"] == "AWS::SQS::Queue":
            return f"http://local/{self.account}/{self.name_of(name)}"  # a queue's Ref is its URL
        return self.name_of(name)

    def _get_att(self, logical_id: str, attribute: str) -> str:
        if attribute == "Arn":
            return self.arn_of(logical_id)
        if attribute == "QueueName":
            return self.name_of(logical_id)
        raise TemplateError(f"cannot resolve !GetAtt {logical_id}.{attribute} locally")

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.resolve(item) for item in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (key, argument), = value.items()
            if key == "Ref":
                return self._ref(argument)
            if key == "Fn::GetAtt":
                return self._get_att(*self.resolve(argument))
            if key == "Fn::Sub":
                return self._sub(argument)
            if key == "Fn::Join":
                separator, items = argument
                return separator.join(str(item) for item in self.resolve(items))
            if key == "Fn::Split":
                separator, text = self.resolve(argument)
                return text.split(separator)
            if key == "Fn::Select":
                index, items = self.resolve(argument)
                return items[int(index)]
            if key == "Fn::If":
                condition, when_true, when_false = argument
                return self.resolve(when_true if self._condition(condition) else when_false)
            if key.startswith("Fn::"):
                raise TemplateError(f"cannot resolve {key} locally: {argument!r}")
        return {key: self.resolve(item) for key, item in value.items()}

    def _sub(self, argument: Any) -> str:
        text, variables = (argument, {}) if isinstance(argument, str) else argument
        variables = {name: self.resolve(item) for name, item in variables.items()}

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in variables:
                return str(variables[name])
            if "." in name:
                return str(self._get_att(*name.split(".", 1)))
            return str(self._ref(name))

        return re.sub(r"\$\{([^}]+)\}", substitute, text)

    def _condition(self, name: str) -> bool:
        expression = (self.template.get("Conditions") or {}).get(name)
        if expression is None:
            raise TemplateError(f"unknown condition {name}")
        return bool(self._evaluate_condition(expression))

    def _evaluate_condition(self, expression: Any) -> Any:
        if isinstance(expression, dict) and len(expression) == 1:
            (key, argument), = expression.items()
            if key == "Fn::Equals":
                left, right = (self.resolve(item) for item in argument)
                return str(left) == str(right)
            if key == "Fn::Not":
                return not self._evaluate_condition(argument[0])
            if key == "Fn::And":
                return all(self._evaluate_condition(item) for item in argument)
            if key == "Fn::Or":
                return any(self._evaluate_condition(item) for item in argument)
            if key == "Condition":
                return self._condition(argument)
        return self.resolve(expression)


_NAME_PROPERTY = {"AWS::S3::Bucket": "BucketName", "AWS::SQS::Queue": "QueueName",
                  "AWS::DynamoDB::Table": "TableName"}


@dataclass(frozen=True)
class QueueSettings:
    logical_id: str
    name: str
    attributes: dict[str, str]  # SQS CreateQueue attributes, values as strings like the API takes

    @property
    def visibility_timeout(self) -> int:
        return int(self.attributes.get("VisibilityTimeout", SQS_DEFAULT_VISIBILITY_TIMEOUT))

    @property
    def retention(self) -> int:
        return int(self.attributes.get("MessageRetentionPeriod", SQS_DEFAULT_RETENTION))


@dataclass(frozen=True)
class EventSourceSettings:
    batch_size: int
    batching_window_s: int
    report_batch_item_failures: bool
    maximum_concurrency: int | None


@dataclass(frozen=True)
class StackSettings:
    """What the local stack builds and how its worker behaves, all read from the template."""

    stack_name: str
    region: str
    bucket: str
    bucket_notifications: list[dict[str, Any]]  # S3 QueueConfigurations, API shape
    bucket_versioning: bool
    queue: QueueSettings
    dead_letter_queue: QueueSettings
    max_receive_count: int
    table: str
    table_definition: dict[str, Any]  # DynamoDB CreateTable arguments
    environment: dict[str, str]  # the function's environment (Globals + its own)
    function_timeout_s: int
    function_memory_mb: int
    event_source: EventSourceSettings
    parameters: dict[str, Any] = field(default_factory=dict)
    # The gateway's return path: the other queue the bucket notifies, and its dead-letter queue.
    return_queue: QueueSettings | None = None
    return_dead_letter_queue: QueueSettings | None = None

    @property
    def incoming_prefix(self) -> str:
        return self.environment.get(INCOMING_PREFIX_ENV, DEFAULT_INCOMING_PREFIX)


@dataclass(frozen=True)
class CreatedQueues:
    queue_url: str
    dead_letter_queue_url: str
    return_queue_url: str | None = None
    return_dead_letter_queue_url: str | None = None


def create_resources(settings: StackSettings, *, s3: Any, sqs: Any, dynamodb: Any,
                     notifications: bool = True) -> CreatedQueues:
    """The queue and its dead-letter queue, the gateway's return queue and its dead-letter queue,
    the bucket (versioning, and its notifications to the queues unless `notifications` is False)
    and the table, as the template defines them,
    on whatever endpoint the clients point at (the local stack's moto server, or moto in tests)."""
    # The dead-letter queue first: the main queue's RedrivePolicy points at its ARN.
    dead_letter_queue_url = sqs.create_queue(
        QueueName=settings.dead_letter_queue.name, Attributes=settings.dead_letter_queue.attributes)["QueueUrl"]
    queue_url = sqs.create_queue(QueueName=settings.queue.name, Attributes=settings.queue.attributes)["QueueUrl"]
    return_queue_url = return_dead_letter_queue_url = None
    if settings.return_queue is not None and settings.return_dead_letter_queue is not None:
        return_dead_letter_queue_url = sqs.create_queue(
            QueueName=settings.return_dead_letter_queue.name,
            Attributes=settings.return_dead_letter_queue.attributes)["QueueUrl"]
        return_queue_url = sqs.create_queue(
            QueueName=settings.return_queue.name, Attributes=settings.return_queue.attributes)["QueueUrl"]
    s3.create_bucket(Bucket=settings.bucket)
    if settings.bucket_versioning:
        s3.put_bucket_versioning(Bucket=settings.bucket, VersioningConfiguration={"Status": "Enabled"})
    if notifications:
        s3.put_bucket_notification_configuration(
            Bucket=settings.bucket, NotificationConfiguration={"QueueConfigurations": settings.bucket_notifications})
    dynamodb.create_table(**settings.table_definition)
    return CreatedQueues(queue_url, dead_letter_queue_url, return_queue_url, return_dead_letter_queue_url)


def _single(template: dict[str, Any], resource_type: str) -> str:
    matches = [logical for logical, resource in template["Resources"].items()
               if resource.get("Type") == resource_type]
    if len(matches) != 1:
        raise TemplateError(f"expected exactly one {resource_type} in the template, found {matches}")
    return matches[0]


def _notifying_bucket(template: dict[str, Any], queue_id: str) -> str:
    """The bucket whose notifications feed the scoring queue (others, e.g. access logs, do not)."""
    for logical, resource in template["Resources"].items():
        if resource.get("Type") != "AWS::S3::Bucket":
            continue
        configuration = (resource.get("Properties") or {}).get("NotificationConfiguration") or {}
        for entry in configuration.get("QueueConfigurations") or []:
            if _queue_reference_id(entry.get("Queue")) == queue_id:
                return logical
    raise TemplateError(f"no AWS::S3::Bucket notifies queue {queue_id}")


def _scorer_function(template: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The function with an SQS event source: the scorer."""
    for logical, resource in template["Resources"].items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        for event in ((resource.get("Properties") or {}).get("Events") or {}).values():
            if event.get("Type") == "SQS":
                return logical, resource
    raise TemplateError("no AWS::Serverless::Function with an SQS event in the template")


def _queue_settings(resolver: Resolver, logical_id: str) -> QueueSettings:
    properties = resolver.resolve(resolver.resource(logical_id).get("Properties") or {})
    attributes = {key: str(properties[key]) for key in
                  ("VisibilityTimeout", "MessageRetentionPeriod", "ReceiveMessageWaitTimeSeconds",
                   "DelaySeconds", "MaximumMessageSize") if key in properties}
    if "RedrivePolicy" in properties:
        policy = properties["RedrivePolicy"]
        attributes["RedrivePolicy"] = _json({"deadLetterTargetArn": policy["deadLetterTargetArn"],
                                             "maxReceiveCount": int(policy["maxReceiveCount"])})
    return QueueSettings(logical_id, resolver.name_of(logical_id), attributes)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _queue_reference_id(reference: Any) -> str:
    """Which queue resource an event source or notification points at (by GetAtt/Ref)."""
    if isinstance(reference, dict):
        if "Fn::GetAtt" in reference:
            target = reference["Fn::GetAtt"]
            return (target.split(".")[0] if isinstance(target, str) else target[0])
        if "Ref" in reference:
            return reference["Ref"]
    raise TemplateError(f"cannot tell which queue {reference!r} refers to")


def _bucket_notifications(resolver: Resolver, bucket_id: str) -> list[dict[str, Any]]:
    configuration = (resolver.resource(bucket_id).get("Properties") or {}).get("NotificationConfiguration") or {}
    notifications = []
    for entry in configuration.get("QueueConfigurations") or []:
        entry = resolver.resolve(entry)
        rules = (((entry.get("Filter") or {}).get("S3Key") or {}).get("Rules")) or []
        notification: dict[str, Any] = {"QueueArn": entry["Queue"], "Events": [entry["Event"]]}
        if rules:
            notification["Filter"] = {"Key": {"FilterRules": [
                {"Name": rule["Name"].lower(), "Value": rule["Value"]} for rule in rules]}}
        notifications.append(notification)
    if not notifications:
        raise TemplateError(f"{bucket_id} has no NotificationConfiguration.QueueConfigurations")
    return notifications


def _return_queues(template: dict[str, Any], resolver: Resolver, bucket_id: str, scoring_queue_id: str
                   ) -> tuple[QueueSettings | None, QueueSettings | None]:
    """The queue other than the scoring queue that the bucket notifies (the structured reports'
    return path), and its dead-letter queue; (None, None) for a template without one."""
    configuration = (resolver.resource(bucket_id).get("Properties") or {}).get("NotificationConfiguration") or {}
    others = {_queue_reference_id(entry.get("Queue")) for entry in configuration.get("QueueConfigurations") or []}
    others.discard(scoring_queue_id)
    if not others:
        return None, None
    if len(others) > 1:
        raise TemplateError(f"the bucket notifies more queues than the scoring and return queues: {sorted(others)}")
    queue_id = others.pop()
    queue = _queue_settings(resolver, queue_id)
    redrive = (template["Resources"][queue_id].get("Properties") or {}).get("RedrivePolicy")
    if not redrive:
        raise TemplateError(f"queue {queue_id} has no RedrivePolicy")
    return queue, _queue_settings(resolver, _queue_reference_id(redrive["deadLetterTargetArn"]))


def _table_definition(resolver: Resolver, table_id: str) -> dict[str, Any]:
    properties = resolver.resolve(resolver.resource(table_id).get("Properties") or {})
    definition: dict[str, Any] = {
        "TableName": resolver.name_of(table_id),
        "KeySchema": properties["KeySchema"],
        "AttributeDefinitions": properties["AttributeDefinitions"],
        "BillingMode": properties.get("BillingMode", "PROVISIONED"),
    }
    if properties.get("GlobalSecondaryIndexes"):
        definition["GlobalSecondaryIndexes"] = [
            {key: index[key] for key in ("IndexName", "KeySchema", "Projection") if key in index}
            for index in properties["GlobalSecondaryIndexes"]]
    return definition


def read_settings(template_path: Path | str = DEFAULT_TEMPLATE, *, stack_name: str = LOCAL_STACK_NAME,
                  region: str = LOCAL_REGION, parameter_overrides: dict[str, str] | None = None
                  ) -> StackSettings:
    template = load_template(template_path)
    resolver = Resolver(template, stack_name, region, parameter_overrides=parameter_overrides)
    function_id, function = _scorer_function(template)
    function_properties = function.get("Properties") or {}
    globals_function = (template.get("Globals") or {}).get("Function") or {}

    sqs_event = next(event["Properties"] for event in function_properties["Events"].values()
                     if event.get("Type") == "SQS")
    sqs_event = resolver.resolve({key: value for key, value in sqs_event.items() if key != "Queue"}) | {
        "Queue": sqs_event["Queue"]}
    queue_id = _queue_reference_id(sqs_event["Queue"])
    queue = _queue_settings(resolver, queue_id)
    if "RedrivePolicy" not in queue.attributes:
        raise TemplateError(f"queue {queue_id} has no RedrivePolicy")
    dead_letter_id = _queue_reference_id(
        template["Resources"][queue_id]["Properties"]["RedrivePolicy"]["deadLetterTargetArn"])

    bucket_id = _notifying_bucket(template, queue_id)
    table_id = _single(template, "AWS::DynamoDB::Table")

    environment = {}
    for source in (globals_function, function_properties):
        variables = ((source.get("Environment") or {}).get("Variables")) or {}
        environment.update({name: str(resolver.resolve(value)) for name, value in variables.items()})

    scaling = sqs_event.get("ScalingConfig") or {}
    return_queue, return_dead_letter_queue = _return_queues(template, resolver, bucket_id, queue_id)
    return StackSettings(
        stack_name=stack_name,
        region=region,
        bucket=resolver.name_of(bucket_id),
        bucket_notifications=_bucket_notifications(resolver, bucket_id),
        bucket_versioning=resolver.resolve((resolver.resource(bucket_id).get("Properties") or {}).get(
            "VersioningConfiguration", {})).get("Status") == "Enabled",
        queue=queue,
        dead_letter_queue=_queue_settings(resolver, dead_letter_id),
        max_receive_count=int(json.loads(queue.attributes["RedrivePolicy"])["maxReceiveCount"]),
        table=resolver.name_of(table_id),
        table_definition=_table_definition(resolver, table_id),
        environment=environment,
        function_timeout_s=int(resolver.resolve(function_properties.get(
            "Timeout", globals_function.get("Timeout", LAMBDA_DEFAULT_TIMEOUT)))),
        function_memory_mb=int(resolver.resolve(function_properties.get(
            "MemorySize", globals_function.get("MemorySize", LAMBDA_DEFAULT_MEMORY)))),
        event_source=EventSourceSettings(
            batch_size=int(sqs_event.get("BatchSize", SQS_EVENT_DEFAULT_BATCH_SIZE)),
            batching_window_s=int(sqs_event.get("MaximumBatchingWindowInSeconds", 0)),
            report_batch_item_failures="ReportBatchItemFailures" in (sqs_event.get("FunctionResponseTypes") or []),
            maximum_concurrency=(int(scaling["MaximumConcurrency"]) if "MaximumConcurrency" in scaling else None),
        ),
        parameters=dict(resolver.parameters),
        return_queue=return_queue,
        return_dead_letter_queue=return_dead_letter_queue,
    )
