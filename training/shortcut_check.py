"""Shortcut check: does the model look at the lungs, or at borders and burned-in markers?

CNNs trained on this dataset are known to key on text markers and image borders. For
every image of the validation split (the same by-patient split training used, read
from model.json) and of the full-resolution originals, this measures the share of the
class activation heat (evidence for the label the model gave, `pneumoscan.cam`) that
falls in the outer 10 % of the image and outside the chest box, writes
`model/report/shortcut.json` and a figure `model/report/shortcut.png`, and times
CAM + overlay per full-resolution image (the Lambda's added cost).

    python -m training.shortcut_check [--model-dir model] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pneumoscan import cam
from pneumoscan_eval.datasets import FULLRES_SET, TRAINING_SET, default_data_dir, list_labelled
from pneumoscan.model import ModelMetadata, default_model_dir
from pneumoscan.scoring import HEAT_MAP, ImageRejected, Scorer

from .data import dataset_files

DEFAULT_DATA = default_data_dir()
REPORT_FILE = "shortcut.json"
FIGURE_FILE = "shortcut.png"
# Files whose heat sits most in the border, listed for a look at their overlays.
WORST_LISTED = 8
TIMING_WARMUP = 5


@dataclass
class SplitShares:
    """Per-image shares of one split plus the mean normalised heat over its images."""

    name: str
    paths: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    predicted: list[str] = field(default_factory=list)
    border: list[float] = field(default_factory=list)
    outside_chest: list[float] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    mean_heat: np.ndarray = field(default_factory=lambda: np.zeros((cam.ANALYSIS_GRID,) * 2))

    def summary(self) -> dict:
        if not self.border:
            return {"images": 0, "unreadable": self.unreadable}
        border, outside = np.array(self.border), np.array(self.outside_chest)
        worst = np.argsort(-border)[:WORST_LISTED]
        by_label = {}
        for label in sorted(set(self.predicted)):
            members = np.array([p == label for p in self.predicted])
            by_label[label] = {"images": int(members.sum()), "border_share_mean": _round(border[members].mean()),
                               "outside_chest_share_mean": _round(outside[members].mean()),
                               "flagged": int((outside[members] > cam.OUTSIDE_CHEST_FLAG).sum())}
        return {
            "images": len(self.border),
            "unreadable": self.unreadable,
            "border_share": _distribution(border),
            "outside_chest_share": _distribution(outside),
            "flagged": int((outside > cam.OUTSIDE_CHEST_FLAG).sum()),
            "flagged_share": _round((outside > cam.OUTSIDE_CHEST_FLAG).mean()),
            "by_predicted_label": by_label,
            "most_border_heat": [{"image": self.paths[i], "border_share": _round(border[i])} for i in worst],
            "flagged_images": [{"image": path, "outside_chest_share": _round(share)}
                               for path, share in zip(self.paths, outside) if share > cam.OUTSIDE_CHEST_FLAG],
        }


def _round(value: float) -> float:
    return round(float(value), 4)


def _distribution(values: np.ndarray) -> dict:
    return {"mean": _round(values.mean()), "median": _round(np.median(values)),
            "p90": _round(np.percentile(values, 90)), "max": _round(values.max())}


def uniform_shares() -> dict:
    """The shares an evenly spread heat map would have: the baseline to compare with."""
    inner = (1 - 2 * cam.BORDER_FRACTION) ** 2
    left, top, right, bottom = cam.CHEST_BOX
    return {"border_share": _round(1 - inner), "outside_chest_share": _round(1 - (right - left) * (bottom - top))}


def measure(name: str, files: list[tuple[Path, int]], scorer: Scorer,
            timings: dict[str, list[float]] | None = None) -> SplitShares:
    """Shares for every file; with `timings`, also the wall and CPU time of CAM + overlay per image."""
    shares = SplitShares(name)
    for count, (path, label) in enumerate(tqdm(files, desc=name, unit="img", leave=False)):
        try:
            scored = scorer.score(path.read_bytes(), overlay="all")
        except ImageRejected as exc:
            shares.unreadable.append(f"{path}: {exc}")
            continue
        if scored.heat_map is None:
            shares.unreadable.append(f"{path}: heat map failed ({scored.heat_map_error})")
            continue
        if timings is not None and count >= TIMING_WARMUP:
            timings["wall"].append(scored.timings_ms[HEAT_MAP])
            timings["cpu"].append(scored.cpu_ms[HEAT_MAP])
        grid = cam.upsample(scored.heat_map.heat, (cam.ANALYSIS_GRID, cam.ANALYSIS_GRID))
        if grid.sum() > 0:
            shares.mean_heat += grid / grid.sum()
        shares.paths.append(str(path))
        shares.labels.append(label)
        shares.predicted.append(scored.label)
        shares.border.append(scored.heat_map.summary.border_share)
        shares.outside_chest.append(scored.heat_map.summary.outside_chest_share)
    shares.mean_heat /= max(1, len(shares.border))
    return shares


def validation_split(metadata: ModelMetadata) -> tuple[float, int]:
    """(val_fraction, split seed) the model was validated with, from model.json."""
    config = metadata.training.get("config", {})
    seed = config.get("split_seed", config.get("seed"))  # models before split_seed used one seed
    if seed is None or "val_fraction" not in config:
        raise SystemExit("model.json has no training.config (val_fraction, split_seed): cannot rebuild its val split")
    return float(config["val_fraction"]), int(seed)


CARD_FILE = "MODEL_CARD.md"
CARD_START, CARD_END = "<!-- shortcut-check -->", "<!-- /shortcut-check -->"
SPLIT_NAMES = {"val": "validation (by patient)", "fullres": "full-resolution originals"}


def card_section(result: dict) -> str:
    """The model card's shortcut-check section, from the numbers just measured."""
    baseline = result["definition"]["uniform_heat"]
    box = result["definition"]["chest_box"]
    rows = []
    for name, split in result["splits"].items():
        if not split["images"]:
            continue
        border, outside = split["border_share"], split["outside_chest_share"]
        rows.append(f"| {SPLIT_NAMES.get(name, name)} | {split['images']} | {border['mean']:.2f} / "
                    f"{border['median']:.2f} / {border['p90']:.2f} | {outside['mean']:.2f} | "
                    f"{split['flagged']} ({split['flagged_share']:.1%}) |")
    val = result["splits"].get("val", {})
    verdict = ""
    if val.get("images"):
        mean = val["border_share"]["mean"]
        verdict = (f"On validation the border holds {mean:.0%} of the heat on average, "
                   f"{'less' if mean < baseline['border_share'] else 'more'} than the "
                   f"{baseline['border_share']:.0%} an even spread would put there. ")
    return "\n".join([
        CARD_START,
        "## Where the model looks (shortcut check)",
        "CNNs trained on this dataset are known to key on burned-in text markers and image borders.",
        "`make shortcut` measures the class activation heat of the label given (`pneumoscan.cam`):",
        "",
        "| images | n | heat in the outer 10 % border: mean / median / p90 | heat outside the chest box: mean "
        "| most heat outside the chest box |",
        "|---|---|---|---|---|",
        *rows,
        f"| even spread (baseline) | - | {baseline['border_share']:.2f} | {baseline['outside_chest_share']:.2f} | - |",
        "",
        f"{verdict}Chest box: {box['left']:.0%}-{box['right']:.0%} across and {box['top']:.0%}-{box['bottom']:.0%} "
        "down the image; images with most heat outside it are flagged in `pneumoscan report` and listed, with the "
        f"images whose heat sits most in the border, in [report/{REPORT_FILE}](report/{REPORT_FILE}). "
        f"Mean heat maps and the distribution: [shortcut check](report/{FIGURE_FILE}).",
        CARD_END,
    ])


