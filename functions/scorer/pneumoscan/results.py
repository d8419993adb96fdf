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
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

TABLE_ENV = "RESULTS_TABLE"
INCOMING_PREFIX_ENV = "INCOMING_PREFIX"
DEFAULT_INCOMING_PREFIX = "incoming/"
# Everything the pipeline itself writes to the bucket goes here, outside the
# notification prefix, so it can never trigger another scoring.
RESULTS_PREFIX = "results/"

KEY = "object_key"
BATCH_INDEX = "batch-index"
BATCH = "batch"
OUTCOME_INDEX = "outcome-index"
OUTCOME_DAY = "outcome_day"
SCORED_AT = "scored_at"

STATUS_SCORED = "SCORED"
STATUS_FAILED = "FAILED"
OUTCOME_FAILED = "FAILED"  # outcome of a FAILED item; SCORED items use their label
# Objects directly under the incoming prefix (no batch folder) form this batch.
ROOT_BATCH = "_root"
# Messages that are not S3 events are recorded under this batch (see events.py).
UNKNOWN_EVENT_BATCH = "_unknown_event"

# Fields of a scored item that are carried into `previous` when a newer model rescores it.
PREVIOUS_FIELDS = ("status", "probability", "label", "threshold", "model_version", "model_sha256",
                   "scored_at", "reason")


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


def previous_score(item: dict) -> dict:
    """The part of an existing item that a rescore keeps under `previous`."""
    return {field: item[field] for field in PREVIOUS_FIELDS if field in item}
