"""The DynamoDB results table: its key design and the one writer of its items.

This module is the contract between the Lambda (writer) and the CLI (reader):
key, index and attribute names live here and nowhere else.

Reads served without a Scan:
  1. one object            -> GetItem on `object_key`
  2. one batch, key order  -> Query `batch-index` (batch = :b), sorted by `object_key`
  3. positives / failures in a time window -> Query `outcome-index`, one per UTC day,
     `outcome_day = "PNEUMONIA#2026-11-25"` and `scored_at BETWEEN :from AND :to`
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the CLI reads the table without loading LiteRT (or pydicom)
    from .dicom import DicomFacts
    from .model import ModelMetadata
    from .scoring import ImageScore

TABLE_ENV = "RESULTS_TABLE"
INCOMING_PREFIX_ENV = "INCOMING_PREFIX"
DEFAULT_INCOMING_PREFIX = "incoming/"
# Everything the pipeline itself writes to the bucket goes here, outside the
# notification prefix, so it can never trigger another scoring.
RESULTS_PREFIX = "results/"
OVERLAY_FOLDER = "overlays/"
STRUCTURED_REPORT_FOLDER = "sr/"
# S3's limit on a key, in bytes of UTF-8: keys the pipeline derives must stay within it.
S3_MAX_KEY_BYTES = 1024

KEY = "object_key"
BATCH_INDEX = "batch-index"
BATCH = "batch"
OUTCOME_INDEX = "outcome-index"
OUTCOME_DAY = "outcome_day"
SCORED_AT = "scored_at"

# Item attributes.
STATUS = "status"
PROBABILITY = "probability"
LABEL = "label"
THRESHOLD = "threshold"
REASON = "reason"
ERROR = "error"
WARNINGS = "warnings"
BUCKET = "bucket"
VERSION_ID = "version_id"
ETAG = "etag"
SIZE_BYTES = "size_bytes"
UPLOADED_AT = "uploaded_at"
MODEL_VERSION = "model_version"
MODEL_SHA256 = "model_sha256"
TIMINGS_MS = "timings_ms"
IMAGE_WIDTH, IMAGE_HEIGHT, IMAGE_FORMAT, IMAGE_MODE = "image_width", "image_height", "image_format", "image_mode"
# A DICOM source's identifiers (pneumoscan.dicom.DicomFacts.item_fields), the only header values kept.
STUDY_UID, SERIES_UID, SOP_UID = "study_uid", "series_uid", "sop_uid"
MODALITY, VIEW_POSITION, PATIENT_AGE_YEARS = "modality", "view_position", "patient_age_years"
SR_KEY = "sr_key"  # the DICOM Structured Report of a scored DICOM source
SR_ERROR = "sr_error"  # why a scored DICOM source has no SR (the score stands)
IGNORED_METADATA = "ignored_metadata"  # EXIF/XMP that could not be used (the image is scored as stored)
OVERLAY_KEY = "overlay_key"
OVERLAY_ERROR = "overlay_error"
HOT_REGION = "hot_region"
CAM = "cam"  # {border_share, outside_chest_share, outside_chest}
PREVIOUS = "previous"
WRITE_ID = "write_id"

STATUS_SCORED = "SCORED"
STATUS_FAILED = "FAILED"
OUTCOME_FAILED = "FAILED"  # outcome of a FAILED item; SCORED items use their label
# Reason of a FAILED item whose object was gone when its event was handled.
OBJECT_MISSING = "object_missing"
# Objects directly under the incoming prefix (no batch folder) form this batch.
ROOT_BATCH = "_root"
# Messages that are not S3 events are recorded under this batch (see events.py).
UNKNOWN_EVENT_BATCH = "_unknown_event"

# Fields of a scored item that are carried into `previous` when a newer model rescores it.
PREVIOUS_FIELDS = (STATUS, PROBABILITY, LABEL, THRESHOLD, MODEL_VERSION, MODEL_SHA256, SCORED_AT, REASON)


def utc_timestamp(moment: datetime | None = None) -> str:
    """ISO-8601 UTC with milliseconds and a `Z`: sorts lexically in time order."""
    moment = (moment or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def outcome_day(outcome: str, scored_at: str) -> str:
    """Partition key of `outcome-index`: `PNEUMONIA#2026-11-25` (UTC day of `scored_at`)."""
    return f"{outcome}#{scored_at[:10]}"


def batch_of(object_key: str, incoming_prefix: str = DEFAULT_INCOMING_PREFIX) -> str:
    """The first folder under the incoming prefix, or `_root` for objects directly under it."""
    relative = object_key[len(incoming_prefix):] if object_key.startswith(incoming_prefix) else object_key
    folder, separator, _ = relative.partition("/")
    return folder if separator and folder else ROOT_BATCH


def overlay_key(object_key: str, results_prefix: str = RESULTS_PREFIX) -> str:
    """`results/overlays/<object key>.png`: outside the incoming prefix, so never rescored."""
    return _derived_key(object_key, results_prefix + OVERLAY_FOLDER, ".png")


def structured_report_key(object_key: str, results_prefix: str = RESULTS_PREFIX) -> str:
    """`results/sr/<object key>.dcm`: outside the incoming prefix, so never rescored."""
    return _derived_key(object_key, results_prefix + STRUCTURED_REPORT_FOLDER, ".dcm")


def _derived_key(object_key: str, folder: str, suffix: str) -> str:
    """`<folder><object key><suffix>`, or `<folder><sha256 of the key><suffix>` where that
    would pass S3's key limit (the item names the key either way)."""
    readable = f"{folder}{object_key}{suffix}"
    if len(readable.encode()) <= S3_MAX_KEY_BYTES:
        return readable
    return f"{folder}{hashlib.sha256(object_key.encode()).hexdigest()}{suffix}"


