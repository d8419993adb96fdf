"""Robustness check: does the score move when only what lies outside the lungs changes?

    python -m training.robustness [--data ../shared/data] [--model-dir model]
                                  [--out model/report/robustness.json] [--limit N]

Every image of each set is decoded once, changed by each variant below (pure functions
on the upright pixel array), encoded as PNG and scored through `Scorer.score`, the
production path, so whatever preprocessing the scorer does is inside the measurement,
at the model's own threshold and with its own warning checks. Per set and variant:
n, AUC, sensitivity, specificity, accuracy, the share of images with any warning, the
share whose label changed against the clean variant, and each figure's change from clean.

Sets: the by-patient validation split training used (rebuilt from model.json's
`training.config`, with the official 16-image val; no training image), and the NIH
ChestX-ray14 half in `external/nih_chestxray14` (adults mostly, another hospital).
The variants change the frame only: the outer 12 % of each side and the top 10 % hold no
lung on these radiographs, so a model that reads the lungs barely moves under
occlusion or cropping of that frame. "clean" is the decoded image re-encoded
losslessly, so each variant differs from it by its change alone. Markers, shifts and
strips draw their placement from a generator seeded by `--seed` and the file name:
a rerun gives the same images.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pneumoscan.images import ImageRejected
from pneumoscan.model import ModelMetadata, default_model_dir
from pneumoscan.scoring import Scorer, decode_image
from pneumoscan_eval import metrics
from pneumoscan_eval.datasets import TRAINING_SET, default_data_dir

from .data import dataset_files
from .shortcut_check import CARD_FILE, update_model_card, validation_split

DEFAULT_DATA = default_data_dir()
REPORT_FILE = "robustness.json"
NIH_SET = "external/nih_chestxray14"
VALIDATION, NIH = "validation", "nih"
SET_NAMES = {VALIDATION: "the by-patient validation split of the model's training run, with the official val",
             NIH: "the NIH ChestX-ray14 half (another hospital, adults mostly)"}
DEFAULT_SEED = 2026
CARD_START, CARD_END = "<!-- robustness-check -->", "<!-- /robustness-check -->"

# The frame with no lung in it: the outer 12 % of the left and right sides and the top 10 %.
FRAME_SIDE, FRAME_TOP = 0.12, 0.10
ZOOM_OUT_SCALE = 0.80
ZOOM_IN_KEEP = 0.85
SHIFT_FRACTION = 0.08
STRIP_FRACTION = 0.06
# Burned-in letters are bright on a radiograph, as is film left unexposed by a collimator.
WHITE = 255

Variant = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def occlude_frame(pixels: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """The frame (outer 12 % of each side, top 10 %) set to black; the size is kept."""
    height, width = pixels.shape[:2]
    side, top = round(width * FRAME_SIDE), round(height * FRAME_TOP)
    out = pixels.copy()
    out[:top] = 0
    out[:, :side] = 0
    out[:, width - side:] = 0
    return out


def crop_frame(pixels: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """The same frame cut away: the scorer then stretches what is left to the model's input."""
    height, width = pixels.shape[:2]
    side, top = round(width * FRAME_SIDE), round(height * FRAME_TOP)
    return pixels[top:, side:width - side].copy()


