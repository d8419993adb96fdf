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
    a, b = 1.0, 0.0
    design = np.stack([logits, np.ones_like(logits)], axis=1)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(a * logits + b)))
        gradient = design.T @ (p - targets)
        hessian = design.T @ (design * (p * (1 - p))[:, None]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-9:
            break
    return float(a), float(b)


def fold_into_dense(dense: keras.layers.Dense, a: float, b: float) -> None:
    """Replace logit z = w.x + c by a*z + b, in place."""
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel * a, bias * a + b])