def key_digest(object_key: str) -> str:
    """What logs show instead of a key, which may carry a patient identifier."""
    return hashlib.sha256(object_key.encode()).hexdigest()[:16]


def to_dynamodb(value: Any) -> Any:
    """floats -> Decimal (the boto3 resource refuses floats), recursively; drops None values."""
    if isinstance(value, float):
        return Decimal(repr(round(value, 6)))
    if isinstance(value, dict):
        return {k: to_dynamodb(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [to_dynamodb(v) for v in value]
    return value


def version_key(version: str) -> tuple:
    """Orders "2026.11.25-2" < "2026.11.25-10" and "1.9.0" < "1.10.0": numbers compare as numbers."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                 for part in re.findall(r"\d+|[^\d.\-+_]+", version))


@dataclass(frozen=True)
class SourceObject:
    """What S3 said about the object a result is for (from its event, then its head)."""

    bucket: str | None = None
    version_id: str | None = None
    etag: str | None = None
    uploaded_at: str | None = None
    size_bytes: int | None = None


@dataclass(frozen=True)
class Failure:
    """Why an object could not be scored: a short machine-readable reason and a detail."""

    reason: str
    error: str
    # A refused DICOM object's identifiers (pneumoscan.dicom.DicomFacts): it still belongs to its study.
    dicom: DicomFacts | None = None


def object_item(object_key: str, *, batch: str, source: SourceObject, model: ModelMetadata,
                outcome: ImageScore | Failure, timings_ms: Mapping[str, float],
                overlay_key: str | None = None, sr_key: str | None = None, sr_error: str | None = None,
                scored_at: str | None = None) -> dict[str, Any]:
    """The one item of an object: where it came from, which model, and its score or failure."""
    item: dict[str, Any] = {
        KEY: object_key, BATCH: batch, BUCKET: source.bucket, VERSION_ID: source.version_id,
        ETAG: source.etag, UPLOADED_AT: source.uploaded_at, SIZE_BYTES: source.size_bytes,
        MODEL_VERSION: model.version, MODEL_SHA256: model.sha256, THRESHOLD: model.threshold,
    }
    if isinstance(outcome, Failure):
        item.update({STATUS: STATUS_FAILED, REASON: outcome.reason, ERROR: outcome.error, WARNINGS: []})
        if outcome.dicom is not None:
            item.update(outcome.dicom.item_fields())
        outcome_name = OUTCOME_FAILED
    else:
        item.update(_score_fields(outcome, overlay_key), **{SR_KEY: sr_key, SR_ERROR: sr_error})
        outcome_name = outcome.label
    return _stamped(item, outcome_name, timings_ms, scored_at)


def unknown_event_item(message_id: str, error: str, model: ModelMetadata,
                       scored_at: str | None = None) -> dict[str, Any]:
    """A message that is no S3 notification, recorded once under its message id (never retried)."""
    item = {KEY: f"sqs-message/{message_id}", BATCH: UNKNOWN_EVENT_BATCH, STATUS: STATUS_FAILED,
            REASON: "unknown_event", ERROR: error, ETAG: message_id,
            MODEL_VERSION: model.version, MODEL_SHA256: model.sha256}
    return _stamped(item, OUTCOME_FAILED, {}, scored_at)


def _score_fields(score: ImageScore, overlay_key: str | None) -> dict[str, Any]:
    image = score.image
    fields: dict[str, Any] = {
        STATUS: STATUS_SCORED, PROBABILITY: score.probability, LABEL: score.label,
        WARNINGS: list(score.warnings), IMAGE_WIDTH: image.width, IMAGE_HEIGHT: image.height,
        IMAGE_FORMAT: image.format, IMAGE_MODE: image.mode, IGNORED_METADATA: image.ignored_metadata,
    }
    if score.heat_map_error is not None:
        fields[OVERLAY_ERROR] = score.heat_map_error
    if score.heat_map is not None:
        summary = score.heat_map.summary
        fields[CAM] = {"border_share": round(summary.border_share, 4),
                       "outside_chest_share": round(summary.outside_chest_share, 4),
                       "outside_chest": summary.outside_chest}
        if summary.hot_region is not None:
            fields[HOT_REGION] = summary.hot_region.as_dict()
    if overlay_key:
        fields[OVERLAY_KEY] = overlay_key
    if image.dicom is not None:
        fields.update(image.dicom.item_fields())
    return fields


def _stamped(item: dict[str, Any], outcome: str, timings_ms: Mapping[str, float],
             scored_at: str | None) -> dict[str, Any]:
    scored_at = scored_at or utc_timestamp()
    item.update({TIMINGS_MS: dict(timings_ms), SCORED_AT: scored_at, OUTCOME_DAY: outcome_day(outcome, scored_at)})
    return {name: value for name, value in item.items() if value is not None}


def previous_score(item: dict) -> dict:
    """The part of an existing item that a rescore keeps under `previous`."""
    return {field: item[field] for field in PREVIOUS_FIELDS if field in item}


class ConcurrentWrite(RuntimeError):
    """Another worker changed the item between our read and our write; retry the record."""


class ResultStore:
    """Writes one item per object key, at most once per (object version, model).

    S3 and SQS deliver at least once, so every write is conditional on the item we
    read before scoring (optimistic locking on `write_id`): a duplicate delivery finds
    its own result already there and is skipped, a newer model replaces the item on
    purpose and keeps the old score under `previous`, and two workers racing on the
    same object cannot both win. This needs no second table, unlike powertools
    idempotency, and the decision is made from the result itself.
    """

    def __init__(self, table):
        self.table = table

    def current(self, object_key: str) -> dict | None:
        return self.table.get_item(Key={KEY: object_key}, ConsistentRead=True).get("Item")

    @staticmethod
    def already_done(item: dict | None, *, version_id: str | None, etag: str | None,
                     model_sha256: str, model_version: str) -> bool:
        """True when `item` is this object version's result from this model or a newer one.

        A newer model's result must survive a late redelivery to a container that still
        runs the old model (a deploy draining), so it counts as done too.
        """
        if not item or item.get("reason") == OBJECT_MISSING:
            # "Deleted before it could be scored" says nothing about an upload that can be read.
            return False
        same_model = item.get("model_sha256") == model_sha256
        if not same_model and version_key(str(item.get("model_version", ""))) <= version_key(model_version):
            return False
        if version_id and item.get("version_id"):
            return item["version_id"] == version_id
        return bool(etag) and item.get("etag") == etag

    def save(self, item: dict, seen: dict | None) -> str:
        """Write `item` unless `seen` (what `current` returned) changed meanwhile.

        Returns "written", "rescored" (a different model's result was replaced) or
        "duplicate" (an identical result landed first). Raises ConcurrentWrite when a
        different result landed first.
        """
        item = dict(item, write_id=uuid.uuid4().hex)
        rescored = bool(seen) and seen.get("model_sha256") != item.get("model_sha256")
        if rescored:
            item["previous"] = previous_score(seen)
        if seen is None:
            condition = {"ConditionExpression": "attribute_not_exists(#key)",
                         "ExpressionAttributeNames": {"#key": KEY}}
        elif "write_id" in seen:
            condition = {"ConditionExpression": "#write_id = :seen",
                         "ExpressionAttributeNames": {"#write_id": "write_id"},
                         "ExpressionAttributeValues": {":seen": seen["write_id"]}}
        else:  # an item written by something else than this store
            condition = {"ConditionExpression": "attribute_not_exists(#write_id)",
                         "ExpressionAttributeNames": {"#write_id": "write_id"}}
        try:
            self.table.put_item(Item=to_dynamodb(item), **condition)
        except self.table.meta.client.exceptions.ConditionalCheckFailedException:
            landed = self.current(item[KEY])
            if self.already_done(landed, version_id=item.get("version_id"), etag=item.get("etag"),
                                 model_sha256=item.get("model_sha256", ""),
                                 model_version=item.get("model_version", "")):
                return "duplicate"
            raise ConcurrentWrite(f"item {key_digest(item[KEY])} changed while it was being scored")
        return "rescored" if rescored else "written"
