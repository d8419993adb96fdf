"""The subtype head's fit (training.subtype): logistic regression, Platt, threshold and band, on synthetic features."""

from __future__ import annotations

import numpy as np
import pytest

from pneumoscan.model import SubtypeHead, logit_probability
from pneumoscan_eval import metrics
from pneumoscan_eval.datasets import list_labelled, subtype_of
from training import subtype


def _features(n: int, k: int = 8, separation: float = 3.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative pooled-feature-like vectors whose class moves two channels apart."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.35).astype(int)
    x = rng.gamma(2.0, 1.0, (n, k))
    x[:, 0] += separation * y
    x[:, 1] += separation * (1 - y)
    return x, y


def test_newton_reaches_the_penalised_optimum():
    x, y = _features(400, separation=1.0)
    standardise = subtype.Standardiser.fit(x)
    z = standardise(x)
    weights, bias = subtype.fit_logistic(z, y, 0.01)
    p = logit_probability(z @ weights + bias)
    gradient = np.r_[z.T @ (p - y) / len(y) + 0.01 * weights, np.mean(p - y)]
    assert np.max(np.abs(gradient)) < 1e-6
    assert weights[0] > 0 > weights[1]  # channel 0 says viral, channel 1 bacterial


def test_separable_classes_are_separated_and_a_penalty_keeps_the_weights_finite():
    x, y = _features(300, separation=12.0)
    standardise = subtype.Standardiser.fit(x)
    weights, bias = subtype.fit_logistic(standardise(x), y, 1e-3)
    assert np.all(np.isfinite(weights))
    assert metrics.roc_auc(y, standardise(x) @ weights) == 1.0
    assert np.all(((standardise(x) @ weights + bias) >= 0) == (y == 1))


def test_folding_the_standardisation_keeps_every_logit():
    x, y = _features(200)
    x[:, 5] = 2.0  # a dead channel: constant over the training images
    standardise = subtype.Standardiser.fit(x)
    weights, bias = subtype.fit_logistic(standardise(x), y, 0.01)
    raw_weights, raw_bias = standardise.fold(weights, bias)
    assert raw_weights[5] == 0.0
    np.testing.assert_allclose(x @ raw_weights + raw_bias, standardise(x) @ weights + bias, atol=1e-9)


def test_the_penalty_is_the_held_out_best_of_the_grid():
    x, y = _features(600, k=20, separation=2.0, seed=3)
    folds = np.arange(len(y)) % 5
    chosen, losses = subtype.choose_penalty(x, y, folds, penalties=(1e-4, 1e-2, 10.0))
    assert set(losses) == {"0.0001", "0.01", "10"}
    assert losses[f"{chosen:g}"] == min(losses.values())
    assert losses["10"] > min(losses.values())  # a huge penalty throws the signal away


def test_platt_recovers_a_known_scale_and_shift():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, 20000)
    y = (rng.random(logits.size) < logit_probability(0.5 * logits - 1.0)).astype(int)
    a, b = subtype.platt(logits, y)
    assert a == pytest.approx(0.5, abs=0.05) and b == pytest.approx(-1.0, abs=0.06)


def test_the_balanced_accuracy_threshold_splits_the_classes_midway():
    labels = np.array([0, 0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.9])
    assert metrics.balanced_accuracy_threshold(labels, scores) == pytest.approx(0.65)
    with pytest.raises(ValueError, match="both classes"):
        metrics.balanced_accuracy_threshold([1, 1], [0.2, 0.4])


def test_the_uncertain_band_is_weak_evidence_either_way_of_the_threshold():
    low, high = subtype.uncertain_band(0.3)
    odds = lambda p: p / (1 - p)  # noqa: E731
    assert odds(high) / odds(0.3) == pytest.approx(subtype.BAND_EVIDENCE, rel=1e-4)
    assert odds(0.3) / odds(low) == pytest.approx(subtype.BAND_EVIDENCE, rel=1e-4)
    assert low < 0.3 < high and subtype.uncertain_band(0.5) == pytest.approx((0.4, 0.6))


