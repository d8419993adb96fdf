import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import boto3
import pytest
from moto import mock_aws

from pneumoscan import results
from pneumoscan_cli.template import read_settings
from pneumoscan.results import ConcurrentWrite, ResultStore


SETTINGS = read_settings()


@pytest.fixture
def store():
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(**SETTINGS.table_definition)  # the table exactly as template.yaml declares it
        yield ResultStore(client, SETTINGS.table)


def scored(model_sha: str = "sha-a", version_id: str = "v1", probability: float = 0.9,
           key: str = "incoming/b/x.png", label: str = "PNEUMONIA", **fields) -> dict:
    return {results.KEY: key, "version_id": version_id, "etag": "e1", "batch": "b",
            "status": results.STATUS_SCORED, "probability": probability, "label": label,
            "threshold": 0.5, "model_version": f"model-{model_sha}", "model_sha256": model_sha,
            results.SCORED_AT: results.utc_timestamp(), **fields}


@pytest.mark.parametrize("key, batch", [
    ("incoming/ward-7/2026/a.png", "ward-7"),
    ("incoming/a.png", results.ROOT_BATCH),
    ("incoming//a.png", results.ROOT_BATCH),
    ("elsewhere/a.png", "elsewhere"),
])
def test_batch_is_the_first_folder_under_the_prefix(key, batch):
    assert results.batch_of(key, "incoming/") == batch


def test_timestamps_are_utc_milliseconds_and_sort_in_time_order():
    stamp = results.utc_timestamp(datetime(2026, 11, 25, 21, 3, 4, 123456, tzinfo=timezone.utc))
    assert stamp == "2026-11-25T21:03:04.123Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", results.utc_timestamp())
    assert results.attention_day(stamp) == "2026-11-25"


def test_key_digest_hides_the_key():
    digest = results.key_digest("incoming/patient-4711/x.png")
    assert len(digest) == 16 and "4711" not in digest


def test_first_write_then_duplicate_is_detected(store):
    assert store.save(scored(), None) == "written"
    current = store.current("incoming/b/x.png")
    assert current["probability"] == Decimal("0.9")
    assert store.already_done(current, version_id="v1", etag="e1", model_sha256="sha-a", model_version="model-sha-a")
    assert not store.already_done(current, version_id="v2", etag="e2", model_sha256="sha-a",
                                  model_version="model-sha-a")
    # a newer model rescores; an older one (a container still draining after a deploy) must not
    assert not store.already_done(current, version_id="v1", etag="e1", model_sha256="sha-b",
                                  model_version="model-sha-b")
    assert store.already_done(current, version_id="v1", etag="e1", model_sha256="sha-0", model_version="model-sha-0")


def test_a_racing_identical_result_counts_as_duplicate(store):
    store.save(scored(), None)
    # A second worker read "nothing there" before the first one wrote (or its eventually
    # consistent read missed the write): the conditional write refuses, the item stays.
    assert store.save(scored(), None) == "duplicate"


def test_a_racing_different_result_is_retried_not_overwritten(store):
    store.save(scored(version_id="v2"), None)
    with pytest.raises(ConcurrentWrite):
        store.save(scored(version_id="v1"), None)
    assert store.current("incoming/b/x.png")["version_id"] == "v2"


def test_rescore_with_a_newer_model_keeps_the_previous_score(store):
    store.save(scored(model_sha="sha-a", probability=0.9), None)
    seen = store.current("incoming/b/x.png")
    assert store.save(scored(model_sha="sha-b", probability=0.2), seen) == "rescored"
    item = store.current("incoming/b/x.png")
    assert item["model_sha256"] == "sha-b" and item["probability"] == Decimal("0.2")
    # What `results --changes` shows of the superseded score, and nothing else.
    assert item["previous"] == {"status": results.STATUS_SCORED, "label": "PNEUMONIA", "probability": Decimal("0.9"),
                                "model_version": "model-sha-a"}


def test_an_item_names_its_model_by_16_hex_digits_and_items_with_all_64_still_match(store):
    sha = "c298d01e658cc65a80e09d42db9f1317262ba469c7f7493ba3f6cc55d3f2f663"
    assert results.model_id(sha) == "c298d01e658cc65a"
    for stored in (sha, sha[:16]):  # an item written before, and one written now
        assert store.already_done({"model_sha256": stored, "model_version": "v", "version_id": "v1"},
                                  version_id="v1", etag=None, model_sha256=sha, model_version="v")
    other = "c298d01e658cc65b" + sha[16:]
    assert not results.same_model(sha, other) and not results.same_model(None, sha)
    # A rescore by the same model file, whichever way the earlier item named it, keeps no `previous`.
    store.save(scored(model_sha=sha), None)
    assert store.save(scored(model_sha=sha[:16], version_id="v2"), store.current("incoming/b/x.png")) == "written"
    assert "previous" not in store.current("incoming/b/x.png")


