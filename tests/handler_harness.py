"""The real handler (functions/scorer/app.py) on moto, fed the way Lambda feeds it.

Resources and the function's environment come from template.yaml; S3 itself sends the
notifications (moto implements bucket -> SQS notifications), and the CLI's `QueueWorker`
turns received messages into Lambda's SQS event and deletes only the successes. The
handler module is imported fresh inside the mock, environment first, as a Lambda
container does at cold start; its clients can be swapped by a test afterwards.
"""

from __future__ import annotations

import gc
import importlib
import sys
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from functools import cached_property
from types import ModuleType
from typing import Any

import boto3
from botocore.exceptions import ClientError
import pytest
from aws_lambda_powertools.metrics import Metrics
from moto import mock_aws

from pneumoscan.model import MODEL_DIR_ENV, default_model_dir
from pneumoscan.results import KEY, primary_key
from pneumoscan.telemetry import STATS_PREFIX
from pneumoscan_cli.s3_limits import enforce_key_limit
from pneumoscan_cli.template import StackSettings, create_resources, read_settings
from pneumoscan_cli.worker import FUNCTION_DIR, QueueWorker

HANDLER_MODULE = "app"


def import_handler() -> ModuleType:
    """A cold start: the module (its clients, its model) is created anew from the environment."""
    if str(FUNCTION_DIR) not in sys.path:
        sys.path.insert(0, str(FUNCTION_DIR))
    end_containers()
    # Powertools keeps a Metrics' metric set at class level, one per process: in Lambda a process
    # is a container, here two containers can run at once (the racing-writer tests), and one's
    # flush would empty the set under the other's.
    Metrics._metrics, Metrics._dimensions, Metrics._metadata = {}, {}, {}
    return importlib.import_module(HANDLER_MODULE)


def end_containers() -> None:
    """The handler's init freezes what it made for the container's lifetime (gc.freeze): in
    this one process, which imports it again and again, that lifetime ends here."""
    sys.modules.pop(HANDLER_MODULE, None)
    gc.unfreeze()


@dataclass
class HandlerStack:
    settings: StackSettings
    session: boto3.session.Session
    queue_url: str
    dead_letter_queue_url: str
    queue_arn: str
    app: ModuleType | None = None
    delivered: list[dict[str, Any]] = field(default_factory=list)

    @cached_property
    def s3(self) -> Any:
        return self.session.client("s3")

    @cached_property
    def sqs(self) -> Any:
        return self.session.client("sqs")

    @cached_property
    def table(self) -> Any:
        return self.session.resource("dynamodb").Table(self.settings.table)

    @property
    def prefix(self) -> str:
        return self.settings.incoming_prefix

    def cold_start(self) -> ModuleType:
        self.app = import_handler()
        return self.app

    def put(self, key: str, body: bytes) -> dict[str, Any]:
        return self.s3.put_object(Bucket=self.settings.bucket, Key=key, Body=body)

    def worker(self, handler=None) -> QueueWorker:
        return QueueWorker(self.sqs, self.queue_url, self.queue_arn, handler or self.app.lambda_handler,
                           region=self.settings.region, batch_size=self.settings.event_source.batch_size,
                           retry_after_s=0)

    def deliver(self, handler=None, *, rounds: int = 1) -> list[Any]:
        """Receive and process whatever is queued, `rounds` times; failed messages are
        made visible again at once (retry_after 0) so the next round sees them."""
        worker, outcomes = self.worker(handler), []
        for _ in range(rounds):
            while messages := self.receive(min(10, worker.batch_size)):
                self.delivered.extend(messages)
                outcomes.append(worker.process(messages))
                if outcomes[-1].failed:
                    break  # next round: the failed ones come back
        return outcomes

    def receive(self, count: int = 10) -> list[dict[str, Any]]:
        """One receive without waiting (the worker's own receive long-polls until a message comes)."""
        return self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=count,
                                        MessageSystemAttributeNames=["All"],
                                        MessageAttributeNames=["All"]).get("Messages", [])

    def expire_in_flight(self) -> None:
        """What the visibility timeout does to messages a dead worker held: visible again."""
        for message in self.delivered:
            with suppress(ClientError):  # deleted after a success: nothing to expire
                self.sqs.change_message_visibility(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"],
                                                   VisibilityTimeout=0)
        self.delivered.clear()

    def receive_raw(self) -> list[dict[str, Any]]:
        """Take every queued message without processing or deleting it (to deliver it twice)."""
        messages = []
        while batch := self.receive():
            messages.extend(batch)
        return messages

    def item(self, key: str) -> dict[str, Any] | None:
        return self.table.get_item(Key=primary_key(key, self.prefix), ConsistentRead=True).get("Item")

    def items(self) -> list[dict[str, Any]]:
        """Result items (the stats counter items in the same table are left out)."""
        return [item for item in self._scan() if not item[KEY].startswith(STATS_PREFIX)]

    def stats_items(self) -> list[dict[str, Any]]:
        return [item for item in self._scan() if item[KEY].startswith(STATS_PREFIX)]

    def _scan(self) -> list[dict[str, Any]]:
        response = self.table.scan(ConsistentRead=True)  # test inspection only; the product never scans
        return response["Items"]

    def queue_depth(self, queue_url: str) -> int:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages",
                                                "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        return sum(int(value) for value in attributes.values())


def function_environment(settings: StackSettings) -> dict[str, str]:
    environment = dict(settings.environment)
    environment.update({
        # The template's path is the Lambda's /var/task/model; here the repo's (or the one the test run names).
        MODEL_DIR_ENV: str(default_model_dir()),
        "POWERTOOLS_TRACE_DISABLED": "true",
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": settings.region, "AWS_DEFAULT_REGION": settings.region,
    })
    return environment


@pytest.fixture
def handler_stack(monkeypatch) -> Iterator[HandlerStack]:
    settings = read_settings()
    for name, value in function_environment(settings).items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    enforce_key_limit()  # S3's 1024-byte key limit, which moto alone does not enforce
    with mock_aws():
        session = boto3.session.Session(region_name=settings.region)
        sqs = session.client("sqs")
        created = create_resources(settings, s3=session.client("s3"), sqs=sqs, dynamodb=session.client("dynamodb"))
        queue_url, dead_letter_queue_url = created.queue_url, created.dead_letter_queue_url
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        stack = HandlerStack(settings, session, queue_url, dead_letter_queue_url, queue_arn)
        stack.cold_start()
        yield stack
    end_containers()
