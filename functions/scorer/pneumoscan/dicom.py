"""DICOM radiographs -> the upright 8-bit image the model path takes, plus the few header facts kept.

Pixels come out as a radiologist's viewer shows them: the Modality LUT (or rescale slope and
intercept), then the VOI LUT or the first window centre/width (else the image's own range),
then MONOCHROME1 inverted so that bone is bright. Every transfer syntax pydicom reads with its
pylibjpeg plugins is decoded: implicit/explicit VR little endian, deflated, JPEG baseline and
extended, JPEG lossless, JPEG-LS, JPEG 2000 and RLE.

Only frontal chest radiographs are scored (see `check_scorable`); anything else is refused with
`ImageRejected` and a reason code:

    unsupported_modality    CT, MR, US, ... (only CR, DX, DR and chest secondary captures)
    multi_frame             more than one frame
    lateral_view            ViewPosition LL/RL/LATERAL (the model saw frontal views only)
    no_pixel_data           a DICOM object without an image (SR, presentation state, ...)
    unsupported_transfer_syntax  no installed decoder for it
    not_dicom               a file that looked like a bare dataset but is not one
    unsupported_mode        a pixel layout that maps to no greyscale or RGB image
    truncated / corrupt / too_many_pixels / too_small   as for JPEG and PNG; also a compressed
                            frame without its end marker, a header that parses but cannot be
                            applied, a deflated dataset inflating past what its image needs

Patient data: the header is parsed in memory and only the identifiers in
`pneumoscan.formats.DicomFacts` (the study, series and instance UIDs, modality, view and age in
years) leave this module, on the decoded image's `dicom`. pydicom's
own warnings can quote header values, so they are silenced while reading; error texts are
written here and never quote a header value. A kept value must be valid for its kind (UIDs,
code strings, the photometric interpretation's defined terms); one that is not is left out
and named in `DicomFacts.invalid`.
"""

from __future__ import annotations

import io
import logging
import math
import re
import struct
import warnings
import zlib
from datetime import date

import numpy as np
import pydicom
from PIL import Image
from pydicom import config as pydicom_config
from pydicom import filereader
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi
from pydicom.encaps import generate_frames
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian, JPEG2000TransferSyntaxes, JPEGBaseline8Bit, JPEGLSLossless,
                         JPEGLSNearLossless, JPEGLSTransferSyntaxes, JPEGTransferSyntaxes)

from pneumoscan import images
from pneumoscan.formats import SNIFF_BYTES, DicomFacts, has_dicom_magic, is_uid, looks_like_bare_dataset
from pneumoscan.images import MAX_PIXELS, MIN_SIDE, DecodedImage, ImageRejected

# Header values must never reach a log: pydicom's validation warnings quote them, and what it
# finds odd in a header goes to its logger as well as to warnings (the Lambda prints both).
pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
logging.getLogger("pydicom").propagate = False

FORMAT = "DICOM"
# The training population: paediatric patients one to five years old (the Guangzhou
# Women and Children's Medical Center collection). [low, high) in years: a patient is in
# it from the first birthday up to the sixth.
TRAINING_AGE_YEARS = (1.0, 6.0)
ADULT_PATIENT = "adult_patient"
# Ages above 89 are an identifier on their own (HIPAA Safe Harbor): recorded as 90.
MAX_RECORDED_AGE_YEARS = 90

# Radiographs: computed and digital radiography (DR is not a defined term but is written
# by some detectors). Secondary captures and "other" are scored only as chest images.
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "DR"})
CAPTURE_MODALITIES = frozenset({"SC", "OT"})
CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX", "LUNG", "LUNGS", "TORAX", "TORSO"})
LATERAL_VIEWS = frozenset({"LL", "RL", "LATERAL", "LAT", "LEFT LATERAL", "RIGHT LATERAL"})
_GREYSCALE = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR")
# Stored-value ranges up to this many levels go through one lookup table (uint8 out,
# no float copy of a 16 MP image); wider ones (32-bit data) are converted in float32.
_MAX_TABLE_LEVELS = 1 << 17
# CharLS (pyjpegls) decodes JPEG-LS about three times faster than libjpeg; "" lets pydicom pick.
_PREFERRED_PLUGINS = {JPEGLSLossless: "pyjpegls", JPEGLSNearLossless: "pyjpegls"}
# Encapsulated frames of these codecs end with an end-of-image (JPEG, JPEG-LS) or end-of-codestream
# (JPEG 2000) marker, FFD9: a frame without it was cut short, and a decoder given one can spend
# seconds looking for the rest (CharLS: 5-7 s on a truncated 1.6 MB radiograph frame).
_END_MARKER_SYNTAXES = frozenset(JPEGTransferSyntaxes) | frozenset(JPEGLSTransferSyntaxes) | frozenset(
    JPEG2000TransferSyntaxes)
