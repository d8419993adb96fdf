"""`pneumoscan demo DIR`: the whole pipeline on this machine in one command.

local up -> upload DIR -> wait for every score -> results table + summary -> clean shutdown.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pneumoscan.model import ModelLoadError, PneumoniaModel
from pneumoscan.results import LABEL, STATUS, STATUS_FAILED

from .aws import local_target
from .files import collect_files
from .local import running_state, start_local_stack, stop_local_stack
from .results import results_table
from .upload import DEFAULT_WAIT_TIMEOUT_S, check_batch_name, default_batch_name, upload_files, wait_for_scores

console = Console(stderr=True)
WHERE_TO_GET_XRAYS = (
    "Point it at a folder of chest X-rays (JPEG/PNG/DICOM), e.g. ../shared/data/xray_fullres_sample "
    "(200 full-resolution originals), or the Kaggle dataset 'Chest X-Ray Images (Pneumonia)' "
    "(https://www.kaggle.com/datasets/paultimothymooney/chest-xray-pneumonia).")


def demo(
    directory: Annotated[Path, typer.Argument(help="Folder of X-rays (JPEG/PNG/DICOM, searched recursively).")],
    batch: Annotated[str | None, typer.Option(help="Batch name (default: a UTC timestamp).")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes running the handler.")] = 2,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for scoring.")] = DEFAULT_WAIT_TIMEOUT_S,
    model_dir: Annotated[Path | None, typer.Option(help="Model folder (default: model/ of the repo).")] = None,
) -> None:
    """Start the local stack, score DIR through S3 -> SQS -> handler -> DynamoDB, show the results, stop."""
    if not directory.is_dir():
        raise typer.BadParameter(f"{directory} is not a folder. {WHERE_TO_GET_XRAYS}")
    files = collect_files([directory])
    if not files:
        raise typer.BadParameter(f"{directory} holds no JPEG, PNG or DICOM files. {WHERE_TO_GET_XRAYS}")
    try:
        model = PneumoniaModel(model_dir)  # fail here, not as a stuck queue, when there is no model
    except ModelLoadError as exc:
        console.print(f"[red]{exc}[/red]\nTrain and export one with `make train`.")
        raise typer.Exit(2) from None
    batch = check_batch_name(batch or default_batch_name())

    running = running_state()
    stack = None if running else start_local_stack(workers=workers, model_dir=model_dir)
    try:
        target = stack.target if stack else local_target()
        if running:
            console.print(f"using the local stack already running on {target.endpoint_url}")
        started = time.perf_counter()
        uploaded = upload_files(target, files, batch)
        try:
            items = wait_for_scores(target, batch, uploaded, timeout_s=timeout)
        except TimeoutError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from None
        elapsed = time.perf_counter() - started
    finally:
        if stack is not None:
            console.print("stopping the local stack ...")
            stop_local_stack(stack)

    prefix = f"{target.incoming_prefix}{batch}/"
    Console().print(results_table(items, title=f"{prefix} - model {model.version}", key_prefix=prefix,
                                  compact=True))
    metadata = model.metadata
    failures = sum(1 for item in items if item.get(STATUS) == STATUS_FAILED)
    positives = sum(1 for item in items if metadata.is_positive(item.get(LABEL)))
    console.print(
        f"[bold]{len(items)} image(s)[/bold]: {positives} {metadata.positive_label}, "
        f"{len(items) - positives - failures} {metadata.negative_label}, {failures} failed; "
        f"{len(items) / elapsed:.1f} images/s end to end (upload to last result, {elapsed:.1f} s)")
