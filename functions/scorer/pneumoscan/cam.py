"""Class activation maps: where in the X-ray the model found its evidence.

The model ends in global average pooling then one dense unit, so its logit is the mean
over the feature grid of `feature_map @ weights + bias`. That per-cell sum is the class
activation map (Zhou et al. 2016): no gradients, one small matrix product per image,
cheap enough to run on every image in the Lambda. numpy and Pillow only.

Heat is the evidence for the label the model gave: the positive part of the map for
the positive label, of its negation for the negative one. The hot region, the border
share and the chest share are measured on the heat stretched over the whole image,
exactly as the model input was stretched from it. Drawing the heat over the X-ray is
`pneumoscan.overlay`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .lungs import Box
from .model import CamUnavailable, CamWeights

# The hot region: cells at or above this share of the peak, connected to the peak.
HOT_FRACTION = 0.5
# Shortcut check: the outer 10 % of each side, where burned-in markers and borders sit.
BORDER_FRACTION = 0.10
# The chest, simply: a fixed box in stretched image coordinates (left, top, right, bottom).
# On these frontal radiographs the lungs and heart lie mostly inside it; side markers,
# shoulders, arms, the neck and the abdomen mostly fall outside. A box, not a lung mask:
# it only has to tell "heat on the chest" from "heat on the frame and its labels".
CHEST_BOX = (0.15, 0.10, 0.85, 0.90)
# An image is flagged when more than this share of its heat lies outside the chest box.
OUTSIDE_CHEST_FLAG = 0.5
# Shares are measured on a grid of this many cells a side (1 % steps), the hot region on
# a coarser one (2 % steps): growing it cell by cell costs time per step.
ANALYSIS_GRID = 100
HOT_REGION_GRID = 50


@dataclass(frozen=True)
class HotRegion:
    """Bounding box of the most activated region, in upright image pixels."""

    x: int
    y: int
    width: int
    height: int

    def as_dict(self) -> dict[str, int]:
        return {"x": self.x, "y": self.y, "width": self.width, "height": self.height}


@dataclass(frozen=True)
class CamSummary:
    hot_region: HotRegion | None  # None when the map holds no evidence at all
    border_share: float  # share of heat in the outer BORDER_FRACTION of the image
    outside_chest_share: float  # share of heat outside CHEST_BOX

    @property
    def outside_chest(self) -> bool:
        return self.outside_chest_share > OUTSIDE_CHEST_FLAG


def class_activation_map(feature_map: np.ndarray, cam: CamWeights) -> np.ndarray:
    """(h, w, k) feature map -> (h, w) map whose mean is the model's logit."""
    feature_map = np.asarray(feature_map, dtype=np.float32)
    if feature_map.ndim != 3 or feature_map.shape[-1] != cam.weights.size:
        raise CamUnavailable(
            f"feature map {feature_map.shape} does not match {cam.weights.size} cam weights")
    return feature_map @ cam.weights + np.float32(cam.bias)


def evidence(activation_map: np.ndarray, positive: bool) -> np.ndarray:
    """Non-negative heat for the label given: the positive label's, or the negative one's."""
    return np.maximum(activation_map if positive else -activation_map, 0.0)


