"""Fit the model's population head (`adult_like_image`) and measure what it warns.

    python -m training.population [--model-dir model] [--data ../shared/data]
                                  [--adults nih,lung_masks] [--percentile 98] [--l2 0.001]

1. Pooled features (the vector the classifier head reads, `training.ood.features_of`) of
   the paediatric class, the model's own training split rebuilt from model.json, and of
   the adult class: the NIH ChestX-ray14 half (`external/nih_chestxray14`, patients aged
   18 or more; its children are scored, never trained on) and the `lung_masks` images
   (adult X-rays of other hospitals; those recorded under 18 are left out).
2. A logistic head (L2, classes weighted equally) on the standardised features.
   Everything is dealt into folds: training patients, NIH patients and lung_masks cases
   (one source page is one case). Each fold is scored by a head fitted on the other
   folds; the cut is the `percentile`th percentile of the held-out logits of paediatric
   training images. The shipped head is then fitted on every fold.
3. Measured and written to `model/report/population.json`, model.json (`population`) and
   the model card: the warned share of the by-patient validation split and the official
   val (never in a fit or the cut: the stand-in for the paediatric test split), of the NIH
   half by cross-validation (no NIH patient is scored by a head that saw them), of the
   lung_masks images (by cross-validation when they are trained on, else by the shipped
   head, which never saw them), beside what `out_of_distribution` warns on the same
   images, and the same figures for other head options and cuts.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pneumoscan import ood, population
from pneumoscan.model import ModelMetadata, PneumoniaModel, default_model_dir
from pneumoscan_eval.datasets import TRAINING_SET

from .data import collection, dataset_files
from .ood import features_of, patient_folds
from .shortcut_check import CARD_FILE, DEFAULT_DATA, update_model_card, validation_split

REPORT_FILE = "population.json"
NIH_SET = "external/nih_chestxray14"
LUNG_MASKS_SET = "lung_masks"
NIH, LUNG_MASKS = "nih", "lung_masks"
ADULT_SOURCES = (NIH, LUNG_MASKS)
ADULT_AGE = 18
FOLDS = 5
FOLD_SEED = 2026
DEFAULT_PERCENTILE = 98.0
DEFAULT_L2 = 0.001
# Cuts and head options reported beside the shipped one.
PERCENTILES = (95.0, 97.0, 98.0, 99.0, 99.5)
L2_OPTIONS = (0.0001, 0.001, 0.01)
CARD_START, CARD_END = "<!-- population-check -->", "<!-- /population-check -->"


@dataclass(frozen=True)
class Sample:
    """One image of an adult set: where it is, the case it belongs to and the age if recorded."""

    path: Path
    group: str
    age: float | None


def _age(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def nih_samples(data: Path) -> list[Sample]:
    """The NIH half's images from its labels.csv (file, age, patientid); none without the folder."""
    folder = data / NIH_SET
    if not (folder / "labels.csv").is_file():
        return []
    with (folder / "labels.csv").open(newline="") as handle:
        return [Sample(folder / row["file"], f"nih:{row['patientid']}", _age(row.get("age")))
                for row in csv.DictReader(handle)]


def lung_mask_samples(data: Path) -> list[Sample]:
    """The lung_masks images, each once (the same file is in both annotation folders), grouped by
    the page they came from (one page is one patient's case)."""
    samples, seen = [], set()
    for pairs in sorted((data / LUNG_MASKS_SET).glob("*/pairs.csv")):
        with pairs.open(newline="") as handle:
            for row in csv.DictReader(handle):
                if row["file"] in seen:
                    continue
                seen.add(row["file"])
                samples.append(Sample(pairs.parent / "images" / row["file"],
                                      f"case:{row.get('url') or row['file']}", _age(row.get("age"))))
    return samples


