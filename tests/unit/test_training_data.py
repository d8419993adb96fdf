"""Patient parsing and the by-patient validation split (no leakage)."""

from pathlib import Path

import pytest

from pneumoscan_eval.datasets import TRAINING_SET, LabelledFile, LayoutError, default_data_dir, list_labelled
from training.data import collection, dataset_files, patient_id, split_by_patient, split_patient_block

DATA = default_data_dir() / TRAINING_SET


@pytest.mark.parametrize("name, patient", [
    ("person1024_bacteria_2955.jpeg", "person1024"),
    ("person1024_virus_1700.jpeg", "person1024"),
    ("person447_virus_921_1.jpeg", "person447"),
    ("IM-0115-0001.jpeg", "normal115"),
    ("NORMAL2-IM-0115-0001.jpeg", "normal115"),
    ("NORMAL2-IM-0395-0001-0002.jpeg", "normal395"),
    ("scan.png", "file:scan.png"),
])
def test_patient_id(name, patient):
    assert patient_id(name) == patient


def test_collection():
    assert collection("NORMAL2-IM-1427-0001.jpeg") == "NORMAL2"
    assert collection("IM-0115-0001.jpeg") == "IM"
    assert collection("person1_virus_6.jpeg") == "person"


def _synthetic_files():
    files = []
    for person in range(60):
        for image in range(person % 3 + 1):  # 1-3 images per patient
            files.append(LabelledFile(Path(f"person{person}_bacteria_{image}.jpeg"), 1, "train"))
    for study in range(40):
        files.append(LabelledFile(Path(f"IM-{study:04d}-0001.jpeg"), 0, "train"))
        if study % 2:
            files.append(LabelledFile(Path(f"NORMAL2-IM-{study:04d}-0001.jpeg"), 0, "train"))
    return files


def test_split_has_no_patient_on_both_sides_and_loses_nothing():
    files = _synthetic_files()
    train, val = split_by_patient(files, 0.2, seed=3)
    assert sorted(map(str, (f.path for f in train + val))) == sorted(map(str, (f.path for f in files)))
    assert not {patient_id(f.path) for f in train} & {patient_id(f.path) for f in val}
    assert {f.label for f in val} == {0, 1}
    assert 0.1 < len(val) / len(files) < 0.35


def test_split_is_seeded():
    files = _synthetic_files()
    assert split_by_patient(files, 0.2, seed=3) == split_by_patient(files, 0.2, seed=3)
    assert split_by_patient(files, 0.2, seed=3) != split_by_patient(files, 0.2, seed=4)


@pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data beside the repository")
def test_real_split_has_no_leakage():
    train, val = dataset_files(DATA, 0.15, seed=1337)
    train_patients = {patient_id(f.path) for f in train}
    val_patients = {patient_id(f.path) for f in val}
    assert not train_patients & val_patients
    assert len(train) + len(val) == len(list_labelled(DATA, splits=("train", "val")))
    # Both normal collections are represented in validation.
    assert {collection(f.path) for f in val if f.label == 0} == {"IM", "NORMAL2"}


def test_listing_layouts(tmp_path):
    for split in ("train", "test"):
        for label in ("NORMAL", "PNEUMONIA"):
            (tmp_path / "kaggle" / split / label).mkdir(parents=True)
            (tmp_path / "kaggle" / split / label / "a.jpeg").write_bytes(b"x")
    (tmp_path / "kaggle" / "train" / "NORMAL" / ".DS_Store").write_bytes(b"x")
    listed = list_labelled(tmp_path / "kaggle")
    assert [(f.split, f.label_name) for f in listed] == [
        ("train", "NORMAL"), ("train", "PNEUMONIA"), ("test", "NORMAL"), ("test", "PNEUMONIA")]
    assert len(list_labelled(tmp_path / "kaggle", splits=("test",))) == 2
    (tmp_path / "plain" / "PNEUMONIA").mkdir(parents=True)
    (tmp_path / "plain" / "PNEUMONIA" / "b.txt").write_bytes(b"not an image")
    assert [(f.split, f.label) for f in list_labelled(tmp_path / "plain")] == [(None, 1)]
    with pytest.raises(LayoutError):
        list_labelled(tmp_path / "kaggle" / "train" / "NORMAL")


def _files(names: list[str], label: int) -> list[LabelledFile]:
    return [LabelledFile(Path(name), label, "train") for name in names]


def test_patient_block_is_the_lowest_numbers_of_each_collection():
    normals = _files([f"IM-{n:04d}-0001.jpeg" for n in range(115, 135)]
                     + [f"NORMAL2-IM-{n:04d}-0001.jpeg" for n in range(383, 403)], 0)
    pneumonias = _files([f"person{n}_bacteria_{n + 7}.jpeg" for n in range(1, 21)]
                        + ["person1_virus_6.jpeg"], 1)
    kept, block = split_patient_block(normals + pneumonias, 0.2)
    assert sorted(f.path.name for f in block) == sorted(
        [f"IM-{n:04d}-0001.jpeg" for n in range(115, 119)] + [f"NORMAL2-IM-{n:04d}-0001.jpeg" for n in range(383, 387)]
        + [f"person{n}_bacteria_{n + 7}.jpeg" for n in range(1, 5)] + ["person1_virus_6.jpeg"])
    # Every image of a patient goes with the patient, and nothing is lost.
    assert {patient_id(f.path) for f in kept}.isdisjoint({patient_id(f.path) for f in block})
    assert len(kept) + len(block) == len(normals + pneumonias)


def test_no_block_keeps_everything():
    files = _files(["IM-0115-0001.jpeg", "IM-0117-0001.jpeg"], 0)
    assert split_patient_block(files, 0.0) == (files, [])


def test_real_patient_block_shares_no_patient_with_the_rest():
    data = default_data_dir() / TRAINING_SET
    if not data.is_dir():
        pytest.skip(f"no training data at {data}")
    train, val = dataset_files(data, 0.15, 1337)
    kept, block = split_patient_block(train + val, 0.15)
    assert block and {patient_id(f.path) for f in kept}.isdisjoint({patient_id(f.path) for f in block})
    assert {collection(f.path) for f in block} == {"IM", "NORMAL2", "person"}
