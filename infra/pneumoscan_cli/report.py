"""`pneumoscan report`: one self-contained HTML page per batch or set of local files.

Every image is inlined as a data URI and the page carries its own CSS and script, so
the file opens anywhere with no network. Per image: thumbnail, CAM overlay,
probability, label, a positive's subtype (bacterial or viral, or uncertain), status, the
result's warnings (e.g. `out_of_distribution`: the score may mean little), and a flag when
most of the heat lies outside the chest (see `pneumoscan.cam.CHEST_BOX`). The page sorts by
probability and filters to positives, each subtype, failures, warned or flagged images.
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

from pneumoscan import cam, results
from pneumoscan import overlay as overlays
from pneumoscan.model import ModelLoadError, ModelMetadata, default_model_dir
from pneumoscan.results import STATUS_FAILED, STATUS_SCORED
from pneumoscan.images import DecodedImage
from pneumoscan.scoring import WARNING_MEANINGS, ImageRejected, Scorer, decode_image

from pneumoscan_eval.datasets import SUBTYPES

from .aws import (BucketOption, EndpointOption, RegionOption, StackOption, TableOption, Target,
                  TargetError, resolve_target)
from .files import collect_files
from .results import UNCERTAIN, batch_items, subtype_shown
from .score import Score, file_failure, function_settings

console = Console(stderr=True)

THUMBNAIL_SIDE = 160
SUBTYPES_SHOWN = (*SUBTYPES, UNCERTAIN)
# Overlays are re-encoded as JPEG inside the page: ~4x smaller than the PNGs, still sharp.
JPEG_QUALITY = 82
DOWNLOAD_THREADS = 8


@dataclass(frozen=True)
class ReportEntry(Score):
    """One image as the report shows it: its score row plus the model, heat map and pictures."""

    model_version: str | None = None
    border_share: float | None = None
    outside_chest_share: float | None = None
    thumbnail: bytes | None = None  # JPEG
    overlay: bytes | None = None  # JPEG or PNG

    @property
    def flagged(self) -> bool:
        return self.outside_chest_share is not None and self.outside_chest_share > cam.OUTSIDE_CHEST_FLAG


# -- gathering ----------------------------------------------------------------------------
def entries_from_files(paths: list[Path], scorer: Scorer) -> Iterator[ReportEntry]:
    """Score local files offline through the Lambda's scoring path, overlays included."""
    settings = function_settings()
    version = scorer.metadata.version
    for path in track(paths, description="Scoring", console=console):
        try:
            scored = scorer.score_file(path, max_bytes=settings.max_object_bytes, overlay="all")
        except ImageRejected as exc:
            yield ReportEntry(str(path), STATUS_FAILED, reason=exc.reason, error=exc.detail, model_version=version)
            continue
        except Exception as exc:  # noqa: BLE001 - one file's failure row; the report covers the rest
            reason, error = file_failure(exc)
            yield ReportEntry(str(path), STATUS_FAILED, reason=reason, error=error, model_version=version)
            continue
        summary = scored.heat_map.summary if scored.heat_map is not None else None
        yield ReportEntry(str(path), STATUS_SCORED, scored.probability, scored.label, model_version=version,
                          border_share=summary.border_share if summary else None,
                          outside_chest_share=summary.outside_chest_share if summary else None,
                          thumbnail=thumbnail(scored.image.image),
                          overlay=as_jpeg(scored.overlay_png) if scored.overlay_png else None,
                          warnings=scored.warnings, subtype=scored.subtype,
                          subtype_probability=scored.subtype_probability)


def entries_from_stack(target: Target, batch: str, positive_label: str) -> list[ReportEntry]:
    """Result items of a batch, their source images from the bucket, and each overlay drawn
    here from the item's stored heat map (or, for an item that has none, the PNG the
    function wrote when `OverlayImages` asked for one)."""
    items = list(batch_items(target, batch))
    if not items:
        raise TargetError(f"no results for batch {batch!r} in table {target.table}")
    s3 = target.client("s3")

    def entry(item: dict[str, Any]) -> ReportEntry:
        summary = item.get(results.CAM) or {}
        source = _source(s3, target.bucket, item)
        # One decode at the overlay's size serves the thumbnail too.
        decoded = decode_image(source, target_size=(overlays.OVERLAY_LONG_SIDE,) * 2) if source else None
        return ReportEntry(
            item[results.KEY], item.get(results.STATUS, "?"), _number(item.get(results.PROBABILITY)),
            item.get(results.LABEL), reason=item.get(results.REASON), error=item.get(results.ERROR),
            model_version=item.get(results.MODEL_VERSION),
            border_share=_number(summary.get("border_share")),
            outside_chest_share=_number(summary.get("outside_chest_share")),
            thumbnail=thumbnail(decoded.image) if decoded else None,
            overlay=_overlay(s3, target.bucket, item, decoded, positive_label),
            warnings=tuple(item.get(results.WARNINGS) or ()), subtype=item.get(results.SUBTYPE),
            subtype_probability=_number(item.get(results.SUBTYPE_PROBABILITY)))

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


