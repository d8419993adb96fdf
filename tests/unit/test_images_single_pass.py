"""Greyscale and RGB JPEGs are decoded in one strict libjpeg-turbo pass, with Pillow's pixels.

Entropy decoding dominates a 1-2 MP radiograph; verifying the scan and then decoding it
again with Pillow doubled the decode time (see benchmarks/RESULTS.md, decoding).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import simplejpeg
from PIL import Image, ImageFile

from image_cases import FULLRES_DIR
from pneumoscan import images

# Greyscale and RGB originals of different sizes (the sample holds both modes).
SAMPLES = sorted(FULLRES_DIR.glob("*/*.jpeg"))
GREY_AND_RGB = [path for path in SAMPLES if Image.open(path).mode == "L"][:3] + \
               [path for path in SAMPLES if Image.open(path).mode == "RGB"][:2]


def _pillow_decode(data: bytes, target_size: tuple[int, int] | None) -> Image.Image:
    """What the decoder did before: Pillow's draft + load."""
    image = Image.open(io.BytesIO(data))
    if target_size is not None:
        image.draft(image.mode, target_size)
    image.load()
    return image


@pytest.mark.parametrize("path", GREY_AND_RGB, ids=lambda path: path.name)
@pytest.mark.parametrize("target_size", [(224, 224), None], ids=["reduced", "full"])
def test_one_pass_gives_exactly_pillows_pixels(path, target_size):
    data = path.read_bytes()
    decoded = images.decode(data, target_size=target_size)
    expected = _pillow_decode(data, target_size)
    assert decoded.image.mode == expected.mode
    assert decoded.image.size == expected.size
    assert np.array_equal(np.asarray(decoded.image), np.asarray(expected))


def test_the_scan_is_entropy_decoded_once_and_never_by_pillow(monkeypatch):
    data = GREY_AND_RGB[0].read_bytes()
    calls = []
    real_decode = simplejpeg.decode_jpeg
    monkeypatch.setattr(simplejpeg, "decode_jpeg", lambda *a, **k: calls.append(k) or real_decode(*a, **k))
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("Pillow decoded the JPEG again"))
    decoded = images.decode(data, target_size=(224, 224))
    assert len(calls) == 1 and calls[0]["strict"] is True
    assert min(decoded.image.size) >= 224
