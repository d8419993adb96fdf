"""Is an image outside what the model knows?

The model gives every decodable image a score, even a blank page or a photo of a cat.
Two checks, on what scoring computes anyway, say when that score means nothing:

- **blank_image** (a failure): the model input is near-constant. Its standard deviation
  is compared with `BLANK_MAX_STD`; every real radiograph of the training data is far
  above it, every blank, grey or white image far below.
- **out_of_distribution** (a warning; the image is still scored): the global-pooled last
  feature map (the vector the classifier head reads) lies far from the training images'.
  The distance is Mahalanobis, with a Ledoit-Wolf shrunk covariance so the 256 x 256
  matrix estimated from a few thousand images stays well conditioned. The cut is a
  percentile of the distances of training images held out of the fit (`training.ood`).
  Chosen by measurement on model 2026.11.25-3, cut at the 97th percentile each way: the
  plain covariance, Ledoit-Wolf, Ledoit-Wolf on log1p or standardised features, and PCA
  whitening to 32 or 64 components all flagged 2.4-3.7 % of validation and every blank,
  noise, texture, document, photo and upside-down image (PCA-32: 97 % of inverted X-rays);
  they differed on X-rays rotated by 90 degrees: Ledoit-Wolf 98-100 %, plain 97 %,
  PCA-64 70 %, PCA-32 52 %.

The fitted statistics are a small `.npy` beside the model, named by `model.json`'s `ood`
entry with the threshold and the model's sha256: features of one network mean nothing to another.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .images import ImageRejected

OUT_OF_DISTRIBUTION = "out_of_distribution"
BLANK_IMAGE = "blank_image"
# Standard deviation (grey levels, 0-255) of the 224 x 224 model input at or below which an
# image is blank. The lowest of the 5232 training and validation images is 19.9 and of the 200
# full-resolution originals 30.6 (`python -m training.ood` records both); constant black, grey
# and white images are 0, and with a little sensor noise (sigma 1.5) still below 1.
BLANK_MAX_STD = 4.0


def pooled_features(feature_map: np.ndarray) -> np.ndarray:
    """Spatial mean of a (..., h, w, k) feature map: the (..., k) vector the head pools."""
    feature_map = np.asarray(feature_map, dtype=np.float64)
    return feature_map.mean(axis=(-3, -2))


def pixel_spread(pixels: np.ndarray) -> float:
    """Standard deviation of the model input's grey levels."""
    return float(np.asarray(pixels, dtype=np.float32).std())


def check_not_blank(pixels: np.ndarray, max_std: float = BLANK_MAX_STD) -> None:
    """Raise `ImageRejected("blank_image")` for a near-constant model input."""
    spread = pixel_spread(pixels)
    if spread <= max_std:
        raise ImageRejected(
            BLANK_IMAGE, f"the image is nearly uniform (grey-level standard deviation {spread:.2f} "
                         f"<= {max_std}): nothing to score")


