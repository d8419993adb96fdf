"""`make loadtest N=2000`: N full-resolution X-rays through the local stack, nothing lost or doubled.

`pneumoscan local up --workers W` runs as its own process (moto server + W handler
workers, settings from template.yaml). This script uploads N objects under distinct
keys (cycling the 200 originals) while the workers score, waits for every result, and
reports:

  images/s          N / (first upload started .. last item written)
  latency p50/p95   per image, upload finished -> its item's `scored_at`
  items written     result items of the batch (a Query on the table, no Scan)
  lost              uploaded keys without an item (must be 0)
  duplicated        keys the handler WROTE more than once, from its own logs (must be 0);
                    redeliveries it recognised and skipped are counted separately
  peak worker RSS   VmHWM of each worker process

Exit status 1 when anything was lost, duplicated or left in the dead-letter queue.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from benchmarks.common import DEFAULT_DATA, REPO_ROOT, load_samples, summarize
from pneumoscan.results import KEY, SCORED_AT, batch_results, key_digest
from pneumoscan_cli.aws import STATE_DIR_ENV, STATE_FILE, Target

console = Console(stderr=True)
STARTUP_TIMEOUT_S = 120
# Give up waiting when no new item has appeared for this long (a stuck pipeline), or at the deadline.
STALL_TIMEOUT_S = 180
POLL_INTERVAL_S = 1.0
WRITES = ("written", "rescored")  # a `write` value in the handler's "image scored"/"image not scored" logs


def parse_time(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


class LocalUp:
    """`pneumoscan local up` in its own process; its state file says where everything is."""

    def __init__(self, workers: int, state_dir: Path):
        self.state_dir = state_dir
        self.log_path = state_dir / "local-up.log"
        environment = dict(os.environ, **{STATE_DIR_ENV: str(state_dir)})
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pneumoscan_cli.main", "local", "up", "--workers", str(workers)],
                cwd=REPO_ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not (state_dir / STATE_FILE).exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"local up did not start:\n{self.log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        self.state = json.loads((state_dir / STATE_FILE).read_text())
        fields = {key: self.state[key] for key in Target.__dataclass_fields__ if key in self.state}
        self.target = Target(**fields)

    @property
    def worker_log(self) -> Path:
        return Path(self.state["worker_log"])

    def workers_peak_rss_mb(self) -> list[float]:
        peaks = []
        for pid in self.state.get("workers", []):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except FileNotFoundError:
                continue  # a worker that died (and was replaced) has no figure left
            peaks += [round(int(line.split()[1]) / 1024, 1) for line in status.splitlines()
                      if line.startswith("VmHWM:")]
        return peaks

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def batch_items(target: Target, batch: str) -> list[dict]:
    """Key, status and scored_at of every item of the batch (one paginated Query)."""
    return list(batch_results(target.client("dynamodb"), target.table, batch, fields=(KEY, "status", SCORED_AT)))


def handler_writes(worker_log: Path, keys: list[str]) -> tuple[Counter, int]:
    """How often the handler wrote each key's item, and how many deliveries it skipped as duplicates."""
    digests = {key_digest(key): key for key in keys}
    writes, skipped = Counter(), 0
    for line in worker_log.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        key = digests.get(entry.get("object"))
        if key is None:
            continue
        if entry.get("write") in WRITES:
            writes[key] += 1
        elif entry.get("write") == "duplicate":
            skipped += 1
    return writes, skipped


def summarise(*, uploaded: dict[str, float], upload_started: float, items: list[dict], writes: Counter,
              skipped: int, rss_mb: list[float], queue_depths: dict[str, int], workers: int) -> dict:
    """The report; pure arithmetic over what was measured."""
    scored_at = {item[KEY]: parse_time(item[SCORED_AT]) for item in items if item[KEY] in uploaded}
    latencies = [scored_at[key] - finished for key, finished in uploaded.items() if key in scored_at]
    span = (max(scored_at.values()) - upload_started) if scored_at else None
    return {
        "images": len(uploaded), "workers": workers, "cores": os.cpu_count(),
        "images_per_s": round(len(scored_at) / span, 2) if span else None,
        "elapsed_s": round(span, 1) if span else None,
        "latency": summarize(latencies),
        "items_written": len(scored_at),
        "failed_items": sum(1 for item in items if item["status"] != "SCORED"),
        "lost": sum(1 for key in uploaded if key not in scored_at),
        "duplicated": sum(1 for key in uploaded if writes[key] > 1),
        # Every item must show up as a write in the handler's log, or `duplicated` proves nothing.
        "writes_logged": sum(writes[key] for key in uploaded),
        "redeliveries_skipped": skipped,
        "left_in_queue": queue_depths.get("queue", 0), "left_in_dlq": queue_depths.get("dlq", 0),
        "worker_peak_rss_mb": rss_mb, "worker_peak_rss_mb_max": max(rss_mb) if rss_mb else None,
    }


def _queue_depth(target: Target, queue_url: str | None) -> int:
    if not queue_url:
        return 0
    attributes = target.client("sqs").get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])
    return sum(int(value) for value in attributes["Attributes"].values())


