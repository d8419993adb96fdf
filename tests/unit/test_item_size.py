"""How large a result item gets, as DynamoDB counts it (attribute names plus values): its object
key and batch, plus a part that no input can grow past a fixed bound. Each kind of item is
built at its largest (every kept header field at its cap, every warning code at once, notes at
their cap, a rescore's previous score, derived objects in the longest folder names the code
writes) by the writer the handler uses, and stored by the ResultStore in the table exactly as
template.yaml declares it."""

from __future__ import annotations

import math

import boto3
import numpy as np
import pytest
from moto import mock_aws
from PIL import Image

from benchmarks.prices import DYNAMODB_WRITE_UNIT_BYTES, dynamodb_item_bytes
from pneumoscan import results
from pneumoscan.cam import CamSummary, HotRegion
from pneumoscan.formats import UID_MAX_CHARS, DicomFacts
from pneumoscan.images import DecodedImage
from pneumoscan.model import ModelMetadata, SubtypeCall, default_model_dir
from pneumoscan.scoring import WARNING_MEANINGS, HeatMap, ImageScore
from pneumoscan.settings import RESULTS_PREFIX
from pneumoscan_cli.template import read_settings

SETTINGS = read_settings()
MODEL = ModelMetadata.read(default_model_dir())
# What an item holds besides the bytes of its object key and of its batch name, at most
# (docs/results.md states these): no input makes it larger.
ITEM_BYTES_BESIDES_KEY = {"failed": 1010, "scored_image": 1090, "scored_dicom": 1369,
                          "scored_dicom_with_reports": 1233}
# A long key as uploads name them: 200 bytes, in a batch folder named as `pneumoscan upload`
# names one by default (the UTC time).
BATCH = "20261125-210304"
REALISTIC_KEY_BYTES = 200
UID = ("1.2.826.0.1.3680043.8.498." + "1234567890" * 4)[:UID_MAX_CHARS]


def key_of(length: int, batch: str | None = BATCH) -> str:
    """A key of `length` bytes in `batch`'s folder, or directly under the incoming prefix."""
    head = f"{SETTINGS.incoming_prefix}{batch}/" if batch else SETTINGS.incoming_prefix
    return head + "x" * (length - len(head.encode()) - 4) + ".dcm"


@pytest.fixture
def store():
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(**SETTINGS.table_definition)
        yield results.ResultStore(client, SETTINGS.table, incoming_prefix=SETTINGS.incoming_prefix,
                                  positive_label=MODEL.positive_label)


def _facts(modality: str) -> DicomFacts:
    return DicomFacts(UID, UID, UID, UID, modality, "V" * 16, 104.99, "1.2.840.10008.1.2.1", "MONOCHROME2",
                      16, 4000, 4000)


def _source(parts: int = 10_000) -> results.SourceObject:
    # S3's version ids are 32 characters; a multipart upload's ETag is an MD5 and its part count.
    return results.SourceObject(version_id="3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrH", etag=f"{'0' * 32}-{parts}",
                                uploaded_at=results.utc_timestamp(), size_bytes=64 * 2**20)


# The longest side an image can have: 52 MP over the 64-pixel floor of the other.
LONGEST_SIDE = 52_000_000 // 64


def _score(dicom: bool, *, note: str | None = None, side: int = LONGEST_SIDE,
           warnings: tuple[str, ...] = tuple(WARNING_MEANINGS)) -> ImageScore:
    """A positive score with a subtype probability and a heat map; `note` is every note it can
    carry (ignored metadata of an image, an overlay that was drawn but not written)."""
    facts = _facts("DX") if dicom else None
    image = DecodedImage(Image.new("L", (8, 8)), side, side, "DICOM" if dicom else "JPEG",
                         "MONOCHROME2" if dicom else "RGB", None if dicom else note, facts)
    # Every summary share with four decimals, the hot region as wide as the image.
    heat = HeatMap(np.random.default_rng(0).random((14, 14)) * 37.1234,
                   CamSummary(HotRegion(side - 1, side - 1, side, side), 0.123456, 0.654321), None)
    return ImageScore(0.987654321, MODEL.positive_label, True, MODEL.threshold, MODEL.version, MODEL.sha256, image,
                      heat, note, warnings, {}, {}, SubtypeCall(0.512345678, None))


