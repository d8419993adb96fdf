"""What an exported `.tflite` graph looks like to LiteRT: the layout its speed depends on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumoscan.model import Interpreter

INT8_LAYERS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


@dataclass(frozen=True)
class GraphLayout:
    input_dtype: type
    input_quantization: tuple[float, int]
    ops: list[tuple[str, type]]  # (op, dtype of its first output) in graph order
    delegate_partitions: int

    def ops_before_first(self, name: str) -> list[tuple[str, type]]:
        return self.ops[:[op for op, _ in self.ops].index(name)]


def graph_layout(tflite: Path) -> GraphLayout:
    interpreter = Interpreter(model_path=str(tflite), num_threads=1)
    interpreter.allocate_tensors()
    dtypes = {tensor["index"]: tensor["dtype"] for tensor in interpreter.get_tensor_details()}
    # The Python interpreter lists its nodes only through this private call.
    ops = [(op["op_name"], dtypes.get(op["outputs"][0])) for op in interpreter._get_ops_details()]
    (image,) = interpreter.get_input_details()
    return GraphLayout(input_dtype=image["dtype"], input_quantization=tuple(image["quantization"]),
                       ops=[op for op in ops if op[0] != "DELEGATE"],
                       delegate_partitions=sum(op == "DELEGATE" for op, _ in ops))


def assert_fast_layout(tflite: Path) -> None:
    """Raw uint8 pixels in; the per-image standardisation in float (exact, and in XNNPACK:
    in int8 its broadcast ops fell back to reference kernels, ~37 % of the inference); the
    trunk and head int8; the whole graph one XNNPACK partition."""
    layout = graph_layout(tflite)
    assert layout.input_dtype is np.uint8 and layout.input_quantization == (0.0, 0)
    standardisation = layout.ops_before_first("QUANTIZE")
    assert standardisation[0] == ("CAST", np.float32)
    assert {op for op, _ in standardisation} >= {"MEAN", "RSQRT", "MUL"}
    assert all(dtype is np.float32 for _, dtype in standardisation)
    assert all(dtype is np.int8 for op, dtype in layout.ops if op in INT8_LAYERS)
    assert sum(op == "CONV_2D" for op, _ in layout.ops) >= 5
    assert layout.delegate_partitions == 1
