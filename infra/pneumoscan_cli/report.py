"""`pneumoscan report`: one self-contained HTML page per batch or set of local files.

Every image is inlined as a data URI and the page carries its own CSS and script, so
the file opens anywhere with no network. Per image: thumbnail, CAM overlay,
probability, label, status, and a flag when most of the heat lies outside the chest
(see `pneumoscan.cam.CHEST_BOX`). The page sorts by probability and filters to
positives, failures or flagged images.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import typer
from PIL import Image
from rich.console import Console
from rich.progress import track

from pneumoscan import cam, images
from pneumoscan.model import ModelLoadError, PneumoniaModel
from pneumoscan.results import STATUS_FAILED, STATUS_SCORED

from .aws import (BucketOption, EndpointOption, RegionOption, StackOption, TableOption, Target,
                  TargetError, resolve_target)
from .files import collect_files
from .results import batch_items
from .score import MAX_OBJECT_BYTES

console = Console(stderr=True)

THUMBNAIL_SIDE = 160
# Overlays are re-encoded as JPEG inside the page: ~4x smaller than the PNGs, still sharp.
JPEG_QUALITY = 82
DOWNLOAD_THREADS = 8


@dataclass
class ReportEntry:
    """One image as the report shows it."""

    name: str
    status: str
    probability: float | None = None
    label: str | None = None
    reason: str | None = None
    error: str | None = None
    model_version: str | None = None
    border_share: float | None = None
    outside_chest_share: float | None = None
    thumbnail: bytes | None = None  # JPEG
    overlay: bytes | None = None  # JPEG or PNG

    @property
    def flagged(self) -> bool:
        return self.outside_chest_share is not None and self.outside_chest_share > cam.OUTSIDE_CHEST_FLAG


# -- gathering ----------------------------------------------------------------------------
def entries_from_files(paths: list[Path], model: Any) -> Iterator[ReportEntry]:
    """Score local files offline with the Lambda's decoder, model and CAM."""
    weights = cam.CamWeights.from_metadata(model.metadata)
    height, width, channels = model.input_shape
    positive_label = model.metadata["labels"][1]
    for path in track(paths, description="Scoring", console=console):
        size = path.stat().st_size
        if size > MAX_OBJECT_BYTES:  # the Lambda's cap: never read, recorded as FAILED
            yield ReportEntry(str(path), STATUS_FAILED, reason="object_too_large",
                              error=f"{size} bytes is above the {MAX_OBJECT_BYTES}-byte limit",
                              model_version=model.version)
            continue
        try:
            pixels, decoded = images.load_model_input(path.read_bytes(), height, width, channels)
        except images.ImageRejected as exc:
            yield ReportEntry(str(path), STATUS_FAILED, reason=exc.reason, error=exc.detail,
                              model_version=model.version)
            continue
        prediction = model.predict(pixels)
        probability = float(prediction.probability[0])
        label = model.label(probability)
        explanation = cam.explain(prediction.feature_map[0], weights, decoded, probability=probability,
                                  label=label, positive=label == positive_label)
        yield ReportEntry(str(path), STATUS_SCORED, probability, label, model_version=model.version,
                          border_share=explanation.summary.border_share,
                          outside_chest_share=explanation.summary.outside_chest_share,
                          thumbnail=thumbnail(decoded.image), overlay=as_jpeg(explanation.overlay_png))


def entries_from_stack(target: Target, batch: str) -> list[ReportEntry]:
    """Result items of a batch plus their overlays and source images from the bucket."""
    items = list(batch_items(target, batch))
    if not items:
        raise TargetError(f"no results for batch {batch!r} in table {target.table}")
    s3 = target.client("s3")

    def entry(item: dict[str, Any]) -> ReportEntry:
        summary = item.get(cam.ITEM_CAM) or {}
        return ReportEntry(
            item["object_key"], item.get("status", "?"), _number(item.get("probability")), item.get("label"),
            item.get("reason"), item.get("error"), item.get("model_version"),
            _number(summary.get("border_share")), _number(summary.get("outside_chest_share")),
            thumbnail=_source_thumbnail(s3, target.bucket, item),
            overlay=_overlay(s3, target.bucket, item))

    with ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
        return list(track(pool.map(entry, items), total=len(items), description="Downloading", console=console))


