"""Binary classification metrics in plain numpy, shared by training, the CLI and tests.

Labels are 1 = positive (the model's positive label), 0 = negative. A score at or above
the threshold is called positive, the same rule as `ModelMetadata.label`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def _as_arrays(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).astype(np.int64).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"{labels.size} labels but {scores.size} scores")
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 (negative) or 1 (positive)")
    return labels, scores


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve (Mann-Whitney U; tied scores count one half).

    NaN when only one class is present: the AUC is undefined there, not 0 or 1.
    """
    labels, scores = _as_arrays(labels, scores)
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(labels.size, dtype=np.float64)
    # Average ranks over runs of tied scores.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(average, counts)
    rank_sum = ranks[labels == 1].sum()
    return float((rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, thresholds), thresholds descending.

    Each threshold t means "positive if score >= t"; the first point is (0, 0) at +inf.
    """
    labels, scores = _as_arrays(labels, scores)
    thresholds = np.unique(scores)[::-1]
    positives = max(int(labels.sum()), 1)
    negatives = max(labels.size - int(labels.sum()), 1)
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, sorted_labels = scores[order], labels[order]
    # Number of samples with score >= t for each distinct t.
    called = np.searchsorted(-sorted_scores, -thresholds, side="right")
    true_pos = np.concatenate(([0], np.cumsum(sorted_labels)))[called]
    false_pos = called - true_pos
    fpr = np.concatenate(([0.0], false_pos / negatives))
    tpr = np.concatenate(([0.0], true_pos / positives))
    return fpr, tpr, np.concatenate(([np.inf], thresholds))


def precision_recall_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds) over the distinct scores, thresholds descending."""
    labels, scores = _as_arrays(labels, scores)
    fpr, tpr, thresholds = roc_curve(labels, scores)
    positives = int(labels.sum())
    negatives = labels.size - positives
    true_pos = tpr[1:] * positives
    false_pos = fpr[1:] * negatives
    precision = true_pos / np.maximum(true_pos + false_pos, 1)
    return precision, tpr[1:], thresholds[1:]


def average_precision(labels, scores) -> float:
    """Area under the precision-recall curve as a step sum (scikit-learn's definition)."""
    precision, recall, _ = precision_recall_curve(labels, scores)
    if recall.size == 0:
        return float("nan")
    return float(np.sum(np.diff(np.concatenate(([0.0], recall))) * precision))


@dataclass(frozen=True)
class Confusion:
    true_positive: int
    false_positive: int
    true_negative: int
    false_negative: int

    @property
    def n(self) -> int:
        return self.true_positive + self.false_positive + self.true_negative + self.false_negative

    @property
    def sensitivity(self) -> float:
        return _ratio(self.true_positive, self.true_positive + self.false_negative)

    @property
    def specificity(self) -> float:
        return _ratio(self.true_negative, self.true_negative + self.false_positive)

    @property
    def precision(self) -> float:
        return _ratio(self.true_positive, self.true_positive + self.false_positive)

    @property
    def accuracy(self) -> float:
        return _ratio(self.true_positive + self.true_negative, self.n)


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else float("nan")


def confusion(labels, scores, threshold: float) -> Confusion:
    labels, scores = _as_arrays(labels, scores)
    called = scores >= threshold
    positive = labels == 1
    return Confusion(
        true_positive=int(np.sum(called & positive)),
        false_positive=int(np.sum(called & ~positive)),
        true_negative=int(np.sum(~called & ~positive)),
        false_negative=int(np.sum(~called & positive)),
    )


@dataclass(frozen=True)
class Summary:
    n: int
    positives: int
    negatives: int
    threshold: float
    auc: float
    average_precision: float
    accuracy: float
    sensitivity: float
    specificity: float
    precision: float
    true_positive: int
    false_positive: int
    true_negative: int
    false_negative: int

    def as_dict(self) -> dict:
        return asdict(self)


def summarize(labels, scores, threshold: float) -> Summary:
    """Every headline figure at one threshold, as reported by training and `pneumoscan evaluate`."""
    labels, scores = _as_arrays(labels, scores)
    counts = confusion(labels, scores, threshold)
    return Summary(
        n=int(labels.size), positives=int(labels.sum()), negatives=int(labels.size - labels.sum()),
        threshold=float(threshold), auc=roc_auc(labels, scores),
        average_precision=average_precision(labels, scores),
        accuracy=counts.accuracy, sensitivity=counts.sensitivity, specificity=counts.specificity,
        precision=counts.precision, true_positive=counts.true_positive,
        false_positive=counts.false_positive, true_negative=counts.true_negative,
        false_negative=counts.false_negative,
    )


def threshold_for_sensitivity(labels, scores, min_sensitivity: float) -> float:
    """The highest threshold whose sensitivity is at least `min_sensitivity`.

    Raising the threshold can only lower sensitivity and raise specificity, so the
    highest threshold that keeps the sensitivity floor is the one with the best
    specificity under it. The threshold is placed halfway between that score and the
    next lower distinct score, so a rounding wobble at deployment does not flip the
    boundary case.
    """
    labels, scores = _as_arrays(labels, scores)
    if not labels.any():
        raise ValueError("no positive samples: sensitivity is undefined")
    if not 0.0 < min_sensitivity <= 1.0:
        raise ValueError("min_sensitivity must be in (0, 1]")
    _, tpr, thresholds = roc_curve(labels, scores)
    # tpr is non-decreasing along descending thresholds; first index meeting the floor.
    index = int(np.argmax(tpr >= min_sensitivity - 1e-12))
    chosen = thresholds[index]
    lower = scores[scores < chosen]
    if lower.size:
        return float((chosen + lower.max()) / 2.0)
    return float(chosen)


def calibration_bins(labels, scores, bins: int = 10) -> list[dict]:
    """Reliability diagram data: equal-width score bins with mean score and positive rate.

    Empty bins are kept (count 0) so every report has the same bins.
    """
    labels, scores = _as_arrays(labels, scores)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(scores, edges[1:-1], right=False), 0, bins - 1)
    result = []
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        result.append({
            "low": float(edges[b]), "high": float(edges[b + 1]), "count": count,
            "mean_score": float(scores[members].mean()) if count else None,
            "positive_rate": float(labels[members].mean()) if count else None,
        })
    return result


