"""The population head (`adult_like_image`): its maths, its model.json section, the fit and its
folds, the scorer's default checks, and the head shipped with the model."""

import csv
import json
import shutil

import numpy as np
import pytest

from image_cases import DATA_DIR, copy_data_subset
from pneumoscan import population
from pneumoscan.model import METADATA_FILE, ModelLoadError, PneumoniaModel, default_model_dir
from pneumoscan.scoring import WARNING_MEANINGS, Scorer
from training import population as fit

needs_model = pytest.mark.skipif(not (default_model_dir() / METADATA_FILE).is_file(), reason="needs a model in model/")
needs_data = pytest.mark.skipif(not DATA_DIR.is_dir(), reason="needs ../shared/data")


def head(threshold=0.0, sha="m"):
    return population.PopulationHead(np.array([1.0, 2.0]), np.array([2.0, 4.0]), np.array([1.0, -1.0]), 0.5,
                                      threshold, sha)


def test_the_logit_is_the_standardised_features_dot_the_weights_plus_bias():
    assert head().logit(np.array([3.0, 2.0])) == pytest.approx(1.0 + 0.5)
    assert head().logit(np.array([[1.0, 6.0], [3.0, 2.0]])) == pytest.approx([-0.5, 1.5])
    assert list(head(threshold=1.0).is_adult_like(np.array([[1.0, 6.0], [3.0, 2.0]]))) == [False, True]


def test_the_section_round_trips_and_names_its_code():
    entry = head(threshold=0.12345).entry()
    assert entry["code"] == population.ADULT_LIKE_IMAGE == "adult_like_image"
    restored = population.PopulationHead.from_entry(json.loads(json.dumps(entry)))
    assert restored.threshold == pytest.approx(0.1235) and restored.model_sha256 == "m"
    np.testing.assert_allclose(restored.logit(np.array([[3.0, 2.0], [0.0, 9.0]])),
                               head().logit(np.array([[3.0, 2.0], [0.0, 9.0]])), rtol=1e-6)


@pytest.mark.parametrize("change", [{"weights": [1.0]}, {"scale": [0.0, 1.0]}, {"bias": "x"}, {"mean": None}])
def test_a_damaged_section_is_refused(change):
    with pytest.raises(population.PopulationHeadError):
        population.PopulationHead.from_entry({**head().entry(), **change})
    with pytest.raises(population.PopulationHeadError):
        population.PopulationHead.from_entry({key: value for key, value in head().entry().items() if key != "bias"})


def test_another_models_head_is_refused_and_no_section_means_no_check():
    with pytest.raises(population.PopulationHeadError, match="refit"):
        population.load(head(sha="other").entry(), "mine")
    assert population.checks_for(None, "mine") == ()
    (check,) = population.checks_for(head(sha="mine").entry(), "mine")

    class Evidence:
        pooled_features = np.array([3.0, 2.0])

    assert check(Evidence()) == population.ADULT_LIKE_IMAGE
    Evidence.pooled_features = np.array([1.0, 6.0])
    assert check(Evidence()) is None
    assert population.ADULT_LIKE_IMAGE in WARNING_MEANINGS


def test_the_logistic_fit_separates_and_weighs_the_classes_equally():
    rng = np.random.default_rng(0)
    # 900 of one class around -1, 100 of the other around +1 on the first axis; the second is noise.
    x = np.vstack([rng.normal([-1, 0], 0.5, (900, 2)), rng.normal([1, 0], 0.5, (100, 2))])
    y = np.r_[np.zeros(900), np.ones(100)]
    weights, bias = fit.fit_logistic(x, y, l2=1e-3)
    assert weights[0] > 3 * abs(weights[1]) and weights[0] > 0
    # Balanced weights put the boundary midway between the class means, not towards the minority.
    assert -bias / weights[0] == pytest.approx(0.0, abs=0.15)
    stronger, _ = fit.fit_logistic(x, y, l2=1.0)
    assert abs(stronger[0]) < abs(weights[0])
    with pytest.raises(ValueError, match="both classes"):
        fit.fit_logistic(x, np.zeros(1000), l2=1e-3)