def _fetch(s3: Any, bucket: str, key: str | None, version_id: str | None = None) -> bytes | None:
    if not key:
        return None
    extra = {"VersionId": version_id} if version_id else {}
    try:
        return s3.get_object(Bucket=bucket, Key=key, **extra)["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None


def _overlay(s3: Any, bucket: str, item: dict[str, Any]) -> bytes | None:
    png = _fetch(s3, bucket, item.get(cam.ITEM_OVERLAY_KEY))
    return as_jpeg(png) if png else None


def _source_thumbnail(s3: Any, bucket: str, item: dict[str, Any]) -> bytes | None:
    if item.get("status") != STATUS_SCORED:
        return None  # failed objects are missing, too large or not images: nothing to show
    data = _fetch(s3, bucket, item["object_key"], item.get("version_id"))
    if data is None:
        return None
    return thumbnail(images.decode(data, target_size=(THUMBNAIL_SIDE, THUMBNAIL_SIDE)).image)


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def thumbnail(image: Image.Image) -> bytes:
    small = image.convert("L")
    small.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BILINEAR)
    return _jpeg(small)


def as_jpeg(png: bytes) -> bytes:
    return _jpeg(Image.open(io.BytesIO(png)).convert("RGB"))


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


# -- rendering ----------------------------------------------------------------------------
def data_uri(data: bytes) -> str:
    mime = "image/png" if data.startswith(b"\x89PNG") else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def summarise(entries: list[ReportEntry]) -> dict[str, Any]:
    scored = [e for e in entries if e.status == STATUS_SCORED]
    return {"images": len(entries), "scored": len(scored),
            "positives": sum(e.label == "PNEUMONIA" for e in scored),
            "negatives": sum(e.label == "NORMAL" for e in scored),
            "failures": sum(e.status == STATUS_FAILED for e in entries),
            "flagged": sum(e.flagged for e in entries),
            "model_versions": sorted({e.model_version for e in entries if e.model_version})}


def render_html(entries: list[ReportEntry], *, source: str) -> str:
    counts = summarise(entries)
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = "\n".join(_row(position, entry) for position, entry in enumerate(entries))
    left, top, right, bottom = (round(edge * 100) for edge in cam.CHEST_BOX)
    summary_items = [("images", counts["images"]), ("scored", counts["scored"]),
                     ("positives", counts["positives"]), ("normal", counts["negatives"]),
                     ("failures", counts["failures"]), ("heat outside chest", counts["flagged"])]
    summary = "".join(f'<div class="count" data-count="{html.escape(name)}"><b>{value}</b>{html.escape(name)}</div>'
                      for name, value in summary_items)
    versions = ", ".join(counts["model_versions"]) or "unknown"
    return PAGE.format(
        title=html.escape(f"pneumoscan report: {source}"), source=html.escape(source), generated=generated,
        summary=summary, versions=html.escape(versions), rows=rows, total=len(entries),
        flag_share=round(cam.OUTSIDE_CHEST_FLAG * 100), chest=f"{left}-{right} % across, {top}-{bottom} % down",
        counts_json=html.escape(json.dumps(counts)))


