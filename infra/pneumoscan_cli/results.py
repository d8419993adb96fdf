"""`pneumoscan results`: read scores back through the table's key and indexes, never a Scan.

--batch B        -> Query the table (batch = B), in key order: every result of the batch
--study UID      -> Query study-index (DICOM items of one study)
neither          -> Query attention-index, one per UTC day in the window: positive, FAILED and
                    warned results (a NORMAL score without warnings is read with --batch)
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
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pneumoscan import telemetry
from pneumoscan.formats import UID_MAX_CHARS, is_uid
from pneumoscan.results import (
    KEY, LABEL, OVERLAY_KEY, SCORED_AT, SR_KEY, STATUS_FAILED, STATUS_SCORED, SUBTYPE, SUBTYPE_PROBABILITY,
    attention_results, batch_results, derived_key, study_results, utc_timestamp,
)

from pneumoscan_eval.datasets import LABELS, POSITIVE_LABEL, SUBTYPES

from .aws import BucketOption, EndpointOption, RegionOption, StackOption, TableOption, Target, resolve_target
from .changes import changes_summary, label_changes, print_changes

DEFAULT_WINDOW = timedelta(hours=24)
# Columns of the table and CSV views; JSON carries every attribute the read returned.
COLUMNS = ("object_key", "status", "label", "probability", SUBTYPE, SUBTYPE_PROBABILITY, "warnings", "reason", "error",
           "batch", "model_version", "image_width", "image_height", "image_format", "size_bytes", "scored_at")
# What `--subtype` matches: a PNEUMONIA result's subtype, or `uncertain` (inside the head's band).
UNCERTAIN = telemetry.UNCERTAIN_SUBTYPE


# The labels the model writes (training takes them from the class folders into model.json).
Label = Enum("Label", {name.lower(): name.lower() for name in LABELS}, type=str)


Subtype = Enum("Subtype", {name: name for name in (*SUBTYPES, UNCERTAIN)}, type=str)


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


def readable(item: dict[str, Any]) -> dict[str, Any]:
    """An item as the CLI shows it: numbers as int/float, and the S3 keys of its SR and overlay
    in full (the item keeps their folder: `pneumoscan.results.derived_key`)."""
    item = _plain(item)
    for attribute in (SR_KEY, OVERLAY_KEY):
        if item.get(attribute) and KEY in item:
            item[attribute] = derived_key(item, attribute)
    return item


def batch_items(target: Target, batch: str, *, projection: list[str] | None = None,
                key_between: tuple[str, str] | None = None) -> Iterator[dict[str, Any]]:
    """Every item of one batch (or the part with an object key in `key_between`), in object-key order:
    one paginated Query on the table."""
    for item in batch_results(target.client("dynamodb"), target.table, batch, fields=projection,
                              key_between=key_between):
        yield readable(item)


def subtype_shown(item: dict[str, Any]) -> str | None:
    """A result's subtype as listings show it: `bacterial`, `viral`, `uncertain` (a probability
    inside the head's band), or None (not PNEUMONIA, or a model without a subtype head)."""
    if item.get(SUBTYPE):
        return str(item[SUBTYPE])
    return UNCERTAIN if item.get(SUBTYPE_PROBABILITY) is not None else None


def matches(item: dict[str, Any], label: Label | None, status: Status | None, warned: bool = False,
            subtype: Subtype | None = None) -> bool:
    if label and status == Status.failed:
        raise typer.BadParameter("a FAILED item has no label: use --label or --status failed, not both")
    if subtype and (status == Status.failed or (label and label.value != POSITIVE_LABEL.lower())):
        raise typer.BadParameter(f"only {POSITIVE_LABEL} results have a subtype: --subtype needs no other "
                                 "--label or --status")
    if label and str(item.get("label", "")).lower() != label.value:
        return False
    if status and str(item.get("status", "")).lower() != status.value:
        return False
    if subtype and subtype_shown(item) != subtype.value:
        return False
    return bool(item.get("warnings")) or not warned


