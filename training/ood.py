"""Fit the model's out-of-distribution statistics and measure what they flag.

    python -m training.ood [--model-dir model] [--data ../shared/data] [--percentile 97]

1. Pooled features (spatial mean of `feature_map`) of the model's own training split,
   rebuilt from model.json (`training.config`: val_fraction, split_seed).
2. The cut: training patients are dealt into folds; each fold's distances come from a
   fit on the other folds, and the cut is the `percentile`th percentile of these
   held-out distances. The shipped mean and covariance are then fitted on all of them.
3. Measured and written to `model/report/ood.json`, `model.json` (`ood`) and the model
   card: the share flagged of the by-patient validation split (never used in the fit or
   the cut), the official 16-image val, the full-resolution originals and generated
   non-X-rays (`training.ood_probes`), plus the grey-level spread behind `blank_image`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
from pathlib import Path

import numpy as np
from pneumoscan import images, ood, scoring
from pneumoscan.model import ModelMetadata, PneumoniaModel, default_model_dir
from pneumoscan_eval.datasets import LabelledFile, list_labelled
from tqdm import tqdm

from . import ood_probes
from .data import collection, dataset_files, patient_id
from .shortcut_check import (
    CARD_FILE,
    DEFAULT_DATA,
    FULLRES_SET,
    TRAINING_SET,
    update_model_card,
    validation_split,
)

STATS_FILE = "ood.npy"
REPORT_FILE = "ood.json"
DEFAULT_PERCENTILE = 97.0
FOLDS = 5
FOLD_SEED = 2026
BATCH = 64
# Validation X-rays turned into things the model never saw upright.
TRANSFORMED_XRAYS = 120
CARD_START, CARD_END = "<!-- ood-check -->", "<!-- /ood-check -->"


def features_of(model: PneumoniaModel, encoded: list[bytes], description: str) -> tuple[np.ndarray, np.ndarray]:
    """(pooled features, grey-level spread) of encoded images, decoded by the scoring path's decode
    step and run through the model in batches (a fit reads thousands of images)."""
    pixels = np.empty((len(encoded), *model.input_shape), np.uint8)
    for index, data in enumerate(tqdm(encoded, desc=description, unit="img", leave=False)):
        pixels[index], _ = scoring.decode(data, model.metadata.input)
    pooled = [ood.pooled_features(model.predict(pixels[start:start + BATCH]).feature_map)
              for start in range(0, len(pixels), BATCH)]
    spread = pixels.reshape(len(pixels), -1).astype(np.float32).std(axis=1)
    return (np.concatenate(pooled) if pooled else np.empty((0, 0))), spread


def file_features(model: PneumoniaModel, files: list[LabelledFile], description: str):
    return features_of(model, [f.path.read_bytes() for f in files], description)


def patient_folds(files: list[LabelledFile], folds: int = FOLDS, seed: int = FOLD_SEED) -> np.ndarray:
    """A fold number per file such that one patient's images share a fold."""
    patients = sorted({patient_id(f.path) for f in files})
    assigned = dict(zip(patients, np.random.default_rng(seed).permutation(len(patients)) % folds))
    return np.array([assigned[patient_id(f.path)] for f in files])


