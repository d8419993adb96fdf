"""Fit the pneumonia subtype head (bacterial or viral) of the model in a folder and measure it.

    python -m training.subtype [--model-dir model] [--data ../shared/data] [--head refit|trained]

The head is a logistic regression on the pooled features the detection head reads (the
spatial mean of `feature_map`, flip-averaged where the detection score is), so it runs on
what inference computes anyway. Its numbers belong to one network: refit after every model.
A network trained with `--subtype-weight` learned features that tell the subtypes apart; the
unit it was trained with is in model.json `training.subtype_head` and measured beside the
refitted head (`--head trained` ships it instead).

1. Features: every pneumonia of the model's own by-patient split (model.json
   `training.config`: val_fraction, split_seed), through the shipped int8 model; the
   subtype is the file name's (`person*_bacteria_*`, `person*_virus_*`). The network's
   patient block (`training.patient_block_hold_out`) is set aside.
2. Fit on the training split's pneumonias: features standardised, L2-penalised logistic
   regression by Newton's method, the penalty chosen by held-out log loss over folds of
   training patients; the standardisation is then folded into the weights.
3. On the validation pneumonias the model calls PNEUMONIA (those that get a subtype):
   Platt scaling of the logit (folded into the weights and bias), the threshold (highest
   balanced accuracy) and the uncertain band (module constants state the rules).
4. Written: model.json `subtype`, `model/report/subtype.json` and the model card's section;
   measured on validation, on the patient block (patients neither the network nor the head
   saw) and, without subtype labels, on the NIH half (the share of the images called
   PNEUMONIA that would be warned `subtype_uncertain`).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
from pathlib import Path

import numpy as np
from pneumoscan import ood, scoring
from pneumoscan.model import (
    SUBTYPE_UNCERTAIN, ModelMetadata, PneumoniaModel, SubtypeHead, default_model_dir, logit_probability,
    probability_logit,
)
from pneumoscan_eval import metrics
from pneumoscan_eval.datasets import SUBTYPES, LabelledFile, list_labelled
from tqdm import tqdm

from .data import dataset_files, patient_id, split_patient_block
from .ood import patient_folds
from .shortcut_check import CARD_FILE, DEFAULT_DATA, TRAINING_SET, update_model_card, validation_split

REPORT_FILE = "subtype.json"
EXTERNAL_SET = "external/nih_chestxray14"
CARD_START, CARD_END = "<!-- subtype -->", "<!-- /subtype -->"
BATCH = 64
# The L2 penalties tried (on standardised features, mean log loss + penalty / 2 * |w|^2).
PENALTIES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
# The uncertain band: where an image moves the odds of viral against bacterial by less than
# BAND_EVIDENCE times either way from the threshold's odds (calibrated logit within
# ln(BAND_EVIDENCE) of the threshold's). An accuracy rule (the band outside which validation
# calls are right 90 % of the time) needs validation labels cleaner than the file names'
# subtype: with them it withheld every subtype, however good the network.
BAND_EVIDENCE = 1.5
THRESHOLD_RULE = ("P(viral | pneumonia) >= threshold is viral: the highest balanced accuracy (mean of the "
                  "two subtypes' recall) on the validation pneumonias the model calls PNEUMONIA, after Platt "
                  "scaling there; midway to the next lower probability")
BAND_RULE = (f"calibrated P(viral | pneumonia) whose odds are within {BAND_EVIDENCE:g} times the threshold's odds "
             f"either way (logit within ln {BAND_EVIDENCE:g} of the threshold's): evidence too weak for either subtype")


# -- the fit (pure numpy, no model) --------------------------------------------------------------
def _objective(x: np.ndarray, y: np.ndarray, theta: np.ndarray, penalty: np.ndarray) -> float:
    z = x @ theta
    return float(np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * np.sum(penalty * theta ** 2))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, *, iterations: int = 100,
                 tolerance: float = 1e-9) -> tuple[np.ndarray, float]:
    """(weights, bias) minimising mean log loss + l2 / 2 * |weights|^2 (the bias unpenalised):
    Newton's method (iteratively reweighted least squares) with a halving line search."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64).ravel()
    if x.ndim != 2 or len(x) != len(y) or not np.isin(y, (0, 1)).all():
        raise ValueError("fit_logistic needs (n, k) features and n labels of 0 or 1")
    design = np.hstack([x, np.ones((len(x), 1))])
    penalty = np.r_[np.full(x.shape[1], float(l2)), 0.0]
    theta = np.zeros(design.shape[1])
    loss = _objective(design, y, theta, penalty)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(design @ theta)))
        gradient = design.T @ (p - y) / len(y) + penalty * theta
        hessian = (design * (p * (1 - p))[:, None]).T @ design / len(y) + np.diag(penalty)
        step = np.linalg.solve(hessian + 1e-10 * np.eye(len(theta)), gradient)
        scale = 1.0
        while scale > 1e-6:
            candidate = theta - scale * step
            candidate_loss = _objective(design, y, candidate, penalty)
            if candidate_loss <= loss:
                break
            scale /= 2
        theta, previous, loss = candidate, loss, candidate_loss
        if np.max(np.abs(scale * step)) < tolerance or previous - loss < tolerance * 1e-3:
            break
    return theta[:-1], float(theta[-1])


