"""Decoding and preprocessing of X-ray images.

This is the one implementation used by training evaluation, the CLI and the Lambda,
so a model sees exactly the same pixels wherever it runs. Anything that is not a
usable image raises `ImageRejected` with a short machine-readable `reason`:

    empty               the object has zero bytes
    not_an_image        text, PDF or anything else that is no image at all
    unsupported_format  an image, but not JPEG or PNG (GIF, BMP, TIFF, WebP, DICOM, ...)
    too_many_pixels     the header declares more than MAX_PIXELS (refused before decoding)
    too_small           a side shorter than MIN_SIDE
    unsupported_mode    a pixel layout we cannot map to greyscale/RGB
    truncated           the file, or a PNG's compressed image data, ends before the last row
    corrupt             the data fails its integrity checks or cannot be decoded

Only Pillow's JPEG and PNG decoders are ever used. Pillow hides libjpeg's warnings
(corrupt entropy-coded data decodes "successfully" into grey or smeared blocks), so
JPEG scan data is first checked by libjpeg-turbo in strict mode (simplejpeg), and PNG
chunks by their CRCs and their image data by its row count, before Pillow decodes the pixels.

Metadata damage is not pixel damage: an EXIF/XMP block that cannot be read, or an
orientation of an unexpected type or value, is ignored (the image stays as stored) and
said in `DecodedImage.ignored_metadata`; it never rejects the image.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
import simplejpeg
from PIL import ExifTags, Image, ImageFile, UnidentifiedImageError

from .formats import DicomFacts

SUPPORTED_FORMATS = ("JPEG", "PNG")
# Pillow's JPEG factory reports multi-picture JPEGs (some camera/PACS exports) as MPO;
# the first picture is an ordinary baseline/progressive JPEG.
_JPEG_FORMATS = ("JPEG", "MPO")
# JPEG modes decoded in one strict libjpeg-turbo pass; others (CMYK) are checked, then Pillow decodes.
_STRICT_JPEG_MODES = ("L", "RGB")
# A declared size above this is refused from the header, before any decoding: real
# radiographs stay below ~50 MP, and Pillow's own bomb limits (~89 MP warns, ~179 MP
# fails) are far too lax for a 1-2 GB Lambda.
MAX_PIXELS = 52_000_000
MIN_SIDE = 64
RESAMPLING = Image.Resampling.BILINEAR

# Modes that map onto 8-bit greyscale or RGB without guessing.
_DIRECT_MODES = {"L": "L", "RGB": "RGB", "1": "L", "P": "RGB", "PA": "RGB",
                 "LA": "L", "RGBA": "RGB", "RGBX": "RGB", "CMYK": "RGB", "YCbCr": "RGB"}
# High bit-depth modes (16-bit PNG exports, float) are windowed to their own range.
_WIDE_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8\xff"
# How to stand up an image stored with each EXIF orientation (1 is upright already);
# 5-8 store it transposed, so the upright width is the stored height.
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
            4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
            7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}
# PNG colour type -> samples per pixel (IHDR).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
# Adam7 passes: first column, first row, column step, row step.
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
# The PNG row check inflates into buffers of at most this size, whatever the image's size.
_INFLATE_CHUNK = 1 << 20


class ImageRejected(ValueError):
    """A permanent problem with the input: retrying cannot help."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        # A refused DICOM object's identifiers (pneumoscan.formats.DicomFacts), else None.
        self.dicom: DicomFacts | None = None


@dataclass(frozen=True)
class DecodedImage:
    """An upright 8-bit image ready for `to_model_input`, plus what the source was."""

    image: Image.Image
    width: int   # of the upright source image, before any reduced decode
    height: int
    format: str
    mode: str
    # What metadata was unusable and ignored (the image is as stored), else None.
    ignored_metadata: str | None = None
    # A DICOM source's identifiers and header facts (pneumoscan.formats.DicomFacts), else None.
    dicom: DicomFacts | None = None


