"""`pneumoscan stats --html FILE`: the same rows as one self-contained page with an SVG chart.

One stacked bar per group (negatives, positives, failures) sized by its image count, and a
line of the positive and warned rates over it: a change of volume, mix or input shows
without reading the numbers. No script, no external file: it opens anywhere, offline.
"""

from __future__ import annotations

from html import escape
from typing import Any

BAR_WIDTH, GAP, HEIGHT, MARGIN = 28, 10, 220, 40
COLOURS = {"negative": "#9db4c0", "positive": "#e07a5f", "failed": "#3d405b", "positive rate": "#c1121f",
           "warned rate": "#f2a541"}


def _bars(rows: list[dict[str, Any]], key: str) -> str:
    widest = max((row["images"] for row in rows), default=0) or 1
    parts = []
    for index, row in enumerate(rows):
        x = MARGIN + index * (BAR_WIDTH + GAP)
        y = MARGIN + HEIGHT
        negatives = row["scored"] - row["positives"]
        for name, count in (("negative", negatives), ("positive", row["positives"]), ("failed", row["failed"])):
            height = HEIGHT * count / widest
            y -= height
            parts.append(f'<rect x="{x}" y="{y:.1f}" width="{BAR_WIDTH}" height="{height:.1f}" '
                         f'fill="{COLOURS[name]}"><title>{escape(str(row[key]))}: {count} {name}</title></rect>')
        parts.append(f'<text x="{x + BAR_WIDTH / 2}" y="{MARGIN + HEIGHT + 14}" font-size="10" '
                     f'text-anchor="end" transform="rotate(-40 {x + BAR_WIDTH / 2} {MARGIN + HEIGHT + 14})">'
                     f'{escape(str(row[key]))}</text>')
    for name in ("positive rate", "warned rate"):
        field = "positive_rate" if name == "positive rate" else "warned_rate"
        points = " ".join(f"{MARGIN + i * (BAR_WIDTH + GAP) + BAR_WIDTH / 2},{MARGIN + HEIGHT * (1 - row[field]):.1f}"
                          for i, row in enumerate(rows) if row[field] is not None)
        if points:
            parts.append(f'<polyline points="{points}" fill="none" stroke="{COLOURS[name]}" stroke-width="2">'
                         f'<title>{name} (0-100 % on the same height)</title></polyline>')
    width = MARGIN * 2 + len(rows) * (BAR_WIDTH + GAP)
    legend = " ".join(f'<span style="color:{colour}">&#9632; {name}</span>' for name, colour in COLOURS.items())
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{HEIGHT + MARGIN * 3}" '
            f'role="img" aria-label="images per {escape(key)}">{"".join(parts)}</svg><p>{legend}</p>')


def _percent(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


def stats_page(rows: list[dict[str, Any]], key: str, title: str) -> str:
    subtypes = "/".join(rows[0]["subtype_shares"]) if rows else ""
    header = (f"<tr><th>{escape(key)}</th><th>images</th><th>positive</th><th>of them {escape(subtypes)}</th>"
              "<th>failed</th><th>warned</th>"
              "<th>mean P</th><th>handler ms p50/p95/p99</th><th>upload&rarr;result s p50/p95/p99</th></tr>")
    body = "".join(
        f"<tr><td>{escape(str(row[key]))}</td><td>{row['images']}</td>"
        f"<td>{row['positives']} ({_percent(row['positive_rate'])})</td>"
        f"<td>{'/'.join(_percent(share) or '-' for share in row['subtype_shares'].values()) if row['positives'] else ''}</td>"
        f"<td>{row['failed']} ({_percent(row['failure_rate'])})</td>"
        f"<td>{row['warned']} ({_percent(row['warned_rate'])})</td>"
        f"<td>{'' if row['mean_probability'] is None else format(row['mean_probability'], '.3f')}</td>"
        f"<td>{escape('/'.join(str(row[f'handler_ms_p{p}'] or '') for p in (50, 95, 99)))}</td>"
        f"<td>{escape('/'.join(str(row[f'end_to_end_s_p{p}'] or '') for p in (50, 95, 99)))}</td></tr>"
        for row in rows)
    return ("<!doctype html><html><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>body{{font-family:sans-serif;margin:2em}}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
            "td:first-child,th:first-child{text-align:left}</style></head><body>"
            f"<h1>{escape(title)}</h1>{_bars(rows, key)}<table>{header}{body}</table>"
            "<p>Latency percentiles are the upper bounds of their histogram buckets.</p></body></html>")
