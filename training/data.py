"""Loading the training images once into uint8 arrays and splitting them by patient.

Pixels come from `pneumoscan.scoring.decode`, the preprocessing entry point the Lambda uses,
so training sees exactly what production sees.
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pneumoscan_eval.datasets import LABELS, SUBTYPES, LabelledFile, list_labelled
from pneumoscan.images import ImageRejected
from pneumoscan.lungs import LungSegmenter, crop_input
from pneumoscan.model import InputSpec
from pneumoscan.scoring import decode

# person1024_bacteria_2955.jpeg, person447_virus_921_1.jpeg -> pneumonia patient 1024
_PERSON = re.compile(r"^person(\d+)_", re.IGNORECASE)
# IM-0115-0001.jpeg, NORMAL2-IM-1427-0001.jpeg, NORMAL2-IM-0395-0001-0002.jpeg -> normal study 0115 / 1427.
# The two normal collections reuse numbers; they are merged on the number, which can
# only put more images in one group, never split one patient across train and val.
_NORMAL_STUDY = re.compile(r"^(?:NORMAL\d*-)?IM-(\d+)-", re.IGNORECASE)


def patient_id(path: Path | str) -> str:
    """A group key such that one patient's images always share it."""
    name = Path(path).name
    if match := _PERSON.match(name):
        return f"person{int(match.group(1))}"
    if match := _NORMAL_STUDY.match(name):
        return f"normal{int(match.group(1))}"
    # Unknown naming: the file is its own group (cannot leak into a second group).
    return f"file:{name}"


def patient_number(path: Path | str) -> int | None:
    """The number in a file name's patient id (person1024 -> 1024, normal115 -> 115)."""
    patient = patient_id(path)
    match = re.search(r"(\d+)$", patient)
    return int(match.group(1)) if match and not patient.startswith("file:") else None


def split_patient_block(files: list[LabelledFile], fraction: float
                        ) -> tuple[list[LabelledFile], list[LabelledFile]]:
    """(kept, block): the lowest-numbered `fraction` of patients of each class and collection.

    The official test split holds patients numbered below every training patient (an earlier
    block of each collection), so a block of the lowest numbers left here is the closest
    stand-in for it: a random patient split keeps every block on both sides and cannot see
    what changes from one block of patients to the next.
    """
    strata: dict[tuple[int, str], set[int]] = defaultdict(set)
    for item in files:
        number = patient_number(item.path)
        if number is not None:
            strata[(item.label, collection(item.path))].add(number)
    cut = {key: sorted(numbers)[max(0, round(len(numbers) * fraction) - 1)] if fraction > 0 else -1
           for key, numbers in strata.items()}
    # A patient id in the block of any stratum (the two normal collections share numbers)
    # goes wholly to the block, so no patient is on both sides.
    in_block = {patient_id(item.path) for item in files
                if (number := patient_number(item.path)) is not None and fraction > 0
                and number <= cut[(item.label, collection(item.path))]}
    kept = [item for item in files if patient_id(item.path) not in in_block]
    block = [item for item in files if patient_id(item.path) in in_block]
    return kept, block


def collection(path: Path | str) -> str:
    """Which acquisition batch a file name comes from (the NORMAL2 normals are a later one)."""
    name = Path(path).name.upper()
    if name.startswith("PERSON"):
        return "person"
    return name.split("-IM-")[0] if "-IM-" in name else "IM"


def split_by_patient(files: list[LabelledFile], val_fraction: float, seed: int
                     ) -> tuple[list[LabelledFile], list[LabelledFile]]:
    """Carve a validation set out of `files` so that no patient is on both sides.

    Patients are drawn per class (a patient's images share one label here) so both
    sides keep the class ratio; within NORMAL, per collection too, so the later
    collection is represented in validation.
    """
    groups: dict[tuple[int, str, str], list[LabelledFile]] = defaultdict(list)
    for item in files:
        groups[(item.label, collection(item.path), patient_id(item.path))].append(item)
    strata: dict[tuple[int, str], list[str]] = defaultdict(list)
    for label, source, patient in sorted(groups):
        strata[(label, source)].append(patient)
    rng = np.random.default_rng(seed)
    val_keys = set()
    for (label, source), patients in sorted(strata.items()):
        chosen = rng.permutation(len(patients))[: round(len(patients) * val_fraction)]
        val_keys.update((label, source, patients[i]) for i in chosen)
    # A patient id seen in two strata (e.g. both normal collections) goes wholly to val
    # if any of its strata picked it.
    val_patients = {patient for _, _, patient in val_keys}
    train, val = [], []
    for key, items in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        (val if key[2] in val_patients else train).extend(items)
    return train, val


