"""Every kind of input through `pneumoscan.images`: scored correctly or rejected with a clear reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
import simplejpeg
from PIL import Image, ImageFile

from image_cases import (CASES, FULLRES_DIR, INVALID_CASES, LARGE_CASE, VALID_CASES,
                         jpeg_bomb_just_over_cap, jpeg_corrupt_scan, png_bomb, reference_bytes,
                         reference_image, truncated_jpeg)
from pneumoscan import images
from pneumoscan.images import ImageRejected, decode, load_model_input

MODEL_SIDE = 224


def _mean_abs_diff(a: Image.Image | np.ndarray, b: Image.Image | np.ndarray) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)).mean())


def _model_input(image: Image.Image) -> np.ndarray:
    return images.to_model_input(image, MODEL_SIDE, MODEL_SIDE, 1)


@pytest.mark.parametrize("case", VALID_CASES, ids=lambda c: c.name)
def test_unusual_but_valid_images_decode_to_the_same_upright_pixels(case):
    expected = case.upright()
    decoded = decode(case.make())

    assert decoded.image.mode in ("L", "RGB")
    assert (decoded.width, decoded.height) == expected.size
    assert decoded.image.size == expected.size
    # JPEG re-encoding at quality 95 moves pixels by about one grey level, nothing more.
    assert _mean_abs_diff(decoded.image.convert("L"), expected) < 2.0


@pytest.mark.parametrize("case", VALID_CASES + [LARGE_CASE], ids=lambda c: c.name)
def test_reduced_decode_gives_the_model_the_same_input(case):
    pixels, decoded = load_model_input(case.make(), MODEL_SIDE, MODEL_SIDE, 1)

    assert pixels.shape == (MODEL_SIDE, MODEL_SIDE, 1) and pixels.dtype == np.uint8
    assert _mean_abs_diff(pixels, _model_input(case.upright())) < 3.0
    assert decoded.format in images.SUPPORTED_FORMATS


def test_a_50_megapixel_radiograph_is_decoded_at_a_reduced_scale():
    data = LARGE_CASE.make()
    decoded = decode(data, target_size=(MODEL_SIDE, MODEL_SIDE))

    assert (decoded.width, decoded.height) == (7100, 7040)
    assert decoded.width * decoded.height <= images.MAX_PIXELS
    # The 1/8 DCT scale still covers the model's 224 px, and is all that is ever allocated.
    assert decoded.image.size == (888, 880)


def test_exif_rotation_reports_the_upright_size():
    case = next(c for c in VALID_CASES if c.name == "jpeg_exif_rotated")
    with Image.open(io.BytesIO(case.make())) as stored:
        assert stored.size == reference_image().size[::-1]

    decoded = decode(case.make(), target_size=(MODEL_SIDE, MODEL_SIDE))

    assert (decoded.width, decoded.height) == reference_image().size


def test_sixteen_bit_png_uses_its_own_range_not_the_top_byte():
    case = next(c for c in VALID_CASES if c.name == "png_16bit_grey")
    decoded = decode(case.make())

    assert decoded.mode.startswith("I")
    assert np.asarray(decoded.image).min() == 0 and np.asarray(decoded.image).max() == 255


def test_a_flat_sixteen_bit_image_windows_to_black_instead_of_dividing_by_zero():
    flat = Image.fromarray(np.full((100, 100), 1234, dtype=np.uint16))
    buffer = io.BytesIO()
    flat.save(buffer, "PNG")

    decoded = decode(buffer.getvalue())

    assert not np.asarray(decoded.image).any()


def test_multi_picture_jpeg_is_read_as_its_first_picture():
    first, second = reference_image(), reference_image().transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    buffer = io.BytesIO()
    first.save(buffer, "MPO", save_all=True, append_images=[second], quality=95)

    decoded = decode(buffer.getvalue())

    assert decoded.format == "MPO"
    assert _mean_abs_diff(decoded.image, first) < 2.0


@pytest.mark.parametrize("case", INVALID_CASES, ids=lambda c: c.name)
def test_bad_inputs_are_rejected_with_a_reason(case):
    with pytest.raises(ImageRejected) as rejected:
        load_model_input(case.make(), MODEL_SIDE, MODEL_SIDE, 1)

    assert rejected.value.reason == case.reason
    assert rejected.value.detail
    assert str(rejected.value).startswith(f"{case.reason}: ")


def test_every_case_is_named_uniquely():
    assert len({case.name for case in CASES}) == len(CASES)


def test_pillow_alone_returns_garbage_for_corrupt_scan_data():
    """Why the strict pass exists: Pillow swallows libjpeg's corrupt-data warnings."""
    damaged = jpeg_corrupt_scan()
    with Image.open(io.BytesIO(damaged)) as image:
        image.load()  # no error...
        garbage = image.convert("L")
    assert _mean_abs_diff(garbage, reference_image()) > 0.05  # ...yet the pixels changed
    with pytest.raises(ValueError, match="Corrupt JPEG data"):
        simplejpeg.decode_jpeg(damaged, colorspace="GRAY", strict=True)


def test_the_real_radiographs_pass_the_strict_check():
    originals = sorted(FULLRES_DIR.glob("*/*.jpeg"))
    assert len(originals) == 200
    for path in originals[::10]:
        decode(path.read_bytes(), target_size=(MODEL_SIDE, MODEL_SIDE))


def test_truncation_is_refused_even_if_pillow_was_told_to_load_truncated_images(monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)

    with pytest.raises(ImageRejected) as rejected:
        decode(truncated_jpeg())

    assert rejected.value.reason == "truncated"


@pytest.mark.parametrize("make_bomb", [png_bomb, jpeg_bomb_just_over_cap])
def test_decompression_bombs_are_refused_from_the_header_without_decoding(monkeypatch, make_bomb):
    def must_not_decode(*args, **kwargs):
        raise AssertionError("a decoder ran on a decompression bomb")

    monkeypatch.setattr(ImageFile.ImageFile, "load", must_not_decode)
    monkeypatch.setattr(simplejpeg, "decode_jpeg", must_not_decode)
    bomb = make_bomb()
    assert len(bomb) < 2_000

    with pytest.raises(ImageRejected) as rejected:
        decode(bomb)

    assert rejected.value.reason == "too_many_pixels"


def test_the_pixel_cap_is_far_below_pillows_and_above_a_50mp_radiograph():
    assert 50_000_000 <= images.MAX_PIXELS <= Image.MAX_IMAGE_PIXELS * 2 // 3


@pytest.mark.parametrize(("name", "format_name"), [("gif", "GIF"), ("bmp", "BMP"), ("tiff", "TIFF"), ("webp", "WebP")])
def test_no_decoder_but_jpeg_and_png_ever_sees_the_bytes(monkeypatch, name, format_name):
    Image.init()
    for fmt, (factory, accept) in list(Image.OPEN.items()):
        if fmt not in ("JPEG", "PNG", "MPO"):
            def refuse(*args, _fmt=fmt, **kwargs):
                raise AssertionError(f"Pillow's {_fmt} decoder was consulted")
            monkeypatch.setitem(Image.OPEN, fmt, (refuse, accept))
    case = next(c for c in INVALID_CASES if c.name == name)

    with pytest.raises(ImageRejected) as rejected:
        decode(case.make())

    assert rejected.value.reason == "unsupported_format"
    assert rejected.value.detail.startswith(format_name)


def test_a_jpeg_signature_with_a_broken_header_is_corrupt_not_unknown():
    with pytest.raises(ImageRejected) as rejected:
        decode(reference_bytes()[:40])

    assert rejected.value.reason in ("corrupt", "truncated")
