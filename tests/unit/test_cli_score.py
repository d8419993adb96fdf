"""`pneumoscan score`: offline scoring with the Lambda's statuses and reasons, one JSON object per line."""

import json

import pytest
from subtype_cases import subtype_warnings
from typer.testing import CliRunner

from image_cases import CASES, REFERENCE_XRAY
from pneumoscan import images
from pneumoscan.model import PneumoniaModel
from pneumoscan.scoring import Scorer
from pneumoscan.settings import Settings
from pneumoscan_cli import score as score_module
from pneumoscan_cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def model():
    return PneumoniaModel()


@pytest.fixture(scope="module")
def case_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cases")
    files = {}
    for case in CASES:
        path = folder / f"{case.name}{case.suffix}"
        path.write_bytes(case.make())
        files[str(path)] = case
    return files


def test_every_input_case_gets_the_lambdas_status_and_reason(case_files):
    result = runner.invoke(app, ["score", *case_files, "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["image"] for line in lines] == list(case_files)
    for line in lines:
        case = case_files[line["image"]]
        assert {"image", "status", "probability", "label", "error"} <= set(line)
        assert (line["status"], line["reason"]) == (case.status, case.reason), case.name
        if case.status == "SCORED":
            assert 0.0 <= line["probability"] <= 1.0 and line["label"] in ("NORMAL", "PNEUMONIA")
            assert line["error"] is None
        else:
            assert line["probability"] is None and line["label"] is None and line["error"]


def test_scores_are_the_models_own(model):
    line = json.loads(runner.invoke(app, ["score", str(REFERENCE_XRAY), "--json"]).stdout)
    from pneumoscan.images import load_model_input
    pixels, _ = load_model_input(REFERENCE_XRAY.read_bytes(), *model.input_shape)
    probability = float(model.predict(pixels).probability[0])
    assert line["probability"] == pytest.approx(probability, abs=1e-6)
    assert line["label"] == model.label(probability)


def test_folders_are_walked_and_the_table_view_lists_them(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.JPG").write_bytes(REFERENCE_XRAY.read_bytes())
    (tmp_path / "readme.txt").write_text("not scored: folders only contribute image names")
    result = runner.invoke(app, ["score", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "x.JPG" in result.output and "SCORED" in result.output and "readme" not in result.output


def test_objects_above_the_size_cap_are_refused_unread(tmp_path, monkeypatch, model):
    big = tmp_path / "big.jpeg"
    big.write_bytes(REFERENCE_XRAY.read_bytes())
    scored = score_module.score_file(Scorer(model), big, Settings(max_object_bytes=1000))
    assert (scored.status, scored.reason) == ("FAILED", "object_too_large")


def test_a_missing_model_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["score", str(REFERENCE_XRAY), "--model-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "model.json" in result.output


def test_an_unexpected_error_on_one_file_is_its_failed_row_and_the_rest_are_scored(tmp_path, monkeypatch):
    reference = REFERENCE_XRAY.read_bytes()
    for name in ("a.jpeg", "b.jpeg", "c.jpeg"):
        (tmp_path / name).write_bytes(reference)
    (tmp_path / "b.jpeg").write_bytes(reference + b"\0")  # the one the broken decoder chokes on
    real_load = images.load_model_input

    def choke_on_b(data, *args, **kwargs):
        if data.endswith(b"\0"):
            raise TypeError("an unforeseen bug")
        return real_load(data, *args, **kwargs)

    monkeypatch.setattr(images, "load_model_input", choke_on_b)

    result = runner.invoke(app, ["score", str(tmp_path), "--json"])

    assert result.exit_code == 0, result.output
    rows = {json.loads(line)["image"].rsplit("/", 1)[-1]: json.loads(line) for line in result.stdout.splitlines()}
    assert [rows[name]["status"] for name in ("a.jpeg", "b.jpeg", "c.jpeg")] == ["SCORED", "FAILED", "SCORED"]
    assert rows["b.jpeg"]["reason"] == "internal_error" and "TypeError: an unforeseen bug" in rows["b.jpeg"]["error"]


def test_a_file_that_cannot_be_read_is_its_failed_row(tmp_path, model):
    folder = tmp_path / "not-a-file.jpeg"
    folder.mkdir()

    scored = score_module.score_file(Scorer(model), folder)

    assert (scored.status, scored.reason) == ("FAILED", "unreadable_file")
    assert scored.error


def test_file_names_that_look_like_console_markup_are_shown_as_written(tmp_path):
    (tmp_path / "[bold] [red]x.jpeg").write_bytes(REFERENCE_XRAY.read_bytes())

    result = runner.invoke(app, ["score", str(tmp_path)], env={"COLUMNS": "300"})

    assert result.exit_code == 0, result.output
    assert "[bold] [red]x.jpeg" in result.output


def test_warnings_are_in_every_json_line_and_in_the_table(tmp_path, monkeypatch):
    import io

    import numpy as np
    from PIL import Image

    def png(pixels):
        buffer = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8), "L").save(buffer, "PNG")
        return buffer.getvalue()

    (tmp_path / "grey.png").write_bytes(png(np.full((300, 300), 128)))
    (tmp_path / "noise.png").write_bytes(png(np.random.default_rng(0).integers(0, 256, (300, 300))))
    (tmp_path / "xray.jpeg").write_bytes(REFERENCE_XRAY.read_bytes())

    lines = {json.loads(line)["image"].rsplit("/", 1)[1]: json.loads(line)
             for line in runner.invoke(app, ["score", str(tmp_path), "--json"]).stdout.splitlines()}
    assert (lines["grey.png"]["status"], lines["grey.png"]["reason"], lines["grey.png"]["warnings"]) == (
        "FAILED", "blank_image", [])
    noise = lines["noise.png"]["warnings"]
    assert lines["noise.png"]["status"] == "SCORED" and noise[:2] == ["lung_field_not_found", "out_of_distribution"]
    assert set(noise) <= {"lung_field_not_found", "out_of_distribution", "adult_like_image",
                          *subtype_warnings(lines["noise.png"])}
    assert lines["xray.jpeg"]["status"] == "SCORED" and lines["xray.jpeg"]["warnings"] == subtype_warnings(
        lines["xray.jpeg"])

    monkeypatch.chdir(tmp_path)  # short paths: one table row per line
    table = runner.invoke(app, ["score", "."], env={"COLUMNS": "250"})
    assert table.exit_code == 0, table.output
    noise_row = next(line for line in table.stdout.splitlines() if "noise.png" in line)
    assert "out_of_distribution" in noise_row
    assert "3 file(s): 2 scored" in table.stdout and "1 warned), 1 failed" in table.stdout
