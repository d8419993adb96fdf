"""`pneumoscan results`: read scores back with the table's two indexes, never a Scan.

--batch B                  -> Query batch-index (batch = B), in key order
--label / --status / none  -> Query outcome-index, one per outcome and UTC day in the window
"""

from __future__ import annotations

import csv
import json
import re
import sys
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum
from typing import Annotated, Any, Iterator

import typer
from boto3.dynamodb.types import TypeDeserializer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pneumoscan.results import (
    BATCH, BATCH_INDEX, KEY, LABEL, OUTCOME_DAY, OUTCOME_FAILED, OUTCOME_INDEX, SCORED_AT, STATUS_FAILED,
    STATUS_SCORED, outcome_day, utc_timestamp,
)

from pneumoscan_eval.datasets import LABELS, POSITIVE_LABEL

from .aws import BucketOption, EndpointOption, RegionOption, StackOption, TableOption, Target, resolve_target
from .changes import changes_summary, label_changes, print_changes

DEFAULT_WINDOW = timedelta(hours=24)
# Columns of the table and CSV views; JSON carries every attribute.
COLUMNS = ("object_key", "status", "label", "probability", "warnings", "reason", "error", "batch", "model_version",
           "image_width", "image_height", "image_format", "size_bytes", "scored_at")
_deserializer = TypeDeserializer()


# The labels the model writes (training takes them from the class folders into model.json).
Label = Enum("Label", {name.lower(): name.lower() for name in LABELS}, type=str)


class Status(str, Enum):
    scored = "scored"
    failed = "failed"


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


# -- reading -------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    """DynamoDB's Decimals as int/float, so JSON and CSV print numbers."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, set)):
        return [_plain(item) for item in value]
    return value


def _query(target: Target, **arguments: Any) -> Iterator[dict[str, Any]]:
    paginator = target.client("dynamodb").get_paginator("query")
    for page in paginator.paginate(TableName=target.table, **arguments):
        for item in page["Items"]:
            yield _plain({name: _deserializer.deserialize(value) for name, value in item.items()})


def batch_items(target: Target, batch: str, *, projection: list[str] | None = None,
                key_between: tuple[str, str] | None = None) -> Iterator[dict[str, Any]]:
    """Every item of one batch (or the part with an object key in `key_between`), in object-key order."""
    arguments: dict[str, Any] = {
        "IndexName": BATCH_INDEX, "KeyConditionExpression": "#batch = :batch",
        "ExpressionAttributeNames": {"#batch": BATCH}, "ExpressionAttributeValues": {":batch": {"S": batch}}}
    if key_between:
        arguments["KeyConditionExpression"] += " AND #key BETWEEN :low AND :high"
        arguments["ExpressionAttributeNames"]["#key"] = KEY
        arguments["ExpressionAttributeValues"] |= {":low": {"S": key_between[0]}, ":high": {"S": key_between[1]}}
    if projection:
        names = {f"#p{index}": name for index, name in enumerate(projection)}
        arguments["ProjectionExpression"] = ", ".join(names)
        arguments["ExpressionAttributeNames"] |= names
    yield from _query(target, **arguments)


def days_between(since: datetime, until: datetime) -> list[str]:
    """UTC dates (YYYY-MM-DD) from since to until inclusive: the outcome-index partitions to read."""
    day, last = since.astimezone(timezone.utc).date(), until.astimezone(timezone.utc).date()
    days = []
    while day <= last:
        days.append(day.isoformat())
        day += timedelta(days=1)
    return days


def outcome_items(target: Target, outcomes: list[str], since: datetime, until: datetime) -> list[dict[str, Any]]:
    """Items with these outcomes scored in [since, until]: one Query per outcome and day, newest last."""
    start, end = utc_timestamp(since), utc_timestamp(until)
    items: list[dict[str, Any]] = []
    for day in days_between(since, until):
        for outcome in outcomes:
            items.extend(_query(
                target, IndexName=OUTCOME_INDEX,
                KeyConditionExpression="#day = :day AND #at BETWEEN :start AND :end",
                ExpressionAttributeNames={"#day": OUTCOME_DAY, "#at": SCORED_AT},
                ExpressionAttributeValues={":day": {"S": outcome_day(outcome, day)},
                                           ":start": {"S": start}, ":end": {"S": end}}))
    return sorted(items, key=lambda item: (item.get(SCORED_AT, ""), item[KEY]))


def wanted_outcomes(label: Label | None, status: Status | None) -> list[str]:
    if label and status == Status.failed:
        raise typer.BadParameter("a FAILED item has no label: use --label or --status failed, not both")
    if label:
        return [label.value.upper()]
    if status == Status.failed:
        return [OUTCOME_FAILED]
    if status == Status.scored:
        return list(LABELS)
    return [*LABELS, OUTCOME_FAILED]


def outcome_of(item: dict[str, Any]) -> str:
    return OUTCOME_FAILED if item.get("status") == STATUS_FAILED else str(item.get("label"))


