"""What one invocation (one SQS batch) saw: CloudWatch metrics and hourly counter items.

The handler calls `BatchTally.observe(item)` for every result it writes and `flush` once
per invocation. That is the one place metrics are emitted, so a shift in the input (a
new scanner, site or population) shows per batch without a metric line per image:

- EMF, service dimension only: ImagesScored, ImagesFailed, ImagesWarned, Positives and
  the per-stage latencies (alarms and the dashboard read these across model versions);
- EMF, dimensions service + model_version: the same counts and `Probability`, one value
  per image in one line (CloudWatch's Average of it is the mean probability, its
  percentiles the score distribution);
- EMF, dimensions service + warning: ImagesWarned per warning code.

Counter items (UpdateItem ADD, one per invocation and hour/model/batch it touched) make
`pneumoscan stats` a Query instead of a Scan. They live in the results table under
their own partitions, one per UTC day:

    batch      = "_stats#2026-11-26"                       (partition, one Query per day)
    object_key = "_stats#2026-11-26T13#<model>#<batch>"    (sort: hour, model, batch)

They carry no index attribute, so no GSI stores them. Latencies are kept as histogram
buckets (counts of images at or under each bound), from which `stats` reads percentiles.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from . import results

STATS_PREFIX = "_stats#"
# Upper bounds of the latency histograms; the last bucket is everything above.
HANDLER_MS_BOUNDS = (50, 100, 250, 500, 1000, 2500, 5000, 10000)
END_TO_END_S_BOUNDS = (1, 5, 15, 60, 300, 900, 3600)
OVER = "inf"
# Per-image EMF values are bytes CloudWatch Logs ingests, one list per metric and batch: a
# latency to 0.1 ms and a probability to 0.001 are as fine as the dashboard's percentiles
# and means are read (full float precision would triple a probability's bytes).
LATENCY_DECIMALS = 1
PROBABILITY_DECIMALS = 3
# Counter attributes of a counter item (plus one `warned_<code>` per warning code seen and one
# `subtype_<name>` per subtype of a positive: `subtype_bacterial`, `subtype_viral`, `subtype_uncertain`).
COUNTS = ("images", "scored", "failed", "positives", "warned", "probability_sum")
HANDLER_BUCKET = "handler_ms_le_"
END_TO_END_BUCKET = "e2e_s_le_"
WARNED_PREFIX = "warned_"
SUBTYPE_PREFIX = "subtype_"
# A positive with a subtype probability but no subtype: inside the subtype head's band.
UNCERTAIN_SUBTYPE = "uncertain"
HOUR, MODEL, SOURCE_BATCH = "stats_hour", "model_version", "source_batch"


def stats_partition(day: str) -> str:
    """Partition of a UTC day's counter items: `_stats#2026-11-26`."""
    return f"{STATS_PREFIX}{day}"


def stats_key(hour: str, model_version: str, batch: str) -> str:
    """Sort key of one counter item; `hour` is `2026-11-26T13`. The batch goes last: it may hold '#'."""
    return f"{STATS_PREFIX}{hour}#{model_version}#{batch}"


def hour_range(first_hour: str, last_hour: str) -> tuple[str, str]:
    """Sort-key bounds (BETWEEN) of every counter item from `first_hour` to `last_hour` inclusive."""
    return f"{STATS_PREFIX}{first_hour}", f"{STATS_PREFIX}{last_hour}$"  # '$' sorts right after '#'


def bucket_name(prefix: str, bounds: tuple[int, ...], value: float) -> str:
    for bound in bounds:
        if value <= bound:
            return f"{prefix}{bound}"
    return f"{prefix}{OVER}"


def _parse_utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    try:
        return max(0.0, (_parse_utc(end) - _parse_utc(start)).total_seconds())
    except ValueError:
        return None


@dataclass
class Counts:
    """Counters of one (hour, model version, batch)."""

    values: Counter = field(default_factory=Counter)

    def add(self, name: str, amount: float = 1) -> None:
        self.values[name] += amount