def ledoit_wolf(samples: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf (2004) shrunk covariance of (n, k) samples and its shrinkage in [0, 1].

    The target is a scaled identity (mean variance on the diagonal); the shrinkage is the
    closed-form estimate that minimises the expected Frobenius error.
    """
    samples = np.asarray(samples, dtype=np.float64)
    n, k = samples.shape
    centred = samples - samples.mean(axis=0)
    empirical = centred.T @ centred / n
    scale = np.trace(empirical) / k
    target = scale * np.eye(k)
    squared = centred ** 2
    # pi: sum over entries of the variance of the products x_i x_j, estimated from the samples.
    beta_sum = np.sum(squared.T @ squared) / n - np.sum(empirical ** 2)
    beta = beta_sum / n
    delta = np.sum((empirical - target) ** 2)
    shrinkage = 0.0 if delta == 0 else float(np.clip(beta / delta, 0.0, 1.0))
    return (1 - shrinkage) * empirical + shrinkage * target, shrinkage


@dataclass(frozen=True)
class FeatureDistribution:
    """Mean and precision of the training features, plus the distance that counts as far."""

    mean: np.ndarray          # (k,)
    precision: np.ndarray     # (k, k), inverse of the shrunk covariance
    threshold: float          # distances above it are out of distribution
    model_sha256: str         # the model whose features these are
    shrinkage: float = 0.0

    @classmethod
    def fit(cls, features: np.ndarray, *, model_sha256: str, threshold: float = np.inf) -> FeatureDistribution:
        """Fit on (n, k) pooled features; set the threshold with `with_threshold` after."""
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[0] <= 1:
            raise ValueError(f"need (n > 1, k) features to fit, got {features.shape}")
        covariance, shrinkage = ledoit_wolf(features)
        precision = np.linalg.inv(covariance)
        return cls(features.mean(axis=0), (precision + precision.T) / 2, float(threshold), model_sha256,
                   shrinkage)

    def with_threshold(self, threshold: float) -> FeatureDistribution:
        return FeatureDistribution(self.mean, self.precision, float(threshold), self.model_sha256, self.shrinkage)

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each (..., k) feature vector from the training mean."""
        centred = np.asarray(features, dtype=np.float64) - self.mean
        squared = np.sum((centred @ self.precision) * centred, axis=-1)
        return np.sqrt(np.maximum(squared, 0.0))

    def is_outside(self, features: np.ndarray) -> np.ndarray:
        return self.distance(features) > self.threshold

    def matrix_bytes(self) -> bytes:
        """The numbers as one float32 `.npy`: row 0 the mean, then the precision matrix.

        A plain `.npy` loads in a few milliseconds at cold start (an `.npz` drags in zipfile);
        the threshold and the model it belongs to are written in model.json's `ood` entry.
        """
        buffer = io.BytesIO()
        np.save(buffer, np.vstack([self.mean, self.precision]).astype(np.float32), allow_pickle=False)
        return buffer.getvalue()

    def entry(self) -> dict[str, Any]:
        """The model.json `ood` fields that, with `matrix_bytes`, restore this distribution."""
        return {"threshold": round(self.threshold, 4), "model_sha256": self.model_sha256,
                "shrinkage": round(self.shrinkage, 6)}

    @classmethod
    def from_stored(cls, data: bytes, entry: Mapping[str, Any]) -> FeatureDistribution:
        matrix = np.load(io.BytesIO(data), allow_pickle=False)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] + 1:
            raise ValueError(f"expected a (k + 1, k) matrix, got {matrix.shape}")
        matrix = matrix.astype(np.float64)
        return cls(matrix[0], matrix[1:], float(entry["threshold"]), str(entry["model_sha256"]),
                   float(entry.get("shrinkage", 0.0)))


class OodStatsError(ValueError):
    """The model's out-of-distribution statistics are missing, damaged or another model's."""


def load(model_dir: Path | str, entry: Mapping[str, Any] | None, model_sha256: str) -> FeatureDistribution:
    """The statistics model.json's `ood` entry names, checked against their digest and the model."""
    if not entry or "file" not in entry:
        raise OodStatsError("model.json has no 'ood' entry: run `python -m training.ood` for this model")
    path = Path(model_dir) / entry["file"]
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise OodStatsError(f"cannot read {path}: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise OodStatsError(f"{path.name} does not match the sha256 in model.json")
    if entry.get("model_sha256") != model_sha256:
        raise OodStatsError(f"{path.name} was fitted for model {str(entry.get('model_sha256'))[:12]}, "
                            f"not {model_sha256[:12]}: refit with `python -m training.ood`")
    try:
        return FeatureDistribution.from_stored(data, entry)
    except (OSError, ValueError, KeyError) as exc:
        raise OodStatsError(f"{path.name} is not a feature distribution: {exc}") from exc


class _Evidence(Protocol):
    """What the checks read from scoring's evidence of one image."""

    @property
    def pixels(self) -> np.ndarray: ...

    @property
    def pooled_features(self) -> np.ndarray: ...


def blank_check(evidence: _Evidence) -> None:
    """A scoring check: refuses a near-constant image (FAILED `blank_image`), never warns."""
    check_not_blank(evidence.pixels)


@dataclass(frozen=True)
class OutOfDistributionCheck:
    """A scoring check: `out_of_distribution` when the pooled features are far from training's."""

    distribution: FeatureDistribution

    def __call__(self, evidence: _Evidence) -> str | None:
        return OUT_OF_DISTRIBUTION if self.distribution.is_outside(evidence.pooled_features) else None


def checks_for(model_dir: Path | str, entry: Mapping[str, Any] | None, model_sha256: str) -> tuple:
    """The scoring checks of one model: refuse blank images, warn far-off features."""
    return blank_check, OutOfDistributionCheck(load(model_dir, entry, model_sha256))
