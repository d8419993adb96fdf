"""The DynamoDB results table: its key design, the one writer of its items, and its reads.

This module is the contract between the Lambda (writer) and the CLI (reader):
key, index and attribute names live here and nowhere else.

Reads served without a Scan:
  1. one object            -> GetItem on (`batch`, `object_key`); `batch` comes from the key
                              (`batch_of`), so the object key alone still names one item
  2. one batch, key order  -> Query on the table (batch = :b), sorted by `object_key`
  3. positives, failures and warned items in a time window -> Query `attention-index`, one
     per UTC day: `attention_day = "2026-11-25"` and `scored_at BETWEEN :from AND :to`.
     The index is sparse: only those items carry `attention_day`, so a NORMAL score without
     warnings writes the table alone (one write unit) and the index holds only what a
     person has to look at, with the few fields a listing shows (INCLUDE projection).
  4. one DICOM study       -> Query `study-index` (study_uid = :s); sparse, DICOM items only.

A large batch is one partition key. DynamoDB serves up to 1000 write units a second per
partition and an item under 1 KB is one unit (an item holds its key once, and its other
attributes are bounded: docs/results.md, "Item size"). The event source's MaximumConcurrency
bounds the writers: 10 invocations by default, each writing one item per image at ~50-70 ms of
handler time per image, so one batch is written at ~150-200 items a second, a fifth of the
limit; about 50 concurrent invocations would reach it. Past that, adaptive capacity splits a
partition that stays hot on its sort key (`object_key`, distinct per item), and throttled
writes are retried by botocore, then by SQS. `attention-index` puts one day's attention
items under one key with a sort key that only grows (`scored_at`), which a split cannot
spread: ~1000 attention writes a second across all batches is its ceiling.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from . import attribute_values
from .settings import DEFAULT_INCOMING_PREFIX, RESULTS_PREFIX

if TYPE_CHECKING:  # the CLI reads the table without loading LiteRT (or pydicom)
    from .formats import DicomFacts
    from .images import DecodedImage
    from .model import ModelMetadata
    from .scoring import ImageScore

OVERLAY_FOLDER = "overlays/"
STRUCTURED_REPORT_FOLDER = "sr/"
# S3's limit on a key, in bytes of UTF-8: keys the pipeline derives must stay within it.
S3_MAX_KEY_BYTES = 1024

BATCH = "batch"  # partition key
KEY = "object_key"  # sort key
SCORED_AT = "scored_at"
ATTENTION_INDEX = "attention-index"
ATTENTION_DAY = "attention_day"
STUDY_INDEX = "study-index"
WARNINGS = "warnings"
# What a listing shows: projected into the sparse indexes next to their keys and the table's.
LISTING_FIELDS = ("status", "label", "probability", "subtype", "subtype_probability", "warnings", "reason",
                  "model_version")
STUDY_LISTING_FIELDS = (*LISTING_FIELDS, "series_uid", "sop_uid", SCORED_AT)

# Item attributes.
STATUS = "status"
PROBABILITY = "probability"
LABEL = "label"
THRESHOLD = "threshold"
# PNEUMONIA items of a model with a subtype head: P(viral | pneumonia), and `bacterial` or `viral`
# unless that probability is inside the head's uncertain band (then `warnings` says subtype_uncertain).
SUBTYPE = "subtype"
SUBTYPE_PROBABILITY = "subtype_probability"
REASON = "reason"
ERROR = "error"
VERSION_ID = "version_id"
ETAG = "etag"
SIZE_BYTES = "size_bytes"
UPLOADED_AT = "uploaded_at"
MODEL_VERSION = "model_version"
MODEL_SHA256 = "model_sha256"
TIMINGS_MS = "timings_ms"
IMAGE_WIDTH, IMAGE_HEIGHT, IMAGE_FORMAT, IMAGE_MODE = "image_width", "image_height", "image_format", "image_mode"
# A DICOM source's identifiers (`dicom_fields`), the only header values kept.
STUDY_UID, SERIES_UID, SOP_UID = "study_uid", "series_uid", "sop_uid"
# Those UIDs are kept only when valid (`pneumoscan.formats.is_uid`); `study-index` is keyed by
# valid ones alone.
MODALITY, VIEW_POSITION, PATIENT_AGE_YEARS = "modality", "view_position", "patient_age_years"
# Where a scored source's derived objects are: the folder under the results prefix
# (`results/sr/`), never the whole key, which would hold the object key a second time. The
# object's key follows from the item's own (`derived_key`); items written before kept the
# whole key there, which `derived_key` reads as it is.
SR_KEY = "sr_key"  # the DICOM Structured Report of a scored DICOM source
SR_ERROR = "sr_error"  # why a scored DICOM source has no SR (the score stands)
IGNORED_METADATA = "ignored_metadata"  # EXIF/XMP that could not be used (the image is scored as stored)
OVERLAY_KEY = "overlay_key"  # the PNG heat-map overlay, when `OverlayImages` asks for one
_DERIVED_SUFFIXES = {SR_KEY: ".dcm", OVERLAY_KEY: ".png"}
OVERLAY_ERROR = "overlay_error"
HOT_REGION = "hot_region"
CAM = "cam"  # {border_share, outside_chest_share, heat_peak}
HEAT_MAP = "heat_map"  # the heat on the model's feature grid, one byte a cell (pneumoscan.cam.encode_heat)
PREVIOUS = "previous"
WRITE_ID = "write_id"
# Random bytes of a write's token (11 characters of URL-safe base64): 64 bits, so two writers
# racing on one item never draw the same.
WRITE_ID_BYTES = 8

STATUS_SCORED = "SCORED"
STATUS_FAILED = "FAILED"
POSITIVE_LABEL = "PNEUMONIA"
# Reason of a FAILED item whose object was gone when its event was handled.
OBJECT_MISSING = "object_missing"
# Objects directly under the incoming prefix (no batch folder) form this batch.
ROOT_BATCH = "_root"
# Messages that are not S3 events are recorded under this key prefix and batch (see events.py).
UNKNOWN_EVENT_KEY_PREFIX = "sqs-message/"
UNKNOWN_EVENT_BATCH = "_unknown_event"

# Texts an item keeps are written by the code, never quoted from the input; these bound them
# all the same. A FAILED item's `error` is the whole story of the failure and has the room a
# failure leaves; the notes of a SCORED item (`sr_error`, `overlay_error`, `ignored_metadata`)
# sit beside a heat map, DICOM identifiers and warnings, and are one short clause.
MAX_ERROR_CHARS = 200
MAX_NOTE_CHARS = 80
# The model's file is named by the first 16 hex digits of its SHA-256 (64 bits: no two models
# collide), not by all 64, 48 bytes more in every item.
MODEL_SHA256_CHARS = 16
# Stage timings to 0.1 ms, as fine as the latency metrics read them.
TIMING_DECIMALS = 1
# Of the superseded score a rescore keeps under `previous`: what `results --changes` shows.
PREVIOUS_FIELDS = (STATUS, LABEL, PROBABILITY, SUBTYPE, REASON, MODEL_VERSION)


def utc_timestamp(moment: datetime | None = None) -> str:
    """ISO-8601 UTC with milliseconds and a `Z`: sorts lexically in time order."""
    moment = (moment or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def attention_day(scored_at: str) -> str:
    """Partition key of `attention-index`: the UTC day (`2026-11-25`) of `scored_at`."""
    return scored_at[:10]


def batch_of(object_key: str, incoming_prefix: str = DEFAULT_INCOMING_PREFIX) -> str:
    """The first folder under the incoming prefix, or `_root` for objects directly under it."""
    if object_key.startswith(UNKNOWN_EVENT_KEY_PREFIX):
        return UNKNOWN_EVENT_BATCH
    relative = object_key[len(incoming_prefix):] if object_key.startswith(incoming_prefix) else object_key
    folder, separator, _ = relative.partition("/")
    return folder if separator and folder else ROOT_BATCH


def primary_key(object_key: str, incoming_prefix: str = DEFAULT_INCOMING_PREFIX) -> dict[str, str]:
    """The table key of an object's result: (`batch`, `object_key`)."""
    return {BATCH: batch_of(object_key, incoming_prefix), KEY: object_key}


