import json

import pytest

from event_cases import WRONG_SHAPES
from pneumoscan.events import S3_TEST_EVENT, ObjectCreated, UnknownEvent, parse_message


def s3_notification(*keys: str, event_name: str = "ObjectCreated:Put", version_id: str | None = "v1") -> str:
    records = []
    for key in keys:
        s3_object = {"key": key, "size": 1234, "eTag": "0123abcd", "sequencer": "00A1"}
        if version_id:
            s3_object["versionId"] = version_id
        records.append({"eventVersion": "2.1", "eventSource": "aws:s3", "eventName": event_name,
                        "eventTime": "2026-11-25T21:00:00.000Z",
                        "s3": {"bucket": {"name": "images"}, "object": s3_object}})
    return json.dumps({"Records": records})


@pytest.mark.parametrize("encoded, key", [
    ("incoming/ward+7/chest+x-ray.jpeg", "incoming/ward 7/chest x-ray.jpeg"),
    ("incoming/b/a%2Bb.png", "incoming/b/a+b.png"),
    ("incoming/b/J%C3%BCrgen+%C3%98stergaard.JPG", "incoming/b/Jürgen Østergaard.JPG"),
    ("incoming/b/100%25.jpeg", "incoming/b/100%.jpeg"),
])
def test_keys_are_url_decoded_the_way_s3_encodes_them(encoded, key):
    parsed = parse_message(s3_notification(encoded))
    assert parsed.objects == (ObjectCreated(bucket="images", key=key, version_id="v1", etag="0123abcd",
                                            size=1234, event_time="2026-11-25T21:00:00.000Z"),)


def test_every_record_of_a_message_is_returned():
    parsed = parse_message(s3_notification("incoming/a/1.png", "incoming/a/2.png"))
    assert [o.key for o in parsed.objects] == ["incoming/a/1.png", "incoming/a/2.png"]


def test_unversioned_bucket_has_no_version_id():
    assert parse_message(s3_notification("incoming/a/1.png", version_id=None)).objects[0].version_id is None


def test_s3_test_event_is_acknowledged_without_objects():
    body = json.dumps({"Service": "Amazon S3", "Event": S3_TEST_EVENT, "Time": "2026-11-25T21:00:00Z",
                       "Bucket": "images", "RequestId": "r", "HostId": "h"})
    parsed = parse_message(body)
    assert parsed.objects == () and parsed.skipped == (S3_TEST_EVENT,)


def test_removals_and_folder_placeholders_are_skipped():
    assert parse_message(s3_notification("incoming/a/1.png", event_name="ObjectRemoved:Delete")).skipped \
        == ("ObjectRemoved:Delete",)
    placeholder = json.loads(s3_notification("incoming/a/"))
    placeholder["Records"][0]["s3"]["object"]["size"] = 0
    assert parse_message(json.dumps(placeholder)).skipped == ("folder placeholder",)


def test_sns_wrapped_notification_is_unwrapped():
    body = json.dumps({"Type": "Notification", "Message": s3_notification("incoming/a/x+y.png")})
    assert parse_message(body).objects[0].key == "incoming/a/x y.png"


def test_eventbridge_object_created_keys_are_not_decoded():
    body = json.dumps({"source": "aws.s3", "detail-type": "Object Created", "time": "2026-11-25T21:00:00Z",
                       "detail": {"bucket": {"name": "images"},
                                  "object": {"key": "incoming/a/x+y.png", "etag": "e", "version-id": "v9",
                                             "size": 5}}})
    assert parse_message(body).objects == (ObjectCreated("images", "incoming/a/x+y.png", "v9", "e", 5,
                                                         "2026-11-25T21:00:00Z"),)


@pytest.mark.parametrize("body", [
    "not json at all",
    "[1, 2]",
    json.dumps({"hello": "world"}),
    json.dumps({"Records": []}),
    json.dumps({"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}}}]}),
    s3_notification(""),
    json.dumps({"source": "aws.s3", "detail-type": "Object Created",
                "detail": {"bucket": {"name": "images"}, "object": {"key": ""}}}),
])
def test_unknown_shapes_raise_unknown_event(body):
    with pytest.raises(UnknownEvent):
        parse_message(body)


@pytest.mark.parametrize("body", WRONG_SHAPES.values(), ids=WRONG_SHAPES.keys())
def test_valid_json_of_the_wrong_shape_is_an_unknown_event(body):
    with pytest.raises(UnknownEvent) as unknown:
        parse_message(body)

    assert str(unknown.value)


@pytest.mark.parametrize("body", [
    s3_notification("incoming/a/x.jpeg"),
    s3_notification("incoming/a/x.jpeg", event_name="ObjectRemoved:Delete"),
    json.dumps({"source": "aws.s3", "detail-type": "Object Created", "time": "2026-11-25T21:00:00Z",
                "detail": {"bucket": {"name": "images"}, "object": {"key": "incoming/a/x.jpeg", "size": 5}}}),
])
def test_an_event_for_another_bucket_is_an_unknown_event(body):
    assert parse_message(body, bucket="images").objects or parse_message(body, bucket="images").skipped

    with pytest.raises(UnknownEvent, match="not the configured bucket"):
        parse_message(body, bucket="other-images")


def test_a_non_empty_object_whose_key_ends_in_a_slash_is_an_object_not_a_folder():
    body = json.dumps({"Records": [{"eventName": "ObjectCreated:Put", "eventTime": "2026-11-25T21:00:00.000Z",
                                    "s3": {"bucket": {"name": "images"},
                                           "object": {"key": "incoming/a/", "size": 52_000, "eTag": "e"}}}]})

    parsed = parse_message(body)

    assert [created.key for created in parsed.objects] == ["incoming/a/"] and parsed.skipped == ()


def test_an_object_without_a_size_is_never_skipped_for_its_key_shape():
    body = json.dumps({"Records": [{"eventName": "ObjectCreated:Put",
                                    "s3": {"bucket": {"name": "images"}, "object": {"key": "incoming/a/"}}}]})

    assert [created.key for created in parse_message(body).objects] == ["incoming/a/"]