@dataclass
class BatchTally:
    """Everything one invocation scored, counted once and emitted once."""

    positive_label: str
    groups: dict[tuple[str, str, str], Counts] = field(default_factory=dict)
    probabilities: dict[str, list[float]] = field(default_factory=dict)
    stage_latencies: dict[str, list[float]] = field(default_factory=dict)
    warned_by_code: Counter = field(default_factory=Counter)

    def reset(self) -> None:
        """A new invocation: forget the previous one (the handler module outlives it)."""
        for collected in (self.groups, self.probabilities, self.stage_latencies, self.warned_by_code):
            collected.clear()

    def observe(self, item: dict[str, Any]) -> None:
        """One written result item (not a skipped duplicate)."""
        scored_at = item[results.SCORED_AT]
        model_version = str(item.get(results.MODEL_VERSION, ""))
        counts = self.groups.setdefault((scored_at[:13], model_version, str(item.get(results.BATCH, ""))),
                                        Counts())
        counts.add("images")
        if item.get(results.STATUS) == results.STATUS_FAILED:
            counts.add("failed")
        else:
            counts.add("scored")
            probability = float(item[results.PROBABILITY])
            counts.add("probability_sum", probability)
            self.probabilities.setdefault(model_version, []).append(probability)
            if item.get(results.LABEL) == self.positive_label:
                counts.add("positives")
                if item.get(results.SUBTYPE_PROBABILITY) is not None:
                    counts.add(f"{SUBTYPE_PREFIX}{item.get(results.SUBTYPE) or UNCERTAIN_SUBTYPE}")
        warnings = item.get(results.WARNINGS) or []
        if warnings:
            counts.add("warned")
        for code in set(warnings):
            counts.add(f"{WARNED_PREFIX}{code}")
            self.warned_by_code[code] += 1
        timings = item.get(results.TIMINGS_MS) or {}
        if "total" in timings:
            counts.add(bucket_name(HANDLER_BUCKET, HANDLER_MS_BOUNDS, timings["total"]))
        for stage, elapsed in timings.items():
            self.stage_latencies.setdefault(stage, []).append(elapsed)
        waited = _seconds_between(item.get("uploaded_at"), scored_at)
        if waited is not None:
            counts.add(bucket_name(END_TO_END_BUCKET, END_TO_END_S_BOUNDS, waited))

    def totals(self, model_version: str | None = None) -> Counter:
        total: Counter = Counter()
        for (_, version, _), counts in self.groups.items():
            if model_version is None or version == model_version:
                total.update(counts.values)
        return total

    # -- CloudWatch (EMF) -------------------------------------------------------------------
    def emit(self, metrics: Any, metrics_factory: Any, unit: Any) -> None:
        """Counts and latencies on `metrics` (flushed by the handler's decorator); per model
        version and per warning code on their own EMF lines from `metrics_factory()`."""
        if not self.groups:
            return
        _add_counts(metrics, self.totals(), unit)
        for stage, values in self.stage_latencies.items():
            for value in values:
                metrics.add_metric(name=f"{stage.capitalize()}Latency", unit=unit.Milliseconds,
                                   value=round(value, LATENCY_DECIMALS))
        for model_version in sorted({version for _, version, _ in self.groups}):
            by_model = metrics_factory()
            by_model.add_dimension(name="model_version", value=model_version or "unknown")
            _add_counts(by_model, self.totals(model_version), unit)
            for probability in self.probabilities.get(model_version, []):
                by_model.add_metric(name="Probability", unit=unit.NoUnit,
                                    value=round(probability, PROBABILITY_DECIMALS))
            by_model.flush_metrics()
        for code, count in sorted(self.warned_by_code.items()):
            by_code = metrics_factory()
            by_code.add_dimension(name="warning", value=code)
            by_code.add_metric(name="ImagesWarned", unit=unit.Count, value=count)
            by_code.flush_metrics()

    # -- counter items ------------------------------------------------------------------------
    def counter_updates(self) -> list[dict[str, Any]]:
        """One UpdateItem request (plain values) per hour/model/batch of this invocation."""
        requests = []
        for (hour, model_version, batch), counts in sorted(self.groups.items()):
            names = {"#hour": HOUR, "#model": MODEL, "#batch": SOURCE_BATCH}
            values: dict[str, Any] = {":hour": hour, ":model": model_version, ":batch": batch}
            additions = []
            for index, (name, amount) in enumerate(sorted(counts.values.items())):
                names[f"#c{index}"] = name
                values[f":c{index}"] = results.to_dynamodb(amount)
                additions.append(f"#c{index} :c{index}")
            requests.append({
                "Key": {results.BATCH: stats_partition(hour[:10]), results.KEY: stats_key(hour, model_version, batch)},
                "UpdateExpression": f"SET #hour = :hour, #model = :model, #batch = :batch ADD {', '.join(additions)}",
                "ExpressionAttributeNames": names, "ExpressionAttributeValues": values})
        return requests


def _add_counts(metrics: Any, totals: Counter, unit: Any) -> None:
    for metric, name in (("ImagesScored", "scored"), ("ImagesFailed", "failed"), ("ImagesWarned", "warned"),
                         ("Positives", "positives")):
        metrics.add_metric(name=metric, unit=unit.Count, value=totals.get(name, 0))
