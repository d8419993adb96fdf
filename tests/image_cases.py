"""Every kind of input the pipeline must handle, generated at test time.

Valid-but-unusual images are derived from one real full-resolution radiograph in
../shared/data (never copied into the project); broken inputs are built from it or
from scratch. Each case says how it must end: `SCORED`, or `FAILED` with a reason
code from `pneumoscan.images`. The same table drives the decoder's unit tests, the
handler's end-to-end tests and the comparison of `pneumoscan score` with the Lambda.
"""

from __future__ import annotations

import io
import shutil
import struct
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from pneumoscan.images import MAX_PIXELS, MIN_SIDE
from pneumoscan_eval.datasets import FULLRES_SET, LABELS, default_data_dir

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = default_data_dir()
FULLRES_DIR = DATA_DIR / FULLRES_SET
# A greyscale original of about 1.9 MP (8-bit, like most of the sample).
REFERENCE_XRAY = FULLRES_DIR / "NORMAL" / "IM-0214-0001.jpeg"


def copy_data_subset(destination: Path, per_class: dict[str, int]) -> Path:
    """The first `per_class[folder]` images of each class under each `folder` of the shared
    data (e.g. "chest_xray/train"), copied into `destination` in the same layout."""
    for folder, count in per_class.items():
        for label in LABELS:
            (destination / folder / label).mkdir(parents=True)
            for image in sorted((DATA_DIR / folder / label).glob("*.jpeg"))[:count]:
                shutil.copy(image, destination / folder / label / image.name)
    return destination



@dataclass(frozen=True)
class InputCase:
    name: str
    suffix: str                      # what the object is called, whatever it really is
    make: Callable[[], bytes]
    status: str                      # "SCORED" or "FAILED"
    reason: str | None = None        # ImageRejected.reason when FAILED
    # Valid cases only: the upright 8-bit greyscale pixels the decoder must reproduce.
    upright: Callable[[], Image.Image] | None = None
    # Valid cases only: metadata the decoder cannot use and must say it ignored.
    ignores_metadata: bool = False


@cache
def reference_bytes() -> bytes:
    return REFERENCE_XRAY.read_bytes()


@cache
def reference_image() -> Image.Image:
    """The reference radiograph as upright 8-bit greyscale, fully decoded."""
    with Image.open(io.BytesIO(reference_bytes())) as image:
        return image.convert("L")


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _scan_start(jpeg: bytes) -> int:
    """Offset of the first byte of entropy-coded data after the first SOS segment."""
    sos = jpeg.index(b"\xff\xda")
    (length,) = struct.unpack_from(">H", jpeg, sos + 2)
    return sos + 2 + length


# --- valid but unusual -------------------------------------------------------------

def png_16bit_grey() -> bytes:
    # A 12-bit detector range inside a 16-bit container, as DICOM-to-PNG exports write it.
    pixels = np.asarray(reference_image(), dtype=np.uint16) * 16 + 200
    return _encode(Image.fromarray(pixels), "PNG")


def png_16bit_expected() -> Image.Image:
    # The decoder windows to the image's own range: the 12-bit data stretched back to 0..255.
    pixels = np.asarray(reference_image(), dtype=np.float32)
    low, high = pixels.min(), pixels.max()
    return Image.fromarray(((pixels - low) * 255.0 / (high - low)).round().astype(np.uint8), "L")


def png_rgba() -> bytes:
    rgba = reference_image().convert("RGBA")
    rgba.putalpha(255)
    return _encode(rgba, "PNG")


def png_palette() -> bytes:
    # 256 grey levels fit a palette exactly, so nothing is lost.
    return _encode(reference_image().convert("P", palette=Image.Palette.ADAPTIVE, colors=256), "PNG")


def png_grey_8bit() -> bytes:
    return _encode(reference_image(), "PNG")


def jpeg_cmyk() -> bytes:
    return _encode(reference_image().convert("RGB").convert("CMYK"), "JPEG", quality=95)


def jpeg_progressive() -> bytes:
    return _encode(reference_image(), "JPEG", quality=95, progressive=True)


def jpeg_rgb() -> bytes:
    return _encode(reference_image().convert("RGB"), "JPEG", quality=95)


def jpeg_exif_rotated() -> bytes:
    """Stored rotated by 90 degrees, with EXIF orientation 6 saying how to stand it up."""
    stored = reference_image().transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    return _encode(stored, "JPEG", quality=95, exif=exif.tobytes())


def _tiff_ifd(entries: list[tuple[int, int, int, bytes]]) -> bytes:
    """A little-endian TIFF header and one IFD of raw (tag, type, count, value bytes) entries,
    written exactly as given, whatever the TIFF specification says the tag should hold."""
    values_at = 8 + 2 + 12 * len(entries) + 4
    directory, values = struct.pack("<H", len(entries)), b""
    for tag, field_type, count, value in sorted(entries):
        if len(value) <= 4:
            directory += struct.pack("<HHI", tag, field_type, count) + value.ljust(4, b"\0")
        else:
            directory += struct.pack("<HHII", tag, field_type, count, values_at + len(values))
            values += value
    return b"II*\0" + struct.pack("<I", 8) + directory + struct.pack("<I", 0) + values


