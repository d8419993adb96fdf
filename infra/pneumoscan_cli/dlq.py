"""`pneumoscan dlq list|redrive`: see what ended in the dead-letter queue, and send it back.

A message lands in the DLQ after `maxReceiveCount` failed deliveries: a transient
fault that outlasted the retries, or a bug. `list` shows each message with the
object(s) it names and their result item, without consuming it. `redrive` moves
messages back to the scoring queue once the cause is fixed; a message is deleted
from the DLQ only after the scoring queue accepted its copy, so a crash in between
gives a duplicate delivery, which the handler absorbs, never a lost one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import batched
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pneumoscan.events import UnknownEvent, parse_message
from pneumoscan.results import REASON, STATUS, get_result

from .aws import BucketOption, EndpointOption, RegionOption, StackOption, TableOption, Target, resolve_target

console = Console(stderr=True)
app = typer.Typer(help="Inspect and redrive the dead-letter queue.", no_args_is_help=True)

RECEIVE_BATCH = 10       # ReceiveMessage returns at most 10
# Messages stay hidden this long while a command holds them; `list` releases them at once.
HOLD_VISIBILITY_S = 60
ATTRIBUTES = ["SentTimestamp", "ApproximateReceiveCount", "ApproximateFirstReceiveTimestamp"]


@dataclass
class DeadLetter:
    message_id: str
    receipt_handle: str
    body: str
    attributes: dict[str, str]
    message_attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def object_keys(self) -> list[str]:
        try:
            return [created.key for created in parse_message(self.body).objects]
        except UnknownEvent:
            return []

    @property
    def problem(self) -> str | None:
        """Why the message is no S3 notification the handler understands (None when it is one)."""
        try:
            parse_message(self.body)
        except UnknownEvent as exc:
            return str(exc)
        return None

    @property
    def sent_at(self) -> str:
        millis = int(self.attributes.get("SentTimestamp", 0))
        return datetime.fromtimestamp(millis / 1000, timezone.utc).isoformat(timespec="seconds")


def _queue_urls(target: Target, queue_url: str | None, dead_letter_queue_url: str | None) -> tuple[str, str]:
    queue_url = queue_url or target.queue_url
    dead_letter_queue_url = dead_letter_queue_url or target.dead_letter_queue_url
    if not dead_letter_queue_url:
        raise typer.BadParameter("no dead-letter queue known for this stack: pass --dlq-url")
    return queue_url or "", dead_letter_queue_url


def receive(sqs: Any, dead_letter_queue_url: str, limit: int | None) -> Iterator[DeadLetter]:
    """Receive up to `limit` distinct messages, each hidden for HOLD_VISIBILITY_S while held."""
    seen: set[str] = set()
    while limit is None or len(seen) < limit:
        wanted = RECEIVE_BATCH if limit is None else min(RECEIVE_BATCH, limit - len(seen))
        response = sqs.receive_message(QueueUrl=dead_letter_queue_url, MaxNumberOfMessages=wanted,
                                       VisibilityTimeout=HOLD_VISIBILITY_S, WaitTimeSeconds=1,
                                       MessageSystemAttributeNames=ATTRIBUTES, MessageAttributeNames=["All"])
        messages = [message for message in response.get("Messages", []) if message["MessageId"] not in seen]
        if not messages:
            return
        for message in messages:
            seen.add(message["MessageId"])
            yield DeadLetter(message["MessageId"], message["ReceiptHandle"], message["Body"],
                             message.get("Attributes", {}), message.get("MessageAttributes", {}))


def release(sqs: Any, dead_letter_queue_url: str, letters: list[DeadLetter]) -> None:
    """Make held messages visible again at once (listing must not hide them for a minute)."""
    for start in range(0, len(letters), RECEIVE_BATCH):
        sqs.change_message_visibility_batch(QueueUrl=dead_letter_queue_url, Entries=[
            {"Id": str(index), "ReceiptHandle": letter.receipt_handle, "VisibilityTimeout": 0}
            for index, letter in enumerate(letters[start:start + RECEIVE_BATCH])])


def result_status(target: Target, keys: list[str]) -> str:
    if not keys:
        return "not an S3 event"
    dynamodb = target.client("dynamodb")
    statuses = []
    for key in keys:
        item = get_result(dynamodb, target.table, key, incoming_prefix=target.incoming_prefix,
                          fields=(STATUS, REASON))
        if item is None:
            statuses.append("no result")
        else:
            reason = item.get(REASON)
            statuses.append(item[STATUS] + (f" ({reason})" if reason else ""))
    return ", ".join(statuses)


def redrive_letters(sqs: Any, letters: list[DeadLetter], queue_url: str, dead_letter_queue_url: str) -> int:
    """Copy each message to the scoring queue, then delete it from the DLQ; returns how many moved."""
    moved = 0
    for start in range(0, len(letters), RECEIVE_BATCH):
        chunk = letters[start:start + RECEIVE_BATCH]
        entries = [{"Id": str(index), "MessageBody": letter.body, **(
            {"MessageAttributes": letter.message_attributes} if letter.message_attributes else {})}
            for index, letter in enumerate(chunk)]
        response = sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
        accepted = [chunk[int(entry["Id"])] for entry in response.get("Successful", [])]
        if accepted:
            deleted = sqs.delete_message_batch(QueueUrl=dead_letter_queue_url, Entries=[
                {"Id": str(index), "ReceiptHandle": letter.receipt_handle} for index, letter in enumerate(accepted)])
            for failure in deleted.get("Failed", []):
                # The copy is already queued: the worst case is one more (absorbed) delivery.
                console.print(f"[yellow]message {accepted[int(failure['Id'])].message_id} was redriven but "
                              f"is still in the DLQ: {failure.get('Code')}[/yellow]")
        for failure in response.get("Failed", []):
            console.print(f"[red]message {chunk[int(failure['Id'])].message_id} stays in the DLQ: "
                          f"{failure.get('Code')} {failure.get('Message', '')}[/red]")
        moved += len(accepted)
    return moved


DlqUrlOption = Annotated[str | None, typer.Option(
    "--dlq-url", envvar="PNEUMOSCAN_DLQ_URL", help="Dead-letter queue (with --endpoint-url).")]
QueueUrlOption = Annotated[str | None, typer.Option(
    "--queue-url", envvar="PNEUMOSCAN_QUEUE_URL", help="Scoring queue (with --endpoint-url).")]
LimitOption = Annotated[int | None, typer.Option(min=1, help="At most this many messages.")]


@app.command("list")
def list_dead_letters(
    limit: LimitOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per message.")] = False,
    queue_url: QueueUrlOption = None, dlq_url: DlqUrlOption = None,
    stack: StackOption = None, endpoint_url: EndpointOption = None, region: RegionOption = None,
    bucket: BucketOption = None, table: TableOption = None,
) -> None:
    """Show the messages in the dead-letter queue and their objects' results, consuming none."""
    target = resolve_target(stack, endpoint_url, region, bucket, table)
    _, dead_letter_queue_url = _queue_urls(target, queue_url, dlq_url)
    sqs = target.client("sqs")
    letters = list(receive(sqs, dead_letter_queue_url, limit))
    release(sqs, dead_letter_queue_url, letters)
    rows = [{"message_id": letter.message_id, "sent_at": letter.sent_at,
             "receive_count": int(letter.attributes.get("ApproximateReceiveCount", 0)),
             "object_keys": letter.object_keys, "result": result_status(target, letter.object_keys),
             "problem": letter.problem}
            for letter in letters]
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    listing = Table(title=f"dead-letter queue: {len(rows)} message(s)")
    for column in ("message id", "sent at", "receives", "object key(s)", "result"):
        listing.add_column(column)
    for row in rows:
        # Keys and messages are the sender's text: shown as written, never as console markup.
        listing.add_row(row["message_id"], row["sent_at"], str(row["receive_count"]),
                        escape("\n".join(row["object_keys"])) or "-",
                        escape(row["result"] + (f": {row['problem']}" if row["problem"] else "")))
    Console().print(listing)


@app.command("redrive")
def redrive(
    limit: LimitOption = None,
    queue_url: QueueUrlOption = None, dlq_url: DlqUrlOption = None,
    stack: StackOption = None, endpoint_url: EndpointOption = None, region: RegionOption = None,
    bucket: BucketOption = None, table: TableOption = None,
) -> None:
    """Move messages from the dead-letter queue back to the scoring queue."""
    target = resolve_target(stack, endpoint_url, region, bucket, table)
    queue_url, dead_letter_queue_url = _queue_urls(target, queue_url, dlq_url)
    if not queue_url:
        raise typer.BadParameter("no scoring queue known for this stack: pass --queue-url")
    sqs = target.client("sqs")
    moved = held = 0
    # Ten at a time, so no message is held past its visibility timeout on a long DLQ.
    for chunk in batched(receive(sqs, dead_letter_queue_url, limit), RECEIVE_BATCH):
        held += len(chunk)
        moved += redrive_letters(sqs, list(chunk), queue_url, dead_letter_queue_url)
    console.print(f"redrove {moved} of {held} message(s) to the scoring queue")
    if moved < held:
        raise typer.Exit(1)
