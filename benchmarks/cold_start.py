"""Cold start: a fresh Python process doing what a Lambda init does, timed step by step.

`python benchmarks/cold_start.py` is the probe: it imports the libraries in the order the
handler needs them, then imports the handler module `app`, whose own module-level work
(its clients, its one model load) is what is left, and prints one JSON line. Without a
handler module the init is the imports and a model load. `run()` starts it several
times, pinned to one core, and also times a bare interpreter start for reference.
Only the standard library is imported before the clock starts.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from pathlib import Path

LAMBDA_PACKAGES = Path(__file__).resolve().parent.parent / "build" / "bench-lambda"
# functions/scorer/Makefile's PYC_SKIP: the DICOM stack stays source in the artifact.
PYC_SKIP = "/(pydicom|highdicom|pylibjpeg|libjpeg|openjpeg|rle|jpeg_ls)/"
STEPS = (
    ("numpy", "numpy"),
    ("pillow", "PIL.Image"),
    ("litert", "ai_edge_litert.interpreter"),
    ("pneumoscan", "pneumoscan.images,pneumoscan.model"),
    ("botocore", "botocore.session"),
    ("powertools", "aws_lambda_powertools"),
)
# The handler's environment as template.yaml Globals set it; no AWS call is made at init.
LAMBDA_ENV = {
    "RESULTS_TABLE": "pneumoscan-bench", "IMAGES_BUCKET": "pneumoscan-bench",
    "INCOMING_PREFIX": "incoming/", "RESULTS_PREFIX": "results/",
    "POWERTOOLS_SERVICE_NAME": "pneumoscan", "POWERTOOLS_METRICS_NAMESPACE": "Pneumoscan",
    "POWERTOOLS_TRACE_DISABLED": "true", "LOG_LEVEL": "INFO", "INFERENCE_THREADS": "1",
    "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
}


def probe() -> dict:
    steps, start = {}, time.perf_counter()
    last = start
    for name, modules in STEPS:
        for module in modules.split(","):
            try:
                importlib.import_module(module)
            except ImportError:
                if name != "litert":  # tflite_runtime is the model loader's fallback
                    raise
        now = time.perf_counter()
        steps[f"import_{name}"] = (now - last) * 1e3
        last = now
    try:
        importlib.import_module("app")
        now = time.perf_counter()
        # The handler's init, its model load included (the one load a Lambda init does).
        steps["import_handler_module"] = (now - last) * 1e3
        handler = True
    except ModuleNotFoundError as exc:
        if exc.name != "app":
            raise
        from pneumoscan.model import PneumoniaModel
        PneumoniaModel(num_threads=1)
        now = time.perf_counter()
        steps["model_load"] = (now - last) * 1e3
        handler = False
    return {"steps_ms": {k: round(v, 2) for k, v in steps.items()},
            "handler_module_present": handler,
            "init_ms": round((now - start) * 1e3, 2),
            "peak_rss_mb": _peak_rss_mb()}


def _peak_rss_mb() -> float:
    # Imported only now: the clock has stopped, and the Lambda-like path lacks the repo's packages.
    root = Path(__file__).resolve().parent.parent
    sys.path += [str(root), str(root / "infra")]
    from benchmarks.common import peak_rss_mb
    return peak_rss_mb()


def run(repeats: int = 10) -> dict:
    """`repeats` fresh processes per layout; percentiles of each step and of the whole init."""
    import shutil
    import subprocess
    import tempfile

    from benchmarks.common import MEASURED_CORE, REPO_ROOT

    interpreter = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-S", "-c", "pass"], check=True,
                       preexec_fn=lambda: os.sched_setaffinity(0, {MEASURED_CORE}))
        interpreter.append(time.perf_counter() - start)
    result = {"repeats": repeats, "interpreter_start_ms": _summary(interpreter),
              "note": "warm page cache; Lambda's own runtime start and its first read of the zip are not included"}
    if not (LAMBDA_PACKAGES / ".installed").is_file():
        result["layouts"] = {"dev_venv": _layout(repeats, [], {})}
        result["reported"] = "dev_venv"
        result["note"] += f"; {LAMBDA_PACKAGES.relative_to(REPO_ROOT)} missing, so the dev venv's packages were used"
        return result
    with tempfile.TemporaryDirectory(prefix="pneumoscan-task-") as folder:
        # /var/task as the zip lays it out: the handler, pneumoscan and the packages; botocore
        # comes precompiled from the runtime. Nothing may write .pyc between runs.
        task = Path(folder) / "task"
        shutil.copytree(LAMBDA_PACKAGES / "task", task)
        shutil.copy2(REPO_ROOT / "functions" / "scorer" / "app.py", task)
        shutil.copytree(REPO_ROOT / "functions" / "scorer" / "pneumoscan", task / "pneumoscan",
                        ignore=shutil.ignore_patterns("__pycache__"))
        path = os.pathsep.join([str(task), str(LAMBDA_PACKAGES / "runtime")])
        environment = {"PYTHONPATH": path, "PYTHONDONTWRITEBYTECODE": "1",
                       "PNEUMOSCAN_MODEL_DIR": os.environ.get("PNEUMOSCAN_MODEL_DIR", str(REPO_ROOT / "model"))}
        layouts = {"zip_without_pyc": _layout(repeats, ["-S"], environment)}
        # What functions/scorer/Makefile does to the artifact (PYC_COMPILE, PYC_SKIP).
        subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash",
                        "-x", PYC_SKIP, str(task)], check=True, capture_output=True)
        layouts["zip_as_built"] = _layout(repeats, ["-S"], environment)
    return {**result, "layouts": layouts, "reported": "zip_as_built"}


def _layout(repeats: int, interpreter_flags: list[str], environment: dict) -> dict:
    from benchmarks.common import run_probe

    probes = [run_probe([*interpreter_flags, __file__], env={**LAMBDA_ENV, **environment}) for _ in range(repeats)]
    steps = {step: _summary([p["steps_ms"][step] / 1e3 for p in probes]) for step in probes[0]["steps_ms"]}
    return {"steps": steps, "init": _summary([p["init_ms"] / 1e3 for p in probes]),
            "handler_module_present": probes[0]["handler_module_present"],
            "peak_rss_mb_after_init": max(p["peak_rss_mb"] for p in probes)}


def _summary(seconds: list[float]) -> dict:
    from benchmarks.common import summarize
    return summarize(seconds)


if __name__ == "__main__":
    print(json.dumps(probe()))