def _with_jpeg_exif(jpeg: bytes, tiff: bytes) -> bytes:
    """`jpeg` with an APP1 Exif segment holding `tiff` right after its SOI marker."""
    payload = b"Exif\0\0" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


_ORIENTATION, _IMAGE_DESCRIPTION, _JPEG_TABLES = 0x0112, 0x010E, 0x015B
_SHORT, _ASCII, _FLOAT, _DOUBLE = 3, 2, 11, 12


def jpeg_exif_rotated_with_mistyped_tags() -> bytes:
    """A valid orientation 6 next to tags of a type the TIFF specification never gives them
    (a FLOAT description, DOUBLE JPEG tables): Pillow cannot write such EXIF back."""
    stored = _encode(reference_image().transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95)
    return _with_jpeg_exif(stored, _tiff_ifd([
        (_ORIENTATION, _SHORT, 1, struct.pack("<H", 6)),
        (_IMAGE_DESCRIPTION, _FLOAT, 2, struct.pack("<ff", 1.5, -2.5)),
        (_JPEG_TABLES, _DOUBLE, 1, struct.pack("<d", 3.25))]))


def jpeg_exif_orientation_as_text() -> bytes:
    """Orientation written as the text "6" instead of a SHORT: unusable, so not applied."""
    return _with_jpeg_exif(jpeg_grey_upright(), _tiff_ifd([(_ORIENTATION, _ASCII, 2, b"6\0")]))


def jpeg_exif_short_tiff_header() -> bytes:
    return _with_jpeg_exif(jpeg_grey_upright(), b"II*")


def jpeg_exif_bad_byte_order() -> bytes:
    return _with_jpeg_exif(jpeg_grey_upright(), b"XX*\0\x08\0\0\0" + bytes(16))


def png_exif_garbage() -> bytes:
    png = png_grey_8bit()
    first_idat = png.index(b"IDAT") - 4
    return png[:first_idat] + _png_chunk(b"eXIf", b"not a TIFF block at all") + png[first_idat:]


def jpeg_grey_upright() -> bytes:
    return _encode(reference_image(), "JPEG", quality=95)


@cache
def jpeg_50mp() -> bytes:
    """About 50 MP (7100 x 7040), below MAX_PIXELS: a large but plausible radiograph."""
    big = reference_image().resize((7100, 7040), Image.Resampling.BILINEAR)
    return _encode(big, "JPEG", quality=85)


def jpeg_50mp_expected() -> Image.Image:
    return reference_image().resize((7100, 7040), Image.Resampling.BILINEAR)


# --- everything else ---------------------------------------------------------------

def zero_bytes() -> bytes:
    return b""


def text_named_jpeg() -> bytes:
    return "patient list: Ünal, Zoë, 王芳\nnot an image at all\n".encode() * 20


def pdf_named_jpeg() -> bytes:
    return (b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
            b"2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n")


