"""Per-item percentiles and a process's peak memory, on numpy and the standard library alone:
the runtime probe imports them under the tflite-runtime 2.14 venv, which holds none of the
project's packages (benchmarks.common needs pneumoscan_eval)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

__all__ = ["peak_rss_mb", "summarize"]


def summarize(seconds: Iterable[float]) -> dict:
    """p50/p95 (and friends) in milliseconds of a list of per-item durations in seconds."""
    values = np.asarray(list(seconds), dtype=np.float64) * 1e3
    if values.size == 0:
        return {"n": 0}
    return {"n": int(values.size), "p50_ms": round(float(np.percentile(values, 50)), 3),
            "p95_ms": round(float(np.percentile(values, 95)), 3),
            "mean_ms": round(float(values.mean()), 3), "min_ms": round(float(values.min()), 3)}


def peak_rss_mb(pid: int | str = "self") -> float:
    """VmHWM, the most resident memory the process's own address space ever had.

    Not getrusage's ru_maxrss: Linux carries that across fork + exec, so every probe
    would report at least the RSS of the benchmark process that started it.
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"/proc/{pid}/status has no VmHWM")
