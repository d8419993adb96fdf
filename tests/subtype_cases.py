"""The subtype head in tests: the warning a result must carry for its subtype call, and the
bundled model without its head (for tests about other warnings)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pneumoscan.model import METADATA_FILE, SUBTYPE_UNCERTAIN, default_model_dir


def subtype_warnings(result: Mapping[str, Any]) -> list[str]:
    """[`subtype_uncertain`] for a result with a subtype probability and no subtype, else []; and
    a subtype never comes without its probability."""
    assert result.get("subtype") is None or result.get("subtype_probability") is not None
    uncertain = result.get("subtype_probability") is not None and result.get("subtype") is None
    return [SUBTYPE_UNCERTAIN] if uncertain else []


def model_without_subtype(folder: Path) -> Path:
    """The bundled model in `folder` (its files linked, not copied) with no `subtype` section."""
    source = default_model_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.is_file() and path.name != METADATA_FILE:
            (folder / path.name).symlink_to(path)
    raw = json.loads((source / METADATA_FILE).read_text())
    raw.pop("subtype", None)
    (folder / METADATA_FILE).write_text(json.dumps(raw, indent=2) + "\n")
    return folder
