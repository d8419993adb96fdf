"""Collection hold-out: a validation that sees acquisition shift, not just new patients.

The by-patient split keeps every acquisition collection on both sides, so it cannot see
what breaks on data from a later batch or another scanner. Here one whole collection
(e.g. the later ``NORMAL2`` normals) is left out of training *and* of the validation the
threshold is chosen on; the model is then scored on it. Its specificity at a threshold
chosen on the remaining validation, by each candidate threshold rule, is the proxy that
picks recipes and the threshold rule. The official 16-image val (its normals are the
newest studies) is reported alongside.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from pneumoscan_eval import metrics
from pneumoscan_eval.datasets import LabelledFile
from pneumoscan.model import mean_logit_probability

from .architecture import PROBABILITY_LAYER
from .data import collection, dataset_files, load_images
from .ensemble import fit_flip_band
from .train import CHANNELS, HEIGHT, WIDTH, TrainConfig, train_model

RESULT_FILE = "holdout.json"
# Candidate threshold rules: the sensitivity floor on the validation the threshold is chosen on.
SENSITIVITY_FLOORS = (0.99, 0.98, 0.97, 0.96, 0.95, 0.93, 0.90)


def rule_name(floor: float) -> str:
    return f"sensitivity>={floor:.2f}"


@dataclass
class HoldoutSplit:
    train: list[LabelledFile]
    val: list[LabelledFile]  # by-patient validation without the held-out collection
    held_out: list[LabelledFile]  # every image of the held-out collection (train and val sides)
    official_val: list[LabelledFile]  # the 16 official val images, wherever they landed


def holdout_split(data_dir: Path, held_out: str, val_fraction: float, split_seed: int) -> HoldoutSplit:
    """The usual by-patient split, with one collection moved out of both sides."""
    train, val = dataset_files(data_dir, val_fraction, split_seed)
    if not any(collection(f.path) == held_out for f in train + val):
        raise ValueError(f"no image of collection {held_out!r} in {data_dir}")
    kept_train = [f for f in train if collection(f.path) != held_out]
    kept_val = [f for f in val if collection(f.path) != held_out]
    outside = [f for f in train + val if collection(f.path) == held_out]
    official = [f for f in val if f.split == "val"]
    return HoldoutSplit(kept_train, kept_val, outside, official)


def _scores(model: keras.Model, images: np.ndarray, flip: bool = False) -> np.ndarray:
    pixels = images.astype(np.float32)
    if flip:
        pixels = pixels[:, :, ::-1, :]
    return model.predict(pixels, batch_size=64, verbose=0)[PROBABILITY_LAYER].ravel()


def flip_band_rows(val_labels: np.ndarray, val_single: np.ndarray, val_averaged: np.ndarray,
                   held_labels: np.ndarray, held_single: np.ndarray, held_averaged: np.ndarray) -> dict:
    """Per rule: the held-out specificity when only images in the flip band (fitted on the
    validation, as the export fits it) get the mirrored pass, as the scorer does."""
    rows = {}
    for floor in SENSITIVITY_FLOORS:
        threshold = metrics.threshold_for_sensitivity(val_labels, val_averaged, floor)
        flip, _ = fit_flip_band(val_single, val_averaged, threshold)
        inside = flip.applies(held_single)
        scores = np.where(inside, held_averaged, held_single)
        rows[rule_name(floor)] = {
            "held_out_specificity_flip_band": metrics.confusion(held_labels, scores, threshold).specificity,
            "held_out_flip_band_share": float(inside.mean()),
            "held_out_label_agreement_with_every_image_averaged": float(np.mean(
                (scores >= threshold) == (held_averaged >= threshold)))}
    return rows


def proxy_metrics(val_labels: np.ndarray, val_scores: np.ndarray, held_labels: np.ndarray,
                  held_scores: np.ndarray, official_labels: np.ndarray, official_scores: np.ndarray) -> dict:
    """Held-out-collection figures at each threshold rule (threshold chosen on `val` only)."""
    positives = val_scores[val_labels == 1]
    held_negatives = held_scores[held_labels == 0]
    result = {
        "val": {"n": int(val_labels.size), "auc": metrics.roc_auc(val_labels, val_scores)},
        "held_out": {"n": int(held_labels.size), "negatives": int(held_negatives.size),
                     # Held-out normals against the validation pneumonias: threshold-free.
                     "auc_vs_val_positives": metrics.roc_auc(
                         np.r_[np.zeros(held_negatives.size), np.ones(positives.size)],
                         np.r_[held_negatives, positives]) if held_negatives.size else None,
                     "median_negative_score": float(np.median(held_negatives)) if held_negatives.size else None},
        "official_val": {"n": int(official_labels.size),
                         "auc": metrics.roc_auc(official_labels, official_scores)
                         if 0 < official_labels.sum() < official_labels.size else None},
        "rules": {},
    }
    for floor in SENSITIVITY_FLOORS:
        threshold = metrics.threshold_for_sensitivity(val_labels, val_scores, floor)
        val_counts = metrics.confusion(val_labels, val_scores, threshold)
        held_counts = metrics.confusion(held_labels, held_scores, threshold)
        official = metrics.confusion(official_labels, official_scores, threshold)
        result["rules"][rule_name(floor)] = {
            "threshold": threshold,
            "val_sensitivity": val_counts.sensitivity, "val_specificity": val_counts.specificity,
            "held_out_specificity": held_counts.specificity if held_negatives.size else None,
            "held_out_sensitivity": held_counts.sensitivity if held_labels.any() else None,
            "official_val_correct": int(official.true_positive + official.true_negative),
            "official_val_false_positive": int(official.false_positive),
        }
    return result


def run_holdout(config: TrainConfig, data_dir: Path, run_dir: Path, held_out: str) -> dict:
    """Train without `held_out`, score it and the rest of validation; write `run_dir/holdout.json`."""
    started = time.monotonic()
    split = holdout_split(data_dir, held_out, config.val_fraction, config.split_seed)
    train = load_images(split.train, HEIGHT, WIDTH, CHANNELS, "decoding train")
    val = load_images(split.val, HEIGHT, WIDTH, CHANNELS, "decoding val")
    held = load_images(split.held_out, HEIGHT, WIDTH, CHANNELS, "decoding held-out")
    print(f"hold-out {held_out}: train {train.class_counts()}  val {val.class_counts()}  "
          f"held out {held.class_counts()}", flush=True)
    model, history = train_model(train, val, config, run_dir)
    training_seconds = time.monotonic() - started
    by_path = {}
    result = {"held_out_collection": held_out, "config": config.as_dict(), "epochs": len(history),
              "training_seconds": round(training_seconds, 1), "train": train.class_counts()}
    model.save(run_dir / "trained.keras")
    single = {"val": _scores(model, val.images), "held": _scores(model, held.images)}
    averaged = {name: mean_logit_probability(scores, _scores(model, images, flip=True))
                for (name, scores), images in zip(single.items(), (val.images, held.images))}
    for flip_average in (False, True):
        chosen = averaged if flip_average else single
        val_scores, held_scores = chosen["val"], chosen["held"]
        by_path = dict(zip(val.paths + held.paths, np.r_[val_scores, held_scores]))
        official_paths = [str(f.path) for f in split.official_val]
        official_scores = np.array([by_path[p] for p in official_paths])
        official_labels = np.array([f.label for f in split.official_val])
        key = "flip_average" if flip_average else "single"
        result[key] = proxy_metrics(val.labels, val_scores, held.labels, held_scores,
                                    official_labels, official_scores)
    for rule, row in flip_band_rows(val.labels, single["val"], averaged["val"], held.labels, single["held"],
                                    averaged["held"]).items():
        result["flip_average"]["rules"][rule].update(row)
    (run_dir / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")
    return result


def summary_line(result: dict, rule: str = rule_name(0.97)) -> str:
    """One EXPERIMENTS.md-style line of a hold-out result."""
    parts = []
    for key in ("single", "flip_average"):
        block = result[key]
        row = block["rules"][rule]
        parts.append(f"{key}: val AUC {block['val']['auc']:.4f}, held-out AUC "
                     f"{block['held_out']['auc_vs_val_positives']:.4f}, at {rule}: val sens "
                     f"{row['val_sensitivity']:.3f} spec {row['val_specificity']:.3f}, held-out spec "
                     f"{row['held_out_specificity']:.3f}, official {row['official_val_correct']}/16")
    return f"{result['held_out_collection']} ({result['training_seconds'] / 60:.1f} min): " + " | ".join(parts)


def read_proxy(path: Path, min_sensitivity: float, flip_average: bool) -> dict:
    """The figures of one hold-out run at the shipped threshold rule, for model.json and the card."""
    result = json.loads(Path(path).read_text())
    block = result["flip_average" if flip_average else "single"]
    row = block["rules"][rule_name(min_sensitivity)]
    return {"held_out_collection": result["held_out_collection"], "run": str(Path(path).parent),
            "epochs": result["epochs"],
            "training_seconds": result["training_seconds"],
            "val_auc": block["val"]["auc"],
            "held_out_normals": block["held_out"]["negatives"],
            "held_out_auc_vs_val_positives": block["held_out"]["auc_vs_val_positives"],
            "rule": rule_name(min_sensitivity), **row}
