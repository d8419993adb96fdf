"""The same preprocessed images through every way of running the model, side by side.

The seed's approach (the float Keras model in TensorFlow, `model.predict` and a direct
call), LiteRT float32 and int8, and tflite-runtime 2.14 int8 from its own Python 3.11
venv. Each runtime is a fresh process pinned to one core that pays its own imports
(`runtime_probe.py`); then 1 vs 2 interpreter threads and batch 1 vs the SQS batch size
for the shipped int8 model.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import MEASURED_CORE, REPO_ROOT, SERVER_CORE, Sample, run_probe
from pneumoscan import scoring
from pneumoscan.model import PneumoniaModel, default_model_dir

PROBE = str(REPO_ROOT / "benchmarks" / "runtime_probe.py")
TFLITE214_VENV = REPO_ROOT / ".venv-tflite214"
REFERENCE = "reference"
BASELINE = "litert-int8"
FLOAT_REFERENCE = "keras-call"


def _runtimes(model_dir: Path) -> dict[str, dict]:
    """name -> how to run it; `missing` says why it cannot run here."""
    keras_file = model_dir / REFERENCE / "pneumoscan_float.keras"
    float32_file = model_dir / REFERENCE / "pneumoscan_float32.tflite"
    tflite214_python = TFLITE214_VENV / "bin" / "python"
    keras = {"model": keras_file, "missing": None if keras_file.is_file() else f"{keras_file} not found"}
    return {
        "keras-predict": keras,
        "keras-call": keras,
        "litert-f32": {"model": float32_file,
                       "missing": None if float32_file.is_file() else f"{float32_file} not found"},
        "litert-int8": {"model": model_dir},
        "tflite214-int8": {"model": model_dir, "python": tflite214_python,
                           "missing": None if (TFLITE214_VENV / ".installed").is_file()
                           else _tflite214_failure()},
    }


def _tflite214_failure() -> str:
    log = TFLITE214_VENV.with_suffix(".log")
    detail = log.read_text().strip().splitlines()[-3:] if log.is_file() else ["`make bench` creates it"]
    return f"tflite-runtime 2.14 venv {TFLITE214_VENV.name} did not install: " + " | ".join(detail)


def model_inputs(samples: list[Sample], model: PneumoniaModel, folder: Path) -> Path:
    """The samples through the shipped decoder, saved once for every runtime to read."""
    batch = np.stack([scoring.decode(sample.data, model.metadata.input)[0] for sample in samples])
    path = folder / "inputs.npy"
    np.save(path, batch)
    return path


def _probe(name: str, spec: dict, inputs: Path, *, threads: int = 1, batch: int = 1,
           cores: set[int] = frozenset({MEASURED_CORE})) -> dict:
    argv = [PROBE, name, str(spec["model"]), str(inputs), "--threads", str(threads), "--batch", str(batch)]
    python = spec.get("python")
    return run_probe(argv, cores=cores, **({"python": python} if python else {}))


def run(samples: list[Sample], *, batch_size: int, model_dir: Path | None = None) -> dict:
    model_dir = model_dir or default_model_dir()
    model = PneumoniaModel(model_dir)
    runtimes, skipped, probabilities = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="pneumoscan-bench-") as folder:
        inputs = model_inputs(samples, model, Path(folder))
        specs = _runtimes(model_dir)
        for name, spec in specs.items():
            if spec.get("missing"):
                skipped[name] = spec["missing"]
                continue
            try:
                result = _probe(name, spec, inputs)
            except RuntimeError as exc:
                skipped[name] = str(exc)
                continue
            probabilities[name] = np.array(result.pop("probabilities"))
            runtimes[name] = result
        layouts = {
            "threads_1_batch_1": runtimes.get(BASELINE),
            "threads_2_batch_1": _probe(BASELINE, specs[BASELINE], inputs, threads=2,
                                        cores={MEASURED_CORE, SERVER_CORE}),
            f"threads_1_batch_{batch_size}": _probe(BASELINE, specs[BASELINE], inputs, batch=batch_size),
        }
    for layout in layouts.values():
        if layout:
            layout.pop("probabilities", None)
    return {"images": len(samples), "runtimes": runtimes, "skipped": skipped,
            "ratios_p50_vs_litert_int8": _ratios(runtimes),
            "agreement_vs_float_keras": _agreement(probabilities, model),
            "threads_and_batch": {name: {"per_image": layout["per_image"], "cores": layout.get("cores")}
                                  for name, layout in layouts.items() if layout},
            "threads_note": "2 threads ran with both cores allowed; Lambda has 2 vCPUs only from 3538 MB"}


def _ratios(runtimes: dict) -> dict:
    if BASELINE not in runtimes:
        return {}
    base = runtimes[BASELINE]["per_image"]["p50_ms"]
    return {name: round(result["per_image"]["p50_ms"] / base, 2) for name, result in runtimes.items()}


def _agreement(probabilities: dict[str, np.ndarray], model: PneumoniaModel) -> dict:
    """How far each runtime's probabilities are from the float Keras model's, and label flips."""
    if FLOAT_REFERENCE not in probabilities:
        return {}
    reference = probabilities[FLOAT_REFERENCE]
    reference_labels = np.array([model.label(p) for p in reference])
    agreement = {}
    for name, values in probabilities.items():
        labels = np.array([model.label(p) for p in values])
        agreement[name] = {"max_abs_probability_diff": round(float(np.abs(values - reference).max()), 5),
                           "mean_abs_probability_diff": round(float(np.abs(values - reference).mean()), 5),
                           "label_flips": int((labels != reference_labels).sum())}
    return agreement
