"""Listing labelled X-ray folders.

Two layouts are understood:
  Kaggle:  DIR/{train,val,test}/{NORMAL,PNEUMONIA}/*   (any subset of the splits)
  plain:   DIR/{NORMAL,PNEUMONIA}/*
Every regular file under a class folder is listed, whatever its extension, so a
file that turns out not to be an image is reported by the caller, not skipped here.
A pneumonia's subtype (bacterial or viral) is read from its file name
(`person1024_bacteria_2955.jpeg`, `person1_virus_6.jpeg`) or from a subfolder of the
class folder (`PNEUMONIA/viral/x.png`); without either it is unknown.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

DATA_ENV = "PNEUMOSCAN_DATA"

# Class folder names in class-index order (negative, positive). Training writes them into
# model.json as the model's labels; everything downstream reads them from there.
LABELS = ("NORMAL", "PNEUMONIA")
NEGATIVE_LABEL, POSITIVE_LABEL = LABELS
SPLITS = ("train", "val", "test")
TRAINING_SET = "chest_xray"  # the Kaggle layout: train/val/test
FULLRES_SET = "xray_fullres_sample"  # full-resolution originals, plain layout
# Pneumonia subtypes in the order of the subtype head's labels (negative, positive).
SUBTYPES = ("bacterial", "viral")
_SUBTYPE_WORDS = {"bacteria": "bacterial", "bacterial": "bacterial", "virus": "viral", "viral": "viral"}


def default_data_dir() -> Path:
    """`$PNEUMOSCAN_DATA`, else the `shared/data` folder beside the repository."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


@dataclass(frozen=True)
class LabelledFile:
    path: Path
    label: int  # index into LABELS: 0 negative, 1 positive
    split: str | None  # Kaggle split name, None in the plain layout
    subtype: str | None = None  # a positive's SUBTYPES name when its name or folder says it

    @property
    def label_name(self) -> str:
        return LABELS[self.label]


def subtype_of(relative: Path | str) -> str | None:
    """The subtype a path below its class folder names: a word of the file name
    (`person1_virus_6.jpeg`) or a folder (`bacterial/x.png`); None for none or both."""
    parts = Path(relative).parts
    words = {word for part in parts[:-1] for word in re.split(r"[^a-z]+", part.lower())}
    words |= set(re.split(r"[^a-z]+", Path(parts[-1]).stem.lower())) if parts else set()
    found = {_SUBTYPE_WORDS[word] for word in words if word in _SUBTYPE_WORDS}
    return found.pop() if len(found) == 1 else None


class LayoutError(ValueError):
    """The folder has neither the Kaggle nor the plain NORMAL/PNEUMONIA layout."""


def _labelled(path: Path, folder: Path, label: int, split: str | None) -> LabelledFile:
    subtype = subtype_of(path.relative_to(folder)) if label == LABELS.index(POSITIVE_LABEL) else None
    return LabelledFile(path, label, split, subtype)


def _class_folders(root: Path) -> list[tuple[Path, int]]:
    return [(root / name, index) for index, name in enumerate(LABELS) if (root / name).is_dir()]


def _files_in(folder: Path) -> list[Path]:
    # Hidden files (.DS_Store, editor droppings) are not images anybody meant to label.
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def list_labelled(root: Path | str, splits: tuple[str, ...] | None = None) -> list[LabelledFile]:
    """All labelled files under `root`, sorted by split, label and path.

    `splits` restricts a Kaggle-layout folder to those splits (e.g. ("train",));
    it is ignored for the plain layout.
    """
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root} is not a directory")
    plain = _class_folders(root)
    if plain:
        return [_labelled(path, folder, label, None) for folder, label in plain for path in _files_in(folder)]
    present = [split for split in SPLITS if _class_folders(root / split)]
    if not present:
        raise LayoutError(
            f"{root} has neither {'/'.join(LABELS)} folders nor {'/'.join(SPLITS)} splits containing them")
    wanted = [split for split in present if splits is None or split in splits]
    return [_labelled(path, folder, label, split)
            for split in wanted for folder, label in _class_folders(root / split)
            for path in _files_in(folder)]
