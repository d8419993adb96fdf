"""model.json as a type: read, written and round-tripped without losing anything."""

import json

import pytest

from pneumoscan.model import (CamUnavailable, ModelLoadError, ModelMetadata, PneumoniaModel,
                              default_model_dir)

MINIMAL = {"name": "m", "version": "1", "file": "m.tflite", "sha256": "00",
           "input": {"height": 8, "width": 8, "channels": 1}, "labels": ["NEGATIVE", "POSITIVE"],
           "threshold": 0.25, "cam": {"weights": [1.0, -1.0], "bias": 0.5}}


def test_the_bundled_model_json_round_trips_exactly():
    raw = json.loads((default_model_dir() / "model.json").read_text())
    metadata = ModelMetadata.read(default_model_dir())
    assert metadata.to_dict() == raw and list(metadata.to_dict()) == list(raw)
    assert metadata.input.shape == PneumoniaModel().input_shape


def test_labels_are_negative_then_positive_and_the_threshold_decides():
    metadata = ModelMetadata.from_dict(MINIMAL)
    assert (metadata.negative_label, metadata.positive_label) == ("NEGATIVE", "POSITIVE")
    assert metadata.label(0.25) == "POSITIVE" and metadata.label(0.2499) == "NEGATIVE"
    assert metadata.is_positive("POSITIVE") and not metadata.is_positive("NEGATIVE")


def test_unknown_sections_survive_a_write(tmp_path):
    ModelMetadata.from_dict({**MINIMAL, "drift_baseline": {"mean": [0.0]}}).write(tmp_path)
    assert json.loads((tmp_path / "model.json").read_text())["drift_baseline"] == {"mean": [0.0]}
    assert ModelMetadata.read(tmp_path).extra == {"drift_baseline": {"mean": [0.0]}}


def test_the_ood_section_is_typed_and_survives_a_write(tmp_path):
    section = {"file": "ood.npy", "sha256": "d", "threshold": 17.0, "model_sha256": "m"}
    ModelMetadata.from_dict({**MINIMAL, "ood": section}).write(tmp_path)
    read = ModelMetadata.read(tmp_path)
    assert read.ood == section and "ood" not in read.extra


def test_a_model_without_threshold_cannot_label():
    metadata = ModelMetadata.from_dict({k: v for k, v in MINIMAL.items() if k != "threshold"})
    with pytest.raises(ModelLoadError, match="threshold"):
        metadata.label(0.5)


@pytest.mark.parametrize("change, error", [
    ({"labels": ["ONLY"]}, ValueError), ({"labels": ["SAME", "SAME"]}, ValueError),
    ({"threshold": 1.5}, ValueError), ({"cam": {"weights": [], "bias": 0}}, CamUnavailable),
    ({"cam": {"weights": [float("nan")], "bias": 0}}, CamUnavailable),
])
def test_a_broken_contract_is_refused(change, error):
    with pytest.raises(error):
        ModelMetadata.from_dict({**MINIMAL, **change})


def test_an_unreadable_model_json_is_a_model_load_error(tmp_path):
    (tmp_path / "model.json").write_text("{ not json")
    with pytest.raises(ModelLoadError, match="cannot read"):
        ModelMetadata.read(tmp_path)
