"""DICOM test files, built at test time from a real radiograph in ../shared/data.

Every transfer syntax the scorer reads, both photometric interpretations, 8 and 16 bits,
with the real X-ray's pixels: pydicom writes the uncompressed, deflated and RLE ones
natively, JPEG-LS and JPEG 2000 through its encoder plugins (pyjpegls, pylibjpeg-openjpeg),
and JPEG baseline wraps a real JPEG's bytes. Nothing here encodes JPEG lossless or 12-bit
extended JPEG, so those come from pydicom's test files (`pydicom.data`, `pydicom-data`),
relabelled as a chest radiograph. Nothing is written into the repo.
"""

from __future__ import annotations

import copy
import io
import struct
import zlib
from dataclasses import dataclass
from functools import cache
from typing import Callable

import numpy as np
import pydicom
import pydicom.filebase
import pydicom.filewriter
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    RLELossless,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    PYDICOM_IMPLEMENTATION_UID,
    generate_uid,
)

from image_cases import reference_bytes, reference_image

DIGITAL_XRAY_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1"
# Fixed UIDs so a test can look for them in the outputs.
STUDY_UID = "1.2.826.0.1.3680043.8.498.11.1"
SERIES_UID = "1.2.826.0.1.3680043.8.498.11.2"
SOP_UID = "1.2.826.0.1.3680043.8.498.11.3"

# Each PHI-bearing attribute of a radiograph header (PS3.15 Annex E basic profile, the ones
# a CR/DX export carries) with a marker that must never appear in any output.
PHI_MARKERS = {
    "PatientName": "PHIMARK^NAME",
    "PatientID": "PHIMARK-PATID",
    "IssuerOfPatientID": "PHIMARK-ISSUER",
    "OtherPatientIDs": "PHIMARK-OTHERID",
    "OtherPatientNames": "PHIMARK^OTHERNAME",
    "PatientBirthName": "PHIMARK^BIRTHNAME",
    "PatientMotherBirthName": "PHIMARK^MOTHER",
    "PatientAddress": "PHIMARK-ADDRESS",
    "PatientTelephoneNumbers": "PHIMARK-PHONE",
    "MedicalRecordLocator": "PHIMARK-MRN",
    "EthnicGroup": "PHIMARK-ETHNIC",
    "Occupation": "PHIMARK-OCCUP",
    "AdditionalPatientHistory": "PHIMARK-HISTORY",
    "PatientComments": "PHIMARK-PCOMMENT",
    "AccessionNumber": "PHIMARK-ACCESSNO",
    "StudyID": "PHIMARK-STUDYID",
    "StudyDescription": "PHIMARK-STUDYDESC",
    "SeriesDescription": "PHIMARK-SERIESDESC",
    "ReferringPhysicianName": "PHIMARK^REFERRING",
    "PerformingPhysicianName": "PHIMARK^PERFORMING",
    "NameOfPhysiciansReadingStudy": "PHIMARK^READING",
    "OperatorsName": "PHIMARK^OPERATOR",
    "RequestingPhysician": "PHIMARK^REQUESTING",
    "InstitutionName": "PHIMARK-INSTITUTION",
    "InstitutionAddress": "PHIMARK-INSTADDRESS",
    "InstitutionalDepartmentName": "PHIMARK-DEPT",
    "StationName": "PHIMARK-STATION",
    "DeviceSerialNumber": "PHIMARK-SERIAL",
    "RequestedProcedureDescription": "PHIMARK-PROCDESC",
    "PerformedProcedureStepID": "PHIMARK-PPSID",
    "PerformedProcedureStepDescription": "PHIMARK-PPSDESC",
    "ImageComments": "PHIMARK-IMGCOMMENT",
    "ProtocolName": "PHIMARK-PROTOCOL",
    "PatientBirthDate": "19010203",
    "StudyDate": "20240506",
    "PatientBirthTime": "010203",
}
PHI_DATE_MARKERS = ("19010203", "20240506")


@dataclass(frozen=True)
class DicomCase:
    name: str
    transfer_syntax: str
    make: Callable[[], bytes]
    photometric: str = "MONOCHROME2"
    bits: int = 8
    # True when the file holds the real X-ray's pixels losslessly, so the decoded image must
    # equal the reference; lossy ones are compared loosely, relabelled test files not at all.
    exact: bool = True
    from_xray: bool = True


@cache
def reference_pixels() -> np.ndarray:
    """The real radiograph as 8-bit greyscale pixels (rows x columns)."""
    return np.asarray(reference_image(), dtype=np.uint8)


