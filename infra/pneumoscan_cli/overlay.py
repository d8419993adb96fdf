"""`pneumoscan overlay KEY`: the heat-map overlay of one stored result, drawn here.

The function keeps each image's heat map in its result item (a 14 x 14 grid, 100 bytes)
instead of writing a PNG per image to S3; this command reads the item (GetItem) and the
scored object version (GetObject) and draws the same overlay the function would have.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from botocore.exceptions import ClientError
from rich.console import Console

from pneumoscan import overlay as overlays
from pneumoscan import results
from pneumoscan.events import MISSING_OBJECT_CODES
from pneumoscan.images import ImageRejected
from pneumoscan.scoring import decode_image
from pneumoscan.model import ModelLoadError, ModelMetadata, default_model_dir

from .aws import BucketOption, EndpointOption, RegionOption, StackOption, TableOption, TargetError, resolve_target

console = Console(stderr=True)


def overlay(
    key: Annotated[str, typer.Argument(help="Object key of the scored image, e.g. incoming/ward-7/a.jpeg.")],
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="PNG file to write (default: the image's file name + .overlay.png).")] = None,
    model_dir: Annotated[Path | None, typer.Option(help="Model folder whose labels name the positive class.")]
    = None,
    stack: StackOption = None, endpoint_url: EndpointOption = None, region: RegionOption = None,
    bucket: BucketOption = None, table: TableOption = None,
) -> None:
    """Draw one result's heat-map overlay from its stored heat map and the scored image."""
    try:
        positive_label = ModelMetadata.read(model_dir or default_model_dir()).positive_label
    except ModelLoadError:
        positive_label = results.POSITIVE_LABEL  # the labels are all this needs; a missing model is no reason to fail
    try:
        target = resolve_target(stack, endpoint_url, region, bucket, table)
    except TargetError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    item = results.get_result(target.client("dynamodb"), target.table, key, incoming_prefix=target.incoming_prefix)
    if item is None:
        console.print(f"[red]no result for {key} in table {target.table}[/red]")
        raise typer.Exit(1)
    if item.get(results.STATUS) != results.STATUS_SCORED:
        console.print(f"[red]{key} was not scored ({item.get(results.REASON)}): it has no heat map[/red]")
        raise typer.Exit(1)
    s3 = target.client("s3")
    version = {"VersionId": item[results.VERSION_ID]} if item.get(results.VERSION_ID) else {}
    try:
        data = s3.get_object(Bucket=target.bucket, Key=key, **version)["Body"].read()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in MISSING_OBJECT_CODES:
            raise
        console.print(f"[red]the scored version of {key} is no longer in the bucket[/red]")
        raise typer.Exit(1) from None
    try:
        decoded = decode_image(data, target_size=(overlays.OVERLAY_LONG_SIDE,) * 2)
        png = results.overlay_from_item(item, decoded, positive_label=positive_label)
    except (ValueError, ImageRejected) as exc:
        console.print(f"[red]{key}: {exc}[/red]")
        raise typer.Exit(1) from exc
    output = output or Path(f"{Path(key).name}.overlay.png")
    output.write_bytes(png)
    console.print(f"wrote {output} ({len(png) // 1024} KB)")
