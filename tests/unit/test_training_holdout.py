"""The collection hold-out proxy: what is held out, and the figures reported on it."""

from pathlib import Path

import numpy as np
import pytest

from training.data import collection
from training.holdout import SENSITIVITY_FLOORS, holdout_split, proxy_metrics, rule_name


def _layout(root: Path) -> Path:
    names = {("train", "NORMAL"): [f"IM-{i:04d}-0001.jpeg" for i in range(30)]
             + [f"NORMAL2-IM-{i:04d}-0001.jpeg" for i in range(100, 130)],
             ("train", "PNEUMONIA"): [f"person{i}_bacteria_{i}.jpeg" for i in range(60)],
             ("val", "NORMAL"): ["NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1430-0001.jpeg"],
             ("val", "PNEUMONIA"): ["person1946_bacteria_4874.jpeg", "person1950_bacteria_4881.jpeg"]}
    for (split, label), files in names.items():
        folder = root / split / label
        folder.mkdir(parents=True)
        for name in files:
            (folder / name).write_bytes(b"x")
    return root


def test_held_out_collection_is_on_neither_training_nor_threshold_side(tmp_path):
    split = holdout_split(_layout(tmp_path), "NORMAL2", 0.2, 7)
    assert {collection(f.path) for f in split.held_out} == {"NORMAL2"}
    assert len(split.held_out) == 32  # 30 train-split studies + the 2 official val normals
    assert "NORMAL2" not in {collection(f.path) for f in split.train + split.val}
    assert {f.label for f in split.val} == {0, 1} and {f.label for f in split.train} == {0, 1}
    # The official val is reported whole, its normals coming from the held-out side.
    assert sorted(f.path.name for f in split.official_val) == sorted(
        p.name for p in (tmp_path / "val").rglob("*.jpeg"))
    assert len(split.train) + len(split.val) + len(split.held_out) == 124
    with pytest.raises(ValueError):
        holdout_split(tmp_path, "NORMAL3", 0.2, 7)


def test_proxy_metrics_choose_the_threshold_on_val_only():
    val_labels = np.array([0] * 4 + [1] * 10)
    val_scores = np.r_[[0.1, 0.2, 0.3, 0.4], np.linspace(0.5, 0.95, 10)]
    held_labels = np.zeros(4, int)
    held_scores = np.array([0.05, 0.45, 0.62, 0.92])  # two above every val threshold
    official_labels = np.array([0, 0, 1, 1])
    official_scores = np.array([0.1, 0.7, 0.8, 0.9])
    result = proxy_metrics(val_labels, val_scores, held_labels, held_scores, official_labels, official_scores)
    assert set(result["rules"]) == {rule_name(f) for f in SENSITIVITY_FLOORS}
    row = result["rules"][rule_name(0.90)]
    # 90 % sensitivity on 10 positives: the threshold sits between 0.5 and 0.55.
    assert 0.5 < row["threshold"] < 0.55
    assert row["val_sensitivity"] == pytest.approx(0.9) and row["val_specificity"] == 1.0
    assert row["held_out_specificity"] == pytest.approx(0.5)
    assert row["official_val_false_positive"] == 1 and row["official_val_correct"] == 3
    assert result["held_out"]["negatives"] == 4
    # Held-out normals vs val positives: 0.05 and 0.45 below all ten, 0.62 above 3, 0.92 above 9.
    assert result["held_out"]["auc_vs_val_positives"] == pytest.approx(1 - (3 + 9) / 40)




def test_a_hold_out_run_is_recorded_at_the_shipped_rule_and_shown_on_the_card(tmp_path):
    import json

    from training.holdout import RESULT_FILE, read_proxy
    from training.report import _hold_out_section

    labels = np.array([0] * 4 + [1] * 10)
    scores = np.r_[[0.1, 0.2, 0.3, 0.4], np.linspace(0.5, 0.95, 10)]
    block = proxy_metrics(labels, scores, np.zeros(4, int), np.array([0.05, 0.45, 0.62, 0.92]),
                          labels[2:6], scores[2:6])
    flipped = proxy_metrics(labels, scores, np.zeros(4, int), np.array([0.05, 0.1, 0.2, 0.92]),
                            labels[2:6], scores[2:6])
    (tmp_path / RESULT_FILE).write_text(json.dumps({
        "held_out_collection": "NORMAL2", "epochs": 5, "training_seconds": 60.0,
        "config": {"augment": {"jpeg_probability": 0.4}}, "single": block, "flip_average": flipped}))
    row = read_proxy(tmp_path / RESULT_FILE, 0.90, flip_average=False)
    assert row["held_out_specificity"] == pytest.approx(0.5) and row["rule"] == rule_name(0.90)
    assert read_proxy(tmp_path / RESULT_FILE, 0.90, flip_average=True)["held_out_specificity"] == 0.75
    section = _hold_out_section([row])
    assert "| NORMAL2 | 5 | 4 |" in section and "50.0 %" in section
    assert "not measured" in _hold_out_section([])


