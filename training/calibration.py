"""Platt scaling folded into the model's last dense layer.

Class weights train the network as if both classes were equally common, so its raw
probabilities are biased towards NORMAL. A logistic fit p = sigmoid(a * logit + b)
on held-out validation logits fixes that; because it is monotone it changes no
ranking (AUC) and it is folded into the dense layer, so nothing outside the model
has to know about it.
"""

from __future__ import annotations

import keras
import numpy as np


def fit_platt(logits: np.ndarray, labels: np.ndarray, iterations: int = 50) -> tuple[float, float]:
    """(a, b) maximising the likelihood of Platt's smoothed targets, by Newton's method.

    The smoothed targets (N+ + 1)/(N+ + 2) and 1/(N- + 2) keep the fit finite when
    the validation set is perfectly separated.
    """
    logits = np.asarray(logits, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    positives, negatives = int(labels.sum()), int(labels.size - labels.sum())
    targets = np.where(labels == 1, (positives + 1) / (positives + 2), 1 / (negatives + 2))
    design = np.stack([logits, np.ones_like(logits)], axis=1)

    def loss(params: np.ndarray) -> float:
        z = design @ params
        # -log-likelihood of the soft targets, written stably: log(1+e^z) - t*z.
        return float(np.sum(np.logaddexp(0.0, z) - targets * z))

    params = np.zeros(2)  # start at the constant model: Newton's method is safe from there
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(design @ params)))
        gradient = design.T @ (p - targets)
        hessian = design.T @ (design * (p * (1 - p))[:, None]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        # Halve the step until the likelihood improves (plain Newton can overshoot).
        current, scale = loss(params), 1.0
        while loss(params - scale * step) > current and scale > 1e-6:
            scale /= 2
        params = params - scale * step
        if np.abs(scale * step).max() < 1e-9:
            break
    a, b = params
    return float(a), float(b)


def fold_into_dense(dense: keras.layers.Dense, a: float, b: float) -> None:
    """Replace logit z = w.x + c by a*z + b, in place."""
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel * a, bias * a + b])
