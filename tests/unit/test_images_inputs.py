"""Every kind of input through `pneumoscan.images`: scored correctly or rejected with a clear reason."""

from __future__ import annotations

import io
import random
import struct
import zlib

import numpy as np
import pytest
import simplejpeg
from PIL import Image, ImageFile, TiffTags

from image_cases import (CASES, FULLRES_DIR, INVALID_CASES, LARGE_CASE, VALID_CASES, _encode, _png_chunk,
                         _tiff_ifd, _with_jpeg_exif, jpeg_bomb_just_over_cap, jpeg_corrupt_scan, png_bomb,
                         png_huge_header_ten_rows, reference_bytes, reference_image, truncated_jpeg)
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


@pytest.mark.parametrize("case", VALID_CASES, ids=lambda c: c.name)
def test_ignored_metadata_is_noted_only_where_some_was_ignored(case):
    decoded = decode(case.make(), target_size=(MODEL_SIDE, MODEL_SIDE))

    assert bool(decoded.ignored_metadata) == case.ignores_metadata, decoded.ignored_metadata


def test_no_exif_content_ever_loses_the_image():
    """Orientation 6 beside random tags of random types and counts, as a fuzzer sends them:
    every image decodes, upright when the orientation is usable, as stored otherwise."""
    rng = random.Random(13)
    stored = reference_image().resize((240, 300)).transpose(Image.Transpose.ROTATE_90)
    jpeg = _encode(stored, "JPEG")
    sizes = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
    tags = sorted(TiffTags.TAGS_V2)
    for _ in range(300):
        entries = {0x0112: (0x0112, 3, 1, b"\x06\x00")}
        for _ in range(rng.randint(1, 3)):
            tag, field_type, count = rng.choice(tags), rng.randint(1, 13), rng.randint(1, 4)
            entries[tag] = (tag, field_type, count, rng.randbytes(sizes[field_type] * count))
        decoded = decode(_with_jpeg_exif(jpeg, _tiff_ifd(list(entries.values()))))
        assert decoded.image.size in ((240, 300), (300, 240))
        assert (decoded.width, decoded.height) == decoded.image.size


def test_a_png_whose_data_ends_early_says_how_many_rows_came():
    with pytest.raises(ImageRejected) as rejected:
        decode(png_huge_header_ten_rows())

    assert rejected.value.reason == "truncated"
    assert "10 of 7000 rows" in rejected.value.detail


def test_an_interlaced_png_missing_only_the_end_of_its_last_pass_is_truncated():
    image = reference_image().resize((203, 97))
    complete = _adam7(image, _encode(image, "PNG"))
    idat = complete.index(b"IDAT")
    (length,) = struct.unpack_from(">I", complete, idat - 4)
    passes = zlib.decompress(complete[idat + 4:idat + 4 + length])
    short = complete[:idat - 4] + _png_chunk(b"IDAT", zlib.compress(passes[:-204 * 3])) + _png_chunk(b"IEND", b"")

    with pytest.raises(ImageRejected) as rejected:
        decode(short)

    assert rejected.value.reason == "truncated"


def test_a_complete_png_with_black_bottom_rows_is_scored():
    pixels = np.asarray(reference_image().resize((300, 240))).copy()
    pixels[-5:] = 0

    decoded = decode(_encode(Image.fromarray(pixels), "PNG"))

    assert np.array_equal(np.asarray(decoded.image), pixels)


@pytest.mark.parametrize("interlace", [False, True], ids=["progressive rows", "adam7"])
@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "P", "1", "I;16"])
def test_complete_pngs_of_every_layout_pass_the_row_count(mode, interlace):
    grey = reference_image().resize((203, 97))
    image = Image.fromarray(np.asarray(grey, dtype=np.uint16) * 200) if mode == "I;16" else grey.convert(mode)
    plain = _encode(image, "PNG")

    decoded = decode(_adam7(image, plain) if interlace else plain)

    assert decoded.image.size == (203, 97)
    assert np.array_equal(np.asarray(decoded.image), np.asarray(decode(plain).image))


def _adam7(image: Image.Image, png: bytes) -> bytes:
    """`png` re-encoded with interlace method 1 (Pillow writes none): the image's packed rows
    regrouped into the seven Adam7 passes, each row with filter type 0."""
    width, height, depth, colour = struct.unpack_from(">IIBB", png, 16)
    raw = image.tobytes("raw", {"I;16": "I;16B"}.get(image.mode, image.mode))
    stride = len(raw) // height
    bits_per_pixel = depth * {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
    passes = bytearray()
    for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
                           (0, 1, 1, 2)):
        for y in range(y0, height, dy):
            bits = "".join(f"{byte:08b}" for byte in raw[y * stride:(y + 1) * stride])
            picked = "".join(bits[x * bits_per_pixel:(x + 1) * bits_per_pixel] for x in range(x0, width, dx))
            if picked:
                picked += "0" * (-len(picked) % 8)
                passes += b"\x00" + int(picked, 2).to_bytes(len(picked) // 8, "big")
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 1)
    palette = png[png.index(b"PLTE") - 4:png.index(b"IDAT") - 4] if b"PLTE" in png else b""
    return (png[:8] + _png_chunk(b"IHDR", header) + palette + _png_chunk(b"IDAT", zlib.compress(bytes(passes)))
            + _png_chunk(b"IEND", b""))
