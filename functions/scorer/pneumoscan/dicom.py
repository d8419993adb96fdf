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
    truncated / corrupt / too_many_pixels / too_small   as for JPEG and PNG

Patient data: the header is parsed in memory and only the identifiers in `DicomFacts` (the
study, series and instance UIDs, modality, view and age in years) leave this module, on the
decoded image's `dicom`. pydicom's
own warnings can quote header values, so they are silenced while reading; error texts are
written here and never quote a header value.
"""

from __future__ import annotations

import io
import logging
import re
import warnings
from dataclasses import dataclass
from datetime import date

import numpy as np
import pydicom
from PIL import Image
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi
from pydicom.encaps import generate_frames
from pydicom.uid import (ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit,
                         JPEGLSLossless, JPEGLSNearLossless)

from pneumoscan.formats import has_dicom_magic, looks_like_bare_dataset
from pneumoscan import images, results
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
_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)\s*$", re.IGNORECASE)
_DAYS_PER_UNIT = {"D": 1.0, "W": 7.0, "M": 365.25 / 12, "Y": 365.25}


@dataclass(frozen=True)
class DicomFacts:
    """The header facts kept with a result: identifiers to join back to the study, nothing else."""

    study_uid: str | None
    series_uid: str | None
    sop_uid: str | None
    sop_class_uid: str | None
    modality: str | None
    view_position: str | None
    patient_age_years: float | None
    transfer_syntax: str
    photometric: str | None
    bits_stored: int | None
    rows: int | None
    columns: int | None

    def warnings(self) -> tuple[str, ...]:
        """Warning codes the header alone gives (the image is still scored)."""
        age = self.patient_age_years
        if age is not None and not TRAINING_AGE_YEARS[0] <= age < TRAINING_AGE_YEARS[1]:
            return (ADULT_PATIENT,)
        return ()

    def item_fields(self) -> dict:
        """The attributes a result item records (absent values are left out)."""
        fields = {results.STUDY_UID: self.study_uid, results.SERIES_UID: self.series_uid,
                  results.SOP_UID: self.sop_uid, results.MODALITY: self.modality,
                  results.VIEW_POSITION: self.view_position, results.PATIENT_AGE_YEARS: self.patient_age_years}
        return {name: value for name, value in fields.items() if value is not None}


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
            # force=True only for the bare datasets the sniffer accepted: it is how pydicom
            # reads files without the Part 10 header (it guesses implicit/explicit VR).
            dataset = pydicom.dcmread(io.BytesIO(data), force=not with_magic)
            # Elements are parsed lazily: touch the ones we need while the warnings are off.
            dataset.get("PixelData")
    except (InvalidDicomError, EOFError) as exc:
        raise ImageRejected("truncated" if isinstance(exc, EOFError) else "corrupt",
                            f"the DICOM header cannot be parsed ({type(exc).__name__})") from exc
    except (ValueError, TypeError, KeyError, AttributeError, OSError, OverflowError) as exc:
        raise ImageRejected("corrupt", f"the DICOM header cannot be parsed ({type(exc).__name__})") from exc
    if not with_magic and "PixelData" not in dataset and len(dataset) < 3:
        raise ImageRejected("not_dicom", "the bytes parse as no DICOM dataset")
    if not _transfer_syntax(dataset):
        # No file meta: the pixels are encoded as the dataset itself was read.
        implicit, little = dataset.original_encoding
        dataset.file_meta = getattr(dataset, "file_meta", None) or FileMetaDataset()
        dataset.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    return dataset


def facts_of(dataset: Dataset) -> DicomFacts:
    meta = getattr(dataset, "file_meta", None)
    transfer_syntax = _transfer_syntax(dataset)
    return DicomFacts(
        study_uid=_text(dataset, "StudyInstanceUID"),
        series_uid=_text(dataset, "SeriesInstanceUID"),
        sop_uid=_text(dataset, "SOPInstanceUID") or (_text(meta, "MediaStorageSOPInstanceUID") if meta else None),
        sop_class_uid=_text(dataset, "SOPClassUID") or (_text(meta, "MediaStorageSOPClassUID") if meta else None),
        modality=_upper(dataset, "Modality"),
        view_position=_upper(dataset, "ViewPosition"),
        patient_age_years=patient_age_years(dataset),
        transfer_syntax=transfer_syntax or "unknown (no file meta)",
        photometric=_upper(dataset, "PhotometricInterpretation"),
        bits_stored=_int(dataset, "BitsStored"),
        rows=_int(dataset, "Rows"),
        columns=_int(dataset, "Columns"),
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
    if modality in RADIOGRAPH_MODALITIES:
        pass
    elif modality in CAPTURE_MODALITIES or modality is None:
        body_part = _upper(dataset, "BodyPartExamined")
        if body_part is not None and body_part not in CHEST_BODY_PARTS:
            raise ImageRejected(
                "unsupported_modality",
                f"a {modality or 'modality-less'} image of body part other than the chest is not scored")
    else:
        raise ImageRejected(
            "unsupported_modality",
            f"Modality {modality} is not a radiograph: only CR, DX, DR and chest secondary captures are scored")
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
        raise ImageRejected("unsupported_mode", f"PhotometricInterpretation {photometric} is not supported")


def decode(data: bytes, *, target_size: tuple[int, int] | None = None) -> DecodedImage:
    """DICOM bytes -> the decoded image with its header facts in `.dicom` (ImageRejected if not scorable).

    With `target_size`, greyscale JPEG baseline pixel data goes through the JPEG decoder the
    JPEG uploads use (strict libjpeg-turbo, DCT-domain downscaling); every other codec decodes
    at full resolution (a 4k x 4k 16-bit image stays far below the function's memory).
    """
    dataset = read_dataset(data)
    _complete_pixel_description(dataset)
    facts = facts_of(dataset)
    try:
        check_scorable(facts, dataset)
        if _is_greyscale_jpeg_baseline(dataset, facts):
            image = _jpeg_baseline_image(dataset, target_size)
        else:
            image = _to_image(_pixel_array(dataset), dataset, facts.photometric)
    except ImageRejected as refused:
        # A refused DICOM object is still part of its study: the failure keeps the identifiers.
        refused.dicom = facts
        raise
    # The source's own size: the hot region is reported in its pixel coordinates.
    return DecodedImage(image, width=facts.columns or image.width, height=facts.rows or image.height,
                        format=FORMAT, mode=facts.photometric or "unknown", dicom=facts)


def _complete_pixel_description(dataset: Dataset) -> None:
    """Fill in what older exports (ACR-NEMA style) and edited headers leave out, as viewers assume it:
    one greyscale sample, MONOCHROME2, unsigned, all allocated bits stored."""
    if "PixelData" not in dataset or "BitsAllocated" not in dataset:
        return
    defaults = {"SamplesPerPixel": 1, "PixelRepresentation": 0, "BitsStored": dataset.BitsAllocated}
    for keyword, value in defaults.items():
        if _int(dataset, keyword) is None:
            setattr(dataset, keyword, value)
    if _int(dataset, "HighBit") is None:
        dataset.HighBit = int(dataset.BitsStored) - 1
    if _text(dataset, "PhotometricInterpretation") is None and int(dataset.SamplesPerPixel) == 1:
        dataset.PhotometricInterpretation = "MONOCHROME2"


def _is_greyscale_jpeg_baseline(dataset: Dataset, facts: DicomFacts) -> bool:
    return (facts.transfer_syntax == JPEGBaseline8Bit and facts.photometric in _GREYSCALE
            and _int(dataset, "SamplesPerPixel") == 1 and (facts.bits_stored or 8) == 8)


def _jpeg_baseline_image(dataset: Dataset, target_size: tuple[int, int] | None) -> Image.Image:
    """The one JPEG frame through `images.decode`, then the display transforms on its 8-bit values."""
    try:
        frame = next(generate_frames(dataset.PixelData, number_of_frames=1))
    except (StopIteration, ValueError, KeyError, TypeError) as exc:
        raise ImageRejected("corrupt", f"the encapsulated JPEG frame cannot be read ({type(exc).__name__})") from exc
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
        raise ImageRejected(
            "unsupported_transfer_syntax",
            f"no decoder for transfer syntax {_transfer_syntax(dataset) or 'unknown'}") from exc
    except (ValueError, RuntimeError, AttributeError, KeyError, TypeError, OSError, EOFError) as exc:
        message = str(exc)
        reason = ("truncated" if any(word in message for word in ("less than expected", "truncated", "end of"))
                  else "corrupt")
        # Decoder messages are about the pixel data (sizes, codec status), never header values.
        raise ImageRejected(reason, f"DICOM pixel data could not be decoded ({message[:300]})") from exc


def _to_image(pixels: np.ndarray, dataset: Dataset, photometric: str | None) -> Image.Image:
    if photometric in _GREYSCALE:
        if pixels.ndim != 2:
            raise ImageRejected("unsupported_mode", f"greyscale pixel data of shape {pixels.shape}")
        return Image.fromarray(display_greyscale(pixels, dataset), mode="L")
    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, dataset)
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise ImageRejected("unsupported_mode", f"{photometric} pixel data of shape {pixels.shape}")
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
    shown = _voi(values, dataset)
    if shown is None:
        shown = _normalise(values, float(values.min()), float(values.max()))
    if str(dataset.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
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
    center, width = _first(dataset.get("WindowCenter")), _first(dataset.get("WindowWidth"))
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


def _first(value) -> float | None:
    if value is None or value == "":
        return None
    try:
        if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
            value = value[0] if len(value) else None
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _text(dataset: Dataset | None, keyword: str) -> str | None:
    if dataset is None:
        return None
    try:
        value = dataset.get(keyword)
    except (ValueError, TypeError, KeyError):
        return None
    if value is None or isinstance(value, (bytes, list)) and not value:
        return None
    text = str(value).strip().strip("\x00").strip()
    return text or None


def _upper(dataset: Dataset, keyword: str) -> str | None:
    text = _text(dataset, keyword)
    return text.upper() if text else None


def _int(dataset: Dataset, keyword: str) -> int | None:
    try:
        value = dataset.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _date(text: str | None) -> date | None:
    if not text or not re.fullmatch(r"\d{8}", text):
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None
