"""The score of a DICOM radiograph as a DICOM Structured Report, filed in the source's study.

A TID 1500 Measurement Report (highdicom's `ComprehensiveSR`) whose evidence is the scored
instance: the model (name and version, as the algorithm and the observing device),
P(pneumonia), the label at the threshold, the threshold, the warnings, a positive's subtype
(P(viral | pneumonia), and the finding bacterial or viral pneumonia in SNOMED CT unless it is
uncertain), and the heat map's hot region as a polyline SCOORD on the source image. It carries the source's Study Instance UID,
so a PACS or viewer files it next to the image.

Patient data: the SR is built from the identifiers in `DicomFacts` only. The patient and study
modules are present (the IOD requires them) but empty: no name, ID, birth date, accession
number, physician or institution is copied from the source header. A PACS that needs the
demographics on the SR re-attaches them from the study it is filed under.

UIDs are derived from the source instance and the model version, so scoring the same image
with the same model again writes the same SR instance (a replacement, not a duplicate).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pneumoscan.formats import DicomFacts
from pneumoscan.scoring import WARNING_MEANINGS

if TYPE_CHECKING:
    from pneumoscan.model import ModelMetadata
    from pneumoscan.scoring import ImageScore

# highdicom logs what it copies and what it finds odd in its inputs: not for the function's logs.
logging.getLogger("highdicom").propagate = False

MANUFACTURER = "pneumoscan"
SERIES_DESCRIPTION = "pneumoscan pneumonia score (research use, not a diagnosis)"
# Concepts no public coding scheme has: a private scheme, as PS3.16 8.2 allows ("99" prefix).
SCHEME = "99PNEUMOSCAN"
PROBABILITY = Code("P-PNEUMONIA", SCHEME, "Probability of pneumonia")
THRESHOLD = Code("THRESHOLD", SCHEME, "Decision threshold for pneumonia")
WARNING = Code("WARNING", SCHEME, "Result warning")
HOT_REGION = Code("HOT-REGION", SCHEME, "Region of highest class activation for pneumonia")
SUBTYPE_PROBABILITY = Code("P-VIRAL", SCHEME, "Probability of viral pneumonia given pneumonia")
PNEUMONIA = Code("233604007", "SCT", "Pneumonia")
# The subtype head's labels as SNOMED CT disorders, stated as the classification's finding.
SUBTYPE_FINDINGS = {"bacterial": Code("53084003", "SCT", "Bacterial pneumonia"),
                    "viral": Code("75570004", "SCT", "Viral pneumonia")}
CHEST_RADIOGRAPH = Code("399208008", "SCT", "Plain chest X-ray")
NO_UNITS = codes.UCUM.NoUnits
CODE_MEANING_MAX = 64


class ReportNotPossible(ValueError):
    """The source header lacks what an SR in its study must reference (its UIDs)."""


@dataclass(frozen=True)
class Score:
    """What the SR states about one scored image."""

    model_name: str
    model_version: str
    probability: float
    label: str
    positive: bool
    threshold: float
    warnings: tuple[str, ...] = ()
    # x, y, width, height in source image pixels.
    hot_region: tuple[float, float, float, float] | None = None
    # A positive's subtype (a SUBTYPE_FINDINGS key; None when uncertain) and P(viral | pneumonia).
    subtype: str | None = None
    subtype_probability: float | None = None

    @classmethod
    def of(cls, score: ImageScore, model: ModelMetadata) -> Score:
        hot = score.heat_map.summary.hot_region if score.heat_map is not None else None
        return cls(model_name=model.name, model_version=score.model_version, probability=score.probability,
                   label=score.label, positive=score.positive, threshold=score.threshold,
                   warnings=tuple(score.warnings),
                   hot_region=(hot.x, hot.y, hot.width, hot.height) if hot is not None else None,
                   subtype=score.subtype, subtype_probability=score.subtype_probability)


def structured_report(facts: DicomFacts, score: Score) -> hd.sr.ComprehensiveSR:
    """The SR document for one scored DICOM instance."""
    source = _source_reference(facts)
    algorithm = hd.sr.AlgorithmIdentification(
        name=score.model_name, version=score.model_version,
        parameters=[f"threshold={score.threshold:g}"])
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=_uid("device", score.model_name, score.model_version),
        name=score.model_name, manufacturer_name=MANUFACTURER, model_name=score.model_version)
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))
    evaluations = [hd.sr.QualitativeEvaluation(
        name=PNEUMONIA, value=codes.SCT.Present if score.positive else codes.SCT.Absent)]
    if score.subtype is not None:
        evaluations.append(hd.sr.QualitativeEvaluation(name=codes.DCM.Finding,
                                                       value=SUBTYPE_FINDINGS[score.subtype]))
    evaluations += [hd.sr.QualitativeEvaluation(
        name=WARNING, value=Code(code.upper()[:16], SCHEME, _code_meaning(WARNING_MEANINGS.get(code, code))))
        for code in score.warnings]
    subtype_measurements = [] if score.subtype_probability is None else [hd.sr.Measurement(
        name=SUBTYPE_PROBABILITY, value=round(score.subtype_probability, 6), unit=NO_UNITS, algorithm_id=algorithm)]
    groups = [hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=_uid("classification", facts.sop_uid, score.model_version),
            identifier="pneumonia classification"),
        algorithm_id=algorithm,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
        measurements=[
            hd.sr.Measurement(name=PROBABILITY, value=round(score.probability, 6), unit=NO_UNITS,
                              algorithm_id=algorithm),
            hd.sr.Measurement(name=THRESHOLD, value=round(score.threshold, 6), unit=NO_UNITS),
            *subtype_measurements,
        ],
        qualitative_evaluations=evaluations)]
    if score.hot_region is not None:
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=_uid("hot region", facts.sop_uid, score.model_version), identifier="heat map hot region"),
            referenced_region=hd.sr.ImageRegion(
                graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                graphic_data=_rectangle(score.hot_region, facts),
                source_image=hd.sr.SourceImageForRegion.from_source_image(source)),
            finding_type=HOT_REGION, algorithm_id=algorithm))
    report = hd.sr.MeasurementReport(
        observation_context=context, procedure_reported=CHEST_RADIOGRAPH, imaging_measurements=groups)
    return hd.sr.ComprehensiveSR(
        evidence=[source], content=report,
        series_instance_uid=_uid("series", facts.series_uid, score.model_version), series_number=9901,
        sop_instance_uid=_uid("instance", facts.sop_uid, score.model_version), instance_number=1,
        manufacturer=MANUFACTURER, series_description=SERIES_DESCRIPTION, is_complete=True,
        is_final=False, is_verified=False, transfer_syntax_uid=ExplicitVRLittleEndian)


def report_for(score: ImageScore, model: ModelMetadata) -> bytes:
    """The SR of a scored DICOM source (`score.image.dicom`), as a Part 10 file."""
    if score.image.dicom is None:
        raise ReportNotPossible("the scored image is not DICOM: there is no study to file an SR in")
    return report_bytes(score.image.dicom, Score.of(score, model))


def report_bytes(facts: DicomFacts, score: Score) -> bytes:
    """The SR as a DICOM Part 10 file."""
    document = structured_report(facts, score)
    scheme = Dataset()
    scheme.CodingSchemeDesignator = SCHEME
    scheme.CodingSchemeName = "pneumoscan private concepts"
    scheme.CodingSchemeResponsibleOrganization = MANUFACTURER
    document.CodingSchemeIdentificationSequence = [scheme]
    buffer = io.BytesIO()
    document.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _source_reference(facts: DicomFacts) -> Dataset:
    """The scored instance as the SR's evidence: its UIDs and geometry, no patient data."""
    uids = (("StudyInstanceUID", facts.study_uid), ("SeriesInstanceUID", facts.series_uid),
            ("SOPInstanceUID", facts.sop_uid), ("SOPClassUID", facts.sop_class_uid))
    invalid = [name for name, _ in uids if name in facts.invalid]
    if invalid:
        # Kept as the item's `sr_error`, one short clause (results.MAX_NOTE_CHARS) even naming all four.
        raise ReportNotPossible(f"{', '.join(invalid)} is no valid UID")
    missing = [name for name, value in uids if not value]
    if missing:
        raise ReportNotPossible(f"header lacks {', '.join(missing)}")
    source = Dataset()
    source.StudyInstanceUID = facts.study_uid
    source.SeriesInstanceUID = facts.series_uid
    source.SOPInstanceUID = facts.sop_uid
    source.SOPClassUID = facts.sop_class_uid
    source.Modality = facts.modality or "OT"
    source.Rows, source.Columns = facts.rows, facts.columns
    source.SamplesPerPixel = 1
    source.PixelRepresentation = 0
    # Type 2 attributes of the patient and general study modules: present, empty.
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                    "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber"):
        setattr(source, keyword, "")
    return source


def _rectangle(region: tuple[float, float, float, float], facts: DicomFacts) -> np.ndarray:
    """A closed polyline around the region, in SCOORD pixel coordinates (column, row) within the image."""
    x, y, width, height = (float(value) for value in region)
    right = min(x + width, float(facts.columns or x + width))
    bottom = min(y + height, float(facts.rows or y + height))
    x, y = max(x, 0.0), max(y, 0.0)
    return np.array([[x, y], [right, y], [right, bottom], [x, bottom], [x, y]], dtype=np.float32)


def _code_meaning(text: str) -> str:
    """A Code Meaning is a LO value: at most 64 characters (a longer one would fail the whole SR)."""
    return text if len(text) <= CODE_MEANING_MAX else text[:CODE_MEANING_MAX - 3].rstrip(" :,") + "..."


def _uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=["pneumoscan-sr", *(str(part) for part in parts)])