# Every stage as long as the function's 120-second timeout allows.
TIMINGS = dict.fromkeys(("fetch", "decode", "inference", "overlay", "total"), 119_999.99)
NOTE = "n" * 500


def _kinds(key: str) -> dict[str, dict]:
    """The largest item of each kind for `key`: a FAILED DICOM source (its header kept, the
    longest error), a scored image and a scored DICOM source with every note the code writes,
    and a scored DICOM source whose report and overlay were written."""
    largest_failed = results.Failure("unsupported_modality", "e" * 500, _facts("M" * 16))
    derived = {"sr_key": results.structured_report_key(key, RESULTS_PREFIX),
               "overlay_key": results.overlay_key(key, RESULTS_PREFIX)}
    outcomes = {"failed": (largest_failed, {}),
                # an overlay that was drawn but not written: the heat map and its write error
                "scored_image": (_score(False, note=NOTE), {}),
                "scored_dicom": (_score(True, note=NOTE), {"sr_error": NOTE}),
                # the report and the overlay written
                "scored_dicom_with_reports": (_score(True), derived)}
    return {kind: results.object_item(key, batch=results.batch_of(key, SETTINGS.incoming_prefix), source=_source(),
                                      model=MODEL, outcome=outcome, timings_ms=TIMINGS, **extra)
            for kind, (outcome, extra) in outcomes.items()}


def _stored(store, item: dict) -> dict:
    """`item` written as a rescore of a scored result (so it carries `previous`), then read back."""
    # The larger previous score is a scored one with a subtype (a failed one has a reason instead).
    earlier = {name: value for name, value in item.items() if name not in (results.REASON, results.ERROR)} | {
        results.STATUS: results.STATUS_SCORED, results.LABEL: MODEL.positive_label, results.PROBABILITY: 0.987654321,
        results.SUBTYPE: "bacterial", results.MODEL_VERSION: "2026.11.30-12", results.MODEL_SHA256: "f" * 64}
    store.client.put_item(TableName=store.table_name, Item=results.serialize(
        dict(earlier, **results.primary_key(item[results.KEY], store.incoming_prefix), write_id="w")))
    seen = store.current(item[results.KEY])
    assert store.save(item, seen) == "rescored"
    return store.current(item[results.KEY])


def _besides_key(item: dict) -> int:
    return dynamodb_item_bytes(item) - len(item[results.KEY].encode()) - len(item[results.BATCH].encode())


def _write_units(item: dict) -> int:
    return math.ceil(dynamodb_item_bytes(item) / DYNAMODB_WRITE_UNIT_BYTES)


def test_no_kind_of_item_grows_past_its_bound_besides_its_key(store):
    sizes = {kind: _besides_key(_stored(store, item)) for kind, item in _kinds(key_of(REALISTIC_KEY_BYTES)).items()}
    assert all(sizes[kind] <= bound for kind, bound in ITEM_BYTES_BESIDES_KEY.items()), sizes
    # The bounds are the sizes, not a margin over them.
    assert all(sizes[kind] > bound - 16 for kind, bound in ITEM_BYTES_BESIDES_KEY.items()), sizes


@pytest.mark.parametrize("short_batch, long_batch", [("b", "b" * 50), (None, None)])
def test_an_item_grows_with_its_key_by_the_key_and_its_batch_name_alone(store, short_batch, long_batch):
    """The key is held once: the derived objects' attributes name their folder, not the key again.
    Uploads directly under the incoming prefix all share one batch name."""
    def sizes(key: str) -> dict[str, int]:
        return {kind: dynamodb_item_bytes(_stored(store, item)) for kind, item in _kinds(key).items()}

    short_key, long_key = key_of(60, short_batch), key_of(REALISTIC_KEY_BYTES, long_batch)
    grown = (REALISTIC_KEY_BYTES - 60) + len(long_batch or "") - len(short_batch or "")
    short, long = sizes(short_key), sizes(long_key)
    assert {kind: long[kind] - short[kind] for kind in short} == dict.fromkeys(short, grown)


