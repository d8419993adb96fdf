"""`pneumoscan evaluate DIR`: score a labelled folder through the Lambda's own code path.

Where file names or subfolders say a pneumonia's subtype (`person1_virus_6.jpeg`,
`PNEUMONIA/bacterial/`), the subtype head is measured too: on the pneumonias of a known
subtype that the model calls PNEUMONIA (the images that get one), and as a 3 x 3 confusion
of normal / bacterial / viral over every image whose truth is known.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.progress import track
from rich.table import Table

from pneumoscan_eval import metrics
from pneumoscan_eval.datasets import LABELS, NEGATIVE_LABEL, SUBTYPES, LayoutError, list_labelled
from pneumoscan.model import ModelLoadError, SubtypeHead
from pneumoscan.scoring import ImageRejected, Scorer

from .score import file_failure, function_settings


@dataclass
class Evaluation:
    labels: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    warnings: list[tuple[str, ...]] = field(default_factory=list)
    unreadable: list[dict] = field(default_factory=list)
    # Per scored image: the subtype its name or folder says (None: unknown or NORMAL) and the
    # model's P(viral | pneumonia) (None: called NORMAL, or no subtype head).
    subtypes: list[str | None] = field(default_factory=list)
    subtype_probabilities: list[float | None] = field(default_factory=list)

    def warned(self) -> dict:
        """How many scored images carry each warning (any: `warned`), overall and per label."""
        by_label = {name: sum(bool(w) for w, label in zip(self.warnings, self.labels) if label == index)
                    for index, name in enumerate(LABELS)}
        codes = sorted({code for codes in self.warnings for code in codes})
        warned = sum(bool(codes) for codes in self.warnings)
        return {"warned": warned, "warned_share": warned / len(self.warnings) if self.warnings else None,
                "warned_by_label": by_label,
                "warnings": {code: sum(code in codes for codes in self.warnings) for code in codes}}


def score_folder(directory: Path, scorer: Scorer, *, show_progress: bool = False) -> Evaluation:
    """Score every labelled file through the Lambda's scoring path; bad files are listed."""
    files = list_labelled(directory)
    max_bytes = function_settings().max_object_bytes
    result = Evaluation()
    iterator = track(files, description="scoring", transient=True) if show_progress else files
    for item in iterator:
        try:
            scored = scorer.score_file(item.path, max_bytes=max_bytes)
        except ImageRejected as exc:
            result.unreadable.append({"path": str(item.path), "reason": exc.reason, "detail": exc.detail})
            continue
        except Exception as exc:  # noqa: BLE001 - listed with the unreadable files; the rest is evaluated
            reason, detail = file_failure(exc)
            result.unreadable.append({"path": str(item.path), "reason": reason, "detail": detail})
            continue
        result.scores.append(scored.probability)
        result.labels.append(item.label)
        result.paths.append(str(item.path))
        result.warnings.append(scored.warnings)
        result.subtypes.append(item.subtype)
        result.subtype_probabilities.append(scored.subtype_probability)
    return result


def subtype_report(result: Evaluation, head: SubtypeHead | None, positive_threshold: float) -> dict | None:
    """The subtype head's figures where the folder says subtypes, else None.

    Measured on the pneumonias of a known subtype called PNEUMONIA; the confusion counts every
    image of known truth, a called positive by its subtype at the head's threshold (`uncertain`
    says how many of those were inside the band and given none)."""
    if head is None or not any(result.subtypes):
        return None
    probability = {index: p for index, p in enumerate(result.subtype_probabilities) if p is not None}
    measured = [index for index, subtype in enumerate(result.subtypes) if subtype and index in probability]
    p = np.array([probability[index] for index in measured])
    truth = np.array([SUBTYPES.index(result.subtypes[index]) for index in measured])
    report = metrics.subtype_summary(truth, p, head.threshold, head.uncertain(p), SUBTYPES)
    classes = (NEGATIVE_LABEL.lower(), *SUBTYPES)
    matrix = {f"true {name}": {f"called {other}": 0 for other in classes} | {"uncertain": 0} for name in classes}
    for index, (label, score) in enumerate(zip(result.labels, result.scores)):
        true = classes[0] if label == 0 else result.subtypes[index]
        if true is None:
            continue
        row = matrix[f"true {true}"]
        if score < positive_threshold or index not in probability:
            row[f"called {classes[0]}"] += 1
            continue
        row[f"called {str(head.subtypes(probability[index]))}"] += 1
        row["uncertain"] += int(head.uncertain(probability[index]))
    report["confusion_3x3"] = matrix
    report.pop("confusion")
    return report



