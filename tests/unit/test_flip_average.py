"""Flip averaging where it can change the label: the model contract's band and the mirrored pass."""

import json
import shutil

import numpy as np
import pytest

from pneumoscan.model import FlipAverage, ModelMetadata, PneumoniaModel, default_model_dir, probability_logit
from pneumoscan_eval.datasets import FULLRES_SET, default_data_dir
from pneumoscan.images import load_model_input


def _model_with_band(tmp_path, name, band, *, lung_crop=True):
    """A copy of the bundled model whose model.json has this `flip_average` band (None: none);
    without `lung_crop` the network reads the whole image."""
    tmp_path = tmp_path / name
    tmp_path.mkdir()
    source = default_model_dir()
    for name in ("pneumoscan.tflite", "ood.npy", "lungs.tflite"):
        shutil.copy2(source / name, tmp_path / name)
    raw = json.loads((source / "model.json").read_text())
    raw["flip_average"] = {"band": list(band)} if band is not None else None
    if not lung_crop:
        raw["lung_field"] = None
    (tmp_path / "model.json").write_text(json.dumps({k: v for k, v in raw.items() if v is not None}))
    return PneumoniaModel(tmp_path)


@pytest.fixture(scope="module")
def xrays():
    originals = sorted((default_data_dir() / FULLRES_SET).glob("*/*"))[::25]
    if not originals:
        pytest.skip("needs the shared data folder")
    return np.stack([load_model_input(path.read_bytes(), 224, 224, 1)[0] for path in originals])


def test_every_image_averaged_is_the_mean_logit_and_the_aligned_mean_feature_map(tmp_path, xrays):
    # On the whole image, so that mirroring the input is mirroring what the network reads (a lung
    # crop of the mirrored image is not exactly the mirrored crop: the segmenter is not symmetric).
    single = _model_with_band(tmp_path, "single", None, lung_crop=False)
    every = _model_with_band(tmp_path, "every", (0.0, 1.0), lung_crop=False)
    direct, mirrored = single.predict(xrays), single.predict(xrays[:, :, ::-1])
    averaged = every.predict(xrays)

    assert averaged.flip_averaged.all() and not direct.flip_averaged.any()
    expected = 1 / (1 + np.exp(-(probability_logit(direct.probability) + probability_logit(mirrored.probability)) / 2))
    np.testing.assert_allclose(averaged.probability, expected, rtol=1e-6)
    np.testing.assert_allclose(averaged.feature_map, (direct.feature_map + mirrored.feature_map[:, :, ::-1]) / 2)
    assert not np.allclose(averaged.probability, direct.probability)  # the mirrored pass did change scores


def test_only_images_inside_the_band_get_the_mirrored_pass(tmp_path, xrays):
    direct = _model_with_band(tmp_path, "single", None).predict(xrays).probability
    low, high = np.sort(direct)[[1, -2]]  # the extremes fall outside
    banded = _model_with_band(tmp_path, "band", (float(low), float(high))).predict(xrays)

    inside = (direct >= low) & (direct <= high)
    assert banded.flip_averaged.tolist() == inside.tolist()
    np.testing.assert_array_equal(banded.probability[~inside], direct[~inside])
    assert not np.allclose(banded.probability[inside], direct[inside])


def test_a_left_right_symmetric_image_scores_the_same_averaged_or_not(tmp_path):
    model = _model_with_band(tmp_path, "every", (0.0, 1.0))
    half = np.random.default_rng(3).integers(0, 256, (224, 112, 1), dtype=np.uint8)
    image = np.concatenate([half, half[:, ::-1]], axis=1)
    single = _model_with_band(tmp_path, "single", None).predict(image).probability
    np.testing.assert_allclose(model.predict(image).probability, single, rtol=1e-5)


def test_the_band_section_round_trips_and_is_validated():
    raw = {"name": "m", "version": "1", "file": "m.tflite", "sha256": "00",
           "input": {"height": 8, "width": 8, "channels": 1}, "labels": ["N", "P"], "threshold": 0.5,
           "flip_average": {"band": [0.3, 0.8], "note": "why"}}
    metadata = ModelMetadata.from_dict(raw)
    assert metadata.flip_average == FlipAverage((0.3, 0.8), "why")
    assert metadata.to_dict()["flip_average"] == raw["flip_average"]
    for band in ([0.8, 0.3], [-0.1, 0.5], [0.2, 1.5]):
        with pytest.raises(ValueError, match="band"):
            ModelMetadata.from_dict({**raw, "flip_average": {"band": band}})


def test_the_fitted_band_keeps_every_fitted_label_of_averaging():
    from training.ensemble import fit_flip_band

    rng = np.random.default_rng(0)
    single_logit = rng.normal(0.0, 3.0, 2000)
    averaged_logit = single_logit + rng.normal(0.0, 0.3, 2000)
    single, averaged = 1 / (1 + np.exp(-single_logit)), 1 / (1 + np.exp(-averaged_logit))
    threshold = 0.7
    flip, record = fit_flip_band(single, averaged, threshold, slack=2.0)

    low, high = flip.band
    assert low < threshold < high
    changed = (single >= threshold) != (averaged >= threshold)
    assert changed.sum() == record["labels_changed_by_averaging"] > 0
    assert flip.applies(single)[changed].all()
    centre = np.log(threshold / (1 - threshold))
    farthest = np.abs(single_logit - centre)[changed].max()
    assert record["margin_logit"] == pytest.approx(2.0 * farthest, abs=1e-4)
    assert 0 < record["averaged_share_of_fit_images"] < 0.5


def test_without_label_changes_the_band_is_the_median_shift_wide():
    from training.ensemble import fit_flip_band

    single = np.array([0.01, 0.02, 0.97, 0.99])
    averaged = np.array([0.015, 0.01, 0.98, 0.995])
    flip, record = fit_flip_band(single, averaged, 0.5, slack=1.0)
    assert record["labels_changed_by_averaging"] == 0
    shifts = np.abs(np.log(single / (1 - single)) - np.log(averaged / (1 - averaged)))
    assert record["margin_logit"] == pytest.approx(np.median(shifts), abs=1e-4)
    assert not flip.applies(single).any()


def test_the_band_holds_the_threshold_as_model_json_stores_it_even_when_averaging_moves_nothing():
    from pneumoscan_eval import metrics
    from training.ensemble import fit_flip_band
    from training.pipeline import choose_threshold

    rng = np.random.default_rng(1)
    labels = np.r_[np.zeros(50, int), np.ones(50, int)]
    scores = np.r_[rng.uniform(0.2, 0.4, 50), rng.uniform(0.3, 0.5, 50)].astype(np.float32)
    threshold = choose_threshold(labels, scores, 0.9)
    assert threshold == round(threshold, 6)
    assert threshold == pytest.approx(metrics.threshold_for_sensitivity(labels, scores, 0.9), abs=5e-7)
    flip, _ = fit_flip_band(scores, scores, threshold)  # no shift: a band of zero width
    low, high = flip.band
    assert low <= threshold <= high
