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
    # notification is configured, removals, "folder" placeholder keys.
    skipped: tuple[str, ...] = field(default=())


def parse_message(body: str) -> ParsedMessage:
    try:
        message = json.loads(body)
    except (TypeError, ValueError) as exc:
        raise UnknownEvent(f"the message body is not JSON ({exc})") from exc
    if not isinstance(message, dict):
        raise UnknownEvent(f"the message body is a JSON {type(message).__name__}, not an object")

    if message.get("Type") == "Notification" and isinstance(message.get("Message"), str):
        return parse_message(message["Message"])  # S3 -> SNS -> SQS
    if message.get("Event") == S3_TEST_EVENT:
        return ParsedMessage(skipped=(S3_TEST_EVENT,))
    if message.get("source") == "aws.s3" and "detail" in message:
        return _from_eventbridge(message)
    if isinstance(message.get("Records"), list) and message["Records"]:
        return _from_notification(message["Records"])
    raise UnknownEvent(f"no S3 records in a message with fields {sorted(message)[:10]}")


def _from_notification(records: list) -> ParsedMessage:
    objects, skipped = [], []
    for record in records:
        try:
            event_name = record["eventName"]
            bucket = record["s3"]["bucket"]["name"]
            s3_object = record["s3"]["object"]
            key = unquote_plus(s3_object["key"])
        except (KeyError, TypeError) as exc:
            raise UnknownEvent(f"an S3 record lacks {exc}") from exc
        _require_object(bucket, key)
        if not event_name.startswith("ObjectCreated"):
            skipped.append(event_name)
        elif key.endswith("/"):
            skipped.append("folder placeholder")
        else:
            objects.append(ObjectCreated(
                bucket=bucket, key=key, version_id=s3_object.get("versionId") or None,
                etag=_bare_etag(s3_object.get("eTag")), size=s3_object.get("size"),
                event_time=record.get("eventTime")))
    return ParsedMessage(tuple(objects), tuple(skipped))


def _from_eventbridge(message: dict) -> ParsedMessage:
    detail = message["detail"]
    try:
        bucket, s3_object = detail["bucket"]["name"], detail["object"]
        key = s3_object["key"]
    except (KeyError, TypeError) as exc:
        raise UnknownEvent(f"an EventBridge S3 event lacks {exc}") from exc
    _require_object(bucket, key)
    if message.get("detail-type") != "Object Created":
        return ParsedMessage(skipped=(str(message.get("detail-type")),))
    if key.endswith("/"):
        return ParsedMessage(skipped=("folder placeholder",))
    return ParsedMessage((ObjectCreated(
        bucket=bucket, key=key, version_id=s3_object.get("version-id") or None,
        etag=_bare_etag(s3_object.get("etag")), size=s3_object.get("size"),
        event_time=message.get("time")),))


def _require_object(bucket, key) -> None:
    # An empty key could never be read back from the table (an empty key attribute is
    # invalid), so the message would loop to the DLQ instead of being recorded.
    if not (isinstance(bucket, str) and bucket and isinstance(key, str) and key):
        raise UnknownEvent("an S3 record names no bucket or no object key")


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
