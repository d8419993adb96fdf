"""`pneumoscan backfill`: enqueue objects already in the bucket for scoring.

Two jobs users of such pipelines always have: the backlog that was uploaded before
the notification existed (`--only-unscored`), and the rescore after a model upgrade
(`--model-older-than V`). Each object becomes one SQS message shaped exactly like
the S3 notification the bucket would have sent, so the handler cannot tell them
apart: a duplicate of an up-to-date result is skipped there, a rescore keeps the
previous score in the item.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated, Any
from urllib.parse import quote_plus

import typer
from boto3.dynamodb.types import TypeDeserializer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pneumoscan.results import KEY, version_key

from .aws import BucketOption, EndpointOption, RegionOption, StackOption, TableOption, Target, resolve_target

console = Console(stderr=True)

SQS_BATCH = 10          # SendMessageBatch takes at most 10 entries
DYNAMODB_BATCH = 100    # BatchGetItem takes at most 100 keys
RESULT_FIELDS = (KEY, "etag", "version_id", "model_version", "status")
EVENT_SOURCE = "pneumoscan:backfill"
_deserializer = TypeDeserializer()


@dataclass(frozen=True)
class StoredObject:
    key: str
    etag: str
    size: int
    version_id: str | None = None


def list_objects(target: Target, prefix: str) -> Iterator[StoredObject]:
    """Current objects under `prefix`; "folder" placeholders (keys ending in /) are no images."""
    paginator = target.client("s3").get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=target.bucket, Prefix=prefix):
        for entry in page.get("Contents", []):
            if not entry["Key"].endswith("/"):
                yield StoredObject(entry["Key"], entry["ETag"].strip('"'), entry["Size"])


def current_results(target: Target, keys: list[str]) -> dict[str, dict[str, Any]]:
    """The result items of `keys` (those that have one), by key, 100 keys per BatchGetItem."""
    dynamodb = target.client("dynamodb")
    names = {f"#f{index}": name for index, name in enumerate(RESULT_FIELDS)}
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(keys), DYNAMODB_BATCH):
        request: dict[str, Any] = {target.table: {
            "Keys": [{KEY: {"S": key}} for key in keys[start:start + DYNAMODB_BATCH]],
            "ProjectionExpression": ", ".join(names), "ExpressionAttributeNames": names}}
        while request:
            response = dynamodb.batch_get_item(RequestItems=request)
            for item in response["Responses"].get(target.table, []):
                plain = {name: _deserializer.deserialize(value) for name, value in item.items()}
                found[plain[KEY]] = plain
            # Throttled keys come back unprocessed; botocore has already backed off once.
            request = response.get("UnprocessedKeys") or {}
    return found


def needs_scoring(stored: StoredObject, result: dict[str, Any] | None, *,
                  only_unscored: bool, model_older_than: str | None) -> bool:
    if result is None:
        return True  # never scored: part of every backfill
    if only_unscored:
        # An object overwritten since its result was written has not been scored as it is.
        return result.get("etag") != stored.etag
    if model_older_than is not None:
        return version_key(str(result.get("model_version", ""))) < version_key(model_older_than)
    return True


def notification_body(target: Target, stored: StoredObject) -> str:
    """The S3 event notification for `stored`, key URL-encoded as S3 encodes it."""
    s3_object = {"key": quote_plus(stored.key, safe="/"), "size": stored.size, "eTag": stored.etag}
    if stored.version_id:
        s3_object["versionId"] = stored.version_id
    event_time = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return json.dumps({"Records": [{
        "eventVersion": "2.1", "eventSource": EVENT_SOURCE, "awsRegion": target.region,
        "eventTime": event_time, "eventName": "ObjectCreated:Put",
        "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": target.bucket, "arn": f"arn:aws:s3:::{target.bucket}"},
               "object": s3_object}}]})


class EnqueueError(RuntimeError):
    """SQS refused some messages even after a retry."""


def send_batches(sqs: Any, queue_url: str, bodies: Iterable[str], *, on_sent=lambda count: None) -> int:
    """SendMessageBatch in tens; entries SQS reports as failed are sent once more, then it gives up."""
    sent = 0
    pending = list(bodies)
    for start in range(0, len(pending), SQS_BATCH):
        entries = [{"Id": str(index), "MessageBody": body}
                   for index, body in enumerate(pending[start:start + SQS_BATCH])]
        for attempt in range(2):
            response = sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
            sent += len(response.get("Successful", []))
            on_sent(len(response.get("Successful", [])))
            failed_ids = {failure["Id"] for failure in response.get("Failed", [])}
            entries = [entry for entry in entries if entry["Id"] in failed_ids]
            if not entries:
                break
        if entries:
            codes = sorted({failure.get("Code", "?") for failure in response["Failed"]})
            raise EnqueueError(f"SQS refused {len(entries)} message(s) twice ({', '.join(codes)}); "
                               f"{sent} were enqueued before that")
    return sent


def select_objects(target: Target, prefix: str, *, only_unscored: bool, model_older_than: str | None,
                   progress: Progress) -> tuple[int, list[StoredObject]]:
    listing = progress.add_task("listing objects", total=None)
    objects = []
    for stored in list_objects(target, prefix):
        objects.append(stored)
        progress.advance(listing)
    progress.update(listing, total=len(objects))
    checking = progress.add_task("reading results", total=len(objects))
    wanted: list[StoredObject] = []
    for start in range(0, len(objects), DYNAMODB_BATCH):
        chunk = objects[start:start + DYNAMODB_BATCH]
        results = current_results(target, [stored.key for stored in chunk])
        wanted.extend(stored for stored in chunk
                      if needs_scoring(stored, results.get(stored.key), only_unscored=only_unscored,
                                       model_older_than=model_older_than))
        progress.advance(checking, len(chunk))
    return len(objects), wanted


def full_prefix(target: Target, prefix: str | None) -> str:
    """`--prefix` is relative to the incoming prefix (a batch folder, say); a full key prefix works too."""
    if not prefix:
        return target.incoming_prefix
    return prefix if prefix.startswith(target.incoming_prefix) else target.incoming_prefix + prefix.lstrip("/")


def backfill(
    prefix: Annotated[str | None, typer.Option(
        help="Only objects under this prefix (relative to the incoming prefix, e.g. a batch name).")] = None,
    only_unscored: Annotated[bool, typer.Option(
        "--only-unscored", help="Only objects with no result yet (or overwritten since theirs).")] = False,
    model_older_than: Annotated[str | None, typer.Option(
        "--model-older-than", metavar="VERSION",
        help="Only objects unscored or scored by a model version older than VERSION (rescore after an upgrade).")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would be enqueued; send nothing.")] = False,
    queue_url: Annotated[str | None, typer.Option(
        "--queue-url", envvar="PNEUMOSCAN_QUEUE_URL", help="Scoring queue (with --endpoint-url).")] = None,
    stack: StackOption = None, endpoint_url: EndpointOption = None, region: RegionOption = None,
    bucket: BucketOption = None, table: TableOption = None,
) -> None:
    """Enqueue existing objects for scoring, as S3 notifications would have, with a progress bar."""
    if only_unscored and model_older_than:
        raise typer.BadParameter("--only-unscored and --model-older-than are alternatives; pass one")
    target = resolve_target(stack, endpoint_url, region, bucket, table)
    target.queue_url = queue_url or target.queue_url
    if not target.queue_url:
        raise typer.BadParameter("no scoring queue known for this stack: pass --queue-url")
    key_prefix = full_prefix(target, prefix)

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        listed, wanted = select_objects(target, key_prefix, only_unscored=only_unscored,
                                        model_older_than=model_older_than, progress=progress)
        if not dry_run and wanted:
            enqueueing = progress.add_task("enqueueing", total=len(wanted))
            try:
                send_batches(target.client("sqs"), target.queue_url,
                             (notification_body(target, stored) for stored in wanted),
                             on_sent=lambda count: progress.advance(enqueueing, count))
            except EnqueueError as exc:
                console.print(f"[red]{exc}[/red]")
                raise typer.Exit(1) from exc
    verb = "would enqueue" if dry_run else "enqueued"
    console.print(f"{listed} object(s) under {key_prefix}: {verb} {len(wanted)}, "
                  f"left {listed - len(wanted)} with an up-to-date result")