def test_flip_band_rows_score_the_held_out_collection_as_the_scorer_would():
    from training.holdout import flip_band_rows

    rng = np.random.default_rng(5)
    val_labels = np.r_[np.zeros(200, int), np.ones(400, int)]
    val_logit = np.r_[rng.normal(-3, 2, 200), rng.normal(4, 2, 400)]
    val_mirror = val_logit + rng.normal(0, 1.0, 600)
    held_labels = np.zeros(300, int)
    held_logit = rng.normal(-1, 2.5, 300)
    held_mirror = held_logit + rng.normal(0, 1.0, 300)
    sigmoid = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    val_single, held_single = sigmoid(val_logit), sigmoid(held_logit)
    val_averaged, held_averaged = sigmoid((val_logit + val_mirror) / 2), sigmoid((held_logit + held_mirror) / 2)

    rows = flip_band_rows(val_labels, val_single, val_averaged, held_labels, held_single, held_averaged)
    assert set(rows) == {rule_name(floor) for floor in SENSITIVITY_FLOORS}
    row = rows[rule_name(0.96)]
    assert 0 < row["held_out_flip_band_share"] < 1
    assert 0.9 <= row["held_out_label_agreement_with_every_image_averaged"] <= 1.0
    assert 0.0 <= row["held_out_specificity_flip_band"] <= 1.0


def test_promote_adds_a_hold_out_run_and_keeps_the_rows_of_other_runs(tmp_path):
    import json
    import shutil

    from pneumoscan.model import ModelMetadata, default_model_dir
    from training.holdout import RESULT_FILE
    from training.pipeline import promote

    source = tmp_path / "export"
    shutil.copytree(default_model_dir(), source)
    labels = np.r_[np.zeros(50, int), np.ones(50, int)]
    scores = np.linspace(0.01, 0.99, 100)
    block = proxy_metrics(labels, scores, np.zeros(20, int), np.full(20, 0.2), labels[:4], scores[:4])
    # Another run's row, recorded before (the bundled model may have none of its own).
    other = tmp_path / "other"
    other.mkdir()
    (other / RESULT_FILE).write_text(json.dumps({"held_out_collection": "IM", "epochs": 1, "training_seconds": 1.0,
                                                 "single": block, "flip_average": block}))
    promote(source, source, proxy_results=(other / RESULT_FILE,))
    before = ModelMetadata.read(source).metrics["collection_hold_out"]
    assert str(other) in {row["run"] for row in before}
    run = tmp_path / "holdout"
    run.mkdir()
    (run / RESULT_FILE).write_text(json.dumps({"held_out_collection": "NORMAL2", "epochs": 1, "training_seconds": 1.0,
                                               "single": block, "flip_average": block}))

    promote(source, tmp_path / "model", version="9.9.9-1", proxy_results=(run / RESULT_FILE,))
    promote(tmp_path / "model", tmp_path / "again", version="9.9.9-2", proxy_results=(run / RESULT_FILE,))
    promote(tmp_path / "again", tmp_path / "again", version="9.9.9-2")  # in place: nothing but the card rewritten
    after = ModelMetadata.read(tmp_path / "again").metrics["collection_hold_out"]
    assert after[:len(before)] == before  # other runs' rows, as recorded
    assert len(after) == len(before) + 1  # the run read twice has one row
    assert after[-1]["run"] == str(run) and after[-1]["held_out_specificity"] == 1.0
    assert json.loads((tmp_path / "again" / "report" / "metrics.json").read_text())["model"]["version"] == "9.9.9-2"
    # What `make ood` and `make shortcut` wrote into the card survives the card being rewritten.
    from training import ood, shortcut_check
    card = (tmp_path / "again" / "MODEL_CARD.md").read_text()
    original = (default_model_dir() / "MODEL_CARD.md").read_text()
    for start, end in ((ood.CARD_START, ood.CARD_END), (shortcut_check.CARD_START, shortcut_check.CARD_END)):
        assert card.count(start) == 1
        assert card.split(start)[1].split(end)[0] == original.split(start)[1].split(end)[0]
    assert "# Model card: pneumoscan-cnn 9.9.9-2" in card
    assert ModelMetadata.read(tmp_path / "again").promoted_from == str(tmp_path / "model")