def _overlay(s3: Any, bucket: str, item: dict[str, Any], decoded: DecodedImage | None,
             positive_label: str) -> bytes | None:
    if decoded is not None and item.get(results.HEAT_MAP):
        return as_jpeg(results.overlay_from_item(item, decoded, positive_label=positive_label))
    png = _fetch(s3, bucket, results.derived_key(item, results.OVERLAY_KEY))
    return as_jpeg(png) if png else None


def _source(s3: Any, bucket: str, item: dict[str, Any]) -> bytes | None:
    """The scored object version, or None for a failed item (missing, too large or no image)."""
    if item.get(results.STATUS) != STATUS_SCORED:
        return None
    return _fetch(s3, bucket, item[results.KEY], item.get(results.VERSION_ID))


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


def summarise(entries: list[ReportEntry], positive_label: str) -> dict[str, Any]:
    scored = [e for e in entries if e.status == STATUS_SCORED]
    positives = sum(e.label == positive_label for e in scored)
    return {"images": len(entries), "scored": len(scored), "positives": positives,
            "negatives": len(scored) - positives,
            "failures": sum(e.status == STATUS_FAILED for e in entries),
            "warned": sum(bool(e.warnings) for e in entries),
            **{name: sum(_subtype(e) == name for e in scored) for name in SUBTYPES_SHOWN},
            "flagged": sum(e.flagged for e in entries),
            "model_versions": sorted({e.model_version for e in entries if e.model_version})}


def render_html(entries: list[ReportEntry], *, source: str, labels: tuple[str, str]) -> str:
    """The page; `labels` is the model's (negative, positive) pair."""
    negative_label, positive_label = labels
    counts = summarise(entries, positive_label)
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = "\n".join(_row(position, entry, positive_label) for position, entry in enumerate(entries))
    left, top, right, bottom = (round(edge * 100) for edge in cam.CHEST_BOX)
    summary_items = [("images", counts["images"]), ("scored", counts["scored"]),
                     ("positives", counts["positives"]), (negative_label.lower(), counts["negatives"]),
                     *((name, counts[name]) for name in SUBTYPES_SHOWN if any(_subtype(e) for e in entries)),
                     ("failures", counts["failures"]), ("warned", counts["warned"]),
                     ("heat outside chest", counts["flagged"])]
    summary = "".join(f'<div class="count" data-count="{html.escape(name)}"><b>{value}</b>{html.escape(name)}</div>'
                      for name, value in summary_items)
    versions = ", ".join(counts["model_versions"]) or "unknown"
    return PAGE.format(
        title=html.escape(f"pneumoscan report: {source}"), source=html.escape(source), generated=generated,
        summary=summary, versions=html.escape(versions), rows=rows, total=len(entries),
        probability_heading=html.escape(f"P({positive_label.lower()})"),
        flag_share=round(cam.OUTSIDE_CHEST_FLAG * 100), chest=f"{left}-{right} % across, {top}-{bottom} % down",
        counts_json=html.escape(json.dumps(counts)))


def _subtype(entry: ReportEntry) -> str | None:
    return subtype_shown({results.SUBTYPE: entry.subtype, results.SUBTYPE_PROBABILITY: entry.subtype_probability})


def _subtype_line(entry: ReportEntry) -> str:
    """Under a positive's label: its subtype and P(viral | pneumonia); the heat stays the label's."""
    shown = _subtype(entry)
    if shown is None:
        return ""
    return (f'<div class="subtype{" uncertain" if shown == UNCERTAIN else ""}" title="P(viral | pneumonia); '
            f'the heat map is the detection\'s, not the subtype\'s">{html.escape(shown)} '
            f'(P<sub>viral</sub> {entry.subtype_probability:.2f})</div>')


def _row(position: int, entry: ReportEntry, positive_label: str) -> str:
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
        f'data-label="{html.escape(entry.label or "")}" data-positive="{int(entry.label == positive_label)}" '
        f'data-flagged="{int(entry.flagged)}" data-warned="{int(bool(entry.warnings))}" '
        f'data-subtype="{html.escape(_subtype(entry) or "")}">'
        f"<td>{_image(entry.thumbnail, 'thumbnail', entry.image)}</td>"
        f"<td>{_image(entry.overlay, 'overlay', entry.image)}</td>"
        f'<td class="name">{html.escape(entry.image)}{detail}</td>'
        f'<td class="status {html.escape(entry.status.lower())}">{html.escape(entry.status)}</td>'
        f'<td class="label{" positive" if entry.label == positive_label else ""}">{html.escape(entry.label or "-")}'
        f"{_subtype_line(entry)}</td>"
        f'<td class="probability">{"-" if entry.probability is None else f"{entry.probability:.3f}"}'
        f"{_warnings(entry.warnings)}</td>"
        f"<td>{flag}</td></tr>")


