"""`pneumoscan backfill`: enqueue objects already in the bucket for scoring.

Two jobs users of such pipelines always have: the backlog that was uploaded before
the notification existed (`--only-unscored`), and the rescore after a model upgrade
(`--model-older-than V`). Each object becomes one SQS message shaped exactly like
the S3 notification the bucket would have sent, so the handler cannot tell them
apart: a duplicate of an up-to-date result is skipped there, a rescore keeps the
previous score in the item.

It streams: one listing page (1000 keys) at a time is checked against the table (100
keys per BatchGetItem) and enqueued (10 per SendMessageBatch) before the next page is
listed, so memory stays flat however many objects there are. After a chunk, at most once
a second, the last key handled is written to a checkpoint file; an interrupted run
started again with the same arguments lists from there (S3's `StartAfter`) instead of
from the beginning. What was sent since the last checkpoint (about a second's worth) is
sent again, and the handler recognises those as duplicates.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
)

from pneumoscan.events import object_created_body
from pneumoscan.results import ETAG, KEY, MODEL_VERSION, STATUS, VERSION_ID, deserialize, primary_key, serialize, version_key

from .aws import (
    BucketOption, CommandError, EndpointOption, RegionOption, StackOption, TableOption, Target, resolve_target,
    state_dir,
)

console = Console(stderr=True)

SQS_BATCH = 10          # SendMessageBatch takes at most 10 entries
CHECKPOINT_EVERY_S = 1.0  # bounds both the checkpoint writes and what a resumed run sends again
DYNAMODB_BATCH = 100    # BatchGetItem takes at most 100 keys
RESULT_FIELDS = (KEY, ETAG, VERSION_ID, MODEL_VERSION, STATUS)
EVENT_SOURCE = "pneumoscan:backfill"


@dataclass(frozen=True)
class StoredObject:
    key: str
    etag: str
    size: int
    version_id: str | None = None


def list_pages(target: Target, prefix: str, start_after: str | None = None) -> Iterator[list[StoredObject]]:
    """Current objects under `prefix` in key order, one listing page at a time, after
    `start_after` if given; zero-byte "folder" placeholders (keys ending in /) are no images,
    but a key ending in / that holds bytes is an object like any other."""
    paginator = target.client("s3").get_paginator("list_objects_v2")
    arguments = {"Bucket": target.bucket, "Prefix": prefix} | ({"StartAfter": start_after} if start_after else {})
    for page in paginator.paginate(**arguments):
        yield [StoredObject(entry["Key"], entry["ETag"].strip('"'), entry["Size"])
               for entry in page.get("Contents", []) if not (entry["Key"].endswith("/") and entry["Size"] == 0)]


def current_results(target: Target, keys: list[str]) -> dict[str, dict[str, Any]]:
    """The result items of `keys` (those that have one), by key, 100 keys per BatchGetItem."""
    dynamodb = target.client("dynamodb")
    names = {f"#f{index}": name for index, name in enumerate(RESULT_FIELDS)}
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(keys), DYNAMODB_BATCH):
        request: dict[str, Any] = {target.table: {
            "Keys": [serialize(primary_key(key, target.incoming_prefix)) for key in keys[start:start + DYNAMODB_BATCH]],
            "ProjectionExpression": ", ".join(names), "ExpressionAttributeNames": names}}
        while request:
            response = dynamodb.batch_get_item(RequestItems=request)
            for item in response["Responses"].get(target.table, []):
                plain = deserialize(item)
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
        return result.get(ETAG) != stored.etag
    if model_older_than is not None:
        return version_key(str(result.get(MODEL_VERSION, ""))) < version_key(model_older_than)
    return True


def notification_body(target: Target, stored: StoredObject) -> str:
    return object_created_body(target.bucket, stored.key, region=target.region, source=EVENT_SOURCE,
                               etag=stored.etag, size=stored.size, version_id=stored.version_id)


class EnqueueError(RuntimeError):
    """SQS refused some messages even after a retry."""


class RateLimit:
    """At most `per_second` messages a second on average (None: as fast as SQS takes them)."""

    def __init__(self, per_second: float | None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.interval = 1.0 / per_second if per_second else 0.0
        self.clock, self.sleep = clock, sleep
        self.next_at: float | None = None

    def wait(self, count: int) -> None:
        """Block until `count` more messages may go."""
        if not self.interval:
            return
        now = self.clock()
        if self.next_at is None or self.next_at < now:
            self.next_at = now
        if self.next_at > now:
            self.sleep(self.next_at - now)
        self.next_at += count * self.interval


def send_batches(sqs: Any, queue_url: str, bodies: Iterable[str], *, on_sent=lambda count: None,
                 rate: RateLimit | None = None) -> int:
    """SendMessageBatch in tens; entries SQS reports as failed are sent once more, then it gives up."""
    sent = 0
    pending = list(bodies)
    for start in range(0, len(pending), SQS_BATCH):
        entries = [{"Id": str(index), "MessageBody": body}
                   for index, body in enumerate(pending[start:start + SQS_BATCH])]
        if rate:
            rate.wait(len(entries))
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


@dataclass
class Checkpoint:
    """Where a backfill is: the job it belongs to, the last key handled, the counts so far."""

    bucket: str
    prefix: str
    selection: str
    last_key: str | None = None
    listed: int = 0
    enqueued: int = 0

    def same_job(self, other: Checkpoint) -> bool:
        return (self.bucket, self.prefix, self.selection) == (other.bucket, other.prefix, other.selection)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(asdict(self)))
        temporary.replace(path)  # a run killed mid-write leaves the previous checkpoint intact

    @classmethod
    def load(cls, path: Path) -> Checkpoint | None:
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            return None


def default_checkpoint(bucket: str, prefix: str, selection: str) -> Path:
    """One checkpoint file per job, so two different backfills never resume each other."""
    job = hashlib.sha256(f"{bucket}\0{prefix}\0{selection}".encode()).hexdigest()[:12]
    return state_dir() / f"backfill-{job}.json"


def selection_of(only_unscored: bool, model_older_than: str | None) -> str:
    if only_unscored:
        return "only-unscored"
    return f"model-older-than {model_older_than}" if model_older_than else "all"


def chunks(pages: Iterable[list[StoredObject]], size: int = DYNAMODB_BATCH) -> Iterator[list[StoredObject]]:
    for page in pages:
        for start in range(0, len(page), size):
            yield page[start:start + size]


def wanted_in(target: Target, chunk: list[StoredObject], *, only_unscored: bool,
              model_older_than: str | None) -> list[StoredObject]:
    """The objects of `chunk` to enqueue; the table is read only when a filter needs it."""
    if not only_unscored and model_older_than is None:
        return chunk  # every object: nothing to look up
    found = current_results(target, [stored.key for stored in chunk])
    return [stored for stored in chunk
            if needs_scoring(stored, found.get(stored.key), only_unscored=only_unscored,
                             model_older_than=model_older_than)]


def count_objects(target: Target, prefix: str, start_after: str | None, progress: Progress) -> int:
    """A listing pass that only counts, so the real pass can show an ETA (a LIST per 1000 keys)."""
    counting = progress.add_task("counting objects", total=None)
    total = 0
    for page in list_pages(target, prefix, start_after):
        total += len(page)
        progress.update(counting, completed=total)
    progress.remove_task(counting)
    return total


def run_backfill(target: Target, prefix: str, checkpoint: Checkpoint, *, only_unscored: bool,
                 model_older_than: str | None, dry_run: bool, rate: RateLimit | None,
                 checkpoint_path: Path | None, progress: Progress, count_first: bool = True) -> Checkpoint:
    """List, select and enqueue chunk by chunk; `checkpoint` says where to start and is kept current."""
    total = count_objects(target, prefix, checkpoint.last_key, progress) if count_first else None
    verb = "would enqueue" if dry_run else "enqueued"
    task = progress.add_task(f"{verb} {checkpoint.enqueued}", total=total)
    sqs = None if dry_run else target.client("sqs")
    saved_at = time.monotonic()
    for chunk in chunks(list_pages(target, prefix, checkpoint.last_key)):
        wanted = wanted_in(target, chunk, only_unscored=only_unscored, model_older_than=model_older_than)
        if sqs is not None and wanted:
            send_batches(sqs, target.queue_url, (notification_body(target, stored) for stored in wanted),
                         rate=rate)
        checkpoint.listed += len(chunk)
        checkpoint.enqueued += len(wanted)
        checkpoint.last_key = chunk[-1].key
        if checkpoint_path is not None and time.monotonic() - saved_at >= CHECKPOINT_EVERY_S:
            checkpoint.save(checkpoint_path)
            saved_at = time.monotonic()
        progress.update(task, advance=len(chunk), description=f"{verb} {checkpoint.enqueued}")
    return checkpoint


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
    rate: Annotated[float | None, typer.Option(
        "--rate", min=0.1, metavar="PER_SECOND", help="Enqueue at most this many messages a second.")] = None,
    checkpoint_file: Annotated[Path | None, typer.Option(
        "--checkpoint", help="Checkpoint file (default: one per bucket, prefix and filter under .pneumoscan/).")
    ] = None,
    restart: Annotated[bool, typer.Option(
        "--restart", help="Ignore an existing checkpoint and start from the first key.")] = False,
    count: Annotated[bool, typer.Option(
        "--count/--no-count", help="List once first to count objects, for the progress bar's ETA.")] = True,
    queue_url: Annotated[str | None, typer.Option(
        "--queue-url", envvar="PNEUMOSCAN_QUEUE_URL", help="Scoring queue (with --endpoint-url).")] = None,
    stack: StackOption = None, endpoint_url: EndpointOption = None, region: RegionOption = None,
    bucket: BucketOption = None, table: TableOption = None,
) -> None:
    """Enqueue existing objects for scoring, as S3 notifications would have: streamed page by page,
    resumable from a checkpoint, rate-limited, with a progress bar and ETA."""
    if only_unscored and model_older_than:
        raise typer.BadParameter("--only-unscored and --model-older-than are alternatives; pass one")
    target = resolve_target(stack, endpoint_url, region, bucket, table)
    target.queue_url = queue_url or target.queue_url
    if not target.queue_url:
        raise typer.BadParameter("no scoring queue known for this stack: pass --queue-url")
    key_prefix = full_prefix(target, prefix)
    job = Checkpoint(target.bucket, key_prefix, selection_of(only_unscored, model_older_than))
    path = None if dry_run else checkpoint_file or default_checkpoint(job.bucket, job.prefix, job.selection)
    saved = Checkpoint.load(path) if path is not None and not restart else None
    if saved is not None:
        if not saved.same_job(job):
            raise CommandError(f"{path} is the checkpoint of another backfill ({saved.prefix}, {saved.selection}): "
                               "pass --restart or another --checkpoint")
        job = saved
        console.print(f"resuming after {job.listed} object(s) ({job.enqueued} enqueued) from {path}")

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                  TimeElapsedColumn(), TextColumn("ETA"),
                  TimeRemainingColumn(), console=console) as progress:
        try:
            run_backfill(target, key_prefix, job, only_unscored=only_unscored, model_older_than=model_older_than,
                         dry_run=dry_run, rate=RateLimit(rate), checkpoint_path=path, progress=progress,
                         count_first=count)
        except EnqueueError as exc:
            console.print(f"[red]{exc}[/red]; run the same command again to resume from {path}")
            raise typer.Exit(1) from exc
    if path is not None:
        path.unlink(missing_ok=True)  # done: the next backfill of this job starts afresh
    verb = "would enqueue" if dry_run else "enqueued"
    console.print(f"{job.listed} object(s) under {key_prefix}: {verb} {job.enqueued}, "
                  f"left {job.listed - job.enqueued} with an up-to-date result")
