"""The operations dashboard plots the metrics the function really emits, under their real names."""

from __future__ import annotations

import re
from pathlib import Path

from pneumoscan import scoring
from pneumoscan_cli.template import load_template

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"
APP = Path(__file__).resolve().parents[2] / "functions" / "scorer" / "app.py"
# The handler times "fetch" and "total" around the scoring path's own stages.
STAGES = ("fetch", scoring.DECODE, scoring.INFERENCE, scoring.HEAT_MAP, "total")
TELEMETRY = Path(__file__).resolve().parents[2] / "functions" / "scorer" / "pneumoscan" / "telemetry.py"


def dashboard_metric_names() -> set[str]:
    body = load_template(TEMPLATE)["Resources"]["OperationsDashboard"]["Properties"]["DashboardBody"]["Fn::Sub"][0]
    names = set(re.findall(r'\["Pneumoscan", "(\w+)"', body)) | set(re.findall(r'\[\s*"\.", "(\w+)"', body))
    names |= set(re.findall(r'MetricName=\\"(\w+)\\"', body))
    return names


def test_every_stage_of_the_handler_has_its_latency_on_the_dashboard():
    assert {f"{stage.capitalize()}Latency" for stage in STAGES} <= dashboard_metric_names()


def test_every_pneumoscan_metric_on_the_dashboard_is_emitted_by_the_function():
    emitted = set(re.findall(r'name="(\w+)"', APP.read_text() + TELEMETRY.read_text()))
    emitted |= set(re.findall(r'\("(Images\w+|Positives)", "\w+"\)', TELEMETRY.read_text()))
    emitted |= {f"{stage.capitalize()}Latency" for stage in STAGES}
    aws_metrics = {"ApproximateAgeOfOldestMessage", "ApproximateNumberOfMessagesVisible", "Duration", "Invocations",
                   "Errors", "Throttles", "ConcurrentExecutions"}
    assert dashboard_metric_names() - aws_metrics <= emitted, dashboard_metric_names() - aws_metrics - emitted
