"""`pneumoscan results --changes`: what a rescore by another model changed.

A rescore by a different model keeps the superseded score under the item's `previous`
(pneumoscan.results), so the change between model versions is read from the items
themselves: no second table, no history scan.
"""

from __future__ import annotations

import csv
import json
import sys
from collections import Counter
from typing import Any

from rich.console import Console
from rich.table import Table

from pneumoscan.results import KEY

# One row per rescored item: before -> after.
COLUMNS = ("object_key", "previous_model_version", "previous_label", "previous_probability",
           "model_version", "label", "probability", "label_changed")


def _outcome(score: dict[str, Any]) -> str:
    """The label of a scored result, `FAILED` (with its reason) for a failure."""
    if score.get("status") == "FAILED":
        return f"FAILED ({score.get('reason', '?')})" if score.get("reason") else "FAILED"
    return str(score.get("label") or "")


def label_changes(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Items rescored by another model, with the previous and the current outcome."""
    rows = []
    for item in items:
        previous = item.get("previous")
        if not isinstance(previous, dict):
            continue
        before, after = _outcome(previous), _outcome(item)
        rows.append({"object_key": item[KEY],
                     "previous_model_version": previous.get("model_version"), "previous_label": before,
                     "previous_probability": previous.get("probability"),
                     "model_version": item.get("model_version"), "label": after,
                     "probability": item.get("probability"), "label_changed": before != after})
    return rows


def changes_summary(rows: list[dict[str, Any]]) -> str:
    moves = Counter(f"{row['previous_label']} -> {row['label']}" for row in rows if row["label_changed"])
    changed = sum(moves.values())
    detail = f": {', '.join(f'{count} {move}' for move, count in sorted(moves.items()))}" if moves else ""
    return f"{len(rows)} rescored by another model, {changed} changed label{detail}"


def _number(value: Any) -> str:
    return "" if value is None else f"{value:.3f}"


def print_changes(rows: list[dict[str, Any]], output: str, *, key_prefix: str = "") -> None:
    if output == "json":
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    if output == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return
    table = Table(title="label changes between model versions")
    for column in ("image" if key_prefix else "object key", "previous model", "previous", "P",
                   "model", "now", "P "):
        table.add_column(column, overflow="fold", justify="right" if column.startswith("P") else "left")
    for row in rows:
        style = "bold yellow" if row["label_changed"] else ""
        table.add_row(row["object_key"].removeprefix(key_prefix), str(row["previous_model_version"] or ""),
                      row["previous_label"], _number(row["previous_probability"]), str(row["model_version"] or ""),
                      f"[{style}]{row['label']}[/{style}]" if style else row["label"], _number(row["probability"]))
    Console().print(table)