def _row(position: int, entry: ReportEntry) -> str:
    probability = "" if entry.probability is None else f"{entry.probability:.6f}"
    flag = ""
    if entry.flagged:
        flag = (f'<span class="flag" title="share of heat outside the chest box">'
                f"heat outside chest {entry.outside_chest_share:.0%}</span>")
    detail = ""
    if entry.status == STATUS_FAILED:
        detail = f'<div class="error">{html.escape(entry.reason or "")}: {html.escape(entry.error or "")}</div>'
    elif entry.border_share is not None:
        detail = f'<div class="muted">heat in outer 10 %: {entry.border_share:.0%}</div>'
    return (
        f'<tr data-position="{position}" data-probability="{probability}" data-status="{html.escape(entry.status)}" '
        f'data-label="{html.escape(entry.label or "")}" data-flagged="{int(entry.flagged)}">'
        f"<td>{_image(entry.thumbnail, 'thumbnail', entry.name)}</td>"
        f"<td>{_image(entry.overlay, 'overlay', entry.name)}</td>"
        f'<td class="name">{html.escape(entry.name)}{detail}</td>'
        f'<td class="status {html.escape(entry.status.lower())}">{html.escape(entry.status)}</td>'
        f'<td class="label {html.escape((entry.label or "").lower())}">{html.escape(entry.label or "-")}</td>'
        f'<td class="probability">{"-" if entry.probability is None else f"{entry.probability:.3f}"}</td>'
        f"<td>{flag}</td></tr>")