def test_the_whole_fit_gives_a_head_that_holds_its_contract():
    train_x, train_y = _features(600, separation=2.0, seed=4)
    val_x, val_y = _features(300, separation=2.0, seed=5)
    head, fit = subtype.calibrated_head(train_x, train_y, np.arange(600) % 5, val_x, val_y)
    assert isinstance(head, SubtypeHead) and head.labels == ("bacterial", "viral")
    low, high = head.uncertain_band
    assert low <= head.threshold <= high
    p = head.probability(val_x)
    assert metrics.roc_auc(val_y, p) > 0.9
    confident = ~head.uncertain(p)
    # Outside the band the calls are surer than over all images, and the band holds the threshold.
    assert (np.mean((p[confident] >= head.threshold) == (val_y[confident] == 1))
            > np.mean((p >= head.threshold) == (val_y == 1)))
    assert head.uncertain_band == subtype.uncertain_band(head.threshold)
    assert fit["penalty"] in subtype.PENALTIES
    assert SubtypeHead.from_dict(head.as_dict()).as_dict() == head.as_dict()


def test_subtypes_come_from_file_names_or_subfolders(tmp_path):
    assert subtype_of("person1024_bacteria_2955.jpeg") == "bacterial"
    assert subtype_of("person1_virus_6.jpeg") == "viral"
    assert subtype_of("viral/x.png") == "viral" and subtype_of("Bacterial/deep/x.png") == "bacterial"
    assert subtype_of("IM-0115-0001.jpeg") is None and subtype_of("virus/person1_bacteria_1.jpeg") is None
    for name in ("NORMAL/person9_virus_1.jpeg", "PNEUMONIA/person3_bacteria_1.jpeg", "PNEUMONIA/viral/a.png",
                 "PNEUMONIA/b.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = {f.path.relative_to(tmp_path).as_posix(): f.subtype for f in list_labelled(tmp_path)}
    assert found == {"NORMAL/person9_virus_1.jpeg": None, "PNEUMONIA/person3_bacteria_1.jpeg": "bacterial",
                     "PNEUMONIA/viral/a.png": "viral", "PNEUMONIA/b.png": None}


def test_the_summary_counts_recall_confusion_and_the_band():
    labels = np.array([0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.45, 0.8, 0.55, 0.9])
    summary = metrics.subtype_summary(labels, scores, 0.5, uncertain=[False, True, False, True, False])
    assert summary["accuracy"] == pytest.approx(0.8)
    assert summary["recall"] == {"bacterial": pytest.approx(2 / 3), "viral": 1.0}
    assert summary["confusion"] == {"true bacterial": {"called bacterial": 2, "called viral": 1},
                                    "true viral": {"called bacterial": 0, "called viral": 2}}
    assert summary["uncertain"] == 2 and summary["accuracy_confident"] == pytest.approx(2 / 3)


def test_a_unit_trained_with_the_network_is_calibrated_not_refitted():
    from pneumoscan.model import ModelMetadata

    val_x, val_y = _features(300, separation=2.0, seed=6)
    direction = np.linalg.lstsq(val_x, val_y - 0.5, rcond=None)[0]
    head, fit = subtype.calibrate(3 * direction, 0.1, val_x, val_y, {"method": "trained"})
    # Platt rescales a logit without reordering it: the AUC is the raw unit's.
    assert metrics.roc_auc(val_y, head.probability(val_x)) == pytest.approx(metrics.roc_auc(val_y, val_x @ direction))
    assert fit["method"] == "trained" and set(fit["platt"]) == {"a", "b"}
    assert np.allclose(head.weights / np.linalg.norm(head.weights), direction / np.linalg.norm(direction))
    metadata = ModelMetadata.from_dict({"name": "m", "version": "1", "file": "m.tflite", "sha256": "0" * 64,
                                        "size_bytes": 1, "input": {"height": 224, "width": 224, "channels": 1},
                                        "labels": ["NORMAL", "PNEUMONIA"],
                                        "training": {"subtype_head": {"weights": [1.0, 2.0], "bias": 0.5}}})
    weights, bias = subtype.trained_weights(metadata)
    assert weights.tolist() == [1.0, 2.0] and bias == 0.5
    assert subtype.trained_weights(ModelMetadata.from_dict({**metadata.to_dict(), "training": {}})) is None