def needs_attention(item: dict, positive_label: str = POSITIVE_LABEL) -> bool:
    """Positive, FAILED or warned: what `attention-index` holds."""
    return (item.get("status") == STATUS_FAILED or item.get("label") == positive_label
            or bool(item.get(WARNINGS)))


def with_index_keys(item: dict, positive_label: str = POSITIVE_LABEL) -> dict:
    """`item` with `attention_day` set exactly when it needs attention (the sparse index)."""
    item = {name: value for name, value in item.items() if name != ATTENTION_DAY}
    if needs_attention(item, positive_label) and item.get(SCORED_AT):
        item[ATTENTION_DAY] = attention_day(item[SCORED_AT])
    return item


def overlay_key(object_key: str, results_prefix: str = RESULTS_PREFIX) -> str:
    """`results/overlays/<object key>.png`: outside the incoming prefix, so never rescored."""
    return _derived_key(object_key, results_prefix + OVERLAY_FOLDER, _DERIVED_SUFFIXES[OVERLAY_KEY])


def structured_report_key(object_key: str, results_prefix: str = RESULTS_PREFIX) -> str:
    """`results/sr/<object key>.dcm`: outside the incoming prefix, so never rescored."""
    return _derived_key(object_key, results_prefix + STRUCTURED_REPORT_FOLDER, _DERIVED_SUFFIXES[SR_KEY])