def _image(data: bytes | None, kind: str, name: str) -> str:
    if not data:
        return f'<span class="none">no {kind}</span>'
    return f'<img class="{kind}" src="{data_uri(data)}" alt="{html.escape(kind)} of {html.escape(name)}">'


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }}
header p {{ margin: .3em 0; color: #555; }}
.counts {{ display: flex; gap: .8em; flex-wrap: wrap; margin: 1em 0; }}
.count {{ border: 1px solid #ccc; border-radius: 6px; padding: .4em .9em; }}
.count b {{ display: block; font-size: 1.6em; }}
.controls button {{ margin: 0 .2em .4em 0; padding: .3em .8em; border: 1px solid #888; border-radius: 4px;
  background: #f4f4f4; cursor: pointer; }}
.controls button[aria-pressed="true"] {{ background: #234; color: #fff; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ border-bottom: 1px solid #ddd; padding: .4em; text-align: left; vertical-align: middle; }}
img.thumbnail {{ max-width: {thumb}px; max-height: {thumb}px; }}
img.overlay {{ width: 288px; cursor: zoom-in; }}
img.overlay.zoomed {{ width: auto; cursor: zoom-out; }}
.name {{ word-break: break-all; max-width: 24em; }}
.failed, .error {{ color: #b00; }}
.pneumonia {{ color: #b35900; font-weight: bold; }}
.muted, .none {{ color: #777; font-size: .9em; }}
.probability {{ font-variant-numeric: tabular-nums; font-size: 1.2em; }}
.flag {{ white-space: nowrap; background: #fde68a; border: 1px solid #b45309; border-radius: 4px; padding: .1em .4em; }}
</style></head>
<body>
<header>
<h1>pneumoscan report</h1>
<p>Source: {source} &middot; generated {generated} &middot; model version: <span id="model-version">{versions}</span></p>
<div class="counts" id="summary" data-counts="{counts_json}">{summary}</div>
<p class="muted">Heat is the class activation map of the label given. Flagged: more than {flag_share} % of the
heat lies outside the chest box ({chest} of the image), where burned-in markers and borders sit.
Not a medical device: a research aid.</p>
</header>
<div class="controls">
<span>Sort:</span>
<button type="button" data-sort="desc" aria-pressed="false">probability &darr;</button>
<button type="button" data-sort="asc" aria-pressed="false">probability &uarr;</button>
<button type="button" data-sort="input" aria-pressed="true">input order</button>
<span>Show:</span>
<button type="button" data-filter="all" aria-pressed="true">all</button>
<button type="button" data-filter="positives" aria-pressed="false">positives</button>
<button type="button" data-filter="failures" aria-pressed="false">failures</button>
<button type="button" data-filter="flagged" aria-pressed="false">heat outside chest</button>
<span id="shown">{total} of {total} shown</span>
</div>
<table id="results">
<thead><tr><th>image</th><th>heat map</th><th>object</th><th>status</th><th>label</th><th>P(pneumonia)</th><th></th></tr></thead>
<tbody>
{rows}
</tbody></table>
<script>
"use strict";
(function () {{
  const body = document.querySelector("#results tbody");
  const rows = Array.from(body.rows);
  const filters = {{
    all: () => true,
    positives: (row) => row.dataset.label === "PNEUMONIA",
    failures: (row) => row.dataset.status === "FAILED",
    flagged: (row) => row.dataset.flagged === "1",
  }};
  const view = {{ sort: "input", filter: "all" }};
  const probability = (row) => row.dataset.probability === "" ? null : Number(row.dataset.probability);

  function order(a, b) {{
    if (view.sort === "input") return a.dataset.position - b.dataset.position;
    const pa = probability(a), pb = probability(b);
    if (pa === null || pb === null) return (pa === null) - (pb === null) || a.dataset.position - b.dataset.position;
    return view.sort === "desc" ? pb - pa : pa - pb;
  }}

  function apply() {{
    body.append(...rows.slice().sort(order));
    let shown = 0;
    for (const row of rows) {{
      row.hidden = !filters[view.filter](row);
      shown += !row.hidden;
    }}
    document.getElementById("shown").textContent = shown + " of " + rows.length + " shown";
    for (const button of document.querySelectorAll("[data-sort]"))
      button.setAttribute("aria-pressed", String(button.dataset.sort === view.sort));
    for (const button of document.querySelectorAll("[data-filter]"))
      button.setAttribute("aria-pressed", String(button.dataset.filter === view.filter));
    history.replaceState(null, "", "#sort=" + view.sort + "&filter=" + view.filter);
  }}

  document.querySelector(".controls").addEventListener("click", (event) => {{
    const button = event.target.closest("button");
    if (!button) return;
    if (button.dataset.sort) view.sort = button.dataset.sort;
    if (button.dataset.filter) view.filter = button.dataset.filter;
    apply();
  }});
  body.addEventListener("click", (event) => {{
    if (event.target.matches("img.overlay")) event.target.classList.toggle("zoomed");
  }});
  const requested = new URLSearchParams(location.hash.slice(1));
  if (["desc", "asc", "input"].includes(requested.get("sort"))) view.sort = requested.get("sort");
  if (requested.get("filter") in filters) view.filter = requested.get("filter");
  apply();
}})();
</script>
</body></html>
""".replace("{thumb}", str(THUMBNAIL_SIDE))


# -- command ------------------------------------------------------------------------------
def report(
    paths: Annotated[list[Path] | None, typer.Argument(
        help="Local images or folders, scored offline (no AWS). Leave out with --batch.")] = None,
    batch: Annotated[str | None, typer.Option("--batch", "-b", help="A batch already scored by the stack.")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="HTML file to write.")] = Path("report.html"),
    stack: StackOption = None,
    endpoint_url: EndpointOption = None,
    region: RegionOption = None,
    bucket: BucketOption = None,
    table: TableOption = None,
    model_dir: Annotated[Path | None, typer.Option(help="Model folder for PATH... (default: model/ of the repo).")]
    = None,
) -> None:
    """Write one self-contained HTML page: thumbnails, heat maps, scores; sortable and filterable."""
    if bool(paths) == bool(batch):
        raise typer.BadParameter("give either --batch B (results from a stack) or PATH... (local files)")
    try:
        if batch:
            target = resolve_target(stack, endpoint_url, region, bucket, table)
            entries, source = entries_from_stack(target, batch), f"batch {batch} ({target.source})"
        else:
            files = [found.path for found in collect_files(paths)]
            if not files:
                raise typer.BadParameter("no JPEG or PNG files under the given paths")
            entries = list(entries_from_files(files, PneumoniaModel(model_dir)))
            source = ", ".join(str(p) for p in paths)
    except (TargetError, ModelLoadError, cam.CamUnavailable) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    output.write_text(render_html(entries, source=source), encoding="utf-8")
    counts = summarise(entries)
    console.print(f"wrote {output}: {counts['images']} images, {counts['positives']} positives, "
                  f"{counts['failures']} failures, {counts['flagged']} with heat outside the chest")
