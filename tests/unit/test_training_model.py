"""Architecture, calibration folding and ensembling: exact identities, on tiny untrained models."""

import keras
import numpy as np
import pytest

from training.architecture import FEATURE_MAP_LAYER, LOGIT_LAYER, PROBABILITY_LAYER, build_model
from training.calibration import fit_platt, fold_into_dense
from training.ensemble import average_logits

TINY = (4, 4, 8, 8, 8)


def _images(count=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, 224, 224, 1)).astype(np.float32)


def _logits(model, images):
    return keras.Model(model.inputs, model.get_layer(LOGIT_LAYER).output).predict(images, verbose=0).ravel()


def test_outputs_and_per_image_standardisation():
    model = build_model(widths=TINY)
    images = _images()
    outputs = model.predict(images, verbose=0)
    assert outputs[PROBABILITY_LAYER].shape == (3, 1)
    assert outputs[FEATURE_MAP_LAYER].shape == (3, 14, 14, 8)
    # Exposure and contrast changes (affine in the pixels) leave the prediction unchanged.
    rescaled = np.clip(images * 0.5 + 40, 0, 255)
    np.testing.assert_allclose(model.predict(rescaled, verbose=0)[PROBABILITY_LAYER],
                               outputs[PROBABILITY_LAYER], atol=1e-5)


def test_gap_head_identity_gives_the_cam_weights():
    model = build_model(widths=TINY)
    images = _images()
    feature_map = model.predict(images, verbose=0)[FEATURE_MAP_LAYER]
    kernel, bias = model.get_layer(LOGIT_LAYER).get_weights()
    expected = feature_map.mean(axis=(1, 2)) @ kernel[:, 0] + bias[0]
    np.testing.assert_allclose(_logits(model, images), expected, rtol=1e-4, atol=1e-5)


def test_platt_fit_recovers_a_known_scaling():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, 20000)
    labels = (rng.random(20000) < 1 / (1 + np.exp(-(0.5 * logits - 1.0)))).astype(int)
    a, b = fit_platt(logits, labels)
    assert a == pytest.approx(0.5, abs=0.03) and b == pytest.approx(-1.0, abs=0.06)
    # Perfectly separated data still gives a finite fit.
    a, b = fit_platt(np.array([-2.0, -1.0, 1.0, 2.0]), np.array([0, 0, 1, 1]))
    assert np.isfinite(a) and np.isfinite(b) and a > 0


def test_folding_scales_the_logit():
    model = build_model(widths=TINY)
    images = _images()
    before = _logits(model, images)
    fold_into_dense(model.get_layer(LOGIT_LAYER), 2.0, -0.5)
    np.testing.assert_allclose(_logits(model, images), 2.0 * before - 0.5, rtol=1e-4, atol=1e-5)


def test_ensemble_is_the_mean_of_member_logits():
    keras.utils.set_random_seed(0)
    members = [build_model(widths=TINY), build_model(widths=TINY)]
    for index, member in enumerate(members):
        kernel, bias = member.get_layer(LOGIT_LAYER).get_weights()
        member.get_layer(LOGIT_LAYER).set_weights([kernel + index, bias + index])
    images = _images()
    ensemble = average_logits(members)
    expected = np.mean([_logits(member, images) for member in members], axis=0)
    np.testing.assert_allclose(_logits(ensemble, images), expected, rtol=1e-4, atol=1e-5)
    assert ensemble.predict(images, verbose=0)[FEATURE_MAP_LAYER].shape == (3, 14, 14, 16)


def test_flip_averaging_is_the_mean_of_the_two_logits_with_an_aligned_map():
    from training.ensemble import flip_averaged

    model = build_model(widths=TINY)
    images = _images()
    averaged = flip_averaged(model)
    expected = (_logits(model, images) + _logits(model, images[:, :, ::-1, :])) / 2
    np.testing.assert_allclose(_logits(averaged, images), expected, rtol=1e-4, atol=1e-5)
    # The mirrored image's averaged map is the mirror image of the original's.
    np.testing.assert_allclose(averaged.predict(images[:, :, ::-1, :], verbose=0)[FEATURE_MAP_LAYER],
                               averaged.predict(images, verbose=0)[FEATURE_MAP_LAYER][:, :, ::-1, :],
                               rtol=1e-4, atol=1e-5)


def test_the_subtype_unit_is_a_linear_read_of_the_pooled_features_the_export_keeps():
    """The scorer computes the subtype from the exported feature map alone: the trained unit
    must be exactly sigmoid(weights . spatial mean + bias), and the detector keeps two outputs."""
    from pneumoscan.model import SubtypeHead
    from training.architecture import SUBTYPE_LAYER, detector, subtype_dense
    from training.pipeline import trained_subtype_head
    from training.train import TrainConfig

    model = build_model(widths=TINY, subtype_head=True)
    images = _images()
    outputs = model.predict(images, verbose=0)
    dense = subtype_dense(model)
    dense.set_weights([np.random.default_rng(1).normal(size=(8, 1)).astype(np.float32), np.array([0.3], np.float32)])
    outputs = model.predict(images, verbose=0)
    recorded = trained_subtype_head(dense, TrainConfig(subtype_weight=0.5))
    head = SubtypeHead(np.asarray(recorded["weights"]), recorded["bias"], 0.5)
    np.testing.assert_allclose(head.probability(outputs[FEATURE_MAP_LAYER].mean(axis=(1, 2))),
                               outputs[SUBTYPE_LAYER].ravel(), rtol=1e-4, atol=1e-5)
    exported = detector(model)
    assert set(exported.output) == {PROBABILITY_LAYER, FEATURE_MAP_LAYER}
    np.testing.assert_allclose(exported.predict(images, verbose=0)[PROBABILITY_LAYER], outputs[PROBABILITY_LAYER])
    assert subtype_dense(build_model(widths=TINY)) is None and recorded["loss_weight"] == 0.5


def test_subtype_loss_weights_balance_the_subtypes_and_skip_the_rest():
    from training.train import subtype_weights

    labels = np.array([0, 0, 1, 1, 1, 1, 1])
    subtypes = np.array([-1, -1, 0, 0, 0, 1, -1])  # the last pneumonia's name gives no subtype
    weights = subtype_weights(labels, subtypes)
    assert weights[[0, 1, 6]].tolist() == [0, 0, 0]
    assert weights[2:5].sum() == pytest.approx(weights[5]) and weights.sum() == pytest.approx(4)
    with pytest.raises(ValueError, match="both subtypes"):
        subtype_weights(labels, np.array([-1, -1, 0, 0, 0, 0, 0]))


def test_history_keeps_the_detectors_names_beside_the_subtypes(tmp_path):
    from training.train import read_history

    log = tmp_path / "history.csv"
    log.write_text("epoch,loss,probability_auc,probability_loss,subtype_auc,val_probability_auc,val_subtype_loss\n"
                   "0,0.9,0.8,0.6,0.7,0.75,0.5\n")
    assert read_history(log) == [{"epoch": 0.0, "loss": 0.9, "auc": 0.8, "detection_loss": 0.6, "subtype_auc": 0.7,
                                  "val_auc": 0.75, "val_subtype_loss": 0.5}]