@dataclasses.dataclass(frozen=True)
class Standardiser:
    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Standardiser:
        x = np.asarray(x, np.float64)
        scale = x.std(axis=0)
        # A feature constant over the training images (a dead channel) carries nothing: weight 0.
        return cls(x.mean(axis=0), np.where(scale > 1e-12, scale, np.inf))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, np.float64) - self.mean) / self.scale

    def fold(self, weights: np.ndarray, bias: float) -> tuple[np.ndarray, float]:
        """The (weights, bias) on raw features that give the same logit."""
        raw = weights / self.scale
        return raw, float(bias - raw @ self.mean)


def choose_penalty(x: np.ndarray, y: np.ndarray, folds: np.ndarray,
                   penalties: tuple[float, ...] = PENALTIES) -> tuple[float, dict[str, float]]:
    """The penalty with the lowest log loss on held-out folds (of patients), and every penalty's."""
    losses = {}
    for l2 in penalties:
        total = 0.0
        for fold in np.unique(folds):
            inside = folds == fold
            standardise = Standardiser.fit(x[~inside])
            weights, bias = fit_logistic(standardise(x[~inside]), y[~inside], l2)
            z = standardise(x[inside]) @ weights + bias
            total += float(np.sum(np.logaddexp(0.0, z) - y[inside] * z))
        losses[f"{l2:g}"] = total / len(y)
    best = min(penalties, key=lambda l2: losses[f"{l2:g}"])
    return best, losses


