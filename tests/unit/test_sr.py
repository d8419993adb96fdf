"""The structured report: read back, references the source, validated by dciodvfy, no patient data."""

from __future__ import annotations

import dataclasses
import io
import shutil
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest

from dicom_cases import PHI_MARKERS, SERIES_UID, SOP_UID, STUDY_UID, radiograph, reference_pixels, to_bytes
from pneumoscan import dicom, sr

SCORE = sr.Score(model_name="pneumoscan-cnn", model_version="2026.11.25-3", probability=0.8312,
                 label="PNEUMONIA", positive=True, threshold=0.7625,
                 warnings=("adult_patient",), hot_region=(100, 200, 300, 400), subtype="viral",
                 subtype_probability=0.8731)
UNCERTAIN = sr.Score(**{**SCORE.__dict__, "subtype": None, "subtype_probability": 0.41,
                        "warnings": ("adult_patient", "subtype_uncertain")})


@pytest.fixture(scope="module")
def source():
    return dicom.decode(to_bytes(radiograph(reference_pixels(), PatientAge="045Y", **PHI_MARKERS)))


@pytest.fixture(scope="module")
def report(source) -> bytes:
    return sr.report_bytes(source.dicom, SCORE)


def _read(report: bytes) -> hd.sr.ComprehensiveSR:
    return hd.sr.srread(io.BytesIO(report))


def _content_items(dataset):
    for item in dataset.get("ContentSequence", []):
        yield item
        yield from _content_items(item)


def test_the_report_is_filed_in_the_source_study_and_references_the_instance(report):
    document = _read(report)
    assert document.StudyInstanceUID == STUDY_UID
    assert document.Modality == "SR"
    assert document.SeriesInstanceUID != SERIES_UID and document.SOPInstanceUID != SOP_UID
    evidence = document.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == STUDY_UID
    referenced = evidence.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == SERIES_UID
    assert referenced.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == SOP_UID


def test_the_report_states_score_label_threshold_model_and_warnings(report):
    document = _read(report)
    items = list(_content_items(document))
    numbers = {item.ConceptNameCodeSequence[0].CodeValue: float(item.MeasuredValueSequence[0].NumericValue)
               for item in items if item.ValueType == "NUM"}
    assert numbers == {"P-PNEUMONIA": pytest.approx(0.8312), "THRESHOLD": pytest.approx(0.7625),
                       "P-VIRAL": pytest.approx(0.8731)}
    codes = {(item.ConceptNameCodeSequence[0].CodeValue, item.ConceptCodeSequence[0].CodeValue)
             for item in items if item.ValueType == "CODE"}
    assert ("233604007", "52101004") in codes  # Pneumonia: Present
    assert ("121071", "75570004") in codes  # Finding: Viral pneumonia (SNOMED CT)
    assert ("WARNING", "ADULT_PATIENT") in codes
    texts = {item.TextValue for item in items if item.ValueType == "TEXT"}
    assert {"pneumoscan-cnn", "2026.11.25-3"} <= texts


def test_a_negative_is_reported_absent(source):
    negative = sr.Score(**{**SCORE.__dict__, "probability": 0.1, "label": "NORMAL", "positive": False,
                                   "warnings": ()})
    items = list(_content_items(_read(sr.report_bytes(source.dicom, negative))))
    codes = {(item.ConceptNameCodeSequence[0].CodeValue, item.ConceptCodeSequence[0].CodeValue)
             for item in items if item.ValueType == "CODE"}
    assert ("233604007", "272519000") in codes  # Pneumonia: Absent
    assert not any(name == "WARNING" for name, _ in codes)


