"""The model report (PNG figures + metrics.json) and MODEL_CARD.md, from one run's numbers."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pneumoscan_eval import metrics  # noqa: E402
from pneumoscan_eval.datasets import LABELS  # noqa: E402

NAN = float("nan")
REPORT_DIR = "report"
METRICS_FILE = "metrics.json"


def _save(figure, path: Path) -> str:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path.name


def write_report(model_dir: Path, labels: np.ndarray, scores: np.ndarray, threshold: float,
                 history: list[dict], metadata: dict) -> dict:
    """Figures under model_dir/report/ and model_dir/report/metrics.json; returns what was written."""
    out = model_dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    at_threshold = metrics.confusion(labels, scores, threshold)
    files = []

    fpr, tpr, _ = metrics.roc_curve(labels, scores)
    figure, axis = plt.subplots(figsize=(5, 5))
    axis.plot(fpr, tpr, label=f"int8 model, AUC {metrics.roc_auc(labels, scores):.4f}")
    axis.plot([0, 1], [0, 1], ":", color="grey")
    axis.scatter([1 - at_threshold.specificity], [at_threshold.sensitivity], color="red", zorder=3,
                 label=f"threshold {threshold:.3f}")
    axis.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC, validation (by patient)")
    axis.legend(loc="lower right")
    files.append(_save(figure, out / "roc.png"))

    precision, recall, _ = metrics.precision_recall_curve(labels, scores)
    figure, axis = plt.subplots(figsize=(5, 5))
    axis.step(recall, precision, where="post",
              label=f"AP {metrics.average_precision(labels, scores):.4f}")
    axis.scatter([at_threshold.sensitivity], [at_threshold.precision], color="red", zorder=3,
                 label=f"threshold {threshold:.3f}")
    axis.set(xlabel="recall (sensitivity)", ylabel="precision", title="Precision-recall, validation",
             ylim=(0, 1.02))
    axis.legend(loc="lower left")
    files.append(_save(figure, out / "pr.png"))

    matrix = np.array([[at_threshold.true_negative, at_threshold.false_positive],
                       [at_threshold.false_negative, at_threshold.true_positive]])
    figure, axis = plt.subplots(figsize=(4.5, 4))
    axis.imshow(matrix, cmap="Blues")
    for (row, col), count in np.ndenumerate(matrix):
        axis.text(col, row, str(count), ha="center", va="center",
                  color="white" if count > matrix.max() / 2 else "black", fontsize=14)
    axis.set(xticks=[0, 1], yticks=[0, 1], xticklabels=LABELS, yticklabels=LABELS,
             xlabel="predicted", ylabel="true", title=f"Confusion at threshold {threshold:.3f}")
    files.append(_save(figure, out / "confusion.png"))

    bins = metrics.calibration_bins(labels, scores, 10)
    filled = [b for b in bins if b["count"]]
    figure, axis = plt.subplots(figsize=(5, 5))
    axis.plot([0, 1], [0, 1], ":", color="grey", label="perfect")
    axis.plot([b["mean_score"] for b in filled], [b["positive_rate"] for b in filled], "o-",
              label=f"int8 model, ECE {metrics.expected_calibration_error(labels, scores):.3f}")
    for b in filled:
        axis.annotate(str(b["count"]), (b["mean_score"], b["positive_rate"]), fontsize=7,
                      textcoords="offset points", xytext=(4, -10))
    axis.set(xlabel="mean predicted P(pneumonia)", ylabel="observed pneumonia rate",
             title="Calibration, validation (counts per bin)")
    axis.legend(loc="upper left")
    files.append(_save(figure, out / "calibration.png"))

    epochs = [int(row["epoch"]) + 1 for row in history]
    figure, (loss_axis, auc_axis) = plt.subplots(1, 2, figsize=(9, 4))
    for key, style in (("loss", "-"), ("val_loss", "--")):
        loss_axis.plot(epochs, [row[key] for row in history], style, label=key)
    for key, style in (("auc", "-"), ("val_auc", "--")):
        auc_axis.plot(epochs, [row[key] for row in history], style, label=key)
    loss_axis.set(xlabel="epoch", title="loss (class-weighted, augmented train)")
    auc_axis.set(xlabel="epoch", title="AUC")
    loss_axis.legend()
    auc_axis.legend()
    files.append(_save(figure, out / "training_curves.png"))

    report = {
        "model": {key: metadata[key] for key in ("name", "version", "sha256", "threshold", "threshold_rule")},
        "val": metadata["metrics"]["val"], "val_keras": metadata["metrics"]["val_keras"],
        "parity": metadata["metrics"]["parity"],
        "collection_hold_out": metadata["metrics"].get("collection_hold_out", []),
        "calibration_bins": bins, "history": history,
        "figures": files,
    }
    (out / METRICS_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report


def write_model_card(model_dir: Path, metadata: dict) -> None:
    val = metadata["metrics"]["val"]
    parity = metadata["metrics"]["parity"]
    training = metadata["training"]
    by_collection = "\n".join(
        f"| {source} | {row['n']} | {_pct(row.get('specificity', NAN))} | {_pct(row.get('sensitivity', NAN))} |"
        for source, row in val["by_collection"].items())
    card = f"""# Model card: {metadata['name']} {metadata['version']}