def _warnings(codes: tuple[str, ...]) -> str:
    return "".join(f'<span class="warning" title="{html.escape(WARNING_MEANINGS.get(code, code))}">'
                   f"{html.escape(code)}</span>" for code in codes)




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
.positive {{ color: #b35900; font-weight: bold; }}
.muted, .none {{ color: #777; font-size: .9em; }}
.probability {{ font-variant-numeric: tabular-nums; font-size: 1.2em; }}
.subtype {{ font-weight: normal; color: #444; }}
.subtype.uncertain {{ color: #7c2d12; }}
.flag {{ white-space: nowrap; background: #fde68a; border: 1px solid #b45309; border-radius: 4px; padding: .1em .4em; }}
.warning {{ display: block; width: max-content; margin-top: .3em; font-size: .7em; white-space: nowrap; color: #7c2d12;
  background: #ffedd5; border: 1px solid #c2410c; border-radius: 4px; padding: .1em .4em; }}
</style></head>
<body>
<header>
<h1>pneumoscan report</h1>
<p>Source: {source} &middot; generated {generated} &middot; model version: <span id="model-version">{versions}</span></p>
<div class="counts" id="summary" data-counts="{counts_json}">{summary}</div>
<p class="muted">Heat is the class activation map of the label given. Flagged: more than {flag_share} % of the
heat lies outside the chest box ({chest} of the image), where burned-in markers and borders sit.
Warned: the image is still scored, but a warning under its score (hover for what it means) says the
score may not apply, e.g. <code>out_of_distribution</code> for an image unlike the paediatric chest
X-rays the model was trained on. A positive's subtype (bacterial or viral) is read from the same
features; near its threshold it is <code>uncertain</code> (warning <code>subtype_uncertain</code>). The heat
map shows the evidence for the label, not for the subtype. Not a medical device: a research aid.</p>
</header>
<div class="controls">
<span>Sort:</span>
<button type="button" data-sort="desc" aria-pressed="false">probability &darr;</button>
<button type="button" data-sort="asc" aria-pressed="false">probability &uarr;</button>
<button type="button" data-sort="input" aria-pressed="true">input order</button>
<span>Show:</span>
<button type="button" data-filter="all" aria-pressed="true">all</button>
<button type="button" data-filter="positives" aria-pressed="false">positives</button>
<button type="button" data-filter="bacterial" aria-pressed="false">bacterial</button>
<button type="button" data-filter="viral" aria-pressed="false">viral</button>
<button type="button" data-filter="failures" aria-pressed="false">failures</button>
<button type="button" data-filter="warned" aria-pressed="false">warned</button>
<button type="button" data-filter="flagged" aria-pressed="false">heat outside chest</button>
<span id="shown">{total} of {total} shown</span>
</div>
<table id="results">
<thead><tr><th>image</th><th>heat map</th><th>object</th><th>status</th><th>label</th><th>{probability_heading}</th><th></th></tr></thead>
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
    positives: (row) => row.dataset.positive === "1",
    bacterial: (row) => row.dataset.subtype === "bacterial",
    viral: (row) => row.dataset.subtype === "viral",
    failures: (row) => row.dataset.status === "FAILED",
    warned: (row) => row.dataset.warned === "1",
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
        metadata = ModelMetadata.read(model_dir or default_model_dir())
        if batch:
            target = resolve_target(stack, endpoint_url, region, bucket, table)
            entries = entries_from_stack(target, batch, metadata.positive_label)
            source = f"batch {batch} ({target.source})"
        else:
            files = [found.path for found in collect_files(paths)]
            if not files:
                raise typer.BadParameter("no JPEG, PNG or DICOM files under the given paths")
            entries = list(entries_from_files(files, Scorer.load(model_dir)))
            source = ", ".join(str(p) for p in paths)
    except (TargetError, ModelLoadError, ValueError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    output.write_text(render_html(entries, source=source, labels=metadata.labels), encoding="utf-8")
    counts = summarise(entries, metadata.positive_label)
    console.print(f"wrote {output}: {counts['images']} images, {counts['positives']} positives, "
                  f"{counts['failures']} failures, {counts['warned']} warned, "
                  f"{counts['flagged']} with heat outside the chest")
