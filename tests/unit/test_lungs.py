"""The lung field: mask -> box -> sanity -> crop, and the crop's agreement with training's."""

from __future__ import annotations

import numpy as np
import pytest

from pneumoscan import cam
from pneumoscan.lungs import (MAX_FRAME_TRIM, Box, LungFieldSpec, box_from_mask, crop_and_resize, crop_input, frame_box,
                             lung_field, percentile_spread, within)

SPEC = LungFieldSpec(file="lungs.tflite", sha256="0" * 64, size_bytes=1)


def two_lungs(size: int = 128, left=(0.2, 0.45), right=(0.55, 0.8), top=0.2, bottom=0.8) -> np.ndarray:
    mask = np.zeros((size, size), np.float32)
    rows = slice(round(top * size), round(bottom * size))
    mask[rows, round(left[0] * size):round(left[1] * size)] = 1.0
    mask[rows, round(right[0] * size):round(right[1] * size)] = 1.0
    return mask


def test_box_of_two_lungs_is_their_outline():
    box = box_from_mask(two_lungs(), 0.5)
    assert box.as_list() == pytest.approx([0.2, 0.2, 0.8, 0.8], abs=0.02)


def test_a_stray_speck_does_not_stretch_the_box():
    mask = two_lungs()
    mask[0, 0] = mask[127, 127] = 1.0
    box = box_from_mask(mask, 0.5)
    assert box.left > 0.15 and box.bottom < 0.85


def test_believable_field_is_cropped_with_its_margin():
    field = lung_field(two_lungs(), SPEC)
    assert field.found and field.problem is None
    assert field.crop.left == pytest.approx(0.2 - SPEC.margin * 0.6, abs=0.02)
    assert field.crop.right == pytest.approx(0.8 + SPEC.margin * 0.6, abs=0.02)


@pytest.mark.parametrize(("mask", "problem"), [
    (np.zeros((128, 128), np.float32), "mask too small"),
    (np.ones((128, 128), np.float32), "mask too large"),
    (two_lungs(left=(0.02, 0.12), right=(0.14, 0.24)), "box too small"),
    (two_lungs(left=(0.0, 0.25), right=(0.3, 0.5), top=0.0, bottom=0.6), "box off centre"),
    (two_lungs(left=(0.55, 0.7), right=(0.72, 0.85)), "box too small"),  # one lung found, not both
])
def test_unbelievable_field_falls_back_and_says_why(mask, problem):
    field = lung_field(mask, SPEC)
    assert not field.found
    assert field.problem == problem
    assert field.crop == SPEC.fallback


def test_spec_round_trips():
    assert LungFieldSpec.from_dict(SPEC.as_dict()) == SPEC


def test_crop_is_tensorflows_crop_and_resize():
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (224, 224, 1)).astype(np.uint8)
    box = Box(0.11, 0.07, 0.87, 0.95)
    ours = crop_and_resize(image, box, 224, 224)
    theirs = tf.image.crop_and_resize(image[None].astype(np.float32), [[box.top, box.left, box.bottom, box.right]],
                                      [0], (224, 224)).numpy()[0]
    assert np.max(np.abs(ours - theirs)) < 0.01  # of 255 grey levels: float32 rounding
    assert crop_input(image, box).dtype == np.uint8


def test_whole_box_crop_is_the_image():
    image = np.arange(224 * 224, dtype=np.uint32).reshape(224, 224, 1) % 251
    assert np.array_equal(crop_input(image.astype(np.uint8), Box(0.0, 0.0, 1.0, 1.0)), image.astype(np.uint8))


def test_heat_of_a_crop_lands_inside_the_crop():
    heat = np.ones((14, 14), np.float32)
    placed = cam.place(heat, Box(0.25, 0.25, 0.75, 0.75))
    assert placed.shape == (14, 14)
    assert placed[0].sum() == 0 and placed[:, 0].sum() == 0
    assert placed[7, 7] == pytest.approx(1.0)
    whole = cam.place(heat * np.arange(14)[None, :], Box(0.0, 0.0, 1.0, 1.0))
    assert np.allclose(whole, heat * np.arange(14)[None, :], atol=1e-5)


def test_uniform_edge_bands_are_frame():
    rng = np.random.default_rng(5)
    image = rng.integers(40, 220, (224, 224, 1)).astype(np.uint8)
    image[:22] = 0  # a black band on top, 10 %
    image[:, :27] = 0  # and 12 % on the left
    image[:, -27:] = 0  # and on the right
    image[2:12, 5:15] = 250  # a burned-in letter inside the black band stays frame
    frame = frame_box(image)
    assert frame.as_list() == pytest.approx([27 / 224, 22 / 224, 1 - 27 / 224, 1.0], abs=0.005)


def test_no_band_is_the_whole_image_and_a_blank_image_keeps_most_of_itself():
    rng = np.random.default_rng(6)
    assert frame_box(rng.integers(0, 256, (224, 224, 1)).astype(np.uint8)) == Box(0.0, 0.0, 1.0, 1.0)
    blank = frame_box(np.zeros((224, 224, 1), np.uint8))
    assert blank.width >= 1 - 2 * MAX_FRAME_TRIM - 0.01


def test_a_box_within_a_box():
    assert within(Box(0.1, 0.2, 0.9, 1.0), Box(0.0, 0.0, 0.5, 0.5)).as_list() == pytest.approx([0.1, 0.2, 0.5, 0.6])


def test_percentile_spread_is_numpys():
    rows = np.random.default_rng(7).integers(0, 256, (60, 224)).astype(np.uint8)
    expected = np.diff(np.percentile(rows, (5, 95), axis=1), axis=0)[0]
    assert np.allclose(percentile_spread(rows), expected, rtol=0, atol=1e-9)