def upsample(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear stretch of a (h, w) map to (width, height) = `size`, cell centres aligned."""
    stretched = Image.fromarray(np.ascontiguousarray(heat, dtype=np.float32), mode="F")
    return np.asarray(stretched.resize(size, Image.Resampling.BILINEAR))


def place(heat: np.ndarray, crop: Box) -> np.ndarray:
    """Heat of a crop (the network read `crop` of the image) -> heat over the whole image, on
    a grid of the same shape, bilinearly sampled, zero where the crop did not reach."""
    rows, cols = heat.shape
    u = (np.arange(cols) + 0.5) / cols
    v = (np.arange(rows) + 0.5) / rows
    inside = (((v >= crop.top) & (v <= crop.bottom))[:, None] & ((u >= crop.left) & (u <= crop.right))[None, :])
    x = np.clip((u - crop.left) / crop.width * cols - 0.5, 0, cols - 1)
    y = np.clip((v - crop.top) / crop.height * rows - 0.5, 0, rows - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, cols - 1), np.minimum(y0 + 1, rows - 1)
    wx, wy = (x - x0)[None, :], (y - y0)[:, None]
    sampled = ((heat[y0][:, x0] * (1 - wx) + heat[y0][:, x1] * wx) * (1 - wy)
               + (heat[y1][:, x0] * (1 - wx) + heat[y1][:, x1] * wx) * wy)
    return np.where(inside, sampled, 0.0).astype(np.float32)


def summarise(heat: np.ndarray, image_size: tuple[int, int], chest: Box | None = None) -> CamSummary:
    """Hot region (image pixels), border and outside-chest shares of a heat map. `chest` is
    the lung field where one was found, else CHEST_BOX stands for it."""
    grid = upsample(heat, (ANALYSIS_GRID, ANALYSIS_GRID))
    total = float(grid.sum())
    if total <= 0.0:
        return CamSummary(None, 0.0, 0.0)
    border = round(ANALYSIS_GRID * BORDER_FRACTION)
    inner = float(grid[border:-border, border:-border].sum())
    box = (chest.left, chest.top, chest.right, chest.bottom) if chest is not None else CHEST_BOX
    left, top, right, bottom = (round(edge * ANALYSIS_GRID) for edge in box)
    chest = float(grid[top:bottom, left:right].sum())
    return CamSummary(_hot_region(heat, image_size), 1.0 - inner / total, 1.0 - chest / total)


def _hot_region(heat: np.ndarray, image_size: tuple[int, int]) -> HotRegion:
    steps = HOT_REGION_GRID
    grid = upsample(heat, (steps, steps))
    peak = np.unravel_index(int(np.argmax(grid)), grid.shape)
    hot = grid >= HOT_FRACTION * grid[peak]
    region = np.zeros_like(hot)
    region[peak] = True
    # Grow from the peak through hot cells (4-connected) until nothing changes.
    while True:
        grown = region.copy()
        grown[1:] |= region[:-1]
        grown[:-1] |= region[1:]
        grown[:, 1:] |= region[:, :-1]
        grown[:, :-1] |= region[:, 1:]
        grown &= hot
        if np.array_equal(grown, region):
            break
        region = grown
    rows = np.flatnonzero(region.any(axis=1))
    cols = np.flatnonzero(region.any(axis=0))
    width, height = image_size
    x0, x1 = cols[0] * width // steps, -(-(cols[-1] + 1) * width // steps)
    y0, y1 = rows[0] * height // steps, -(-(rows[-1] + 1) * height // steps)
    return HotRegion(int(x0), int(y0), int(x1 - x0), int(y1 - y0))


# -- the heat map stored in a result item ----------------------------------------------------
# The item keeps the heat on the model's feature grid (14 x 14 cells) at 16 levels of the
# map's peak, two cells a byte, behind a two-byte header (rows, columns): 100 bytes instead
# of a PNG in S3, and enough to draw the overlay wherever it is looked at (the overlay
# stretches the grid bilinearly, so a level step of 1/15 of the peak does not show as a
# band). The peak is stored beside it (`heat_peak`) so the colour bar keeps its scale.
# 16 levels rather than 256 keep a typical item under DynamoDB's 1 KB write unit with room
# for long keys and warnings.
HEAT_LEVELS = 15


def encode_heat(heat: np.ndarray) -> bytes:
    """(h, w) non-negative heat -> bytes([h, w]) + its cells at 0-15 of the peak, two a byte, row by row."""
    heat = np.asarray(heat, dtype=np.float32)
    rows, cols = heat.shape
    if not (0 < rows < 256 and 0 < cols < 256):
        raise ValueError(f"a heat map of {rows}x{cols} cells does not fit the stored form")
    peak = float(heat.max())
    levels = np.zeros(heat.size, np.uint8) if peak <= 0 else np.clip(
        np.round(heat.reshape(-1) * (HEAT_LEVELS / peak)), 0, HEAT_LEVELS).astype(np.uint8)
    if levels.size % 2:
        levels = np.append(levels, np.uint8(0))
    return bytes((rows, cols)) + ((levels[0::2] << 4) | levels[1::2]).tobytes()


def decode_heat(data: bytes, peak: float = 1.0) -> np.ndarray:
    """The stored form back to (h, w) float heat whose maximum level is `peak`."""
    if len(data) < 2 or len(data) != 2 + (data[0] * data[1] + 1) // 2:
        raise ValueError(f"{len(data)} bytes are not a stored heat map")
    rows, cols = data[0], data[1]
    packed = np.frombuffer(data, np.uint8, offset=2)
    levels = np.stack([packed >> 4, packed & 0x0F], axis=1).reshape(-1)[:rows * cols]
    return levels.reshape(rows, cols).astype(np.float32) * np.float32(peak / HEAT_LEVELS)