def find_results(target: Target, *, batch: str | None = None, study: str | None = None,
                 label: Label | None = None, status: Status | None = None, warned: bool = False,
                 since: datetime | None = None, until: datetime | None = None,
                 subtype: Subtype | None = None) -> list[dict[str, Any]]:
    matches({}, label, status, subtype=subtype)  # refuse contradictory filters before any read
    until = until or datetime.now(timezone.utc)
    if batch is not None or study is not None:
        start = utc_timestamp(since) if since else ""
        end = utc_timestamp(until)
        items = (batch_items(target, batch) if batch is not None
                 else map(readable, study_results(target.client("dynamodb"), target.table, study)))
        return [item for item in items
                if matches(item, label, status, warned, subtype) and start <= item.get(SCORED_AT, "") <= end]
    if label == Label.normal and not warned:
        raise typer.BadParameter(
            "without --batch only positive, failed and warned results are indexed by time: "
            "read NORMAL scores with --batch (or the warned ones with --warned)")
    window = attention_results(target.client("dynamodb"), target.table, since or until - DEFAULT_WINDOW, until)
    return [item for item in map(readable, window) if matches(item, label, status, warned, subtype)]


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
        # Binary attributes (the stored heat map) print as hex.
        json.dump(items, sys.stdout, indent=2, sort_keys=True, default=lambda value: bytes(value).hex())
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
    columns = ["status", "label", "P", "subtype", "warnings", "reason", "size"] + (
        [] if compact else ["model", "scored at (UTC)"])
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
            "subtype": subtype_cell(item.get(SUBTYPE), item.get(SUBTYPE_PROBABILITY)),
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
    study: Annotated[str | None, typer.Option(help="The results of one DICOM study (StudyInstanceUID).")] = None,
    label: Annotated[Label | None, typer.Option(help="Only this label.", case_sensitive=False)] = None,
    subtype: Annotated[Subtype | None, typer.Option(
        help="Only PNEUMONIA results of this subtype (uncertain: inside the subtype head's band).",
        case_sensitive=False)] = None,
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
    """Show scores: one batch or study, or the positive, failed and warned results of a time window."""
    if batch is not None and study is not None:
        raise typer.BadParameter("--batch and --study are two different reads: give one")
    if batch is not None and not batch.strip():
        raise typer.BadParameter("--batch needs a batch name (the first folder under the incoming prefix)")
    if study is not None and not is_uid(study):
        raise typer.BadParameter("--study needs a StudyInstanceUID: dot-separated numbers, at most "
                                 f"{UID_MAX_CHARS} characters")
    if changes and batch is None:
        # The indexes project the listing fields only; `previous` is on the whole item.
        raise typer.BadParameter("--changes reads whole items: give --batch")
    target = resolve_target(stack, endpoint_url, region, bucket, table)
    items = find_results(target, batch=batch, study=study, label=label, status=status, warned=warned,
                         since=parse_time(since) if since else None, until=parse_time(until) if until else None,
                         subtype=subtype)
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
    positives = [item for item in scored if item.get(LABEL) == POSITIVE_LABEL]
    failed = sum(1 for item in items if item.get("status") == STATUS_FAILED)
    warned = sum(1 for item in scored if item.get("warnings"))
    pairs = [(item.get(SUBTYPE), item.get(SUBTYPE_PROBABILITY)) for item in positives]
    subtypes = subtype_counts(pairs, SUBTYPES) if any(probability is not None for _, probability in pairs) else ""
    return (f"{len(items)} result(s): {len(scored)} scored ({len(positives)} {POSITIVE_LABEL}{subtypes}, "
            f"{warned} warned), {failed} failed")


def subtype_cell(subtype: str | None, probability: float | None) -> str:
    """A positive's subtype as a table shows it: the name, or `uncertain` inside the head's band."""
    if subtype:
        return escape(str(subtype))
    return f"[yellow]{UNCERTAIN}[/yellow]" if probability is not None else ""


def subtype_counts(calls: list[tuple[str | None, float | None]], names: tuple[str, ...]) -> str:
    """`: 3 bacterial, 1 viral, 2 uncertain` for the (subtype, subtype probability) of positives."""
    counts = [f"{sum(subtype == name for subtype, _ in calls)} {name}" for name in names]
    uncertain = sum(subtype is None and probability is not None for subtype, probability in calls)
    return ": " + ", ".join([*counts, f"{uncertain} {UNCERTAIN}"])