def held_out_distances(features: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Each image's distance under a fit that did not see its patient."""
    distances = np.empty(len(features))
    for fold in np.unique(folds):
        inside = folds == fold
        fitted = ood.FeatureDistribution.fit(features[~inside], model_sha256="")
        distances[inside] = fitted.distance(features[inside])
    return distances


def fit(features: np.ndarray, folds: np.ndarray, *, model_sha256: str,
        percentile: float = DEFAULT_PERCENTILE) -> tuple[ood.FeatureDistribution, np.ndarray]:
    """The shipped distribution (fit on all features, cut from held-out distances) and those distances."""
    if len(np.unique(folds)) < 2:
        raise ValueError("the cut needs at least two folds of patients")
    held_out = held_out_distances(features, folds)
    cut = float(np.percentile(held_out, percentile))
    return ood.FeatureDistribution.fit(features, model_sha256=model_sha256, threshold=cut), held_out


def _share(flags: np.ndarray) -> dict:
    return {"images": int(flags.size), "flagged": int(flags.sum()),
            "share": round(float(flags.mean()), 4) if flags.size else None}


def _spread(values: np.ndarray) -> dict:
    return {"min": round(float(values.min()), 2), "p1": round(float(np.percentile(values, 1)), 2),
            "median": round(float(np.median(values)), 2), "max": round(float(values.max()), 2)}


def measure(model: PneumoniaModel, stats: ood.FeatureDistribution, data: Path, val_files: list[LabelledFile],
            val_features: np.ndarray, val_spread: np.ndarray, seed: int = 0) -> dict:
    """Flagged shares (out_of_distribution) and blank failures of every evaluation set."""
    val_flags = stats.is_outside(val_features)
    official = np.array([f.split == "val" for f in val_files])
    collections = np.array([collection(f.path) for f in val_files])
    sets = {"validation (by patient)": _share(val_flags),
            "official val": _share(val_flags[official])}
    for name in sorted(set(collections)):
        sets[f"validation, {name} collection"] = _share(val_flags[collections == name])
    spreads = {"validation": _spread(val_spread)}

    fullres = list_labelled(data / FULLRES_SET) if (data / FULLRES_SET).is_dir() else []
    if fullres:
        features, spread = file_features(model, fullres, "full-res originals")
        sets[f"full-resolution originals ({len(fullres)})"] = _share(stats.is_outside(features))
        spreads["full-resolution originals"] = _spread(spread)

    rng = np.random.default_rng(seed)
    chosen = [val_files[i] for i in sorted(rng.permutation(len(val_files))[:TRANSFORMED_XRAYS])]
    upright = [images.decode(f.path.read_bytes()).image for f in chosen]
    probes = dict(ood_probes.synthetic(seed))
    for name, transform in ood_probes.TRANSFORMS.items():
        probes[f"validation X-rays, {name}"] = ood_probes.transformed_xrays(upright, transform)
    generated = {}
    for name, encoded in probes.items():
        features, spread = features_of(model, encoded, name)
        blank = spread <= ood.BLANK_MAX_STD
        flagged = stats.is_outside(features) & ~blank
        generated[name] = dict(_share(flagged | blank), blank_image=int(blank.sum()),
                               out_of_distribution=int(flagged.sum()), grey_level_std=_spread(spread))
    return {"real": sets, "generated": generated, "grey_level_std": spreads}


def _fraction(row: dict) -> str:
    return f"{row['flagged']} / {row['images']} ({row['share']:.1%})"


POPULATIONS = [
    "Trained on: paediatric (about 1-5 years) anterior-posterior chest radiographs from one centre",
    "(Guangzhou Women and Children's Medical Center), the Kermany et al. 2018 train split: its `IM` and",
    "later `NORMAL2` normal collections and its bacterial/viral pneumonia collection, as 8-bit JPEGs.",
    "Not trained on: adults or adolescents, lateral or PA views, other hospitals, scanners or export",
    "pipelines, raw DICOM windows, other findings (effusion, nodules, devices), CT, or anything that is",
    "not a chest radiograph.",
    "",
]


def card_section(result: dict, *, populations: bool = True) -> str:
    """The model card's section on what the warnings flag; with `populations`, also who the model
    was and was not trained on (for a card that does not say so itself)."""
    stats = result["statistics"]
    real = "\n".join(f"| {name} | {_fraction(row)} |" for name, row in result["measured"]["real"].items())
    generated = "\n".join(
        f"| {name} | {_fraction(row)} | {row['blank_image']} | {row['out_of_distribution']} |"
        for name, row in result["measured"]["generated"].items())
    spread = result["measured"]["grey_level_std"]
    lowest = min(row["min"] for row in spread.values() if row)
    return "\n".join([
        CARD_START,
        "## Populations, and images outside what the model knows" if populations
        else "## Images outside what the model knows",
        *(POPULATIONS if populations else []),
        "Images outside the training population are still scored, so scoring also says when an image is",
        "outside what the model knows:",
        "",
        "- `blank_image` (FAILED, not scored): the grey-level standard deviation of the 224 x 224 model",
        f"  input is <= {ood.BLANK_MAX_STD:g}; the lowest of every real X-ray measured here is {lowest:.1f}.",
        "- `out_of_distribution` (a warning; the score is still given): the Mahalanobis distance of the",
        "  image's pooled last feature map (Ledoit-Wolf covariance of the training split's features,",
        (f"  shrinkage {stats['shrinkage']:.2g}) is above {stats['threshold']:.2f}, the "
         f"{stats['percentile']:g}th percentile of training images held out of the fit by patient."),
        "",
        "| real X-rays (none in the fit or the cut) | flagged out_of_distribution |",
        "|---|---|",
        real,
        "",
        "| generated, not paediatric AP X-rays | warned or failed | blank_image | out_of_distribution |",
        "|---|---|---|---|",
        generated,
        "",
        "Adult X-rays of other hospitals: the population check below (it also gives what",
        "`out_of_distribution` warns of them). Not measured here (no such data in the team): the later",
        "paediatric collection of the official test split. The statistics belong to this model only",
        f"(`{STATS_FILE}`, sha256 in model.json `ood`); `make train` refits them, `make ood` alone too.",
        f"Numbers: [report/{REPORT_FILE}](report/{REPORT_FILE}).",
        CARD_END,
    ])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m training.ood", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=None, help="model folder (default: model/)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    parser.add_argument("--percentile", type=float, default=DEFAULT_PERCENTILE,
                        help="cut: this percentile of held-out training distances (default %(default)s)")
    args = parser.parse_args(argv)

    model_dir = args.model_dir or default_model_dir()
    model = PneumoniaModel(model_dir)
    train_files, val_files = dataset_files(args.data / TRAINING_SET, *validation_split(model.metadata))
    train_features, train_spread = file_features(model, train_files, "train split")
    val_features, val_spread = file_features(model, val_files, "validation split")

    stats, held_out = fit(train_features, patient_folds(train_files), model_sha256=model.sha256,
                          percentile=args.percentile)
    data = stats.matrix_bytes()
    entry = {"file": STATS_FILE, "sha256": hashlib.sha256(data).hexdigest(), **stats.entry()}
    # Scoring uses the stored float32 numbers and the rounded threshold: measure with those.
    stored = ood.FeatureDistribution.from_stored(data, entry)
    rounding = float(np.max(np.abs(stored.distance(val_features) - stats.distance(val_features))))
    measured = measure(model, stored, args.data, val_files, val_features, val_spread)
    measured["grey_level_std"]["training split"] = _spread(train_spread)

    statistics = {
        **entry, "size_bytes": len(data),
        "features": "spatial mean of feature_map (the vector the classifier head pools)",
        "distance": "Mahalanobis, Ledoit-Wolf shrunk covariance", "percentile": args.percentile,
        "cut": f"{args.percentile:g}th percentile of the distances of training images held out of the fit "
               f"({FOLDS} folds by patient)",
        "fitted_on": {"images": len(train_files), "patients": len({patient_id(f.path) for f in train_files})},
        "blank_max_std": ood.BLANK_MAX_STD,
        "validation_flagged": measured["real"]["validation (by patient)"]["share"],
    }
    (model_dir / STATS_FILE).write_bytes(data)
    metadata = ModelMetadata.read(model_dir)
    dataclasses.replace(metadata, ood=statistics).write(model_dir)
    ood.load(model_dir, statistics, model.sha256)  # what the scorer will load

    result = {
        "model": {"version": model.version, "sha256": model.sha256},
        "statistics": statistics,
        "held_out_training": {"images": len(held_out), "share_above_cut": round(float(
            np.mean(held_out > stats.threshold)), 4)},
        "float32_storage_max_distance_error": round(rounding, 6),
        "measured": measured,
        "command": "python -m training.ood",
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    report = model_dir / "report"
    report.mkdir(parents=True, exist_ok=True)
    (report / REPORT_FILE).write_text(json.dumps(result, indent=2) + "\n")
    card = model_dir / CARD_FILE
    # Cards written by training state the populations themselves.
    stated = card.is_file() and "\n## Populations\n" in card.read_text()
    update_model_card(card, card_section(result, populations=not stated), start=CARD_START, end=CARD_END)
    print(json.dumps({"threshold": statistics["threshold"],
                      **{name: row["share"] for name, row in measured["real"].items()},
                      **{name: row["share"] for name, row in measured["generated"].items()}}, indent=2))
    return result


if __name__ == "__main__":
    main()