def platt(logits: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(a, b) of sigmoid(a * logit + b) fitted by maximum likelihood."""
    (a,), b = fit_logistic(np.asarray(logits, np.float64)[:, None], y, 0.0)
    return float(a), b


def uncertain_band(threshold: float, evidence: float = BAND_EVIDENCE) -> tuple[float, float]:
    """BAND_RULE's band in probability around `threshold`."""
    logit = float(probability_logit(threshold))
    half_width = float(np.log(evidence))
    return (round(float(logit_probability(logit - half_width)), 6),
            round(float(logit_probability(logit + half_width)), 6))


def refit_weights(train_x: np.ndarray, train_y: np.ndarray, folds: np.ndarray) -> tuple[np.ndarray, float, dict]:
    """(weights, bias, fit record) of a logistic head fitted on frozen training features: the
    penalty by held-out log loss over folds of patients, the standardisation folded in."""
    l2, losses = choose_penalty(train_x, train_y, folds)
    standardise = Standardiser.fit(train_x)
    weights, bias = standardise.fold(*fit_logistic(standardise(train_x), train_y, l2))
    return weights, bias, {"method": "refit", "penalty": l2, "held_out_log_loss": losses}


def calibrate(weights: np.ndarray, bias: float, val_x: np.ndarray, val_y: np.ndarray,
              fit: dict | None = None) -> tuple[SubtypeHead, dict]:
    """Platt scaling, threshold and band on validation, for a head's raw (weights, bias)."""
    a, b = platt(val_x @ weights + bias, val_y)
    weights, bias = a * weights, a * bias + b
    val_probability = logit_probability(val_x @ weights + bias)
    threshold = round(metrics.balanced_accuracy_threshold(val_y, val_probability), 6)
    head = SubtypeHead(weights, bias, threshold, uncertain_band(threshold), SUBTYPES, THRESHOLD_RULE, BAND_RULE)
    fit = {**(fit or {}), "platt": {"a": a, "b": b}}
    return head, fit


def calibrated_head(train_x: np.ndarray, train_y: np.ndarray, folds: np.ndarray, val_x: np.ndarray,
                    val_y: np.ndarray) -> tuple[SubtypeHead, dict]:
    """The whole refit: penalty and weights on train, Platt, threshold and band on validation."""
    weights, bias, fit = refit_weights(train_x, train_y, folds)
    return calibrate(weights, bias, val_x, val_y, fit)


def trained_weights(metadata: ModelMetadata) -> tuple[np.ndarray, float] | None:
    """The subtype unit trained with the network (`python -m training --subtype-weight`), as
    the run recorded it in model.json `training.subtype_head`; None for a detector alone."""
    section = metadata.training.get("subtype_head")
    if not section:
        return None
    return np.asarray(section["weights"], np.float64), float(section["bias"])


# -- features through the model ------------------------------------------------------------------
def detect(model: PneumoniaModel, files: list[LabelledFile], description: str) -> tuple[np.ndarray, np.ndarray]:
    """(P(pneumonia), pooled features) of files, decoded and run as the scorer does."""
    pixels = np.empty((len(files), *model.input_shape), np.uint8)
    for index, item in enumerate(tqdm(files, desc=description, unit="img", leave=False)):
        pixels[index], _ = scoring.decode(item.path.read_bytes(), model.metadata.input)
    probability, pooled = [], []
    for start in range(0, len(files), BATCH):
        prediction = model.predict(pixels[start:start + BATCH])
        probability.append(prediction.probability.astype(np.float64))
        pooled.append(ood.pooled_features(prediction.feature_map))
    return np.concatenate(probability), np.concatenate(pooled)


def _viral(files: list[LabelledFile]) -> np.ndarray:
    return np.array([SUBTYPES.index(f.subtype) for f in files])


def _round(summary: dict) -> dict:
    return {name: (round(value, 4) if isinstance(value, float) else _round(value) if isinstance(value, dict)
                   else value) for name, value in summary.items()}


def cross_fitted(val_x: np.ndarray, val_y: np.ndarray, val_patients: list[str], weights: np.ndarray,
                 bias: float) -> dict:
    """Platt, threshold and band chosen on half of the validation patients and measured on the
    other half, both ways: what those choices give on patients they did not see."""
    patients = sorted(set(val_patients))
    half = set(np.random.default_rng(0).permutation(patients)[: len(patients) // 2])
    first = np.array([p in half for p in val_patients])
    called = np.zeros(len(val_y), bool)
    uncertain = np.zeros(len(val_y), bool)
    for chosen in (first, ~first):
        raw = val_x @ weights + bias
        a, b = platt(raw[chosen], val_y[chosen])
        probability = logit_probability(a * raw + b)
        threshold = metrics.balanced_accuracy_threshold(val_y[chosen], probability[chosen])
        low, high = uncertain_band(threshold)
        other = ~chosen
        called[other] = probability[other] >= threshold
        uncertain[other] = (probability[other] >= low) & (probability[other] <= high)
    summary = metrics.subtype_summary(val_y, called.astype(float), 0.5, uncertain, SUBTYPES)
    # Of 0/1 calls at each half's own threshold: neither an AUC (unaffected by these choices) nor one threshold.
    for meaningless in ("auc", "threshold"):
        summary.pop(meaningless)
    return _round(summary)


def called_shares(head: SubtypeHead, probability: np.ndarray, pooled: np.ndarray, threshold: float,
                  nih_labels: np.ndarray | None = None) -> dict:
    """Among the images the detector calls PNEUMONIA: how many get each subtype or the warning."""
    called = probability >= threshold
    p = head.probability(pooled[called])
    uncertain = head.uncertain(p)
    subtypes = head.subtypes(p)
    row = {"images": int(len(probability)), "called_pneumonia": int(called.sum()),
           SUBTYPE_UNCERTAIN: int(uncertain.sum()),
           f"{SUBTYPE_UNCERTAIN}_share": round(float(uncertain.mean()), 4) if called.any() else None,
           **{name: int(np.sum((subtypes == name) & ~uncertain)) for name in head.labels}}
    if nih_labels is not None:
        row["by_label"] = {name: called_shares(head, probability[nih_labels == index], pooled[nih_labels == index],
                                               threshold)
                           for index, name in enumerate(("NORMAL", "PNEUMONIA"))}
    return row


# -- the model card ------------------------------------------------------------------------------
def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _how_fitted(result: dict) -> tuple[str, str]:
    """(how the shipped head was fitted, what the other head measured) for the card."""
    fitted_on, fit = result["fitted_on"], result["fit"]
    images = (f"the training split's {fitted_on['images']} pneumonias ({fitted_on['bacterial']} bacterial, "
              f"{fitted_on['viral']} viral)")
    other = result["validation"].get("other_head", {})
    block_other = result.get("patient_block", {}).get("other_head", {})

    def auc_of(name: str) -> str:
        return (f"validation AUC {other[name]['auc']:.3f}"
                + (f" and patient-block AUC {block_other[name]['auc']:.3f}" if name in block_other else ""))

    if fit["method"] == "trained":
        return (f"the unit trained with the network on {images} at {fit['loss_weight']:g} of the loss "
                "(`python -m training --subtype-weight`; class-balanced, normals weighted zero),",
                f" A logistic head refitted on the frozen features reaches {auc_of('refit')}." if "refit" in other else "")
    return (f"fitted by `make subtype` on this network's frozen int8 features of {images} (L2 penalty "
            f"{fit['penalty']:g}, chosen by held-out log loss over folds of training patients),",
            " The network was trained with a subtype unit beside its detection head (`python -m training "
            "--subtype-weight`), so that its features carry the subtype; that unit itself reaches "
            f"{auc_of('trained')}, and this head is shipped instead." if "trained" in other else "")


def card_section(result: dict) -> str:
    head, val = result["head"], result["validation"]["called_pneumonia"]
    band = head["uncertain_band"]
    nih = result.get("nih_half")
    table = [("validation pneumonias called PNEUMONIA", val),
             ("every validation pneumonia", result["validation"]["all_pneumonia"])]
    if "patient_block" in result:
        table.append(("patient block pneumonias called PNEUMONIA", result["patient_block"]["called_pneumonia"]))
    rows = [f"| {name} | {row['n']} | {row['auc']:.3f} | {_pct(row['accuracy'])} | "
            f"{_pct(row['recall']['bacterial'])} | {_pct(row['recall']['viral'])} | {_pct(row['uncertain_share'])} | "
            f"{_pct(row['accuracy_confident'])} |"
            for name, row in table]
    cross = result["validation"]["cross_fitted"]
    fitted, other_head = _how_fitted(result)
    lines = [
        CARD_START,
        "## Pneumonia subtype (bacterial or viral)",
        "A PNEUMONIA result also carries `subtype` (`bacterial` or `viral`) and `subtype_probability`,",
        "P(viral | pneumonia): a logistic unit on the pooled last feature map (the vector the detection head",
        "reads; flip-averaged where the score is), " + fitted,
        "then Platt-scaled on the validation pneumonias the model calls PNEUMONIA." + other_head,
        f"Threshold {head['threshold']:.4f}: {head['threshold_rule']}.",
        f"Uncertain band {band[0]:.4f}..{band[1]:.4f} (`{SUBTYPE_UNCERTAIN}` in `warnings`, no `subtype`, the "
        f"probability kept): {head['band_rule']}.",
        "NORMAL and FAILED results carry no subtype. The heat map stays the detection's (evidence for PNEUMONIA);",
        "it does not show where the subtype is read from.",
        "",
        "| pneumonias (by patient) | n | AUC | accuracy | recall bacterial | recall viral | in the band | accuracy outside it |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Accuracy and recall count every image at the threshold; Platt scaling, the threshold and the band were",
        "chosen on the validation images (the AUC is unaffected); the patient block (the lowest-numbered patients,",
        "never trained, validated or calibrated on) measures them on patients none of them saw.",
        "Chosen on half of the validation patients and measured on the other half, both ways:",
        f"accuracy {_pct(cross['accuracy'])}, recall bacterial "
        f"{_pct(cross['recall']['bacterial'])}, viral {_pct(cross['recall']['viral'])}, "
        f"{_pct(cross['uncertain_share'])} in the band.",
    ]
    if nih:
        lines += [
            "",
            f"NIH ChestX-ray14 half (adults mostly, no subtype labels): of the {nih['called_pneumonia']} of "
            f"{nih['images']} images called PNEUMONIA, {nih[SUBTYPE_UNCERTAIN]} "
            f"({_pct(nih[f'{SUBTYPE_UNCERTAIN}_share'])}) are warned `{SUBTYPE_UNCERTAIN}`, {nih['bacterial']} "
            f"called bacterial, {nih['viral']} viral.",
        ]
    lines += [
        "",
        "The subtype is learned from paediatric (1-5 years) images of one hospital (Guangzhou), labelled by the",
        "dataset's graders; on adults or other sites it is unmeasured and the share above says only how often it",
        "hesitates there. It is not a reason to give or withhold antibiotics.",
        f"Numbers: [report/{REPORT_FILE}](report/{REPORT_FILE}).",
        CARD_END,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m training.subtype", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=None, help="model folder (default: model/)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    parser.add_argument("--head", choices=("refit", "trained"), default="refit",
                        help="a logistic head fitted on the network's frozen features (default: it measured better "
                             "on the patient block, EXPERIMENTS.md), or the unit trained with the network")
    args = parser.parse_args(argv)

    model_dir = args.model_dir or default_model_dir()
    model = PneumoniaModel(model_dir)
    threshold = model.threshold
    train_files, val_files = dataset_files(args.data / TRAINING_SET, *validation_split(model.metadata))
    train_files = [f for f in train_files if f.subtype]
    val_files = [f for f in val_files if f.subtype]
    # The network's patient block (never trained or validated on) stays out of the fit and the
    # calibration, and measures them on patients they did not see.
    block_fraction = model.metadata.training.get("patient_block_hold_out") or 0.0
    train_files, train_block = split_patient_block(train_files, block_fraction)
    val_files, val_block = split_patient_block(val_files, block_fraction)
    block_files = train_block + val_block
    if not train_files or not val_files:
        raise SystemExit(f"no bacteria/virus file names in {args.data / TRAINING_SET}: nothing to fit")
    _, train_x = detect(model, train_files, "train pneumonias")
    val_detection, val_x = detect(model, val_files, "validation pneumonias")
    train_y, val_y = _viral(train_files), _viral(val_files)
    called = val_detection >= threshold

    metadata = ModelMetadata.read(model_dir)
    trained = trained_weights(metadata)
    method = args.head
    if method == "trained" and trained is None:
        raise SystemExit(f"{model_dir} records no subtype unit trained with the network: use --head refit")
    refit = refit_weights(train_x, train_y, patient_folds(train_files))
    if method == "trained":
        head, fit = calibrate(*trained, val_x[called], val_y[called],
                              {"method": "trained", "loss_weight": metadata.training["subtype_head"].get("loss_weight")})
    else:
        head, fit = calibrate(*refit[:2], val_x[called], val_y[called], refit[2])
    stored = SubtypeHead.from_dict(head.as_dict())  # measure what the scorer will read
    val_patients = [patient_id(f.path) for f in val_files]

    def summary(x: np.ndarray, y: np.ndarray) -> dict:
        p = stored.probability(x)
        return _round(metrics.subtype_summary(y, p, stored.threshold, stored.uncertain(p), SUBTYPES))

    def other_head(x: np.ndarray, y: np.ndarray) -> dict:
        """The other head's AUC, beside the one shipped (an AUC needs no calibration)."""
        other = refit[:2] if method == "trained" else trained
        if other is None:
            return {}
        p = logit_probability(x @ other[0] + other[1])
        return {"refit" if method == "trained" else "trained": {"auc": round(metrics.roc_auc(y, p), 4)}}

    result = {
        "model": {"version": model.version, "sha256": model.sha256},
        "head": {key: value for key, value in stored.as_dict().items() if key not in ("weights",)},
        "fitted_on": {"images": len(train_files), "patients": len({patient_id(f.path) for f in train_files}),
                      **{name: int(np.sum(train_y == index)) for index, name in enumerate(SUBTYPES)}},
        "fit": fit,
        "validation": {
            "patients": len(set(val_patients)),
            "called_pneumonia": summary(val_x[called], val_y[called]),
            "all_pneumonia": summary(val_x, val_y),
            "cross_fitted": cross_fitted(val_x[called], val_y[called],
                                         [p for p, c in zip(val_patients, called) if c], head.weights, head.bias),
            "other_head": other_head(val_x[called], val_y[called]),
        },
    }
    if block_files:
        block_detection, block_x = detect(model, block_files, "patient block pneumonias")
        block_y, block_called = _viral(block_files), block_detection >= threshold
        result["patient_block"] = {"fraction": block_fraction,
                                   "patients": len({patient_id(f.path) for f in block_files}),
                                   "called_pneumonia": summary(block_x[block_called], block_y[block_called]),
                                   "all_pneumonia": summary(block_x, block_y),
                                   "other_head": other_head(block_x[block_called], block_y[block_called])}
    external = args.data / EXTERNAL_SET
    if external.is_dir():
        nih_files = list_labelled(external)
        nih_detection, nih_x = detect(model, nih_files, "NIH half")
        result["nih_half"] = called_shares(stored, nih_detection, nih_x, threshold,
                                           np.array([f.label for f in nih_files]))
    result["validation"]["called_pneumonia_shares"] = called_shares(stored, val_detection, val_x, threshold)
    result["command"] = "python -m training.subtype"
    result["generated_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")

    section = dataclasses.replace(stored, extra={
        "features": "spatial mean of feature_map (flip-averaged where the detection score is)",
        "fitted_on": result["fitted_on"], "method": method, "penalty": fit.get("penalty"), "platt": fit["platt"],
        "validation": {key: result["validation"]["called_pneumonia"][key]
                       for key in ("n", "auc", "accuracy", "recall", "uncertain_share")},
        "report": f"report/{REPORT_FILE}"})
    dataclasses.replace(metadata, subtype=section).write(model_dir)
    report = model_dir / "report"
    report.mkdir(parents=True, exist_ok=True)
    (report / REPORT_FILE).write_text(json.dumps(result, indent=2) + "\n")
    update_model_card(model_dir / CARD_FILE, card_section(result), start=CARD_START, end=CARD_END)
    print(json.dumps({"head": result["head"], "fit": fit, "validation": result["validation"],
                      "nih_half": result.get("nih_half")}, indent=2))
    return result


if __name__ == "__main__":
    main()
