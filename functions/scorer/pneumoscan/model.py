"""The model contract (`ModelMetadata`, read from and written to model.json) and the
LiteRT interpreter that runs the quantized pneumonia model.

The `.tflite` and its `model.json` travel together in one folder; the metadata is
the only place the threshold, labels and input geometry are written down. Training
writes model.json through `ModelMetadata.write` and everything else reads it through
`ModelMetadata.read`, so both sides agree on one type instead of on string keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .litert import Interpreter, ModelLoadError
from .lungs import LungField, LungFieldSpec, LungSegmenter, crop_input

METADATA_FILE = "model.json"
MODEL_DIR_ENV = "PNEUMOSCAN_MODEL_DIR"
PROBABILITY_OUTPUT = "probability"
FEATURE_MAP_OUTPUT = "feature_map"


class CamUnavailable(ValueError):
    """model.json has no usable `cam` section for this model's feature map."""


def default_model_dir() -> Path:
    """`$PNEUMOSCAN_MODEL_DIR`, else `model/` beside the code (Lambda zip) or at the repo root."""
    if os.environ.get(MODEL_DIR_ENV):
        return Path(os.environ[MODEL_DIR_ENV])
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "model", here.parents[2] / "model"):
        if (candidate / METADATA_FILE).is_file():
            return candidate
    return here.parents[2] / "model"


@dataclass(frozen=True)
class InputSpec:
    """How one image is fed to the model: a uint8 height x width x channels array."""

    height: int
    width: int
    channels: int
    colour: str = "L"
    dtype: str = "uint8"
    resize: str = "bilinear"
    aspect: str = "stretch"
    decode: str = "pneumoscan.images"

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.height, self.width, self.channels

    @classmethod
    def from_dict(cls, section: Mapping[str, Any]) -> InputSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {name: value for name, value in section.items() if name in known}
        return cls(**{**values, "height": int(section["height"]), "width": int(section["width"]),
                      "channels": int(section["channels"])})