**Not a medical device.** This model is a research and engineering component. It has
not been clinically validated, is not cleared by any regulator, and must not be used
to diagnose, treat or triage patients. Every score needs review by a qualified reader.

## Intended use
Batch screening *support* for paediatric anterior-posterior chest X-rays in the
pneumoscan service: it flags images likely to show pneumonia so that a human can look
at them first. It outputs P(pneumonia) and a label at a fixed threshold.
Out of scope: adults, lateral views, CT, other findings (it only knows NORMAL vs PNEUMONIA),
images from other hospitals without a local evaluation (`pneumoscan evaluate DIR`).

## Model
- From-scratch CNN (Keras 3), greyscale {metadata['input']['height']}x{metadata['input']['width']} uint8 input,
  per-image standardisation inside the model, five conv blocks, global average pooling,
  one dense unit. Outputs `probability` (float32) and `feature_map` (last conv block) for
  class activation maps (weights in `model.json` under `cam`).
- int8 LiteRT model, {metadata['size_bytes']:,} bytes, sha256 `{metadata['sha256'][:16]}...`: convolutions
  and dense head in int8; the per-image standardisation runs in float (exact, and inside XNNPACK's
  graph) and so does the final sigmoid, so near-certain scores stay distinct.
- Input: decode and resize with `pneumoscan.images` (Pillow, reduced JPEG decode, bilinear
  stretch to 224x224, no aspect preservation), exactly as the Lambda does.
{_lung_field_section(metadata)}

## Training data
{training['source']}. Train split only: the official test split was never seen.
Split: {training['split']}.

| split | NORMAL images | PNEUMONIA images | NORMAL patients | PNEUMONIA patients |
|---|---|---|---|---|
| train | {training['train']['images']['NORMAL']} | {training['train']['images']['PNEUMONIA']} | {training['train']['patients']['NORMAL']} | {training['train']['patients']['PNEUMONIA']} |
| val | {training['val']['images']['NORMAL']} | {training['val']['images']['PNEUMONIA']} | {training['val']['patients']['NORMAL']} | {training['val']['patients']['PNEUMONIA']} |

Class-weighted loss (both classes equal total weight), augmentation of geometry
(rotation, independent x/y zoom = aspect, translation, flip) and intensity (gamma,
contrast, brightness, blur/sharpen, noise){_acquisition_line(training['config']['augment'])}, AdamW with weight decay, dropout, cosine
schedule, {training['epochs']} epochs, {training['seconds'] / 60:.1f} min on 2 CPU cores (shared with
other jobs).{_subtype_unit_line(training)} Platt scaling on the validation logits, folded into the dense layer. What was
tried and what it did to validation: [training/EXPERIMENTS.md](../training/EXPERIMENTS.md);
how to reproduce: `make train` ([training/README.md](../training/README.md)).

## Metrics (validation, by patient, int8 model)
| n | AUC | threshold | sensitivity | specificity | accuracy | precision | ECE |
|---|---|---|---|---|---|---|---|
| {val['n']} | {val['auc']:.4f} | {metadata['threshold']:.4f} | {_pct(val['sensitivity'])} | {_pct(val['specificity'])} | {_pct(val['accuracy'])} | {_pct(val['precision'])} | {val['ece']:.3f} |

Threshold rule: {metadata['threshold_rule']}.{_flip_line(training, metadata['metrics'].get('flip_average'))}

Per collection (the NORMAL2 normals are a later acquisition batch):

| collection | n | specificity | sensitivity |
|---|---|---|---|
{by_collection}

{_official_line(val.get("official_val"))}

{_fullres_line(val.get("fullres_originals"))}

{_block_section(metadata["metrics"].get("patient_block_hold_out"))}

{_hold_out_section(metadata["metrics"].get("collection_hold_out", []))}

int8 vs Keras parity on val: AUC {parity['int8_auc']:.4f} vs {parity['keras_auc']:.4f}
(gap {parity['auc_gap']:.4f}, limit {parity['max_auc_gap']}), labels agree on
{_pct(parity['label_agreement'])} (limit {_pct(parity['min_label_agreement'])}).
Figures: [ROC](report/roc.png), [PR](report/pr.png), [confusion](report/confusion.png),
[calibration](report/calibration.png), [training curves](report/training_curves.png);
numbers in [report/metrics.json](report/metrics.json).

