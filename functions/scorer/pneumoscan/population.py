"""Does the image look like the paediatric X-rays the model was trained on?

The model was trained on children aged about 1-5 from one hospital. An adult's chest X-ray
from another hospital is still a chest X-ray, so `out_of_distribution` (a distance from
the training features) lets many of them through, and the model then scores them with
little meaning. This check is a second, supervised look at the same pooled feature vector:

- **adult_like_image** (a warning; the image is still scored): a logistic head on the
  standardised pooled last feature map, trained to tell the paediatric training split from
  adult X-rays of other hospitals, gives a logit above its cut. The cut is a percentile of
  the logits of paediatric training images held out of the head's fit, by patient.

`python -m training.population` fits the head of one network (its features mean nothing
to another), measures it and writes it into model.json's `population` section with the
sha256 of the model it belongs to.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

ADULT_LIKE_IMAGE = "adult_like_image"


class PopulationHeadError(ValueError):
    """model.json's `population` section is damaged or belongs to another model."""


@dataclass(frozen=True)
class PopulationHead:
    """logit = ((features - mean) / scale) . weights + bias; above `threshold`: adult-like."""

    mean: np.ndarray      # (k,)
    scale: np.ndarray     # (k,), every entry > 0
    weights: np.ndarray   # (k,)
    bias: float
    threshold: float      # in logits
    model_sha256: str     # the model whose features these are

    def logit(self, features: np.ndarray) -> np.ndarray:
        """The head's logit of each (..., k) feature vector (higher: more adult-like)."""
        standardised = (np.asarray(features, dtype=np.float64) - self.mean) / self.scale
        return standardised @ self.weights + self.bias

    def is_adult_like(self, features: np.ndarray) -> np.ndarray:
        return self.logit(features) > self.threshold

    def with_threshold(self, threshold: float) -> PopulationHead:
        return PopulationHead(self.mean, self.scale, self.weights, self.bias, float(threshold), self.model_sha256)

    def entry(self) -> dict[str, Any]:
        """The numbers of model.json's `population` section (float32 precision is plenty)."""
        def numbers(values: np.ndarray) -> list[float]:
            return [float(f"{value:.7g}") for value in np.asarray(values, dtype=np.float64)]

        return {"code": ADULT_LIKE_IMAGE, "model_sha256": self.model_sha256, "threshold": round(self.threshold, 4),
                "bias": float(f"{self.bias:.7g}"), "mean": numbers(self.mean), "scale": numbers(self.scale),
                "weights": numbers(self.weights)}

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any]) -> PopulationHead:
        try:
            mean, scale, weights = (np.asarray(entry[key], dtype=np.float64) for key in ("mean", "scale", "weights"))
            head = cls(mean, scale, weights, float(entry["bias"]), float(entry["threshold"]),
                       str(entry["model_sha256"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise PopulationHeadError(f"model.json's population section is not a head: {exc!r}") from exc
        if not (mean.ndim == 1 and mean.shape == scale.shape == weights.shape) or not np.all(scale > 0):
            raise PopulationHeadError("model.json's population section: mean, scale and weights must be "
                                      "equal-length vectors with every scale > 0")
        return head


def load(entry: Mapping[str, Any] | None, model_sha256: str) -> PopulationHead | None:
    """The head model.json's `population` section holds, checked against the model; None without one."""
    if not entry:
        return None
    head = PopulationHead.from_entry(entry)
    if head.model_sha256 != model_sha256:
        raise PopulationHeadError(f"the population head was fitted for model {head.model_sha256[:12]}, not "
                                  f"{model_sha256[:12]}: refit with `python -m training.population`")
    return head


class _Evidence(Protocol):
    @property
    def pooled_features(self) -> np.ndarray: ...


@dataclass(frozen=True)
class AdultLikeCheck:
    """A scoring check: `adult_like_image` when the head calls the image adult-like."""

    head: PopulationHead

    def __call__(self, evidence: _Evidence) -> str | None:
        return ADULT_LIKE_IMAGE if bool(self.head.is_adult_like(evidence.pooled_features)) else None


def checks_for(entry: Mapping[str, Any] | None, model_sha256: str) -> tuple:
    """The model's population check, or none when model.json has no `population` section."""
    head = load(entry, model_sha256)
    return () if head is None else (AdultLikeCheck(head),)
