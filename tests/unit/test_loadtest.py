"""The load test's bookkeeping: lost and duplicated are computed from what was measured, and can fail."""

from __future__ import annotations

import json
from collections import Counter

from benchmarks.loadtest import handler_writes, summarise
from pneumoscan.results import KEY, SCORED_AT, key_digest

KEYS = [f"incoming/loadtest/{index:05d}.jpeg" for index in range(4)]


def _log_line(key: str, write: str) -> str:
    return json.dumps({"level": "INFO", "message": "image scored", "object": key_digest(key), "write": write})


def test_handler_writes_counts_writes_per_key_and_skipped_redeliveries(tmp_path):
    log = tmp_path / "worker.log"
    log.write_text("\n".join([
        "worker-1: batch of 10: 10 done",  # the worker's own plain lines are ignored
        _log_line(KEYS[0], "written"), _log_line(KEYS[1], "written"), _log_line(KEYS[1], "rescored"),
        _log_line(KEYS[2], "written"), _log_line(KEYS[2], "duplicate"),
        _log_line("incoming/other/x.jpeg", "written"), "{broken json",
    ]) + "\n")

    writes, skipped = handler_writes(log, KEYS)

    assert writes == Counter({KEYS[0]: 1, KEYS[1]: 2, KEYS[2]: 1})
    assert skipped == 1


def test_summarise_reports_lost_duplicated_latency_and_rate():
    uploaded = {key: 1000.0 + index for index, key in enumerate(KEYS)}
    items = [{KEY: KEYS[0], "status": "SCORED", SCORED_AT: "1970-01-01T00:16:41.000Z"},   # 1001.0: 1 s after upload
             {KEY: KEYS[1], "status": "SCORED", SCORED_AT: "1970-01-01T00:16:43.000Z"},   # 1003.0: 2 s
             {KEY: KEYS[2], "status": "FAILED", SCORED_AT: "1970-01-01T00:16:45.000Z"}]   # 1005.0: 3 s
    report = summarise(uploaded=uploaded, upload_started=999.0, items=items,
                       writes=Counter({KEYS[0]: 1, KEYS[1]: 2, KEYS[2]: 1}), skipped=4, rss_mb=[150.0, 162.5],
                       queue_depths={"queue": 0, "dlq": 1}, workers=2)

    assert report["lost"] == 1                      # KEYS[3] never got an item
    assert report["duplicated"] == 1                # KEYS[1] was written twice
    assert report["items_written"] == 3 and report["failed_items"] == 1
    assert report["writes_logged"] == 4
    assert report["latency"]["p50_ms"] == 2000.0
    assert report["images_per_s"] == round(3 / 6.0, 2)
    assert report["left_in_dlq"] == 1 and report["worker_peak_rss_mb_max"] == 162.5
