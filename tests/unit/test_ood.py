"""Out-of-distribution maths, the fit and its cut, blank images, and the shipped statistics."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from image_cases import DATA_DIR, copy_data_subset
from pneumoscan import images, ood
from pneumoscan.model import METADATA_FILE, PneumoniaModel, default_model_dir
from pneumoscan_eval.datasets import LabelledFile, list_labelled

from training import ood as ood_fit
from training import ood_probes, shortcut_check

needs_model = pytest.mark.skipif(not (default_model_dir() / METADATA_FILE).is_file(), reason="needs a model in model/")
needs_data = pytest.mark.skipif(not DATA_DIR.is_dir(), reason="needs ../shared/data")


def _gaussian(rng, n, mean, covariance):
    return rng.multivariate_normal(mean, covariance, size=n)


def _covariance(rng, k):
    basis = rng.normal(size=(k, k))
    return basis @ basis.T / k + 0.1 * np.eye(k)


def test_distance_of_a_known_gaussian_matches_the_true_mahalanobis_distance():
    rng = np.random.default_rng(0)
    k, mean = 6, np.arange(6, dtype=float)
    covariance = _covariance(rng, k)
    fitted = ood.FeatureDistribution.fit(_gaussian(rng, 50_000, mean, covariance), model_sha256="m")

    fresh = _gaussian(rng, 2_000, mean, covariance)
    centred = fresh - mean
    true = np.sqrt(np.einsum("ni,ij,nj->n", centred, np.linalg.inv(covariance), centred))
    assert fitted.distance(fresh) == pytest.approx(true, rel=0.03, abs=0.03)
    # Squared distances of the fitting distribution are chi-squared with k degrees of freedom.
    assert np.mean(fitted.distance(fresh) ** 2) == pytest.approx(k, rel=0.08)
    # One vector and a batch give the same distance.
    assert fitted.distance(fresh[0]) == pytest.approx(fitted.distance(fresh[:1])[0])


def test_distance_follows_the_covariance_not_the_axes():
    # Unit variance along x, 100 along y: a step of 5 in y is closer than a step of 5 in x.
    fitted = ood.FeatureDistribution(np.zeros(2), np.diag([1.0, 0.01]), 3.0, "m")
    assert fitted.distance(np.array([5.0, 0.0])) == pytest.approx(5.0)
    assert fitted.distance(np.array([0.0, 5.0])) == pytest.approx(0.5)
    assert fitted.is_outside(np.array([[5.0, 0.0], [0.0, 5.0]])).tolist() == [True, False]


def test_ledoit_wolf_shrinks_little_with_plenty_of_data_and_keeps_few_samples_invertible():
    rng = np.random.default_rng(1)
    k = 20
    structured = _gaussian(rng, 20_000, np.zeros(k), _covariance(rng, k) * np.diag(np.linspace(1, 30, k)))
    _, shrinkage = ood.ledoit_wolf(structured)
    assert 0 <= shrinkage < 0.05

    few = rng.normal(size=(8, k))  # fewer samples than dimensions: the empirical covariance is singular
    covariance, shrinkage = ood.ledoit_wolf(few)
    assert shrinkage > 0.3
    assert np.all(np.linalg.eigvalsh(covariance) > 0)
    assert np.isfinite(ood.FeatureDistribution.fit(few, model_sha256="m").distance(few)).all()


def test_fit_refuses_too_few_features():
    with pytest.raises(ValueError):
        ood.FeatureDistribution.fit(np.ones((1, 4)), model_sha256="m")


def _patients(n_patients, images_each):
    return [LabelledFile(Path(f"train/NORMAL/IM-{p:04d}-{i:04d}.jpeg"), 0, "train")
            for p in range(n_patients) for i in range(images_each)]


def test_folds_keep_each_patients_images_together():
    files = _patients(40, 3)
    folds = ood_fit.patient_folds(files)
    assert sorted(set(folds)) == list(range(ood_fit.FOLDS))
    for start in range(0, len(files), 3):
        assert len(set(folds[start:start + 3])) == 1


def test_the_cut_flags_about_the_percentile_of_new_in_distribution_samples_and_most_shifted_ones():
    rng = np.random.default_rng(2)
    k = 8
    covariance = _covariance(rng, k)
    files = _patients(1_500, 2)
    features = _gaussian(rng, len(files), np.zeros(k), covariance)

    fitted, held_out = ood_fit.fit(features, ood_fit.patient_folds(files), model_sha256="m", percentile=97)

    assert np.mean(held_out > fitted.threshold) == pytest.approx(0.03, abs=0.005)
    fresh = _gaussian(rng, 20_000, np.zeros(k), covariance)
    assert 0.02 <= np.mean(fitted.is_outside(fresh)) <= 0.04
    shifted = fresh + 4 * np.sqrt(np.diag(covariance))
    assert np.mean(fitted.is_outside(shifted)) > 0.95
    assert fitted.model_sha256 == "m"


def test_statistics_round_trip_through_the_stored_matrix_and_entry():
    rng = np.random.default_rng(3)
    fitted = ood.FeatureDistribution.fit(rng.normal(size=(500, 5)), model_sha256="abc", threshold=4.2)
    stored = ood.FeatureDistribution.from_stored(fitted.matrix_bytes(), fitted.entry())
    probe = rng.normal(size=(50, 5)) * 3
    assert stored.threshold == 4.2 and stored.model_sha256 == "abc"
    assert stored.shrinkage == pytest.approx(fitted.shrinkage, abs=1e-6)
    assert stored.distance(probe) == pytest.approx(fitted.distance(probe), rel=1e-4)


def _model_folder(tmp_path, stats: ood.FeatureDistribution):
    data = stats.matrix_bytes()
    (tmp_path / "ood.npy").write_bytes(data)
    return {"file": "ood.npy", "sha256": hashlib.sha256(data).hexdigest(), **stats.entry()}


def test_load_checks_the_entry_the_digest_and_the_model(tmp_path):
    rng = np.random.default_rng(4)
    stats = ood.FeatureDistribution.fit(rng.normal(size=(50, 3)), model_sha256="abc", threshold=3.0)
    entry = _model_folder(tmp_path, stats)
    assert ood.load(tmp_path, entry, "abc").threshold == 3.0

    with pytest.raises(ood.OodStatsError, match="no 'ood' entry"):
        ood.load(tmp_path, None, "abc")
    with pytest.raises(ood.OodStatsError, match="fitted for model"):
        ood.load(tmp_path, entry, "another model")
    with pytest.raises(ood.OodStatsError, match="cannot read"):
        ood.load(tmp_path / "elsewhere", entry, "abc")
    (tmp_path / "ood.npy").write_bytes(b"tampered")
    with pytest.raises(ood.OodStatsError, match="sha256"):
        ood.load(tmp_path, entry, "abc")
    (tmp_path / "ood.npy").write_bytes(b"tampered")
    with pytest.raises(ood.OodStatsError, match="not a feature distribution"):
        ood.load(tmp_path, dict(entry, sha256=hashlib.sha256(b"tampered").hexdigest()), "abc")


@pytest.mark.parametrize("value", [0, 1, 128, 254, 255])
def test_constant_images_are_blank(value):
    with pytest.raises(images.ImageRejected) as raised:
        ood.check_not_blank(np.full((224, 224, 1), value, np.uint8))
    assert raised.value.reason == ood.BLANK_IMAGE


def test_a_faint_gradient_or_sensor_noise_is_still_blank_but_low_contrast_structure_is_not():
    rng = np.random.default_rng(5)
    noisy = np.clip(128 + rng.normal(0, 2, (224, 224, 1)), 0, 255).astype(np.uint8)
    with pytest.raises(images.ImageRejected):
        ood.check_not_blank(noisy)
    # A dim image whose grey levels still span 40 levels is not blank (the model may warn about it).
    ramp = np.tile(np.linspace(100, 140, 224), (224, 1))[..., None].astype(np.uint8)
    ood.check_not_blank(ramp)


@needs_data
def test_no_real_radiograph_is_blank():
    files = list_labelled(DATA_DIR / "chest_xray", splits=("val",)) + list_labelled(DATA_DIR / "xray_fullres_sample")
    for item in files[:60]:
        pixels, _ = images.load_model_input(item.path.read_bytes(), 224, 224, 1)
        assert ood.pixel_spread(pixels) > 4 * ood.BLANK_MAX_STD, item.path


@needs_model
def test_shipped_statistics_belong_to_the_shipped_model():
    model_dir = default_model_dir()
    metadata = json.loads((model_dir / METADATA_FILE).read_text())
    stats = ood.load(model_dir, metadata["ood"], metadata["sha256"])
    assert stats.threshold == pytest.approx(metadata["ood"]["threshold"], abs=1e-3)
    assert stats.mean.shape == (len(metadata["cam"]["weights"]),)
    assert (model_dir / metadata["ood"]["file"]).stat().st_size < 400_000


def _features(model, encoded):
    features, spread = ood_fit.features_of(model, encoded, "test")
    return features, spread


@needs_model
@needs_data
def test_real_xrays_mostly_pass_and_noise_documents_photos_and_inverted_xrays_are_flagged():
    model = PneumoniaModel()
    stats = ood.load(model.model_dir, model.metadata.ood, model.sha256)
    xrays = list_labelled(DATA_DIR / "chest_xray", splits=("val",)) + list_labelled(DATA_DIR / "xray_fullres_sample")[::5]
    features, _ = ood_fit.file_features(model, xrays, "real")
    assert np.mean(stats.is_outside(features)) <= 0.1

    rng = np.random.default_rng(6)
    upright = [images.decode(f.path.read_bytes()).image for f in xrays[:8]]
    for name, encoded in {"noise": ood_probes.noise(rng, 8), "documents": ood_probes.documents(rng, 6),
                          "textures": ood_probes.textures(rng, 6),
                          "inverted": ood_probes.transformed_xrays(upright, ood_probes.TRANSFORMS["inverted"]),
                          }.items():
        features, spread = _features(model, encoded)
        assert np.all(spread > ood.BLANK_MAX_STD), name  # none of these is blank: the distance must catch them
        assert np.all(stats.is_outside(features)), name
    # Not upside-down X-rays: they still have two lungs for the segmenter, and the network reads their
    # crop, which looks far less foreign than the whole frame did (60 % of 120 flagged, model/report/ood.json).


def test_generated_blanks_are_all_blank():
    rng = np.random.default_rng(7)
    for encoded in ood_probes.blanks(rng):
        pixels, _ = images.load_model_input(encoded, 224, 224, 1)
        with pytest.raises(images.ImageRejected):
            ood.check_not_blank(pixels)


@needs_model
@needs_data
def test_fit_command_writes_statistics_model_json_report_and_card(tmp_path):
    data = tmp_path / "data"
    # Enough patients for the folds; the official val stands in for validation.
    copy_data_subset(data, {"chest_xray/train": 30, "chest_xray/val": 4, "xray_fullres_sample": 3})
    model_dir = tmp_path / "model"
    shutil.copytree(default_model_dir(), model_dir, ignore=shutil.ignore_patterns("reference", "*.png"))
    metadata = json.loads((model_dir / METADATA_FILE).read_text())
    del metadata["ood"]
    (model_dir / METADATA_FILE).write_text(json.dumps(metadata))
    (model_dir / "ood.npy").unlink()

    result = ood_fit.main(["--data", str(data), "--model-dir", str(model_dir), "--percentile", "90"])

    written = json.loads((model_dir / METADATA_FILE).read_text())["ood"]
    assert written["percentile"] == 90 and written["fitted_on"]["images"] == result["statistics"]["fitted_on"]["images"]
    stats = ood.load(model_dir, written, metadata["sha256"])
    assert stats.threshold == pytest.approx(written["threshold"], abs=1e-3)
    report = json.loads((model_dir / "report" / ood_fit.REPORT_FILE).read_text())
    assert report["measured"]["generated"]["noise"]["share"] is not None
    assert report["measured"]["real"]["official val"]["images"] == 8
    card = (model_dir / "MODEL_CARD.md").read_text()
    assert card.count(ood_fit.CARD_START) == 1 and card.count(shortcut_check.CARD_START) == 1
    assert f"{written['threshold']:.2f}" in card


class _Evidence:
    def __init__(self, pixels, pooled_features):
        self.pixels, self.pooled_features = pixels, pooled_features


def test_scoring_checks_warn_far_features_and_refuse_blank_pixels():
    check = ood.OutOfDistributionCheck(ood.FeatureDistribution(np.zeros(2), np.eye(2), 3.0, "m"))
    textured = np.random.default_rng(8).integers(0, 256, (224, 224, 1), dtype=np.uint8)
    assert check(_Evidence(textured, np.array([1.0, 1.0]))) is None
    assert check(_Evidence(textured, np.array([3.0, 1.0]))) == ood.OUT_OF_DISTRIBUTION

    assert ood.blank_check(_Evidence(textured, None)) is None
    with pytest.raises(images.ImageRejected, match="nearly uniform"):
        ood.blank_check(_Evidence(np.zeros((224, 224, 1), np.uint8), None))


def test_the_card_section_states_the_populations_only_where_the_card_does_not():
    result = {"statistics": {"shrinkage": 0.0004, "threshold": 17.28, "percentile": 97.0},
              "measured": {"real": {"validation (by patient)": {"images": 10, "flagged": 1, "share": 0.1}},
                           "generated": {"noise": {"images": 2, "flagged": 2, "share": 1.0, "blank_image": 0,
                                                   "out_of_distribution": 2}},
                           "grey_level_std": {"validation": {"min": 28.0}}}}
    with_populations = ood_fit.card_section(result)
    without = ood_fit.card_section(result, populations=False)
    assert "Not trained on: adults" in with_populations and "Not trained on" not in without
    for section in (with_populations, without):
        assert "above 17.28, the 97th percentile" in section and "| noise | 2 / 2 (100.0%) | 0 | 2 |" in section
