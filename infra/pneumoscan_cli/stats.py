"""`pneumoscan stats`: counts, rates and latency percentiles from the hourly counter items.

The handler adds each invocation's counts to one item per UTC hour, model version and
batch (pneumoscan.telemetry). Reading a window is one Query per UTC day on the day's
`_stats#YYYY-MM-DD` partition with the hours as a sort-key range: never a Scan, and as
cheap for a million images as for ten. The window's resolution is one hour.
"""

from __future__ import annotations

import csv
import json
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.bar import Bar
from rich.console import Console
from rich.table import Table

from pneumoscan import telemetry
from pneumoscan.results import ROOT_BATCH, days_between

from pneumoscan_eval.datasets import SUBTYPES

from .aws import BucketOption, EndpointOption, RegionOption, StackOption, TableOption, Target, resolve_target
from .results import UNCERTAIN, OutputFormat, batch_items, parse_time
from .stats_html import stats_page

DEFAULT_WINDOW = timedelta(days=7)
PERCENTILES = (50, 95, 99)


class GroupBy(str, Enum):
    day = "day"
    hour = "hour"
    batch = "batch"
    model = "model"


def _hour(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H")


def counter_items(target: Target, since: datetime, until: datetime) -> Iterator[dict[str, Any]]:
    """Every counter item of the hours from `since` to `until`: one Query per UTC day."""
    first, last = _hour(since), _hour(until)
    for day in days_between(since, until):
        low, high = telemetry.hour_range(max(first, f"{day}T00"), min(last, f"{day}T23"))
        yield from batch_items(target, telemetry.stats_partition(day), key_between=(low, high))


def group_of(item: dict[str, Any], by: GroupBy) -> str:
    hour = str(item[telemetry.HOUR])
    return {GroupBy.day: hour[:10], GroupBy.hour: hour, GroupBy.batch: str(item[telemetry.SOURCE_BATCH]),
            GroupBy.model: str(item[telemetry.MODEL])}[by]


def shown_rows(rows: list[dict[str, Any]], by: GroupBy, incoming_prefix: str) -> list[dict[str, Any]]:
    """The rows as the table and the HTML page show them: the uploads directly under the incoming
    prefix, which the table keeps as batch `_root`, by where they are. JSON and CSV keep `_root`,
    the name `--batch` takes."""
    if by != GroupBy.batch:
        return rows
    label = f"(directly under {incoming_prefix})"
    return [dict(row, batch=label) if row["batch"] == ROOT_BATCH else row for row in rows]


def histogram_percentile(counts: Counter, prefix: str, bounds: tuple[int, ...], percentile: float) -> str | int | None:
    """The upper bound of the bucket holding the percentile; `>LAST` when it is the open bucket."""
    ordered = [(f"{prefix}{bound}", bound) for bound in bounds] + [(f"{prefix}{telemetry.OVER}", None)]
    total = sum(counts.get(name, 0) for name, _ in ordered)
    if not total:
        return None
    cumulative = 0
    for name, bound in ordered:
        cumulative += counts.get(name, 0)
        if cumulative >= percentile / 100 * total:
            return bound if bound is not None else f">{bounds[-1]}"
    return f">{bounds[-1]}"


def summarize(items: Iterable[dict[str, Any]], by: GroupBy) -> list[dict[str, Any]]:
    """One row per group, in group order: counts, rates, mean probability, latency percentiles."""
    groups: dict[str, Counter] = {}
    for item in items:
        counts = groups.setdefault(group_of(item, by), Counter())
        counts.update({name: value for name, value in item.items() if isinstance(value, (int, float))})
    return [row(group, counts, by) for group, counts in sorted(groups.items())]


def _rate(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None


def row(group: str, counts: Counter, by: GroupBy) -> dict[str, Any]:
    images, scored = counts.get("images", 0), counts.get("scored", 0)
    summary: dict[str, Any] = {
        by.value: group, "images": images, "scored": scored, "positives": counts.get("positives", 0),
        "failed": counts.get("failed", 0), "warned": counts.get("warned", 0),
        "positive_rate": _rate(counts.get("positives", 0), scored),
        "failure_rate": _rate(counts.get("failed", 0), images),
        "warned_rate": _rate(counts.get("warned", 0), images),
        "mean_probability": _rate(counts.get("probability_sum", 0), scored),
        "warnings": {name.removeprefix(telemetry.WARNED_PREFIX): value for name, value in sorted(counts.items())
                     if name.startswith(telemetry.WARNED_PREFIX)},
    }
    # Of the positives: each confident subtype, and those inside the subtype head's band.
    subtypes = {name: counts.get(f"{telemetry.SUBTYPE_PREFIX}{name}", 0) for name in (*SUBTYPES, UNCERTAIN)}
    summary["subtypes"] = subtypes
    summary["subtype_shares"] = {name: _rate(count, counts.get("positives", 0)) for name, count in subtypes.items()}
    for percentile in PERCENTILES:
        summary[f"handler_ms_p{percentile}"] = histogram_percentile(
            counts, telemetry.HANDLER_BUCKET, telemetry.HANDLER_MS_BOUNDS, percentile)
    for percentile in PERCENTILES:
        summary[f"end_to_end_s_p{percentile}"] = histogram_percentile(
            counts, telemetry.END_TO_END_BUCKET, telemetry.END_TO_END_S_BOUNDS, percentile)
    return summary


def _percent(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


def _at_most(value: Any) -> str:
    return "" if value is None else (str(value) if isinstance(value, str) else f"≤{value}")


def stats_table(rows: list[dict[str, Any]], by: GroupBy, title: str) -> Table:
    """The rows with a bar of each group's volume: a change in throughput or mix shows at a glance."""
    table = Table(title=title)
    table.add_column(by.value, no_wrap=True)
    for column in ("images", "", "positive", "of them " + "/".join((*SUBTYPES, UNCERTAIN)), "failed", "warned",
                   "mean P", "handler ms p50/95/99", "upload→result s p50/95/99", "warnings"):
        table.add_column(column, justify="left" if column in ("", "warnings") else "right")
    widest = max((r["images"] for r in rows), default=0)
    for r in rows:
        table.add_row(
            r[by.value], str(r["images"]), Bar(size=widest or 1, begin=0, end=r["images"], width=12),
            f"{r['positives']} ({_percent(r['positive_rate'])})",
            "/".join(_percent(share) or "-" for share in r["subtype_shares"].values()) if r["positives"] else "",
            f"{r['failed']} ({_percent(r['failure_rate'])})",
            f"{r['warned']} ({_percent(r['warned_rate'])})", "" if r["mean_probability"] is None else f"{r['mean_probability']:.3f}",
            "/".join(_at_most(r[f"handler_ms_p{p}"]) for p in PERCENTILES),
            "/".join(_at_most(r[f"end_to_end_s_p{p}"]) for p in PERCENTILES),
            ", ".join(f"{code} {count}" for code, count in r["warnings"].items()))
    return table


def print_stats(rows: list[dict[str, Any]], by: GroupBy, output: OutputFormat, title: str,
                incoming_prefix: str) -> None:
    if output == OutputFormat.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif output == OutputFormat.csv:
        nested = ("subtypes", "subtype_shares", "warnings")
        columns = [name for name in (rows[0] if rows else row("", Counter(), by)) if name not in nested]
        writer = csv.DictWriter(sys.stdout, fieldnames=[*columns, *nested], lineterminator="\n")
        writer.writeheader()
        writer.writerows({**r, **{name: json.dumps(r[name], sort_keys=True) for name in nested}} for r in rows)
    else:
        Console().print(stats_table(shown_rows(rows, by, incoming_prefix), by, title))


def stats(
    since: Annotated[str | None, typer.Option(
        help="From this hour: ISO date/time (UTC) or an age like 12h, 7d. Default: 7d.")] = None,
    until: Annotated[str | None, typer.Option(help="To this hour, inclusive (default: now).")] = None,
    batch: Annotated[str | None, typer.Option(help="Only this batch.")] = None,
    model: Annotated[str | None, typer.Option(help="Only this model version.")] = None,
    by: Annotated[GroupBy, typer.Option("--by", help="One row per UTC day, hour, batch or model version.",
                                        case_sensitive=False)] = GroupBy.day,
    output: Annotated[OutputFormat, typer.Option("--format", help="table (with a bar chart), json or csv.")
                      ] = OutputFormat.table,
    html: Annotated[Path | None, typer.Option(
        "--html", dir_okay=False, help="Also write the rows and a chart as one self-contained HTML page.")] = None,
    stack: StackOption = None, endpoint_url: EndpointOption = None, region: RegionOption = None,
    bucket: BucketOption = None, table: TableOption = None,
) -> None:
    """Images, positives, failures, warnings and latency percentiles per day, hour, batch or model.

    Latency percentiles are the upper bound of their histogram bucket (≤250 ms);
    `>N` means above the last bound."""
    target = resolve_target(stack, endpoint_url, region, bucket, table)
    end = parse_time(until) if until else datetime.now(UTC)
    start = parse_time(since) if since else end - DEFAULT_WINDOW
    if start > end:
        raise typer.BadParameter(f"--since {since} is after --until {until}")
    items = (item for item in counter_items(target, start, end)
             if (batch is None or item[telemetry.SOURCE_BATCH] == batch)
             and (model is None or item[telemetry.MODEL] == model))
    rows = summarize(items, by)
    title = f"pneumoscan {_hour(start)}:00 to {_hour(end)}:59 UTC, by {by.value}"
    print_stats(rows, by, output, title=title, incoming_prefix=target.incoming_prefix)
    if html is not None:
        html.write_text(stats_page(shown_rows(rows, by, target.incoming_prefix), by.value, title), encoding="utf-8")
        Console(stderr=True).print(f"wrote {html}")
    if output == OutputFormat.table and not rows:
        Console(stderr=True).print("no images scored in this window")
