import re
from datetime import datetime, timezone
from decimal import Decimal

import boto3
import pytest
from moto import mock_aws

from pneumoscan import results
from pneumoscan_cli.template import read_settings
from pneumoscan.results import ConcurrentWrite, ResultStore


def create_results_table(dynamodb):
    """The table exactly as template.yaml declares it."""
    return dynamodb.create_table(**read_settings().table_definition)


@pytest.fixture
def store():
    with mock_aws():
        yield ResultStore(create_results_table(boto3.resource("dynamodb", region_name="us-east-1")))


def scored(model_sha: str = "sha-a", version_id: str = "v1", probability: float = 0.9) -> dict:
    scored_at = results.utc_timestamp()
    return {results.KEY: "incoming/b/x.png", "version_id": version_id, "etag": "e1", "batch": "b",
            "status": results.STATUS_SCORED, "probability": probability, "label": "PNEUMONIA",
            "threshold": 0.5, "model_version": f"model-{model_sha}", "model_sha256": model_sha,
            results.SCORED_AT: scored_at, results.OUTCOME_DAY: results.outcome_day("PNEUMONIA", scored_at)}


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
    assert results.outcome_day("FAILED", stamp) == "FAILED#2026-11-25"


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
    # A second worker read "nothing there" before the first one wrote.
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
    assert item["previous"]["model_sha256"] == "sha-a"
    assert item["previous"]["probability"] == Decimal("0.9")
    assert "previous" not in item["previous"]


def test_a_stale_read_cannot_overwrite_a_newer_write(store):
    store.save(scored(model_sha="sha-a"), None)
    stale = store.current("incoming/b/x.png")
    store.save(scored(model_sha="sha-b"), stale)
    with pytest.raises(ConcurrentWrite):
        store.save(scored(model_sha="sha-c"), stale)