def decode(data: bytes, *, target_size: tuple[int, int] | None = None) -> DecodedImage:
    """Decode JPEG or PNG bytes into an upright 8-bit L or RGB image.

    With `target_size` (width, height), JPEGs are decoded at the smallest DCT scale
    (1/2, 1/4, 1/8) that still covers it; that is several times faster on
    multi-megapixel radiographs and the later resize makes the result equivalent.
    """
    if not data:
        raise ImageRejected("empty", "the object has zero bytes")
    image = _open_header(data)
    width, height = image.size
    source_format, source_mode = image.format or "unknown", image.mode
    if width * height > MAX_PIXELS:
        raise ImageRejected(
            "too_many_pixels", f"{width}x{height} declares more than {MAX_PIXELS} pixels")
    if min(width, height) < MIN_SIDE:
        raise ImageRejected("too_small", f"{width}x{height} is below the {MIN_SIDE} px minimum side")
    if source_mode not in _DIRECT_MODES and source_mode not in _WIDE_MODES:
        raise ImageRejected("unsupported_mode", f"pixel mode {source_mode} is not supported")

    try:
        if source_format in _JPEG_FORMATS and source_mode in _STRICT_JPEG_MODES:
            image = _decode_jpeg_strict(data, image, target_size)
        else:
            if source_format in _JPEG_FORMATS:
                _verify_jpeg_scan(data)
                if target_size is not None:
                    image.draft(_DIRECT_MODES.get(source_mode, "RGB"), target_size)
            else:
                _verify_png_chunks(data)
            image.load()
            if source_format == "PNG" and _bottom_rows_blank(image):
                _verify_png_rows(data)
    except ImageRejected:
        raise
    except (OSError, SyntaxError, ValueError, struct.error, zlib.error) as exc:
        raise _decode_failure(source_format, exc) from exc

    # A PNG's eXIf chunk may follow its image data: read the metadata once the pixels are in.
    orientation, ignored_metadata = _orientation(image.info)
    if orientation in _UPRIGHT:
        image = image.transpose(_UPRIGHT[orientation])
    if orientation in _TRANSPOSED_ORIENTATIONS:
        width, height = height, width
    return DecodedImage(_to_8bit(image), width, height, source_format, source_mode, ignored_metadata)


def _orientation(info: dict) -> tuple[int, str | None]:
    """The EXIF (or XMP) orientation, 1 to 8, and what was ignored when there is none usable.

    Pillow's own lookup runs on a bare image holding only the metadata: the opened file
    swallows EXIF errors while it reads the DPI and would hide why nothing was applied.
    Any failure in there is metadata damage, never a reason to lose the pixels.
    """
    carrier = Image.Image()
    carrier.info = dict(info)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "tag had too many entries" and the like
            orientation = carrier.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception as exc:  # noqa: BLE001 - any parser error in metadata leaves the image as stored
        # The parser's message may quote the metadata: the note names its type only.
        return 1, f"EXIF/XMP metadata unreadable ({type(exc).__name__}), orientation not applied"
    if isinstance(orientation, int) and not isinstance(orientation, bool) and 1 <= orientation <= 8:
        return orientation, None
    return 1, "the EXIF orientation is not a number from 1 to 8, not applied"