def radiograph(pixels: np.ndarray, *, photometric: str = "MONOCHROME2", modality: str = "DX",
               bits_stored: int | None = None, **attributes) -> Dataset:
    """A frontal chest radiograph dataset around `pixels` (uint8 or uint16), uncompressed."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DIGITAL_XRAY_SOP_CLASS if modality == "DX" else CR_SOP_CLASS
    ds.file_meta.MediaStorageSOPInstanceUID = SOP_UID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = SOP_UID
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = SERIES_UID
    ds.Modality = modality
    ds.PatientName = ""
    ds.PatientID = ""
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.PatientAge = "003Y"
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.AccessionNumber = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.Manufacturer = "pneumoscan tests"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImagerPixelSpacing = [0.15, 0.15]
    ds.PatientOrientation = ["L", "F"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.BitsAllocated = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def to_bytes(ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian, **encode_options) -> bytes:
    """The dataset written as a Part 10 file in `transfer_syntax` (compressing a copy of its pixels)."""
    ds = copy.deepcopy(ds)
    if transfer_syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    else:
        ds.compress(transfer_syntax, **encode_options)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True,
               implicit_vr=transfer_syntax == ImplicitVRLittleEndian, little_endian=True)
    return buffer.getvalue()


def sixteen_bit(pixels: np.ndarray, bits: int = 12) -> np.ndarray:
    """The 8-bit X-ray spread over a `bits`-bit detector range (exact: x * 2^(bits-8) + offset)."""
    return pixels.astype(np.uint16) * (1 << (bits - 8)) + 7


def monochrome1(pixels: np.ndarray, bits: int) -> np.ndarray:
    """The same image stored inverted, as a MONOCHROME1 detector writes it."""
    return ((1 << bits) - 1 - pixels.astype(np.int64)).astype(pixels.dtype)


def _xray_8bit(transfer_syntax: str, photometric: str = "MONOCHROME2", **encode_options) -> bytes:
    pixels = reference_pixels()
    if photometric == "MONOCHROME1":
        pixels = monochrome1(pixels, 8)
    return to_bytes(radiograph(pixels, photometric=photometric), transfer_syntax, **encode_options)


def _xray_16bit(transfer_syntax: str, photometric: str = "MONOCHROME2", **encode_options) -> bytes:
    pixels = sixteen_bit(reference_pixels())
    if photometric == "MONOCHROME1":
        pixels = monochrome1(pixels, 12)
    return to_bytes(radiograph(pixels, photometric=photometric, bits_stored=12), transfer_syntax,
                    **encode_options)


def _jpeg_baseline() -> bytes:
    """The real radiograph's own JPEG bytes in a DICOM wrapper (re-encoded baseline if progressive)."""
    data = reference_bytes()
    with Image.open(io.BytesIO(data)) as image:
        if image.info.get("progressive") or image.mode != "L":
            buffer = io.BytesIO()
            image.convert("L").save(buffer, "JPEG", quality=92)
            data = buffer.getvalue()
    with Image.open(io.BytesIO(data)) as image:
        pixels = np.asarray(image, dtype=np.uint8)
    ds = radiograph(pixels)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([data])
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def relabelled_test_file(name: str, **attributes) -> bytes:
    """A pydicom test file's pixels under a frontal chest radiograph's header."""
    ds = pydicom.dcmread(get_testdata_file(name))
    ds.Modality = "DX"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "AP"
    ds.PatientAge = "004Y"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY_UID, SERIES_UID
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# One case per transfer syntax the scorer must read, plus both photometric interpretations
# and both bit depths where the codec takes them.
CASES = (
    DicomCase("explicit_le_8bit", ExplicitVRLittleEndian, lambda: _xray_8bit(ExplicitVRLittleEndian)),
    DicomCase("explicit_le_16bit", ExplicitVRLittleEndian, lambda: _xray_16bit(ExplicitVRLittleEndian), bits=16),
    DicomCase("explicit_le_16bit_mono1", ExplicitVRLittleEndian,
              lambda: _xray_16bit(ExplicitVRLittleEndian, "MONOCHROME1"), "MONOCHROME1", 16),
    DicomCase("implicit_le_8bit_mono1", ImplicitVRLittleEndian,
              lambda: _xray_8bit(ImplicitVRLittleEndian, "MONOCHROME1"), "MONOCHROME1"),
    DicomCase("implicit_le_16bit", ImplicitVRLittleEndian, lambda: _xray_16bit(ImplicitVRLittleEndian), bits=16),
    DicomCase("deflated_16bit", DeflatedExplicitVRLittleEndian,
              lambda: _xray_16bit(DeflatedExplicitVRLittleEndian), bits=16),
    DicomCase("rle_8bit", RLELossless, lambda: _xray_8bit(RLELossless)),
    DicomCase("rle_16bit_mono1", RLELossless, lambda: _xray_16bit(RLELossless, "MONOCHROME1"), "MONOCHROME1", 16),
    DicomCase("jpeg_ls_lossless_16bit", JPEGLSLossless, lambda: _xray_16bit(JPEGLSLossless), bits=16),
    DicomCase("jpeg_ls_lossless_8bit_mono1", JPEGLSLossless,
              lambda: _xray_8bit(JPEGLSLossless, "MONOCHROME1"), "MONOCHROME1"),
    DicomCase("jpeg_ls_near_lossless_16bit", JPEGLSNearLossless,
              lambda: _xray_16bit(JPEGLSNearLossless, jls_error=2), bits=16, exact=False),
    DicomCase("jpeg2000_lossless_16bit", JPEG2000Lossless, lambda: _xray_16bit(JPEG2000Lossless), bits=16),
    DicomCase("jpeg2000_lossless_8bit_mono1", JPEG2000Lossless,
              lambda: _xray_8bit(JPEG2000Lossless, "MONOCHROME1"), "MONOCHROME1"),
    DicomCase("jpeg2000_lossy_16bit", JPEG2000, lambda: _xray_16bit(JPEG2000, j2k_cr=[20]), bits=16,
              exact=False),
    DicomCase("jpeg_baseline_8bit", JPEGBaseline8Bit, _jpeg_baseline, exact=False),
    DicomCase("jpeg_extended_12bit", JPEGExtended12Bit, lambda: relabelled_test_file("JPGExtended.dcm"),
              bits=12, exact=False, from_xray=False),
    DicomCase("jpeg_lossless_sv1_16bit", JPEGLosslessSV1, lambda: relabelled_test_file("JPEG-LL.dcm"),
              bits=16, exact=False, from_xray=False),
)
CASES_BY_NAME = {case.name: case for case in CASES}
TRANSFER_SYNTAXES = sorted({case.transfer_syntax for case in CASES})


