"""Which decoder a file needs, from its first bytes, without importing any decoder; and what a
DICOM header said, as a plain value.

DICOM support (pydicom, its codecs, highdicom) takes about half a second to import, so
the scoring path asks here first and loads it only when a DICOM file actually arrives:
JPEG/PNG-only traffic never pays for it. `DicomFacts` lives here, below every decoder, so that
a decoded image can carry it without its module knowing pydicom, and the item writer
(`pneumoscan.results`) maps it to attributes.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

# A DICOM Part 10 file: a 128-byte preamble, then the magic.
DICOM_MAGIC = b"DICM"
DICOM_MAGIC_OFFSET = 128
# Enough of a file to decide (CLI file detection reads only this much).
SNIFF_BYTES = DICOM_MAGIC_OFFSET + len(DICOM_MAGIC)

# A UID as DICOM writes it (PS3.5 9.1): numeric components without leading zeros,
# dot-separated, at most 64 characters.
UID_MAX_CHARS = 64
_UID = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))+")

# Older exports (ACR-NEMA style, or a dataset written without file meta) start directly
# with a data element. Their first group is the file meta group or the identifying group.
_BARE_FIRST_GROUPS = (0x0002, 0x0008)
_EXPLICIT_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL "
    b"UN UR US UT UV".split())


@dataclass(frozen=True)
class DicomFacts:
    """What `pneumoscan.dicom` keeps from a header: the identifiers that join a result back to
    its study, the patient's age in years, and the facts its decoder needs; nothing else."""

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
    # Keywords whose header value was no valid value of its kind (a UID with letters, a code
    # string of 100,000 characters): left out above, so nothing unchecked is ever kept.
    invalid: tuple[str, ...] = ()


def is_uid(text: str) -> bool:
    """A valid DICOM UID (the form the study, series and instance UIDs are kept in)."""
    return len(text) <= UID_MAX_CHARS and _UID.fullmatch(text) is not None


def has_dicom_magic(head: bytes) -> bool:
    """`DICM` at offset 128: a DICOM Part 10 file, whatever its name."""
    return head[DICOM_MAGIC_OFFSET:SNIFF_BYTES] == DICOM_MAGIC


def looks_like_bare_dataset(head: bytes) -> bool:
    """A DICOM dataset without preamble and file meta: a plausible first data element.

    The first element must be in group 0002 or 0008 (little or big endian), followed either
    by an explicit VR or by an implicit-VR length that fits in the file. That is what
    established readers accept when told to read such a file anyway, and it rejects text,
    PDF and the image formats we know.
    """
    if len(head) < 8:
        return False
    for order in ("<", ">"):
        group, element = struct.unpack_from(order + "HH", head)
        if group not in _BARE_FIRST_GROUPS or element > 0x0100:
            continue
        if head[4:6] in _EXPLICIT_VRS:
            return True
        (length,) = struct.unpack_from(order + "I", head, 4)
        if length <= 0x1000:
            return True
    return False


def is_dicom(head: bytes) -> bool:
    """Whether these (first) bytes are DICOM, with or without the Part 10 preamble."""
    return has_dicom_magic(head) or looks_like_bare_dataset(head)
