"""Hostile DICOM through the real handler on moto: header values that parse but break decoding,
oversized and invalid values, deflate bombs, truncated compressed frames. Each ends as one item
(FAILED with its reason, or SCORED without the bad value), under 1 KB, and the record succeeds:
nothing is retried into the DLQ, nothing unchecked from the header is kept or quoted."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tracemalloc

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.sequence import Sequence
from typer.testing import CliRunner

from benchmarks.prices import dynamodb_item_bytes
from dicom_cases import (CASES_BY_NAME, STUDY_UID, deflated_bomb, hostile, monochrome1, radiograph,
                         reference_pixels, to_bytes)
from image_cases import REFERENCE_XRAY
from pneumoscan import results
from pneumoscan.model import default_model_dir as model_dir
from pneumoscan_cli.main import app as cli

pytestmark = pytest.mark.skipif(
    not REFERENCE_XRAY.is_file() or not (model_dir() / "model.json").is_file(),
    reason="needs ../shared/data and a model in model/ (or $PNEUMOSCAN_MODEL_DIR)")

# One write unit, key and all: these radiographs' SCORED items (their key held once, with the
# warnings a model adds to them: lung_field_not_found, out_of_distribution, subtype_uncertain ...)
# are about 1,000 bytes as DynamoDB counts them, a FAILED one about 560. Nothing from a hostile
# header may add to that (test_item_size bounds every kind of item at its caps).
ITEM_BYTES = 1024
# Small enough to build and score fast, large enough to pass the size floor.
SMALL = (256, 256)


def _small_pixels() -> np.ndarray:
    return np.ascontiguousarray(reference_pixels()[:SMALL[0], :SMALL[1]])


def _radiograph(**attributes) -> Dataset:
    return radiograph(_small_pixels(), **attributes)


def _deliver_all(stack, files: dict[str, bytes]) -> dict[str, dict]:
    """Each file under its own key, delivered; every record succeeds and no message is left."""
    keys = {name: f"{stack.prefix}hostile/{name}.dcm" for name in files}
    for name, body in files.items():
        stack.put(keys[name], body)
    outcomes = stack.deliver()
    assert not any(outcome.failed for outcome in outcomes), [outcome.failed for outcome in outcomes]
    assert stack.queue_depth(stack.queue_url) == 0 and stack.queue_depth(stack.dead_letter_queue_url) == 0
    dynamodb = stack.session.client("dynamodb")
    items = {name: results.get_result(dynamodb, stack.settings.table, key, incoming_prefix=stack.prefix,
                                      consistent=True) for name, key in keys.items()}
    assert all(items.values()), [name for name, item in items.items() if not item]
    assert len(stack.items()) == len(files)  # one item each, recorded once
    for name, item in items.items():
        assert dynamodb_item_bytes(item) <= ITEM_BYTES, (name, dynamodb_item_bytes(item))
    return items


def _reasons(items: dict[str, dict]) -> dict[str, tuple[str, str | None]]:
    return {name: (item[results.STATUS], item.get(results.REASON)) for name, item in items.items()}


def _modality_lut_without_data() -> Dataset:
    ds = _radiograph()
    lut = Dataset()
    lut.LUTDescriptor = [256, 0, 8]
    lut.ModalityLUTType = "US"
    ds.ModalityLUTSequence = Sequence([lut])
    return ds


def test_header_values_that_parse_but_break_decoding_are_failed_items(handler_stack):
    failed = (results.STATUS_FAILED, "corrupt")
    no_bits = _radiograph()
    del no_bits.BitsStored, no_bits.HighBit
    items = _deliver_all(handler_stack, {
        "bits_allocated_empty": hostile(_radiograph(), BitsAllocated=b""),
        "bits_all_empty": hostile(_radiograph(), BitsAllocated=b"", BitsStored=b"", HighBit=b""),
        "bits_allocated_empty_rest_absent": hostile(no_bits, BitsAllocated=b""),
        "frames_1e400": hostile(_radiograph(), NumberOfFrames=b"1e400 "),
        "frames_empty": hostile(_radiograph(), NumberOfFrames=b""),
        "slope_abc": hostile(_radiograph(), RescaleSlope=b"abc ", RescaleIntercept=b"0 "),
        "slope_empty": hostile(_radiograph(), RescaleSlope=b"", RescaleIntercept=b"0 "),
        "intercept_empty": hostile(_radiograph(), RescaleSlope=b"1 ", RescaleIntercept=b""),
        "slope_infinite": hostile(_radiograph(), RescaleSlope=b"1e400 ", RescaleIntercept=b"0 "),
        "modality_lut_without_data": to_bytes(_modality_lut_without_data()),
        "palette_without_palette": to_bytes(_radiograph(photometric="PALETTE COLOR")),
    })
    expected = {name: failed for name in items} | {
        "palette_without_palette": (results.STATUS_FAILED, "unsupported_mode")}
    assert _reasons(items) == expected
    # A refused object keeps its study.
    assert all(item[results.STUDY_UID] == STUDY_UID for item in items.values())


def test_oversized_header_values_are_never_kept_and_items_stay_small(handler_stack):
    items = _deliver_all(handler_stack, {
        "view_450k": hostile(_radiograph(), ViewPosition=b"AP" * 225_000),
        "view_100k": hostile(_radiograph(), ViewPosition=b"PA" * 50_000),
        "modality_450k": hostile(_radiograph(), Modality=b"DX" * 225_000),
        "study_uid_3000": hostile(_radiograph(), StudyInstanceUID=b"1." * 1500),
        "photometric_100k": hostile(_radiograph(), PhotometricInterpretation=b"MONOCHROME2 " * 8000 + b"XY"),
    })
    assert _reasons(items) == {
        "view_450k": (results.STATUS_SCORED, None), "view_100k": (results.STATUS_SCORED, None),
        "modality_450k": (results.STATUS_FAILED, "unsupported_modality"),
        "study_uid_3000": (results.STATUS_SCORED, None),
        "photometric_100k": (results.STATUS_FAILED, "unsupported_mode")}
    assert results.VIEW_POSITION not in items["view_450k"] and results.VIEW_POSITION not in items["view_100k"]
    assert results.MODALITY not in items["modality_450k"]
    assert results.STUDY_UID not in items["study_uid_3000"] and results.SR_KEY not in items["study_uid_3000"]
    assert "StudyInstanceUID" in items["study_uid_3000"][results.SR_ERROR]


def test_a_deflate_bomb_is_refused_before_it_is_inflated(handler_stack):
    """256x256 8-bit pixels declared; the deflated stream inflates to 300 MB (pixel data, or a
    private element in front of it). Before the bound pydicom inflated all of it and scored
    the image; now inflation stops a few MB past what the header needs. A header declaring
    more pixels than are ever scored is refused before its pixel data is inflated."""
    stack = handler_stack
    huge = _radiograph()
    huge.Rows, huge.Columns = 60000, 60000
    bombs = {"pixel_data_bomb": deflated_bomb(_radiograph(), 300 << 20),
             "header_bomb": deflated_bomb(_radiograph(), 256 * 256, trailing_element_bytes=300 << 20),
             "declared_huge": deflated_bomb(huge, 200 << 20)}
    assert all(len(body) < 2 << 20 for body in bombs.values())
    tracemalloc.start()
    try:
        items = _deliver_all(stack, bombs | {"deflated_ok": CASES_BY_NAME["deflated_16bit"].make()})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert _reasons(items) == {"pixel_data_bomb": (results.STATUS_FAILED, "corrupt"),
                               "header_bomb": (results.STATUS_FAILED, "corrupt"),
                               "declared_huge": (results.STATUS_FAILED, "too_many_pixels"),
                               "deflated_ok": (results.STATUS_SCORED, None)}
    assert items["declared_huge"][results.STUDY_UID] == STUDY_UID
    assert peak < 100 << 20, f"{peak / 2**20:.0f} MiB traced while handling the bombs"


def _with_pixel_data(case: str, pixel_data) -> bytes:
    """A compressed case with its encapsulated pixel data replaced (`pixel_data(frame)`), as written."""
    ds = pydicom.dcmread(io.BytesIO(CASES_BY_NAME[case].make()))
    ds.PixelData = pixel_data(next(generate_frames(ds.PixelData, number_of_frames=1)))
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _cut_frame(case: str, keep: float) -> bytes:
    return _with_pixel_data(case, lambda frame: encapsulate([frame[:int(len(frame) * keep)]]))


# The basic offset table and two fragments, all of zero length.
EMPTY_FRAGMENTS = b"\xfe\xff\x00\xe0\x00\x00\x00\x00" * 3


def test_a_truncated_compressed_frame_is_refused_without_reaching_its_decoder(handler_stack, monkeypatch):
    """CharLS spent 5-7 s on a JPEG-LS frame cut short (20 in a batch ran past the function's
    timeout); a frame without its end marker is refused before any decoder sees it."""
    decoded = []
    real_pixel_array = pydicom.dataset.Dataset.pixel_array
    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array",
                        property(lambda ds: decoded.append(ds.file_meta.TransferSyntaxUID)
                                 or real_pixel_array.fget(ds)))
    items = _deliver_all(handler_stack, {
        "jpeg_ls_half": _cut_frame("jpeg_ls_lossless_16bit", 0.5),
        "jpeg_ls_most": _cut_frame("jpeg_ls_lossless_8bit_mono1", 0.99),
        "jpeg_2000_half": _cut_frame("jpeg2000_lossless_16bit", 0.5),
        "jpeg_baseline_half": _cut_frame("jpeg_baseline_8bit", 0.5),
        "valid": to_bytes(_radiograph()),
    })
    assert _reasons(items) == {name: (results.STATUS_FAILED, "truncated") for name in items} | {
        "valid": (results.STATUS_SCORED, None)}
    assert decoded == ["1.2.840.10008.1.2.1"]  # the valid, uncompressed one alone


def test_invalid_or_multi_valued_uids_are_never_copied(handler_stack, tmp_path):
    stack = handler_stack
    too_long = "1.2.826.0.1.3680043.8.498." + "1" * 40
    multi_series = _radiograph()
    multi_series.SeriesInstanceUID = ["1.2.826.0.1.3680043.8.498.11.7", "1.2.826.0.1.3680043.8.498.11.8"]
    items = _deliver_all(stack, {
        "study_too_long": to_bytes(_radiograph(StudyInstanceUID=too_long)),
        "study_letters": hostile(_radiograph(), StudyInstanceUID=b"1.2.abc.4 "),
        "study_double_dot": hostile(_radiograph(), StudyInstanceUID=b"1.2.3..4"),
        "sop_leading_zero": hostile(_radiograph(), SOPInstanceUID=b"1.2.03.4"),
        "series_multi": to_bytes(multi_series),
    })
    assert {name: status for name, (status, _) in _reasons(items).items()} == {
        name: results.STATUS_SCORED for name in items}
    for name in ("study_too_long", "study_letters", "study_double_dot"):
        assert results.STUDY_UID not in items[name] and results.SR_KEY not in items[name]
        assert "StudyInstanceUID is no valid UID" in items[name][results.SR_ERROR]
    assert results.SOP_UID not in items["sop_leading_zero"]
    assert "SOPInstanceUID is no valid UID" in items["sop_leading_zero"][results.SR_ERROR]
    series = items["series_multi"]
    assert series[results.SERIES_UID] == "1.2.826.0.1.3680043.8.498.11.7" and results.SR_ERROR not in series
    report = stack.s3.get_object(Bucket=stack.settings.bucket, Key=results.derived_key(series, results.SR_KEY))["Body"].read()
    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy is None:
        pytest.fail("dciodvfy is not installed: apt-get install dicom3tools (make test does)")
    (tmp_path / "sr.dcm").write_bytes(report)
    checked = subprocess.run([dciodvfy, str(tmp_path / "sr.dcm")], capture_output=True, text=True)
    assert not [line for line in (checked.stdout + checked.stderr).splitlines() if line.startswith("Error")]


def test_error_texts_are_fixed_and_never_quote_the_header(handler_stack):
    marker = b"EVIL<b>MARK"
    multi_modality = _radiograph()
    multi_modality.Modality = ["CT", "MR"]
    items = _deliver_all(handler_stack, {
        "photometric": hostile(_radiograph(), PhotometricInterpretation=marker + b" "),
        "modality": hostile(_radiograph(), Modality=marker + b" "),
        "modality_code": hostile(_radiograph(), Modality=b"XRAYMARK"),
        "modality_multi": to_bytes(multi_modality),
        "frames": hostile(_radiograph(), NumberOfFrames=b"-31337"),
    })
    assert _reasons(items) == {
        "photometric": (results.STATUS_FAILED, "unsupported_mode"),
        "modality": (results.STATUS_FAILED, "unsupported_modality"),
        "modality_code": (results.STATUS_FAILED, "unsupported_modality"),
        "modality_multi": (results.STATUS_FAILED, "unsupported_modality"),
        "frames": (results.STATUS_FAILED, "corrupt")}
    texts = json.dumps([item[results.ERROR] for item in items.values()])
    for quoted in ("EVIL", "MARK", "['CT', 'MR']", "CT", "31337"):
        assert quoted not in texts, (quoted, texts)
    # The code string that is valid is kept as the item's modality, its first value when several.
    assert items["modality_code"][results.MODALITY] == "XRAYMARK"
    assert items["modality_multi"][results.MODALITY] == "CT"


def test_misleading_reasons_say_what_is_wrong(handler_stack):
    lower = _radiograph(photometric="MONOCHROME1")
    lower.PixelData = monochrome1(_small_pixels(), 8).tobytes()
    lower.PhotometricInterpretation = "monochrome1"
    upper = _radiograph(photometric="MONOCHROME1")
    upper.PixelData = lower.PixelData
    items = _deliver_all(handler_stack, {
        "empty_fragments": _with_pixel_data("jpeg_ls_lossless_16bit", lambda frame: EMPTY_FRAGMENTS),
        "empty_baseline_fragment": _with_pixel_data("jpeg_baseline_8bit", lambda frame: EMPTY_FRAGMENTS),
        "dicm_then_nothing": b"\x00" * 128 + b"DICM",
        "dicm_then_garbage": b"\x00" * 128 + b"DICM" + bytes(range(256)) * 8,
        "monochrome1_lower_case": to_bytes(lower),
        "monochrome1": to_bytes(upper),
    })
    assert _reasons(items) == {
        "empty_fragments": (results.STATUS_FAILED, "corrupt"),
        "empty_baseline_fragment": (results.STATUS_FAILED, "corrupt"),
        "dicm_then_nothing": (results.STATUS_FAILED, "truncated"),
        "dicm_then_garbage": (results.STATUS_FAILED, "corrupt"),
        "monochrome1_lower_case": (results.STATUS_SCORED, None),
        "monochrome1": (results.STATUS_SCORED, None)}
    assert "frame" in items["empty_fragments"][results.ERROR]
    normalised, reference = items["monochrome1_lower_case"], items["monochrome1"]
    assert normalised[results.IMAGE_MODE] == "MONOCHROME1"
    assert normalised[results.PROBABILITY] == reference[results.PROBABILITY]


def test_pneumoscan_score_reports_what_the_lambda_records_for_hostile_files(handler_stack, tmp_path):
    files = {
        "bits_allocated_empty": hostile(_radiograph(), BitsAllocated=b""),
        "frames_1e400": hostile(_radiograph(), NumberOfFrames=b"1e400 "),
        "slope_abc": hostile(_radiograph(), RescaleSlope=b"abc ", RescaleIntercept=b"0 "),
        "view_100k": hostile(_radiograph(), ViewPosition=b"PA" * 50_000),
        "modality_marker": hostile(_radiograph(), Modality=b"EVIL<b>MARK "),
        "pixel_data_bomb": deflated_bomb(_radiograph(), 64 << 20),
        "jpeg_ls_half": _cut_frame("jpeg_ls_lossless_16bit", 0.5),
        "dicm_then_nothing": b"\x00" * 128 + b"DICM",
    }
    items = _deliver_all(handler_stack, files)
    for name, body in files.items():
        (tmp_path / f"{name}.dcm").write_bytes(body)

    outcome = CliRunner().invoke(cli, ["score", "--json", str(tmp_path)])

    assert outcome.exit_code == 0, outcome.output
    offline = {json.loads(line)["image"].rsplit("/", 1)[-1].removesuffix(".dcm"): json.loads(line)
               for line in outcome.stdout.splitlines() if line.startswith("{")}
    assert {name: (line["status"], line.get("reason")) for name, line in offline.items()} == _reasons(items)
    assert "EVIL" not in outcome.stdout and "PAPAPA" not in outcome.stdout
