"""The lung field: where the lungs lie in the model's input, so the classifier reads them.

The classifier learned on the frame before: borders, markers, collimation and body size
carried the label, and they are what differs between collections, hospitals and ages.
So the scorer first runs a small int8 U-Net (`lungs.tflite`, model.json `lung_field`) on
the stretched input, takes the box around the lungs from its mask, widens it by a margin
and crops that box, stretched back to the classifier's input size. The classifier was
trained on exactly these crops (`training.pipeline` boxes every training image with this
module), so its input never holds much more than the chest.

A mask that fails its sanity checks (too small, too large, off-centre, one-sided) is not
trusted: the scorer crops the box typical of the training images instead and warns
`lung_field_not_found`. A failed segmentation is never a silent crop.

numpy and the LiteRT interpreter only; the crop is `tf.image.crop_and_resize`'s bilinear
sampling, written in numpy so training and the Lambda cut the same pixels.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from collections.abc import Mapping
from typing import Any

import numpy as np

from .litert import Interpreter, ModelLoadError

SEGMENTER_FILE = "lungs.tflite"
SEGMENTER_SIZE = 128
MASK_OUTPUT = "mask"
LUNG_FIELD_NOT_FOUND = "lung_field_not_found"
# Share of mask pixels ignored on each side when the box is taken: a stray speck of mask
# in a corner must not stretch the box over the frame.
BOX_QUANTILE = 0.01


@dataclass(frozen=True)
class Box:
    """A box in the stretched image, as fractions of its width and height."""

    left: float
    top: float
    right: float
    bottom: float

    @property
    def width(self) -> float:
        return self.right - self.left

    @property
    def height(self) -> float:
        return self.bottom - self.top

    def widened(self, margin: float) -> Box:
        """`margin` of the box's own size added on every side, kept inside the image."""
        dx, dy = margin * self.width, margin * self.height
        return Box(max(0.0, self.left - dx), max(0.0, self.top - dy),
                   min(1.0, self.right + dx), min(1.0, self.bottom + dy))

    def as_list(self) -> list[float]:
        return [round(v, 4) for v in (self.left, self.top, self.right, self.bottom)]

    @classmethod
    def from_list(cls, values) -> Box:
        left, top, right, bottom = (float(v) for v in values)
        if not (0.0 <= left < right <= 1.0 and 0.0 <= top < bottom <= 1.0):
            raise ValueError(f"{values} is not a box inside the image")
        return cls(left, top, right, bottom)


@dataclass(frozen=True)
class LungFieldSpec:
    """model.json `lung_field`: the segmenter file and the rules that turn its mask into a crop."""

    file: str
    sha256: str
    size_bytes: int
    size: int = SEGMENTER_SIZE  # the segmenter's square input, in pixels
    threshold: float = 0.5  # mask probability that counts as lung
    margin: float = 0.06  # of the lung box's size, added on every side before cropping
    # Sanity limits of a believable lung field (fractions of the image).
    min_area: float = 0.06
    max_area: float = 0.75
    # One lung alone is about a third of the image wide and off centre: a box narrower than
    # this, or centred farther out, has missed a lung (often the one a consolidation whitened).
    min_width: float = 0.42
    min_height: float = 0.30
    max_centre_offset: float = 0.15  # of the box centre from the image centre, per axis
    # The crop used when the mask is not believed: typical of the training images' boxes.
    fallback: Box = Box(0.08, 0.06, 0.92, 0.94)

    @classmethod
    def from_dict(cls, section: Mapping[str, Any]) -> LungFieldSpec:
        values = dict(section)
        if "fallback" in values:
            values["fallback"] = Box.from_list(values["fallback"])
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256, "size_bytes": self.size_bytes, "size": self.size,
                "threshold": self.threshold, "margin": self.margin, "min_area": self.min_area,
                "max_area": self.max_area, "min_width": self.min_width, "min_height": self.min_height,
                "max_centre_offset": self.max_centre_offset,
                "fallback": self.fallback.as_list()}


@dataclass(frozen=True)
class LungField:
    """What the segmenter found in one image, and the crop the classifier reads."""

    lungs: Box | None  # the box around the mask; None when the mask is empty
    area: float  # mask share of the image
    found: bool  # the mask passed every sanity check
    problem: str | None  # which check failed, when one did
    crop: Box  # the lung box widened by the margin, or the fallback crop