def update_model_card(card: Path, section: str, *, start: str = CARD_START, end: str = CARD_END) -> bool:
    """Replace the section between the markers, else insert it before the limitations."""
    if not card.is_file():
        return False
    text = card.read_text()
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + section + rest.split(end, 1)[1]
    elif "## Limitations" in text:
        before, after = text.split("## Limitations", 1)
        text = before + section + "\n\n## Limitations" + after
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    card.write_text(text)
    return True


def write_figure(splits: list[SplitShares], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    figure, axes = plt.subplots(1, len(splits) + 1, figsize=(5 * (len(splits) + 1), 4.6))
    grid = cam.ANALYSIS_GRID
    border = cam.BORDER_FRACTION * grid
    left, top, right, bottom = (edge * grid for edge in cam.CHEST_BOX)
    for axis, split in zip(axes, splits):
        shown = axis.imshow(split.mean_heat * grid * grid, cmap="inferno", extent=(0, grid, grid, 0))
        axis.add_patch(Rectangle((border, border), grid - 2 * border, grid - 2 * border, fill=False,
                                 edgecolor="cyan", linestyle="--", label="inner 80 % (border outside)"))
        axis.add_patch(Rectangle((left, top), right - left, bottom - top, fill=False, edgecolor="lime",
                                 label="chest box"))
        axis.set_title(f"{split.name}: mean heat, n={len(split.border)}")
        axis.set_xticks([]), axis.set_yticks([])
        figure.colorbar(shown, ax=axis, fraction=0.046, label="heat / uniform heat")
        axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=2, fontsize=7, frameon=False)
    bins = np.linspace(0, 1, 41)
    histogram = axes[-1]
    for split in splits:
        histogram.hist(split.border, bins=bins, alpha=0.6, label=f"{split.name} (mean {np.mean(split.border):.2f})")
    histogram.axvline(uniform_shares()["border_share"], color="grey", linestyle=":", label="uniform heat")
    histogram.set_xlabel(f"share of heat in the outer {cam.BORDER_FRACTION:.0%} border")
    histogram.set_ylabel("images")
    histogram.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m training.shortcut_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=None, help="model folder (default: model/)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: <model-dir>/report)")
    args = parser.parse_args(argv)

    scorer = Scorer.load(args.model_dir)
    model = scorer.model
    _, val_files = dataset_files(args.data / TRAINING_SET, *validation_split(model.metadata))
    fullres_files = list_labelled(args.data / FULLRES_SET)

    timings: dict[str, list[float]] = {"wall": [], "cpu": []}
    splits = [measure("val", [(f.path, f.label) for f in val_files], scorer),
              measure("fullres", [(f.path, f.label) for f in fullres_files], scorer, timings)]

    out = args.out or (args.model_dir or default_model_dir()) / "report"
    out.mkdir(parents=True, exist_ok=True)
    write_figure(splits, out / FIGURE_FILE)
    load = os.getloadavg()[0]
    result = {
        "model": {"version": model.version, "sha256": model.sha256},
        "definition": {
            "heat": "class activation map of the label given (positive part of feature_map @ cam.weights + bias "
                    f"for {model.metadata.positive_label}, of its negation for {model.metadata.negative_label}), "
                    "stretched over the whole image",
            "border": f"outer {cam.BORDER_FRACTION:.0%} of width and height on every side",
            "chest_box": {"left": cam.CHEST_BOX[0], "top": cam.CHEST_BOX[1], "right": cam.CHEST_BOX[2],
                          "bottom": cam.CHEST_BOX[3], "units": "fraction of image width/height"},
            "flag": f"outside_chest_share > {cam.OUTSIDE_CHEST_FLAG}",
            "uniform_heat": uniform_shares(),
            "val_split": "by-patient validation split of model.json training.config (split_seed, val_fraction)",
        },
        "splits": {split.name: split.summary() for split in splits},
        "cam_overlay_ms_per_fullres_image": {
            "what": "the heat-map stage of pneumoscan.scoring: CAM, shares, hot region, 512 px overlay, PNG encode "
                    "(the Lambda's added work before its S3 put), warm, one thread; CPU time is the robust figure "
                    "on a busy machine",
            "images": len(timings["wall"]), "load_average_1min": round(load, 2), "cpus": os.cpu_count(),
            **{f"{kind}_{stat}": _round(np.percentile(values, q)) for kind, values in timings.items()
               for stat, q in (("p50", 50), ("p95", 95))}},
        "figure": FIGURE_FILE,
        "command": "python -m training.shortcut_check",
        "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    (out / REPORT_FILE).write_text(json.dumps(result, indent=2) + "\n")
    if args.out is None:  # the model's own report: keep its card in step
        update_model_card((args.model_dir or default_model_dir()) / CARD_FILE, card_section(result))
    print(json.dumps({name: {key: value for key, value in split.items() if key != "most_border_heat"}
                      for name, split in result["splits"].items()}, indent=2))
    print("CAM + overlay ms per full-res image:", result["cam_overlay_ms_per_fullres_image"])
    return result


if __name__ == "__main__":
    main()
