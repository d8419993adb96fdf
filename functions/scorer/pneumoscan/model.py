"""Loading and running the quantized pneumonia model with LiteRT.

The `.tflite` and its `model.json` travel together in one folder; the metadata is
the only place the threshold, labels and input geometry are written down.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

try:
    from ai_edge_litert.interpreter import Interpreter
except ImportError:  # older images only ship the pre-rename runtime
    from tflite_runtime.interpreter import Interpreter

METADATA_FILE = "model.json"
MODEL_DIR_ENV = "PNEUMOSCAN_MODEL_DIR"
PROBABILITY_OUTPUT = "probability"
FEATURE_MAP_OUTPUT = "feature_map"


class ModelLoadError(RuntimeError):
    """The model folder is missing, incomplete or does not match its metadata."""


def default_model_dir() -> Path:
    """`$PNEUMOSCAN_MODEL_DIR`, else `model/` beside the code (Lambda zip) or at the repo root."""
    if os.environ.get(MODEL_DIR_ENV):
        return Path(os.environ[MODEL_DIR_ENV])
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "model", here.parents[2] / "model"):
        if (candidate / METADATA_FILE).is_file():
            return candidate
    return here.parents[2] / "model"


@dataclass(frozen=True)
class Prediction:
    probability: np.ndarray  # (N,) float32, P(pneumonia)
    feature_map: np.ndarray  # (N, h, w, k) float32, last convolutional block


class PneumoniaModel:
    """A LiteRT interpreter plus the metadata that says how to feed and read it."""

    def __init__(self, model_dir: Path | str | None = None, *, num_threads: int = 1,
                 verify_checksum: bool = True):
        self.model_dir = Path(model_dir) if model_dir else default_model_dir()
        metadata_path = self.model_dir / METADATA_FILE
        try:
            self.metadata = json.loads(metadata_path.read_text())
            model_bytes = (self.model_dir / self.metadata["file"]).read_bytes()
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"cannot read the model in {self.model_dir}: {exc}") from exc
        digest = hashlib.sha256(model_bytes).hexdigest()
        if verify_checksum and digest != self.metadata.get("sha256"):
            raise ModelLoadError(
                f"{self.metadata['file']} has sha256 {digest}, model.json says {self.metadata.get('sha256')}")
        try:
            self._interpreter = Interpreter(model_content=model_bytes, num_threads=num_threads)
            self._interpreter.allocate_tensors()
            # The signature names the outputs; only its tensor indices are kept, because a live
            # runner would pin buffers and block resizing the batch later.
            runner = self._interpreter.get_signature_runner()
            self._input = next(iter(runner.get_input_details().values()))
            outputs = runner.get_output_details()
            self._outputs = {name: outputs[name] for name in (PROBABILITY_OUTPUT, FEATURE_MAP_OUTPUT)}
            del runner
        except (ValueError, RuntimeError, KeyError, StopIteration) as exc:
            raise ModelLoadError(f"{self.metadata['file']} is not a usable pneumoscan model: {exc}") from exc
        self._batch_size = int(self._input["shape"][0])

    @property
    def version(self) -> str:
        return self.metadata["version"]

    @property
    def sha256(self) -> str:
        return self.metadata["sha256"]

    @property
    def threshold(self) -> float:
        return float(self.metadata["threshold"])

    @cached_property
    def input_shape(self) -> tuple[int, int, int]:
        """(height, width, channels) of one image."""
        spec = self.metadata["input"]
        return int(spec["height"]), int(spec["width"]), int(spec["channels"])

    def label(self, probability: float) -> str:
        negative, positive = self.metadata["labels"]
        return positive if probability >= self.threshold else negative

    def predict(self, images: np.ndarray) -> Prediction:
        """Run a uint8 batch of shape (N, height, width, channels)."""
        images = np.asarray(images, dtype=np.uint8)
        if images.ndim == 3:
            images = images[np.newaxis]
        if images.shape[1:] != self.input_shape:
            raise ValueError(f"expected images of shape {self.input_shape}, got {images.shape[1:]}")
        if images.shape[0] != self._batch_size:
            self._interpreter.resize_tensor_input(self._input["index"], list(images.shape))
            self._interpreter.allocate_tensors()
            self._batch_size = images.shape[0]
        self._interpreter.set_tensor(self._input["index"], images)
        self._interpreter.invoke()
        probability = self._read(PROBABILITY_OUTPUT).reshape(images.shape[0])
        return Prediction(probability, self._read(FEATURE_MAP_OUTPUT))

    def _read(self, name: str) -> np.ndarray:
        detail = self._outputs[name]
        values = self._interpreter.get_tensor(detail["index"])
        scale, zero_point = detail["quantization"]
        if scale:
            return (values.astype(np.float32) - zero_point) * scale
        return values.astype(np.float32, copy=False)
