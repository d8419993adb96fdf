"""What happens to one X-ray: bytes in, score out.

Every caller that turns an image into a score comes through `Scorer.score`: the Lambda
handler, `pneumoscan score`, `report` and `evaluate`, the training shortcut check and the
benchmarks. The steps, in order:

1. size      `check_size`: a caller that knows the size before reading the bytes (an S3
             head, a file's stat) refuses an oversized object unread.
2. decode    `decode`: bytes -> upright 8-bit image -> the model's uint8 input array. The
             one decode step: the format is recognised from the bytes' signature (JPEG and
             PNG by `pneumoscan.images`, DICOM by `pneumoscan.dicom`, which also refuses
             what is no frontal chest radiograph and keeps the header's identifiers).
3. model     `PneumoniaModel.predict`: the lung-field segmenter (`pneumoscan.lungs`) finds
             the lungs and the network reads their crop, never the whole frame; out come
             the probability of the positive label, the feature map and the lung field;
             near the threshold the mirrored crop is run too and averaged in (model.json's
             `flip_average` band).
4. label     `ModelMetadata.label`: the threshold from model.json; a positive image also
             gets its subtype (bacterial or viral) from model.json's `subtype` head on the
             pooled features, or none and the warning `subtype_uncertain` inside its band.
5. heat map  `pneumoscan.cam`: class activation map of the label given, placed from the
             crop back onto the whole image, its shares (outside the lung field) and hot
             region; `pneumoscan.overlay` draws it as a PNG when the overlay policy asks for one.
             The heat map is an aid: if it fails the image is still scored, and
             `heat_map_error` says why.
6. warnings  a DICOM header's own (`adult_patient`), `lung_field_not_found` when the
             segmenter's mask failed its sanity checks (a default crop was read), then
             every `Check` the scorer was built with looks at the `Evidence` (pixels,
             prediction, label) and may return a warning code. A check may instead raise
             `ImageRejected` to refuse an image that must not be scored at all.

A permanent problem with the input raises `ImageRejected` (a short `reason` and a
`detail`); the caller records it as a FAILED result. Anything else (a bug, memory) is
not caught here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import cam, formats, images, lungs, ood, population
from .images import DecodedImage, ImageRejected
from .model import (
    SUBTYPE_UNCERTAIN, CamUnavailable, InputSpec, ModelLoadError, ModelMetadata, PneumoniaModel, Prediction,
    SubtypeCall,
)
from .settings import OVERLAY_POLICIES

# Stage names of `ImageScore.timings_ms` (also the handler's latency metrics).
DECODE, INFERENCE, HEAT_MAP = "decode", "inference", "overlay"

__all__ = ["OVERLAY_POLICIES", "Check", "Evidence", "HeatMap", "ImageRejected", "ImageScore", "Scorer",
           "check_size", "decode", "decode_image", "wants_overlay"]


@dataclass(frozen=True)
class Evidence:
    """What a warning check may look at: the decoded image, the model's input and its output."""

    image: DecodedImage
    pixels: np.ndarray  # (height, width, channels) uint8, exactly what the model saw
    prediction: Prediction  # batch of one
    probability: float
    label: str
    positive: bool

    @property
    def pooled_features(self) -> np.ndarray:
        """(k,) global-average-pooled feature map: the vector the model's dense head reads."""
        return self.prediction.feature_map[0].mean(axis=(0, 1))


# What each warning code tells a reader (the image is scored either way): shown by the HTML
# report and written into the DICOM structured report.
WARNING_MEANINGS = {
    "adult_patient": "Patient age outside the paediatric training population",
    lungs.LUNG_FIELD_NOT_FOUND: "Lungs not found where expected: the model read a default crop of the image",
    ood.OUT_OF_DISTRIBUTION: "Image unlike the training data: the score may mean little",
    population.ADULT_LIKE_IMAGE: "Image resembles adult X-rays; the model was trained on children aged 1-5",
    SUBTYPE_UNCERTAIN: "Bacterial or viral too close to call: no subtype is given",
}

# A warning check: returns a warning code (e.g. "out_of_distribution") or None.
Check = Callable[[Evidence], "str | None"]


@dataclass(frozen=True, eq=False)
class HeatMap:
    """The class activation map of the label given, measured on the upright image."""

    heat: np.ndarray  # (h, w) non-negative evidence on the model's feature grid
    summary: cam.CamSummary  # hot region (image pixels), border and outside-chest shares
    overlay_png: bytes | None  # only when the overlay policy asked for one

    @property
    def peak(self) -> float:
        return float(self.heat.max())

    def stored(self) -> bytes:
        """The compact form a result item keeps (cam.encode_heat): an overlay can be drawn from it later."""
        return cam.encode_heat(self.heat)