def box_from_mask(mask: np.ndarray, threshold: float) -> Box | None:
    """The box around the mask's pixels above `threshold`, trimmed by BOX_QUANTILE per side."""
    rows, cols = np.nonzero(np.asarray(mask) > threshold)
    if rows.size < 4:
        return None
    height, width = mask.shape[:2]
    low, high = BOX_QUANTILE, 1.0 - BOX_QUANTILE
    top, bottom = np.quantile(rows, (low, high))
    left, right = np.quantile(cols, (low, high))
    return Box(float(left / width), float(top / height), float((right + 1) / width), float((bottom + 1) / height))


def box_iou(a: Box, b: Box) -> float:
    width = max(0.0, min(a.right, b.right) - max(a.left, b.left))
    height = max(0.0, min(a.bottom, b.bottom) - max(a.top, b.top))
    inter = width * height
    return inter / (a.width * a.height + b.width * b.height - inter)


def lung_field(mask: np.ndarray, spec: LungFieldSpec) -> LungField:
    """Mask -> box -> sanity checks -> the crop to classify."""
    mask = np.asarray(mask, dtype=np.float32)
    on = mask > spec.threshold
    area = float(on.mean())
    box = box_from_mask(mask, spec.threshold)
    problem = _problem(box, area, spec)
    if problem:
        return LungField(box, area, False, problem, spec.fallback)
    return LungField(box, area, True, None, box.widened(spec.margin))


def _problem(box: Box | None, area: float, spec: LungFieldSpec) -> str | None:
    if box is None or area < spec.min_area:
        return "mask too small"
    if area > spec.max_area:
        return "mask too large"
    if box.width < spec.min_width or box.height < spec.min_height:
        return "box too small"
    if (abs((box.left + box.right) / 2 - 0.5) > spec.max_centre_offset
            or abs((box.top + box.bottom) / 2 - 0.5) > spec.max_centre_offset):
        return "box off centre"
    return None


def crop_and_resize(pixels: np.ndarray, box: Box, height: int, width: int) -> np.ndarray:
    """(H, W, C) -> (height, width, C) float32: bilinear samples of `box`, as
    `tf.image.crop_and_resize` takes them (corner samples on the box's edges)."""
    source = np.asarray(pixels, dtype=np.float32)
    rows, cols = source.shape[:2]
    ys = _sample_positions(box.top, box.bottom, rows, height)
    xs = _sample_positions(box.left, box.right, cols, width)
    y0 = np.clip(np.floor(ys).astype(np.int64), 0, rows - 1)
    x0 = np.clip(np.floor(xs).astype(np.int64), 0, cols - 1)
    y1, x1 = np.minimum(y0 + 1, rows - 1), np.minimum(x0 + 1, cols - 1)
    wy = (ys - y0).astype(np.float32)[:, None, None]
    wx = (xs - x0).astype(np.float32)[None, :, None]
    top = source[y0][:, x0] * (1 - wx) + source[y0][:, x1] * wx
    bottom = source[y1][:, x0] * (1 - wx) + source[y1][:, x1] * wx
    return top * (1 - wy) + bottom * wy


def _sample_positions(start: float, end: float, size: int, count: int) -> np.ndarray:
    if count == 1:
        return np.array([0.5 * (start + end) * (size - 1)])
    return start * (size - 1) + np.arange(count) * ((end - start) * (size - 1) / (count - 1))


def crop_input(pixels: np.ndarray, box: Box) -> np.ndarray:
    """The classifier's uint8 input: `box` of the stretched input, stretched back to its size."""
    height, width = pixels.shape[:2]
    return np.clip(np.rint(crop_and_resize(pixels, box, height, width)), 0, 255).astype(np.uint8)


# Uniform bands along the edges (collimation, letterboxing, an exported black or white
# frame) are trimmed before segmenting: a row or column whose grey levels between its 5th and
# 95th percentile span at most FRAME_SPREAD levels is frame, not anatomy (a burned-in letter
# in the band stays under 5 % of its pixels). At most MAX_FRAME_TRIM of each side goes.
FRAME_SPREAD = 10
MAX_FRAME_TRIM = 0.3