_END_MARKER = b"\xff\xd9"
# A deflated dataset is inflated at most this far to read the header in front of its pixel
# data, then only as far as the image the header declares needs (and as far again for what
# follows the pixels): a few MB of deflate can inflate to gigabytes.
_DEFLATED_HEADER_BYTES = 4 << 20
# 16-bit RGB, the widest pixel a radiograph export writes.
_MAX_BYTES_PER_PIXEL = 6
# Code strings (Modality, ViewPosition; PS3.5 6.2): at most 16 upper-case letters, digits,
# spaces and underscores. Anything else is no value a device writes, and is not kept.
_CODE_STRING = re.compile(r"[A-Z0-9 _]{1,16}")
_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)\s*$", re.IGNORECASE)
_DAYS_PER_UNIT = {"D": 1.0, "W": 7.0, "M": 365.25 / 12, "Y": 365.25}


def header_warnings(facts: DicomFacts) -> tuple[str, ...]:
    """Warning codes the header alone gives (the image is still scored)."""
    age = facts.patient_age_years
    if age is not None and not TRAINING_AGE_YEARS[0] <= age < TRAINING_AGE_YEARS[1]:
        return (ADULT_PATIENT,)
    return ()


def read_dataset(data: bytes) -> Dataset:
    """Parse a DICOM file, with or without its preamble and file meta."""
    if not data:
        raise ImageRejected("empty", "the object has zero bytes")
    with_magic = has_dicom_magic(data)
    if not with_magic and not looks_like_bare_dataset(data):
        raise ImageRejected("not_dicom", "no DICM magic at byte 128 and no DICOM data element at the start")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            meta, meta_end = _file_meta(data) if with_magic else (None, 0)
            if meta is not None and str(meta.get("TransferSyntaxUID", "")) == DeflatedExplicitVRLittleEndian:
                dataset = _read_deflated(data, meta, meta_end)
            else:
                # force=True only for the bare datasets the sniffer accepted: it is how pydicom
                # reads files without the Part 10 header (it guesses implicit/explicit VR).
                dataset = pydicom.dcmread(io.BytesIO(data), force=not with_magic)
            # Elements are parsed lazily: touch the ones we need while the warnings are off.
            dataset.get("PixelData")
    except (InvalidDicomError, EOFError) as exc:
        raise ImageRejected("truncated" if isinstance(exc, EOFError) else "corrupt",
                            f"the DICOM header cannot be parsed ({type(exc).__name__})") from exc
    except ImageRejected:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, OSError, OverflowError, zlib.error) as exc:
        raise ImageRejected("corrupt", f"the DICOM header cannot be parsed ({type(exc).__name__})") from exc
    if not with_magic and "PixelData" not in dataset and len(dataset) < 3:
        raise ImageRejected("not_dicom", "the bytes parse as no DICOM dataset")
    if with_magic and "PixelData" not in dataset and "SOPClassUID" not in dataset:
        # Every DICOM object, images or not, names its SOP class: this is no dataset at all.
        if meta_end >= len(data):
            raise ImageRejected("truncated", "the DICOM file ends after its header: it holds no dataset")
        raise ImageRejected("corrupt", "the bytes after the DICOM file header are no DICOM dataset")
    if not _transfer_syntax(dataset):
        # No file meta: the pixels are encoded as the dataset itself was read.
        implicit, little = dataset.original_encoding
        dataset.file_meta = getattr(dataset, "file_meta", None) or FileMetaDataset()
        dataset.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    return dataset