def _draw_letter(draw: ImageDraw.ImageDraw, letter: str, x: int, y: int, size: int, shade: int) -> None:
    """A blocky "L" or "R" of height `size` with its top-left corner at (x, y)."""
    stroke = max(1, round(size / 5))
    width = round(size * 0.65)
    draw.rectangle((x, y, x + stroke - 1, y + size - 1), fill=shade)  # the stem both letters share
    if letter == "L":
        draw.rectangle((x, y + size - stroke, x + width - 1, y + size - 1), fill=shade)
        return
    bowl = round(size * 0.55)
    draw.rectangle((x, y, x + width - 1, y + bowl - 1), outline=shade, width=stroke)
    draw.line((x + stroke, y + bowl - stroke // 2, x + width - 1, y + size - 1), fill=shade, width=stroke)


def _draw_ruler(draw: ImageDraw.ImageDraw, x: int, y: int, length: int, size: int, shade: int) -> None:
    """A horizontal bar of `length` with eight tick marks rising `size` above it."""
    stroke = max(1, round(size / 4))
    draw.rectangle((x, y + size - stroke, x + length - 1, y + size - 1), fill=shade)
    for tick in np.linspace(x, x + length - stroke, 9).round().astype(int):
        draw.rectangle((int(tick), y, int(tick) + stroke - 1, y + size - 1), fill=shade)


def paste_markers(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A bright side letter ("L" or "R") in one top corner and a ruler bar in one bottom corner.

    Both sit inside the frame's outer band (within 20 % of the image from the nearest
    corner), with sizes, corners and grey level drawn from `rng`.
    """
    height, width = pixels.shape[:2]
    short = min(height, width)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    shade = int(rng.integers(220, 256))
    size = max(5, round(short * rng.uniform(0.07, 0.10)))
    margin_x, margin_y = (max(1, round(side * rng.uniform(0.02, 0.05))) for side in (width, height))
    letter = "L" if rng.random() < 0.5 else "R"
    x = margin_x if rng.random() < 0.5 else width - margin_x - round(size * 0.65)
    _draw_letter(draw, letter, x, margin_y, size, shade)
    length = max(8, round(width * rng.uniform(0.12, 0.16)))
    tick = max(3, round(short * 0.035))
    x = margin_x if rng.random() < 0.5 else width - margin_x - length
    _draw_ruler(draw, x, height - margin_y - tick, length, tick, shade)
    return np.asarray(image).copy()


def _resized(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).resize((width, height), Image.Resampling.BILINEAR))


def _pad_widths(pixels: np.ndarray, height: int, width: int) -> list[tuple[int, int]]:
    """Pad widths that centre `pixels` in a (height, width) frame, channels untouched."""
    top, left = (height - pixels.shape[0]) // 2, (width - pixels.shape[1]) // 2
    pads = [(top, height - pixels.shape[0] - top), (left, width - pixels.shape[1] - left)]
    return pads + [(0, 0)] * (pixels.ndim - 2)


def zoom_out(pixels: np.ndarray, rng: np.random.Generator | None = None, *, fill: str = "black") -> np.ndarray:
    """The image shrunk to 80 % of each side and centred in a frame of the old size, padded with
    black (`fill="black"`) or with its own edge rows and columns repeated (`fill="edge"`)."""
    height, width = pixels.shape[:2]
    small = _resized(pixels, round(width * ZOOM_OUT_SCALE), round(height * ZOOM_OUT_SCALE))
    pads = _pad_widths(small, height, width)
    if fill == "edge":
        return np.pad(small, pads, mode="edge")
    if fill == "black":
        return np.pad(small, pads, mode="constant", constant_values=0)
    raise ValueError(f"fill {fill!r} is neither 'black' nor 'edge'")


def zoom_in(pixels: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """The central 85 % of each side (the scorer stretches it back to the model's input)."""
    height, width = pixels.shape[:2]
    keep_h, keep_w = round(height * ZOOM_IN_KEEP), round(width * ZOOM_IN_KEEP)
    top, left = (height - keep_h) // 2, (width - keep_w) // 2
    return pixels[top:top + keep_h, left:left + keep_w].copy()


def shift(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Content moved by 8 % of the width and 8 % of the height, the directions drawn from `rng`;
    what is uncovered is black and what leaves the frame is lost. The size is kept."""
    height, width = pixels.shape[:2]
    dy = round(height * SHIFT_FRACTION) * (1 if rng.random() < 0.5 else -1)
    dx = round(width * SHIFT_FRACTION) * (1 if rng.random() < 0.5 else -1)
    out = np.zeros_like(pixels)
    rows_to = slice(max(dy, 0), height + min(dy, 0))
    rows_from = slice(max(-dy, 0), height + min(-dy, 0))
    cols_to = slice(max(dx, 0), width + min(dx, 0))
    cols_from = slice(max(-dx, 0), width + min(-dx, 0))
    out[rows_to, cols_to] = pixels[rows_from, cols_from]
    return out


def border_strips(pixels: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """White strips, 6 % of the side deep, along all four edges (collimator shutters); size kept."""
    height, width = pixels.shape[:2]
    deep_y, deep_x = max(1, round(height * STRIP_FRACTION)), max(1, round(width * STRIP_FRACTION))
    out = pixels.copy()
    out[:deep_y] = WHITE
    out[height - deep_y:] = WHITE
    out[:, :deep_x] = WHITE
    out[:, width - deep_x:] = WHITE
    return out


def _clean(pixels: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    return pixels


CLEAN = "clean"
# Variant name -> (change, description). "clean" first: every other is compared with it.
VARIANTS: dict[str, tuple[Variant, str]] = {
    CLEAN: (_clean, "the decoded image, re-encoded losslessly"),
    "frame_occluded": (occlude_frame, "outer 12 % of the left and right sides and the top 10 % set to black"),
    "frame_cropped": (crop_frame, "the same 12 % / 10 % frame cut away"),
    "markers": (paste_markers, "a bright L or R letter in a top corner and a ruler bar in a bottom corner"),
    "zoom_out_black": (lambda p, rng: zoom_out(p, rng, fill="black"),
                       "shrunk to 80 % of each side, centred, padded with black"),
    "zoom_out_edge": (lambda p, rng: zoom_out(p, rng, fill="edge"),
                      "shrunk to 80 % of each side, centred, padded by repeating its edge pixels"),
    "zoom_in": (zoom_in, "the central 85 % of each side"),
    "shifted": (shift, "content moved 8 % of the width and of the height (directions seeded), black fill"),
    "border_strips": (border_strips, "white strips 6 % deep along all four edges"),
}


def variant_rng(seed: int, name: str, variant: str) -> np.random.Generator:
    """The generator of one variant of one image: the same file always gets the same change."""
    return np.random.default_rng([seed, zlib.crc32(Path(name).name.encode()), zlib.crc32(variant.encode())])


def encode_png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


@dataclass(frozen=True)
class Case:
    """One labelled image of a set: its name (the file), label index and encoded bytes."""

    name: str
    label: int
    data: bytes


@dataclass(frozen=True)
class Outcome:
    """What the scorer said about one variant of one image; `rejected` is its reason when refused."""

    probability: float | None = None
    positive: bool | None = None
    warnings: tuple[str, ...] = ()
    rejected: str | None = None


def score_case(scorer, case: Case, colour: str, seed: int, variants: Sequence[str] = tuple(VARIANTS)
               ) -> dict[str, Outcome]:
    """Every variant of one image through `scorer.score` (anything with the Scorer's `score`)."""
    try:
        pixels = np.asarray(decode_image(case.data).image.convert(colour))
    except ImageRejected as exc:
        return {variant: Outcome(rejected=exc.reason) for variant in variants}
    outcomes = {}
    for variant in variants:
        change, _ = VARIANTS[variant]
        try:
            scored = scorer.score(encode_png(change(pixels, variant_rng(seed, case.name, variant))))
        except ImageRejected as exc:
            outcomes[variant] = Outcome(rejected=exc.reason)
            continue
        outcomes[variant] = Outcome(scored.probability, bool(scored.positive), tuple(scored.warnings))
    return outcomes


def _number(value: float) -> float | None:
    """JSON-safe: NaN (e.g. the AUC of one class) becomes null."""
    return None if value != value else round(float(value), 4)


def summarise(labels: Sequence[int], outcomes: Sequence[Outcome]) -> dict:
    """The figures of one variant of one set: the label is the scorer's, the AUC from its probabilities."""
    scored = [(label, o) for label, o in zip(labels, outcomes) if o.rejected is None]
    truth = np.array([label for label, _ in scored], dtype=np.int64)
    called = np.array([o.positive for _, o in scored], dtype=bool)
    probability = np.array([o.probability for _, o in scored], dtype=np.float64)
    warned = np.array([bool(o.warnings) for _, o in scored], dtype=bool)
    positive = truth == 1
    counts = metrics.Confusion(true_positive=int(np.sum(called & positive)),
                               false_positive=int(np.sum(called & ~positive)),
                               true_negative=int(np.sum(~called & ~positive)),
                               false_negative=int(np.sum(~called & positive)))
    codes: dict[str, int] = {}
    for _, outcome in scored:
        for code in outcome.warnings:
            codes[code] = codes.get(code, 0) + 1
    rejected: dict[str, int] = {}
    for outcome in outcomes:
        if outcome.rejected is not None:
            rejected[outcome.rejected] = rejected.get(outcome.rejected, 0) + 1
    return {"n": len(scored), "positives": int(positive.sum()), "negatives": int((~positive).sum()),
            "auc": _number(metrics.roc_auc(truth, probability)) if scored else None,
            "sensitivity": _number(counts.sensitivity), "specificity": _number(counts.specificity),
            "accuracy": _number(counts.accuracy),
            "warned": _number(warned.mean()) if scored else None,
            "warnings": dict(sorted(codes.items())), "rejected": rejected}


COMPARED = ("auc", "sensitivity", "specificity", "accuracy", "warned")


def against_clean(outcomes: Sequence[Outcome], clean: Sequence[Outcome], summary: dict, clean_summary: dict) -> dict:
    """Each figure's change from the clean variant, and how many labels and scores moved."""
    change = {key: (None if summary[key] is None or clean_summary[key] is None
                    else round(summary[key] - clean_summary[key], 4)) for key in COMPARED}
    both = [(o, c) for o, c in zip(outcomes, clean) if o.rejected is None and c.rejected is None]
    moved = np.array([abs(o.probability - c.probability) for o, c in both])
    return {"change": change,
            "label_changed": _number(np.mean([o.positive != c.positive for o, c in both])) if both else None,
            "mean_abs_probability_change": _number(moved.mean()) if both else None}


def measure_set(scorer, cases: Sequence[Case], colour: str, seed: int, description: str = "",
                variants: Sequence[str] = tuple(VARIANTS)) -> dict:
    """Every case scored in every variant, summarised per variant and compared with clean."""
    from tqdm import tqdm

    per_case = [score_case(scorer, case, colour, seed, variants)
                for case in tqdm(cases, desc=description, unit="img", leave=False)]
    labels = [case.label for case in cases]
    by_variant = {variant: [outcomes[variant] for outcomes in per_case] for variant in variants}
    results = {variant: summarise(labels, by_variant[variant]) for variant in variants}
    if CLEAN in by_variant:
        for variant in variants:
            results[variant].update(against_clean(by_variant[variant], by_variant[CLEAN], results[variant],
                                                  results[CLEAN]))
    return {"images": len(cases), "variants": results}


def subsample(items: list, limit: int | None, seed: int) -> list:
    """At most `limit` of `items` (a seeded draw, kept in order); all of them without a limit."""
    if limit is None or len(items) <= limit:
        return list(items)
    chosen = np.sort(np.random.default_rng(seed).permutation(len(items))[:limit])
    return [items[i] for i in chosen]


def validation_cases(data: Path, metadata: ModelMetadata) -> list[Case]:
    """The by-patient validation split of the model's own training run, with the official val."""
    _, val_files = dataset_files(data / TRAINING_SET, *validation_split(metadata))
    return [Case(str(f.path.relative_to(data)), f.label, f.path.read_bytes()) for f in val_files]


def nih_cases(data: Path, labels: Sequence[str]) -> list[Case]:
    """The NIH half listed in its labels.csv (file, label, ...); empty when the folder is absent."""
    folder = data / NIH_SET
    if not (folder / "labels.csv").is_file():
        return []
    with (folder / "labels.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [Case(f"{NIH_SET}/{row['file']}", labels.index(row["label"]), (folder / row["file"]).read_bytes())
            for row in rows]


def _signed(value: float | None, percent: bool = True) -> str:
    if value is None:
        return "n/a"
    return f"{value * 100:+.1f}" if percent else f"{value:+.3f}"


def _cell(row: dict, key: str, with_change: bool) -> str:
    value = row[key]
    if value is None:
        return "n/a"
    text = f"{value:.3f}" if key == "auc" else f"{value:.1%}"
    change = row.get("change", {}).get(key)
    if with_change and change is not None:
        text += f" ({_signed(change, percent=key != 'auc')})"
    return text


def table_rows(result: dict) -> list[list[str]]:
    """Set, variant, n, AUC, sensitivity, specificity, accuracy, warned (each but clean's with its
    change from clean: AUC in absolute terms, the rest in percentage points), labels changed."""
    rows = []
    for set_name, measured in result["sets"].items():
        for variant, row in measured["variants"].items():
            changed = row.get("label_changed")
            rows.append([set_name, variant, str(row["n"]),
                         *(_cell(row, key, variant != CLEAN) for key in COMPARED),
                         "-" if variant == CLEAN or changed is None else f"{changed:.1%}"])
    return rows


HEADER = ["set", "variant", "n", "AUC", "sensitivity", "specificity", "accuracy", "warned", "labels changed"]


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Robustness of model {result['model']['version']} at threshold {result['threshold']:.4f} "
                        "(change from clean: AUC absolute, the rest in points)")
    for column in HEADER:
        table.add_column(column, justify="left" if column in ("set", "variant") else "right")
    for row in table_rows(result):
        table.add_row(*row)
    Console(width=160).print(table)


OCCLUSION_TARGET = {"specificity": 0.05, "auc": 0.01}


def _occlusion_verdict(result: dict) -> str:
    """How far frame occlusion moved validation, against the target for a model that reads the lungs."""
    row = result["sets"].get(VALIDATION, {}).get("variants", {}).get("frame_occluded")
    if not row or any(row["change"][key] is None for key in OCCLUSION_TARGET):
        return ""
    spec, auc = row["change"]["specificity"], row["change"]["auc"]
    within = abs(spec) <= OCCLUSION_TARGET["specificity"] and abs(auc) <= OCCLUSION_TARGET["auc"]
    return (f"Frame occlusion moves validation specificity by {spec * 100:+.1f} points and AUC by {auc:+.3f}: "
            f"{'within' if within else 'outside'} the target of at most "
            f"{OCCLUSION_TARGET['specificity'] * 100:.0f} points and {OCCLUSION_TARGET['auc']} for a model "
            "that reads the lungs.")


def card_section(result: dict) -> str:
    """The model card's robustness section, from a robustness.json of this model."""
    sets = "; ".join(f"`{name}`: {SET_NAMES.get(name, name)}, {measured['images']} images"
                     for name, measured in result["sets"].items())
    lines = [CARD_START, "## Robustness to the frame (what lies outside the lungs)",
             "`make robustness` changes only the frame of each image and scores every variant through the",
             f"production path (`Scorer.score`, its warning checks included) at the shipped threshold {result['threshold']:.4f}.",
             "In brackets: the change from the clean variant (AUC absolute, the rest in percentage points);",
             "\"warned\": any warning; \"labels changed\": the share whose label differs from the clean variant's.",
             "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(result)]
    in_sample = [name for name in result.get("population_head_trained_on", []) if name in result["sets"]]
    lines += ["", _occlusion_verdict(result), ""]
    if in_sample:
        lines += [f"The scorer's population head (`adult_like_image`) was fitted on the {', '.join(in_sample)} "
                  "images, so their warned share here is in-sample; the population section gives it cross-validated.",
                  ""]
    lines += [f"Sets: {sets}. Variants: "
              + "; ".join(f"`{name}`: {text}" for name, text in result["definition"].items()) + ".",
              f"Seed {result['seed']}; {result['seconds']:.0f} s with {result['threads']} interpreter thread"
              + ("s" if result["threads"] != 1 else "")
              + (f"; at most {result['limit']} images per set" if result.get("limit") else "")
              + f". Numbers: [report/{REPORT_FILE}](report/{REPORT_FILE}).", CARD_END]
    return "\n".join(lines)


def measured_section(model_dir: Path, model_sha256: str) -> str:
    """The card section from `report/robustness.json` when it measured this very model, else a line
    that says it has not been measured."""
    path = Path(model_dir) / "report" / REPORT_FILE
    try:
        result = json.loads(path.read_text())
        if result["model"]["sha256"] == model_sha256:
            return card_section(result)
    except (OSError, ValueError, KeyError):
        pass
    return "\n".join([CARD_START, "## Robustness to the frame (what lies outside the lungs)",
                      "Not measured for this model yet: `make robustness`.", CARD_END])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m training.robustness", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    parser.add_argument("--model-dir", type=Path, default=None, help="model folder (default: model/)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"the JSON written (default: <model-dir>/report/{REPORT_FILE}; the card is updated only then)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many images per set (a seeded draw)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seeds the draw and the placements")
    parser.add_argument("--threads", type=int, default=1, help="interpreter threads (default %(default)s)")
    args = parser.parse_args(argv)

    model_dir = args.model_dir or default_model_dir()
    scorer = Scorer.load(model_dir, num_threads=args.threads)
    metadata = scorer.metadata
    sets = {VALIDATION: validation_cases(args.data, metadata), NIH: nih_cases(args.data, metadata.labels)}
    started = time.perf_counter()
    measured = {name: measure_set(scorer, subsample(cases, args.limit, args.seed), metadata.input.colour, args.seed,
                                  name)
                for name, cases in sets.items() if cases}
    result = {
        "model": {"version": metadata.version, "sha256": metadata.sha256},
        "threshold": metadata.threshold,
        "definition": {name: text for name, (_, text) in VARIANTS.items()},
        "sets": measured,
        # Sets the scorer's population head was fitted on: their adult_like_image share is in-sample.
        "population_head_trained_on": list((metadata.population or {}).get("adults", [])),
        "seed": args.seed, "limit": args.limit, "threads": args.threads,
        "seconds": round(time.perf_counter() - started, 1),
        "command": "python -m training.robustness",
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    out = args.out or model_dir / "report" / REPORT_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if args.out is None:  # the model's own report: keep its card in step
        update_model_card(model_dir / CARD_FILE, card_section(result), start=CARD_START, end=CARD_END)
    print_table(result)
    return result


if __name__ == "__main__":
    main()
