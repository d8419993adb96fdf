"""Streaming backfill: peak memory and throughput over a generated listing of millions of keys.

    python -m benchmarks.backfill [--keys 100000 --keys 1000000 ...] [--json PATH]

Each size runs `pneumoscan backfill --model-older-than V` in a fresh process against
stubbed S3, DynamoDB and SQS clients: S3 generates the listing page by page (1000 keys,
honouring Prefix and StartAfter), DynamoDB answers BatchGetItem with a result for two
keys in three (one of them from the current model, so it is skipped), SQS accepts every
SendMessageBatch. Nothing is held by the stubs, so the process's peak RSS (VmHWM) is the
backfill's own. Memory flat in the number of objects means the same peak for 100 000 and
for millions of keys. The throughput is the CLI's own ceiling on one core (counting pass,
listing, BatchGetItem handling, notification bodies, SendMessageBatch entries): against
AWS the round trips of SendMessageBatch bound it, and `--rate` sets it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks.common import peak_rss_mb, run_probe

DEFAULT_SIZES = (100_000, 1_000_000, 2_000_000)
PAGE = 1000
OLD_MODEL, CURRENT_MODEL = "2026.11.20-1", "2026.11.25-3"


class GeneratedListing:
    """list_objects_v2 over `count` keys that exist only while their page is handed out."""

    def __init__(self, count: int, prefix: str):
        self.count, self.prefix = count, prefix
        self.list_calls = 0

    def key(self, index: int) -> str:
        return f"{self.prefix}site-{index // 50_000:03d}/{index:09d}.jpeg"

    def get_paginator(self, operation: str):
        assert operation == "list_objects_v2"
        return self

    def paginate(self, *, Bucket: str, Prefix: str, StartAfter: str | None = None):
        index = 0
        if StartAfter:
            index = int(StartAfter.rsplit("/", 1)[1].split(".")[0]) + 1
        while index < self.count:
            self.list_calls += 1
            end = min(index + PAGE, self.count)
            yield {"Contents": [{"Key": self.key(i), "ETag": f'"{i:032x}"', "Size": 1_500_000}
                                for i in range(index, end)]}
            index = end


class Results:
    """BatchGetItem: keys 0, 1 of every 3 have a result; key 0's is from the current model."""

    def __init__(self):
        self.calls = 0

    def batch_get_item(self, *, RequestItems: dict) -> dict:
        self.calls += 1
        (table, request), = RequestItems.items()
        items = []
        for key in request["Keys"]:
            name = key["object_key"]["S"]
            index = int(name.rsplit("/", 1)[1].split(".")[0])
            if index % 3 == 2:
                continue
            model = CURRENT_MODEL if index % 3 == 0 else OLD_MODEL
            items.append({"object_key": {"S": name}, "etag": {"S": f"{index:032x}"},
                          "model_version": {"S": model}, "status": {"S": "SCORED"}})
        return {"Responses": {table: items}, "UnprocessedKeys": {}}


class Queue:
    def __init__(self):
        self.messages = 0
        self.body_bytes = 0

    def send_message_batch(self, *, QueueUrl: str, Entries: list) -> dict:
        self.messages += len(Entries)
        self.body_bytes += sum(len(entry["MessageBody"]) for entry in Entries)
        return {"Successful": [{"Id": entry["Id"]} for entry in Entries], "Failed": []}


def probe(count: int, state_dir: str) -> dict:
    """One backfill of `count` generated keys in this process; returns its measurements."""
    from pneumoscan_cli import backfill as backfill_module
    from pneumoscan_cli.aws import Target
    from pneumoscan_cli.main import app

    listing, results, queue = GeneratedListing(count, "incoming/"), Results(), Queue()
    target = Target(bucket="archive", table="results", region="us-east-1", queue_url="https://sqs/queue",
                    source="benchmark", _clients={"s3": listing, "dynamodb": results, "sqs": queue})
    baseline = peak_rss_mb()
    started = time.perf_counter()
    resolve_target = backfill_module.resolve_target
    backfill_module.resolve_target = lambda *args, **kwargs: target
    try:
        app(["backfill", "--model-older-than", CURRENT_MODEL,
             "--checkpoint", str(Path(state_dir) / "checkpoint.json")], standalone_mode=False)
    finally:
        backfill_module.resolve_target = resolve_target
    seconds = time.perf_counter() - started
    return {"keys": count, "seconds": round(seconds, 2), "keys_per_s": round(count / seconds),
            "messages": queue.messages, "messages_per_s": round(queue.messages / seconds),
            "list_calls": listing.list_calls, "batch_get_calls": results.calls,
            "peak_rss_mb": peak_rss_mb(), "rss_after_imports_mb": baseline}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, action="append", help="listing sizes (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    parser.add_argument("--probe", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--state-dir", default="/tmp/pneumoscan-backfill-bench", help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.probe:
        print(json.dumps(probe(arguments.probe, arguments.state_dir)))
        return
    rows = []
    for count in arguments.keys or DEFAULT_SIZES:
        row = run_probe(["-m", "benchmarks.backfill", "--probe", str(count)], timeout=3600)
        rows.append(row)
        print(f"{row['keys']:>9} keys: {row['seconds']:7.1f} s, {row['keys_per_s']:>6} keys/s, "
              f"{row['messages']:>8} messages enqueued ({row['messages_per_s']}/s), "
              f"peak RSS {row['peak_rss_mb']} MB (after imports {row['rss_after_imports_mb']} MB)",
              file=sys.stderr)
    if arguments.json:
        arguments.json.write_text(json.dumps(rows, indent=2) + "\n")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