def derived_key(item: Mapping[str, Any], attribute: str) -> str | None:
    """The S3 key of a result's SR (`SR_KEY`) or overlay (`OVERLAY_KEY`), or None without one.
    The item holds the folder (`results/sr/`); an item written before held the whole key."""
    stored = item.get(attribute)
    if not stored:
        return None
    stored = str(stored)
    if not stored.endswith("/"):
        return stored
    return _derived_key(str(item[KEY]), stored, _DERIVED_SUFFIXES[attribute])


def _derived_folder(derived: str, object_key: str, attribute: str) -> str:
    """What an item keeps of a derived object's key: its folder, from which `derived_key` makes
    the key again."""
    suffix = _DERIVED_SUFFIXES[attribute]
    for name in (object_key, hashlib.sha256(object_key.encode()).hexdigest()):
        folder = derived.removesuffix(name + suffix)
        if folder != derived and folder.endswith("/") and _derived_key(object_key, folder, suffix) == derived:
            return folder
    raise ValueError(f"{attribute} is no <folder>/<object key or its sha256>{suffix} of its object")


def _derived_key(object_key: str, folder: str, suffix: str) -> str:
    """`<folder><object key><suffix>`, or `<folder><sha256 of the key><suffix>` where that
    would pass S3's key limit (an item keeps the folder, `derived_key` makes the key again)."""
    readable = f"{folder}{object_key}{suffix}"
    if len(readable.encode()) <= S3_MAX_KEY_BYTES:
        return readable
    return f"{folder}{hashlib.sha256(object_key.encode()).hexdigest()}{suffix}"


def key_digest(object_key: str) -> str:
    """What logs show instead of a key, which may carry a patient identifier."""
    return hashlib.sha256(object_key.encode()).hexdigest()[:16]