@dataclass(frozen=True, eq=False)
class CamWeights:
    """The GAP -> dense weights of the model's one output unit (its class activation map)."""

    weights: np.ndarray  # (k,) float32
    bias: float
    note: str = ""

    @classmethod
    def from_dict(cls, section: Mapping[str, Any] | None) -> CamWeights:
        try:
            weights = np.asarray(section["weights"], dtype=np.float32).reshape(-1)
            bias = float(section["bias"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CamUnavailable(f"model.json has no usable cam section: {exc}") from exc
        if weights.size == 0 or not np.all(np.isfinite(weights)):
            raise CamUnavailable("model.json cam weights are empty or not finite")
        return cls(weights, bias, str(section.get("note", "")))

    def as_dict(self) -> dict[str, Any]:
        section: dict[str, Any] = {"weights": [float(w) for w in self.weights], "bias": float(self.bias)}
        if self.note:
            section["note"] = self.note
        return section


@dataclass(frozen=True)
class FlipAverage:
    """Test-time flip averaging where it can change the label.

    The network is run once; when that probability falls inside `band`, it is run again on
    the mirror image and the two logits are averaged (the mirrored feature map mirrored back
    and averaged too, so the heat map stays aligned). The band is fitted at export so that
    outside it the averaged score lies on the same side of the threshold as the single one:
    the labels are those of averaging every image, for the cost of one pass on most.
    A band of (0, 1) averages every image.
    """

    band: tuple[float, float]  # probabilities of the positive label, inclusive
    note: str = ""

    def __post_init__(self) -> None:
        low, high = self.band
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"flip_average band {self.band!r} is not an ordered pair of probabilities")

    def applies(self, probabilities: np.ndarray) -> np.ndarray:
        low, high = self.band
        return (probabilities >= low) & (probabilities <= high)

    @classmethod
    def from_dict(cls, section: Mapping[str, Any]) -> FlipAverage:
        low, high = section["band"]
        return cls((float(low), float(high)), str(section.get("note", "")))

    def as_dict(self) -> dict[str, Any]:
        section: dict[str, Any] = {"band": [float(self.band[0]), float(self.band[1])]}
        if self.note:
            section["note"] = self.note
        return section


# The warning of a PNEUMONIA result whose subtype probability lies inside the head's uncertain band.
SUBTYPE_UNCERTAIN = "subtype_uncertain"


@dataclass(frozen=True)
class SubtypeCall:
    """The subtype of one image called positive: P(labels[1]) and the subtype, None when uncertain."""

    probability: float
    subtype: str | None

    @property
    def uncertain(self) -> bool:
        return self.subtype is None


@dataclass(frozen=True, eq=False)
class SubtypeHead:
    """What kind of pneumonia: a logistic head on the pooled features the detection head reads.

    P(labels[1] | pneumonia) = sigmoid(weights . pooled + bias), where `pooled` is the spatial
    mean of `feature_map` (flip-averaged where the detection score is). At or above `threshold`
    the subtype is labels[1], below it labels[0]; inside `uncertain_band` (inclusive, None: no
    band) the call is no subtype at all. Fitted by `training.subtype`; the other keys of the
    section (what it was fitted on, how it measured) are kept as they were written.
    """

    weights: np.ndarray  # (k,) float64
    bias: float
    threshold: float
    uncertain_band: tuple[float, float] | None = None
    labels: tuple[str, str] = ("bacterial", "viral")
    threshold_rule: str = ""
    band_rule: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.weights.ndim != 1 or self.weights.size == 0 or not np.all(np.isfinite(self.weights)):
            raise ValueError("subtype weights must be a non-empty finite vector")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"subtype threshold {self.threshold} is not a probability inside (0, 1)")
        if self.uncertain_band is not None:
            low, high = self.uncertain_band
            if not 0.0 <= low <= self.threshold <= high <= 1.0:
                raise ValueError(f"subtype uncertain band {self.uncertain_band!r} does not hold its threshold")
        if len(self.labels) != 2 or self.labels[0] == self.labels[1]:
            raise ValueError(f"subtype labels must be two distinct names, got {self.labels!r}")

    def probability(self, pooled: np.ndarray) -> np.ndarray:
        """P(labels[1]) of (..., k) pooled features."""
        return logit_probability(np.asarray(pooled, dtype=np.float64) @ self.weights + self.bias)

    def uncertain(self, probability: np.ndarray) -> np.ndarray:
        probability = np.asarray(probability)
        if self.uncertain_band is None:
            return np.zeros(probability.shape, dtype=bool)
        low, high = self.uncertain_band
        return (probability >= low) & (probability <= high)

    def subtypes(self, probability: np.ndarray) -> np.ndarray:
        """labels[1] at or above the threshold, else labels[0], whatever the band says."""
        return np.where(np.asarray(probability) >= self.threshold, self.labels[1], self.labels[0])

    def call(self, pooled: np.ndarray) -> SubtypeCall:
        """One image's (k,) pooled features -> its call."""
        probability = float(self.probability(pooled))
        subtype = None if self.uncertain(probability) else str(self.subtypes(probability))
        return SubtypeCall(probability, subtype)

    @classmethod
    def from_dict(cls, section: Mapping[str, Any]) -> SubtypeHead:
        band = section.get("uncertain_band")
        negative, positive = section.get("labels", ("bacterial", "viral"))
        known = {"weights", "bias", "threshold", "uncertain_band", "labels", "threshold_rule", "band_rule"}
        return cls(np.asarray(section["weights"], dtype=np.float64).reshape(-1), float(section["bias"]),
                   float(section["threshold"]), None if band is None else (float(band[0]), float(band[1])),
                   (str(negative), str(positive)), str(section.get("threshold_rule", "")),
                   str(section.get("band_rule", "")),
                   {name: value for name, value in section.items() if name not in known})

    def as_dict(self) -> dict[str, Any]:
        section: dict[str, Any] = {
            "labels": list(self.labels), "threshold": float(self.threshold),
            "uncertain_band": None if self.uncertain_band is None else [float(v) for v in self.uncertain_band],
            "threshold_rule": self.threshold_rule, "band_rule": self.band_rule,
            "bias": float(self.bias), "weights": [float(w) for w in self.weights]}
        return {**section, **self.extra}


