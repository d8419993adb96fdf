"""pneumoscan.telemetry: one invocation's metrics (EMF) and its hourly counter items."""

from __future__ import annotations

import json

import boto3
import pytest
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit
from moto import mock_aws

from benchmarks import prices
from pneumoscan import results, telemetry
from pneumoscan_cli.template import read_settings

MODEL = "2026.11.25-3"


def item(batch="ward-7", *, status="SCORED", label="NORMAL", probability=0.2, warnings=(),
         scored_at="2026-11-26T13:05:00.000Z", uploaded_at="2026-11-26T13:04:58.000Z", total_ms=120.0,
         model_version=MODEL):
    fields = {results.KEY: f"incoming/{batch}/x.jpeg", results.BATCH: batch, "status": status,
              "model_version": model_version, results.SCORED_AT: scored_at, "uploaded_at": uploaded_at,
              "warnings": list(warnings), "timings_ms": {"fetch": 10.0, "decode": 30.0, "total": total_ms}}
    if status == "SCORED":
        fields.update(label=label, probability=probability)
    else:
        fields.update(reason="not_an_image")
    return fields


@pytest.fixture
def tally():
    tally = telemetry.BatchTally(positive_label="PNEUMONIA")
    tally.observe(item(label="PNEUMONIA", probability=0.9, warnings=["adult_patient"]))
    tally.observe(item(probability=0.1, total_ms=700.0, uploaded_at="2026-11-26T13:03:00.000Z"))
    tally.observe(item(status="FAILED", warnings=["out_of_distribution", "adult_patient"]))
    tally.observe(item("ward-9", probability=0.3, scored_at="2026-11-26T14:00:01.000Z",
                       uploaded_at="2026-11-26T13:59:59.000Z"))
    return tally


def test_counts_are_grouped_by_hour_model_and_batch(tally):
    assert sorted(tally.groups) == [("2026-11-26T13", MODEL, "ward-7"), ("2026-11-26T14", MODEL, "ward-9")]
    ward7 = tally.groups[("2026-11-26T13", MODEL, "ward-7")].values
    assert (ward7["images"], ward7["scored"], ward7["failed"], ward7["positives"], ward7["warned"]) == (3, 2, 1, 1, 2)
    assert ward7["probability_sum"] == pytest.approx(1.0)
    assert (ward7["warned_adult_patient"], ward7["warned_out_of_distribution"]) == (2, 1)
    # 120 ms twice (the failed one too), 700 ms once; 2 s, 118 s and 2 s from upload to result.
    assert (ward7["handler_ms_le_250"], ward7["handler_ms_le_1000"]) == (2, 1)
    assert (ward7["e2e_s_le_5"], ward7["e2e_s_le_300"]) == (2, 1)


def test_buckets_end_with_an_open_one():
    assert telemetry.bucket_name("h_", (10, 20), 10) == "h_10"
    assert telemetry.bucket_name("h_", (10, 20), 10.5) == "h_20"
    assert telemetry.bucket_name("h_", (10, 20), 99) == "h_inf"


def test_reset_forgets_the_previous_invocation(tally):
    tally.reset()
    assert not tally.groups and not tally.probabilities and not tally.warned_by_code
    assert tally.counter_updates() == []


def emf_lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{") and "_aws" in line]


def metric_values(document: dict) -> dict:
    names = [metric["Name"] for metric in document["_aws"]["CloudWatchMetrics"][0]["Metrics"]]
    return {name: document[name] for name in names}


def test_emit_writes_one_line_per_model_and_per_warning_code_and_counts_on_the_handler_metrics(
        tally, capsys, monkeypatch):
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Pneumoscan")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "pneumoscan")
    handler_metrics = EphemeralMetrics()

    tally.emit(handler_metrics, EphemeralMetrics, MetricUnit)
    handler_metrics.flush_metrics()

    documents = emf_lines(capsys.readouterr().out)
    by_dimensions = {frozenset(doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0]): doc for doc in documents}
    assert len(documents) == 4  # model, two warning codes, the handler's own line
    by_model = by_dimensions[frozenset({"service", "model_version"})]
    assert by_model["model_version"] == MODEL
    assert metric_values(by_model) | {"Probability": sorted(by_model["Probability"])} == {
        "ImagesScored": [3.0], "ImagesFailed": [1.0], "ImagesWarned": [2.0], "Positives": [1.0],
        "Probability": [0.1, 0.3, 0.9]}
    warned = {doc["warning"]: doc["ImagesWarned"] for doc in documents if "warning" in doc}
    assert warned == {"adult_patient": [2.0], "out_of_distribution": [1.0]}
    own = by_dimensions[frozenset({"service"})]
    assert own["ImagesScored"] == [3.0] and own["Positives"] == [1.0]
    assert own["TotalLatency"] == [120.0, 700.0, 120.0, 120.0]