def truncated_jpeg() -> bytes:
    data = reference_bytes()
    return data[: len(data) * 2 // 3]


def jpeg_corrupt_scan() -> bytes:
    """A zeroed 512-byte sector in the middle of the scan: Pillow alone decodes it 'fine'."""
    data = bytearray(reference_bytes())
    middle = (_scan_start(bytes(data)) + len(data)) // 2
    data[middle:middle + 512] = bytes(512)
    return bytes(data)


def png_corrupt_idat() -> bytes:
    data = bytearray(png_grey_8bit())
    idat = data.index(b"IDAT")
    data[idat + 200:idat + 216] = bytes(16)
    return bytes(data)


def truncated_png() -> bytes:
    data = png_grey_8bit()
    return data[: len(data) // 2]


def _png_with_rows(width: int, height: int, rows: bytes) -> bytes:
    """An 8-bit greyscale PNG whose one IDAT holds a complete zlib stream of `rows` (filter
    byte + pixels each), however many rows the header declares: every CRC is valid."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(rows))
            + _png_chunk(b"IEND", b""))


def png_rows_missing() -> bytes:
    """The reference radiograph's top half only, under a header declaring all of it."""
    pixels = np.asarray(reference_image())
    height, width = pixels.shape
    rows = b"".join(b"\x00" + row.tobytes() for row in pixels[: height // 2])
    return _png_with_rows(width, height, rows)


def png_huge_header_ten_rows() -> bytes:
    """A 7000 x 7000 header (49 MP, under the pixel cap) over ten rows of data."""
    return _png_with_rows(7000, 7000, (b"\x00" + bytes(range(256)) * 27 + bytes(88)) * 10)


def gif_image() -> bytes:
    return _encode(reference_image().resize((256, 256)), "GIF")


def bmp_image() -> bytes:
    return _encode(reference_image().resize((256, 256)), "BMP")


def tiff_image() -> bytes:
    return _encode(reference_image().resize((256, 256)), "TIFF")


def webp_image() -> bytes:
    return _encode(reference_image().resize((256, 256)), "WEBP")


def too_small_jpeg() -> bytes:
    return _encode(reference_image().resize((MIN_SIDE - 1, 200)), "JPEG")


def png_bomb() -> bytes:
    """A few hundred bytes that declare 20000 x 20000 pixels (400 MP) of zeros."""
    width = height = 20_000
    row = b"\x00" + bytes(width)  # filter byte + one greyscale row
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(64)) + compressor.flush()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def jpeg_bomb_just_over_cap() -> bytes:
    """A real 64x64 JPEG whose SOF0 is edited to declare just over MAX_PIXELS (far below Pillow's limit)."""
    data = bytearray(_encode(reference_image().resize((64, 64)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    side = int(MAX_PIXELS ** 0.5) + 8
    struct.pack_into(">HH", data, sof + 5, side, side)
    return bytes(data)


VALID_CASES = [
    InputCase("png_16bit_grey", ".png", png_16bit_grey, "SCORED", upright=png_16bit_expected),
    InputCase("png_rgba", ".png", png_rgba, "SCORED", upright=reference_image),
    InputCase("png_palette", ".PNG", png_palette, "SCORED", upright=reference_image),
    InputCase("jpeg_cmyk", ".jpg", jpeg_cmyk, "SCORED", upright=reference_image),
    InputCase("jpeg_progressive", ".jpeg", jpeg_progressive, "SCORED", upright=reference_image),
    InputCase("jpeg_rgb", ".JPG", jpeg_rgb, "SCORED", upright=reference_image),
    InputCase("jpeg_exif_rotated", ".jpeg", jpeg_exif_rotated, "SCORED", upright=reference_image),
    InputCase("jpeg_exif_rotated_with_mistyped_tags", ".jpeg", jpeg_exif_rotated_with_mistyped_tags, "SCORED",
              upright=reference_image),
    InputCase("jpeg_exif_orientation_as_text", ".jpeg", jpeg_exif_orientation_as_text, "SCORED",
              upright=reference_image, ignores_metadata=True),
    InputCase("jpeg_exif_short_tiff_header", ".jpeg", jpeg_exif_short_tiff_header, "SCORED",
              upright=reference_image, ignores_metadata=True),
    InputCase("jpeg_exif_bad_byte_order", ".jpeg", jpeg_exif_bad_byte_order, "SCORED",
              upright=reference_image, ignores_metadata=True),
    InputCase("png_exif_garbage", ".png", png_exif_garbage, "SCORED", upright=reference_image,
              ignores_metadata=True),
]
LARGE_CASE = InputCase("jpeg_50mp", ".jpeg", jpeg_50mp, "SCORED", upright=jpeg_50mp_expected)

INVALID_CASES = [
    InputCase("zero_bytes", ".jpeg", zero_bytes, "FAILED", "empty"),
    InputCase("text_named_jpeg", ".jpeg", text_named_jpeg, "FAILED", "not_an_image"),
    InputCase("pdf_named_jpeg", ".jpeg", pdf_named_jpeg, "FAILED", "not_an_image"),
    InputCase("truncated_jpeg", ".jpeg", truncated_jpeg, "FAILED", "truncated"),
    InputCase("jpeg_corrupt_scan", ".jpeg", jpeg_corrupt_scan, "FAILED", "corrupt"),
    InputCase("png_corrupt_idat", ".png", png_corrupt_idat, "FAILED", "corrupt"),
    InputCase("truncated_png", ".png", truncated_png, "FAILED", "truncated"),
    InputCase("png_rows_missing", ".png", png_rows_missing, "FAILED", "truncated"),
    InputCase("png_huge_header_ten_rows", ".png", png_huge_header_ten_rows, "FAILED", "truncated"),
    InputCase("gif", ".jpeg", gif_image, "FAILED", "unsupported_format"),
    InputCase("bmp", ".png", bmp_image, "FAILED", "unsupported_format"),
    InputCase("tiff", ".jpeg", tiff_image, "FAILED", "unsupported_format"),
    InputCase("webp", ".jpeg", webp_image, "FAILED", "unsupported_format"),
    InputCase("too_small", ".jpeg", too_small_jpeg, "FAILED", "too_small"),
    InputCase("png_bomb_400mp", ".png", png_bomb, "FAILED", "too_many_pixels"),
    InputCase("jpeg_just_over_cap", ".jpeg", jpeg_bomb_just_over_cap, "FAILED", "too_many_pixels"),
]

CASES = VALID_CASES + INVALID_CASES
