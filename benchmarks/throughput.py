"""Throughput of the local stack (moto server + N handler workers) on the 200 originals.

All objects are uploaded before any worker starts, so the queue is full and the workers
never wait for uploads. `elapsed` runs from starting the workers (their init included) to
the last result item; `steady` is the rate between the first and the last `scored_at`.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path

from benchmarks.common import Sample
from benchmarks.local_stack import StackProcess
from pneumoscan.results import SCORED_AT, batch_results

DEADLINE_S = 900


def _scored_times(dynamodb, table: str, batch: str) -> list[datetime]:
    return sorted(datetime.fromisoformat(item[SCORED_AT].replace("Z", "+00:00"))
                  for item in batch_results(dynamodb, table, batch, fields=(SCORED_AT,)))


def measure(samples: list[Sample], workers: int, log: Path) -> dict:
    with StackProcess(range(os.cpu_count()), log) as stack:
        names = stack.description
        s3 = stack.client("s3")
        dynamodb = stack.client("dynamodb")
        batch = f"throughput-{workers}"
        for sample in samples:
            s3.put_object(Bucket=names["bucket"], Key=f"{names['incoming_prefix']}{batch}/{sample.name}",
                          Body=sample.data, ContentType="image/jpeg")
        start = time.perf_counter()
        stack.start_workers(workers)
        scored: list[datetime] = []
        while len(scored) < len(samples):
            if time.perf_counter() - start > DEADLINE_S:
                raise TimeoutError(f"{len(scored)}/{len(samples)} scored after {DEADLINE_S} s with {workers} workers")
            time.sleep(0.25)
            scored = _scored_times(dynamodb, names["table"], batch)
        elapsed = time.perf_counter() - start
        span = (scored[-1] - scored[0]).total_seconds()
        return {"workers": workers, "images": len(samples), "elapsed_s": round(elapsed, 2),
                "images_per_s": round(len(samples) / elapsed, 2),
                "steady_images_per_s": round((len(scored) - 1) / span, 2) if span > 0 else None,
                "worker_peak_rss_mb": stack.workers_peak_rss_mb()}


def run(samples: list[Sample], worker_counts: tuple[int, ...], log: Path) -> dict:
    results = {str(count): measure(samples, count, log) for count in worker_counts}
    base = results[str(worker_counts[0])]["images_per_s"]
    for result in results.values():
        result["speedup_vs_first"] = round(result["images_per_s"] / base, 2)
    return {"by_workers": results, "cores": os.cpu_count(),
            "note": "moto server and every worker share this machine's cores"}