def _settled_queue_depths(target: Target, settle_s: float = 30.0) -> dict[str, int]:
    """Queue and DLQ depth once the last batch's messages are deleted: a worker deletes them
    only after the invocation's stats counters, so the depth right after the last item is
    written still counts that in-flight batch."""
    deadline = time.monotonic() + settle_s
    while True:
        depths = {"queue": _queue_depth(target, target.queue_url),
                  "dlq": _queue_depth(target, target.dead_letter_queue_url)}
        if depths["queue"] == 0 or time.monotonic() > deadline:
            return depths
        time.sleep(POLL_INTERVAL_S)


def run(images: int, workers: int, data_dir: Path, upload_threads: int, deadline_s: float,
        rate: float | None = None) -> dict:
    samples = load_samples(data_dir)
    with tempfile.TemporaryDirectory(prefix="pneumoscan-loadtest-") as state:
        stack = LocalUp(workers, Path(state))
        try:
            target = stack.target
            batch = "loadtest-" + datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
            plan = [(index, f"{target.incoming_prefix}{batch}/{index:05d}-"
                            f"{samples[index % len(samples)].name.replace('/', '-')}", samples[index % len(samples)].data)
                    for index in range(images)]
            uploaded: dict[str, float] = {}
            s3 = target.client("s3")

            def put(entry: tuple[int, str, bytes]) -> str:
                index, key, body = entry
                if rate:  # a steady arrival rate instead of one burst
                    time.sleep(max(0.0, upload_started + index / rate - time.time()))
                s3.put_object(Bucket=target.bucket, Key=key, Body=body, ContentType="image/jpeg")
                uploaded[key] = time.time()
                return key

            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          console=console) as progress:
                uploading = progress.add_task("uploaded", total=images)
                scoring = progress.add_task("scored", total=images)
                upload_started = time.time()
                with ThreadPoolExecutor(upload_threads) as pool:
                    futures = [pool.submit(put, entry) for entry in plan]
                    items: list[dict] = []
                    last_progress, last_count = time.monotonic(), 0
                    while True:
                        progress.update(uploading, completed=sum(future.done() for future in futures))
                        items = batch_items(target, batch)
                        progress.update(scoring, completed=len(items))
                        if len(items) > last_count:
                            last_progress, last_count = time.monotonic(), len(items)
                        if len(items) >= images or time.monotonic() - last_progress > STALL_TIMEOUT_S \
                                or time.time() - upload_started > deadline_s:
                            break
                        time.sleep(POLL_INTERVAL_S)
                    for future in futures:
                        future.result()  # an upload that raised is a failed run, not a lost image
                progress.update(uploading, completed=len(uploaded))
            rss_mb = stack.workers_peak_rss_mb()
            depths = _settled_queue_depths(target)
        finally:
            stack.stop()
        writes, skipped = handler_writes(stack.worker_log, list(uploaded))
    report = summarise(uploaded=uploaded, upload_started=upload_started, items=items, writes=writes,
                       skipped=skipped, rss_mb=rss_mb, queue_depths=depths, workers=workers)
    return report | {"upload_rate_per_s": rate or "burst", "load_average_after": round(os.getloadavg()[0], 2)}


def print_report(report: dict) -> None:
    table = Table(title=f"load test: {report['images']} full-resolution X-rays ({report['upload_rate_per_s']} "
                        f"uploads/s), {report['workers']} worker(s), {report['cores']} cores shared with moto, "
                        f"the uploader and anything else (load average {report['load_average_after']})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    latency = report["latency"]
    for name, value in [("images/s", report["images_per_s"]), ("elapsed s", report["elapsed_s"]),
                        ("latency p50 ms", latency.get("p50_ms")), ("latency p95 ms", latency.get("p95_ms")),
                        ("items written", report["items_written"]), ("FAILED items", report["failed_items"]),
                        ("lost", report["lost"]), ("duplicated", report["duplicated"]),
                        ("writes in handler log", report["writes_logged"]),
                        ("redeliveries skipped", report["redeliveries_skipped"]),
                        ("left in queue / DLQ", f"{report['left_in_queue']} / {report['left_in_dlq']}"),
                        ("peak worker RSS MB", ", ".join(map(str, report["worker_peak_rss_mb"])))]:
        table.add_row(name, str(value))
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", "-n", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--upload-threads", type=int, default=8)
    parser.add_argument("--rate", type=float, default=None,
                        help="uploads per second (default: all at once, a burst); below the scoring rate, "
                             "latency shows the pipeline itself rather than the backlog")
    parser.add_argument("--deadline", type=float, default=3600, help="seconds before giving up")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "runs" / "loadtest.json")
    args = parser.parse_args(argv)
    report = run(args.images, args.workers, args.data, args.upload_threads, args.deadline, args.rate)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print_report(report)
    console.print(f"report written to {args.output}")
    healthy = (report["lost"] == 0 and report["duplicated"] == 0 and report["left_in_dlq"] == 0
               and report["writes_logged"] >= report["items_written"])
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