def test_a_constant_feature_is_left_at_scale_one():
    mean, scale = fit.standardiser(np.array([[1.0, 5.0], [3.0, 5.0]]))
    assert list(mean) == [2.0, 5.0] and list(scale) == [1.0, 1.0]


def test_groups_share_a_fold():
    groups = ["a", "a", "b", "c", "c", "c", "d", "e", "f"]
    folds = fit.group_folds(groups, folds=3, seed=1)
    assert len(set(folds[:2])) == 1 and len(set(folds[3:6])) == 1
    assert set(folds) == {0, 1, 2}
    assert list(folds) == list(fit.group_folds(groups, folds=3, seed=1))


def test_held_out_logits_come_from_heads_that_never_saw_the_fold(monkeypatch):
    rng = np.random.default_rng(2)
    features = rng.normal(size=(40, 3))
    pool = fit.Pool(features, np.r_[np.zeros(20, bool), np.ones(20, bool)], np.arange(40) % 4,
                    np.r_[np.ones(38, bool), np.zeros(2, bool)], np.array(["paediatric"] * 20 + ["nih"] * 20))
    seen = []
    real = fit.fit_head

    def spy(x, adult, **kwargs):
        seen.append({tuple(row) for row in x})
        return real(x, adult, **kwargs)

    monkeypatch.setattr(fit, "fit_head", spy)
    logits = fit.held_out_logits(pool, l2=1e-2)
    assert len(seen) == 4 and np.isfinite(logits).all()
    for fold, fitted in enumerate(seen):
        scored = {tuple(row) for row in features[pool.folds == fold]}
        assert not scored & fitted
        assert not {tuple(row) for row in features[~pool.trained]} & fitted  # scored, never fitted on


@needs_data
def test_adult_sets_are_listed_once_with_their_cases_and_ages():
    nih = fit.nih_samples(DATA_DIR)
    assert len(nih) == 489 and sum(s.age is not None and s.age < fit.ADULT_AGE for s in nih) == 30
    assert len({s.group for s in nih}) == 342
    masks = fit.lung_mask_samples(DATA_DIR)
    assert len(masks) == 525 - 63 and len({s.path.name for s in masks}) == len(masks)
    assert all(s.path.is_file() for s in masks[:20])
    assert len({s.group for s in masks}) < len(masks)  # several images of one case share a group


@needs_model
def test_the_shipped_head_belongs_to_the_shipped_model_and_the_scorer_loads_it():
    model = PneumoniaModel()
    section = model.metadata.population
    assert section["code"] == population.ADULT_LIKE_IMAGE and section["model_sha256"] == model.sha256
    assert len(section["weights"]) == len(model.metadata.cam.weights)
    assert any(isinstance(check, population.AdultLikeCheck) for check in Scorer(model).checks)


@needs_model
def test_a_head_of_another_model_stops_the_scorer(tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(default_model_dir(), model_dir, ignore=shutil.ignore_patterns("reference", "report", "*.png"))
    metadata = json.loads((model_dir / METADATA_FILE).read_text())
    metadata["population"] = {**head(sha="another model").entry()}
    (model_dir / METADATA_FILE).write_text(json.dumps(metadata))
    with pytest.raises(ModelLoadError, match="population head"):
        Scorer.load(model_dir)


@needs_model
@needs_data
def test_the_shipped_head_warns_adults_of_another_hospital_not_the_official_val():
    scorer = Scorer.load()
    with (DATA_DIR / fit.NIH_SET / "labels.csv").open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if int(row["age"]) >= 30][:20]
    nih = [scorer.score((DATA_DIR / fit.NIH_SET / row["file"]).read_bytes()) for row in rows]
    assert sum(population.ADULT_LIKE_IMAGE in s.warnings for s in nih) >= 17
    official = sorted((DATA_DIR / "chest_xray" / "val").rglob("*.jpeg"))
    assert len(official) == 16
    assert sum(population.ADULT_LIKE_IMAGE in scorer.score(p.read_bytes()).warnings for p in official) <= 1