def group_folds(groups: list[str], folds: int = FOLDS, seed: int = FOLD_SEED) -> np.ndarray:
    """A fold per item such that one group's items share it (seeded, like `training.ood.patient_folds`)."""
    names = sorted(set(groups))
    assigned = dict(zip(names, np.random.default_rng(seed).permutation(len(names)) % folds))
    return np.array([assigned[name] for name in groups], dtype=np.int64)


def standardiser(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) of (n, k) features; a constant feature gets scale 1 (it carries nothing)."""
    mean = features.mean(axis=0)
    std = features.std(axis=0)
    return mean, np.where(std > 1e-6, std, 1.0)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, iterations: int = 100) -> tuple[np.ndarray, float]:
    """(weights, bias) minimising the class-balanced mean log loss + l2 / 2 * |weights|^2 (Newton)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, k = x.shape
    positives = y.sum()
    if positives in (0, n):
        raise ValueError("the head needs images of both classes")
    sample = np.where(y == 1, n / (2 * positives), n / (2 * (n - positives))) / n
    design = np.hstack([x, np.ones((n, 1))])
    penalty = np.full(k + 1, l2)
    penalty[-1] = 0.0  # the bias is not shrunk
    beta = np.zeros(k + 1)
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-np.clip(design @ beta, -40, 40)))
        gradient = design.T @ (sample * (p - y)) + penalty * beta
        hessian = (design * (sample * p * (1 - p))[:, None]).T @ design + np.diag(penalty)
        step = np.linalg.solve(hessian + 1e-9 * np.eye(k + 1), gradient)
        beta -= step
        if np.max(np.abs(step)) < 1e-7:
            break
    return beta[:-1], float(beta[-1])


def fit_head(features: np.ndarray, adult: np.ndarray, *, l2: float, model_sha256: str = "",
             threshold: float = np.inf) -> population.PopulationHead:
    mean, scale = standardiser(features)
    weights, bias = fit_logistic((features - mean) / scale, adult, l2)
    return population.PopulationHead(mean, scale, weights, bias, float(threshold), model_sha256)


@dataclass
class Pool:
    """Every image a head may be fitted on or measured with: features, class, fold, whether it is
    trained on (an adult set left outside the fit, and the NIH children, are only scored)."""

    features: np.ndarray
    adult: np.ndarray      # bool
    folds: np.ndarray      # int
    trained: np.ndarray    # bool
    source: np.ndarray     # "paediatric", "nih", "lung_masks"


def held_out_logits(pool: Pool, *, l2: float) -> np.ndarray:
    """Each image's logit under a head fitted on the other folds' trained images."""
    logits = np.empty(len(pool.adult))
    for fold in np.unique(pool.folds):
        inside = pool.folds == fold
        fit = pool.trained & ~inside
        head = fit_head(pool.features[fit], pool.adult[fit], l2=l2)
        logits[inside] = head.logit(pool.features[inside])
    return logits


def _share(flags: np.ndarray) -> dict:
    flags = np.asarray(flags, dtype=bool)
    return {"images": int(flags.size), "warned": int(flags.sum()),
            "share": round(float(flags.mean()), 4) if flags.size else None}


def evaluate_option(pool: Pool, val_features: np.ndarray, *, l2: float,
                    percentiles: tuple[float, ...] = PERCENTILES) -> dict:
    """What one head option warns at each cut: the cross-validated adult sets and paediatric
    training images, and validation under the head fitted on every trained image."""
    logits = held_out_logits(pool, l2=l2)
    trained = pool.trained
    shipped = fit_head(pool.features[trained], pool.adult[trained], l2=l2)
    val_logits = shipped.logit(val_features)
    paediatric = pool.source == "paediatric"
    rows = {}
    for percentile in percentiles:
        cut = float(np.percentile(logits[paediatric], percentile))
        row = {"cut": round(cut, 4), "validation": _share(val_logits > cut)["share"],
               "training, held out": _share(logits[paediatric] > cut)["share"]}
        for source in ADULT_SOURCES:
            members = pool.source == source
            if members.any():
                outside = not trained[members & pool.adult].any()
                scores = shipped.logit(pool.features[members]) if outside else logits[members]
                row[f"{source} ({'never trained on' if outside else 'cross-validated'})"] = _share(
                    scores > cut)["share"]
        rows[f"{percentile:g}"] = row
    return {"l2": l2, "trained_on": sorted({str(s) for s in pool.source[pool.trained & pool.adult]}), "cuts": rows}


