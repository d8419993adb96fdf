"""Which stack a command talks to, and the AWS clients it uses.

Resolution order: `--stack NAME` (names from the CloudFormation stack's Outputs),
`--endpoint-url URL` (names from options or env), else the local stack that
`pneumoscan local up` recorded in its state file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import boto3
import typer

try:  # typer vendors click from 0.2x on; its commands only recognise that click's exceptions
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older typer on the real click
    from click import ClickException

from pneumoscan.settings import DEFAULT_INCOMING_PREFIX, RETRY_CONFIG

from .template import REPO_ROOT

STATE_DIR_ENV = "PNEUMOSCAN_STATE_DIR"
STATE_FILE = "local.json"
# moto accepts any credentials; fixed ones keep real ones from ever reaching it.
LOCAL_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}

# Output keys of template.yaml that name the stack's resources.
STACK_OUTPUTS = {"bucket": "ImagesBucketName", "queue_url": "ScoringQueueUrl",
                 "dead_letter_queue_url": "DeadLetterQueueUrl", "table": "ResultsTableName",
                 "incoming_prefix": "IncomingPrefix", "batch_function_arn": "BatchEnqueueFunctionArn",
                 "batch_role_arn": "BatchOperationsRoleArn", "return_queue_url": "ReturnQueueUrl",
                 "return_dead_letter_queue_url": "ReturnDeadLetterQueueUrl"}


class CommandError(ClickException):
    """An error the CLI reports as one line (`Error: ...`, exit 1), not a traceback."""


class TargetError(CommandError):
    """No stack to talk to: nothing running locally, or a deployed stack lacks an output."""


def state_dir() -> Path:
    return Path(os.environ.get(STATE_DIR_ENV) or REPO_ROOT / ".pneumoscan")


def state_path() -> Path:
    return state_dir() / STATE_FILE


@dataclass
class Target:
    """Names and endpoint of one pneumoscan stack, plus the clients that reach it."""

    bucket: str
    table: str
    region: str
    endpoint_url: str | None = None
    queue_url: str | None = None
    dead_letter_queue_url: str | None = None
    incoming_prefix: str = DEFAULT_INCOMING_PREFIX
    batch_function_arn: str | None = None
    batch_role_arn: str | None = None
    return_queue_url: str | None = None
    return_dead_letter_queue_url: str | None = None
    source: str = "options"
    _clients: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_local(self) -> bool:
        return self.source == "local"

    def client(self, service: str) -> Any:
        """One cached client per service, standard retries; tests may swap entries in `_clients`."""
        if service not in self._clients:
            self._clients[service] = self.new_client(service, RETRY_CONFIG)
        return self._clients[service]

    def new_client(self, service: str, config: Any) -> Any:
        """A client of its own, with `config`'s timeouts and retries (not cached)."""
        credentials = LOCAL_CREDENTIALS if self.is_local else {}
        return boto3.session.Session(region_name=self.region).client(
            service, endpoint_url=self.endpoint_url, config=config, **credentials)

    def to_state(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__ if not name.startswith("_")}


def write_state(target: Target, **extra: Any) -> Path:
    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(target.to_state() | extra, indent=2))
    temporary.replace(path)  # readers never see half a file
    return path


def process_alive(pid: int | None) -> bool:
    """Whether the process a state file names still runs (one of another user's counts as running)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_state() -> dict[str, Any]:
    path = state_path()
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise TargetError(
            f"no local stack is running ({path} not found): start one with `pneumoscan local up`, "
            "or pass --stack NAME / --endpoint-url URL") from None


def local_target() -> Target:
    state = read_state()
    fields = {key: state[key] for key in Target.__dataclass_fields__ if not key.startswith("_") and key in state}
    return Target(**(fields | {"source": "local"}))


def stack_target(stack_name: str, region: str | None, cloudformation: Any = None) -> Target:
    session = boto3.session.Session(region_name=region)
    cloudformation = cloudformation or session.client("cloudformation", config=RETRY_CONFIG)
    stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    outputs = {output["OutputKey"]: output["OutputValue"] for output in stacks[0].get("Outputs", [])}
    missing = [key for attribute, key in STACK_OUTPUTS.items()
               if key not in outputs and attribute in ("bucket", "table")]
    if missing:
        raise TargetError(f"stack {stack_name} has no output(s) {', '.join(missing)}")
    values = {attribute: outputs[key] for attribute, key in STACK_OUTPUTS.items() if key in outputs}
    return Target(region=session.region_name or cloudformation.meta.region_name, source=f"stack {stack_name}",
                  **values)


StackOption = Annotated[str | None, typer.Option(
    "--stack", envvar="PNEUMOSCAN_STACK", help="Deployed stack: names come from its CloudFormation outputs.")]
EndpointOption = Annotated[str | None, typer.Option(
    "--endpoint-url", envvar="PNEUMOSCAN_ENDPOINT_URL", help="Any S3/SQS/DynamoDB-compatible endpoint.")]
RegionOption = Annotated[str | None, typer.Option("--region", envvar="AWS_REGION", help="AWS region.")]
BucketOption = Annotated[str | None, typer.Option(
    "--bucket", envvar="PNEUMOSCAN_BUCKET", help="Bucket name (with --endpoint-url).")]
TableOption = Annotated[str | None, typer.Option(
    "--table", envvar="PNEUMOSCAN_TABLE", help="Results table name (with --endpoint-url).")]


def resolve_target(stack: str | None = None, endpoint_url: str | None = None, region: str | None = None,
                   bucket: str | None = None, table: str | None = None) -> Target:
    """The stack the options point at; the local stack when none do."""
    if stack and endpoint_url:
        raise TargetError("--stack and --endpoint-url are alternatives; pass one")
    if stack:
        target = stack_target(stack, region)
    elif endpoint_url:
        local = _local_state_or_none()
        same_stack = local is not None and local.get("endpoint_url") == endpoint_url.rstrip("/")
        bucket = bucket or (local["bucket"] if same_stack else None)
        table = table or (local["table"] if same_stack else None)
        if not (bucket and table):
            raise TargetError("with --endpoint-url, name the bucket and table (--bucket/--table or "
                              "PNEUMOSCAN_BUCKET/PNEUMOSCAN_TABLE)")
        target = Target(bucket=bucket, table=table, region=region or _default_region(),
                        endpoint_url=endpoint_url, source="endpoint",
                        queue_url=local.get("queue_url") if same_stack else None,
                        return_queue_url=local.get("return_queue_url") if same_stack else None,
                        incoming_prefix=local.get("incoming_prefix", DEFAULT_INCOMING_PREFIX)
                        if same_stack else DEFAULT_INCOMING_PREFIX)
        if same_stack:
            target.source = "local"
    else:
        target = local_target()
    target.bucket = bucket or target.bucket
    target.table = table or target.table
    return target


def _local_state_or_none() -> dict[str, Any] | None:
    try:
        return read_state()
    except TargetError:
        return None


def _default_region() -> str:
    return boto3.session.Session().region_name or "us-east-1"