@dataclass(frozen=True, eq=False)
class ImageScore:
    """Everything known about one scored image."""

    probability: float  # of the positive label
    label: str
    positive: bool
    threshold: float
    model_version: str
    model_sha256: str
    image: DecodedImage  # the decoded picture and its source facts (size, format, mode)
    heat_map: HeatMap | None  # None only when it failed: see heat_map_error
    heat_map_error: str | None
    warnings: tuple[str, ...]  # the DICOM header's codes, those of the checks that fired, then the subtype's
    timings_ms: Mapping[str, float]  # wall time per stage
    cpu_ms: Mapping[str, float]  # CPU time per stage
    # A positive image's subtype call (model.json `subtype`); None for a negative one or a model without the head.
    subtype_call: SubtypeCall | None = None

    @property
    def subtype(self) -> str | None:
        """`bacterial` or `viral`; None when negative, without a head, or inside its uncertain band."""
        return self.subtype_call.subtype if self.subtype_call else None

    @property
    def subtype_probability(self) -> float | None:
        """P(viral | pneumonia), also inside the uncertain band; None when there is no call."""
        return self.subtype_call.probability if self.subtype_call else None

    @property
    def overlay_png(self) -> bytes | None:
        return self.heat_map.overlay_png if self.heat_map is not None else None


def check_size(size_bytes: int, limit_bytes: int) -> None:
    """Refuse an object above the size limit from its size alone, before reading it."""
    if size_bytes > limit_bytes:
        raise ImageRejected("object_too_large", f"{size_bytes} bytes is above the {limit_bytes}-byte limit")


def decode(data: bytes, spec: InputSpec) -> tuple[np.ndarray, DecodedImage]:
    """Bytes -> (model input array, decoded image). The only place input formats are told
    apart: each is recognised by its signature, anything unrecognised is refused with
    `not_an_image` or `unsupported_format`."""
    if formats.is_dicom(data[:formats.SNIFF_BYTES]):
        decoded = decode_image(data, target_size=(spec.width, spec.height))
        return images.to_model_input(decoded.image, spec.height, spec.width, spec.channels), decoded
    return images.load_model_input(data, spec.height, spec.width, spec.channels)


def decode_image(data: bytes, *, target_size: tuple[int, int] | None = None) -> DecodedImage:
    """Bytes -> upright 8-bit image: DICOM (by its bytes, not its name) or JPEG/PNG.

    DICOM support is imported on the first DICOM object only: pydicom, its codecs and
    their ~0.8 s import never touch a container that sees only JPEG and PNG.
    """
    if formats.is_dicom(data[:formats.SNIFF_BYTES]):
        from . import dicom
        return dicom.decode(data, target_size=target_size)
    return images.decode(data, target_size=target_size)


def wants_overlay(policy: str, positive: bool) -> bool:
    """The OverlayImages setting: `all`, `positives` or `none` of the scored images."""
    if policy not in OVERLAY_POLICIES:
        raise ValueError(f"overlay policy {policy!r} is not one of {', '.join(OVERLAY_POLICIES)}")
    return policy == "all" or (policy == "positives" and positive)


