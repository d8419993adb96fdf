"""`pneumoscan score`: score local files with the bundled model, no AWS involved.

Files go through the Lambda's own scoring path (`pneumoscan.scoring`) with the Lambda's
size cap and FAILED reasons, so a file scores here exactly as it would there.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Iterator

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pneumoscan.model import ModelLoadError
from pneumoscan.results import STATUS_FAILED, STATUS_SCORED
from pneumoscan.scoring import ImageRejected, Scorer
from pneumoscan.settings import Settings

from .files import collect_files
from .results import subtype_cell, subtype_counts


def function_settings() -> Settings:
    """The deployed function's limits and policies as this environment sets them (no table needed)."""
    return Settings.from_env(table_required=False)


@dataclass(frozen=True)
class Score:
    """One file's row, as `score` prints it; the HTML report's entries extend it."""

    image: str
    status: str
    probability: float | None = None
    label: str | None = None
    error: str | None = None
    reason: str | None = None
    ignored_metadata: str | None = None
    # Codes saying the score may mean little (e.g. out_of_distribution); empty when none.
    warnings: list[str] = field(default_factory=list)
    # PNEUMONIA only: bacterial or viral (None inside the uncertain band) and P(viral | pneumonia).
    subtype: str | None = None
    subtype_probability: float | None = None


def score_file(scorer: Scorer, path: Path, settings: Settings | None = None) -> Score:
    """One file's row, whatever happens: a command over many files never stops at one."""
    try:
        return _score_file(scorer, path, settings or function_settings())
    except Exception as exc:  # noqa: BLE001 - a bug shows in this file's row; the other files still score
        reason, error = file_failure(exc)
        return Score(str(path), STATUS_FAILED, reason=reason, error=error)


def file_failure(exc: Exception) -> tuple[str, str]:
    """Reason and text for an error that is no verdict on one local file's image: the file
    cannot be read (`unreadable_file`), or something unforeseen broke (`internal_error`).
    Commands over many files record it as that file's failure and go on with the rest."""
    return "unreadable_file" if isinstance(exc, OSError) else "internal_error", f"{type(exc).__name__}: {exc}"[:500]


def _score_file(scorer: Scorer, path: Path, settings: Settings) -> Score:
    try:
        scored = scorer.score_file(path, max_bytes=settings.max_object_bytes)
    except ImageRejected as rejected:
        return Score(str(path), STATUS_FAILED, reason=rejected.reason, error=rejected.detail)
    return Score(str(path), STATUS_SCORED, round(scored.probability, 6), scored.label,
                 ignored_metadata=scored.image.ignored_metadata, warnings=list(scored.warnings),
                 subtype=scored.subtype, subtype_probability=None if scored.subtype_probability is None
                 else round(scored.subtype_probability, 6))


def score_paths(scorer: Scorer, paths: list[Path]) -> Iterator[Score]:
    settings = function_settings()
    for file in collect_files(paths):
        yield score_file(scorer, file.path, settings)


def score(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders (folders: their JPEG/PNG/DICOM files).")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    model_dir: Annotated[Path | None, typer.Option(help="Model folder (default: model/ of the repo).")] = None,
) -> None:
    """Score local X-rays offline (no AWS), exactly as the Lambda would."""
    try:
        scorer = Scorer.load(model_dir)
    except (ModelLoadError, ValueError) as exc:
        Console(stderr=True).print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    model = scorer.metadata
    scores = score_paths(scorer, paths)
    if as_json:
        for result in scores:
            typer.echo(json.dumps(asdict(result)))
        return
    table = Table(title=f"model {model.version} (threshold {model.threshold:.2f})")
    probability_column = f"P({model.positive_label.lower()})"
    subtype = model.subtype
    subtype_column = f"P({subtype.labels[1]})" if subtype else None
    for column in ("image", "status", "label", probability_column, *(("subtype", subtype_column) if subtype else ()),
                   "warnings", "error"):
        table.add_column(column, overflow="fold",
                         justify="right" if column in (probability_column, subtype_column) else "left")
    shown = []
    for result in scores:
        shown.append(result)
        subtype_cells = (subtype_cell(result.subtype, result.subtype_probability),
                         "" if result.subtype_probability is None else f"{result.subtype_probability:.3f}")
        table.add_row(escape(result.image), result.status, result.label or "",
                      "" if result.probability is None else f"{result.probability:.3f}",
                      *(subtype_cells if subtype else ()),
                      f"[yellow]{', '.join(result.warnings)}[/yellow]" if result.warnings else "",
                      escape(f"{result.reason}: {result.error}") if result.error else "")
    scored = [result for result in shown if result.status == STATUS_SCORED]
    table.caption = (f"{len(shown)} file(s): {len(scored)} scored "
                     f"({sum(result.label == model.positive_label for result in scored)} {model.positive_label}"
                     f"{subtype_counts([(r.subtype, r.subtype_probability) for r in scored], subtype.labels) if subtype else ''}, "
                     f"{sum(bool(result.warnings) for result in scored)} warned), "
                     f"{len(shown) - len(scored)} failed")
    Console().print(table)

