"""DICOM through the local stack over HTTP: every transfer syntax through the real handler, the
structured reports, `results --study`, and no patient data in any output.

The patient-data test fills every PHI-bearing attribute of a real radiograph's header with
marker strings and looks for them in the table, the worker log, everything the pipeline wrote
to S3, the CLI's output and the HTML reports.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest

from dicom_cases import CASES, PHI_MARKERS, STUDY_UID, radiograph, reference_pixels, to_bytes

from .test_pipeline import _cli

BATCH = "dicom"
PHI_STUDY_UID = "1.2.826.0.1.3680043.8.498.11.99"
PHI_SERIES_UID = "1.2.826.0.1.3680043.8.498.11.98"
PHI_SOP_UID = "1.2.826.0.1.3680043.8.498.11.97"


def _phi_radiograph(**attributes) -> bytes:
    ds = radiograph(reference_pixels(), **{"PatientAge": "045Y", "ViewPosition": "AP", **PHI_MARKERS, **attributes})
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = PHI_STUDY_UID, PHI_SERIES_UID, PHI_SOP_UID
    ds.file_meta.MediaStorageSOPInstanceUID = PHI_SOP_UID
    return to_bytes(ds)


@pytest.fixture(scope="module")
def dicom_batch(local_stack, tmp_path_factory):
    folder = tmp_path_factory.mktemp("dicom")
    for case in CASES:
        (folder / f"{case.name}.dcm").write_bytes(case.make())
    (folder / "phi").mkdir()
    # A PACS export: no suffix, the patient's data in every header field that can hold it.
    (folder / "phi" / "IM0001").write_bytes(_phi_radiograph())
    (folder / "phi" / "CT0001.DCM").write_bytes(_phi_radiograph(Modality="CT"))
    (folder / "phi" / "LAT0001.dicom").write_bytes(_phi_radiograph(ViewPosition="LL"))
    upload = _cli(local_stack, "upload", str(folder), "--batch", BATCH, "--wait", "--timeout", "300")
    items = json.loads(_cli(local_stack, "results", "--batch", BATCH, "--format", "json").stdout)
    return folder, {item["object_key"].removeprefix(f"incoming/{BATCH}/"): item for item in items}, upload.output


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_each_transfer_syntax_is_scored_through_the_handler(dicom_batch, case):
    _, items, _ = dicom_batch
    item = items[f"{case.name}.dcm"]
    assert item["status"] == "SCORED", item
    assert item["image_format"] == "DICOM"
    assert item["study_uid"] == STUDY_UID and item["modality"] == "DX"
    assert 0.0 <= float(item["probability"]) <= 1.0


def test_the_item_keeps_the_identifiers_and_the_age_warning(dicom_batch):
    _, items, _ = dicom_batch
    item = items["phi/IM0001"]
    assert item["status"] == "SCORED"
    assert (item["study_uid"], item["series_uid"], item["sop_uid"]) == (PHI_STUDY_UID, PHI_SERIES_UID, PHI_SOP_UID)
    assert item["view_position"] == "AP" and float(item["patient_age_years"]) == 45
    assert "adult_patient" in item["warnings"]


def test_ct_and_lateral_views_fail_with_their_reasons(dicom_batch):
    _, items, _ = dicom_batch
    assert (items["phi/CT0001.DCM"]["status"], items["phi/CT0001.DCM"]["reason"]) == ("FAILED", "unsupported_modality")
    assert (items["phi/LAT0001.dicom"]["status"], items["phi/LAT0001.dicom"]["reason"]) == ("FAILED", "lateral_view")


def test_results_study_lists_one_study(local_stack, dicom_batch):
    _, items, _ = dicom_batch
    listed = json.loads(_cli(local_stack, "results", "--study", PHI_STUDY_UID, "--format", "json").stdout)
    expected = sorted(key for key, item in items.items() if item.get("study_uid") == PHI_STUDY_UID)
    assert expected == ["phi/CT0001.DCM", "phi/IM0001", "phi/LAT0001.dicom"]  # refusals keep their study
    assert sorted(item["object_key"].removeprefix(f"incoming/{BATCH}/") for item in listed) == expected


def test_structured_report_is_written_in_the_study_and_validates(local_stack, dicom_batch, tmp_path):
    _, items, _ = dicom_batch
    item = items["phi/IM0001"]
    assert item["sr_key"].startswith("results/sr/")
    target = local_stack.target
    body = target.client("s3").get_object(Bucket=target.bucket, Key=item["sr_key"])["Body"].read()
    report = pydicom.dcmread(io.BytesIO(body))
    assert report.StudyInstanceUID == PHI_STUDY_UID and report.Modality == "SR"
    evidence = report.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == PHI_SOP_UID
    assert "sr_key" not in items["phi/CT0001.DCM"]
    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy is None:
        pytest.fail("dciodvfy is not installed: apt-get install dicom3tools (make test does)")
    (tmp_path / "sr.dcm").write_bytes(body)
    checked = subprocess.run([dciodvfy, str(tmp_path / "sr.dcm")], capture_output=True, text=True)
    assert not [line for line in (checked.stdout + checked.stderr).splitlines() if line.startswith("Error")]


def _markers_in(text: str | bytes) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [marker for marker in PHI_MARKERS.values() if marker.encode() in data]


def test_no_patient_data_in_table_log_s3_outputs_cli_or_report(local_stack, dicom_batch, tmp_path):
    folder, items, upload_output = dicom_batch
    target = local_stack.target
    # The table: every item of the batch with every attribute, as `results --format json` reads them.
    assert not _markers_in(json.dumps(items)), "a result item"
    # The worker log: the handler's JSON log lines and metrics.
    worker_log = local_stack.state["worker_log"]
    assert not _markers_in(Path(worker_log).read_bytes()), "the worker log"
    assert not _markers_in(local_stack.log()), "the local stack's console log"
    # Everything the pipeline wrote to the bucket (the uploads themselves are the input).
    s3 = target.client("s3")
    written = [entry["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=target.bucket, Prefix="results/") for entry in page.get("Contents", [])]
    assert any(key.startswith("results/sr/") for key in written)
    for key in written:
        assert not _markers_in(s3.get_object(Bucket=target.bucket, Key=key)["Body"].read()), key
    # The CLI: upload, results in every format, offline score, and both HTML reports.
    outputs = [upload_output]
    for output_format in ("table", "json", "csv"):
        outputs.append(_cli(local_stack, "results", "--batch", BATCH, "--format", output_format).stdout)
    phi_files = [str(path) for path in sorted((folder / "phi").iterdir())]
    outputs.append(_cli(local_stack, "results", "--study", PHI_STUDY_UID).stdout)
    outputs.append(_cli(local_stack, "score", *phi_files, "--json").stdout)
    _cli(local_stack, "report", "--batch", BATCH, "-o", str(tmp_path / "batch.html"))
    _cli(local_stack, "report", *phi_files, "-o", str(tmp_path / "files.html"))
    outputs += [(tmp_path / "batch.html").read_text(), (tmp_path / "files.html").read_text()]
    for output in outputs:
        assert not _markers_in(output), output[:2000]