class Scorer:
    """A loaded model and the checks to run: `score(bytes)` is the whole path.

    Without `checks`, the model's own run: `pneumoscan.ood` refuses blank images and warns
    `out_of_distribution` with the statistics model.json names (a model without them is refused),
    and `pneumoscan.population` warns `adult_like_image` with the head of model.json's
    `population` section where it has one.
    """

    def __init__(self, model: PneumoniaModel, *, checks: Sequence[Check] | None = None):
        metadata = model.metadata
        if metadata.threshold is None:
            raise ModelLoadError(f"model {metadata.version} has no threshold: it cannot label a score")
        if metadata.cam is None:
            raise CamUnavailable(f"model {metadata.version} has no cam section: it cannot explain a score")
        if metadata.subtype is not None and metadata.subtype.weights.size != metadata.cam.weights.size:
            raise ModelLoadError(f"model {metadata.version}: its subtype head reads {metadata.subtype.weights.size} "
                                 f"features, the network pools {metadata.cam.weights.size}")
        if checks is None:
            try:
                checks = (ood.checks_for(model.model_dir, metadata.ood, metadata.sha256)
                          + population.checks_for(metadata.population, metadata.sha256))
            except (ood.OodStatsError, population.PopulationHeadError) as exc:
                raise ModelLoadError(f"model {metadata.version}: {exc}") from exc
        self.model = model
        self.checks = tuple(checks)

    @classmethod
    def load(cls, model_dir: Path | str | None = None, *, num_threads: int = 1,
             checks: Sequence[Check] | None = None) -> Scorer:
        return cls(PneumoniaModel(model_dir, num_threads=num_threads), checks=checks)

    @property
    def metadata(self) -> ModelMetadata:
        return self.model.metadata

    def score_file(self, path: Path, *, max_bytes: int, overlay: str = "none") -> ImageScore:
        """A local file, refused unread when it is larger than `max_bytes`."""
        check_size(path.stat().st_size, max_bytes)
        return self.score(path.read_bytes(), overlay=overlay)

    def score(self, data: bytes, *, overlay: str = "none") -> ImageScore:
        """Decode, predict, label, explain and check one image; `overlay` is an overlay policy."""
        if overlay not in OVERLAY_POLICIES:
            raise ValueError(f"overlay policy {overlay!r} is not one of {', '.join(OVERLAY_POLICIES)}")
        metadata = self.metadata
        timings: dict[str, float] = {}
        cpu: dict[str, float] = {}
        with _timed(DECODE, timings, cpu):
            pixels, decoded = decode(data, metadata.input)
        with _timed(INFERENCE, timings, cpu):
            prediction = self.model.predict(pixels)
        probability = float(prediction.probability[0])
        label = metadata.label(probability)
        positive = metadata.is_positive(label)
        # Checks before the heat map: a refused image costs no overlay, and the overlay's
        # caption carries the warnings beside the score it shows.
        evidence = Evidence(decoded, pixels, prediction, probability, label, positive)
        # The header's warnings (a DICOM patient's age) come first, then the checks'.
        header_warnings = ()
        if decoded.dicom is not None:
            from . import dicom  # loaded already: it decoded this image
            header_warnings = dicom.header_warnings(decoded.dicom)
        field = prediction.lung_fields[0] if prediction.lung_fields else None
        lung_warnings = (lungs.LUNG_FIELD_NOT_FOUND,) if field is not None and not field.found else ()
        warnings = header_warnings + lung_warnings + tuple(
            code for code in (check(evidence) for check in self.checks) if code)
        subtype = metadata.subtype.call(evidence.pooled_features) if positive and metadata.subtype else None
        if subtype is not None and subtype.uncertain:
            warnings += (SUBTYPE_UNCERTAIN,)
        heat_map, heat_map_error = None, None
        with _timed(HEAT_MAP, timings, cpu):
            try:
                heat_map = self._heat_map(prediction, decoded, probability, label, positive,
                                          wants_overlay(overlay, positive), warnings, subtype)
            except Exception as exc:  # noqa: BLE001 - the heat map is an aid: it must never hold back a score
                heat_map_error = f"{type(exc).__name__}: {exc}"[:500]
        return ImageScore(probability=probability, label=label, positive=positive, threshold=metadata.threshold,
                          model_version=metadata.version, model_sha256=metadata.sha256, image=decoded,
                          heat_map=heat_map, heat_map_error=heat_map_error, warnings=warnings,
                          timings_ms=timings, cpu_ms=cpu, subtype_call=subtype)

    def _heat_map(self, prediction: Prediction, decoded: DecodedImage, probability: float, label: str,
                  positive: bool, overlay: bool, warnings: tuple[str, ...] = (),
                  subtype: SubtypeCall | None = None) -> HeatMap:
        heat = cam.evidence(cam.class_activation_map(prediction.feature_map[0], self.metadata.cam), positive)
        chest = None
        if prediction.lung_fields:
            field = prediction.lung_fields[0]
            heat = cam.place(heat, field.crop)
            chest = field.lungs if field.found else None
        summary = cam.summarise(heat, (decoded.width, decoded.height), chest)
        png = None
        if overlay:
            from . import overlay as overlays  # drawing (ImageDraw, fonts) is loaded only when a PNG is asked for

            png = overlays.overlay_png(decoded, heat, summary=summary, title=overlays.caption(
                self.metadata.positive_label, probability, label, warnings,
                subtype.subtype if subtype else None))
        return HeatMap(heat, summary, png)


@contextmanager
def _timed(stage: str, wall: dict[str, float], cpu: dict[str, float]) -> Iterator[None]:
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        wall[stage] = round((time.perf_counter() - wall_start) * 1000, 2)
        cpu[stage] = round((time.process_time() - cpu_start) * 1000, 2)