def _open_header(data: bytes) -> ImageFile.ImageFile:
    """Parse only the header, with no decoder but JPEG's and PNG's allowed to look."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(
            "too_many_pixels", f"the header declares more than {MAX_PIXELS} pixels ({exc})") from exc
    except UnidentifiedImageError as exc:
        if data.startswith((_JPEG_SOI, _PNG_SIGNATURE)):
            kind = "JPEG" if data.startswith(_JPEG_SOI) else "PNG"
            raise ImageRejected("corrupt", f"{kind} signature but its header cannot be parsed") from exc
        other = _sniff_other_format(data)
        if other:
            raise ImageRejected(
                "unsupported_format",
                f"{other} is not supported, only {' and '.join(SUPPORTED_FORMATS)}") from exc
        raise ImageRejected(
            "not_an_image", f"{_describe_non_image(data)}, not a {' or '.join(SUPPORTED_FORMATS)} image"
        ) from exc
    except (OSError, ValueError, EOFError) as exc:
        # A JPEG or PNG plugin accepted the signature, then the header ran out or made no sense.
        raise _decode_failure("image header", exc) from exc


# Signatures of image formats we refuse by name (so the reason says what was sent),
# checked without handing the bytes to any of Pillow's other decoders.
_OTHER_SIGNATURES = (
    ("GIF", lambda d: d[:6] in (b"GIF87a", b"GIF89a")),
    ("BMP", lambda d: d[:2] == b"BM" and len(d) > 18
        and struct.unpack_from("<I", d, 14)[0] in (12, 40, 52, 56, 64, 108, 124)),
    ("TIFF", lambda d: d[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")),
    ("WebP", lambda d: d[:4] == b"RIFF" and d[8:12] == b"WEBP"),
    ("DICOM", lambda d: d[128:132] == b"DICM"),
    ("JPEG 2000", lambda d: d[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n" or d[:4] == b"\xff\x4f\xff\x51"),
    ("HEIF/AVIF", lambda d: d[4:8] == b"ftyp" and d[8:12] in (b"heic", b"heix", b"mif1", b"avif", b"avis")),
)


def _sniff_other_format(data: bytes) -> str | None:
    return next((name for name, matches in _OTHER_SIGNATURES if matches(data)), None)


def _describe_non_image(data: bytes) -> str:
    if data.startswith(b"%PDF-"):
        return "a PDF document"
    head = data[:4096]
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the 4 KiB boundary is still text.
        if exc.start < len(head) - 4:
            return "unrecognised binary data"
    return "text" if b"\x00" not in head else "unrecognised binary data"


def _decode_jpeg_strict(data: bytes, header: ImageFile.ImageFile,
                        target_size: tuple[int, int] | None) -> Image.Image:
    """Greyscale or RGB JPEG pixels from ONE strict libjpeg-turbo pass (see `_verify_jpeg_scan`).

    Entropy decoding is most of the cost of a large JPEG, so checking the scan and then
    decoding it again with Pillow took twice as long. The DCT scale is the one Pillow's
    `draft` picks (the smallest 1/2, 1/4, 1/8 that still covers `target_size`), and the
    pixels are identical to Pillow's: both are libjpeg-turbo with the same settings.
    """
    width, height = header.size
    factor = 1
    if target_size is not None:
        fits = min(width // target_size[0], height // target_size[1])
        factor = next((scale for scale in (8, 4, 2) if fits >= scale), 1)
    pixels = _strict_jpeg(data, colorspace="GRAY" if header.mode == "L" else "RGB", min_factor=factor,
                          min_width=-(-width // factor), min_height=-(-height // factor))
    image = Image.fromarray(pixels[..., 0] if header.mode == "L" else pixels, header.mode)
    image.info.update(header.info)  # EXIF/XMP orientation for exif_transpose
    return image


def _verify_jpeg_scan(data: bytes) -> None:
    """Run libjpeg-turbo over the entropy-coded data with its warnings made errors.

    libjpeg treats a bad Huffman code, a scan that ends early or junk before a marker
    as warnings and keeps going; Pillow silences them and returns the damaged pixels.
    The smallest IDCT scale keeps this pass cheap: the scan is parsed in full anyway.
    """
    _strict_jpeg(data, colorspace="GRAY", min_factor=8)


def _strict_jpeg(data: bytes, **options) -> np.ndarray:
    try:
        return simplejpeg.decode_jpeg(data, strict=True, **options)
    except ValueError as exc:
        message = str(exc)
        reason = "truncated" if "Premature end of JPEG file" in message else "corrupt"
        raise ImageRejected(reason, f"JPEG data is damaged ({message})") from exc


def _verify_png_chunks(data: bytes) -> None:
    """Walk the chunks to IEND, checking every CRC (Pillow skips the IDAT ones)."""
    for _ in _png_chunks(data):
        pass


def _bottom_rows_blank(image: Image.Image) -> bool:
    """Whether the last or the second-last row, as decoded, is all zero bytes: what Pillow
    leaves where a PNG's compressed data ended early (it stops at the end of the zlib stream
    and keeps no count of the rows it got); an interlaced image's last pass fills only every
    other row. Only then is the stream inflated again to count its rows, so the common case
    costs two rows' worth of bytes, not a second inflate."""
    width, height = image.size
    return any(not image.crop((0, row, width, row + 1)).tobytes().strip(b"\0")
               for row in range(max(0, height - 2), height))


def _verify_png_rows(data: bytes) -> None:
    """Check that the image data inflates to every row the header declares: a short stream
    sealed with valid CRCs and an IEND would otherwise be scored as a mostly black image.
    The inflate runs in bounded buffers and only counts bytes."""
    inflater, inflated, layout = zlib.decompressobj(), 0, None
    for chunk_type, payload in _png_chunks(data):
        if chunk_type == b"IHDR":
            layout = _PngLayout.from_header(payload)
        elif chunk_type == b"IDAT" and not inflater.eof:
            inflated += len(inflater.decompress(payload, _INFLATE_CHUNK))
            while inflater.unconsumed_tail and not inflater.eof:
                inflated += len(inflater.decompress(inflater.unconsumed_tail, _INFLATE_CHUNK))
    if layout is not None and inflated < layout.data_length:
        raise ImageRejected("truncated", f"PNG image data ends early: {layout.delivered(inflated)} of a "
                                         f"{layout.width}x{layout.height} image were delivered")