def test_a_bacterial_call_is_its_finding_and_an_uncertain_one_states_none(source):
    def coded(score):
        items = list(_content_items(_read(sr.report_bytes(source.dicom, score))))
        return ({(item.ConceptNameCodeSequence[0].CodeValue, item.ConceptCodeSequence[0].CodeValue)
                 for item in items if item.ValueType == "CODE"},
                {item.ConceptNameCodeSequence[0].CodeValue for item in items if item.ValueType == "NUM"})

    bacterial, numbers = coded(sr.Score(**{**SCORE.__dict__, "subtype": "bacterial", "subtype_probability": 0.1}))
    assert ("121071", "53084003") in bacterial and "P-VIRAL" in numbers
    uncertain, numbers = coded(UNCERTAIN)
    findings = {("121071", "53084003"), ("121071", "75570004")}
    assert not uncertain & findings and "P-VIRAL" in numbers
    assert ("WARNING", "SUBTYPE_UNCERTAI") in uncertain  # a code value holds 16 characters
    negative, numbers = coded(sr.Score(**{**SCORE.__dict__, "positive": False, "label": "NORMAL", "subtype": None,
                                          "subtype_probability": None}))
    assert not negative & findings and "P-VIRAL" not in numbers


def test_the_hot_region_is_a_scoord_on_the_source_image(report):
    items = list(_content_items(_read(report)))
    (scoord,) = [item for item in items if item.ValueType == "SCOORD"]
    assert scoord.GraphicType == "POLYLINE"
    points = np.array(scoord.GraphicData, dtype=float).reshape(-1, 2)
    assert points.tolist() == [[100, 200], [400, 200], [400, 600], [100, 600], [100, 200]]
    image = scoord.ContentSequence[0]
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == SOP_UID


def test_the_same_image_and_model_give_the_same_report_instance(source, report):
    again = pydicom.dcmread(io.BytesIO(sr.report_bytes(source.dicom, SCORE)))
    assert again.SOPInstanceUID == pydicom.dcmread(io.BytesIO(report)).SOPInstanceUID
    newer = sr.Score(**{**SCORE.__dict__, "model_version": "2027.01.01-1"})
    other = pydicom.dcmread(io.BytesIO(sr.report_bytes(source.dicom, newer)))
    assert other.SOPInstanceUID != again.SOPInstanceUID


def test_no_patient_data_from_the_source_header(report):
    for marker in PHI_MARKERS.values():
        assert marker.encode() not in report
    document = pydicom.dcmread(io.BytesIO(report))
    assert document.PatientName == "" and document.PatientID == "" and document.AccessionNumber == ""


def test_a_source_without_uids_gets_no_report(source):
    facts = dataclasses.replace(source.dicom, study_uid=None)
    with pytest.raises(sr.ReportNotPossible, match="StudyInstanceUID"):
        sr.report_bytes(facts, SCORE)


@pytest.mark.parametrize("uncertain", [False, True])
def test_dciodvfy_finds_no_error(report, source, uncertain, tmp_path):
    """The SR against the standard's IOD rules (dicom3tools; `make test` installs it)."""
    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy is None:
        pytest.fail("dciodvfy is not installed: apt-get install dicom3tools (make test does)")
    path = tmp_path / "sr.dcm"
    path.write_bytes(sr.report_bytes(source.dicom, UNCERTAIN) if uncertain else report)
    checked = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True)
    output = checked.stdout + checked.stderr
    assert "ComprehensiveSR" in output, output
    errors = [line for line in output.splitlines() if line.startswith("Error")]
    assert not errors, output


def test_every_warning_code_fits_in_a_code_meaning(source):
    """A meaning longer than a Code Meaning allows (64 characters) must not cost the image its SR."""
    from pneumoscan.scoring import WARNING_MEANINGS
    warned = sr.Score(**{**SCORE.__dict__, "warnings": (*WARNING_MEANINGS, "some_future_warning" * 5)})
    items = list(_content_items(_read(sr.report_bytes(source.dicom, warned))))
    meanings = [item.ConceptCodeSequence[0].CodeMeaning for item in items
                if item.ValueType == "CODE" and item.ConceptNameCodeSequence[0].CodeValue == "WARNING"]
    assert len(meanings) == len(WARNING_MEANINGS) + 1 and all(len(meaning) <= 64 for meaning in meanings)
