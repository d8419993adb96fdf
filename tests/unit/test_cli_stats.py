"""`pneumoscan stats` on moto: counter items written by the handler's own tally, read by Query only."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timedelta, UTC

import boto3
import pytest
from typer.testing import CliRunner

from pneumoscan import results, telemetry
from pneumoscan_cli.main import app
from pneumoscan_cli.stats import GroupBy, counter_items, histogram_percentile, summarize
from pneumoscan_cli.template import read_settings

SETTINGS = read_settings()
runner = CliRunner()
OLD, NEW = "2026.11.20-1", "2026.11.25-3"


def scored(batch, hour, *, model=NEW, label="NORMAL", probability=0.2, status="SCORED", warnings=(),
           total_ms=120.0, waited_s=3):
    scored_at = f"{hour}:30:00.000Z"
    uploaded = datetime.fromisoformat(scored_at.replace("Z", "+00:00")) - timedelta(seconds=waited_s)
    item = {results.KEY: f"incoming/{batch}/x", results.BATCH: batch, "status": status, "model_version": model,
            results.SCORED_AT: scored_at, "uploaded_at": results.utc_timestamp(uploaded),
            "warnings": list(warnings), "timings_ms": {"total": total_ms}}
    if status == "SCORED":
        item.update(label=label, probability=probability)
    return item


# Three days, two batches, two models; one image per line unless said otherwise.
INVOCATIONS = [
    [scored("ward-7", "2026-11-24T09", model=OLD, probability=0.1),
     scored("ward-7", "2026-11-24T09", model=OLD, label="PNEUMONIA", probability=0.9)],
    [scored("ward-7", "2026-11-25T23", label="PNEUMONIA", probability=0.8, warnings=["adult_patient"]),
     scored("ward-7", "2026-11-25T23", status="FAILED", total_ms=20.0)],
    [scored("ward-9", "2026-11-26T00", probability=0.3, warnings=["out_of_distribution", "adult_patient"],
            total_ms=3000.0, waited_s=100)],
    [scored("ward-9", "2026-11-26T00", probability=0.5)],
    [scored("ward-9", "2026-11-26T05", probability=0.4)],
]


@pytest.fixture
def target(cli_target):
    table = boto3.resource("dynamodb", region_name=SETTINGS.region).Table(SETTINGS.table)
    for invocation in INVOCATIONS:
        tally = telemetry.BatchTally(positive_label="PNEUMONIA")
        for item in invocation:
            tally.observe(item)
            table.put_item(Item=results.to_dynamodb(item))  # result items share the table
        for request in tally.counter_updates():
            table.update_item(**request)
    queries = []
    cli_target.client("dynamodb").meta.events.register(
        "before-call.dynamodb.Query", lambda params, **_: queries.append(params))
    cli_target.queries = queries
    return cli_target


def window(start="2026-11-24T00:00", end="2026-11-26T23:59"):
    return tuple(datetime.fromisoformat(text).replace(tzinfo=UTC) for text in (start, end))


def test_one_query_per_day_reads_only_counter_items(target):
    items = list(counter_items(target, *window()))

    assert len(target.queries) == 3
    assert sum(item["images"] for item in items) == 7
    assert all(item[results.KEY].startswith(telemetry.STATS_PREFIX) for item in items)


def test_the_window_is_cut_at_hours(target):
    items = list(counter_items(target, *window("2026-11-25T23:10", "2026-11-26T04:59")))
    assert sorted((item["stats_hour"], item["images"]) for item in items) == [
        ("2026-11-25T23", 2), ("2026-11-26T00", 2)]


def test_by_day_counts_rates_and_mean_probability(target):
    rows = summarize(counter_items(target, *window()), GroupBy.day)

    assert [row["day"] for row in rows] == ["2026-11-24", "2026-11-25", "2026-11-26"]
    day25 = rows[1]
    assert (day25["images"], day25["scored"], day25["positives"], day25["failed"], day25["warned"]) == (2, 1, 1, 1, 1)
    assert (day25["positive_rate"], day25["failure_rate"], day25["warned_rate"]) == (1.0, 0.5, 0.5)
    assert day25["mean_probability"] == pytest.approx(0.8)
    day26 = rows[2]
    assert day26["mean_probability"] == pytest.approx(0.4)
    assert day26["warnings"] == {"adult_patient": 1, "out_of_distribution": 1}


def test_by_model_and_by_batch(target):
    by_model = {row["model"]: row for row in summarize(counter_items(target, *window()), GroupBy.model)}
    assert {model: row["images"] for model, row in by_model.items()} == {OLD: 2, NEW: 5}
    assert by_model[OLD]["positive_rate"] == 0.5

    by_batch = {row["batch"]: row for row in summarize(counter_items(target, *window()), GroupBy.batch)}
    assert {batch: row["images"] for batch, row in by_batch.items()} == {"ward-7": 4, "ward-9": 3}
    # ward-9: 120, 120 and 3000 ms; 3, 3 and 100 s from upload to result.
    assert (by_batch["ward-9"]["handler_ms_p50"], by_batch["ward-9"]["handler_ms_p99"]) == (250, 5000)
    assert (by_batch["ward-9"]["end_to_end_s_p50"], by_batch["ward-9"]["end_to_end_s_p99"]) == (5, 300)


def test_histogram_percentile_reads_bucket_bounds():
    counts = Counter({"h_10": 50, "h_20": 45, "h_inf": 5})
    assert histogram_percentile(counts, "h_", (10, 20), 50) == 10
    assert histogram_percentile(counts, "h_", (10, 20), 95) == 20
    assert histogram_percentile(counts, "h_", (10, 20), 99) == ">20"
    assert histogram_percentile(Counter(), "h_", (10, 20), 50) is None


def test_cli_json_csv_and_table(target):
    as_json = runner.invoke(app, ["stats", "--since", "2026-11-24", "--until", "2026-11-26T23:00", "--by", "batch",
                                  "--format", "json"])
    assert as_json.exit_code == 0, as_json.output
    rows = json.loads(as_json.stdout)
    assert [(row["batch"], row["images"]) for row in rows] == [("ward-7", 4), ("ward-9", 3)]

    as_csv = runner.invoke(app, ["stats", "--since", "2026-11-24", "--until", "2026-11-26T23:00", "--format", "csv"])
    assert as_csv.exit_code == 0, as_csv.output
    lines = as_csv.stdout.splitlines()
    assert lines[0].startswith("day,images,scored,positives,failed,warned,positive_rate")
    assert lines[1].startswith("2026-11-24,2,2,1,0,0,0.5") and len(lines) == 4

    as_table = runner.invoke(app, ["stats", "--since", "2026-11-24", "--until", "2026-11-26T23:00", "--by", "model"])
    assert as_table.exit_code == 0, as_table.output
    assert OLD in as_table.stdout and NEW in as_table.stdout and "━" in as_table.stdout  # the bar chart


def test_an_empty_window_says_so(target):
    outcome = runner.invoke(app, ["stats", "--since", "2026-10-01", "--until", "2026-10-02"])
    assert outcome.exit_code == 0 and "no images scored in this window" in outcome.output


def test_html_page_has_the_rows_and_a_bar_per_group(target, tmp_path):
    page = tmp_path / "stats.html"
    outcome = runner.invoke(app, ["stats", "--since", "2026-11-24", "--until", "2026-11-26T23:00", "--by", "batch",
                                  "--format", "json", "--html", str(page)])

    assert outcome.exit_code == 0, outcome.output
    html = page.read_text()
    assert html.startswith("<!doctype html>") and "<script" not in html and "http://" not in html.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    assert html.count("<tr>") == 3  # header + ward-7 + ward-9
    assert "<td>ward-7</td><td>4</td>" in html and "ward-9: 1 positive" not in html
    assert html.count("<rect") == 3 * 2  # negatives, positives, failures for each batch
    assert "ward-7: 1 failed" in html and "polyline" in html


def test_batch_and_model_narrow_the_counters_read(target):
    one_batch = runner.invoke(app, ["stats", "--since", "2026-11-24", "--until", "2026-11-26T23:00", "--by", "day",
                                    "--batch", "ward-7", "--format", "json"])
    assert one_batch.exit_code == 0, one_batch.output
    assert [(row["day"], row["images"]) for row in json.loads(one_batch.stdout)] == [
        ("2026-11-24", 2), ("2026-11-25", 2)]

    one_model = runner.invoke(app, ["stats", "--since", "2026-11-24", "--until", "2026-11-26T23:00", "--by", "batch",
                                    "--model", OLD, "--format", "json"])
    assert [(row["batch"], row["images"]) for row in json.loads(one_model.stdout)] == [("ward-7", 2)]


def test_each_subtypes_share_of_the_positives(target):
    subtyped = [scored("ward-3", "2026-11-20T08", label="PNEUMONIA", probability=0.9) | extra for extra in (
        {"subtype": "viral", "subtype_probability": 0.9}, {"subtype": "bacterial", "subtype_probability": 0.1},
        {"subtype": "bacterial", "subtype_probability": 0.2},
        {"subtype_probability": 0.5, "warnings": ["subtype_uncertain"]})]
    tally = telemetry.BatchTally(positive_label="PNEUMONIA")
    for item in [*subtyped, scored("ward-3", "2026-11-20T08")]:
        tally.observe(item)
    table = boto3.resource("dynamodb", region_name=SETTINGS.region).Table(SETTINGS.table)
    for request in tally.counter_updates():
        table.update_item(**request)

    (row,) = summarize(counter_items(target, *window("2026-11-20T00:00", "2026-11-20T23:59")), GroupBy.day)
    assert row["positives"] == 4
    assert row["subtypes"] == {"bacterial": 2, "viral": 1, "uncertain": 1}
    assert row["subtype_shares"] == {"bacterial": 0.5, "viral": 0.25, "uncertain": 0.25}
    shown = runner.invoke(app, ["stats", "--since", "2026-11-20", "--until", "2026-11-20T23:00"],
                          env={"COLUMNS": "250"})
    assert shown.exit_code == 0, shown.output
    assert "bacterial/viral/uncertain" in shown.stdout and "50.0%/25.0%/25.0%" in shown.stdout
    as_csv = runner.invoke(app, ["stats", "--since", "2026-11-20", "--until", "2026-11-20T23:00", "--format", "csv"])
    assert '"{""bacterial"": 0.5, ""uncertain"": 0.25, ""viral"": 0.25}"' in as_csv.stdout


def test_uploads_directly_under_the_incoming_prefix_are_shown_by_where_they_are(target, tmp_path):
    key = f"{target.incoming_prefix}chest.jpeg"  # no batch folder
    item = scored(results.batch_of(key, target.incoming_prefix), "2026-11-21T08") | {results.KEY: key}
    tally = telemetry.BatchTally(positive_label="PNEUMONIA")
    tally.observe(item)
    table = boto3.resource("dynamodb", region_name=SETTINGS.region).Table(SETTINGS.table)
    for request in tally.counter_updates():
        table.update_item(**request)
    arguments = ["stats", "--since", "2026-11-21", "--until", "2026-11-21T23:00", "--by", "batch"]

    shown = runner.invoke(app, [*arguments, "--html", str(tmp_path / "stats.html")], env={"COLUMNS": "250"})
    assert shown.exit_code == 0, shown.output
    label = f"(directly under {target.incoming_prefix})"
    assert label in shown.stdout and results.ROOT_BATCH not in shown.stdout
    assert f"<td>{label}</td><td>1</td>" in (tmp_path / "stats.html").read_text()
    # JSON keeps the stored name, the one --batch (and `results --batch`) takes.
    as_json = runner.invoke(app, [*arguments, "--format", "json"])
    assert [row["batch"] for row in json.loads(as_json.stdout)] == [results.ROOT_BATCH]
    narrowed = runner.invoke(app, [*arguments, "--batch", results.ROOT_BATCH, "--format", "json"])
    assert [row["images"] for row in json.loads(narrowed.stdout)] == [1]
