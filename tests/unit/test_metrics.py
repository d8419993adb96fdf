"""pneumoscan_eval.metrics against values worked out by hand."""

import math

import numpy as np
import pytest

from pneumoscan_eval import metrics

# 3 positives, 3 negatives. Pairs (pos, neg) ordered correctly: 0.9 beats all 3
# negatives, 0.6 beats 0.2 and 0.4 and ties 0.6 (half), 0.3 beats 0.2 only.
# U = 3 + 2.5 + 1 = 6.5 of 9 pairs.
LABELS = [1, 1, 1, 0, 0, 0]
SCORES = [0.9, 0.6, 0.3, 0.6, 0.4, 0.2]


def test_auc_counts_ties_as_half():
    assert metrics.roc_auc(LABELS, SCORES) == pytest.approx(6.5 / 9)


def test_auc_perfect_reversed_and_undefined():
    assert metrics.roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert metrics.roc_auc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert math.isnan(metrics.roc_auc([1, 1], [0.2, 0.3]))


def test_confusion_and_rates_at_threshold():
    counts = metrics.confusion(LABELS, SCORES, 0.5)
    # called positive: 0.9, 0.6 (pos), 0.6 (neg) -> TP 2, FP 1, TN 2, FN 1
    assert (counts.true_positive, counts.false_positive, counts.true_negative,
            counts.false_negative) == (2, 1, 2, 1)
    assert counts.sensitivity == pytest.approx(2 / 3)
    assert counts.specificity == pytest.approx(2 / 3)
    assert counts.precision == pytest.approx(2 / 3)
    assert counts.accuracy == pytest.approx(4 / 6)


def test_score_equal_to_threshold_is_positive():
    assert metrics.confusion([1], [0.5], 0.5).true_positive == 1


def test_roc_curve_points():
    fpr, tpr, thresholds = metrics.roc_curve(LABELS, SCORES)
    # thresholds inf, 0.9, 0.6, 0.4, 0.3, 0.2
    np.testing.assert_allclose(thresholds[1:], [0.9, 0.6, 0.4, 0.3, 0.2])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 2 / 3, 1, 1])
    np.testing.assert_allclose(fpr, [0, 0, 1 / 3, 2 / 3, 2 / 3, 1])
    # Trapezoid area of the ROC equals the rank AUC.
    assert np.trapezoid(tpr, fpr) == pytest.approx(6.5 / 9)


def test_average_precision_step_sum():
    # Recall steps: 1/3 at precision 1 (0.9), 2/3 at 2/3 (0.6 tie), 1 at 3/5 (0.3).
    expected = (1 / 3) * 1 + (1 / 3) * (2 / 3) + (1 / 3) * (3 / 5)
    assert metrics.average_precision(LABELS, SCORES) == pytest.approx(expected)


def test_threshold_rule_keeps_sensitivity_and_maximises_specificity():
    labels = [1, 1, 1, 1, 0, 0, 0, 0]
    scores = [0.95, 0.9, 0.8, 0.35, 0.7, 0.3, 0.2, 0.1]
    # Sensitivity >= 0.75 allows calling only the top three positives: the highest
    # threshold reaching tpr 3/4 is 0.8; midway to the next lower score (0.7) -> 0.75.
    threshold = metrics.threshold_for_sensitivity(labels, scores, 0.75)
    assert threshold == pytest.approx(0.75)
    summary = metrics.summarize(labels, scores, threshold)
    assert summary.sensitivity == pytest.approx(0.75) and summary.specificity == 1.0
    # Full sensitivity needs 0.35 called: midway to 0.3 -> 0.325, one false positive (0.7).
    threshold = metrics.threshold_for_sensitivity(labels, scores, 1.0)
    assert threshold == pytest.approx(0.325)
    assert metrics.summarize(labels, scores, threshold).specificity == pytest.approx(0.75)


def test_threshold_rule_needs_positives():
    with pytest.raises(ValueError):
        metrics.threshold_for_sensitivity([0, 0], [0.1, 0.2], 0.97)


def test_calibration_bins_and_ece():
    labels = [0, 0, 1, 1]
    scores = [0.05, 0.15, 0.85, 0.95]
    bins = metrics.calibration_bins(labels, scores, bins=2)
    assert [b["count"] for b in bins] == [2, 2]
    assert bins[0]["mean_score"] == pytest.approx(0.1) and bins[0]["positive_rate"] == 0.0
    assert bins[1]["mean_score"] == pytest.approx(0.9) and bins[1]["positive_rate"] == 1.0
    assert metrics.expected_calibration_error(labels, scores, bins=2) == pytest.approx(0.1)
    # A score of exactly 1.0 lands in the last bin, not past it.
    assert metrics.calibration_bins([1], [1.0], bins=4)[-1]["count"] == 1


def test_mismatched_or_bad_labels_are_refused():
    with pytest.raises(ValueError):
        metrics.roc_auc([0, 1], [0.1])
    with pytest.raises(ValueError):
        metrics.roc_auc([0, 2], [0.1, 0.2])