@dataclass
class ImageSet:
    """Decoded images (N, H, W, C) uint8 with labels and where each came from."""

    images: np.ndarray
    labels: np.ndarray
    paths: list[str]
    # Lung crops as (left, top, right, bottom) fractions of each image, when training reads
    # jittered crops of `images` rather than the images themselves.
    boxes: np.ndarray | None = None
    # Each image's index into SUBTYPES (0 bacterial, 1 viral), -1 where unknown (every normal).
    subtypes: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self) -> dict[str, int]:
        return {name: int(np.sum(self.labels == index)) for index, name in enumerate(LABELS)}


def load_images(files: list[LabelledFile], height: int, width: int, channels: int,
                description: str = "decoding") -> ImageSet:
    """Decode every file through the production path; a bad file stops training loudly."""
    images = np.empty((len(files), height, width, channels), dtype=np.uint8)
    spec = InputSpec(height, width, channels)
    for index, item in enumerate(tqdm(files, desc=description, unit="img", leave=False)):
        try:
            images[index], _ = decode(item.path.read_bytes(), spec)
        except ImageRejected as exc:
            raise ImageRejected(exc.reason, f"{item.path}: {exc.detail}") from exc
    return ImageSet(images, np.array([f.label for f in files], dtype=np.int64),
                    [str(f.path) for f in files], subtypes=subtype_indices(files))


def subtype_indices(files: list[LabelledFile]) -> np.ndarray:
    """Each file's index into SUBTYPES, -1 where its name or folder names none."""
    return np.array([SUBTYPES.index(f.subtype) if f.subtype else -1 for f in files], dtype=np.int64)


def dataset_files(data_dir: Path | str, val_fraction: float, seed: int
                  ) -> tuple[list[LabelledFile], list[LabelledFile]]:
    """(train, val) files from a Kaggle-layout folder: the official val joins the patient split."""
    train_files = list_labelled(data_dir, splits=("train",))
    official_val = list_labelled(data_dir, splits=("val",))
    if not train_files:
        raise ValueError(f"{data_dir} has no train split")
    train, val = split_by_patient(train_files, val_fraction, seed)
    train_patients = {patient_id(f.path) for f in train}
    # The official val shares naming with train: a patient already in train stays in train.
    for item in official_val:
        (train if patient_id(item.path) in train_patients else val).append(item)
    return train, val


@dataclass
class LungCrops:
    """Each image's lung field and the classifier input cut from it."""

    crops: ImageSet  # what the classifier reads (boxes: the crop of each original image)
    found: np.ndarray  # (N,) bool: the segmenter's mask passed its sanity checks
    areas: np.ndarray  # (N,) mask share of the image

    def summary(self) -> dict:
        boxes = self.crops.boxes
        return {"n": int(len(self.found)), "found_share": float(self.found.mean()) if len(self.found) else None,
                "mask_area_median": float(np.median(self.areas)) if len(self.areas) else None,
                "crop_median": [round(float(v), 3) for v in np.median(boxes, axis=0)] if len(boxes) else None}


def lung_crops(images: ImageSet, segmenter: LungSegmenter, description: str = "lung fields") -> LungCrops:
    """Every image through the scorer's own segmenter and crop (`pneumoscan.lungs`)."""
    crops = np.empty_like(images.images)
    boxes = np.empty((len(images), 4), np.float32)
    found = np.empty(len(images), bool)
    areas = np.empty(len(images), np.float32)
    for index, pixels in enumerate(tqdm(images.images, desc=description, unit="img", leave=False)):
        field = segmenter.find(pixels)
        crops[index] = crop_input(pixels, field.crop)
        boxes[index] = (field.crop.left, field.crop.top, field.crop.right, field.crop.bottom)
        found[index], areas[index] = field.found, field.area
    return LungCrops(dataclasses.replace(images, images=crops, boxes=boxes), found, areas)
