"""Decoding and preprocessing of X-ray images.

This is the one implementation used by training evaluation, the CLI and the Lambda,
so a model sees exactly the same pixels wherever it runs. Anything that is not a
usable image raises `ImageRejected` with a short machine-readable `reason`.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

SUPPORTED_FORMATS = ("JPEG", "PNG")
# A declared size above this is refused from the header, before any decoding: real
# radiographs stay below ~50 MP, and Pillow's own bomb limit (~89 MP) is far too lax
# for a 1-2 GB Lambda.
MAX_PIXELS = 52_000_000
MIN_SIDE = 64
# Objects larger than this are refused from their ContentLength, never downloaded.
MAX_BYTES = 64 * 1024 * 1024
RESAMPLING = Image.Resampling.BILINEAR

# Modes that map onto 8-bit greyscale or RGB without guessing.
_DIRECT_MODES = {"L": "L", "RGB": "RGB", "1": "L", "P": "RGB", "PA": "RGB",
                 "LA": "L", "RGBA": "RGB", "RGBX": "RGB", "CMYK": "RGB", "YCbCr": "RGB"}
# High bit-depth modes (16-bit PNG exports, float) are windowed to their own range.
_WIDE_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}


class ImageRejected(ValueError):
    """A permanent problem with the input: retrying cannot help."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class DecodedImage:
    """An upright 8-bit image ready for `to_model_input`, plus what the source was."""

    image: Image.Image
    width: int
    height: int
    format: str
    mode: str


def decode(data: bytes, *, target_size: tuple[int, int] | None = None) -> DecodedImage:
    """Decode JPEG or PNG bytes into an upright 8-bit L or RGB image.

    With `target_size` (width, height), JPEGs are decoded at the smallest DCT scale
    (1/2, 1/4, 1/8) that still covers it; that is several times faster on
    multi-megapixel radiographs and the later resize makes the result equivalent.
    """
    if not data:
        raise ImageRejected("empty", "the object has zero bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except UnidentifiedImageError as exc:
        raise ImageRejected("not_an_image", f"not a {' or '.join(SUPPORTED_FORMATS)} image") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected("too_many_pixels", str(exc)) from exc

    width, height = image.size
    source_format, source_mode = image.format or "unknown", image.mode
    if width * height > MAX_PIXELS:
        raise ImageRejected(
            "too_many_pixels", f"{width}x{height} declares more than {MAX_PIXELS} pixels")
    if min(width, height) < MIN_SIDE:
        raise ImageRejected("too_small", f"{width}x{height} is below the {MIN_SIDE} px minimum side")
    if source_mode not in _DIRECT_MODES and source_mode not in _WIDE_MODES:
        raise ImageRejected("unsupported_mode", f"pixel mode {source_mode} is not supported")

    try:
        if target_size is not None and source_format == "JPEG":
            image.draft(_DIRECT_MODES.get(source_mode, "RGB"), target_size)
        image.load()
        image = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError) as exc:
        # Pillow reports truncated files and broken scan data as OSError.
        raise ImageRejected("corrupt", f"{source_format} data could not be decoded ({exc})") from exc

    return DecodedImage(_to_8bit(image), width, height, source_format, source_mode)


def _to_8bit(image: Image.Image) -> Image.Image:
    if image.mode in _WIDE_MODES:
        pixels = np.asarray(image, dtype=np.float32)
        low, high = float(pixels.min()), float(pixels.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        return Image.fromarray(((pixels - low) * scale).round().astype(np.uint8), mode="L")
    target = _DIRECT_MODES[image.mode]
    return image if image.mode == target else image.convert(target)


def to_model_input(image: Image.Image, height: int, width: int, channels: int) -> np.ndarray:
    """Stretch (no aspect preservation, as the training copies are) to a uint8 HxWxC array."""
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (width, height):
        image = image.resize((width, height), RESAMPLING)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels.reshape(height, width, channels)


def load_model_input(data: bytes, height: int, width: int, channels: int,
                     *, reduced_decode: bool = True) -> tuple[np.ndarray, DecodedImage]:
    """Bytes -> model input array, the path every caller takes."""
    decoded = decode(data, target_size=(width, height) if reduced_decode else None)
    return to_model_input(decoded.image, height, width, channels), decoded
