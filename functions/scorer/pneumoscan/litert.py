"""The LiteRT interpreter, and the error for a model file that cannot be used.

The classifier (`pneumoscan.model`) and the lung segmenter (`pneumoscan.lungs`) both run on it.
"""

try:
    from ai_edge_litert.interpreter import Interpreter
except ImportError:  # older images only ship the pre-rename runtime
    from tflite_runtime.interpreter import Interpreter

__all__ = ["Interpreter", "ModelLoadError"]


class ModelLoadError(RuntimeError):
    """The model folder is missing, incomplete or does not match its metadata."""
