"""`pneumoscan upload`: put X-rays under `<incoming prefix><batch>/` and optionally follow scoring."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import typer
from botocore.exceptions import BotoCoreError, ClientError
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
)

from pneumoscan.results import ETAG, KEY, VERSION_ID

from .aws import BucketOption, EndpointOption, RegionOption, StackOption, TableOption, Target, resolve_target
from .files import LocalFile, collect_files
from .results import batch_items, summary_line

console = Console(stderr=True)
UPLOAD_THREADS = 8
POLL_INTERVAL_S = 1.0
DEFAULT_WAIT_TIMEOUT_S = 900


@dataclass(frozen=True)
class Uploaded:
    key: str
    etag: str
    size: int
    version_id: str | None = None  # None where the bucket keeps no versions


def default_batch_name() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")


def check_batch_name(batch: str) -> str:
    if not batch or "/" in batch or batch in {".", ".."}:
        raise typer.BadParameter(f"batch name {batch!r} must be one folder name (no '/')")
    return batch


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False)


def upload_files(target: Target, files: list[LocalFile], batch: str, *, show_progress: bool = True
                 ) -> list[Uploaded]:
    """PUT every file as `<prefix><batch>/<relative path>`, in parallel. A file that cannot
    be read or that S3 refuses (a key over 1024 bytes, ...) is reported and left out; the
    others are uploaded all the same."""
    s3 = target.client("s3")
    prefix = f"{target.incoming_prefix}{check_batch_name(batch)}/"

    def put(file: LocalFile) -> Uploaded | None:
        key = prefix + file.relative
        try:
            body = file.path.read_bytes()
            response = s3.put_object(Bucket=target.bucket, Key=key, Body=body, ContentType=file.content_type)
        except (OSError, BotoCoreError, ClientError) as exc:
            console.print(f"[red]not uploaded: {escape(str(file.path))}: {escape(str(exc))}[/red]")
            return None
        return Uploaded(key, response["ETag"].strip('"'), len(body), response.get("VersionId"))

    uploaded: list[Uploaded] = []
    with _progress() as progress, ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        task = progress.add_task(f"uploading to {escape(target.bucket)}/{escape(prefix)}", total=len(files),
                                 visible=show_progress)
        for result in pool.map(put, files):
            if result is not None:
                uploaded.append(result)
            progress.advance(task)
    return uploaded


def wait_for_scores(target: Target, batch: str, uploaded: list[Uploaded], *,
                    timeout_s: float = DEFAULT_WAIT_TIMEOUT_S, show_progress: bool = True) -> list[dict[str, Any]]:
    """Poll the batch (a Query on the table) until every uploaded object has an item for the bytes we uploaded.

    Returns the batch's items for the uploaded keys; raises TimeoutError naming what is missing.
    """
    expected = {item.key: item for item in uploaded}
    deadline = time.monotonic() + timeout_s
    with _progress() as progress:
        task = progress.add_task(f"scoring batch {batch}", total=len(expected), visible=show_progress)
        while True:
            done = {item[KEY] for item in batch_items(target, batch, projection=[KEY, ETAG, VERSION_ID])
                    if item[KEY] in expected and _is_result_of(item, expected[item[KEY]])}
            progress.update(task, completed=len(done))
            if len(done) == len(expected):
                return [item for item in batch_items(target, batch) if item[KEY] in done]
            if time.monotonic() >= deadline:
                missing = sorted(set(expected) - set(done))
                raise TimeoutError(f"{len(missing)} of {len(expected)} object(s) not scored after {timeout_s:.0f}s, "
                                   f"e.g. {missing[:3]} (see the DLQ and the worker log)")
            time.sleep(POLL_INTERVAL_S)


def _is_result_of(item: dict[str, Any], upload: Uploaded) -> bool:
    """An item left by an earlier upload under the same key does not count, even one of the
    same bytes (deleted and uploaded again): the version where the bucket keeps versions."""
    if upload.version_id:
        return item.get(VERSION_ID) == upload.version_id
    return str(item.get(ETAG, "")).strip('"') == upload.etag


def upload(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders (folders: their JPEG/PNG/DICOM files).")],
    batch: Annotated[str | None, typer.Option(help="Batch name (default: a UTC timestamp).")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow scoring until every upload has a result.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits at most.")] = DEFAULT_WAIT_TIMEOUT_S,
    stack: StackOption = None, endpoint_url: EndpointOption = None, region: RegionOption = None,
    bucket: BucketOption = None, table: TableOption = None,
) -> None:
    """Upload X-rays for scoring; with --wait, follow them until scored."""
    target = resolve_target(stack, endpoint_url, region, bucket, table)
    files = collect_files(paths)
    if not files:
        raise typer.BadParameter("no JPEG, PNG or DICOM files found in the given paths")
    batch = check_batch_name(batch or default_batch_name())
    uploaded = upload_files(target, files, batch)
    console.print(f"uploaded {len(uploaded)} of {len(files)} file(s), {sum(u.size for u in uploaded) / 1e6:.1f} MB, "
                  f"batch [bold]{escape(batch)}[/bold]")
    if wait:
        try:
            items = wait_for_scores(target, batch, uploaded, timeout_s=timeout)
        except TimeoutError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from None
        console.print(summary_line(items))
    console.print(f"see them with: pneumoscan results --batch {escape(batch)}")
    if len(uploaded) < len(files):
        raise typer.Exit(1)