def to_dynamodb(value: Any) -> Any:
    """floats -> Decimal (DynamoDB refuses floats), recursively; drops None values."""
    if isinstance(value, float):
        return Decimal(repr(round(value, 6)))
    if isinstance(value, dict):
        return {k: to_dynamodb(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [to_dynamodb(v) for v in value]
    return value


def serialize(item: dict) -> dict:
    """A plain item as the low-level client's typed attribute values."""
    return {name: attribute_values.serialize(value) for name, value in to_dynamodb(item).items()}


def deserialize(item: dict) -> dict:
    """Typed attribute values -> plain Python (numbers as Decimal, binary as bytes)."""
    return {name: attribute_values.deserialize(value) for name, value in item.items()}


def version_key(version: str) -> tuple:
    """Orders "2026.11.25-2" < "2026.11.25-10" and "1.9.0" < "1.10.0": numbers compare as numbers."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                 for part in re.findall(r"\d+|[^\d.\-+_]+", version))


@dataclass(frozen=True)
class SourceObject:
    """What S3 said about the object a result is for (from its event, then its head)."""

    version_id: str | None = None
    etag: str | None = None
    uploaded_at: str | None = None
    size_bytes: int | None = None


@dataclass(frozen=True)
class Failure:
    """Why an object could not be scored: a short machine-readable reason and a detail."""

    reason: str
    error: str
    # A refused DICOM object's identifiers (pneumoscan.formats.DicomFacts): it still belongs to its study.
    dicom: DicomFacts | None = None


def object_item(object_key: str, *, batch: str, source: SourceObject, model: ModelMetadata,
                outcome: ImageScore | Failure, timings_ms: Mapping[str, float],
                overlay_key: str | None = None, sr_key: str | None = None, sr_error: str | None = None,
                scored_at: str | None = None) -> dict[str, Any]:
    """The one item of an object: where it came from, which model, and its score or failure.

    `overlay_key` and `sr_key` are the derived objects' keys; the item keeps their folder
    (`derived_key` makes them again). The bucket is the stack's one images bucket (events of
    any other are refused before this), so no item repeats it."""
    item: dict[str, Any] = {
        KEY: object_key, BATCH: batch, VERSION_ID: source.version_id,
        ETAG: source.etag, UPLOADED_AT: source.uploaded_at, SIZE_BYTES: source.size_bytes,
        MODEL_VERSION: model.version, MODEL_SHA256: model_id(model.sha256), THRESHOLD: model.threshold,
    }
    if isinstance(outcome, Failure):
        item.update({STATUS: STATUS_FAILED, REASON: outcome.reason, ERROR: capped(outcome.error), WARNINGS: []})
        if outcome.dicom is not None:
            item.update(dicom_fields(outcome.dicom))
    else:
        item.update(_score_fields(outcome, object_key, overlay_key),
                    **{SR_KEY: sr_key and _derived_folder(sr_key, object_key, SR_KEY),
                       SR_ERROR: capped(sr_error, MAX_NOTE_CHARS)})
    return _stamped(item, timings_ms, scored_at)


def capped(text: str | None, limit: int = MAX_ERROR_CHARS) -> str | None:
    """A text as an item keeps it: one line of at most `limit` characters."""
    if text is None or len(text) <= limit:
        return text
    return text[:limit - 3] + "..."


def model_id(sha256: str) -> str:
    """How an item names the model file: the first MODEL_SHA256_CHARS hex digits of its SHA-256."""
    return sha256[:MODEL_SHA256_CHARS]


def same_model(stored: object, sha256: str) -> bool:
    """Whether an item's `model_sha256` (16 hex digits, or all 64 in items written before) names
    the model file with this SHA-256."""
    return bool(stored) and model_id(str(stored)) == model_id(sha256)


def unknown_event_item(message_id: str, error: str, model: ModelMetadata,
                       scored_at: str | None = None) -> dict[str, Any]:
    """A message that is no S3 notification, recorded once under its message id (never retried)."""
    item = {KEY: f"{UNKNOWN_EVENT_KEY_PREFIX}{message_id}", BATCH: UNKNOWN_EVENT_BATCH, STATUS: STATUS_FAILED,
            REASON: "unknown_event", ERROR: capped(error), ETAG: message_id,
            MODEL_VERSION: model.version, MODEL_SHA256: model_id(model.sha256)}
    return _stamped(item, {}, scored_at)


def _score_fields(score: ImageScore, object_key: str, overlay_key: str | None) -> dict[str, Any]:
    image = score.image
    fields: dict[str, Any] = {
        STATUS: STATUS_SCORED, PROBABILITY: score.probability, LABEL: score.label,
        SUBTYPE: score.subtype, SUBTYPE_PROBABILITY: score.subtype_probability, WARNINGS: list(score.warnings),
        IMAGE_WIDTH: image.width, IMAGE_HEIGHT: image.height, IMAGE_FORMAT: image.format, IMAGE_MODE: image.mode,
        IGNORED_METADATA: capped(image.ignored_metadata, MAX_NOTE_CHARS),
    }
    if score.heat_map_error is not None:
        fields[OVERLAY_ERROR] = capped(score.heat_map_error, MAX_NOTE_CHARS)
    if score.heat_map is not None:
        summary = score.heat_map.summary
        # `outside_chest_share` above cam.OUTSIDE_CHEST_FLAG is the shortcut flag: not stored twice.
        fields[CAM] = {"border_share": round(summary.border_share, 4),
                       "outside_chest_share": round(summary.outside_chest_share, 4),
                       "heat_peak": float(f"{score.heat_map.peak:.4g}")}
        fields[HEAT_MAP] = score.heat_map.stored()
        if summary.hot_region is not None:
            fields[HOT_REGION] = summary.hot_region.as_dict()
    if overlay_key:
        fields[OVERLAY_KEY] = _derived_folder(overlay_key, object_key, OVERLAY_KEY)
    if image.dicom is not None:
        fields.update(dicom_fields(image.dicom))
    return fields


def dicom_fields(facts: DicomFacts) -> dict[str, Any]:
    """The attributes an item records of a DICOM source's header (absent values are left out)."""
    fields = {STUDY_UID: facts.study_uid, SERIES_UID: facts.series_uid, SOP_UID: facts.sop_uid,
              MODALITY: facts.modality, VIEW_POSITION: facts.view_position,
              PATIENT_AGE_YEARS: facts.patient_age_years}
    return {name: value for name, value in fields.items() if value is not None}


def overlay_from_item(item: Mapping[str, Any], decoded: DecodedImage, *, positive_label: str) -> bytes:
    """The overlay PNG of a stored result, drawn from the item's heat map over its decoded
    source image (`scoring.decode_image`, at `overlay.OVERLAY_LONG_SIDE` or more): the same picture
    the function would have put in S3, made where it is looked at. Raises ValueError when the
    item has no heat map (failed, or scored by an older version that stored a PNG instead)."""
    from . import overlay  # drawing and the heat map's maths: only for a reader that draws
    from .cam import CamSummary, HotRegion, decode_heat

    stored, summary_fields = item.get(HEAT_MAP), item.get(CAM) or {}
    if not stored or "heat_peak" not in summary_fields:
        raise ValueError("the result has no stored heat map")
    heat = decode_heat(bytes(stored), float(summary_fields["heat_peak"]))
    region = item.get(HOT_REGION)
    summary = CamSummary(HotRegion(**{name: int(value) for name, value in region.items()}) if region else None,
                         float(summary_fields.get("border_share", 0)),
                         float(summary_fields.get("outside_chest_share", 0)))
    title = overlay.caption(positive_label, float(item[PROBABILITY]), str(item[LABEL]), list(item.get(WARNINGS) or ()),
                            item.get(SUBTYPE))
    return overlay.overlay_png(decoded, heat, title=title, summary=summary)


def _stamped(item: dict[str, Any], timings_ms: Mapping[str, float], scored_at: str | None) -> dict[str, Any]:
    # The index keys (attention_day) are set by the writer, which knows the positive label.
    item.update({TIMINGS_MS: {stage: round(ms, TIMING_DECIMALS) for stage, ms in timings_ms.items()},
                 SCORED_AT: scored_at or utc_timestamp()})
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

    def __init__(self, client, table_name: str, *, incoming_prefix: str = DEFAULT_INCOMING_PREFIX,
                 positive_label: str = POSITIVE_LABEL):
        self.client = client
        self.table_name = table_name
        self.incoming_prefix = incoming_prefix
        self.positive_label = positive_label

    def current(self, object_key: str, *, consistent: bool = True) -> dict | None:
        """The item of `object_key`, or None. The read before scoring may be eventually
        consistent (half the read units): a result it misses makes the conditional write
        fail, and DynamoDB hands back the item that is really there."""
        return get_result(self.client, self.table_name, object_key, incoming_prefix=self.incoming_prefix,
                          consistent=consistent)

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
        older = version_key(str(item.get(MODEL_VERSION, ""))) <= version_key(model_version)
        if not same_model(item.get(MODEL_SHA256), model_sha256) and older:
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
        item = with_index_keys(dict(item, write_id=secrets.token_urlsafe(WRITE_ID_BYTES),
                                    **primary_key(item[KEY], self.incoming_prefix)), self.positive_label)
        rescored = bool(seen) and not same_model(seen.get(MODEL_SHA256), item.get(MODEL_SHA256, ""))
        if rescored:
            item["previous"] = previous_score(seen)
        if seen is None:
            condition = {"ConditionExpression": "attribute_not_exists(#key)",
                         "ExpressionAttributeNames": {"#key": KEY}}
        elif "write_id" in seen:
            condition = {"ConditionExpression": "#write_id = :seen",
                         "ExpressionAttributeNames": {"#write_id": "write_id"},
                         "ExpressionAttributeValues": {":seen": {"S": seen["write_id"]}}}
        else:  # an item written by something else than this store
            condition = {"ConditionExpression": "attribute_not_exists(#write_id)",
                         "ExpressionAttributeNames": {"#write_id": "write_id"}}
        try:
            # On a lost race DynamoDB hands back the item that won: no second read.
            self.client.put_item(TableName=self.table_name, Item=serialize(item),
                                 ReturnValuesOnConditionCheckFailure="ALL_OLD", **condition)
        except self.client.exceptions.ConditionalCheckFailedException as exc:
            landed = exc.response.get("Item")
            landed = deserialize(landed) if landed else self.current(item[KEY])
            if self.already_done(landed, version_id=item.get("version_id"), etag=item.get("etag"),
                                 model_sha256=item.get("model_sha256", ""),
                                 model_version=item.get("model_version", "")):
                return "duplicate"
            raise ConcurrentWrite(f"item {key_digest(item[KEY])} changed while it was being scored") from None
        return "rescored" if rescored else "written"

    def update(self, request: dict) -> None:
        """One UpdateItem given with plain values (`Key`, `ExpressionAttributeValues`), e.g. counters."""
        request = dict(request, Key=serialize(request["Key"]))
        if "ExpressionAttributeValues" in request:
            request["ExpressionAttributeValues"] = serialize(request["ExpressionAttributeValues"])
        self.client.update_item(TableName=self.table_name, **request)


# -- reads (the CLI, backfill, benchmarks): low-level client, Query and GetItem only -------------
def _projection(fields: tuple[str, ...] | list[str] | None) -> dict[str, Any]:
    if not fields:
        return {}
    names = {f"#p{index}": name for index, name in enumerate(fields)}
    return {"ProjectionExpression": ", ".join(names), "ExpressionAttributeNames": names}


def _query(client, **arguments: Any) -> Iterator[dict]:
    for page in client.get_paginator("query").paginate(**arguments):
        for item in page["Items"]:
            yield deserialize(item)


def get_result(client, table: str, object_key: str, *, incoming_prefix: str = DEFAULT_INCOMING_PREFIX,
               consistent: bool = False, fields: tuple[str, ...] | None = None) -> dict | None:
    """One object's result (GetItem), or None."""
    item = client.get_item(TableName=table, Key=serialize(primary_key(object_key, incoming_prefix)),
                           ConsistentRead=consistent, **_projection(fields)).get("Item")
    return deserialize(item) if item else None


def batch_results(client, table: str, batch: str, *, fields: tuple[str, ...] | list[str] | None = None,
                  key_between: tuple[str, str] | None = None, consistent: bool = False) -> Iterator[dict]:
    """Every item of one batch partition (or those with an object key in `key_between`), in
    object-key order: one paginated Query on the table."""
    projection = _projection(fields)
    condition = "#batch = :batch"
    names = {"#batch": BATCH} | projection.pop("ExpressionAttributeNames", {})
    values = {":batch": {"S": batch}}
    if key_between:
        condition += " AND #key BETWEEN :low AND :high"
        names["#key"] = KEY
        values |= {":low": {"S": key_between[0]}, ":high": {"S": key_between[1]}}
    yield from _query(client, TableName=table, KeyConditionExpression=condition, ExpressionAttributeNames=names,
                      ExpressionAttributeValues=values, ConsistentRead=consistent, **projection)


def days_between(since: datetime, until: datetime) -> list[str]:
    """UTC dates (YYYY-MM-DD) from since to until inclusive: the attention-index partitions to read."""
    day, last = since.astimezone(timezone.utc).date(), until.astimezone(timezone.utc).date()
    days = []
    while day <= last:
        days.append(day.isoformat())
        day += timedelta(days=1)
    return days


def attention_results(client, table: str, since: datetime, until: datetime) -> list[dict]:
    """Positive, FAILED and warned results scored in [since, until], oldest first: one Query per
    UTC day on `attention-index`. Items carry the listing fields (LISTING_FIELDS) and their keys."""
    start, end = utc_timestamp(since), utc_timestamp(until)
    items: list[dict] = []
    for day in days_between(since, until):
        items.extend(_query(
            client, TableName=table, IndexName=ATTENTION_INDEX,
            KeyConditionExpression="#day = :day AND #at BETWEEN :start AND :end",
            ExpressionAttributeNames={"#day": ATTENTION_DAY, "#at": SCORED_AT},
            ExpressionAttributeValues={":day": {"S": day}, ":start": {"S": start}, ":end": {"S": end}}))
    return sorted(items, key=lambda item: (item.get(SCORED_AT, ""), item[KEY]))


def study_results(client, table: str, study_uid: str) -> Iterator[dict]:
    """The results of one DICOM study, in object-key order (`study-index`, listing fields)."""
    yield from _query(client, TableName=table, IndexName=STUDY_INDEX,
                      KeyConditionExpression="#study = :study", ExpressionAttributeNames={"#study": STUDY_UID},
                      ExpressionAttributeValues={":study": {"S": study_uid}})
