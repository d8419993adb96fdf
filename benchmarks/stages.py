"""Per-stage time per image, and the whole handler, against the local stack.

Run by `benchmarks.__main__` in a fresh process pinned to one core, with the handler's
environment (AWS_ENDPOINT_URL points at the local stack's moto server on the other core).

1. Every sample is uploaded twice, under `incoming/bench-single/` and `incoming/bench-batch/`;
   the bucket notification queues one SQS message per object, which is read back and
   turned into Lambda SQS event records exactly as the local worker does.
2. The real handler (`app.lambda_handler`) scores `bench-single` one record per invocation
   and `bench-batch` in invocations of the SQS batch size, each object once (the handler
   may skip an object it has already scored). Wall and CPU time per image, and the AWS
   calls it makes per image, are recorded.
3. The stages are then timed one by one on the same objects, each a median of `repeats`:
   S3 get, then the scoring path's own stage timings (decode + preprocess, inference,
   CAM overlay), then the DynamoDB write (the very item the handler wrote, put again).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import time
from collections import Counter
from pathlib import Path

import boto3
import numpy as np
from botocore.client import BaseClient

from benchmarks.common import DEFAULT_DATA, Sample, load_samples, peak_rss_mb, summarize
from benchmarks.prices import dynamodb_item_bytes
from pneumoscan.results import deserialize, primary_key, serialize

STACK_ENV = "PNEUMOSCAN_BENCH_STACK"
BATCHES = ("bench-single", "bench-batch")
WARMUP_BATCH = "bench-warmup"

api_calls: Counter = Counter()
_make_api_call = BaseClient._make_api_call


def _counting_api_call(client, operation_name, api_params):
    api_calls[f"{client.meta.service_model.service_name}:{operation_name}"] += 1
    if operation_name == "GetItem" and api_params.get("ConsistentRead"):
        api_calls["dynamodb:GetItem(consistent)"] += 1
    return _make_api_call(client, operation_name, api_params)


class LogMeter(io.TextIOBase):
    """Counts the bytes and lines the handler prints (JSON logs and EMF): CloudWatch Logs ingests them."""

    def __init__(self):
        self.bytes = self.lines = 0

    def write(self, text: str) -> int:
        self.bytes += len(text.encode())
        self.lines += text.count("\n")
        return len(text)


BaseClient._make_api_call = _counting_api_call


def _key(stack: dict, batch: str, sample: Sample) -> str:
    return f"{stack['incoming_prefix']}{batch}/{sample.name}"


def upload_and_collect_records(stack: dict, samples: list[Sample], s3, sqs) -> dict[str, dict]:
    """Upload each sample under every batch; the SQS event record of each object, by key."""
    from pneumoscan.events import parse_message
    from pneumoscan_cli.worker import sqs_record

    objects = {_key(stack, batch, sample): sample for batch in BATCHES for sample in samples}
    objects[_key(stack, WARMUP_BATCH, samples[0])] = samples[0]
    for key, sample in objects.items():
        s3.put_object(Bucket=stack["bucket"], Key=key, Body=sample.data, ContentType="image/jpeg")
    records, deadline = {}, time.monotonic() + 120
    while len(records) < len(objects) and time.monotonic() < deadline:
        response = sqs.receive_message(QueueUrl=stack["queue_url"], MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                       MessageSystemAttributeNames=["All"])
        for message in response.get("Messages", []):
            for created in parse_message(message["Body"]).objects:
                records[created.key] = sqs_record(message, stack["queue_arn"], stack["region"])
    missing = objects.keys() - records.keys()
    if missing:
        raise RuntimeError(f"no S3 notification arrived for {len(missing)} objects, e.g. {sorted(missing)[0]}")
    return records


def time_handler(records: list[dict], batch_size: int, stack: dict) -> dict:
    """Invoke the real handler over `records` in invocations of `batch_size`."""
    import app
    from pneumoscan_cli.worker import LambdaContext

    wall, cpu, failures = [], [], 0
    api_calls.clear()
    logs = LogMeter()
    handler_stream = app.logger.registered_handler
    for offset in range(0, len(records), batch_size):
        chunk = records[offset: offset + batch_size]
        context = LambdaContext("pneumoscan-bench", stack["memory_mb"], 60, stack["region"])
        original_stream, handler_stream.stream = handler_stream.stream, logs
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        try:
            with contextlib.redirect_stdout(logs):  # EMF metrics are printed
                response = app.lambda_handler({"Records": chunk}, context)
        finally:
            handler_stream.stream = original_stream
        wall.extend([(time.perf_counter() - wall_start) / len(chunk)] * len(chunk))
        cpu.extend([(time.process_time() - cpu_start) / len(chunk)] * len(chunk))
        failures += len((response or {}).get("batchItemFailures", []))
    consistent = api_calls.pop("dynamodb:GetItem(consistent)", 0)
    return {"batch_size": batch_size, "wall": summarize(wall), "cpu": summarize(cpu),
            "waiting_p50_ms": round(summarize(wall)["p50_ms"] - summarize(cpu)["p50_ms"], 3),
            "batch_item_failures": failures,
            "log_bytes_per_image": round(logs.bytes / len(records), 1),
            "log_lines_per_image": round(logs.lines / len(records), 3),
            "consistent_reads": consistent > 0,
            "aws_calls_per_image": {name: round(count / len(records), 3) for name, count in sorted(api_calls.items())}}


def time_stages(stack: dict, samples: list[Sample], repeats: int, s3, dynamodb) -> dict:
    from pneumoscan import scoring

    scorer = scoring.Scorer.load(num_threads=1)
    # Benchmark stage name <- the scoring stage it reads.
    scoring_stages = {"decode_plus_preprocess": scoring.DECODE, "inference": scoring.INFERENCE,
                      "cam_overlay": scoring.HEAT_MAP}
    durations: dict[str, list[float]] = {name: [] for name in ("s3_get", *scoring_stages, "dynamodb_write")}
    item_bytes, handler_timings, statuses, items = [], [], Counter(), []
    for sample in samples:
        key = _key(stack, BATCHES[0], sample)
        stored = dynamodb.get_item(TableName=stack["table"],
                                   Key=serialize(primary_key(key, stack["incoming_prefix"]))).get("Item")
        if stored is None:
            raise RuntimeError(f"the handler wrote no item for {key}")
        plain = deserialize(stored)
        items.append(plain)
        item_bytes.append(dynamodb_item_bytes(plain))
        statuses[plain.get("status")] += 1
        handler_timings.append(plain.get("timings_ms") or {})
        runs: dict[str, list[float]] = {name: [] for name in durations}

        def timed(stage, work):
            start = time.perf_counter()
            result = work()
            runs[stage].append(time.perf_counter() - start)
            return result

        for _ in range(repeats):
            data = timed("s3_get", lambda: s3.get_object(Bucket=stack["bucket"], Key=key)["Body"].read())
            # The heat map as the template's OverlayImages has it (a PNG too only when it asks for one).
            scored = scorer.score(data, overlay=os.environ.get("OVERLAY_IMAGES", "none"))
            for name, stage in scoring_stages.items():
                runs[name].append(scored.timings_ms[stage] / 1e3)
            timed("dynamodb_write", lambda: dynamodb.put_item(TableName=stack["table"], Item=stored))
        for stage, values in runs.items():
            if values:
                durations[stage].append(float(np.median(values)))
    stages = {stage: summarize(values) for stage, values in durations.items() if values}
    recorded = {stage: summarize(np.array([t[stage] for t in handler_timings if stage in t], dtype=float) / 1e3)
                for stage in sorted({name for t in handler_timings for name in t})}
    return {"stages": stages, "repeats_per_image": repeats,
            "handler_recorded_timings_ms": recorded, "item_statuses": dict(statuses),
            "dynamodb_item_bytes": {"p50": int(np.median(item_bytes)), "max": int(max(item_bytes))},
            "dynamodb_index_writes_per_item": _index_writes_per_item(dynamodb, stack["table"], items)}


def _index_writes_per_item(dynamodb, table: str, items: list[dict]) -> float:
    """Index entries per item on average: a GSI stores an item only when it carries the index's
    key attributes (sparse indexes)."""
    indexes = dynamodb.describe_table(TableName=table)["Table"].get("GlobalSecondaryIndexes", [])
    return sum(all(part["AttributeName"] in item for part in index["KeySchema"])
               for item in items for index in indexes) / max(1, len(items))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--handler-only", action="store_true", help="only the handler passes, no stage timings")
    args = parser.parse_args()
    stack = json.loads(os.environ[STACK_ENV])
    samples = load_samples(args.data, args.limit)
    s3, sqs, dynamodb = (boto3.client(name) for name in ("s3", "sqs", "dynamodb"))
    records = upload_and_collect_records(stack, samples, s3, sqs)

    start = time.perf_counter()
    import app  # noqa: F401 - the Lambda init, on the warm page cache of this machine
    init_ms = (time.perf_counter() - start) * 1e3
    first = time_handler([records[_key(stack, WARMUP_BATCH, samples[0])]], 1, stack)
    handler = {
        "init_ms": round(init_ms, 1), "first_invocation_ms": first["wall"]["p50_ms"],
        "single": time_handler([records[_key(stack, BATCHES[0], s)] for s in samples], 1, stack),
        "batch": time_handler([records[_key(stack, BATCHES[1], s)] for s in samples], stack["batch_size"], stack),
    }
    result = {"images": len(samples), "handler": handler}
    if not args.handler_only:
        result |= time_stages(stack, samples, args.repeats, s3, dynamodb)
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