def _finite(value: float) -> float | None:
    return None if value != value else value  # JSON has no NaN


def evaluate(
    directory: Annotated[Path, typer.Argument(help="DIR/{NORMAL,PNEUMONIA} or the Kaggle layout "
                                                   "DIR/{train,val,test}/{NORMAL,PNEUMONIA}")],
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object instead of a table")] = False,
    model_dir: Annotated[Path | None, typer.Option(help="model folder (default: the bundled model/)")] = None,
    threads: Annotated[int, typer.Option(help="LiteRT threads")] = 2,
) -> None:
    """Accuracy, sensitivity, specificity and AUC of the model on a labelled folder of X-rays."""
    console = Console(stderr=True)
    try:
        scorer = Scorer.load(model_dir, num_threads=threads)
        result = score_folder(directory, scorer, show_progress=not as_json)
    except (ModelLoadError, LayoutError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc

    model = scorer.model
    summary = metrics.summarize(result.labels, result.scores, model.threshold)
    report = {
        "n": summary.n, "accuracy": _finite(summary.accuracy), "sensitivity": _finite(summary.sensitivity),
        "specificity": _finite(summary.specificity), "auc": _finite(summary.auc),
        "threshold": model.threshold, "positives": summary.positives, "negatives": summary.negatives,
        "true_positive": summary.true_positive, "false_positive": summary.false_positive,
        "true_negative": summary.true_negative, "false_negative": summary.false_negative,
        "model_version": model.version, **result.warned(), "unreadable": len(result.unreadable),
        "unreadable_files": result.unreadable,
    }
    subtype = subtype_report(result, model.metadata.subtype, model.threshold)
    if subtype is not None:
        report["subtype"] = subtype
    if as_json:
        typer.echo(json.dumps(report))
    else:
        table = Table(title=f"{directory}  (model {model.version})")
        for column in ("n", "accuracy", "sensitivity", "specificity", "AUC", "threshold", "warned", "unreadable"):
            table.add_column(column, justify="right")
        table.add_row(str(summary.n), _fmt(summary.accuracy), _fmt(summary.sensitivity),
                      _fmt(summary.specificity), _fmt(summary.auc, 4), f"{model.threshold:.4f}",
                      str(report["warned"]), str(len(result.unreadable)))
        Console().print(table)
        if subtype is not None:
            Console().print(*subtype_tables(subtype))
        for bad in result.unreadable:
            # soft_wrap: a long path stays one line that can be copied.
            console.print(f"[yellow]unreadable[/yellow] {bad['path']}: {bad['reason']} ({bad['detail']})",
                          soft_wrap=True)
    if summary.n == 0:
        raise typer.Exit(1)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def subtype_tables(subtype: dict) -> tuple[Table, Table]:
    """The subtype head's figures and its 3 x 3 confusion, as `evaluate` prints them."""
    figures = Table(title="subtype, on the pneumonias of known subtype called PNEUMONIA")
    for column in ("n", "AUC", "accuracy", *(f"recall {name}" for name in SUBTYPES), "uncertain",
                   "accuracy outside the band"):
        figures.add_column(column, justify="right")
    figures.add_row(str(subtype["n"]), _fmt(subtype["auc"], 4), _fmt(subtype["accuracy"]),
                    *(_fmt(subtype["recall"][name]) for name in SUBTYPES),
                    f"{subtype['uncertain']} ({_fmt(subtype['uncertain_share'])})", _fmt(subtype["accuracy_confident"]))
    matrix = subtype["confusion_3x3"]
    columns = list(next(iter(matrix.values())))
    confusion = Table(title="normal / bacterial / viral (uncertain: of the row's positives, inside the band)")
    confusion.add_column("")
    for column in columns:
        confusion.add_column(column, justify="right")
    for name, row in matrix.items():
        confusion.add_row(name, *(str(row[column]) for column in columns))
    return figures, confusion
