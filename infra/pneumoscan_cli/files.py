"""Finding the X-rays a command was pointed at: files as given, folders walked for images.

From folders: JPEG, PNG and DICOM files by suffix (any letter case), and files named without a
suffix or by a UID that are DICOM (`DICM` at byte 128): PACS exports often carry no suffix."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import typer

from pneumoscan import formats

DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
# Compared in lower case: .JPG, .Png, .DCM ... too.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"}) | DICOM_SUFFIXES
CONTENT_TYPES = {".png": "image/png", ".dcm": "application/dicom", ".dicom": "application/dicom"}


@dataclass(frozen=True)
class LocalFile:
    path: Path
    relative: str  # POSIX path below the folder it was found in, or the file's name

    @property
    def content_type(self) -> str:
        suffix = self.path.suffix.lower()
        if suffix in CONTENT_TYPES:
            return CONTENT_TYPES[suffix]
        if suffix in IMAGE_SUFFIXES:
            return "image/jpeg"
        return "application/dicom" if is_dicom_file(self.path) else "application/octet-stream"


def is_dicom_file(path: Path) -> bool:
    """A DICOM Part 10 file whatever its name: `DICM` at byte 128."""
    try:
        with path.open("rb") as file:
            return formats.has_dicom_magic(file.read(formats.SNIFF_BYTES))
    except OSError:
        return False


def is_image_name(path: Path) -> bool:
    """An image by its name, or a DICOM file named without a suffix or by its UID (`1.2.840...`)."""
    if path.name.startswith("."):
        return False
    suffix = path.suffix.lower()
    return suffix in IMAGE_SUFFIXES or ((suffix == "" or suffix[1:].isdigit()) and is_dicom_file(path))


def collect_files(paths: list[Path]) -> list[LocalFile]:
    """Files named explicitly are taken whatever their suffix (the pipeline records a
    non-image as FAILED); folders contribute their JPEG/PNG/DICOM files, recursively, sorted."""
    found: dict[str, LocalFile] = {}
    for path in paths:
        if path.is_dir():
            candidates = [LocalFile(file, file.relative_to(path).as_posix())
                          for file in sorted(path.rglob("*")) if file.is_file() and is_image_name(file)]
        elif path.is_file():
            candidates = [LocalFile(path, path.name)]
        else:
            raise typer.BadParameter(f"{path} does not exist")
        for candidate in candidates:
            clash = found.get(candidate.relative)
            if clash is not None and clash.path.resolve() != candidate.path.resolve():
                raise typer.BadParameter(
                    f"{clash.path} and {candidate.path} would both become {candidate.relative}")
            found[candidate.relative] = candidate
    return list(found.values())
