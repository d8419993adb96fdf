"""DICOM through the real handler on moto: identifiers on the item, the SR under results/sr/, refusals
that keep their study, the StructuredReports switch, and a JPEG-only path that never loads pydicom."""

from __future__ import annotations

import io
import subprocess
import sys

import pydicom
import pytest
from botocore.exceptions import ClientError

from dicom_cases import CASES_BY_NAME, SERIES_UID, SOP_UID, STUDY_UID, radiograph, reference_pixels, to_bytes
from image_cases import REFERENCE_XRAY
from pneumoscan import results
from pneumoscan.model import default_model_dir as model_dir

pytestmark = pytest.mark.skipif(
    not REFERENCE_XRAY.is_file() or not (model_dir() / "model.json").is_file(),
    reason="needs ../shared/data and a model in model/ (or $PNEUMOSCAN_MODEL_DIR)")


def test_a_dicom_radiograph_is_scored_with_its_identifiers_and_a_structured_report(handler_stack):
    stack = handler_stack
    key = f"{stack.prefix}ward-7/IM0001"
    stack.put(key, to_bytes(radiograph(reference_pixels(), PatientAge="045Y", ViewPosition="AP")))

    stack.deliver()
    item = stack.item(key)

    assert item[results.STATUS] == results.STATUS_SCORED and item[results.IMAGE_FORMAT] == "DICOM"
    assert (item[results.STUDY_UID], item[results.SERIES_UID], item[results.SOP_UID]) == (
        STUDY_UID, SERIES_UID, SOP_UID)
    assert (item[results.MODALITY], item[results.VIEW_POSITION], item[results.PATIENT_AGE_YEARS]) == ("DX", "AP", 45)
    assert item[results.WARNINGS][0] == "adult_patient"
    # The item names the SR's folder; the key, held once, gives the rest.
    assert item[results.SR_KEY] == "results/sr/"
    sr_key = results.derived_key(item, results.SR_KEY)
    assert sr_key == f"results/sr/{key}.dcm"
    stored = stack.s3.get_object(Bucket=stack.settings.bucket, Key=sr_key)
    assert stored["ContentType"] == "application/dicom"
    report = pydicom.dcmread(io.BytesIO(stored["Body"].read()))
    assert report.StudyInstanceUID == STUDY_UID and report.Modality == "SR"
    # The SR's own S3 event would be a scoring of it: the notification filter stops it.
    assert stack.queue_depth(stack.queue_url) == 0
    assert stack.item(sr_key) is None


def test_a_refused_dicom_keeps_its_study_and_gets_no_report(handler_stack):
    stack = handler_stack
    key = f"{stack.prefix}ward-7/ct.dcm"
    stack.put(key, to_bytes(radiograph(reference_pixels(), modality="CT")))

    stack.deliver()
    item = stack.item(key)

    assert (item[results.STATUS], item[results.REASON]) == (results.STATUS_FAILED, "unsupported_modality")
    assert item[results.STUDY_UID] == STUDY_UID and item[results.MODALITY] == "CT"
    assert results.SR_KEY not in item


def test_structured_reports_off_writes_none(handler_stack, monkeypatch):
    stack = handler_stack
    monkeypatch.setenv("STRUCTURED_REPORTS", "off")
    app = stack.cold_start()
    key = f"{stack.prefix}ward-7/a.dcm"
    stack.put(key, CASES_BY_NAME["rle_8bit"].make())

    stack.deliver()
    item = stack.item(key)

    assert app.settings.structured_reports is False
    assert item[results.STATUS] == results.STATUS_SCORED and results.SR_KEY not in item
    listing = stack.s3.list_objects_v2(Bucket=stack.settings.bucket, Prefix="results/sr/")
    assert listing.get("KeyCount", 0) == 0


def test_a_source_without_uids_is_scored_and_says_why_it_has_no_report(handler_stack):
    stack = handler_stack
    ds = radiograph(reference_pixels())
    del ds.StudyInstanceUID
    key = f"{stack.prefix}ward-7/no-uid.dcm"
    stack.put(key, to_bytes(ds))

    stack.deliver()
    item = stack.item(key)

    assert item[results.STATUS] == results.STATUS_SCORED and results.SR_KEY not in item
    assert "StudyInstanceUID" in item[results.SR_ERROR]


def test_jpeg_and_png_scoring_never_imports_dicom_support():
    probe = (
        "import sys\n"
        "from pneumoscan.scoring import Scorer\n"
        f"score = Scorer.load().score(open({str(REFERENCE_XRAY)!r}, 'rb').read(), overlay='all')\n"
        "assert score.image.dicom is None\n"
        "loaded = sorted(name for name in sys.modules if name.split('.')[0] in "
        "('pydicom', 'highdicom', 'pylibjpeg', 'openjpeg', 'libjpeg'))\n"
        "assert not loaded, loaded\n")
    subprocess.run([sys.executable, "-c", probe], check=True)


def test_a_dicom_key_near_s3s_limit_gets_a_structured_report_key_that_fits(handler_stack):
    stack = handler_stack
    key = f"{stack.prefix}ward-7/" + "王" * 335  # 1021 bytes: results/sr/<key>.dcm would be 1036
    assert len(key.encode()) <= 1024 < len(f"results/sr/{key}.dcm".encode())
    stack.put(key, to_bytes(radiograph(reference_pixels())))

    outcomes = stack.deliver()

    item = stack.item(key)
    assert not any(outcome.failed for outcome in outcomes)
    assert item[results.STATUS] == results.STATUS_SCORED
    sr_key = results.derived_key(item, results.SR_KEY)
    assert len(sr_key.encode()) <= 1024 and sr_key.startswith("results/sr/")
    stack.s3.head_object(Bucket=stack.settings.bucket, Key=sr_key)


def test_a_structured_report_that_cannot_be_written_never_costs_the_score(handler_stack, monkeypatch):
    stack = handler_stack
    key = f"{stack.prefix}ward-7/IM0002"
    stack.put(key, to_bytes(radiograph(reference_pixels())))
    real_put = stack.app.s3_client.put_object

    def refuse_reports(**kwargs):
        if kwargs["Key"].startswith("results/sr/"):
            raise ClientError({"Error": {"Code": "SlowDown", "Message": "injected"},
                               "ResponseMetadata": {"HTTPStatusCode": 503}}, "PutObject")
        return real_put(**kwargs)

    monkeypatch.setattr(stack.app.s3_client, "put_object", refuse_reports)

    outcomes = stack.deliver()

    item = stack.item(key)
    assert not any(outcome.failed for outcome in outcomes)
    assert item[results.STATUS] == results.STATUS_SCORED and results.SR_KEY not in item
    assert "SlowDown" in item[results.SR_ERROR]