{_robustness_section(model_dir, metadata)}

## Limitations and the known distribution shift
Validation images come from the same collection as training, so validation figures are
optimistic. The previous release (2026.11.25-3, validation AUC 0.997) measured outside the team
on the official blind test split: AUC 0.974, sensitivity 98.7 %, specificity 77.4 %, normals of
a later collection over-called as pneumonia; this model has not been measured there. Expect specificity on new sites to be lower than
above; measure it on local labelled data with `pneumoscan evaluate DIR` before relying on the
threshold, and prefer a local threshold if it differs. The data are paediatric (1-5 years)
from one centre in Guangzhou; performance on adults or other populations is unknown. Labels
come from the dataset's graders, not from a clinical reference standard. The model cannot say
"neither": any image that decodes gets a score; the `out_of_distribution` warning (fitted by
`make ood`, section above) is what says that a score means little. The collection hold-out above
is a proxy for the blind shift, not a measurement of it.
{_lung_limits(metadata)}
"""
    (model_dir / "MODEL_CARD.md").write_text(card)


def _robustness_section(model_dir: Path, metadata: dict) -> str:
    """`make robustness`'s section when report/robustness.json measured this very model."""
    from .robustness import measured_section

    return measured_section(model_dir, metadata["sha256"])


def _lung_field_section(metadata: dict) -> str:
    """What the classifier reads: the lung crop, and how well the segmenter found the lungs."""
    spec = metadata.get("lung_field")
    if not spec:
        return "- The network reads the whole stretched image."
    found = metadata["training"].get("lung_field") or {}
    report = found.get("segmenter") or {}
    shares = ", ".join(f"{name} {_pct(row['found_share'])} of {row['n']}" for name, row in found.items()
                       if isinstance(row, dict) and "found_share" in row)
    held = report.get("val_int8")
    measured = (f" On {held['n']} held-out masked images (int8): dice {held['dice_mean']:.3f} (10th percentile"
                f" {held['dice_p10']:.3f}), lung-box IoU {held['box_iou_mean']:.3f}." if held else "")
    return f"""- **Lung field first.** A small U-Net (`{spec['file']}`, int8, {spec['size_bytes']:,} bytes,
  {spec['size']}x{spec['size']} input) segments the lungs; the network reads only the box around
  the mask, widened by {spec['margin']:.0%} of its size on each side and stretched back to 224x224
  (`pneumoscan.lungs`). Training read the same crops, their edges jittered. The segmenter was trained on
  525 lung masks of adult X-rays (COVID-19 image data collection, V7 Labs and radiologists' masks);
  no paediatric masks exist to train on.{measured} A mask failing its sanity checks (area
  {_pct(spec['min_area'])}-{_pct(spec['max_area'])} of the image, box at least {_pct(spec['min_width'])} wide and
  {_pct(spec['min_height'])} high, centre within {_pct(spec['max_centre_offset'])} of the image centre) gives the
  default crop {spec['fallback']} and the warning `lung_field_not_found`. Masks passing the checks on this
  model's images: {shares or 'not recorded'}."""


def _lung_limits(metadata: dict) -> str:
    if not metadata.get("lung_field"):
        return ""
    return """
What this model was and was not trained on: the classifier only on the Kermany paediatric training split
(less the patient block above); the lung segmenter only on adult X-rays with lung masks (COVID-19 image data
collection); no NIH image trained either network (the `adult_like_image` head was fitted on the NIH half and the
lung-mask images, see its section). Reading the lung crop instead of the whole frame was chosen by the
robustness check over 3 seeds per recipe: blacking out the frame or framing wider barely moves it, where the
whole-image recipe lost 31 and 42 points of specificity; inside the collection it costs about 7 points of
specificity and 0.012 of AUC on the patient block against the whole-image recipe
([training/EXPERIMENTS.md](../training/EXPERIMENTS.md); every run's figures, mean and spread over seeds:
[report/seeds.json](report/seeds.json), written by `python -m training.compare`). On adults of another hospital (the NIH half) its AUC is
at chance: it has never seen an adult, and nearly every such image is warned."""


def _block_section(block: dict | None) -> str:
    """The patient-block hold-out: the lowest-numbered patients, never trained or validated on."""
    if not block:
        return "Patient-block hold-out: not measured for this model."
    rows = "\n".join(f"| {source} | {row['n']} | {_pct(row.get('specificity', NAN))} | {_pct(row.get('sensitivity', NAN))} |"
                     for source, row in block["by_collection"].items())
    return f"""Patient-block hold-out (the proxy for the blind test split, whose patients are numbered below every
training patient): the lowest-numbered {block['fraction']:.0%} of the patients of each collection were left out
of training and validation, then scored by this int8 model at the threshold above: AUC {block['auc']:.4f},
sensitivity {_pct(block['sensitivity'])}, specificity {_pct(block['specificity'])}, accuracy {_pct(block['accuracy'])}
on {block['n']} images.

| collection | n | specificity | sensitivity |
|---|---|---|---|
{rows}"""


