"""Shrink highdicom's copy of the standard to what the scorer's structured reports use.

`python prune_highdicom.py ARTIFACT_DIR`

highdicom ships the attribute lists of all ~440 DICOM modules as one 22 MB JSON file, read
whole the first time an SR is built. The scorer only builds SR documents that reference
radiographs and secondary captures: it needs the modules of those IODs and of the SR IODs,
plus every Patient and Study module (copied from the evidence). The file is rewritten with
those (about 1.7 MB); lookups for any other IOD would raise KeyError, which the SR writer
reports as an SR failure without touching the score.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

# IOD keys (highdicom's names) the scorer's SRs touch: sources it scores and the SR itself.
KEPT_IODS = re.compile(r"(^|-)(sr|sr-document|x-ray-image|radiography-image|secondary-capture-image)$"
                       r"|^digital-x-ray-image$|^computed-radiography-image$")
KEPT_ENTITIES = ("Patient", "Study")


def prune(artifact: Path) -> tuple[int, int]:
    standard = artifact / "highdicom" / "_standard"
    modules_file = standard / "module_attribute_map.json"
    modules = json.loads(modules_file.read_text())
    iods = json.loads((standard / "iod_module_map.json").read_text())
    kept = set()
    for iod, iod_modules in iods.items():
        for module in iod_modules:
            if KEPT_IODS.search(iod) or module["ie"] in KEPT_ENTITIES:
                kept.add(module["key"])
    before = modules_file.stat().st_size
    modules_file.write_text(json.dumps({key: value for key, value in modules.items() if key in kept},
                                       separators=(",", ":")))
    return before, modules_file.stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    args = parser.parse_args(argv)
    before, after = prune(args.artifact)
    print(f"highdicom module attribute map: {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