def _file_meta(data: bytes) -> tuple[FileMetaDataset, int]:
    """A Part 10 file's meta group and where its dataset starts (after preamble, magic and meta)."""
    stream = io.BytesIO(data)
    stream.seek(SNIFF_BYTES)
    # pydicom's own file meta reader (what dcmread runs first); it stops at the first non-0002 tag.
    meta = filereader._read_file_meta_info(stream)
    return meta, stream.tell()


def _read_deflated(data: bytes, meta: FileMetaDataset, meta_end: int) -> Dataset:
    """A deflated Part 10 file, inflated no further than its header says the image needs.

    pydicom inflates the whole rest of the file in one call, and a file of a few MB can inflate
    to gigabytes. Here the header in front of the pixel data is inflated first, with a cap, and
    the rest only as far as the one frame it declares needs (plus the header's cap again for
    what may follow the pixels); past that it is refused before more is allocated.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    inflated = bytearray(inflater.decompress(data[meta_end:], _DEFLATED_HEADER_BYTES))
    header = filereader.read_dataset(io.BytesIO(bytes(inflated)), False, True,
                                     stop_when=lambda tag, vr, length: tag >= 0x7FE00008)
    if "Rows" not in header and not inflater.eof and len(inflated) >= _DEFLATED_HEADER_BYTES:
        raise ImageRejected("corrupt", f"the deflated DICOM header inflates past {_DEFLATED_HEADER_BYTES} bytes")
    header.file_meta = meta
    rows, columns = _int(header, "Rows") or 0, _int(header, "Columns") or 0
    try:
        if rows * columns > MAX_PIXELS:
            raise ImageRejected("too_many_pixels", f"{columns}x{rows} declares more than {MAX_PIXELS} pixels")
        if (_int(header, "NumberOfFrames") or 1) > 1:
            raise ImageRejected("multi_frame", "more than one frame: only single-frame radiographs are scored")
    except ImageRejected as refused:
        refused.dicom = facts_of(header)
        raise
    pixel_bytes = min((_int(header, "SamplesPerPixel") or 1) * math.ceil((_int(header, "BitsAllocated") or 8) / 8),
                      _MAX_BYTES_PER_PIXEL)
    limit = rows * columns * pixel_bytes + 2 * _DEFLATED_HEADER_BYTES
    while len(inflated) <= limit and not inflater.eof:
        more = inflater.decompress(inflater.unconsumed_tail, limit + 1 - len(inflated))
        if not more:
            break  # the deflate stream ends early: the dataset reader finds it truncated
        inflated += more
    if len(inflated) > limit:
        raise ImageRejected("corrupt", "the deflated DICOM dataset inflates past what its header's image needs")
    dataset = filereader.read_dataset(io.BytesIO(inflated), False, True)
    dataset.file_meta = meta
    dataset.set_original_encoding(False, True, dataset._character_set)
    return dataset


def facts_of(dataset: Dataset) -> DicomFacts:
    meta = getattr(dataset, "file_meta", None)
    transfer_syntax = _transfer_syntax(dataset)
    invalid: list[str] = []

    def uid(keyword: str, meta_keyword: str | None = None) -> str | None:
        text = _text(dataset, keyword)
        if text is None and meta_keyword and meta is not None:
            text = _text(meta, meta_keyword)
        if text is not None and not is_uid(text):
            invalid.append(keyword)
            return None
        return text

    def code_string(keyword: str) -> str | None:
        text = _upper(dataset, keyword)
        if text is not None and not _CODE_STRING.fullmatch(text):
            invalid.append(keyword)
            return None
        return text

    photometric = _upper(dataset, "PhotometricInterpretation")
    if photometric is not None and photometric not in _GREYSCALE and photometric not in _COLOUR:
        invalid.append("PhotometricInterpretation")
        photometric = None
    return DicomFacts(
        study_uid=uid("StudyInstanceUID"),
        series_uid=uid("SeriesInstanceUID"),
        sop_uid=uid("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
        sop_class_uid=uid("SOPClassUID", "MediaStorageSOPClassUID"),
        modality=code_string("Modality"),
        view_position=code_string("ViewPosition"),
        patient_age_years=patient_age_years(dataset),
        transfer_syntax=transfer_syntax if is_uid(transfer_syntax) else "unknown (no file meta)",
        photometric=photometric,
        bits_stored=_int(dataset, "BitsStored"),
        rows=_int(dataset, "Rows"),
        columns=_int(dataset, "Columns"),
        invalid=tuple(invalid),
    )


def parse_age(value: str | None) -> float | None:
    """DICOM Age String (`045Y`, `006M`, `010W`, `003D`), also bare numbers (`45`) as years."""
    if not value:
        return None
    match = _AGE.match(str(value))
    if not match:
        return None
    number, unit = int(match.group(1)), (match.group(2) or "Y").upper()
    years = number if unit == "Y" else round(number * _DAYS_PER_UNIT[unit] / 365.25, 2)
    return float(min(years, MAX_RECORDED_AGE_YEARS))


def patient_age_years(dataset: Dataset) -> float | None:
    """PatientAge, else the age on the study (or acquisition) date from the birth date."""
    age = parse_age(_text(dataset, "PatientAge"))
    if age is not None:
        return age
    born = _date(_text(dataset, "PatientBirthDate"))
    seen = next(filter(None, (_date(_text(dataset, keyword)) for keyword in
                              ("StudyDate", "AcquisitionDate", "ContentDate", "SeriesDate"))), None)
    if born is None or seen is None or seen < born:
        return None
    days = (seen - born).days
    years = days // 365.25 if days >= 365.25 else round(days / 365.25, 2)
    return float(min(years, MAX_RECORDED_AGE_YEARS))


def check_scorable(facts: DicomFacts, dataset: Dataset) -> None:
    """Refuse what the model was not made for, from the header, before decoding pixels."""
    if "PixelData" not in dataset:
        kind = "FloatPixelData" if ("FloatPixelData" in dataset or "DoubleFloatPixelData" in dataset) else None
        raise ImageRejected("no_pixel_data", "the DICOM object carries no integer pixel data"
                            + (f" ({kind} is not supported)" if kind else " (not an image)"))
    modality = facts.modality
    if "Modality" in facts.invalid:
        raise ImageRejected("unsupported_modality", "the Modality is no DICOM code string: only CR, DX, DR and "
                                                    "chest secondary captures are scored")
    if modality in RADIOGRAPH_MODALITIES:
        pass
    elif modality in CAPTURE_MODALITIES or modality is None:
        body_part = _upper(dataset, "BodyPartExamined")
        if body_part is not None and body_part not in CHEST_BODY_PARTS:
            raise ImageRejected(
                "unsupported_modality", "a secondary capture or modality-less image of a body part other than "
                                        "the chest is not scored")
    else:
        raise ImageRejected(
            "unsupported_modality",
            "the Modality is no radiograph's: only CR, DX, DR and chest secondary captures are scored")
    frames = _int(dataset, "NumberOfFrames") or 1
    if frames > 1:
        raise ImageRejected("multi_frame", f"{frames} frames: only single-frame radiographs are scored")
    if facts.view_position in LATERAL_VIEWS or _lateral_view_code(dataset):
        raise ImageRejected("lateral_view", "a lateral view: the model was trained on frontal (AP/PA) views only")
    rows, columns = facts.rows or 0, facts.columns or 0
    if rows * columns > MAX_PIXELS:
        raise ImageRejected("too_many_pixels", f"{columns}x{rows} declares more than {MAX_PIXELS} pixels")
    if min(rows, columns) < MIN_SIDE:
        raise ImageRejected("too_small", f"{columns}x{rows} is below the {MIN_SIDE} px minimum side")
    photometric = facts.photometric
    if photometric not in _GREYSCALE and photometric not in _COLOUR:
        raise ImageRejected("unsupported_mode", "the PhotometricInterpretation is missing or none that maps to "
                                                "greyscale or RGB")
    if photometric == "PALETTE COLOR" and not all(
            f"{colour}PaletteColorLookupTableDescriptor" in dataset for colour in ("Red", "Green", "Blue")):
        raise ImageRejected("unsupported_mode", "PALETTE COLOR pixel data without its palette")


def decode(data: bytes, *, target_size: tuple[int, int] | None = None) -> DecodedImage:
    """DICOM bytes -> the decoded image with its header facts in `.dicom` (ImageRejected if not scorable).

    With `target_size`, greyscale JPEG baseline pixel data goes through the JPEG decoder the
    JPEG uploads use (strict libjpeg-turbo, DCT-domain downscaling); every other codec decodes
    at full resolution (a 4k x 4k 16-bit image stays far below the function's memory).
    """
    dataset = read_dataset(data)
    facts = facts_of(dataset)
    try:
        try:
            _check_pixel_description(dataset)
            facts = facts_of(dataset)  # with the defaults filled in and the photometric normalised
            check_scorable(facts, dataset)
            frame = _checked_frame(dataset)
            if _is_greyscale_jpeg_baseline(dataset, facts):
                image = _jpeg_baseline_image(frame, dataset, target_size)
            else:
                image = _to_image(_pixel_array(dataset), dataset, facts.photometric)
        except ImageRejected:
            raise
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, ZeroDivisionError) as exc:
            # Header values that parse but cannot be applied (a LUT without data, a slope that is
            # no number) fail in pydicom's or numpy's arithmetic: the file is refused, never retried.
            raise ImageRejected("corrupt", f"the DICOM header's pixel description cannot be applied "
                                           f"({type(exc).__name__})") from exc
    except ImageRejected as refused:
        # A refused DICOM object is still part of its study: the failure keeps the identifiers.
        refused.dicom = facts
        raise
    # The source's own size: the hot region is reported in its pixel coordinates.
    return DecodedImage(image, width=facts.columns or image.width, height=facts.rows or image.height,
                        format=FORMAT, mode=facts.photometric or "unknown", dicom=facts)


def _check_pixel_description(dataset: Dataset) -> None:
    """Refuse a pixel description that cannot be decoded, filling in first what older exports
    (ACR-NEMA style) and edited headers leave out, as viewers assume it: one greyscale sample,
    MONOCHROME2, unsigned, all allocated bits stored. The photometric interpretation is
    normalised (`monochrome1 ` is MONOCHROME1) for the decoders, which take the defined terms only."""
    if "PixelData" not in dataset:
        return  # check_scorable says what the object is instead
    bits_allocated = _int(dataset, "BitsAllocated")
    if bits_allocated is None or not 1 <= bits_allocated <= 64:
        raise ImageRejected("corrupt", "BitsAllocated is missing, empty or out of range: the pixels cannot be read")
    defaults = {"SamplesPerPixel": 1, "PixelRepresentation": 0, "BitsStored": bits_allocated}
    for keyword, value in defaults.items():
        if _int(dataset, keyword) is None:
            setattr(dataset, keyword, value)
    if _int(dataset, "HighBit") is None:
        dataset.HighBit = int(dataset.BitsStored) - 1
    photometric = _upper(dataset, "PhotometricInterpretation")
    if photometric is None and int(dataset.SamplesPerPixel) == 1:
        dataset.PhotometricInterpretation = "MONOCHROME2"
    elif photometric in _GREYSCALE or photometric in _COLOUR:
        dataset.PhotometricInterpretation = photometric
    if "NumberOfFrames" in dataset and (_int(dataset, "NumberOfFrames") or 0) < 1:
        raise ImageRejected("corrupt", "NumberOfFrames is empty, no number or below one")
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        if keyword in dataset and _finite(dataset.get(keyword)) is None:
            raise ImageRejected("corrupt", f"{keyword} is empty or no finite number")
    for item in dataset.get("ModalityLUTSequence") or ():
        if "LUTDescriptor" not in item or "LUTData" not in item:
            raise ImageRejected("corrupt", "a Modality LUT without its descriptor or data")


def _checked_frame(dataset: Dataset) -> bytes | None:
    """The single encapsulated frame, where the codec's frames end with a marker: refused when
    it holds no bytes or lacks that marker, before any decoder is given it. None for native data."""
    transfer_syntax = _transfer_syntax(dataset)
    if transfer_syntax not in _END_MARKER_SYNTAXES:
        return None
    try:
        frame = next(generate_frames(dataset.PixelData, number_of_frames=1), b"")
    except (ValueError, KeyError, TypeError, struct.error) as exc:
        raise ImageRejected("corrupt", f"the encapsulated frame cannot be read ({type(exc).__name__})") from exc
    if not frame.strip(b"\x00"):
        raise ImageRejected("corrupt", "the encapsulated pixel data holds no frame bytes")
    # Fragments are padded to an even length, with a zero byte or (some encoders) a 0xFF fill byte.
    if not frame.rstrip(b"\x00\xff").endswith(_END_MARKER):
        raise ImageRejected("truncated", "the compressed frame ends without its end-of-image marker: "
                                         "the pixel data was cut short")
    return frame


def _is_greyscale_jpeg_baseline(dataset: Dataset, facts: DicomFacts) -> bool:
    return (facts.transfer_syntax == JPEGBaseline8Bit and facts.photometric in _GREYSCALE
            and _int(dataset, "SamplesPerPixel") == 1 and (facts.bits_stored or 8) == 8)


def _jpeg_baseline_image(frame: bytes, dataset: Dataset, target_size: tuple[int, int] | None) -> Image.Image:
    """The one JPEG frame through `images.decode`, then the display transforms on its 8-bit values."""
    jpeg = images.decode(frame, target_size=target_size)
    if jpeg.format not in ("JPEG", "MPO") or (jpeg.width, jpeg.height) != (dataset.Columns, dataset.Rows):
        raise ImageRejected("corrupt", f"the JPEG frame is {jpeg.width}x{jpeg.height}, the header says "
                                       f"{dataset.Columns}x{dataset.Rows}")
    pixels = np.asarray(jpeg.image.convert("L"), dtype=np.uint8)
    return Image.fromarray(display_greyscale(pixels, dataset), mode="L")


def _pixel_array(dataset: Dataset) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Colour is converted to RGB by pydicom; the display transforms are ours.
            dataset.pixel_array_options(decoding_plugin=_PREFERRED_PLUGINS.get(_transfer_syntax(dataset), ""))
            return dataset.pixel_array
    except NotImplementedError as exc:
        raise ImageRejected("unsupported_transfer_syntax", "no installed decoder reads the file's transfer syntax"
                            ) from exc
    except (ValueError, RuntimeError, AttributeError, KeyError, TypeError, OSError, EOFError) as exc:
        message = str(exc)
        truncated = any(word in message for word in ("less than expected", "truncated", "end of"))
        # pydicom's messages can quote header values: the text recorded is fixed.
        raise ImageRejected("truncated" if truncated else "corrupt",
                            "the DICOM pixel data ends before the image its header declares" if truncated
                            else f"the DICOM pixel data cannot be decoded ({type(exc).__name__})") from exc


def _to_image(pixels: np.ndarray, dataset: Dataset, photometric: str | None) -> Image.Image:
    if photometric in _GREYSCALE:
        if pixels.ndim != 2:
            raise ImageRejected("unsupported_mode", f"greyscale pixel data of {pixels.ndim} dimensions")
        return Image.fromarray(display_greyscale(pixels, dataset), mode="L")
    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, dataset)
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise ImageRejected("unsupported_mode", f"colour pixel data of shape {pixels.shape}")
    if pixels.dtype != np.uint8:
        pixels = _stretch(pixels.astype(np.float32), float(pixels.min()), float(pixels.max()))
    return Image.fromarray(pixels, mode="RGB")


def display_greyscale(pixels: np.ndarray, dataset: Dataset) -> np.ndarray:
    """Stored values -> 8-bit display values, through one lookup table over the image's own range."""
    low, high = int(pixels.min()), int(pixels.max())
    if pixels.dtype.kind in "iu" and high - low < _MAX_TABLE_LEVELS:
        levels = np.arange(low, high + 1, dtype=np.int64)
        table = _display_curve(levels, dataset)
        if low >= 0 and high < _MAX_TABLE_LEVELS:
            # Index by the stored value itself: no offset copy of the image.
            return np.concatenate([np.zeros(low, dtype=np.uint8), table])[pixels]
        return table[pixels.astype(np.int64) - low]
    return _display_curve(pixels.astype(np.float32), dataset)


def _display_curve(values: np.ndarray, dataset: Dataset) -> np.ndarray:
    """Modality LUT, VOI (LUT or window, else own range), MONOCHROME1 inverted, as uint8."""
    values = np.asarray(apply_modality_lut(values, dataset), dtype=np.float64)
    if not np.isfinite(values).all():
        raise ImageRejected("corrupt", "the rescale or Modality LUT maps stored values to no finite number")
    shown = _voi(values, dataset)
    if shown is None:
        shown = _normalise(values, float(values.min()), float(values.max()))
    if _upper(dataset, "PhotometricInterpretation") == "MONOCHROME1":
        shown = 1.0 - shown
    return np.clip(shown * 255.0, 0, 255).round().astype(np.uint8)


def _voi(values: np.ndarray, dataset: Dataset) -> np.ndarray | None:
    """The VOI LUT or the first window, scaled to 0..1; None when there is none or it shows nothing."""
    shown = None
    lut_items = dataset.get("VOILUTSequence")
    if lut_items:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                lut_data = np.asarray(lut_items[0].LUTData, dtype=np.float64)
                # A LUT is indexed by integer values (the Modality LUT output).
                out = np.asarray(apply_voi(np.rint(values).astype(np.int64), dataset, index=0), dtype=np.float64)
            shown = _normalise(out, float(lut_data.min()), float(lut_data.max()))
        except (AttributeError, ValueError, TypeError, IndexError, KeyError):
            shown = None  # a broken VOI LUT falls back to the window, then the own range
    if shown is None:
        shown = _window(values, dataset)
    # A window or LUT that maps the whole image to one level (edited or wrong headers) shows nothing.
    if shown is not None and float(shown.max()) - float(shown.min()) < 1 / 255:
        return None
    return shown


def _window(values: np.ndarray, dataset: Dataset) -> np.ndarray | None:
    """The first window centre/width with its VOI LUT Function (PS3.3 C.11.2.1.2, C.11.2.1.3), as 0..1.

    pydicom's apply_windowing scales its output to the stored bit depth, which would only
    have to be undone here.
    """
    center, width = _finite(dataset.get("WindowCenter")), _finite(dataset.get("WindowWidth"))
    if center is None or width is None:
        return None
    function = str(dataset.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if function == "SIGMOID":
        if width <= 0:
            return None
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        if width <= 0:
            return None
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    if width < 1:
        return None
    return np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0) if width > 1 else \
        (values > center - 0.5).astype(np.float64)


def _normalise(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        return np.zeros_like(values, dtype=np.float64)
    return (values - low) / (high - low)


def _stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.clip(_normalise(values, low, high) * 255.0, 0, 255).round().astype(np.uint8)


def _transfer_syntax(dataset: Dataset) -> str:
    meta = getattr(dataset, "file_meta", None)
    return str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""


def _lateral_view_code(dataset: Dataset) -> bool:
    """View Code Sequence saying lateral (a decubitus view is a frontal projection: not lateral)."""
    for item in dataset.get("ViewCodeSequence") or ():
        meaning = str(item.get("CodeMeaning", "")).lower()
        if "lateral" in meaning and "decubitus" not in meaning:
            return True
    return False


def _finite(value) -> float | None:
    """A header number as a float, or None when it is empty, no number or not finite."""
    if isinstance(value, (list, tuple, MultiValue)):
        value = value[0] if len(value) else None
    try:
        number = float(value) if value not in (None, "") else None
    except (TypeError, ValueError, OverflowError):
        return None
    return number if number is not None and math.isfinite(number) else None


def _text(dataset: Dataset | None, keyword: str) -> str | None:
    if dataset is None:
        return None
    try:
        value = dataset.get(keyword)
    except (ValueError, TypeError, KeyError):
        return None
    if isinstance(value, (list, MultiValue)):
        # A multi-valued element where one value belongs: the first is the value.
        value = value[0] if len(value) else None
    if value is None or isinstance(value, bytes) and not value:
        return None
    text = str(value).strip().strip("\x00").strip()
    return text or None


def _upper(dataset: Dataset, keyword: str) -> str | None:
    text = _text(dataset, keyword)
    return text.upper() if text else None


def _int(dataset: Dataset, keyword: str) -> int | None:
    try:
        value = dataset.get(keyword)
        if isinstance(value, (list, MultiValue)):
            value = value[0] if len(value) else None
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError, OverflowError):
        return None


def _date(text: str | None) -> date | None:
    if not text or not re.fullmatch(r"\d{8}", text):
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None
