"""The handler's heat map on moto: stored in the item (drawn where it is looked at) and, when
OverlayImages asks for it, a PNG under results/ recorded on the item and never rescored."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from botocore.exceptions import ClientError
from PIL import Image

from image_cases import FULLRES_DIR
from pneumoscan import cam, overlay, results
from pneumoscan.model import default_model_dir as model_dir
from pneumoscan.scoring import decode_image
from pneumoscan.settings import RESULTS_PREFIX

DATA = FULLRES_DIR
pytestmark = pytest.mark.skipif(
    not DATA.is_dir() or not (model_dir() / "model.json").is_file(),
    reason="needs the shared data folder and a model in model/ (or $PNEUMOSCAN_MODEL_DIR)")

XRAY = DATA / "NORMAL" / "IM-0214-0001.jpeg"
POSITIVE_XRAY = DATA / "PNEUMONIA" / "person1091_bacteria_3031.jpeg"  # P ~1.0 with model 2026.12.02-1


def _decoded(path: Path):
    return decode_image(path.read_bytes(), target_size=(overlay.OVERLAY_LONG_SIDE,) * 2)


def overlays(stack) -> list[str]:
    listing = stack.s3.list_objects_v2(Bucket=stack.settings.bucket, Prefix=RESULTS_PREFIX)
    return [entry["Key"] for entry in listing.get("Contents", [])]


@pytest.fixture
def overlays_written(handler_stack, monkeypatch):
    """The stack with OverlayImages=all: every scored image also gets a PNG in S3."""
    monkeypatch.setenv("OVERLAY_IMAGES", "all")
    handler_stack.cold_start()
    return handler_stack


def test_by_default_the_heat_map_is_stored_in_the_item_and_no_png_is_written(handler_stack):
    stack = handler_stack
    key = f"{stack.prefix}ward-7/chest film.jpeg"
    stack.put(key, XRAY.read_bytes())
    calls = []
    stack.app.s3_client.meta.events.register("before-call.s3.PutObject", lambda **kwargs: calls.append(kwargs))

    stack.deliver()

    item = stack.item(key)
    assert item["status"] == results.STATUS_SCORED and results.OVERLAY_KEY not in item
    assert calls == [] and overlays(stack) == []
    heat = cam.decode_heat(bytes(item[results.HEAT_MAP].value), float(item[results.CAM]["heat_peak"]))
    assert heat.shape == (14, 14) and heat.max() == pytest.approx(float(item[results.CAM]["heat_peak"]))
    # Drawn from the item where it is looked at: the same picture the function would have written.
    drawn = Image.open(io.BytesIO(results.overlay_from_item(item, _decoded(XRAY), positive_label="PNEUMONIA")))
    assert drawn.format == "PNG" and drawn.size == overlay.overlay_size((int(item["image_width"]),
                                                                         int(item["image_height"])))


def test_scored_image_gets_an_overlay_that_never_triggers_scoring(overlays_written):
    stack = overlays_written
    key = f"{stack.prefix}ward-7/chest film.jpeg"
    stack.put(key, XRAY.read_bytes())

    stack.deliver()
    item = stack.item(key)

    assert item["status"] == results.STATUS_SCORED and "overlay" in item["timings_ms"]
    # The item names the overlay's folder; the key, held once, gives the rest.
    assert item[results.OVERLAY_KEY] == "results/overlays/"
    overlay_key = results.derived_key(item, results.OVERLAY_KEY)
    assert overlay_key == f"results/overlays/{key}.png"
    assert overlays(stack) == [overlay_key]
    stored = stack.s3.get_object(Bucket=stack.settings.bucket, Key=overlay_key)
    assert stored["ContentType"] == "image/png"
    picture = Image.open(io.BytesIO(stored["Body"].read()))
    width, height = int(item["image_width"]), int(item["image_height"])
    # The overlay drawn later from the item is the picture written here: 16 stored heat levels
    # and a second palette quantisation make it close, not identical.
    drawn = Image.open(io.BytesIO(results.overlay_from_item(item, _decoded(XRAY), positive_label="PNEUMONIA")))
    assert drawn.size == picture.size
    difference = np.abs(np.asarray(drawn.convert("RGB"), np.int16) - np.asarray(picture.convert("RGB"), np.int16))
    assert float(difference.mean()) < 4.0
    assert picture.format == "PNG" and picture.size == overlay.overlay_size((width, height))

    box = {name: int(value) for name, value in item[results.HOT_REGION].items()}
    assert 0 <= box["x"] < box["x"] + box["width"] <= width
    assert 0 <= box["y"] < box["y"] + box["height"] <= height
    shares = item[results.CAM]
    assert 0 <= shares["border_share"] <= 1 and 0 <= shares["outside_chest_share"] <= 1
    # The shortcut flag is the share against cam.OUTSIDE_CHEST_FLAG: not stored beside it.
    assert "outside_chest" not in shares and set(shares) == {"border_share", "outside_chest_share", "heat_peak"}

    # The overlay's own S3 event would be a second scoring: the notification filter stops it.
    assert stack.queue_depth(stack.queue_url) == 0
    assert stack.item(overlay_key) is None


def test_failed_image_gets_no_overlay(handler_stack):
    stack = handler_stack
    key = f"{stack.prefix}ward-7/notes.jpeg"
    stack.put(key, b"not an x-ray, just text")

    stack.deliver()

    item = stack.item(key)
    assert item["status"] == results.STATUS_FAILED and results.OVERLAY_KEY not in item
    assert overlays(stack) == []


def test_an_overlay_that_cannot_be_written_never_costs_the_score(overlays_written, monkeypatch):
    stack = overlays_written
    key = f"{stack.prefix}ward-7/chest film.jpeg"
    stack.put(key, XRAY.read_bytes())

    def slow_down(**_):
        raise ClientError({"Error": {"Code": "SlowDown", "Message": "injected"},
                           "ResponseMetadata": {"HTTPStatusCode": 503}}, "PutObject")

    monkeypatch.setattr(stack.app.s3_client, "put_object", slow_down)
    outcomes = stack.deliver()

    item = stack.item(key)
    assert outcomes and not any(outcome.failed for outcome in outcomes)
    assert item["status"] == results.STATUS_SCORED and "hot_region" in item
    assert results.OVERLAY_KEY not in item and "SlowDown" in item[results.OVERLAY_ERROR]
    assert overlays(stack) == []


@pytest.mark.parametrize("key_bytes", [1004, 1010, 1024])
def test_a_key_near_s3s_limit_is_scored_with_an_overlay_key_that_fits(overlays_written, key_bytes):
    stack = overlays_written
    folder = f"{stack.prefix}long/"
    name = "ü" * ((key_bytes - len(folder.encode()) - len(".jpeg")) // 2)
    key = folder + name + "x" * ((key_bytes - len(folder.encode()) - len(".jpeg")) % 2) + ".jpeg"
    assert len(key.encode()) == key_bytes
    stack.put(key, XRAY.read_bytes())

    outcomes = stack.deliver()

    item = stack.item(key)
    assert not any(outcome.failed for outcome in outcomes)
    assert item["status"] == results.STATUS_SCORED
    overlay_key = results.derived_key(item, results.OVERLAY_KEY)
    assert len(overlay_key.encode()) <= 1024
    assert overlay_key.startswith(f"{RESULTS_PREFIX}{results.OVERLAY_FOLDER}")
    assert overlays(stack) == [overlay_key]


def test_overlay_keys_keep_the_object_key_while_it_fits_and_differ_for_different_keys():
    short = "incoming/ward-7/chest film.jpeg"
    assert results.overlay_key(short) == f"results/overlays/{short}.png"
    long_keys = [f"incoming/b/{'ü' * 500}{suffix}.jpeg" for suffix in ("a", "b")]
    derived = [results.overlay_key(key) for key in long_keys]
    assert all(len(key.encode()) <= 1024 for key in derived) and derived[0] != derived[1]


def test_overlays_for_positives_only_keep_every_items_heat_summary(handler_stack, monkeypatch):
    stack = handler_stack
    monkeypatch.setenv("OVERLAY_IMAGES", "positives")
    app = stack.cold_start()
    normal_key, pneumonia_key = f"{stack.prefix}b/normal.jpeg", f"{stack.prefix}b/pneumonia.jpeg"
    stack.put(normal_key, XRAY.read_bytes())
    stack.put(pneumonia_key, POSITIVE_XRAY.read_bytes())

    stack.deliver()

    normal, pneumonia = stack.item(normal_key), stack.item(pneumonia_key)
    assert (normal["label"], pneumonia["label"]) == ("NORMAL", "PNEUMONIA"), "pick X-rays the model gets right"
    assert results.OVERLAY_KEY not in normal and results.CAM in normal and results.HOT_REGION in normal
    assert overlays(stack) == [results.derived_key(pneumonia, results.OVERLAY_KEY)]
    assert app.settings.overlay_images == "positives"


def test_an_unknown_overlay_setting_fails_the_cold_start(handler_stack, monkeypatch):
    monkeypatch.setenv("OVERLAY_IMAGES", "some")
    with pytest.raises(ValueError, match="OVERLAY_IMAGES"):
        handler_stack.cold_start()


def test_a_heat_map_bug_never_holds_back_the_score(handler_stack, monkeypatch):
    stack = handler_stack
    key = f"{stack.prefix}ward-7/chest film.jpeg"
    stack.put(key, XRAY.read_bytes())

    def broken(*_, **__):
        raise IndexError("injected rendering bug")

    monkeypatch.setattr(cam, "summarise", broken)
    outcomes = stack.deliver()

    item = stack.item(key)
    assert outcomes[0].failed == 0 and item["status"] == results.STATUS_SCORED
    assert item["overlay_error"] == "IndexError: injected rendering bug" and results.OVERLAY_KEY not in item
    assert overlays(stack) == []