def option_name(adults: list[str], l2: float) -> str:
    return f"adults={'+'.join(adults)}, l2={l2:g}"


def adult_rows(samples: list[Sample], features: np.ndarray, source: str, trained: bool) -> dict:
    adult = np.array([s.age is None or s.age >= ADULT_AGE for s in samples], dtype=bool)
    return {"features": features, "adult": np.ones(len(samples), bool),
            "folds": group_folds([s.group for s in samples]),
            # The children of an adult set are scored by the folds, never fitted on as adults.
            "trained": adult & trained, "source": np.full(len(samples), source), "is_adult_age": adult}


def build_pool(train_features: np.ndarray, train_folds: np.ndarray, adults: dict[str, dict]) -> Pool:
    parts = [{"features": train_features, "adult": np.zeros(len(train_features), bool), "folds": train_folds,
              "trained": np.ones(len(train_features), bool), "source": np.full(len(train_features), "paediatric")}]
    parts += list(adults.values())
    return Pool(*(np.concatenate([part[key] for part in parts])
                  for key in ("features", "adult", "folds", "trained", "source")))


def measure(pool: Pool, logits: np.ndarray, shipped: population.PopulationHead, distribution: ood.FeatureDistribution,
            adults: dict[str, dict], val_files: list, val_features: np.ndarray) -> dict:
    """Warned shares (adult_like_image, out_of_distribution, either) of every measured set."""
    cut = shipped.threshold

    def row(adult_like: np.ndarray, features: np.ndarray) -> dict:
        outside = distribution.is_outside(features)
        return {"images": int(adult_like.size), "adult_like_image": _share(adult_like)["share"],
                "out_of_distribution": _share(outside)["share"], "either": _share(adult_like | outside)["share"]}

    val_flags = shipped.is_adult_like(val_features)
    official = np.array([f.split == "val" for f in val_files])
    collections = np.array([collection(f.path) for f in val_files])
    paediatric = {"validation (by patient, with the official val)": row(val_flags, val_features),
                  "official val": row(val_flags[official], val_features[official])}
    for name in sorted(set(collections)):
        members = collections == name
        paediatric[f"validation, {name} collection"] = row(val_flags[members], val_features[members])
    outside_sets = {}
    offset = int(np.sum(pool.source == "paediatric"))
    for source, part in adults.items():
        members = slice(offset, offset + len(part["adult"]))
        offset += len(part["adult"])
        features = pool.features[members]
        cross_validated = bool(part["trained"].any())
        flags = logits[members] > cut if cross_validated else shipped.is_adult_like(features)
        how = "cross-validated" if cross_validated else "never trained on"
        outside_sets[f"{source} ({how})"] = row(flags, features)
        ages = part["is_adult_age"]
        if (~ages).any():
            outside_sets[f"{source}, aged {ADULT_AGE}+ or unrecorded"] = row(flags[ages], features[ages])
            outside_sets[f"{source}, aged under {ADULT_AGE}"] = row(flags[~ages], features[~ages])
    return {"paediatric": paediatric, "adult": outside_sets}


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


SOURCE_NAMES = {NIH: "the NIH ChestX-ray14 half", LUNG_MASKS: "the lung_masks images"}