@needs_model
@needs_data
def test_fit_command_writes_the_section_report_and_card(tmp_path):
    data = tmp_path / "data"
    copy_data_subset(data, {"chest_xray/train": 30, "chest_xray/val": 4})
    with (DATA_DIR / fit.NIH_SET / "labels.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    chosen = rows[:25] + [row for row in rows if int(row["age"]) < fit.ADULT_AGE][:3]
    for row in chosen:
        (data / fit.NIH_SET / row["file"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(DATA_DIR / fit.NIH_SET / row["file"], data / fit.NIH_SET / row["file"])
    with (data / fit.NIH_SET / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(chosen)
    masks_source = DATA_DIR / fit.LUNG_MASKS_SET / "ieee8023_v7labs"
    masks = data / fit.LUNG_MASKS_SET / "ieee8023_v7labs"
    (masks / "images").mkdir(parents=True)
    with (masks_source / "pairs.csv").open(newline="") as handle:
        pairs = list(csv.DictReader(handle))[:15]
    for pair in pairs:
        shutil.copy(masks_source / "images" / pair["file"], masks / "images" / pair["file"])
    with (masks / "pairs.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(pairs[0]))
        writer.writeheader()
        writer.writerows(pairs)
    model_dir = tmp_path / "model"
    shutil.copytree(default_model_dir(), model_dir, ignore=shutil.ignore_patterns("reference", "*.png"))
    metadata = json.loads((model_dir / METADATA_FILE).read_text())
    del metadata["population"]
    (model_dir / METADATA_FILE).write_text(json.dumps(metadata))

    result = fit.main(["--data", str(data), "--model-dir", str(model_dir), "--adults", "nih", "--percentile", "90"])

    section = json.loads((model_dir / METADATA_FILE).read_text())["population"]
    assert section["adults"] == ["nih"] and section["percentile"] == 90
    adults = sum(int(row["age"]) >= fit.ADULT_AGE for row in chosen)
    assert section["fitted_on"]["nih"] == adults and section["fitted_on"]["lung_masks"] == 0
    validation = result["measured"]["paediatric"]["validation (by patient, with the official val)"]["images"]
    assert section["fitted_on"]["paediatric"] + validation == 60 + 8  # every train image is on one side
    assert any(isinstance(check, population.AdultLikeCheck) for check in Scorer.load(model_dir).checks)
    measured = result["measured"]
    assert measured["adult"]["nih (cross-validated)"]["images"] == 28
    assert measured["adult"]["nih, aged under 18"]["images"] == len(chosen) - adults
    assert measured["adult"]["lung_masks (never trained on)"]["images"] == 15
    assert measured["paediatric"]["official val"]["images"] == 8
    assert json.loads((model_dir / "report" / fit.REPORT_FILE).read_text()) == json.loads(json.dumps(result))
    assert set(result["options"]) == {fit.option_name(["nih"], l2) for l2 in fit.L2_OPTIONS}
    card = (model_dir / "MODEL_CARD.md").read_text()
    assert card.count(fit.CARD_START) == 1 and f"{section['threshold']:.3f}" in card


@needs_model
def test_the_population_section_is_typed_and_survives_a_write(tmp_path):
    from pneumoscan.model import ModelMetadata

    raw = json.loads((default_model_dir() / METADATA_FILE).read_text())
    raw["population"] = head(sha=raw["sha256"]).entry()
    ModelMetadata.from_dict(raw).write(tmp_path)
    read = ModelMetadata.read(tmp_path)
    assert read.population == raw["population"] and "population" not in read.extra
    assert population.load(read.population, raw["sha256"]).bias == 0.5
