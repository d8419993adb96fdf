"""`pneumoscan score`: score local files with the bundled model, no AWS involved.

Same decoding (`pneumoscan.images`), model (`pneumoscan.model`), size cap and
FAILED reasons as the Lambda, so a file scores here exactly as it would there.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Iterator

import typer
from rich.console import Console
from rich.table import Table

from pneumoscan import images
from pneumoscan.model import ModelLoadError, PneumoniaModel
from pneumoscan.results import STATUS_FAILED, STATUS_SCORED

from .files import collect_files

# The Lambda's own cap (template Parameter MaxObjectBytes -> env MAX_OBJECT_BYTES).
MAX_OBJECT_BYTES = int(os.environ.get("MAX_OBJECT_BYTES", images.MAX_BYTES))


@dataclass(frozen=True)
class Score:
    image: str
    status: str
    probability: float | None = None
    label: str | None = None
    error: str | None = None
    reason: str | None = None
    ignored_metadata: str | None = None


def score_file(model: PneumoniaModel, path: Path) -> Score:
    """One file's row, whatever happens: a command over many files never stops at one."""
    try:
        return _score_file(model, path)
    except OSError as exc:
        return Score(str(path), STATUS_FAILED, reason="unreadable_file", error=f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # noqa: BLE001 - a bug shows in this file's row; the other files still score
        return Score(str(path), STATUS_FAILED, reason="internal_error", error=f"{type(exc).__name__}: {exc}")


def _score_file(model: PneumoniaModel, path: Path) -> Score:
    size = path.stat().st_size
    if size > MAX_OBJECT_BYTES:
        return Score(str(path), STATUS_FAILED, reason="object_too_large",
                     error=f"{size} bytes is above the {MAX_OBJECT_BYTES}-byte limit")
    height, width, channels = model.input_shape
    data = path.read_bytes()
    try:
        pixels, decoded = images.load_model_input(data, height, width, channels)
    except images.ImageRejected as rejected:
        return Score(str(path), STATUS_FAILED, reason=rejected.reason, error=rejected.detail)
    probability = float(model.predict(pixels).probability[0])
    return Score(str(path), STATUS_SCORED, round(probability, 6), model.label(probability),
                 ignored_metadata=decoded.ignored_metadata)


def score_paths(model: PneumoniaModel, paths: list[Path]) -> Iterator[Score]:
    for file in collect_files(paths):
        yield score_file(model, file.path)


def score(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders (folders: their JPEG/PNG files).")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    model_dir: Annotated[Path | None, typer.Option(help="Model folder (default: model/ of the repo).")] = None,
) -> None:
    """Score local X-rays offline (no AWS), exactly as the Lambda would."""
    try:
        model = PneumoniaModel(model_dir)
    except ModelLoadError as exc:
        Console(stderr=True).print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    scores = score_paths(model, paths)
    if as_json:
        for result in scores:
            typer.echo(json.dumps(asdict(result)))
        return
    table = Table(title=f"model {model.version} (threshold {model.threshold:.2f})")
    for column in ("image", "status", "label", "P(pneumonia)", "error"):
        table.add_column(column, overflow="fold", justify="right" if column == "P(pneumonia)" else "left")
    for result in scores:
        table.add_row(result.image, result.status, result.label or "",
                      "" if result.probability is None else f"{result.probability:.3f}",
                      f"{result.reason}: {result.error}" if result.error else "")
    Console().print(table)