def expected_calibration_error(labels, scores, bins: int = 10) -> float:
    """Count-weighted mean |positive rate - mean score| over the calibration bins."""
    table = calibration_bins(labels, scores, bins)
    total = sum(row["count"] for row in table)
    if not total:
        return float("nan")
    return float(sum(row["count"] * abs(row["positive_rate"] - row["mean_score"])
                     for row in table if row["count"]) / total)


def balanced_accuracy_threshold(labels, scores) -> float:
    """The threshold with the highest balanced accuracy (mean of the two classes' recalls),
    halfway to the next lower distinct score as `threshold_for_sensitivity` places it; of
    equally good thresholds, the one nearest the middle of their run."""
    labels, scores = _as_arrays(labels, scores)
    if labels.all() or not labels.any():
        raise ValueError("both classes are needed for a balanced accuracy")
    fpr, tpr, thresholds = roc_curve(labels, scores)
    balanced = (tpr + 1.0 - fpr) / 2.0
    balanced[0] = -np.inf  # the leading +inf calls nothing positive: no threshold
    best = np.flatnonzero(balanced >= balanced.max() - 1e-12)
    chosen = thresholds[best[len(best) // 2]]
    lower = scores[scores < chosen]
    return float((chosen + lower.max()) / 2.0) if lower.size else float(chosen)


def subtype_summary(labels, scores, threshold: float, uncertain=None,
                    names: tuple[str, str] = ("bacterial", "viral")) -> dict:
    """A two-subtype head's figures: labels 1 = names[1]; `uncertain` marks the calls its band
    withholds (the figures at the threshold count every image; the confident ones are separate)."""
    labels, scores = _as_arrays(labels, scores)
    uncertain = np.zeros(labels.size, bool) if uncertain is None else np.asarray(uncertain, bool).ravel()
    called = scores >= threshold
    confident = ~uncertain

    def recalls(mask: np.ndarray) -> dict:
        return {name: _finite_ratio(np.sum((called == bool(index)) & (labels == index) & mask),
                                    np.sum((labels == index) & mask)) for index, name in enumerate(names)}

    counts = confusion(labels, scores, threshold)
    return {
        "n": int(labels.size), **{f"n_{name}": int(np.sum(labels == index)) for index, name in enumerate(names)},
        "threshold": float(threshold), "auc": _nan_none(roc_auc(labels, scores)),
        "accuracy": _nan_none(counts.accuracy), "recall": recalls(np.ones(labels.size, bool)),
        "confusion": {f"true {name}": {f"called {other}": int(np.sum((labels == index) & (called == bool(column))))
                                       for column, other in enumerate(names)}
                      for index, name in enumerate(names)},
        "uncertain": int(uncertain.sum()),
        "uncertain_share": _finite_ratio(uncertain.sum(), labels.size),
        "accuracy_uncertain": _finite_ratio(np.sum((called == (labels == 1)) & uncertain), uncertain.sum()),
        "accuracy_confident": _finite_ratio(np.sum((called == (labels == 1)) & confident), confident.sum()),
        "recall_confident": recalls(confident),
    }


def _finite_ratio(numerator, denominator) -> float | None:
    return float(numerator) / float(denominator) if denominator else None


def _nan_none(value: float) -> float | None:
    return None if value != value else value  # JSON has no NaN
