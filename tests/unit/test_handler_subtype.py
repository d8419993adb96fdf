"""The pneumonia subtype through the real handler on moto: on PNEUMONIA items only, the uncertain
band as a warning, the SR's coded finding, the counters, and `results --subtype` on what was written."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pydicom
import pytest
from PIL import Image
from typer.testing import CliRunner

from dicom_cases import radiograph, to_bytes
from pneumoscan import results, telemetry
from pneumoscan.model import MODEL_DIR_ENV, SUBTYPE_UNCERTAIN, ModelMetadata, SubtypeHead
from pneumoscan_cli import aws
from pneumoscan_cli.main import app
from subtype_cases import model_without_subtype
from test_handler import NORMAL_XRAY, PNEUMONIA_XRAY, pytestmark  # noqa: F401 - same skip rule

BACTERIAL_PNEUMONIA, VIRAL_PNEUMONIA = "53084003", "75570004"


def _model_with_head(folder, band: tuple[float, float] | None):
    """The bundled network with a head of known weights: P(viral) = sigmoid(mean feature - 0.05)."""
    model_without_subtype(folder)
    metadata = ModelMetadata.read(folder)
    k = metadata.cam.weights.size
    metadata = dataclasses.replace(metadata, subtype=SubtypeHead(np.full(k, 1.0 / k), -0.05, 0.5, band))
    metadata.write(folder)
    return metadata.subtype


def _cold_start(stack, monkeypatch, folder):
    monkeypatch.setenv(MODEL_DIR_ENV, str(folder))
    stack.cold_start()


def _dicom_of(path) -> bytes:
    pixels = np.asarray(Image.open(path).convert("L"))
    return to_bytes(radiograph(pixels, ViewPosition="AP", PatientAge="003Y"))


def _finding_codes(stack, item) -> set[str]:
    report = pydicom.dcmread(io.BytesIO(stack.s3.get_object(Bucket=stack.settings.bucket,
                                                            Key=results.derived_key(item, results.SR_KEY))["Body"].read()))
    codes = set()

    def walk(dataset):
        for content in dataset.get("ContentSequence", []):
            if content.ValueType == "CODE" and content.ConceptNameCodeSequence[0].CodeValue == "121071":
                codes.add(content.ConceptCodeSequence[0].CodeValue)
            walk(content)
    walk(report)
    return codes & {BACTERIAL_PNEUMONIA, VIRAL_PNEUMONIA}


def test_a_positive_carries_its_subtype_and_negatives_and_failures_none(handler_stack, monkeypatch, tmp_path):
    stack = handler_stack
    head = _model_with_head(tmp_path / "model", None)
    _cold_start(stack, monkeypatch, tmp_path / "model")
    uploads = {"p.jpeg": PNEUMONIA_XRAY.read_bytes(), "n.jpeg": NORMAL_XRAY.read_bytes(),
               "p.dcm": _dicom_of(PNEUMONIA_XRAY), "letter.jpeg": b"referral letter"}
    for name, body in uploads.items():
        stack.put(f"{stack.prefix}s/{name}", body)
    stack.deliver()
    items = {item[results.KEY].rsplit("/", 1)[1]: item for item in stack.items()}

    for name in ("p.jpeg", "p.dcm"):
        positive = items[name]
        assert positive[results.LABEL] == "PNEUMONIA"
        probability = float(positive[results.SUBTYPE_PROBABILITY])
        assert 0.0 < probability < 1.0
        assert positive[results.SUBTYPE] == str(head.subtypes(probability))
        assert SUBTYPE_UNCERTAIN not in positive[results.WARNINGS]
    assert float(items["p.dcm"][results.SUBTYPE_PROBABILITY]) == pytest.approx(
        float(items["p.jpeg"][results.SUBTYPE_PROBABILITY]), abs=0.05)
    expected = {"bacterial": BACTERIAL_PNEUMONIA, "viral": VIRAL_PNEUMONIA}[items["p.dcm"][results.SUBTYPE]]
    assert _finding_codes(stack, items["p.dcm"]) == {expected}
    for name in ("n.jpeg", "letter.jpeg"):
        assert results.SUBTYPE not in items[name] and results.SUBTYPE_PROBABILITY not in items[name]

    (counter,) = stack.stats_items()
    subtype = items["p.jpeg"][results.SUBTYPE]
    assert counter[f"{telemetry.SUBTYPE_PREFIX}{subtype}"] == 2


def test_inside_the_band_the_result_is_warned_and_has_no_subtype(handler_stack, monkeypatch, tmp_path):
    stack = handler_stack
    _model_with_head(tmp_path / "model", (0.0, 1.0))
    _cold_start(stack, monkeypatch, tmp_path / "model")
    stack.put(f"{stack.prefix}u/p.jpeg", PNEUMONIA_XRAY.read_bytes())
    stack.put(f"{stack.prefix}u/p.dcm", _dicom_of(PNEUMONIA_XRAY))
    stack.deliver()
    items = {item[results.KEY].rsplit("/", 1)[1]: item for item in stack.items()}

    for item in items.values():
        assert results.SUBTYPE not in item and 0 < float(item[results.SUBTYPE_PROBABILITY]) < 1
        assert item[results.WARNINGS][-1] == SUBTYPE_UNCERTAIN and item[results.ATTENTION_DAY]
    assert _finding_codes(stack, items["p.dcm"]) == set()
    (counter,) = stack.stats_items()
    assert counter[f"{telemetry.SUBTYPE_PREFIX}{telemetry.UNCERTAIN_SUBTYPE}"] == 2
    assert not any(name in counter for name in ("subtype_bacterial", "subtype_viral"))


def test_results_filters_what_the_handler_wrote_by_subtype(handler_stack, monkeypatch, tmp_path):
    stack = handler_stack
    _model_with_head(tmp_path / "model", None)
    _cold_start(stack, monkeypatch, tmp_path / "model")
    stack.put(f"{stack.prefix}f/p.jpeg", PNEUMONIA_XRAY.read_bytes())
    stack.put(f"{stack.prefix}f/n.jpeg", NORMAL_XRAY.read_bytes())
    stack.deliver()
    subtype = stack.item(f"{stack.prefix}f/p.jpeg")[results.SUBTYPE]
    other = {"viral": "bacterial", "bacterial": "viral"}[subtype]

    settings = stack.settings
    target = aws.Target(bucket=settings.bucket, table=settings.table, region=settings.region, source="local")
    monkeypatch.setattr(aws, "local_target", lambda: target)
    monkeypatch.setenv(aws.STATE_DIR_ENV, str(tmp_path))
    aws.write_state(target)

    def keys(*arguments):
        outcome = CliRunner().invoke(app, ["results", *arguments, "--format", "json"])
        assert outcome.exit_code == 0, outcome.output
        return [item[results.KEY] for item in json.loads(outcome.stdout)]

    assert keys("--batch", "f", "--subtype", subtype) == [f"{stack.prefix}f/p.jpeg"]
    assert keys("--batch", "f", "--subtype", other) == []
    assert keys("--since", "1h", "--subtype", subtype) == [f"{stack.prefix}f/p.jpeg"]