def test_a_first_score_of_an_image_or_a_failure_is_one_write_unit_with_a_200_byte_key(store):
    """What a ward's uploads write: a JPEG/PNG's first score with every warning an image can get
    and its overlay's folder, or a FAILED image with the longest error text; of a 20 MP
    radiograph in 13 parts (64 MiB in S3's smallest parts), scored in 4 s."""
    key = key_of(REALISTIC_KEY_BYTES).removesuffix(".dcm") + ".png"
    image_codes = tuple(code for code in WARNING_MEANINGS if code != "adult_patient")  # a DICOM header's
    outcomes = {"scored": (_score(False, side=5000, warnings=image_codes),
                           {"overlay_key": results.overlay_key(key, RESULTS_PREFIX)}),
                "failed": (results.Failure("corrupt", "e" * 500), {})}
    timings = dict.fromkeys(("fetch", "decode", "inference", "overlay"), 999.99) | {"total": 3999.99}
    for kind, (outcome, extra) in outcomes.items():
        item = results.object_item(key, batch=BATCH, source=_source(parts=13), model=MODEL, outcome=outcome,
                                   timings_ms=timings, **extra)
        assert store.save(item, None) == "written"
        stored = store.current(key)
        assert dynamodb_item_bytes(stored) <= DYNAMODB_WRITE_UNIT_BYTES, (kind, dynamodb_item_bytes(stored))
        assert results.derived_key(stored, results.OVERLAY_KEY) == extra.get("overlay_key")
        store.client.delete_item(TableName=store.table_name, Key=results.serialize(results.primary_key(key)))


def test_a_dicom_item_under_the_gateways_longest_key_is_two_write_units_at_most(store):
    """`<batch>/<study uid>/<sop uid>.dcm`, a 64-character batch and UIDs: every field at its cap."""
    key = f"{SETTINGS.incoming_prefix}{'b' * 64}/{UID}/{UID}.dcm"
    for item in _kinds(key).values():
        assert _write_units(_stored(store, item)) <= 2


def test_a_key_at_s3s_limit_is_still_written_and_its_derived_keys_fit(store):
    """1024 bytes of UTF-8, nearly all of it the batch folder: the partition key is at most as long
    (DynamoDB takes 2048), the sort key is the key (1024 allowed); the item is a few write units."""
    batch = "病" * 330
    key = f"{SETTINGS.incoming_prefix}{batch}/"
    key += "x" * (results.S3_MAX_KEY_BYTES - len(key.encode()))
    assert len(key.encode()) == results.S3_MAX_KEY_BYTES
    sr_key, overlay_key = (results.structured_report_key(key, RESULTS_PREFIX),
                           results.overlay_key(key, RESULTS_PREFIX))
    item = results.object_item(key, batch=results.batch_of(key, SETTINGS.incoming_prefix), source=_source(),
                               model=MODEL, outcome=_score(True), timings_ms=TIMINGS, sr_key=sr_key,
                               overlay_key=overlay_key)
    stored = _stored(store, item)
    assert stored[results.BATCH] == batch and stored[results.KEY] == key
    assert _besides_key(stored) <= ITEM_BYTES_BESIDES_KEY["scored_dicom_with_reports"]
    assert _write_units(stored) <= 4
    # Past S3's limit the derived objects are named by the key's SHA-256, and the item still finds them.
    assert (results.derived_key(stored, results.SR_KEY), results.derived_key(stored, results.OVERLAY_KEY)) == (
        sr_key, overlay_key)
    assert max(len(sr_key.encode()), len(overlay_key.encode())) < 100


def test_the_derived_keys_of_items_written_before_are_read_as_they_were_stored():
    key = "incoming/ward-7/a.dcm"
    old = {results.KEY: key, results.SR_KEY: f"results/sr/{key}.dcm", results.OVERLAY_KEY: f"results/overlays/{key}.png"}
    new = {results.KEY: key, results.SR_KEY: "results/sr/", results.OVERLAY_KEY: "results/overlays/"}
    for item in (old, new):
        assert results.derived_key(item, results.SR_KEY) == results.structured_report_key(key)
        assert results.derived_key(item, results.OVERLAY_KEY) == results.overlay_key(key)
    assert results.derived_key({results.KEY: key}, results.SR_KEY) is None


def test_a_derived_key_of_another_object_is_refused():
    with pytest.raises(ValueError):
        results.object_item("incoming/b/a.png", batch="b", source=_source(), model=MODEL, outcome=_score(False),
                            timings_ms={}, overlay_key=results.overlay_key("incoming/b/other.png"))

