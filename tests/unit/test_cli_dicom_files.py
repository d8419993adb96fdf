"""The CLI finds DICOM files in folders: by suffix in any case, and suffix-less PACS exports by content."""

from __future__ import annotations

from dicom_cases import CASES_BY_NAME
from image_cases import reference_bytes
from pneumoscan_cli.files import collect_files


def test_folders_contribute_dicom_by_suffix_and_suffixless_dicom_by_content(tmp_path):
    dicom_bytes = CASES_BY_NAME["explicit_le_8bit"].make()
    (tmp_path / "study" / "series").mkdir(parents=True)
    (tmp_path / "a.dcm").write_bytes(dicom_bytes)
    (tmp_path / "b.DCM").write_bytes(dicom_bytes)
    (tmp_path / "c.Dicom").write_bytes(dicom_bytes)
    (tmp_path / "study" / "series" / "1.2.840.113619.2.1").write_bytes(dicom_bytes)  # a dotted UID name
    (tmp_path / "study" / "series" / "IM0001").write_bytes(dicom_bytes)
    (tmp_path / "study" / "DICOMDIR-notes").write_bytes(b"plain text, no image")
    (tmp_path / "x.jpeg").write_bytes(reference_bytes())
    (tmp_path / ".hidden.dcm").write_bytes(dicom_bytes)
    found = {file.relative: file.content_type for file in collect_files([tmp_path])}
    assert found == {"a.dcm": "application/dicom", "b.DCM": "application/dicom",
                     "c.Dicom": "application/dicom", "study/series/IM0001": "application/dicom",
                     "study/series/1.2.840.113619.2.1": "application/dicom",
                     "x.jpeg": "image/jpeg"}


def test_a_suffixless_dicom_named_explicitly_is_uploaded_as_dicom(tmp_path):
    path = tmp_path / "IM0001"
    path.write_bytes(CASES_BY_NAME["rle_8bit"].make())
    (file,) = collect_files([path])
    assert file.content_type == "application/dicom"
