"""Messages of valid JSON (or nearly) but of a shape no S3 notification has, as a hostile
sender or a broken producer writes them. Each must be recorded as an unknown event once,
never retried into the dead-letter queue, and must list in `pneumoscan dlq list`."""

from __future__ import annotations

import json

DEPTH = 100_000  # far past Python's recursion limit, well under SQS's 256 KiB body limit


def notification(**overrides) -> dict:
    s3_object = {"key": "incoming/hostile/x.jpeg", "size": 1234, "eTag": "0123abcd"}
    record = {"eventVersion": "2.1", "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
              "eventTime": "2026-11-25T21:00:00.000Z",
              "s3": {"bucket": {"name": "images"}, "object": s3_object}}
    for path, value in overrides.items():
        *parents, leaf = path.split(".")
        holder = record
        for name in parents:
            holder = holder[name]
        holder[leaf] = value
    return {"Records": [record]}


WRONG_SHAPES = {
    "event name a number": json.dumps(notification(eventName=42)),
    "key a number": json.dumps(notification(**{"s3.object.key": 1234})),
    "key a list": json.dumps(notification(**{"s3.object.key": ["incoming/a.jpeg"]})),
    "etag a number": json.dumps(notification(**{"s3.object.eTag": 12345})),
    "version id a number": json.dumps(notification(**{"s3.object.versionId": 7})),
    "size a string": json.dumps(notification(**{"s3.object.size": "1234"})),
    "bucket name an object": json.dumps(notification(**{"s3.bucket.name": {"name": "images"}})),
    "object a list": json.dumps(notification(**{"s3.object": [{"key": "incoming/a.jpeg"}]})),
    "record a number": json.dumps({"Records": [7]}),
    "event time Infinity": json.dumps(notification(eventTime=float("inf"))),
    "event time NaN": json.dumps(notification(eventTime=float("nan"))),
    "event time a number": json.dumps(notification(eventTime=1764104400)),
    "deeply nested arrays": "[" * DEPTH + "]" * DEPTH,
    "records deeply nested": '{"Records": ' + "[" * DEPTH + "]" * DEPTH + "}",
    "sns message nested without end": json.dumps({"Type": "Notification", "Message": "[" * DEPTH}),
    "eventbridge object a list": json.dumps({"source": "aws.s3", "detail-type": "Object Created",
                                             "detail": {"bucket": {"name": "images"}, "object": ["x"]}}),
    "eventbridge detail a string": json.dumps({"source": "aws.s3", "detail-type": "Object Created",
                                               "detail": "incoming/a.jpeg"}),
    "field names like console markup": json.dumps({"[/bold]": 1, "[red]": ["[/]"]}),
    "eventbridge key a number": json.dumps({"source": "aws.s3", "detail-type": "Object Created",
                                            "detail": {"bucket": {"name": "images"}, "object": {"key": 5}}}),
}
