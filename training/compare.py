"""Recipes compared over their seeds: mean and spread of every instrument that chooses a model.

    python -m training.compare --group lung-crop runs/a/model runs/b/model runs/c/model \\
                               --group whole-image runs/d/model runs/e/model --out seeds.json

Each folder is one exported training run (model.json, and report/robustness.json when
`make robustness` measured it). A difference between recipes smaller than their spread
over seeds is no difference; the table shows both.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .robustness import REPORT_FILE as ROBUSTNESS_FILE
from .subtype import REPORT_FILE as SUBTYPE_FILE

# (column, where in a run's figures, scale): the instruments in the order they are read.
INSTRUMENTS = (
    ("val AUC", ("val", "auc"), 1),
    ("val specificity", ("val", "specificity"), 100),
    ("block AUC", ("block", "auc"), 1),
    ("block sensitivity", ("block", "sensitivity"), 100),
    ("block specificity", ("block", "specificity"), 100),
    ("official val correct /16", ("val", "official_correct"), 1),
    ("occluded: specificity change", ("robustness", "validation", "frame_occluded", "specificity"), 100),
    ("occluded: AUC change", ("robustness", "validation", "frame_occluded", "auc"), 1),
    ("zoomed out: specificity change", ("robustness", "validation", "zoom_out_black", "specificity"), 100),
    ("NIH AUC", ("robustness", "nih", "clean", "auc"), 1),
    # The subtype head `make subtype` ships, and the unit trained with the network beside it.
    ("subtype val AUC", ("subtype", "validation", "called_pneumonia", "auc"), 1),
    ("subtype val AUC, trained unit", ("subtype", "validation", "other_head", "trained", "auc"), 1),
    ("subtype block AUC", ("subtype", "patient_block", "called_pneumonia", "auc"), 1),
    ("subtype block AUC, trained unit", ("subtype", "patient_block", "other_head", "trained", "auc"), 1),
    ("subtype block accuracy", ("subtype", "patient_block", "called_pneumonia", "accuracy"), 100),
    ("subtype block: share in the band", ("subtype", "patient_block", "called_pneumonia", "uncertain_share"), 100),
)


def run_figures(model_dir: Path) -> dict:
    """The figures of one exported run that the instruments read."""
    metadata = json.loads((model_dir / "model.json").read_text())
    val = dict(metadata["metrics"]["val"])
    official = val.get("official_val") or {}
    val["official_correct"] = (official.get("true_positive", 0) + official.get("true_negative", 0)
                               if official else None)
    figures = {"version": metadata["version"], "seed": metadata["training"]["config"]["seed"], "val": val,
               "block": metadata["metrics"].get("patient_block_hold_out") or {}}
    robustness_file = model_dir / "report" / ROBUSTNESS_FILE
    if robustness_file.is_file():
        report = json.loads(robustness_file.read_text())
        # A variant's row carries its change from clean; the clean row its own figures.
        figures["robustness"] = {name: {variant: row if variant == "clean" else row["change"]
                                        for variant, row in block["variants"].items()}
                                 for name, block in report["sets"].items()}
    subtype_file = model_dir / "report" / SUBTYPE_FILE
    if subtype_file.is_file():
        figures["subtype"] = json.loads(subtype_file.read_text())
    return figures


def _lookup(figures: dict, path: tuple[str, ...]):
    value = figures
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def summarise(groups: dict[str, list[Path]]) -> dict:
    result = {}
    for name, folders in groups.items():
        runs = [run_figures(folder) for folder in folders]
        rows = {}
        for column, path, scale in INSTRUMENTS:
            values = [v * scale for run in runs if (v := _lookup(run, path)) is not None]
            rows[column] = {"values": values, "mean": statistics.fmean(values) if values else None,
                            "sd": statistics.stdev(values) if len(values) > 1 else None}
        result[name] = {"runs": [{"folder": str(f), "version": r["version"], "seed": r["seed"]}
                                 for f, r in zip(folders, runs)], "instruments": rows}
    return result


def markdown(summary: dict) -> str:
    names = list(summary)
    lines = ["| instrument | " + " | ".join(f"{n} ({len(summary[n]['runs'])} seeds)" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for column, _, scale in INSTRUMENTS:
        cells = []
        for name in names:
            row = summary[name]["instruments"][column]
            if row["mean"] is None:
                cells.append("not measured")
                continue
            digits = 4 if scale == 1 and abs(row["mean"]) <= 1 else 1
            spread = f" ± {row['sd']:.{digits}f}" if row["sd"] is not None else ""
            cells.append(f"{row['mean']:.{digits}f}{spread} (n={len(row['values'])})")
        lines.append(f"| {column} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.compare", description=__doc__.split("\n")[0])
    parser.add_argument("--group", nargs="+", action="append", required=True, metavar=("NAME", "MODEL_DIR"),
                        help="a recipe's name and its runs' exported model folders")
    parser.add_argument("--out", type=Path, help="also write the summary as JSON")
    args = parser.parse_args(argv)
    groups = {}
    for name, *folders in args.group:
        if not folders:
            parser.error(f"--group {name} names no model folder")
        groups[name] = [Path(folder) for folder in folders]
    summary = summarise(groups)
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    table = Table(title="Recipes over seeds: mean ± sd (n runs)")
    table.add_column("instrument")
    for name in summary:
        table.add_column(name, justify="right")
    for line in markdown(summary).splitlines()[2:]:
        table.add_row(*[cell.strip() for cell in line.strip("|").split("|")])
    Console().print(table)
    print(markdown(summary))


if __name__ == "__main__":
    main()
