"""Images that are not paediatric chest X-rays, made here, to measure what `pneumoscan.ood` flags.

Every probe is encoded (PNG or JPEG) and goes through `pneumoscan.images` like an upload.
Nothing is downloaded: photos come from matplotlib's bundled sample data (skipped when
matplotlib is absent), everything else is drawn with numpy and Pillow from a seed.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

SIZE = 448
WORDS = ("patient", "report", "invoice", "total", "date", "the", "of", "and", "chest", "radiograph",
         "findings", "impression", "normal", "signature", "page", "amount", "reference", "clinic")


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _grey(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), "L")


def blanks(rng: np.random.Generator) -> list[bytes]:
    """Constant black, grey and white pages, and the same with a little sensor noise."""
    probes = [encode(Image.new(mode, (SIZE, SIZE), value))
              for mode, value in (("L", 0), ("L", 128), ("L", 255), ("L", 40), ("L", 220), ("RGB", (200, 200, 200)))]
    for level in (0, 128, 255):
        probes.append(encode(_grey(level + rng.normal(0, 1.5, (SIZE, SIZE)))))
    return probes


def noise(rng: np.random.Generator, count: int = 12) -> list[bytes]:
    """Uniform, Gaussian, salt-and-pepper and coarse block noise."""
    probes = []
    for index in range(count):
        kind = index % 4
        if kind == 0:
            values = rng.uniform(0, 256, (SIZE, SIZE))
        elif kind == 1:
            values = rng.normal(128, rng.uniform(20, 70), (SIZE, SIZE))
        elif kind == 2:
            values = np.where(rng.random((SIZE, SIZE)) < 0.5, 0, 255)
        else:
            blocks = rng.uniform(0, 256, (SIZE // 16, SIZE // 16))
            values = np.kron(blocks, np.ones((16, 16)))
        probes.append(encode(_grey(values), "PNG" if index % 2 else "JPEG"))
    return probes


def _smooth_field(rng: np.random.Generator, scale: float) -> np.ndarray:
    """Gaussian random field: white noise low-passed in the Fourier domain, stretched to 0-255."""
    frequencies = np.fft.fftfreq(SIZE)
    radius = np.hypot(*np.meshgrid(frequencies, frequencies))
    spectrum = np.fft.fft2(rng.normal(size=(SIZE, SIZE))) * np.exp(-(radius * scale) ** 2)
    field = np.real(np.fft.ifft2(spectrum))
    return (field - field.min()) / (np.ptp(field) or 1) * 255


def textures(rng: np.random.Generator, count: int = 16) -> list[bytes]:
    """Smooth random fields (clouds, terrain), stripes, checkerboards, gradients and discs."""
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    probes = []
    for index in range(count):
        kind = index % 6
        if kind == 0:
            values = _smooth_field(rng, rng.uniform(8, 40))
        elif kind == 1:
            angle, period = rng.uniform(0, np.pi), rng.uniform(0.02, 0.2)
            values = 127.5 + 127.5 * np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period)
        elif kind == 2:
            cells = int(rng.integers(4, 24))
            values = ((np.floor(x * cells) + np.floor(y * cells)) % 2) * 255
        elif kind == 3:
            values = 255 * (x * rng.uniform(-1, 1) + y * rng.uniform(-1, 1))
            values = values - values.min()
        elif kind == 4:
            image = Image.new("L", (SIZE, SIZE), int(rng.integers(0, 256)))
            draw = ImageDraw.Draw(image)
            for _ in range(int(rng.integers(3, 12))):
                cx, cy, r = rng.integers(0, SIZE, 2).tolist() + [int(rng.integers(10, SIZE // 3))]
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=int(rng.integers(0, 256)))
            probes.append(encode(image))
            continue
        else:
            values = _smooth_field(rng, rng.uniform(2, 6))
        probes.append(encode(_grey(values), "JPEG" if index % 2 else "PNG"))
    return probes


def documents(rng: np.random.Generator, count: int = 12) -> list[bytes]:
    """Pages of text rendered with Pillow's bundled font: letters, forms, dark-mode screens."""
    probes = []
    for index in range(count):
        dark = index % 4 == 3
        page = Image.new("L", (SIZE, int(SIZE * 1.3)), 20 if dark else 250)
        draw = ImageDraw.Draw(page)
        size = int(rng.integers(10, 28))
        font = ImageFont.load_default(size=size)
        top = int(rng.integers(10, 40))
        while top < page.height - size:
            words = rng.choice(WORDS, int(rng.integers(2, 10)))
            draw.text((int(rng.integers(8, 40)), top), " ".join(words), fill=230 if dark else 15, font=font)
            top += int(size * rng.uniform(1.2, 2.2))
        if index % 3 == 1:  # a form: boxes around the text
            for _ in range(4):
                left, upper = int(rng.integers(0, SIZE // 2)), int(rng.integers(0, page.height // 2))
                draw.rectangle((left, upper, left + int(rng.integers(60, SIZE // 2)),
                                upper + int(rng.integers(30, 200))), outline=0, width=2)
        probes.append(encode(page, "JPEG" if index % 2 else "PNG"))
    return probes


def _sample_images() -> list[Image.Image]:
    """Photos and scientific images bundled with matplotlib (nothing is downloaded)."""
    try:
        import matplotlib
    except ImportError:
        return []
    folder = Path(matplotlib.get_data_path()) / "sample_data"
    found = []
    for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png"):
        try:
            found.append(Image.open(folder / name).convert("RGB"))
        except OSError:
            continue
    for name, key in (("jacksboro_fault_dem.npz", "elevation"), ("topobathy.npz", "topo")):
        try:
            with np.load(folder / name) as stored:
                values = stored[key].astype(np.float64)
            found.append(_grey((values - values.min()) / (np.ptp(values) or 1) * 255))
        except (OSError, ValueError, KeyError):
            continue
    try:  # an MRI head slice: medical, but no radiograph
        raw = gzip.decompress((folder / "s1045.ima.gz").read_bytes())
        values = np.frombuffer(raw, "<u2").astype(np.float64).reshape(256, 256)
        found.append(_grey(values / (values.max() or 1) * 255))
    except (OSError, ValueError):
        pass
    return found


def photos(rng: np.random.Generator, crops_per_image: int = 4) -> list[bytes]:
    """Each sample image whole, plus random crops (scale 0.4-0.9), as JPEG."""
    probes = []
    for image in _sample_images():
        probes.append(encode(image, "JPEG"))
        width, height = image.size
        for _ in range(crops_per_image):
            scale = rng.uniform(0.4, 0.9)
            w, h = max(64, int(width * scale)), max(64, int(height * scale))
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            probes.append(encode(image.crop((left, top, left + w, top + h)), "JPEG"))
    return probes


TRANSFORMS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "rotated 90": lambda image: image.transpose(Image.Transpose.ROTATE_90),
    "rotated 180": lambda image: image.transpose(Image.Transpose.ROTATE_180),
    "rotated 270": lambda image: image.transpose(Image.Transpose.ROTATE_270),
    "inverted": ImageOps.invert,
}


def transformed_xrays(xrays: Iterable[Image.Image], transform: Callable[[Image.Image], Image.Image]) -> list[bytes]:
    return [encode(transform(image.convert("L"))) for image in xrays]


def synthetic(seed: int = 0) -> dict[str, list[bytes]]:
    """The made-up non-X-ray probe sets, by name."""
    rng = np.random.default_rng(seed)
    sets = {"blank and near-constant": blanks(rng), "noise": noise(rng), "textures": textures(rng),
            "documents": documents(rng)}
    photo_probes = photos(rng)
    if photo_probes:
        sets["photos and scientific images"] = photo_probes
    return sets
