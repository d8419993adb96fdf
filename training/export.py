"""Keras model -> int8 `.tflite` with uint8 input and float outputs.

The convolutional trunk and the dense head are int8 (weights and activations, calibrated
on train images). Two ends stay in float:
- the per-image standardisation: in int8 its mean, squared differences and scaling of
  every pixel run as broadcast int8 ops that XNNPACK does not take, on the interpreter's
  reference kernels, which cost about 37 % of the whole inference; in float XNNPACK runs
  them in the same delegated graph as the trunk, and the statistics are exact;
- the final sigmoid: an int8 sigmoid output has only 256 levels and collapses
  near-certain scores into ties, which costs AUC.
The input is the raw uint8 pixels, cast to float inside the graph.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from pneumoscan.model import FEATURE_MAP_OUTPUT, PROBABILITY_OUTPUT

from .architecture import FEATURE_MAP_LAYER, PROBABILITY_LAYER

INPUT_NAME = "image"
# Kept in float (see module docstring): the standardisation's ops and the sigmoid. MEAN is
# also the global average pooling, which then reads the float feature map the graph outputs anyway.
FLOAT_OPS = ["MEAN", "SQUARED_DIFFERENCE", "SUB", "MAXIMUM", "RSQRT", "MUL", "LOGISTIC"]


# The classifier's signature outputs, by the Keras model's output names.
CLASSIFIER_OUTPUTS = {PROBABILITY_OUTPUT: PROBABILITY_LAYER, FEATURE_MAP_OUTPUT: FEATURE_MAP_LAYER}


def _export_saved_model(model: keras.Model, directory: Path, height: int, width: int,
                        channels: int, input_dtype: tf.DType, outputs: dict[str, str]) -> None:
    """A SavedModel whose serving signature returns exactly the contract's output names
    (`outputs`: signature name -> the Keras model's output name).

    The signature takes pixel values in [0, 255] as `input_dtype` and casts them to float.
    """
    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(image):
        result = model(tf.cast(image, tf.float32), training=False)
        return {name: result[layer] for name, layer in outputs.items()}

    archive.add_endpoint(
        name="serve", fn=serve,
        input_signature=[tf.TensorSpec([None, height, width, channels], input_dtype, name=INPUT_NAME)])
    archive.write_out(str(directory), verbose=False)


def representative_images(images: np.ndarray, count: int, seed: int) -> np.ndarray:
    """A class-agnostic random sample of train images for calibration."""
    rng = np.random.default_rng(seed)
    return images[rng.choice(len(images), size=min(count, len(images)), replace=False)]


def convert_int8(model: keras.Model, calibration: np.ndarray,
                 outputs: dict[str, str] = CLASSIFIER_OUTPUTS) -> bytes:
    height, width, channels = calibration.shape[1:]

    def dataset() -> Iterator[list[np.ndarray]]:
        for image in calibration:
            yield [image[np.newaxis].astype(np.uint8)]

    with tempfile.TemporaryDirectory() as tmp:
        _export_saved_model(model, Path(tmp), height, width, channels, tf.uint8, outputs)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=["serve"])
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                               tf.lite.OpsSet.TFLITE_BUILTINS]
        # The debugger's converter is the one that takes a list of ops to leave in float.
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=dataset,
            debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=FLOAT_OPS))
        return bytes(debugger.get_nondebug_quantized_model())


def convert_float(model: keras.Model, height: int, width: int, channels: int,
                  outputs: dict[str, str] = CLASSIFIER_OUTPUTS) -> bytes:
    """The float32 reference `.tflite` (same signature, float input) for benchmarks."""
    with tempfile.TemporaryDirectory() as tmp:
        _export_saved_model(model, Path(tmp), height, width, channels, tf.float32, outputs)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=["serve"])
        return converter.convert()
