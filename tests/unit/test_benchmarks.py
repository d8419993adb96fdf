"""The arithmetic behind `make bench`: percentiles, DynamoDB item sizes, cost per million, the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal

import numpy as np
import pytest
from PIL import Image

from benchmarks import prices, report
from benchmarks.common import REPO_ROOT, load_samples, summarize

ONE_IMAGE_CALLS = {"s3:GetObject": 1, "dynamodb:GetItem": 1, "dynamodb:PutItem": 1}


def _cost(**overrides):
    arguments = dict(handler_cpu_ms=10.0, handler_wait_ms=5.0, memory_mb=prices.LAMBDA_FULL_VCPU_MB,
                     batch_size=10, aws_calls_per_image=ONE_IMAGE_CALLS, item_bytes=800, index_writes_per_image=2)
    return prices.cost_per_million(**(arguments | overrides))


def test_summarize_reports_milliseconds_percentiles():
    summary = summarize([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert summary["n"] == 100
    assert summary["p50_ms"] == pytest.approx(50.5)
    assert summary["p95_ms"] == pytest.approx(95.05)
    assert summary["min_ms"] == 1.0


def test_dynamodb_item_size_counts_names_and_values():
    assert prices.dynamodb_item_bytes({"label": "NORMAL"}) == 5 + 6
    # Numbers: 1 byte plus one per two significant digits.
    assert prices.dynamodb_item_bytes({"p": Decimal("0.123456")}) == 1 + 1 + 3
    assert prices.dynamodb_item_bytes({"t": {"fetch": Decimal("12.5")}}) == 1 + 3 + 5 + 1 + 3


def test_cost_at_full_vcpu_bills_cpu_and_waiting_time_as_measured():
    cost = _cost()
    assert cost["billed_ms_per_image"] == pytest.approx(15.0)
    gb = prices.LAMBDA_FULL_VCPU_MB / 1024
    assert cost["lines_usd"]["lambda_compute"] == pytest.approx(
        0.015 * gb * prices.LAMBDA_ARM64_PER_GB_SECOND * 1e6, abs=1e-4)
    assert cost["total_usd"] == pytest.approx(sum(cost["lines_usd"].values()), abs=1e-3)


def test_cost_below_full_vcpu_stretches_only_cpu_time():
    memory_mb = prices.LAMBDA_FULL_VCPU_MB // 2
    half = _cost(memory_mb=memory_mb)
    assert half["cpu_share"] == pytest.approx(0.5, abs=0.001)
    assert half["billed_ms_per_image"] == pytest.approx(10.0 * prices.LAMBDA_FULL_VCPU_MB / memory_mb + 5.0,
                                                        abs=0.001)


def test_cost_counts_index_entries_and_puts_at_the_put_rate():
    cost = _cost()
    # An item under 1 KB written to the table (1 WRU) and to two index entries (1 WRU each).
    assert cost["dynamodb_wru_per_write"] == 1
    assert cost["lines_usd"]["dynamodb_writes"] == pytest.approx(3 * 0.625)
    # A sparse index holding a third of the items costs a third of an entry per image.
    assert _cost(index_writes_per_image=1 / 3)["lines_usd"]["dynamodb_writes"] == pytest.approx(
        (1 + 1 / 3) * 0.625, abs=1e-3)
    with_overlay = _cost(aws_calls_per_image=ONE_IMAGE_CALLS | {"s3:PutObject": 1})
    assert with_overlay["lines_usd"]["s3_requests"] - cost["lines_usd"]["s3_requests"] == pytest.approx(5.0)
    assert _cost(item_bytes=1500)["dynamodb_wru_per_write"] == 2
    # One counter UpdateItem per invocation of 10 images: a tenth of a WRU per image.
    counters = _cost(aws_calls_per_image=ONE_IMAGE_CALLS | {"dynamodb:UpdateItem": 0.1})
    assert counters["lines_usd"]["dynamodb_writes"] - cost["lines_usd"]["dynamodb_writes"] == pytest.approx(0.0625)
    assert _cost(consistent_reads=False)["lines_usd"]["dynamodb_reads"] == pytest.approx(0.0625)


def test_sqs_receives_and_deletes_take_ten_messages_at_most_whatever_the_batch_size():
    # SendMessage per image; ReceiveMessage and DeleteMessageBatch per 10 messages of a batch.
    assert _cost(batch_size=10)["lines_usd"]["sqs"] == pytest.approx(0.40 * 1.2)
    assert _cost(batch_size=100)["lines_usd"]["sqs"] == pytest.approx(0.40 * 1.2)
    assert _cost(batch_size=1)["lines_usd"]["sqs"] == pytest.approx(0.40 * 3)
    assert _cost(batch_size=15)["lines_usd"]["sqs"] == pytest.approx(0.40 * (1 + 4 / 15), abs=1e-4)


def test_logs_kms_and_xray_lines_follow_bytes_and_rate():
    quiet, chatty = _cost(log_bytes_per_image=0), _cost(log_bytes_per_image=1024 ** 3 / 1e6)
    # One GB of handler output per million images is $0.50 more.
    assert chatty["lines_usd"]["cloudwatch_logs"] - quiet["lines_usd"]["cloudwatch_logs"] == pytest.approx(0.5)
    # At one invocation a second every invocation is traced: $5 per million traces, 10 images each.
    assert _cost(images_per_s=10)["lines_usd"]["xray"] == pytest.approx(0.5)
    busy = _cost(images_per_s=1000)
    assert busy["xray_traced_share"] == pytest.approx((1 + 0.05 * 99) / 100)
    # KMS data keys are reused for 5 minutes: the faster the images come, the less KMS per image.
    assert busy["lines_usd"]["kms"] < _cost(images_per_s=10)["lines_usd"]["kms"] < 0.05


def test_samples_alternate_labels_in_a_stable_order(tmp_path):
    for label, names in (("NORMAL", ["b.jpeg", "a.jpeg"]), ("PNEUMONIA", ["c.jpeg"])):
        (tmp_path / "xray_fullres_sample" / label).mkdir(parents=True)
        for name in names:
            Image.new("L", (80, 64)).save(tmp_path / "xray_fullres_sample" / label / name)
    samples = load_samples(tmp_path)
    assert [s.name for s in samples] == ["NORMAL/a.jpeg", "PNEUMONIA/c.jpeg", "NORMAL/b.jpeg"]
    assert (samples[0].width, samples[0].height) == (80, 64)


def test_report_says_what_was_not_measured_and_why():
    results = {"meta": {"started_at": "t0", "finished_at": "t1", "images": 0, "data": "x",
                        "lambda_note": "note", "model": {},
                        "machine": {"cpu": "cpu", "architecture": "x86_64", "cores": 2, "memory_gb": 1,
                                    "kernel": "k", "python": "3.13", "load_average_at_start": [0, 0, 0],
                                    "commit": "abc", "uncommitted_changes": False}},
               "skipped": {"stages": "FileNotFoundError: no model"},
               "targets": [{"target": "inference_p50_ms", "limit": 1.0, "measured": None, "met": None,
                            "over_by_pct": None},
                           {"target": "cold_start_ms", "limit": 150.0, "measured": 300.0, "met": False,
                            "over_by_pct": 100.0}]}
    markdown = report.render(results)
    assert "FileNotFoundError: no model" in markdown
    assert "| inference p50 | <= 1 | - | not measured |" in markdown
    assert "**missed by 100%**" in markdown


def test_costs_section_is_replaced_up_to_the_next_heading_and_only_there():
    page = ("# Costs and performance\n\n## What `make bench` measured\n\n<!-- BENCHMARK SECTION: generated -->\n\n"
            "_old figures_\n\n## Where the cost goes\n\nkept\n")
    once = report.embed_section(page, "| new | table |\n")
    assert "_old figures_" not in once
    assert once.index("| new | table |") < once.index("## Where the cost goes")
    assert once.endswith("## Where the cost goes\n\nkept\n")
    assert report.embed_section(once, "| new | table |\n") == once


def test_costs_page_holds_the_section_of_the_recorded_run():
    recorded = json.loads((REPO_ROOT / "benchmarks" / "results.json").read_text())
    page = (REPO_ROOT / "docs" / "costs.md").read_text()
    assert report.embed_section(page, report.costs_section(recorded)) == page


def test_backfill_benchmark_streams_the_generated_listing_through_the_real_command(tmp_path):
    from benchmarks import backfill as backfill_benchmark

    row = backfill_benchmark.probe(2500, str(tmp_path))

    # One key in three has a current result and is skipped; listed once to count, once to enqueue.
    assert row["messages"] == 2500 - len(range(0, 2500, 3))
    assert (row["list_calls"], row["batch_get_calls"]) == (2 * 3, 25)
    assert row["peak_rss_mb"] >= row["rss_after_imports_mb"] > 0
    assert list(tmp_path.iterdir()) == []  # a finished backfill leaves no checkpoint


def test_dicom_benchmark_times_every_transfer_syntax_through_the_decode_step(tmp_path):
    from benchmarks import dicom_decoding
    from image_cases import DATA_DIR, FULLRES_DIR
    if not FULLRES_DIR.is_dir():
        pytest.fail(f"{FULLRES_DIR} is missing: this test needs ../shared/data beside the repo")
    samples = load_samples(DATA_DIR, limit=1)
    files = dicom_decoding.encode_all(samples)
    timings = dicom_decoding.time_decoding(files, repeats=1)
    assert sorted(timings) == sorted([*dicom_decoding.SYNTAXES, dicom_decoding.JPEG_BASELINE])
    assert all(run["n"] == 1 and run["p50_ms"] > 0 for run in timings.values())
    section = {"images": 1, "repeats_per_image": 1, "transfer_syntaxes": timings,
               "memory_4k_16bit": {"image": "4096x4096", "by_syntax": {"rle": {"peak_rss_mb": 170.0}},
                                   "function_memory_mb": 1024, "max_peak_rss_mb": 170.0},
               "imports": {"import_jpeg_path_ms": 400.0, "jpeg_path_imports_pydicom": False,
                           "import_dicom_decode_ms": 800.0, "import_structured_report_ms": 300.0}}
    page = "\n".join(report._dicom_decoding({"dicom_decoding": section}))
    assert "| jpeg2000 lossless |" in page and "pydicom loaded: no" in page and "170 MB" in page


def test_the_inference_target_is_read_where_nothing_ran_beside_it():
    from benchmarks.__main__ import targets

    results = {"stages": {"stages": {"inference": {"p50_ms": 5.3}}},
               "decoding": {"inference": {"p50_ms": 3.6, "flip_averaged_share": 0.085}, "variants": {}}}
    inference = next(t for t in targets(results) if t["target"] == "inference_p50_ms")
    assert inference["measured"] == 3.6
    del results["decoding"]
    assert next(t for t in targets(results) if t["target"] == "inference_p50_ms")["measured"] == 5.3


def test_inference_timing_counts_the_images_given_the_mirrored_pass():
    from types import SimpleNamespace

    from benchmarks.decoding import time_inference

    class Model:
        def predict(self, pixels):
            return SimpleNamespace(flip_averaged=np.array([pixels.mean() > 100]))

    inputs = np.stack([np.full((4, 4, 1), value, np.uint8) for value in (0, 200, 50, 250)])
    timed = time_inference(Model(), inputs, repeats=2)
    assert timed["flip_averaged_share"] == 0.5 and timed["p50_ms"] >= 0


# The tflite-runtime 2.14 venv (Python 3.11) holds the interpreter, numpy and Pillow, none of the
# project's packages (the Makefile's .venv-tflite214).
_NOT_IN_THE_TFLITE214_VENV = ("pneumoscan", "pneumoscan_eval", "pneumoscan_cli", "training", "keras",
                              "tensorflow")


def test_the_runtime_probe_runs_without_the_projects_packages(tmp_path):
    """`make bench` runs the probe under the tflite-runtime 2.14 venv: it imported
    pneumoscan_eval through benchmarks.common there and the peer runtime was skipped."""
    from pneumoscan.model import PneumoniaModel, default_model_dir

    from benchmarks.common import probe_pythonpath
    height, width, channels = PneumoniaModel().input_shape
    np.save(tmp_path / "inputs.npy", np.zeros((2, height, width, channels), np.uint8))
    blocked = repr(_NOT_IN_THE_TFLITE214_VENV)
    launcher = (
        "import runpy, sys\n"
        "class Absent:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {blocked}:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}')\n"
        "sys.meta_path.insert(0, Absent())\n"
        "sys.argv = sys.argv[1:]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    completed = subprocess.run(
        [sys.executable, "-c", launcher, str(REPO_ROOT / "benchmarks" / "runtime_probe.py"), "litert-int8",
         str(default_model_dir()), str(tmp_path / "inputs.npy")],
        capture_output=True, text=True, cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": probe_pythonpath()})
    assert completed.returncode == 0, completed.stderr[-2000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["per_image"]["n"] == 2 and len(result["probabilities"]) == 2
