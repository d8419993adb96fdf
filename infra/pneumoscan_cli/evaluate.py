"""`pneumoscan evaluate DIR`: score a labelled folder through the Lambda's own code path."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import track
from rich.table import Table

from pneumoscan_eval import metrics
from pneumoscan_eval.datasets import LABELS, LayoutError, list_labelled
from pneumoscan.model import ModelLoadError
from pneumoscan.scoring import ImageRejected, Scorer

from .score import file_failure, function_settings


@dataclass
class Evaluation:
    labels: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    warnings: list[tuple[str, ...]] = field(default_factory=list)
    unreadable: list[dict] = field(default_factory=list)

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
    return result


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
        for bad in result.unreadable:
            # soft_wrap: a long path stays one line that can be copied.
            console.print(f"[yellow]unreadable[/yellow] {bad['path']}: {bad['reason']} ({bad['detail']})",
                          soft_wrap=True)
    if summary.n == 0:
        raise typer.Exit(1)


def _fmt(value: float, digits: int = 3) -> str:
    return "n/a" if value != value else f"{value:.{digits}f}"
