"""What an SQS message body says about S3 objects to score.

S3 puts its event JSON in the message body, with the object key URL-encoded
(`+` for a space, %XX for everything else, unicode as UTF-8 bytes). The same
notification can also arrive wrapped by SNS or as an EventBridge "Object Created"
event, whose keys are not encoded. Anything else is `UnknownEvent`: a permanent
problem that is recorded, never retried.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import quote_plus, unquote_plus

S3_TEST_EVENT = "s3:TestEvent"
# S3's error codes for an object, or an object version, that is no longer there.
MISSING_OBJECT_CODES = frozenset({"404", "NoSuchKey", "NoSuchVersion", "NotFound"})


class UnknownEvent(ValueError):
    """The message is not an S3 notification this function understands."""


@dataclass(frozen=True)
class ObjectCreated:
    bucket: str
    key: str
    version_id: str | None = None
    etag: str | None = None
    size: int | None = None
    event_time: str | None = None


@dataclass(frozen=True)
class ParsedMessage:
    objects: tuple[ObjectCreated, ...] = ()
    # Notifications acknowledged without scoring: the test event S3 sends when the
    # notification is configured, removals, zero-byte "folder" placeholders.
    skipped: tuple[str, ...] = field(default=())
    # Every bucket the message names, acted on or skipped.
    buckets: frozenset[str] = field(default=frozenset())


def parse_message(body: str, *, bucket: str | None = None) -> ParsedMessage:
    """What `body` asks for; `UnknownEvent` for anything but a well-formed S3 notification,
    and, given `bucket`, for an event about any other bucket.

    Parsing is pure: a body it cannot make sense of would fail the same way on every
    delivery, so whatever goes wrong in here is an unknown event, never a retry.
    """
    try:
        parsed = _parse(body)
    except UnknownEvent:
        raise
    except RecursionError as exc:
        raise UnknownEvent("the message body nests too deeply to be an S3 notification") from exc
    except Exception as exc:  # noqa: BLE001 - see the docstring: a parser failure is permanent
        raise UnknownEvent(f"the message could not be read ({type(exc).__name__}: {exc})"[:500]) from exc
    foreign = sorted({name for name in parsed.buckets if name != bucket}) if bucket else []
    if foreign:
        raise UnknownEvent(f"the event names bucket {foreign[0][:100]!r}, not the configured bucket")
    return parsed


def _parse(body: str) -> ParsedMessage:
    try:
        message = json.loads(body, parse_constant=_refuse_constant)
    except (TypeError, ValueError) as exc:
        raise UnknownEvent(f"the message body is not JSON ({exc})"[:500]) from exc
    if not isinstance(message, dict):
        raise UnknownEvent(f"the message body is a JSON {type(message).__name__}, not an object")

    if message.get("Type") == "Notification" and isinstance(message.get("Message"), str):
        return _parse(message["Message"])  # S3 -> SNS -> SQS
    if message.get("Event") == S3_TEST_EVENT:
        return ParsedMessage(skipped=(S3_TEST_EVENT,))
    if message.get("source") == "aws.s3" and "detail" in message:
        return _from_eventbridge(message)
    if isinstance(message.get("Records"), list) and message["Records"]:
        return _from_notification(message["Records"])
    raise UnknownEvent(f"no S3 records in a message with fields {sorted(message)[:10]}"[:500])


def _refuse_constant(name: str):
    # json accepts NaN and Infinity, which no AWS service sends and no table can store.
    raise UnknownEvent(f"the message holds {name}, which is not JSON")


def _from_notification(records: list) -> ParsedMessage:
    objects, skipped, buckets = [], [], set()
    for record in records:
        event_name = _field(record, "eventName")
        bucket = _field(record, "s3", "bucket", "name")
        s3_object = _field(record, "s3", "object", kind=dict)
        key = unquote_plus(_field(s3_object, "key"))
        created = ObjectCreated(
            bucket=bucket, key=key, version_id=_field(s3_object, "versionId", required=False) or None,
            etag=_bare_etag(_field(s3_object, "eTag", required=False)),
            size=_field(s3_object, "size", kind=int, required=False),
            event_time=_field(record, "eventTime", required=False))
        _require_object(created)
        buckets.add(bucket)
        if not event_name.startswith("ObjectCreated"):
            skipped.append(event_name)
        elif _is_folder_placeholder(created):
            skipped.append("folder placeholder")
        else:
            objects.append(created)
    return ParsedMessage(tuple(objects), tuple(skipped), frozenset(buckets))


def _from_eventbridge(message: dict) -> ParsedMessage:
    s3_object = _field(message, "detail", "object", kind=dict)
    created = ObjectCreated(
        bucket=_field(message, "detail", "bucket", "name"), key=_field(s3_object, "key"),
        version_id=_field(s3_object, "version-id", required=False) or None,
        etag=_bare_etag(_field(s3_object, "etag", required=False)),
        size=_field(s3_object, "size", kind=int, required=False),
        event_time=_field(message, "time", required=False))
    _require_object(created)
    buckets = frozenset({created.bucket})
    if message.get("detail-type") != "Object Created":
        return ParsedMessage(skipped=(str(message.get("detail-type"))[:100],), buckets=buckets)
    if _is_folder_placeholder(created):
        return ParsedMessage(skipped=("folder placeholder",), buckets=buckets)
    return ParsedMessage((created,), buckets=buckets)


def _field(value, *path: str, kind: type = str, required: bool = True):
    """`value[path[0]][path[1]]...`, which must be a `kind` (None if absent and not required)."""
    for depth, name in enumerate(path):
        if not isinstance(value, dict):
            raise UnknownEvent(f"{'.'.join(path[:depth]) or 'an S3 record'} is a JSON "
                               f"{type(value).__name__}, not an object")
        if name not in value or (value[name] is None and not required):
            if required:
                raise UnknownEvent(f"an S3 record lacks {'.'.join(path)}")
            return None
        value = value[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UnknownEvent(f"{'.'.join(path)} is a JSON {type(value).__name__}, not a {kind.__name__}")
    return value


def _require_object(created: ObjectCreated) -> None:
    # An empty key could never be read back from the table (an empty key attribute is
    # invalid), so the message would loop to the DLQ instead of being recorded.
    if not (created.bucket and created.key):
        raise UnknownEvent("an S3 record names no bucket or no object key")


def _is_folder_placeholder(created: ObjectCreated) -> bool:
    """The zero-byte object a console "Create folder" makes; a key ending in `/` that holds
    bytes is an object like any other, and one of unknown size is looked at by the handler."""
    return created.key.endswith("/") and created.size == 0


def _bare_etag(etag: str | None) -> str | None:
    """Events carry the ETag bare, HeadObject quoted: compare them bare."""
    return etag.strip('"') if etag else None


def object_created_body(bucket: str, key: str, *, region: str, source: str, etag: str | None = None,
                        size: int | None = None, version_id: str | None = None) -> str:
    """The S3 ObjectCreated notification S3 itself would have sent for this object, key
    URL-encoded as S3 encodes it: what backfills enqueue, so the handler cannot tell them apart."""
    s3_object: dict = {"key": quote_plus(key, safe="/")}
    s3_object |= {name: value for name, value in (("size", size), ("eTag", etag), ("versionId", version_id))
                  if value is not None}
    event_time = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return json.dumps({"Records": [{
        "eventVersion": "2.1", "eventSource": source, "awsRegion": region, "eventTime": event_time,
        "eventName": "ObjectCreated:Put",
        "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
               "object": s3_object}}]})
