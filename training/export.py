"""Keras model -> full-integer int8 `.tflite` with uint8 input and float outputs.

The graph is int8 end to end (weights and activations, calibrated on train images)
except the final sigmoid, which is left in float: an int8 sigmoid output has only
256 levels and collapses near-certain scores into ties, which costs AUC.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tensorflow.lite.python.util import modify_model_io_type

from pneumoscan.model import FEATURE_MAP_OUTPUT, PROBABILITY_OUTPUT

from .architecture import FEATURE_MAP_LAYER, PROBABILITY_LAYER

INPUT_NAME = "image"
# The one op kept in float (see module docstring).
FLOAT_OPS = ["LOGISTIC"]


def _export_saved_model(model: keras.Model, directory: Path, height: int, width: int,
                        channels: int) -> None:
    """A SavedModel whose serving signature returns exactly the contract's output names.

    The signature takes float pixels in [0, 255]; the converter turns that into a
    uint8 input whose quantization is checked to be the identity.
    """
    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(image):
        outputs = model(image, training=False)
        return {PROBABILITY_OUTPUT: outputs[PROBABILITY_LAYER],
                FEATURE_MAP_OUTPUT: outputs[FEATURE_MAP_LAYER]}

    archive.add_endpoint(
        name="serve", fn=serve,
        input_signature=[tf.TensorSpec([None, height, width, channels], tf.float32, name=INPUT_NAME)])
    archive.write_out(str(directory), verbose=False)


def representative_images(images: np.ndarray, count: int, seed: int) -> np.ndarray:
    """A class-agnostic random sample of train images for calibration.

    One sample gets a black and a white pixel so the calibrated input range is
    exactly [0, 255]: the uint8 input then carries raw pixel values (scale 1, zero 0).
    """
    rng = np.random.default_rng(seed)
    chosen = images[rng.choice(len(images), size=min(count, len(images)), replace=False)].copy()
    chosen[0, 0, 0, :] = 0
    chosen[0, 0, 1, :] = 255
    return chosen


def convert_int8(model: keras.Model, calibration: np.ndarray) -> bytes:
    height, width, channels = calibration.shape[1:]

    def dataset() -> Iterator[list[np.ndarray]]:
        for image in calibration:
            yield [image[np.newaxis].astype(np.float32)]

    with tempfile.TemporaryDirectory() as tmp:
        _export_saved_model(model, Path(tmp), height, width, channels)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=["serve"])
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                               tf.lite.OpsSet.TFLITE_BUILTINS]
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=dataset,
            debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=FLOAT_OPS))
        # The debugger path keeps float I/O; swap the input's QUANTIZE for a uint8
        # input, exactly what the converter does for inference_input_type=uint8.
        return bytes(modify_model_io_type(debugger.get_nondebug_quantized_model(),
                                          inference_input_type=tf.uint8))


def convert_float(model: keras.Model, height: int, width: int, channels: int) -> bytes:
    """The float32 reference `.tflite` (same signature, float input) for benchmarks."""
    with tempfile.TemporaryDirectory() as tmp:
        _export_saved_model(model, Path(tmp), height, width, channels)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=["serve"])
        return converter.convert()