@dataclass(frozen=True)
class _PngLayout:
    """How many bytes of filtered rows a PNG's IHDR promises."""

    width: int
    height: int
    bits_per_pixel: int
    interlaced: bool

    @classmethod
    def from_header(cls, ihdr: bytes) -> _PngLayout:
        width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", ihdr[:13])
        if colour not in _PNG_CHANNELS:
            raise ImageRejected("corrupt", f"PNG colour type {colour} does not exist")
        return cls(width, height, depth * _PNG_CHANNELS[colour], interlace == 1)

    def _row_length(self, pixels: int) -> int:
        return 1 + -(-pixels * self.bits_per_pixel // 8)  # filter byte + packed samples

    @property
    def data_length(self) -> int:
        if not self.interlaced:
            return self.height * self._row_length(self.width)
        return sum(-(-(self.height - y0) // dy) * self._row_length(-(-(self.width - x0) // dx))
                   for x0, y0, dx, dy in _ADAM7 if self.width > x0 and self.height > y0)

    def delivered(self, inflated: int) -> str:
        if self.interlaced:
            return f"{inflated} of {self.data_length} bytes"
        return f"{inflated // self._row_length(self.width)} of {self.height} rows"


def _png_chunks(data: bytes):
    """(type, payload) of every chunk up to IEND, each checked against its CRC."""
    offset = len(_PNG_SIGNATURE)
    while True:
        if offset + 12 > len(data):
            raise ImageRejected("truncated", f"PNG ends at byte {len(data)} before its IEND chunk")
        length, chunk_type = struct.unpack_from(">I4s", data, offset)
        end = offset + 8 + length
        if end + 4 > len(data):
            raise ImageRejected(
                "truncated", f"PNG chunk {chunk_type!r} at byte {offset} runs past the end of the file")
        (stored_crc,) = struct.unpack_from(">I", data, end)
        if zlib.crc32(data[offset + 4:end]) != stored_crc:
            raise ImageRejected("corrupt", f"PNG chunk {chunk_type!r} at byte {offset} fails its CRC")
        yield chunk_type, data[offset + 8:end]
        if chunk_type == b"IEND":
            return
        offset = end + 4


def _decode_failure(source_format: str, exc: Exception) -> ImageRejected:
    message = str(exc)
    reason = "truncated" if "truncated" in message.lower() else "corrupt"
    return ImageRejected(reason, f"{source_format} data could not be decoded ({message})")


def _to_8bit(image: Image.Image) -> Image.Image:
    if image.mode in _WIDE_MODES:
        return _window_to_8bit(np.asarray(image))
    target = _DIRECT_MODES[image.mode]
    return image if image.mode == target else image.convert(target)


def _window_to_8bit(pixels: np.ndarray) -> Image.Image:
    """Stretch the image's own min..max range onto 0..255 (16-bit exports rarely use all 16 bits)."""
    low, high = pixels.min(), pixels.max()
    if pixels.dtype.kind == "u" and pixels.dtype.itemsize <= 2:
        # A lookup table keeps a 50 MP 16-bit image at one uint8 copy instead of several float32 ones.
        levels = np.arange(int(high) + 1, dtype=np.float32)
        table = _stretch(levels, float(low), float(high))
        return Image.fromarray(table[pixels], mode="L")
    return Image.fromarray(_stretch(pixels.astype(np.float32), float(low), float(high)), mode="L")


def _stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    scale = 255.0 / (high - low) if high > low else 0.0
    return np.clip((values - low) * scale, 0, 255).round().astype(np.uint8)


def to_model_input(image: Image.Image, height: int, width: int, channels: int) -> np.ndarray:
    """Stretch (no aspect preservation, as the training copies are) to a uint8 HxWxC array."""
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (width, height):
        image = image.resize((width, height), RESAMPLING)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels.reshape(height, width, channels)


def load_model_input(data: bytes, height: int, width: int, channels: int,
                     *, reduced_decode: bool = True) -> tuple[np.ndarray, DecodedImage]:
    """JPEG/PNG bytes -> model input array. Callers outside this module take
    `pneumoscan.scoring.decode`, the one preprocessing entry point (the handler, the CLI,
    training, the benchmarks), which sends DICOM to `pneumoscan.dicom` and the rest here."""
    decoded = decode(data, target_size=(width, height) if reduced_decode else None)
    return to_model_input(decoded.image, height, width, channels), decoded
