"""Warnings and the blank-image refusal through the real handler: every item carries `warnings`."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from pneumoscan import ood, population, results
from pneumoscan.lungs import LUNG_FIELD_NOT_FOUND
from subtype_cases import subtype_warnings
from test_handler import NORMAL_XRAY, invoke, pytestmark, queued_event  # noqa: F401 - same skip rule


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), "L").save(buffer, "PNG")
    return buffer.getvalue()


def test_blank_images_fail_noise_is_warned_and_an_xray_has_an_empty_list(handler_stack):  # noqa: F811
    stack = handler_stack
    noise = np.random.default_rng(0).integers(0, 256, (512, 512))
    uploads = {"black.png": _png(np.zeros((512, 512))), "white.png": _png(np.full((512, 512), 255)),
               "noise.png": _png(noise), "xray.jpeg": NORMAL_XRAY.read_bytes()}
    for name, body in uploads.items():
        stack.put(f"{stack.prefix}w/{name}", body)

    assert invoke(stack, queued_event(stack)) == {"batchItemFailures": []}

    items = {item[results.KEY].rsplit("/", 1)[1]: item for item in stack.items()}
    for blank in ("black.png", "white.png"):
        assert items[blank]["status"] == results.STATUS_FAILED and items[blank]["reason"] == ood.BLANK_IMAGE
        assert items[blank]["warnings"] == []
    # A warned image is still scored.
    assert items["noise.png"]["status"] == results.STATUS_SCORED and items["noise.png"]["probability"] is not None
    # Noise is far from the training features (and may look adult to the population head).
    # No lungs in noise either: the segmenter's mask fails its checks and a default crop is read.
    noise = items["noise.png"]["warnings"]
    assert noise[:2] == [LUNG_FIELD_NOT_FOUND, ood.OUT_OF_DISTRIBUTION]
    assert set(noise) <= {LUNG_FIELD_NOT_FOUND, ood.OUT_OF_DISTRIBUTION, population.ADULT_LIKE_IMAGE,
                          *subtype_warnings(items["noise.png"])}
    assert items["xray.jpeg"]["status"] == results.STATUS_SCORED
    assert items["xray.jpeg"]["warnings"] == subtype_warnings(items["xray.jpeg"])
