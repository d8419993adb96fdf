"""The local stand-in for Lambda's SQS event source mapping.

It long-polls the queue, hands the REAL handler (`functions/scorer/app.py`) a batch in
Lambda's SQS event shape, and deletes only the messages the handler did not list in
`batchItemFailures`. Failed messages stay in the queue and come back after their
visibility timeout; SQS itself (moto honours RedrivePolicy on receive) moves them to
the dead-letter queue after `maxReceiveCount` receives, exactly as on AWS.

Run as its own process (`python -m pneumoscan_cli.worker`) so that, like a Lambda
container, it reads its configuration from the environment before the handler is
imported and keeps the model loaded across batches.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
import time
import uuid
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any, Callable

import boto3

from pneumoscan.settings import RETRY_CONFIG

from .template import LOCAL_ACCOUNT, REPO_ROOT

FUNCTION_DIR = REPO_ROOT / "functions" / "scorer"
HANDLER = "app.lambda_handler"
SQS_MAX_MESSAGES_PER_RECEIVE = 10
LONG_POLL_S = 2  # short enough that Ctrl-C is answered promptly
TIMEOUT_EXIT_CODE = 124

# Not under "pneumoscan": that is the handler's powertools logger (its service name).
log = logging.getLogger("pneumoscan_cli.worker")


@dataclass
class LambdaContext:
    """The attributes powertools and handlers read from Lambda's context object."""

    function_name: str
    memory_limit_in_mb: int
    timeout_s: int
    region: str
    function_version: str = "$LATEST"

    def __post_init__(self) -> None:
        self.invoked_function_arn = f"arn:aws:lambda:{self.region}:{LOCAL_ACCOUNT}:function:{self.function_name}"
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self.log_stream_name = "local"
        self.aws_request_id = str(uuid.uuid4())
        self._deadline = time.monotonic() + self.timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def sqs_record(message: dict[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    """One SQS message as a Lambda SQS event record."""
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": dict(message.get("Attributes") or {}),
        "messageAttributes": {
            name: {"stringValue": value.get("StringValue"), "binaryValue": value.get("BinaryValue"),
                   "stringListValues": [], "binaryListValues": [], "dataType": value["DataType"]}
            for name, value in (message.get("MessageAttributes") or {}).items()},
        "md5OfBody": message["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }


@dataclass
class BatchOutcome:
    received: int
    deleted: int
    failed: int
    error: str | None = None


@dataclass
class QueueWorker:
    """Poll -> invoke -> delete the successes, like Lambda's event source mapping."""

    sqs: Any
    queue_url: str
    queue_arn: str
    handler: Callable[[dict, Any], Any]
    _: KW_ONLY
    region: str
    batch_size: int = 10
    batching_window_s: int = 0
    report_batch_item_failures: bool = True
    function_name: str = "pneumoscan-scorer"
    memory_mb: int = 1024
    timeout_s: int = 30
    # None: failed messages come back after the queue's visibility timeout, as on AWS.
    retry_after_s: int | None = None
    # Called from a timer when the handler runs past timeout_s; None: not enforced.
    on_timeout: Callable[[int], None] | None = None
    stopping: threading.Event = field(default_factory=threading.Event)

    def receive_batch(self) -> list[dict[str, Any]]:
        """Up to batch_size messages, gathering for at most the batching window once one arrived."""
        messages: list[dict[str, Any]] = []
        window_ends: float | None = None
        while len(messages) < self.batch_size and not self.stopping.is_set():
            wait = LONG_POLL_S if not messages else max(0, min(LONG_POLL_S, window_ends - time.monotonic()))
            response = self.sqs.receive_message(
                QueueUrl=self.queue_url, WaitTimeSeconds=int(wait),
                MaxNumberOfMessages=min(SQS_MAX_MESSAGES_PER_RECEIVE, self.batch_size - len(messages)),
                MessageSystemAttributeNames=["All"], MessageAttributeNames=["All"])
            received = response.get("Messages", [])
            if received and window_ends is None:
                window_ends = time.monotonic() + self.batching_window_s
            messages.extend(received)
            if messages and (not received or time.monotonic() >= window_ends):
                break
        return messages

    def process(self, messages: list[dict[str, Any]]) -> BatchOutcome:
        event = {"Records": [sqs_record(message, self.queue_arn, self.region) for message in messages]}
        context = LambdaContext(self.function_name, self.memory_mb, self.timeout_s, self.region)
        watchdog = None
        if self.on_timeout is not None:
            watchdog = threading.Timer(self.timeout_s, self.on_timeout, args=(len(messages),))
            watchdog.daemon = True
            watchdog.start()
        try:
            response = self.handler(event, context)
        except Exception as exc:  # noqa: BLE001 - Lambda retries the whole batch, and so do we
            log.exception("handler raised; all %d messages will be redelivered", len(messages))
            self._release(messages)
            return BatchOutcome(len(messages), 0, len(messages), error=repr(exc))
        finally:
            if watchdog is not None:
                watchdog.cancel()
        failed_ids = {failure["itemIdentifier"] for failure in (response or {}).get("batchItemFailures", [])} \
            if self.report_batch_item_failures else set()
        succeeded = [message for message in messages if message["MessageId"] not in failed_ids]
        failed = [message for message in messages if message["MessageId"] in failed_ids]
        self._delete(succeeded)
        self._release(failed)
        return BatchOutcome(len(messages), len(succeeded), len(failed))

    def _delete(self, messages: list[dict[str, Any]]) -> None:
        for start in range(0, len(messages), SQS_MAX_MESSAGES_PER_RECEIVE):
            chunk = messages[start:start + SQS_MAX_MESSAGES_PER_RECEIVE]
            response = self.sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=[
                {"Id": str(index), "ReceiptHandle": message["ReceiptHandle"]} for index, message in enumerate(chunk)])
            for failure in response.get("Failed", []):
                log.warning("could not delete a scored message (it will be redelivered): %s", failure)

    def _release(self, messages: list[dict[str, Any]]) -> None:
        if self.retry_after_s is None or not messages:
            return
        for start in range(0, len(messages), SQS_MAX_MESSAGES_PER_RECEIVE):
            chunk = messages[start:start + SQS_MAX_MESSAGES_PER_RECEIVE]
            self.sqs.change_message_visibility_batch(QueueUrl=self.queue_url, Entries=[
                {"Id": str(index), "ReceiptHandle": message["ReceiptHandle"], "VisibilityTimeout": self.retry_after_s}
                for index, message in enumerate(chunk)])

    def run(self) -> None:
        while not self.stopping.is_set():
            messages = self.receive_batch()
            if not messages:
                continue
            started = time.perf_counter()
            outcome = self.process(messages)
            log.info("batch of %d: %d done, %d to retry (%.0f ms)%s", outcome.received, outcome.deleted,
                     outcome.failed, (time.perf_counter() - started) * 1000,
                     f" - handler error {outcome.error}" if outcome.error else "")


def end_environment(messages: int) -> None:
    """What Lambda does to an invocation that runs past the function timeout: the execution
    environment is ended, nothing is deleted, and the batch comes back after the visibility
    timeout. `local up` starts a new worker in its place."""
    log.error("the handler ran past the function timeout with %d message(s) in hand; "
              "this worker ends and the batch will be redelivered", messages)
    logging.shutdown()
    os._exit(TIMEOUT_EXIT_CODE)


class LambdaFunction:
    """The handler imported the way Lambda does (code folder on sys.path, `module.function`).

    Like a Lambda init error, a failed import (e.g. the model does not load) fails the
    invocation in hand, so its whole batch is redelivered, and is retried on the next one.
    """

    def __init__(self, function_dir: Path = FUNCTION_DIR, handler: str = HANDLER):
        self.module_name, self.function_name = handler.rsplit(".", 1)
        if str(function_dir) not in sys.path:
            sys.path.insert(0, str(function_dir))
        self._function: Callable[[dict, Any], Any] | None = None

    def init(self) -> bool:
        try:
            self._function = getattr(importlib.import_module(self.module_name), self.function_name)
        except Exception:  # noqa: BLE001 - reported, and retried on the next batch
            log.exception("handler init failed; every batch fails until it loads")
            return False
        return True

    def __call__(self, event: dict, context: Any) -> Any:
        if self._function is None and not self.init():
            raise RuntimeError(f"{self.module_name}.{self.function_name} could not be initialised")
        return self._function(event, context)


def _default(name: str) -> Any:
    """A QueueWorker field's default: the command line's defaults are the worker's own."""
    return QueueWorker.__dataclass_fields__[name].default


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queue-url", required=True)
    parser.add_argument("--queue-arn", required=True)
    parser.add_argument("--region", required=True)
    parser.add_argument("--batch-size", type=int, default=_default("batch_size"))
    parser.add_argument("--batching-window", type=int, default=_default("batching_window_s"))
    parser.add_argument("--no-batch-item-failures", action="store_true")
    parser.add_argument("--memory-mb", type=int, default=_default("memory_mb"))
    parser.add_argument("--timeout", type=int, default=_default("timeout_s"))
    parser.add_argument("--retry-after", type=int, default=_default("retry_after_s"))
    parser.add_argument("--name", default=_default("function_name"))
    args = parser.parse_args(argv)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter(f"%(asctime)s {args.name} %(message)s", datefmt="%H:%M:%S"))
    log.addHandler(console)
    log.setLevel(logging.INFO)
    log.propagate = False

    # The endpoint comes from AWS_ENDPOINT_URL, which the handler's own clients read too.
    sqs = boto3.session.Session(region_name=args.region).client("sqs", config=RETRY_CONFIG)
    function = LambdaFunction()
    function.init()  # cold start before the first message, as a provisioned Lambda would
    worker = QueueWorker(sqs, args.queue_url, args.queue_arn, function, region=args.region,
                         batch_size=args.batch_size, batching_window_s=args.batching_window,
                         report_batch_item_failures=not args.no_batch_item_failures,
                         function_name=args.name, memory_mb=args.memory_mb, timeout_s=args.timeout,
                         retry_after_s=args.retry_after, on_timeout=end_environment)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: worker.stopping.set())
    log.info("polling %s (batch %d, window %ds)", args.queue_url, args.batch_size, args.batching_window)
    worker.run()


if __name__ == "__main__":
    main()
