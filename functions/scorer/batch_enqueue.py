"""S3 Batch Operations task -> one message on the scoring queue.

An S3 Batch Operations job (`pneumoscan batch-ops create`) invokes this function once per
object of its manifest (an S3 Inventory report or a CSV of keys). It does not score: it
enqueues the S3 ObjectCreated notification the bucket would have sent, so the archive
goes through the same queue, batching, concurrency cap, dead-letter queue and
duplicate detection as every upload. Its answer per task lands in the job's completion
report: Succeeded (enqueued), PermanentFailure (another bucket, or not under the incoming prefix), or
TemporaryFailure (SQS throttled or failed; Batch Operations retries it).
"""

from __future__ import annotations

import os
from urllib.parse import unquote_plus

import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from pneumoscan.events import object_created_body

EVENT_SOURCE = "pneumoscan:s3-batch-operations"
QUEUE_URL = os.environ["SCORING_QUEUE_URL"]
INCOMING_PREFIX = os.environ.get("INCOMING_PREFIX", "incoming/")
# The scorer only reads its own bucket: objects of any other would only become failed items.
IMAGES_BUCKET = os.environ["IMAGES_BUCKET"]
REGION = os.environ.get("AWS_REGION", "us-east-1")
# A throttled or failed send is retried here first, then by Batch Operations (TemporaryFailure).
sqs = botocore.session.get_session().create_client("sqs", config=Config(retries={"mode": "standard", "max_attempts": 5}))


def task_result(task: dict) -> dict:
    bucket = task["s3BucketArn"].rsplit(":", 1)[-1]
    key = unquote_plus(task["s3Key"])  # Batch Operations passes manifest keys URL-encoded
    if bucket != IMAGES_BUCKET:
        return _result(task, "PermanentFailure", f"not in {IMAGES_BUCKET}, the bucket this stack scores")
    if not key.startswith(INCOMING_PREFIX) or key.endswith("/"):
        return _result(task, "PermanentFailure", f"not an object under {INCOMING_PREFIX}: not scored")
    try:
        sqs.send_message(QueueUrl=QUEUE_URL, MessageBody=object_created_body(
            bucket, key, region=REGION, source=EVENT_SOURCE, version_id=task.get("s3VersionId") or None))
    except (BotoCoreError, ClientError) as exc:
        return _result(task, "TemporaryFailure", f"enqueue failed: {exc}"[:500])
    return _result(task, "Succeeded", "enqueued for scoring")


def _result(task: dict, code: str, text: str) -> dict:
    return {"taskId": task["taskId"], "resultCode": code, "resultString": text}


def lambda_handler(event: dict, context) -> dict:
    return {"invocationSchemaVersion": event["invocationSchemaVersion"],
            "treatMissingKeysAs": "PermanentFailure", "invocationId": event["invocationId"],
            "results": [task_result(task) for task in event["tasks"]]}