def frame_box(pixels: np.ndarray) -> Box:
    """The image without the uniform bands along its edges, as a box of the image."""
    image = np.asarray(pixels)[..., 0] if np.asarray(pixels).ndim == 3 else np.asarray(pixels)
    height, width = image.shape
    top, bottom = _leading_uniform(image), _leading_uniform(image[::-1])
    left, right = _leading_uniform(image.T), _leading_uniform(image.T[::-1])
    return Box(left / width, top / height, 1.0 - right / width, 1.0 - bottom / height)


def _leading_uniform(lines: np.ndarray) -> int:
    """How many of the first rows of `lines` are uniform, up to MAX_FRAME_TRIM of them (only
    those are looked at: this runs on every image)."""
    limit = int(MAX_FRAME_TRIM * len(lines))
    uniform = percentile_spread(lines[:limit]) <= FRAME_SPREAD
    return int(np.argmin(uniform)) if not uniform.all() else limit


def percentile_spread(lines: np.ndarray, low: float = 5.0, high: float = 95.0) -> np.ndarray:
    """Per row, its `high` minus its `low` percentile, as np.percentile's default (linear)
    method gives them, from one partial sort instead of two full ones."""
    count = lines.shape[1]
    positions = (np.array([low, high]) / 100.0) * (count - 1)
    below = np.floor(positions).astype(int)
    above = np.minimum(below + 1, count - 1)
    ordered = np.partition(lines, np.unique(np.r_[below, above]), axis=1).astype(np.float64)
    fraction = positions - below
    values = ordered[:, below] + (ordered[:, above] - ordered[:, below]) * fraction
    return values[:, 1] - values[:, 0]


def within(outer: Box, inner: Box) -> Box:
    """`inner`, given as fractions of `outer`, as fractions of the whole image."""
    return Box(outer.left + inner.left * outer.width, outer.top + inner.top * outer.height,
               outer.left + inner.right * outer.width, outer.top + inner.bottom * outer.height)


class LungSegmenter:
    """The int8 U-Net: a (H, W, 1) uint8 image in, its lung field out."""

    def __init__(self, model_dir: Path | str, spec: LungFieldSpec, *, num_threads: int = 1,
                 verify_checksum: bool = True):
        self.spec = spec
        path = Path(model_dir) / spec.file
        try:
            model_bytes = path.read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"cannot read the lung segmenter {path}: {exc}") from exc
        digest = hashlib.sha256(model_bytes).hexdigest()
        if verify_checksum and digest != spec.sha256:
            raise ModelLoadError(f"{spec.file} has sha256 {digest}, model.json says {spec.sha256}")
        try:
            self._interpreter = Interpreter(model_content=model_bytes, num_threads=num_threads)
            self._interpreter.allocate_tensors()
            runner = self._interpreter.get_signature_runner()
            self._input = next(iter(runner.get_input_details().values()))
            self._output = runner.get_output_details()[MASK_OUTPUT]
            del runner
        except (ValueError, RuntimeError, KeyError, StopIteration) as exc:
            raise ModelLoadError(f"{spec.file} is not a usable lung segmenter: {exc}") from exc

    def mask(self, pixels: np.ndarray, box: Box = Box(0.0, 0.0, 1.0, 1.0)) -> np.ndarray:
        """(size, size) lung probability of `box` of a (H, W, 1) uint8 image, stretched to the
        segmenter's size."""
        size = self.spec.size
        image = np.asarray(pixels, dtype=np.uint8)
        if image.shape[:2] != (size, size) or box != Box(0.0, 0.0, 1.0, 1.0):
            image = np.clip(np.rint(crop_and_resize(image, box, size, size)), 0, 255).astype(np.uint8)
        self._interpreter.set_tensor(self._input["index"], np.ascontiguousarray(image[np.newaxis, :, :, :1]))
        self._interpreter.invoke()
        values = self._interpreter.get_tensor(self._output["index"])
        scale, zero_point = self._output["quantization"]
        if scale:
            values = (values.astype(np.float32) - zero_point) * scale
        return values[0, :, :, 0].astype(np.float32, copy=False)

    def find(self, pixels: np.ndarray) -> LungField:
        """The lung field of the image inside its uniform edge bands, in whole-image fractions."""
        frame = frame_box(pixels)
        field = lung_field(self.mask(pixels, frame), self.spec)
        if not field.found:
            return field
        return LungField(within(frame, field.lungs), field.area, True, None, within(frame, field.crop))
