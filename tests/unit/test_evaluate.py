"""`pneumoscan evaluate`: same numbers as scoring the files directly; bad files listed, not skipped."""

import json
import shutil
from pathlib import Path

import pytest
from subtype_cases import model_without_subtype
from typer.testing import CliRunner

from pneumoscan_eval import metrics
from pneumoscan_eval.datasets import TRAINING_SET, default_data_dir
from pneumoscan.images import load_model_input
from pneumoscan.model import PneumoniaModel, default_model_dir
from pneumoscan_cli.main import app

DATA = default_data_dir() / TRAINING_SET / "val"
pytestmark = pytest.mark.skipif(
    not DATA.is_dir() or not (default_model_dir() / "model.json").is_file(),
    reason="needs the shared data folder and the committed model/")


@pytest.fixture()
def labelled_dir(tmp_path):
    """Plain layout: 4 real images per class, one corrupt JPEG and one text file."""
    for label in ("NORMAL", "PNEUMONIA"):
        (tmp_path / label).mkdir()
        for source in sorted((DATA / label).iterdir())[:4]:
            shutil.copy(source, tmp_path / label / source.name)
    good = sorted((DATA / "NORMAL").iterdir())[0].read_bytes()
    (tmp_path / "NORMAL" / "truncated.jpeg").write_bytes(good[: len(good) // 3])
    (tmp_path / "PNEUMONIA" / "notes.txt").write_text("not an x-ray")
    return tmp_path


def test_json_matches_direct_scoring(labelled_dir):
    result = CliRunner().invoke(app, ["evaluate", str(labelled_dir), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)

    model = PneumoniaModel()
    labels, scores = [], []
    for label, name in enumerate(("NORMAL", "PNEUMONIA")):
        for path in sorted((labelled_dir / name).iterdir()):
            if path.name in ("truncated.jpeg", "notes.txt"):
                continue
            pixels, _ = load_model_input(path.read_bytes(), *model.input_shape)
            scores.append(float(model.predict(pixels).probability[0]))
            labels.append(label)
    expected = metrics.summarize(labels, scores, model.threshold)
    assert report["n"] == 8
    assert report["threshold"] == model.threshold
    for key in ("accuracy", "sensitivity", "specificity", "auc"):
        assert report[key] == pytest.approx(getattr(expected, key))
    assert report["unreadable"] == 2
    assert sorted(Path(f["path"]).name for f in report["unreadable_files"]) == ["notes.txt", "truncated.jpeg"]
    assert all(f["reason"] and f["detail"] for f in report["unreadable_files"])


def test_table_output_lists_unreadable_files(labelled_dir):
    result = CliRunner().invoke(app, ["evaluate", str(labelled_dir)], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "sensitivity" in result.output and "notes.txt" in result.output


def test_not_a_labelled_folder_is_an_error(tmp_path):
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path), "--json"])
    assert result.exit_code == 2


def test_warned_images_are_counted_overall_per_label_and_per_code(labelled_dir, tmp_path):
    from PIL import Image

    for index, name in enumerate(("inverted_a.png", "inverted_b.png")):
        source = sorted((DATA / "PNEUMONIA").iterdir())[index]
        Image.eval(Image.open(source).convert("L"), lambda value: 255 - value).save(labelled_dir / "PNEUMONIA" / name)

    # Without a subtype head, whose band warns positives too (measured below).
    model_dir = model_without_subtype(tmp_path / "model")
    report = json.loads(CliRunner().invoke(
        app, ["evaluate", str(labelled_dir), "--json", "--model-dir", str(model_dir)]).stdout)

    # What each image is warned is the model's; the report must count exactly those.
    from collections import Counter

    from pneumoscan.images import ImageRejected
    from pneumoscan.scoring import Scorer

    scorer = Scorer.load(model_dir)
    warned = {}
    for path in sorted(labelled_dir.rglob("*")):
        try:
            warned[path.name] = scorer.score(path.read_bytes()).warnings if path.is_file() else ()
        except ImageRejected:  # an unreadable file is listed, not warned
            warned[path.name] = ()
    assert report["n"] == 10
    assert warned["inverted_a.png"] and warned["inverted_b.png"]  # inverted X-rays are warned
    by_label = {label: sum(bool(warned[p.name]) for p in (labelled_dir / label).rglob("*") if p.is_file())
                for label in ("NORMAL", "PNEUMONIA")}
    assert report["warned_by_label"] == by_label and by_label["PNEUMONIA"] >= 2
    assert report["warned"] == sum(by_label.values())
    assert report["warned_share"] == pytest.approx(report["warned"] / 10)
    assert report["warnings"] == dict(Counter(code for codes in warned.values() for code in codes))


def test_an_unexpected_error_on_one_file_is_listed_and_the_rest_evaluated(labelled_dir, monkeypatch):
    from pneumoscan.scoring import Scorer

    victim = sorted((labelled_dir / "PNEUMONIA").glob("*.jpeg"))[0]
    real_score_file = Scorer.score_file

    def choke_on_one(self, path, *args, **kwargs):
        if path == victim:
            raise TypeError("an unforeseen bug")
        return real_score_file(self, path, *args, **kwargs)

    monkeypatch.setattr(Scorer, "score_file", choke_on_one)

    result = CliRunner().invoke(app, ["evaluate", str(labelled_dir), "--json"])

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    failed = {Path(f["path"]).name: f for f in report["unreadable_files"]}
    assert failed[victim.name]["reason"] == "internal_error" and "unforeseen" in failed[victim.name]["detail"]
    assert report["n"] == 7


def test_the_subtype_is_measured_where_file_names_carry_it(labelled_dir):
    from pneumoscan.scoring import Scorer
    from pneumoscan_eval.datasets import list_labelled

    result = CliRunner().invoke(app, ["evaluate", str(labelled_dir), "--json"])
    assert result.exit_code == 0, result.output
    subtype = json.loads(result.stdout)["subtype"]

    scorer = Scorer.load()
    head = scorer.metadata.subtype
    truth, probabilities, rows = [], [], {}
    for item in list_labelled(labelled_dir):
        if item.path.name in ("truncated.jpeg", "notes.txt"):
            continue
        scored = scorer.score(item.path.read_bytes())
        true = "normal" if item.label == 0 else item.subtype
        called = str(head.subtypes(scored.subtype_probability)) if scored.positive else "normal"
        rows[(true, called)] = rows.get((true, called), 0) + 1
        if item.subtype and scored.positive:
            truth.append(item.subtype == "viral")
            probabilities.append(scored.subtype_probability)
    assert subtype["n"] == len(truth) > 0
    assert subtype["n_viral"] == sum(truth)
    if 0 < sum(truth) < len(truth):
        assert subtype["auc"] == pytest.approx(metrics.roc_auc(truth, probabilities))
    assert subtype["uncertain"] == int(head.uncertain(probabilities).sum())
    matrix = subtype["confusion_3x3"]
    assert set(matrix) == {"true normal", "true bacterial", "true viral"}
    for (true, called), count in rows.items():
        assert matrix[f"true {true}"][f"called {called}"] == count
    assert sum(row[column] for row in matrix.values() for column in row if column != "uncertain") == 8

    table = CliRunner().invoke(app, ["evaluate", str(labelled_dir)], env={"COLUMNS": "200"})
    assert "recall bacterial" in table.stdout and "true viral" in table.stdout


def test_no_subtype_figures_without_subtypes_in_the_names(tmp_path):
    for label in ("NORMAL", "PNEUMONIA"):
        (tmp_path / label).mkdir()
        for index, source in enumerate(sorted((DATA / label).iterdir())[:2]):
            shutil.copy(source, tmp_path / label / f"{index}.jpeg")
    report = json.loads(CliRunner().invoke(app, ["evaluate", str(tmp_path), "--json"]).stdout)
    assert report["n"] == 4 and "subtype" not in report
