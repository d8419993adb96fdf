"""Data -> trained Keras model -> calibrated int8 `.tflite` + model.json + report, in one run."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from pneumoscan_eval import metrics
from pneumoscan_eval.datasets import FULLRES_SET, LABELS, LabelledFile, list_labelled
from pneumoscan.lungs import LungSegmenter
from pneumoscan.model import (FEATURE_MAP_OUTPUT, METADATA_FILE, PROBABILITY_OUTPUT, CamWeights, FlipAverage,
                              InputSpec, ModelMetadata, PneumoniaModel)

from .architecture import LOGIT_LAYER, detector, subtype_dense
from .augment import AugmentConfig
from .calibration import fit_platt, fold_into_dense
from .data import ImageSet, collection, dataset_files, load_images, lung_crops, patient_id, split_patient_block
from .export import convert_float, convert_int8, representative_images
from .segmenter import read_report, read_spec
from .ensemble import EVERY_IMAGE, average_logits, fit_flip_band, flip_averaged
from .holdout import read_proxy
from .train import CHANNELS, HEIGHT, WIDTH, TrainConfig, read_history, train_model

MODEL_NAME = "pneumoscan-cnn"
TFLITE_FILE = "pneumoscan.tflite"
MIN_SENSITIVITY = 0.96  # chosen by the collection hold-out proxy (EXPERIMENTS.md)


def threshold_rule(min_sensitivity: float) -> str:
    return (f"highest specificity with sensitivity >= {min_sensitivity} on the by-patient "
            "validation split, scored by the int8 model; midway to the next lower score")


# Parity of the int8 model against the Keras model on the validation split.
MAX_AUC_GAP = 0.005
MIN_LABEL_AGREEMENT = 0.99
CALIBRATION_IMAGES = 300
MAX_TFLITE_BYTES = 1_000_000
TRAINED_MODEL = "trained.keras"  # in the run folder: the model before calibration, for ensembling
# Training images added to validation for fitting the flip-averaging band.
FLIP_BAND_TRAIN_IMAGES = 1000


class ParityError(RuntimeError):
    """The int8 model does not reproduce the Keras model closely enough to ship."""


@dataclass
class RunOptions:
    data_dir: Path
    model_dir: Path
    run_dir: Path
    limit_per_class: int | None = None  # smoke runs: a few images per class per split
    reference_models: bool = True
    version: str | None = None
    # Smoke runs (1 epoch on a few images) cannot meet parity; they record it instead.
    enforce_parity: bool = True
    # The threshold rule's sensitivity floor on validation (chosen by the collection hold-out proxy).
    min_sensitivity: float = MIN_SENSITIVITY
    # Export the mean of the image's and its mirror image's logits (two passes per image).
    flip_average: bool = False
    # holdout.json files of this recipe's collection hold-out runs, recorded in the metrics.
    proxy_results: tuple[Path, ...] = ()
    # A folder with the lung segmenter (`python -m training.segmenter`): the network is
    # trained on, and exported to read, the lung crop of each image. None: the whole image.
    segmenter_dir: Path | None = None
    # Leave the lowest-numbered share of each collection's patients out of training and
    # validation and score the exported model on them (the patient-block hold-out).
    hold_out_block: float = 0.0


def _limit(files: list[LabelledFile], per_class: int, seed: int) -> list[LabelledFile]:
    rng = np.random.default_rng(seed)
    kept = []
    for label in range(len(LABELS)):
        members = [f for f in files if f.label == label]
        kept += [members[i] for i in sorted(rng.permutation(len(members))[:per_class])]
    return kept


def predict_int8(model: PneumoniaModel, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    return np.concatenate([model.predict(images[start:start + batch_size]).probability
                           for start in range(0, len(images), batch_size)])


def choose_threshold(labels: np.ndarray, scores: np.ndarray, min_sensitivity: float) -> float:
    """The threshold rule, rounded as model.json stores it, so that every figure recorded and
    the flip band fitted around it are those of the stored threshold."""
    return round(metrics.threshold_for_sensitivity(labels, scores, min_sensitivity), 6)


def check_parity(labels: np.ndarray, keras_scores: np.ndarray, int8_scores: np.ndarray,
                 threshold: float) -> dict:
    """AUC gap and label agreement at the shipped threshold; raises ParityError when off."""
    keras_auc, int8_auc = metrics.roc_auc(labels, keras_scores), metrics.roc_auc(labels, int8_scores)
    agreement = float(np.mean((keras_scores >= threshold) == (int8_scores >= threshold)))
    result = {"keras_auc": keras_auc, "int8_auc": int8_auc, "auc_gap": abs(keras_auc - int8_auc),
              "label_agreement": agreement, "max_auc_gap": MAX_AUC_GAP,
              "min_label_agreement": MIN_LABEL_AGREEMENT,
              "max_abs_probability_diff": float(np.max(np.abs(keras_scores - int8_scores)))}
    result["passed"] = bool(result["auc_gap"] <= MAX_AUC_GAP and agreement >= MIN_LABEL_AGREEMENT)
    return result


def _git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "training"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("+training-modified" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def next_version(model_dir: Path, today: dt.date) -> str:
    """YYYY.MM.DD-N, N counting up from the version already in `model_dir` for today."""
    prefix = today.strftime("%Y.%m.%d")
    try:
        current = json.loads((model_dir / METADATA_FILE).read_text())["version"]
    except (OSError, ValueError, KeyError):
        current = ""
    if current.startswith(prefix + "-") and current.rsplit("-", 1)[1].isdigit():
        return f"{prefix}-{int(current.rsplit('-', 1)[1]) + 1}"
    return f"{prefix}-1"


def describe_split(files: list[LabelledFile]) -> dict:
    return {
        "images": {name: sum(f.label == i for f in files) for i, name in enumerate(LABELS)},
        "patients": {name: len({patient_id(f.path) for f in files if f.label == i})
                     for i, name in enumerate(LABELS)},
        "collections": {source: sum(collection(f.path) == source for f in files)
                        for source in sorted({collection(f.path) for f in files})},
    }


def subgroup_metrics(val: ImageSet, scores: np.ndarray, threshold: float) -> dict:
    """Specificity per normal collection: the later collection is the known weak spot."""
    result = {}
    for source in sorted({collection(p) for p in val.paths}):
        members = np.array([collection(p) == source for p in val.paths])
        counts = metrics.confusion(val.labels[members], scores[members], threshold)
        row = {"n": counts.n, "specificity": counts.specificity, "sensitivity": counts.sensitivity}
        # A collection holds one class only: leave out the rate that is undefined there.
        result[source] = {key: value for key, value in row.items() if value == value}
    return result


def fullres_check(model: PneumoniaModel, data_dir: Path, val: ImageSet, val_scores: np.ndarray,
                  threshold: float) -> dict | None:
    """Score the full-resolution originals of validation images through the Lambda's path.

    The 224 copies were downscaled by someone else's resampler; the blind test and
    production arrive at full size through `pneumoscan.images`. Comparing both on the
    same held-out images measures that shift. None when the sample folder is absent.
    """
    sample = data_dir.parent / FULLRES_SET
    if not sample.is_dir():
        return None
    by_name = {Path(path).name: index for index, path in enumerate(val.paths)}
    originals = [f for f in list_labelled(sample) if f.path.name in by_name]
    if not originals:
        return None
    images = load_images(originals, HEIGHT, WIDTH, CHANNELS, "decoding full-res")
    scores = predict_int8(model, images.images)
    copies = val_scores[[by_name[f.path.name] for f in originals]]
    summary = metrics.summarize(images.labels, scores, threshold)
    return {"n": summary.n, "auc": summary.auc, "sensitivity": summary.sensitivity,
            "specificity": summary.specificity,
            "label_agreement_with_224_copies": float(np.mean((scores >= threshold) == (copies >= threshold))),
            "mean_abs_probability_diff": float(np.mean(np.abs(scores - copies)))}


@dataclass
class Split:
    """What one run reads: classifier inputs (lung crops where a segmenter is given)."""

    train: ImageSet  # the classifier's inputs of the training images
    val: ImageSet
    train_files: list[LabelledFile]
    val_files: list[LabelledFile]
    # The whole stretched images, as the scorer (and so the int8 model) is given them; the
    # training sources carry each image's crop box, which training jitters.
    train_sources: ImageSet
    val_sources: ImageSet
    block: ImageSet | None = None  # the patient-block hold-out, never trained or validated on
    block_sources: ImageSet | None = None
    block_files: list[LabelledFile] = dataclasses.field(default_factory=list)
    lung_field: dict | None = None  # the segmenter's sanity figures per set


def load_split(config: TrainConfig, options: RunOptions) -> Split:
    train_files, val_files = dataset_files(options.data_dir, config.val_fraction, config.split_seed)
    block_files: list[LabelledFile] = []
    if options.hold_out_block:
        train_files, train_block = split_patient_block(train_files, options.hold_out_block)
        val_files, val_block = split_patient_block(val_files, options.hold_out_block)
        block_files = train_block + val_block
    if options.limit_per_class:
        train_files = _limit(train_files, options.limit_per_class, config.split_seed)
        val_files = _limit(val_files, options.limit_per_class, config.split_seed)
        block_files = _limit(block_files, options.limit_per_class, config.split_seed) if block_files else []
    train = load_images(train_files, HEIGHT, WIDTH, CHANNELS, "decoding train")
    val = load_images(val_files, HEIGHT, WIDTH, CHANNELS, "decoding val")
    block = load_images(block_files, HEIGHT, WIDTH, CHANNELS, "decoding block") if block_files else None
    print(f"train {train.class_counts()}  val {val.class_counts()}"
          + (f"  block {block.class_counts()}" if block else ""), flush=True)
    if options.segmenter_dir is None:
        return Split(train, val, train_files, val_files, train, val, block, block, block_files)
    segmenter = LungSegmenter(options.segmenter_dir, read_spec(options.segmenter_dir))
    crops = {name: lung_crops(images, segmenter, f"lung fields {name}")
             for name, images in (("train", train), ("val", val), ("block", block)) if images is not None}
    sources = dataclasses.replace(train, boxes=crops["train"].crops.boxes)
    summary = {name: crop.summary() for name, crop in crops.items()}
    summary["segmenter"] = read_report(options.segmenter_dir)
    print("lung fields:", json.dumps(summary), flush=True)
    return Split(crops["train"].crops, crops["val"].crops, train_files, val_files, sources, val,
                 crops["block"].crops if block is not None else None, block, block_files, summary)


def run(config: TrainConfig, options: RunOptions) -> dict:
    """Train, then `finalize`. The trained (uncalibrated) model stays in the run folder."""
    started = time.monotonic()
    split = load_split(config, options)
    model, history = train_model(split.train_sources, split.val, config, options.run_dir)
    model.save(options.run_dir / TRAINED_MODEL)
    return finalize(model, split, history, config, options, training_seconds=time.monotonic() - started)


def run_ensemble(run_dirs: list[Path], options: RunOptions) -> dict:
    """Finalize the logit-average of models already trained in `run_dirs` (same split)."""
    configs = [json.loads((run_dir / "config.json").read_text()) for run_dir in run_dirs]
    splits = {(c.get("split_seed", c["seed"]), c["val_fraction"]) for c in configs}
    if len(splits) != 1:
        raise ValueError(f"ensemble members were validated on different splits: {splits}")
    config = TrainConfig(**{k: v for k, v in configs[0].items() if k not in ("augment", "widths")})
    config.widths = tuple(configs[0]["widths"])
    if len(run_dirs) == 1:  # a re-export keeps the record of how its one member was trained
        config.augment = AugmentConfig(**{key: tuple(value) if isinstance(value, list) else value
                                          for key, value in configs[0]["augment"].items()})
    config.split_seed, config.val_fraction = next(iter(splits))
    started = time.monotonic()
    split = load_split(config, options)
    members = [keras.saving.load_model(run_dir / TRAINED_MODEL) for run_dir in run_dirs]
    # One run: re-export it as it is (another threshold rule, flip averaging) without training.
    model = members[0] if len(members) == 1 else average_logits(members)
    history = read_history(run_dirs[0] / "history.csv")
    seconds = sum(_training_seconds(run_dir) for run_dir in run_dirs) + time.monotonic() - started
    return finalize(model, split, history, config, options,
                    training_seconds=seconds,
                    ensemble=[{"run": str(run_dir), "config": c} for run_dir, c in zip(run_dirs, configs)])


def _training_seconds(run_dir: Path) -> float:
    try:
        return float(json.loads((run_dir / "export" / METADATA_FILE).read_text())["training"]["seconds"])
    except (OSError, ValueError, KeyError):
        pass
    try:  # a run stopped before its export: from writing its config to saving the trained model
        return (run_dir / TRAINED_MODEL).stat().st_mtime - (run_dir / "config.json").stat().st_mtime
    except OSError:
        return 0.0


def finalize(model: keras.Model, split: Split, history: list[dict], config: TrainConfig, options: RunOptions, *,
             training_seconds: float, ensemble: list[dict] | None = None) -> dict:
    """Calibrate, export int8, check parity, pick the threshold, write model/ and the report."""
    from .report import write_model_card, write_report

    # The subtype head ships as weights on the pooled features (`training.subtype` calibrates
    # them); the network exported and kept is the detector's two-output contract.
    trained_subtype = subtype_dense(model)
    model = detector(model)
    train, val, train_files, val_files = split.train, split.val, split.train_files, split.val_files
    # The int8 model scores the scorer's inputs (the whole stretched image: it crops the lungs
    # itself); the Keras network reads the crops directly.
    val_inputs = split.val_sources.images

    # The int8 graph runs one pass; with flip averaging the scorer adds the mirrored pass where
    # it can change the label (FlipAverage), so calibration and parity use the averaged model.
    reference = flip_averaged(model) if options.flip_average else model
    logit_model = keras.Model(reference.inputs, reference.get_layer(LOGIT_LAYER).output)
    val_pixels = val.images.astype(np.float32)
    logits = logit_model.predict(val_pixels, batch_size=64, verbose=0).ravel()
    platt_a, platt_b = fit_platt(logits, val.labels)
    fold_into_dense(model.get_layer(LOGIT_LAYER), platt_a, platt_b)
    if options.flip_average:
        reference = flip_averaged(model)  # rebuilt: it copies the head, now calibrated
    keras_scores = reference.predict(val_pixels, batch_size=64, verbose=0)["probability"].ravel()

    stage = options.run_dir / "export"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    tflite = convert_int8(model, representative_images(train.images, CALIBRATION_IMAGES, config.seed))
    if len(tflite) > MAX_TFLITE_BYTES:
        raise RuntimeError(f"int8 model is {len(tflite)} bytes, above the {MAX_TFLITE_BYTES} limit")
    (stage / TFLITE_FILE).write_bytes(tflite)
    lung_field = None
    if options.segmenter_dir is not None:
        lung_field = read_spec(options.segmenter_dir)
        shutil.copy2(options.segmenter_dir / lung_field.file, stage / lung_field.file)
    dense_kernel, dense_bias = model.get_layer(LOGIT_LAYER).get_weights()
    metadata = ModelMetadata(
        name=MODEL_NAME,
        version=options.version or next_version(options.model_dir, dt.date.today()),
        file=TFLITE_FILE,
        sha256=hashlib.sha256(tflite).hexdigest(),
        size_bytes=len(tflite),
        input=InputSpec(height=HEIGHT, width=WIDTH, channels=CHANNELS),
        outputs={PROBABILITY_OUTPUT: "float32 (N,1) P(pneumonia)",
                 FEATURE_MAP_OUTPUT: f"(N,14,14,{dense_kernel.shape[0]}) float32, last conv block (after ReLU)"},
        labels=LABELS,
        lung_field=lung_field,
    )
    metadata.write(stage)  # enough for LiteRT to load the int8 model and score val with it
    flip_record = None
    if options.flip_average:
        # The threshold is chosen with every image averaged; then the band where averaging can
        # change the label is fitted on validation and a sample of training images.
        rng = np.random.default_rng(config.seed + 1)
        sources = split.train_sources.images
        sample = sources[rng.choice(len(sources), min(FLIP_BAND_TRAIN_IMAGES, len(sources)), replace=False)]
        band_images = np.concatenate([val_inputs, sample])
        single_scores = predict_int8(PneumoniaModel(stage), band_images)
        metadata = dataclasses.replace(metadata, flip_average=FlipAverage(EVERY_IMAGE))
        metadata.write(stage)
        averaged_scores = predict_int8(PneumoniaModel(stage), band_images)
        threshold = choose_threshold(val.labels, averaged_scores[:len(val.images)], options.min_sensitivity)
        flip, flip_record = fit_flip_band(single_scores, averaged_scores, threshold)
        metadata = dataclasses.replace(metadata, flip_average=flip)
        metadata.write(stage)
    int8_model = PneumoniaModel(stage)
    int8_scores = predict_int8(int8_model, val_inputs)
    if flip_record is None:
        threshold = choose_threshold(val.labels, int8_scores, options.min_sensitivity)
    else:
        every_image = averaged_scores[:len(val.images)]
        flip_record["val"] = {
            "averaged_share": float(np.mean(int8_model.metadata.flip_average.applies(single_scores[:len(val.images)]))),
            "label_agreement_with_every_image_averaged": float(np.mean((int8_scores >= threshold)
                                                                       == (every_image >= threshold)))}
    parity = check_parity(val.labels, keras_scores, int8_scores, threshold)
    print("parity:", json.dumps(parity), flush=True)
    if options.enforce_parity and not parity["passed"]:
        raise ParityError(f"int8 model fails parity on val: {parity}")

    val_summary = metrics.summarize(val.labels, int8_scores, threshold).as_dict()
    val_summary["ece"] = metrics.expected_calibration_error(val.labels, int8_scores)
    val_summary["by_collection"] = subgroup_metrics(val, int8_scores, threshold)
    # The official 16-image val holds the newest normal studies (NORMAL2-IM-14xx): the
    # closest thing here to the "later collection" that the blind test over-calls.
    official = np.array([f.split == "val" for f in val_files])
    if official.any():
        val_summary["official_val"] = metrics.summarize(
            val.labels[official], int8_scores[official], threshold).as_dict()
    val_summary["fullres_originals"] = fullres_check(int8_model, options.data_dir, val, int8_scores,
                                                     threshold)
    block_summary = None
    if split.block_sources is not None:
        block_scores = predict_int8(int8_model, split.block_sources.images)
        block_summary = metrics.summarize(split.block.labels, block_scores, threshold).as_dict()
        block_summary["fraction"] = options.hold_out_block
        block_summary["by_collection"] = subgroup_metrics(split.block, block_scores, threshold)
        block_summary["patients"] = describe_split(split.block_files)
    metadata = dataclasses.replace(
        metadata,
        threshold=threshold,
        threshold_rule=threshold_rule(options.min_sensitivity),
        cam=CamWeights(dense_kernel.ravel().astype(np.float32), float(dense_bias[0]),
                       note="logit map = sum_k weights[k] * feature_map[..., k] + bias; its spatial mean "
                            "is the logit of probability (GAP head, Platt calibration folded in)"),
        training={
            "data": str(options.data_dir),
            "source": "Kermany et al. 2018 chest X-ray (pneumonia) train split, paediatric AP, CC BY 4.0",
            "split": f"validation = {config.val_fraction:.0%} of train patients per class and "
                     "collection (no patient on both sides) + the official val split",
            "train": describe_split(train_files), "val": describe_split(val_files),
            "limit_per_class": options.limit_per_class,
            "epochs": len(history), "config": config.as_dict(),
            "calibration": {"method": "Platt scaling on val logits, folded into the dense layer",
                            "a": platt_a, "b": platt_b},
            "seconds": round(training_seconds, 1),
            "ensemble": ensemble,
            "threshold_min_sensitivity": options.min_sensitivity,
            "test_time_flip_average": options.flip_average,
            "lung_field": split.lung_field,
            "patient_block_hold_out": options.hold_out_block or None,
            "subtype_head": None if trained_subtype is None else trained_subtype_head(trained_subtype, config),
        },
        metrics={"val": val_summary,
                 "val_keras": metrics.summarize(val.labels, keras_scores, threshold).as_dict(),
                 "parity": parity,
                 "flip_average": flip_record,
                 "patient_block_hold_out": block_summary,
                 "collection_hold_out": [read_proxy(path, options.min_sensitivity, options.flip_average)
                                         for path in options.proxy_results]},
        trained_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        commit=_git_commit(),
    )
    metadata.write(stage)
    metadata = metadata.to_dict()  # the report and the card read model.json's layout

    report = write_report(stage, val.labels, int8_scores, threshold, history, metadata)
    if options.reference_models:
        reference = stage / "reference"
        reference.mkdir()
        model.save(reference / "pneumoscan_float.keras")
        (reference / "pneumoscan_float32.tflite").write_bytes(convert_float(model, HEIGHT, WIDTH, CHANNELS))
    write_model_card(stage, metadata)
    _publish(stage, options.model_dir)
    PneumoniaModel(options.model_dir)  # the published folder loads and its checksum matches
    return {"metadata": metadata, "report": report}


def trained_subtype_head(dense: keras.layers.Dense, config: TrainConfig) -> dict:
    """The jointly trained subtype unit as `training.subtype` reads it (before its calibration)."""
    kernel, bias = dense.get_weights()
    return {"weights": kernel.ravel().astype(float).tolist(), "bias": float(bias[0]),
            "loss_weight": config.subtype_weight,
            "note": "P(viral | pneumonia) = sigmoid(weights . pooled feature_map + bias), trained with the "
                    "network on the training pneumonias whose file names give the subtype; uncalibrated"}


def promote(source: Path, model_dir: Path, version: str | None = None,
            proxy_results: tuple[Path, ...] = ()) -> dict:
    """Publish an experiment's exported folder as the release in `model_dir`.

    Experiments export with their own version labels; the release gets the next
    YYYY.MM.DD-N (or `version`). Only the version changes, and with `proxy_results` the
    recorded collection hold-out figures, added to those of other runs (hold-out runs may
    finish after the export):
    model.json, metrics.json and the card are re-written, the `.tflite` and every figure
    are copied as they are.
    """
    from .report import METRICS_FILE, REPORT_DIR, write_model_card
    from .shortcut_check import CARD_FILE, update_model_card

    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / "model"
        shutil.copytree(source, stage)
        metadata = ModelMetadata.read(stage)
        recorded = dict(metadata.metrics)
        if proxy_results:
            measured = [read_proxy(path, metadata.training.get("threshold_min_sensitivity", MIN_SENSITIVITY),
                                   bool(metadata.training.get("test_time_flip_average")))
                        for path in proxy_results]
            # A run read again replaces its row; rows of other runs stay (a repeated hold-out of
            # the same collection shows the run-to-run spread).
            again = {row["run"] for row in measured}
            recorded["collection_hold_out"] = [row for row in recorded.get("collection_hold_out", [])
                                               if row["run"] not in again] + measured
        # Re-publishing the release in place (new hold-out rows) keeps where it came from.
        origin = metadata.promoted_from if Path(source).resolve() == Path(model_dir).resolve() else str(source)
        metadata = dataclasses.replace(metadata, version=version or next_version(model_dir, dt.date.today()),
                                       promoted_from=origin, metrics=recorded)
        metadata.write(stage)
        report_file = stage / REPORT_DIR / METRICS_FILE
        report = json.loads(report_file.read_text())
        report["model"]["version"] = metadata.version
        report["collection_hold_out"] = recorded.get("collection_hold_out", [])
        report_file.write_text(json.dumps(report, indent=2) + "\n")
        card = stage / CARD_FILE
        measured_sections = _measured_sections(card.read_text()) if card.is_file() else []
        write_model_card(stage, metadata.to_dict())
        # The sections `make ood` and `make shortcut` measured on this very network stay true.
        for start, section, end in measured_sections:
            update_model_card(card, section, start=start, end=end)
        _publish(stage, model_dir)
    PneumoniaModel(model_dir)
    return metadata.to_dict()


def _measured_sections(card: str) -> list[tuple[str, str, str]]:
    """(start marker, whole section, end marker) of each `<!-- name -->` ... `<!-- /name -->` block."""
    return [(f"<!-- {name} -->", match.group(0), f"<!-- /{name} -->")
            for match in re.finditer(r"<!-- ([a-z-]+) -->.*?<!-- /\1 -->", card, flags=re.DOTALL)
            for name in [match.group(1)]]


def _publish(stage: Path, model_dir: Path) -> None:
    """Replace the contents of `model_dir` by the staged export, file by file."""
    model_dir.mkdir(parents=True, exist_ok=True)
    for source in sorted(stage.rglob("*")):
        if source.is_file():
            target = model_dir / source.relative_to(stage)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