def test_emf_values_are_rounded_to_what_the_dashboard_reads(capsys, monkeypatch):
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Pneumoscan")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "pneumoscan")
    tally = telemetry.BatchTally(positive_label="PNEUMONIA")
    tally.observe(item(probability=0.12399042397737503, total_ms=21.5449))
    handler_metrics = EphemeralMetrics()

    tally.emit(handler_metrics, EphemeralMetrics, MetricUnit)
    handler_metrics.flush_metrics()

    documents = emf_lines(capsys.readouterr().out)
    assert next(doc["Probability"] for doc in documents if "Probability" in doc) == [0.124]
    assert next(doc["TotalLatency"] for doc in documents if "TotalLatency" in doc) == [21.5]


def test_an_invocation_that_wrote_nothing_emits_nothing(capsys):
    telemetry.BatchTally(positive_label="PNEUMONIA").emit(EphemeralMetrics(), EphemeralMetrics, MetricUnit)
    assert emf_lines(capsys.readouterr().out) == []


@pytest.fixture
def table(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    settings = read_settings()
    with mock_aws():
        boto3.client("dynamodb", region_name=settings.region).create_table(**settings.table_definition)
        yield boto3.resource("dynamodb", region_name=settings.region).Table(settings.table)


def test_counter_updates_add_up_across_invocations(tally, table):
    for _ in range(2):  # two invocations that saw the same thing
        for request in tally.counter_updates():
            table.update_item(**request)

    stored = table.get_item(Key={results.BATCH: "_stats#2026-11-26",
                                 results.KEY: telemetry.stats_key("2026-11-26T13", MODEL, "ward-7")})["Item"]
    assert stored[results.BATCH] == "_stats#2026-11-26"
    assert (stored["images"], stored["positives"], stored["warned_adult_patient"]) == (6, 2, 4)
    assert float(stored["probability_sum"]) == pytest.approx(2.0)
    assert (stored["stats_hour"], stored["source_batch"]) == ("2026-11-26T13", "ward-7")
    assert results.ATTENTION_DAY not in stored and results.STUDY_UID not in stored  # no index carries them


def test_a_counter_item_stays_under_one_write_unit(table):
    """Every known warning code, every histogram bucket, a long batch name: still < 1 KB."""
    tally = telemetry.BatchTally(positive_label="PNEUMONIA")
    codes = ["out_of_distribution", "adult_patient", "blank_image", "not_frontal", "low_contrast"]
    for total_ms in (*telemetry.HANDLER_MS_BOUNDS, 10**6):
        for waited in (*telemetry.END_TO_END_S_BOUNDS, 10**6):
            tally.observe(item("a-rather-long-batch-name-2026-11-26-ward-7-night-shift", warnings=codes,
                               total_ms=float(total_ms), uploaded_at="2026-11-26T00:00:00.000Z",
                               scored_at=f"2026-11-26T{min(23, waited // 3600):02d}:00:00.000Z"))
    request = tally.counter_updates()[0]
    table.update_item(**request)
    stored = table.get_item(Key=request["Key"])["Item"]
    assert prices.dynamodb_item_bytes(stored) < prices.DYNAMODB_WRITE_UNIT_BYTES


def test_the_key_range_of_an_hour_window_holds_exactly_its_hours():
    low, high = telemetry.hour_range("2026-11-26T13", "2026-11-26T14")
    keys = [telemetry.stats_key(hour, MODEL, "b#1") for hour in
            ("2026-11-26T12", "2026-11-26T13", "2026-11-26T14", "2026-11-26T15")]
    assert [low <= key <= high for key in keys] == [False, True, True, False]
