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


def summarise(heat: np.ndarray, image_size: tuple[int, int]) -> CamSummary:
    """Hot region (image pixels), border and outside-chest shares of a heat map."""
    grid = upsample(heat, (ANALYSIS_GRID, ANALYSIS_GRID))
    total = float(grid.sum())
    if total <= 0.0:
        return CamSummary(None, 0.0, 0.0)
    border = round(ANALYSIS_GRID * BORDER_FRACTION)
    inner = float(grid[border:-border, border:-border].sum())
    left, top, right, bottom = (round(edge * ANALYSIS_GRID) for edge in CHEST_BOX)
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