def find_results(target: Target, *, batch: str | None = None, label: Label | None = None,
                 status: Status | None = None, since: datetime | None = None,
                 until: datetime | None = None) -> list[dict[str, Any]]:
    outcomes = wanted_outcomes(label, status)
    until = until or datetime.now(timezone.utc)
    if batch is not None:
        start = utc_timestamp(since) if since else ""
        end = utc_timestamp(until)
        return [item for item in batch_items(target, batch)
                if outcome_of(item) in outcomes and start <= item.get(SCORED_AT, "") <= end]
    return outcome_items(target, outcomes, since or until - DEFAULT_WINDOW, until)


# -- parsing and printing --------------------------------------------------------------------
_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """ISO date/datetime (naive = UTC), or an age like 30m, 12h, 7d."""
    now = now or datetime.now(timezone.utc)
    relative = _RELATIVE.match(text.strip().lower())
    if relative:
        return now - timedelta(**{_UNITS[relative.group(2)]: int(relative.group(1))})
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is neither an ISO date/time nor an age like 30m, 12h, 7d") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def print_results(items: list[dict[str, Any]], output: OutputFormat, console: Console | None = None) -> None:
    if output == OutputFormat.json:
        json.dump(items, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    elif output == OutputFormat.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows({column: _cell(item.get(column)) for column in COLUMNS} for item in items)
    else:
        (console or Console()).print(results_table(items))


def results_table(items: list[dict[str, Any]], title: str | None = None, *, key_prefix: str = "",
                  compact: bool = False) -> Table:
    """One row per item. `key_prefix` (e.g. `incoming/<batch>/`) is left out of the keys shown;
    `compact` leaves out the model and the time, for a batch scored just now."""
    columns = ["status", "label", "P", "warnings", "reason", "size"] + ([] if compact else ["model", "scored at (UTC)"])
    table = Table(title=title)
    table.add_column("image" if key_prefix else "object key", overflow="fold", min_width=18)
    for column in columns:
        table.add_column(column, overflow="fold", justify="right" if column == "P" else "left")
    for item in items:
        failed = item.get("status") == STATUS_FAILED
        label = item.get("label") or ""
        cells = {
            "status": f"[red]{item.get('status')}[/red]" if failed else str(item.get("status", "")),
            "label": f"[bold yellow]{label}[/bold yellow]" if label == POSITIVE_LABEL else label,
            "P": f"{item['probability']:.3f}" if item.get("probability") is not None else "",
            "warnings": f"[yellow]{escape(', '.join(item['warnings']))}[/yellow]" if item.get("warnings") else "",
            "reason": str(item.get("reason") or ""),
            "size": (f"{item['image_width']}x{item['image_height']}"
                     if item.get("image_width") and item.get("image_height") else ""),
            "model": str(item.get("model_version") or ""),
            "scored at (UTC)": str(item.get(SCORED_AT) or "")[:19].replace("T", " "),
        }
        # Keys are the uploader's text: shown as written, never as console markup.
        table.add_row(escape(item[KEY].removeprefix(key_prefix)), *(cells[column] for column in columns))
    return table


def results(
    batch: Annotated[str | None, typer.Option(help="All results of this batch, in key order.")] = None,
    label: Annotated[Label | None, typer.Option(help="Only this label.", case_sensitive=False)] = None,
    status: Annotated[Status | None, typer.Option(help="Only scored or only failed items.",
                                                  case_sensitive=False)] = None,
    since: Annotated[str | None, typer.Option(
        help="Scored at or after: ISO date/time (UTC) or an age like 30m, 12h, 7d. Default without --batch: 24h.")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Scored at or before (default: now).")] = None,
    output: Annotated[OutputFormat, typer.Option("--format", help="table, json (one array) or csv.")
                      ] = OutputFormat.table,
    changes: Annotated[bool, typer.Option(
        "--changes", help="Only items rescored by another model: previous model and label -> current.")] = False,
    warned: Annotated[bool, typer.Option(
        "--warned", help="Only results with warnings (e.g. out_of_distribution): scored, but the score may not apply.")
    ] = False,
    stack: StackOption = None, endpoint_url: EndpointOption = None, region: RegionOption = None,
    bucket: BucketOption = None, table: TableOption = None,
) -> None:
    """Show scores: one batch (batch-index) or positives/failures in a time window (outcome-index)."""
    target = resolve_target(stack, endpoint_url, region, bucket, table)
    items = find_results(target, batch=batch, label=label, status=status,
                         since=parse_time(since) if since else None, until=parse_time(until) if until else None)
    if warned:
        items = [item for item in items if item.get("warnings")]
    if changes:
        rows = label_changes(items)
        print_changes(rows, output.value, key_prefix=f"{target.incoming_prefix}{batch}/" if batch else "")
        if output == OutputFormat.table:
            Console(stderr=True).print(changes_summary(rows))
        return
    print_results(items, output)
    if output == OutputFormat.table:
        Console(stderr=True).print(summary_line(items))


def summary_line(items: list[dict[str, Any]]) -> str:
    scored = [item for item in items if item.get("status") == STATUS_SCORED]
    positives = sum(1 for item in scored if item.get(LABEL) == POSITIVE_LABEL)
    failed = sum(1 for item in items if item.get("status") == STATUS_FAILED)
    warned = sum(1 for item in scored if item.get("warnings"))
    return f"{len(items)} result(s): {len(scored)} scored ({positives} {POSITIVE_LABEL}, {warned} warned), {failed} failed"
