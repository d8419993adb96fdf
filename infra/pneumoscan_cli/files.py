"""Finding the X-rays a command was pointed at: files as given, folders walked for images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import typer

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})  # compared in lower case: .JPG, .Png ... too


@dataclass(frozen=True)
class LocalFile:
    path: Path
    relative: str  # POSIX path below the folder it was found in, or the file's name

    @property
    def content_type(self) -> str:
        return "image/png" if self.path.suffix.lower() == ".png" else "image/jpeg"


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def collect_files(paths: list[Path]) -> list[LocalFile]:
    """Files named explicitly are taken whatever their suffix (the pipeline records a
    non-image as FAILED); folders contribute their JPEG/PNG files, recursively, sorted."""
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