def test_a_stale_read_cannot_overwrite_a_newer_write(store):
    store.save(scored(model_sha="sha-a"), None)
    stale = store.current("incoming/b/x.png")
    store.save(scored(model_sha="sha-b"), stale)
    with pytest.raises(ConcurrentWrite):
        store.save(scored(model_sha="sha-c"), stale)


def test_the_object_key_alone_names_its_item():
    assert results.primary_key("incoming/ward-7/a.png") == {"batch": "ward-7", "object_key": "incoming/ward-7/a.png"}
    assert results.primary_key("sqs-message/m-1")["batch"] == results.UNKNOWN_EVENT_BATCH


def test_only_positive_failed_or_warned_items_carry_the_attention_key():
    day = "2026-11-25"
    at = f"{day}T10:00:00.000Z"
    assert results.with_index_keys({"label": "PNEUMONIA", "scored_at": at})["attention_day"] == day
    assert results.with_index_keys({"status": "FAILED", "scored_at": at})["attention_day"] == day
    assert results.with_index_keys({"label": "NORMAL", "warnings": ["blank_image"], "scored_at": at}
                                   )["attention_day"] == day
    assert "attention_day" not in results.with_index_keys({"label": "NORMAL", "warnings": [], "scored_at": at})
    # A rescore that turns a positive into a normal leaves the index.
    assert "attention_day" not in results.with_index_keys({"label": "NORMAL", "attention_day": day, "scored_at": at})


def test_the_writer_sets_the_partition_key_from_the_object_key(store):
    store.save(scored(key="incoming/ward-9/x.png", batch="wrong"), None)
    item = store.current("incoming/ward-9/x.png")
    assert item["batch"] == "ward-9" and item["attention_day"] == item["scored_at"][:10]


def test_the_three_reads_are_a_get_and_queries_never_a_scan(store):
    client = store.client
    client.meta.events.register("before-call.dynamodb.Scan", lambda **_: pytest.fail("a read scanned the table"))
    store.save(scored(key="incoming/b/2.png"), None)
    store.save(scored(key="incoming/b/1.png", label="NORMAL", probability=0.1), None)
    store.save(scored(key="incoming/b/3.png", label="NORMAL", probability=0.2, warnings=["blank_image"]), None)
    store.save(scored(key="incoming/other/1.png"), None)
    store.save(scored(key="incoming/b/dicom.dcm", study_uid="1.2.3", sop_uid="1.2.3.4"), None)

    assert results.get_result(client, store.table_name, "incoming/b/1.png")["label"] == "NORMAL"
    assert results.get_result(client, store.table_name, "incoming/b/none.png") is None
    assert [item["object_key"] for item in results.batch_results(client, store.table_name, "b")] == [
        "incoming/b/1.png", "incoming/b/2.png", "incoming/b/3.png", "incoming/b/dicom.dcm"]
    now = datetime.now(timezone.utc)
    window = results.attention_results(client, store.table_name, now - timedelta(hours=1), now + timedelta(minutes=1))
    # The normal score without warnings is not in the attention index.
    assert sorted(item["object_key"] for item in window) == [
        "incoming/b/2.png", "incoming/b/3.png", "incoming/b/dicom.dcm", "incoming/other/1.png"]
    assert [item["object_key"] for item in results.study_results(client, store.table_name, "1.2.3")] == [
        "incoming/b/dicom.dcm"]


def test_a_typical_item_fits_one_write_unit(store):
    from benchmarks.prices import dynamodb_item_bytes

    store.save(scored(key="incoming/ward-7/2026-11-25/patient-000123-view-pa.jpeg", size_bytes=1_843_211,
                      image_width=2090, image_height=1858, image_format="JPEG", image_mode="L",
                      timings_ms={"fetch": 6.06, "decode": 3.73, "inference": 1.9, "total": 17.4},
                      uploaded_at=results.utc_timestamp(), bucket="pneumoscan-123456789012-us-east-1-a1b2c3d4",
                      etag="0123456789abcdef0123456789abcdef", version_id="3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY"),
               None)
    item = store.current("incoming/ward-7/2026-11-25/patient-000123-view-pa.jpeg")
    assert dynamodb_item_bytes(item) <= 1024

