"""model.json as a type: read, written and round-tripped without losing anything."""

import dataclasses
import json

import numpy as np
import pytest

from pneumoscan.model import (CamUnavailable, ModelLoadError, ModelMetadata, PneumoniaModel, SubtypeHead,
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


SUBTYPE = {"labels": ["bacterial", "viral"], "threshold": 0.4, "uncertain_band": [0.3, 0.55],
           "threshold_rule": "balanced accuracy", "band_rule": "90 % outside", "bias": -0.25,
           "weights": [0.1, -0.30000000000000004], "fitted_on": {"images": 3}}


def test_the_subtype_section_is_typed_and_round_trips_byte_for_byte(tmp_path):
    ModelMetadata.from_dict({**MINIMAL, "subtype": SUBTYPE}).write(tmp_path)
    written = (tmp_path / "model.json").read_bytes()
    read = ModelMetadata.read(tmp_path)
    assert isinstance(read.subtype, SubtypeHead) and "subtype" not in read.extra
    assert read.subtype.extra == {"fitted_on": {"images": 3}} and read.subtype.labels == ("bacterial", "viral")
    read.write(tmp_path)
    assert (tmp_path / "model.json").read_bytes() == written
    assert json.loads(written)["subtype"] == SUBTYPE


def test_the_head_calls_viral_at_its_threshold_and_nothing_inside_its_band():
    head = ModelMetadata.from_dict({**MINIMAL, "subtype": SUBTYPE}).subtype
    logit = np.log(0.4 / 0.6)
    at_threshold = head.call(np.array([(logit + 0.25) / 0.1, 0.0]))
    assert at_threshold.probability == pytest.approx(0.4) and at_threshold.uncertain
    far_viral = head.call(np.array([30.0, 0.0]))
    far_bacterial = head.call(np.array([0.0, 30.0]))
    assert (far_viral.subtype, far_bacterial.subtype) == ("viral", "bacterial")
    assert list(head.subtypes(np.array([0.39, 0.4]))) == ["bacterial", "viral"]
    no_band = dataclasses.replace(head, uncertain_band=None)
    assert no_band.call(np.array([(logit + 0.25) / 0.1, 0.0])).subtype == "viral"


def test_a_model_without_a_subtype_section_has_no_head():
    metadata = ModelMetadata.from_dict(MINIMAL)
    assert metadata.subtype is None and "subtype" not in metadata.to_dict()


@pytest.mark.parametrize("change", [
    {"uncertain_band": [0.45, 0.55]}, {"threshold": 1.0}, {"weights": [float("nan"), 1.0]}, {"weights": []},
    {"labels": ["viral", "viral"]},
])
def test_a_broken_subtype_head_is_refused(change):
    with pytest.raises(ValueError):
        ModelMetadata.from_dict({**MINIMAL, "subtype": {**SUBTYPE, **change}})