@dataclass(frozen=True)
class ModelMetadata:
    """model.json as a type. `labels` is ordered (negative, positive): the model's one
    output is the probability of the positive label."""

    name: str
    version: str
    file: str
    sha256: str
    input: InputSpec
    labels: tuple[str, str]
    threshold: float | None = None  # None only while training has not calibrated it yet
    cam: CamWeights | None = None
    flip_average: FlipAverage | None = None  # None: one pass per image
    subtype: SubtypeHead | None = None  # None: PNEUMONIA results carry no subtype
    # The out-of-distribution statistics fitted on this network's features (`pneumoscan.ood`):
    # their file beside the model, its sha256, the threshold and the model they belong to.
    ood: Mapping[str, Any] | None = None
    # The lung-field segmenter run before the network (`pneumoscan.lungs`): None, the whole image.
    lung_field: LungFieldSpec | None = None
    # The adult-vs-paediatric head on the same features (`pneumoscan.population`), with the model it belongs to.
    population: Mapping[str, Any] | None = None
    size_bytes: int | None = None
    outputs: Mapping[str, str] = field(default_factory=dict)
    threshold_rule: str | None = None
    # Provenance and evaluation, recorded by training and shown by reports; not read at scoring time.
    training: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)
    trained_at: str | None = None
    commit: str | None = None
    promoted_from: str | None = None
    # Sections this version of the code does not know, kept so a read-write round trip loses nothing.
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.labels) != 2 or self.labels[0] == self.labels[1]:
            raise ValueError(f"labels must be two distinct names (negative, positive), got {self.labels!r}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold {self.threshold} is not a probability")

    @property
    def negative_label(self) -> str:
        return self.labels[0]

    @property
    def positive_label(self) -> str:
        return self.labels[1]

    def is_positive(self, label: str | None) -> bool:
        return label == self.positive_label

    def label(self, probability: float) -> str:
        """The label the threshold gives `probability` (the probability of the positive label)."""
        if self.threshold is None:
            raise ModelLoadError(f"model {self.version} has no threshold in {METADATA_FILE}")
        return self.positive_label if probability >= self.threshold else self.negative_label

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ModelMetadata:
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        negative, positive = raw["labels"]
        return cls(
            name=str(raw["name"]), version=str(raw["version"]), file=str(raw["file"]), sha256=str(raw["sha256"]),
            input=InputSpec.from_dict(raw["input"]), labels=(str(negative), str(positive)),
            threshold=None if raw.get("threshold") is None else float(raw["threshold"]),
            cam=CamWeights.from_dict(raw["cam"]) if "cam" in raw else None,
            flip_average=FlipAverage.from_dict(raw["flip_average"]) if raw.get("flip_average") else None,
            subtype=SubtypeHead.from_dict(raw["subtype"]) if raw.get("subtype") else None,
            ood=dict(raw["ood"]) if raw.get("ood") else None,
            lung_field=LungFieldSpec.from_dict(raw["lung_field"]) if raw.get("lung_field") else None,
            population=dict(raw["population"]) if raw.get("population") else None,
            size_bytes=raw.get("size_bytes"), outputs=dict(raw.get("outputs", {})),
            threshold_rule=raw.get("threshold_rule"), training=dict(raw.get("training") or {}),
            metrics=dict(raw.get("metrics") or {}), trained_at=raw.get("trained_at"), commit=raw.get("commit"),
            promoted_from=raw.get("promoted_from"),
            extra={name: value for name, value in raw.items() if name not in known})

    def to_dict(self) -> dict[str, Any]:
        """model.json's layout: the fields in this order, empty optional ones left out."""
        raw: dict[str, Any] = {"name": self.name, "version": self.version, "file": self.file,
                               "sha256": self.sha256, "size_bytes": self.size_bytes,
                               "input": dataclasses.asdict(self.input), "outputs": dict(self.outputs),
                               "labels": list(self.labels), "threshold": self.threshold,
                               "threshold_rule": self.threshold_rule,
                               "cam": self.cam.as_dict() if self.cam is not None else None,
                               "flip_average": self.flip_average.as_dict() if self.flip_average else None,
                               "subtype": self.subtype.as_dict() if self.subtype else None,
                               "training": dict(self.training), "metrics": dict(self.metrics),
                               "trained_at": self.trained_at, "commit": self.commit,
                               "promoted_from": self.promoted_from,
                               "ood": dict(self.ood) if self.ood else None,
                               "lung_field": self.lung_field.as_dict() if self.lung_field else None,
                               "population": dict(self.population) if self.population else None}
        raw = {name: value for name, value in raw.items() if value not in (None, {})}
        return {**raw, **self.extra}

    @classmethod
    def read(cls, model_dir: Path | str) -> ModelMetadata:
        try:
            return cls.from_dict(json.loads((Path(model_dir) / METADATA_FILE).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"cannot read the model in {model_dir}: {exc}") from exc

    def write(self, model_dir: Path | str) -> Path:
        path = Path(model_dir) / METADATA_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


@dataclass(frozen=True)
class Prediction:
    probability: np.ndarray  # (N,) float32, probability of the positive label
    feature_map: np.ndarray  # (N, h, w, k) float32, last convolutional block (of the lung crop)
    flip_averaged: np.ndarray  # (N,) bool: the mirror image was run too and averaged in
    # Per image, where the lungs were found and which crop the network read; empty for a
    # model without a lung-field segmenter (the network read the whole input).
    lung_fields: tuple[LungField, ...] = ()


class PneumoniaModel:
    """A LiteRT interpreter plus the metadata that says how to feed and read it; where
    model.json names a lung-field segmenter, it picks the crop of each image the network reads."""

    def __init__(self, model_dir: Path | str | None = None, *, num_threads: int = 1,
                 verify_checksum: bool = True):
        self.model_dir = Path(model_dir) if model_dir else default_model_dir()
        self.metadata = ModelMetadata.read(self.model_dir)
        try:
            model_bytes = (self.model_dir / self.metadata.file).read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"cannot read the model in {self.model_dir}: {exc}") from exc
        digest = hashlib.sha256(model_bytes).hexdigest()
        if verify_checksum and digest != self.metadata.sha256:
            raise ModelLoadError(
                f"{self.metadata.file} has sha256 {digest}, {METADATA_FILE} says {self.metadata.sha256}")
        try:
            self._interpreter = Interpreter(model_content=model_bytes, num_threads=num_threads)
            self._interpreter.allocate_tensors()
            # The signature names the outputs; only its tensor indices are kept, because a live
            # runner would pin buffers and block resizing the batch later.
            runner = self._interpreter.get_signature_runner()
            self._input = next(iter(runner.get_input_details().values()))
            outputs = runner.get_output_details()
            self._outputs = {name: outputs[name] for name in (PROBABILITY_OUTPUT, FEATURE_MAP_OUTPUT)}
            del runner
        except (ValueError, RuntimeError, KeyError, StopIteration) as exc:
            raise ModelLoadError(f"{self.metadata.file} is not a usable pneumoscan model: {exc}") from exc
        self._batch_size = int(self._input["shape"][0])
        spec = self.metadata.lung_field
        self.lungs = (LungSegmenter(self.model_dir, spec, num_threads=num_threads, verify_checksum=verify_checksum)
                      if spec is not None else None)

    @property
    def version(self) -> str:
        return self.metadata.version

    @property
    def sha256(self) -> str:
        return self.metadata.sha256

    @property
    def threshold(self) -> float:
        if self.metadata.threshold is None:
            raise ModelLoadError(f"model {self.version} has no threshold in {METADATA_FILE}")
        return self.metadata.threshold

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(height, width, channels) of one image."""
        return self.metadata.input.shape

    def label(self, probability: float) -> str:
        return self.metadata.label(probability)

    def predict(self, images: np.ndarray) -> Prediction:
        """Run a uint8 batch of shape (N, height, width, channels); model.json's
        `flip_average` decides which images also get a mirrored pass."""
        images = np.asarray(images, dtype=np.uint8)
        if images.ndim == 3:
            images = images[np.newaxis]
        if images.shape[1:] != self.input_shape:
            raise ValueError(f"expected images of shape {self.input_shape}, got {images.shape[1:]}")
        fields: tuple[LungField, ...] = ()
        if self.lungs is not None:
            # The network reads the lung crop of each image, never the whole frame.
            fields = tuple(self.lungs.find(image) for image in images)
            images = np.stack([crop_input(image, field.crop) for image, field in zip(images, fields)])
        probability, feature_map = self._run(images)
        flip = self.metadata.flip_average
        averaged = flip.applies(probability) if flip else np.zeros(len(images), dtype=bool)
        if averaged.any():
            mirrored_probability, mirrored_map = self._run(images[averaged][:, :, ::-1])
            # The head is linear in the pooled feature map: the mean of the two logits is the
            # logit of the mean feature map, which is what the heat map and OOD check read.
            probability = probability.copy()
            probability[averaged] = mean_logit_probability(probability[averaged], mirrored_probability)
            feature_map = feature_map.copy()
            feature_map[averaged] = (feature_map[averaged] + mirrored_map[:, :, ::-1]) / 2
        return Prediction(probability, feature_map, averaged, fields)

    def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if images.shape[0] != self._batch_size:
            self._interpreter.resize_tensor_input(self._input["index"], list(images.shape))
            self._interpreter.allocate_tensors()
            self._batch_size = images.shape[0]
        self._interpreter.set_tensor(self._input["index"], np.ascontiguousarray(images))
        self._interpreter.invoke()
        return self._read(PROBABILITY_OUTPUT).reshape(images.shape[0]), self._read(FEATURE_MAP_OUTPUT)

    def _read(self, name: str) -> np.ndarray:
        detail = self._outputs[name]
        values = self._interpreter.get_tensor(detail["index"])
        scale, zero_point = detail["quantization"]
        if scale:
            return (values.astype(np.float32) - zero_point) * scale
        return values.astype(np.float32, copy=False)


def probability_logit(probability: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) in float64."""
    # float64 and clipped: a float32 probability of exactly 0 or 1 has no finite logit.
    p = np.clip(np.asarray(probability, dtype=np.float64), 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)


def logit_probability(logit: np.ndarray) -> np.ndarray:
    """The probability of a logit (the sigmoid)."""
    return 1.0 / (1.0 + np.exp(-np.asarray(logit, dtype=np.float64)))


def mean_logit_probability(direct: np.ndarray, mirrored: np.ndarray) -> np.ndarray:
    """The probability of the mean of two probabilities' logits: flip averaging's score."""
    return logit_probability((probability_logit(direct) + probability_logit(mirrored)) / 2)
