"""What every benchmark section shares: the sample images, core pinning, percentiles,
and running a probe in a fresh process that answers with one JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from benchmarks.measure import peak_rss_mb, summarize  # noqa: F401 - the sections import them from here
from pneumoscan_eval.datasets import FULLRES_SET, LABELS, default_data_dir

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO_ROOT / "benchmarks"
DEFAULT_DATA = default_data_dir()
# The warm handler targets are "on one core"; core 0 runs the code under test, core 1
# is left to the local stack's moto server so it does not steal the measured core.
MEASURED_CORE = 0
SERVER_CORE = 1


@dataclass(frozen=True)
class Sample:
    name: str  # "<label>/<file name>", unique within the sample
    label: str
    data: bytes
    width: int
    height: int

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6


def load_samples(data_dir: Path, limit: int | None = None) -> list[Sample]:
    """The full-resolution originals, in a stable order that alternates the two labels."""
    root = Path(data_dir) / FULLRES_SET
    by_label = [sorted((root / label).glob("*.jp*g")) for label in LABELS]
    if not any(by_label):
        raise FileNotFoundError(f"no JPEGs under {root}/{{{','.join(LABELS)}}}")
    ordered = [path for pair in zip(*by_label) for path in pair]
    shorter = min(len(paths) for paths in by_label)
    ordered += [path for paths in by_label for path in paths[shorter:]]
    samples = []
    for path in ordered[:limit]:
        with Image.open(path) as image:  # header only
            width, height = image.size
        samples.append(Sample(f"{path.parent.name}/{path.name}", path.parent.name, path.read_bytes(),
                              width, height))
    return samples


def run_probe(argv: list[str], *, cores: Iterable[int] = (MEASURED_CORE,), env: dict | None = None,
              python: str | Path = sys.executable, timeout: float = 900) -> dict:
    """Run `python argv...` in a fresh process pinned to `cores`; its last stdout line is JSON."""
    cores = set(cores)
    full_env = {**os.environ, "PYTHONPATH": probe_pythonpath(), "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    completed = subprocess.run([str(python), *argv], capture_output=True, text=True, env=full_env,
                               cwd=REPO_ROOT, timeout=timeout,
                               preexec_fn=lambda: os.sched_setaffinity(0, cores))
    lines = completed.stdout.strip().splitlines()
    if completed.returncode != 0 or not lines:
        # The exception line is the useful part of a traceback.
        last = (completed.stderr.strip().splitlines() or ["no output"])[-1][:500]
        raise RuntimeError(f"{Path(str(argv[0])).name} {' '.join(map(str, argv[1:2]))} exited "
                           f"{completed.returncode}: {last}")
    return json.loads(lines[-1])


def probe_pythonpath() -> str:
    # The repo root makes `benchmarks` importable; functions/scorer makes `pneumoscan` and the
    # handler module importable the way the Lambda zip lays them out, even in a venv without
    # the editable install (the tflite-runtime 2.14 one).
    parts = [str(REPO_ROOT), str(REPO_ROOT / "functions" / "scorer")]
    if os.environ.get("PYTHONPATH"):
        parts.append(os.environ["PYTHONPATH"])
    return os.pathsep.join(parts)
