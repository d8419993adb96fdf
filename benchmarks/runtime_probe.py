"""One inference runtime on the same preprocessed images, in a fresh process.

Run by `benchmarks.runtimes` once per runtime, pinned to one core, so every runtime
pays its own imports and sees the same process layout. Also runs under the Python 3.11
venv that holds tflite-runtime 2.14, which is why a .tflite is run through its own
signature with nothing but numpy and the interpreter (uint8 input for the int8 model,
float32 for the float32 one; the shipped `PneumoniaModel` is timed in `stages`).

    python benchmarks/runtime_probe.py RUNTIME MODEL INPUTS.npy [--threads N] [--batch N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

KERAS_RUNTIMES = ("keras-predict", "keras-call")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runtime")
    parser.add_argument("model", type=Path, help=".keras file, .tflite file or model folder")
    parser.add_argument("inputs", type=Path, help="uint8 (N,H,W,C) .npy from pneumoscan.images")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    images = np.load(args.inputs)

    start = time.perf_counter()
    if args.runtime in KERAS_RUNTIMES:
        predict, versions = _keras(args.runtime, args.model, args.threads)
    else:
        predict, versions = _tflite(args.model, args.threads)
    load_seconds = time.perf_counter() - start

    start = time.perf_counter()
    predict(images[: args.batch])
    first_seconds = time.perf_counter() - start

    per_image, probabilities = [], []
    for offset in range(0, len(images) - args.batch + 1, args.batch):
        start = time.perf_counter()
        probabilities.extend(predict(images[offset: offset + args.batch]))
        per_image.extend([(time.perf_counter() - start) / args.batch] * args.batch)

    from benchmarks.measure import peak_rss_mb, summarize
    print(json.dumps({"runtime": args.runtime, "threads": args.threads, "batch": args.batch,
                      "python": sys.version.split()[0], "versions": versions, "cores": sorted(os.sched_getaffinity(0)),
                      "import_and_load_ms": round(load_seconds * 1e3, 1),
                      "first_inference_ms": round(first_seconds * 1e3, 2),
                      "per_image": summarize(per_image), "peak_rss_mb": peak_rss_mb(),
                      "probabilities": [round(float(p), 6) for p in probabilities]}))


def _keras(runtime: str, path: Path, threads: int):
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    import training.architecture  # noqa: F401 - these two register the model's custom layers with Keras
    import training.ensemble  # noqa: F401
    model = keras.models.load_model(path, compile=False)
    input_dtype = model.inputs[0].dtype

    def probability(outputs) -> np.ndarray:
        if isinstance(outputs, dict):
            outputs = outputs["probability"]
        elif isinstance(outputs, (list, tuple)):
            outputs = outputs[0]
        return np.asarray(outputs, dtype=np.float32).reshape(-1)

    if runtime == "keras-predict":
        def predict(batch):
            return probability(model.predict(batch.astype(input_dtype), verbose=0))
    else:
        def predict(batch):
            return probability(model(tf.convert_to_tensor(batch, dtype=input_dtype), training=False))
    return predict, {"tensorflow": tf.__version__, "keras": keras.__version__}


def _tflite(path: Path, threads: int):
    """The model's own signature, fed in its input dtype (uint8 for int8, float32 for float32)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # the Python 3.11 venv has only the pre-rename runtime
        from tflite_runtime.interpreter import Interpreter
    runtime_package = Interpreter.__module__.split(".")[0]
    model_file = path / json.loads((path / "model.json").read_text())["file"] if path.is_dir() else path
    runner = Interpreter(model_path=str(model_file), num_threads=threads).get_signature_runner()
    (input_name, input_detail), = runner.get_input_details().items()
    scale, zero_point = runner.get_output_details()["probability"]["quantization"]

    def predict(batch):
        probability = runner(**{input_name: batch.astype(input_detail["dtype"])})["probability"].reshape(-1)
        return (probability.astype(np.float32) - zero_point) * scale if scale else probability

    from importlib.metadata import version
    return predict, {runtime_package: version(runtime_package.replace("_", "-"))}


if __name__ == "__main__":
    main()