def _subtype_unit_line(training: dict) -> str:
    weight = training["config"].get("subtype_weight")
    if not weight:
        return ""
    return (f" A bacterial/viral unit on the same pooled features was trained beside the detection head, at "
            f"{weight:g} of the loss (the pneumonias whose file names give the subtype, class-balanced), so that "
            "the features carry the subtype; the shipped subtype head is fitted on them afterwards (below).")


def _acquisition_line(augment: dict) -> str:
    parts = [(augment.get("histogram_match_probability"), "another image's tone curve (histogram matching)"),
             (augment.get("local_gamma_probability"), "local gamma"),
             (augment.get("resample_probability"), "down/up-sampling round trips"),
             (augment.get("jpeg_probability"), "JPEG re-encoding"),
             (augment.get("border_probability"), "border strips"),
             (augment.get("marker_probability"), "burned-in marker blocks")]
    chosen = [name for probability, name in parts if probability]
    return ", and of acquisition: " + ", ".join(chosen) if chosen else ""


def _flip_line(training: dict, flip: dict | None) -> str:
    if not training.get("test_time_flip_average"):
        return ""
    line = (" Scores average the logits of the image and its mirror image where that can change the label:"
            " the int8 graph runs once, and a second, mirrored pass is added when the first probability"
            " falls in a band around the threshold (`flip_average` in model.json; the CAM feature map is"
            " the aligned mean).")
    if flip:
        line += (f" Band {flip['band'][0]:.4f}..{flip['band'][1]:.4f}: {flip['slack']}x, in logits, the distance"
                 f" from the threshold of the farthest of the {flip['labels_changed_by_averaging']} images (of"
                 f" {flip['fitted_on_images']} validation and training images) whose label averaging changed;"
                 f" {_pct(flip['val']['averaged_share'])} of"
                 " validation images get the second pass, and their labels agree with averaging every image on"
                 f" {_pct(flip['val']['label_agreement_with_every_image_averaged'])}.")
    return line


def _hold_out_section(rows: list[dict]) -> str:
    """The collection hold-out proxy: the same recipe trained without one whole collection."""
    if not rows:
        return "Collection hold-out: not measured for this recipe."
    lines = "\n".join(
        f"| {row['held_out_collection']} | {row['epochs']} | {row['held_out_normals']} | "
        f"{row['held_out_auc_vs_val_positives']:.4f} | {_pct(row['held_out_specificity'])} | "
        f"{_flip_band_cell(row)} | {_pct(row['val_sensitivity'])} | {row['official_val_correct']}/16 |"
        for row in rows)
    return f"""Collection hold-out (the shift proxy: the same recipe retrained without one whole acquisition
collection, threshold by the rule above on the remaining validation, then scored on the held-out
normals; Keras float; each row one training run). It stands in for the later collection the blind
test over-calls. "Held-out specificity" averages every image with its mirror image; the next column
averages only inside the band fitted on the remaining validation, as the scorer does:

| held out | epochs | normals | AUC vs val pneumonia | held-out specificity | same, flip band only (share averaged) | val sensitivity | official val correct |
|---|---|---|---|---|---|---|---|
{lines}"""


def _flip_band_cell(row: dict) -> str:
    if "held_out_specificity_flip_band" not in row:
        return "not measured"
    return f"{_pct(row['held_out_specificity_flip_band'])} ({_pct(row['held_out_flip_band_share'])})"


def _official_line(official: dict | None) -> str:
    if not official:
        return ""
    return (f"Official 16-image val split (part of the validation set above; its normals are the newest "
            f"studies, NORMAL2-IM-14xx): sensitivity {_pct(official['sensitivity'])}, specificity "
            f"{_pct(official['specificity'])} ({official['false_positive']} of {official['negatives']} normals "
            f"called PNEUMONIA), AUC {official['auc']:.3f}. Too few images for a measurement; shown "
            "because they are the newest normal studies.")


def _fullres_line(check: dict | None) -> str:
    if not check:
        return "Full-resolution originals of validation images: not available for this run."
    return (f"Full-resolution originals of {check['n']} validation images, decoded and resized by "
            f"`pneumoscan.images` as in production: AUC {check['auc']:.4f}, sensitivity "
            f"{_pct(check['sensitivity'])}, specificity {_pct(check['specificity'])}; labels agree with "
            f"the 224 copies on {_pct(check['label_agreement_with_224_copies'])} (mean |dP| "
            f"{check['mean_abs_probability_diff']:.3f}).")


def _pct(value: float) -> str:
    return "n/a" if value != value else f"{100 * value:.1f} %"