def unseen_hospital_lines(result: dict) -> list[str]:
    """What a head trained on one adult set warns of the other, which it never saw (same L2 and cut
    percentile as the shipped head): the estimate for a hospital outside every fit."""
    head = result["head"]
    lines = []
    for name, option in result["options"].items():
        if option["l2"] != head["l2"] or len(option["trained_on"]) != 1:
            continue
        row = option["cuts"].get(f"{head['percentile']:g}", {})
        for key, share in row.items():
            if key.endswith("(never trained on)") and share is not None:
                other = key.split(" (")[0]
                lines.append(f"- trained on {SOURCE_NAMES.get(option['trained_on'][0], option['trained_on'][0])} "
                             f"only: {share:.1%} of {SOURCE_NAMES.get(other, other)} warned, "
                             f"{row['validation']:.1%} of validation.")
    return lines


def card_section(result: dict) -> str:
    head = result["head"]
    rows = [f"| {name} | {row['images']} | {_pct(row['adult_like_image'])} | {_pct(row['out_of_distribution'])} | "
            f"{_pct(row['either'])} |"
            for group in ("paediatric", "adult") for name, row in result["measured"][group].items()]
    cuts = result["options"][result["head"]["option"]]["cuts"]
    curve_header = [key for key in next(iter(cuts.values())) if key != "cut"]
    curve = [f"| {percentile} | " + " | ".join(_pct(row[key]) for key in curve_header) + " |"
             for percentile, row in cuts.items()]
    return "\n".join([
        CARD_START,
        "## Adult X-rays and other hospitals (population check)",
        "The model was trained on children aged about 1-5 from one hospital. `adult_like_image` (a warning;",
        "the score is still given) is raised when a logistic head on the image's pooled last feature map (the",
        "vector the classifier reads), trained to tell the paediatric training split from adult X-rays of",
        f"other hospitals ({' and '.join(SOURCE_NAMES.get(name, name) for name in head['adults'])}; L2 {head['l2']:g}),",
        f"gives a logit above {head['threshold']:.3f}: the {head['percentile']:g}th percentile of paediatric training",
        "patients held out of the fit. Adult sets are measured by cross-validation (5 folds by NIH patient",
        "or lung_masks case: no image is scored by a head that saw its patient) or, when not trained on, by",
        "the shipped head. The validation split and the official val were in no fit and no cut: they stand",
        "in for the paediatric test split, whose later, older, wider-framed children may be warned more often.",
        "",
        "| images | n | adult_like_image | out_of_distribution | either |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "A hospital outside every fit, estimated by training on one adult set and measuring the other:",
        *unseen_hospital_lines(result),
        "",
        "Other cuts of the same head (share warned `adult_like_image`):",
        "",
        "| percentile | " + " | ".join(curve_header) + " |",
        "|---|" + "---|" * len(curve_header),
        *curve,
        "",
        "The head belongs to this model only (model.json `population`, with its sha256); `make train` refits it,",
        f"`make population` alone too. Numbers and other head options: [report/{REPORT_FILE}](report/{REPORT_FILE}).",
        CARD_END,
    ])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m training.population", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=None, help="model folder (default: model/)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    parser.add_argument("--adults", default=",".join(ADULT_SOURCES),
                        help="adult sets the head is trained on, of %(default)s (the others are only measured)")
    parser.add_argument("--percentile", type=float, default=DEFAULT_PERCENTILE,
                        help="cut: this percentile of held-out paediatric training logits (default %(default)s)")
    parser.add_argument("--l2", type=float, default=DEFAULT_L2, help="L2 penalty of the head (default %(default)s)")
    args = parser.parse_args(argv)
    trained_on = [name for name in args.adults.split(",") if name]
    if unknown := set(trained_on) - set(ADULT_SOURCES):
        parser.error(f"unknown adult sets {sorted(unknown)}: choose from {', '.join(ADULT_SOURCES)}")

    model_dir = args.model_dir or default_model_dir()
    model = PneumoniaModel(model_dir)
    distribution = ood.load(model_dir, model.metadata.ood, model.sha256)
    train_files, val_files = dataset_files(args.data / TRAINING_SET, *validation_split(model.metadata))
    samples = {NIH: nih_samples(args.data), LUNG_MASKS: lung_mask_samples(args.data)}
    samples = {name: listed for name, listed in samples.items() if listed}
    if not any(name in samples for name in trained_on):
        raise SystemExit(f"none of the adult sets {trained_on} is in {args.data}: nothing to fit the head on")

    def features(paths: list[Path], description: str) -> np.ndarray:
        return features_of(model, [path.read_bytes() for path in paths], description)[0]

    train_features = features([f.path for f in train_files], "train split")
    val_features = features([f.path for f in val_files], "validation split")
    adult_features = {name: features([s.path for s in listed], name) for name, listed in samples.items()}
    train_folds = patient_folds(train_files, FOLDS, FOLD_SEED)

    def adults_trained_on(chosen: list[str]) -> dict[str, dict]:
        return {name: adult_rows(listed, adult_features[name], name, name in chosen)
                for name, listed in samples.items()}

    adults = adults_trained_on(trained_on)
    pool = build_pool(train_features, train_folds, adults)
    # Each option: which adult sets are trained on, and the L2 penalty. A set left out is measured as
    # a hospital the head never saw.
    choices = [trained_on] + [[name] for name in trained_on if len(trained_on) > 1]
    options = {}
    for chosen in choices:
        option_pool = pool if chosen == trained_on else build_pool(train_features, train_folds,
                                                                   adults_trained_on(chosen))
        for l2 in sorted({*L2_OPTIONS, args.l2}):
            options[option_name(chosen, l2)] = evaluate_option(option_pool, val_features, l2=l2)
    logits = held_out_logits(pool, l2=args.l2)
    cut = float(np.percentile(logits[pool.source == "paediatric"], args.percentile))
    head = fit_head(pool.features[pool.trained], pool.adult[pool.trained], l2=args.l2, model_sha256=model.sha256,
                    threshold=cut)
    # Scoring uses the numbers as model.json stores them: measure with those.
    stored = population.PopulationHead.from_entry(head.entry())
    measured = measure(pool, logits, stored, distribution, adults, val_files, val_features)

    section = {
        **head.entry(),
        "features": "spatial mean of feature_map (the vector the classifier head pools), standardised",
        "head": "logistic regression, L2, classes weighted equally",
        "l2": args.l2, "percentile": args.percentile, "adults": trained_on,
        "option": option_name(trained_on, args.l2),
        "cut": f"{args.percentile:g}th percentile of the logits of paediatric training images held out of the fit "
               f"({FOLDS} folds by patient)",
        "fitted_on": {"paediatric": len(train_files),
                      **{name: int(part["trained"].sum()) for name, part in adults.items()}},
        "validation_warned": measured["paediatric"]["validation (by patient, with the official val)"]["adult_like_image"],
    }
    metadata = ModelMetadata.read(model_dir)
    dataclasses.replace(metadata, population=section).write(model_dir)
    population.load(section, model.sha256)  # what the scorer will load

    result = {
        "model": {"version": model.version, "sha256": model.sha256},
        "head": {key: value for key, value in section.items() if key not in ("mean", "scale", "weights")},
        "measured": measured,
        "options": options,
        "folds": {"count": FOLDS, "seed": FOLD_SEED},
        "command": "python -m training.population",
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    report = model_dir / "report"
    report.mkdir(parents=True, exist_ok=True)
    (report / REPORT_FILE).write_text(json.dumps(result, indent=2) + "\n")
    update_model_card(model_dir / CARD_FILE, card_section(result), start=CARD_START, end=CARD_END)
    print(json.dumps({"threshold": section["threshold"],
                      **{name: {k: v for k, v in row.items() if k != "images"}
                         for group in measured.values() for name, row in group.items()}}, indent=2))
    return result


if __name__ == "__main__":
    main()