def new_uid() -> str:
    return generate_uid()


def bare_dataset_bytes(ds: Dataset, *, implicit_vr: bool = True) -> bytes:
    """The dataset alone, without preamble, DICM magic or file meta (an ACR-NEMA-style export)."""
    ds = copy.deepcopy(ds)
    ds.file_meta = FileMetaDataset()
    ds.preamble = None
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, implicit_vr=implicit_vr, little_endian=True)
    return buffer.getvalue()


# -- hostile files: what a broken or malicious writer puts in a header --------------------------
def with_raw_values(ds: Dataset, **values: bytes) -> Dataset:
    """`ds` with each keyword's value replaced by raw bytes, written as a hostile writer puts them.

    pydicom would refuse (or convert) such values on writing; an OB element of the same tag is
    written as it stands in implicit VR, whose reader takes the VR from the dictionary again.
    Write the result with `to_bytes(ds, ImplicitVRLittleEndian)`.
    """
    ds = copy.deepcopy(ds)
    ds["PixelData"].VR = "OB" if ds.get("BitsAllocated", 8) == 8 else "OW"  # nothing left to infer it from
    for keyword, value in values.items():
        tag = pydicom.datadict.tag_for_keyword(keyword)
        if tag in ds:
            del ds[tag]
        ds.add_new(tag, "OB", value)
    return ds


def hostile(ds: Dataset, **values: bytes) -> bytes:
    """The Part 10 file of `with_raw_values(ds, **values)`."""
    return to_bytes(with_raw_values(ds, **values), ImplicitVRLittleEndian)


def deflated_bomb(ds: Dataset, pixel_data_bytes: int, *, trailing_element_bytes: int = 0) -> bytes:
    """`ds` as a deflated Part 10 file whose pixel data is `pixel_data_bytes` of zeros, whatever
    Rows x Columns says (or, with `trailing_element_bytes`, a private element that large in front
    of it): a few hundred kB that inflate to the size asked. Built as a stream, never held inflated."""
    ds = copy.deepcopy(ds)
    del ds.PixelData
    file = io.BytesIO()
    file.write(b"\x00" * 128 + b"DICM")
    meta = copy.deepcopy(ds.file_meta)
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    pydicom.filewriter.write_file_meta_info(file, meta, enforce_standard=True)
    header = pydicom.filebase.DicomBytesIO()
    header.is_little_endian, header.is_implicit_VR = True, False
    pydicom.filewriter.write_dataset(header, ds)
    deflater = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    file.write(deflater.compress(header.getvalue()))
    chunk = bytes(1 << 20)

    def zeros(element: bytes, length: int) -> None:
        file.write(deflater.compress(element + struct.pack("<I", length)))
        for start in range(0, length, len(chunk)):
            file.write(deflater.compress(chunk[:min(len(chunk), length - start)]))

    if trailing_element_bytes:
        # (0009,1010) OB: a private element of a creator the header never names.
        zeros(struct.pack("<HH", 0x0009, 0x1010) + b"OB\x00\x00", trailing_element_bytes)
    zeros(struct.pack("<HH", 0x7FE0, 0x0010) + b"OB\x00\x00", pixel_data_bytes)
    file.write(deflater.flush())
    return file.getvalue()
