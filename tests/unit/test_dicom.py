"""DICOM decoding: every transfer syntax, viewer-equivalent pixels, what is refused, the facts kept."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from dicom_cases import (CASES, CASES_BY_NAME, SERIES_UID, SOP_UID, STUDY_UID, bare_dataset_bytes, radiograph,
                         reference_pixels, sixteen_bit, to_bytes)
from image_cases import reference_bytes
from pneumoscan import dicom, formats, results
from pneumoscan.images import ImageRejected


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_each_transfer_syntax_decodes_to_the_viewer_image(case):
    data = case.make()
    result = dicom.decode(data)
    assert result.dicom.transfer_syntax == case.transfer_syntax
    assert result.format == "DICOM"
    assert result.mode == case.photometric
    pixels = np.asarray(result.image)
    assert result.image.mode == "L"
    if not case.from_xray:
        assert pixels.std() > 5, "a relabelled test file decodes to a real picture, not a flat field"
        return
    reference = reference_pixels()
    assert pixels.shape == reference.shape
    difference = np.abs(pixels.astype(int) - reference.astype(int))
    if case.exact:
        # Lossless: MONOCHROME1 inverted back, 12-bit range windowed to its own range, exactly.
        assert difference.max() == 0
    else:
        assert difference.mean() < 2.0


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_each_case_is_recognised_as_dicom_from_its_first_bytes(case):
    assert formats.is_dicom(case.make()[:formats.SNIFF_BYTES])


def test_files_without_preamble_or_file_meta_are_read_like_established_readers_do():
    ds = radiograph(reference_pixels())
    for implicit in (True, False):
        data = bare_dataset_bytes(ds, implicit_vr=implicit)
        assert data[128:132] != b"DICM"
        assert formats.is_dicom(data)
        result = dicom.decode(data)
        assert np.array_equal(np.asarray(result.image), reference_pixels())
        assert result.dicom.study_uid == STUDY_UID


@pytest.mark.parametrize("data", [b"hello, this is text and no dicom" * 10, b"%PDF-1.7\n" + b"x" * 200,
                                  b"\x89PNG\r\n\x1a\n" + b"\x00" * 200, b"\xff\xd8\xff\xe0" + b"\x00" * 200])
def test_non_dicom_is_not_sniffed_as_dicom(data):
    assert not formats.is_dicom(data)
    with pytest.raises(ImageRejected) as rejected:
        dicom.decode(data)
    assert rejected.value.reason == "not_dicom"


def test_a_real_jpeg_is_not_sniffed_as_dicom():
    assert not formats.is_dicom(reference_bytes()[:formats.SNIFF_BYTES])


def test_facts_are_the_identifiers_kept():
    result = dicom.decode(to_bytes(radiograph(reference_pixels(), ViewPosition="AP", PatientAge="045Y")))
    facts = result.dicom
    assert (facts.study_uid, facts.series_uid, facts.sop_uid) == (STUDY_UID, SERIES_UID, SOP_UID)
    assert results.dicom_fields(facts) == {"study_uid": STUDY_UID, "series_uid": SERIES_UID, "sop_uid": SOP_UID,
                                           "modality": "DX", "view_position": "AP", "patient_age_years": 45.0}
    assert dicom.header_warnings(result.dicom) == (dicom.ADULT_PATIENT,)


@pytest.mark.parametrize(("text", "years"), [
    ("045Y", 45.0), ("45", 45.0), ("45Y", 45.0), (" 3y ", 3.0), ("006M", 0.5), ("6M", 0.5),
    ("010W", 0.19), ("003D", 0.01), ("120Y", 90.0), ("", None), (None, None), ("adult", None), ("4.5", None),
])
def test_patient_age_parsing(text, years):
    assert dicom.parse_age(text) == years


def test_age_from_birth_and_study_dates_when_patient_age_is_absent():
    ds = radiograph(reference_pixels(), PatientBirthDate="20200115", StudyDate="20240114")
    del ds.PatientAge
    assert dicom.patient_age_years(ds) == 3.0
    ds.StudyDate = "20240115"
    assert dicom.patient_age_years(ds) == 4.0


@pytest.mark.parametrize(("age", "warned"), [
    ("000Y", True), ("011M", True), ("001Y", False), ("005Y", False), ("071M", False), ("006Y", True),
    ("045Y", True), ("", False)])
def test_adult_patient_warning_outside_the_training_band(age, warned):
    ds = radiograph(reference_pixels(), PatientAge=age)
    assert (dicom.ADULT_PATIENT in dicom.header_warnings(dicom.decode(to_bytes(ds)).dicom)) == warned


def _small(pixels: np.ndarray, **attributes) -> bytes:
    return to_bytes(radiograph(pixels, **attributes))


def test_window_centre_width_is_applied_before_the_resize():
    stored = sixteen_bit(reference_pixels())  # 7 .. 4087
    result = dicom.decode(_small(stored, bits_stored=12, WindowCenter=[1000, 2000], WindowWidth=[801, 4000]))
    pixels = np.asarray(result.image)
    # First window 600..1400: below is black, above white, linear between (PS3.3 C.11.2.1.2).
    expected = np.clip((stored.astype(float) - 999.5) / 800 + 0.5, 0, 1) * 255
    assert np.abs(pixels.astype(float) - expected).max() <= 0.5 + 1e-6
    assert pixels[stored <= 600].max() == 0 and pixels[stored > 1400].min() == 255


def test_rescale_slope_intercept_then_window_on_signed_data():
    stored = (reference_pixels().astype(np.int16) * 8 - 1000).astype(np.int16)
    ds = radiograph(stored.view(np.uint16), bits_stored=16, PixelRepresentation=1,
                    RescaleSlope=2, RescaleIntercept=100, WindowCenter=100, WindowWidth=2000,
                    VOILUTFunction="LINEAR_EXACT")
    pixels = np.asarray(dicom.decode(to_bytes(ds)).image)
    values = stored.astype(float) * 2 + 100
    expected = np.clip((values - 100) / 2000 + 0.5, 0, 1) * 255
    assert np.abs(pixels - expected).max() <= 0.5 + 1e-6


def test_voi_lut_sequence_is_preferred_to_the_window():
    stored = sixteen_bit(reference_pixels(), bits=10)  # 7 .. 1027
    lut = Dataset()
    lut.LUTDescriptor = [1024, 0, 12]
    # A LUT that uses its 12-bit output range up to 2550 and saturates from stored value 510.
    lut.add_new("LUTData", "US", [min(2550, value * 5) for value in range(1024)])
    ds = radiograph(np.minimum(stored, 1023), bits_stored=10, WindowCenter=512, WindowWidth=100)
    ds.VOILUTSequence = [lut]
    pixels = np.asarray(dicom.decode(to_bytes(ds)).image)
    expected = np.rint(np.minimum(2550, np.minimum(stored, 1023) * 5) / 2550 * 255)
    assert np.array_equal(pixels, expected.astype(np.uint8))


def test_own_range_when_there_is_no_window_and_when_the_window_shows_nothing():
    stored = sixteen_bit(reference_pixels())
    own = np.asarray(dicom.decode(_small(stored, bits_stored=12)).image)
    assert np.array_equal(own, reference_pixels())
    # A window far outside the data (an edited header) would show a black image.
    blank_window = np.asarray(dicom.decode(_small(stored, bits_stored=12, WindowCenter=60000,
                                                  WindowWidth=10)).image)
    assert np.array_equal(blank_window, reference_pixels())


def test_monochrome1_is_inverted():
    inverted = 255 - reference_pixels()
    pixels = np.asarray(dicom.decode(_small(inverted, photometric="MONOCHROME1")).image)
    assert np.array_equal(pixels, reference_pixels())


def _refused(data: bytes) -> ImageRejected:
    with pytest.raises(ImageRejected) as rejected:
        dicom.decode(data)
    return rejected.value


@pytest.mark.parametrize(("name", "reason"), [
    ("CT_small.dcm", "unsupported_modality"), ("MR_small.dcm", "unsupported_modality"),
    ("examples_ybr_color.dcm", "unsupported_modality"),  # US
    ("SC_rgb_rle_2frame.dcm", "multi_frame"), ("test-SR.dcm", "no_pixel_data"),
    ("rtplan.dcm", "no_pixel_data"), ("no_meta.dcm", "not_dicom"),
])
def test_pydicom_test_files_that_are_no_chest_radiograph_are_refused(name, reason):
    assert _refused(Path(get_testdata_file(name)).read_bytes()).reason == reason


@pytest.mark.parametrize("view", ["LL", "RL", "LATERAL", "lateral "])
def test_lateral_views_are_refused(view):
    error = _refused(_small(reference_pixels(), ViewPosition=view))
    assert error.reason == "lateral_view" and "frontal" in error.detail


def test_a_lateral_view_code_is_refused_and_decubitus_is_not():
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "399198007", "SCT", "right lateral"
    ds = radiograph(reference_pixels())
    del ds.ViewPosition
    ds.ViewCodeSequence = [code]
    assert _refused(to_bytes(ds)).reason == "lateral_view"
    code.CodeMeaning = "left lateral decubitus"
    ds.ViewCodeSequence = [code]
    assert dicom.decode(to_bytes(ds)).image.size == (1522, 1221)


def test_multi_frame_radiograph_is_refused():
    frames = np.stack([reference_pixels()] * 2)
    ds = radiograph(reference_pixels())
    ds.NumberOfFrames = 2
    ds.PixelData = frames.tobytes()
    assert _refused(to_bytes(ds)).reason == "multi_frame"


@pytest.mark.parametrize("modality", ["CT", "MR", "US", "MG", "NM"])
def test_other_modalities_are_refused_with_a_fixed_text_and_the_modality_kept(modality):
    error = _refused(_small(reference_pixels(), modality=modality))
    assert error.reason == "unsupported_modality" and modality not in error.detail
    assert error.dicom.modality == modality


@pytest.mark.parametrize(("modality", "body_part", "scored"), [
    ("CR", "CHEST", True), ("DR", None, True), ("SC", "CHEST", True), ("SC", None, True),
    ("OT", "HAND", False), ("SC", "KNEE", False)])
def test_radiographs_and_chest_secondary_captures_are_scored(modality, body_part, scored):
    ds = radiograph(reference_pixels(), modality=modality)
    if body_part is None:
        del ds.BodyPartExamined
    else:
        ds.BodyPartExamined = body_part
    if scored:
        assert dicom.decode(to_bytes(ds)).dicom.modality == modality
    else:
        assert _refused(to_bytes(ds)).reason == "unsupported_modality"


def test_truncated_pixel_data_is_refused_as_truncated():
    data = _small(reference_pixels())
    assert _refused(data[: len(data) // 2]).reason in ("truncated", "corrupt")


def test_corrupt_compressed_pixel_data_is_refused():
    case = next(case for case in CASES if case.name == "jpeg2000_lossless_16bit")
    data = bytearray(case.make())
    # The codestream's SIZ marker segment (image and tile geometry), overwritten.
    siz = bytes(data).index(b"\xff\x4f\xff\x51")
    data[siz + 4:siz + 40] = b"\xff" * 36
    assert _refused(bytes(data)).reason in ("corrupt", "truncated")


def test_tiny_images_are_refused_from_the_header():
    assert _refused(_small(np.zeros((32, 32), np.uint8))).reason == "too_small"


def test_header_values_never_appear_in_a_refusal():
    ds = radiograph(reference_pixels(), modality="CT", PatientName="SECRET^NAME", PatientID="SECRET-ID")
    error = _refused(to_bytes(ds))
    assert "SECRET" not in str(error)


def test_pydicom_warnings_about_header_values_are_silenced(recwarn):
    ds = radiograph(reference_pixels())
    data = bytearray(to_bytes(ds, ExplicitVRLittleEndian))
    # An invalid Age String value: pydicom would warn, quoting it.
    marker = b"003Y"
    at = bytes(data).index(marker)
    data[at:at + 4] = b"SEC!"
    result = dicom.decode(bytes(data))
    assert result.dicom.patient_age_years is None
    assert not [warning for warning in recwarn if "SEC!" in str(warning.message)]


def test_pydicom_log_records_stay_out_of_the_function_log():
    """What pydicom logs about a header never reaches the root logger the Lambda runtime prints."""
    import logging
    seen = []
    handler = logging.Handler()
    handler.emit = seen.append
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        logging.getLogger("pydicom").warning("Invalid value for VR PN: SECRET^NAME")
        logging.getLogger("pydicom.filereader").warning("Invalid value for VR PN: SECRET^NAME")
    finally:
        root.removeHandler(handler)
    assert not seen


def test_pydicom_is_not_imported_for_the_sniff():
    code = ("import sys; from pneumoscan import formats, images; "
            "assert 'pydicom' not in sys.modules and 'highdicom' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_sixteen_bit_4k_image_decodes_to_8_bit():
    stored = np.random.default_rng(0).integers(0, 4096, size=(4096, 4096), dtype=np.uint16)
    result = dicom.decode(to_bytes(radiograph(stored, bits_stored=12)))
    assert result.image.size == (4096, 4096) and result.image.mode == "L"


def test_only_the_kept_facts_leave_the_decoder():
    result = dicom.decode(_small(reference_pixels(), PatientName="SECRET^NAME", PatientID="SECRET-ID"))
    assert "SECRET" not in repr(result)


def test_jpeg_baseline_takes_the_strict_reduced_jpeg_path():
    data = CASES_BY_NAME["jpeg_baseline_8bit"].make()
    full = dicom.decode(data)
    reduced = dicom.decode(data, target_size=(224, 224))
    assert (reduced.width, reduced.height) == (full.width, full.height) == (1522, 1221)
    assert reduced.image.width < full.image.width and reduced.image.width >= 224


def test_a_damaged_jpeg_baseline_frame_is_refused_not_smeared():
    data = bytearray(CASES_BY_NAME["jpeg_baseline_8bit"].make())
    # Garbage in the middle of the entropy-coded scan: libjpeg would only warn and carry on.
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(range(64))
    assert _refused(bytes(data)).reason in ("corrupt", "truncated")


def test_a_header_without_photometric_samples_representation_or_bits_stored_is_read_as_viewers_do():
    """Older exports and edited headers leave the pixel description out: MONOCHROME2, one unsigned sample."""
    ds = radiograph(sixteen_bit(reference_pixels()), bits_stored=12)
    for keyword in ("PhotometricInterpretation", "SamplesPerPixel", "PixelRepresentation", "BitsStored", "HighBit"):
        del ds[keyword]
    for data in (to_bytes(ds), bare_dataset_bytes(ds)):
        result = dicom.decode(data)
        assert result.mode == "MONOCHROME2"
        assert np.array_equal(np.asarray(result.image), reference_pixels())
