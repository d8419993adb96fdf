"""Fail when a module of the scorer package imports one above it.

    python infra/check_layers.py [PACKAGE_DIR]    (default: functions/scorer/pneumoscan)

The package is layered, lowest first; a module may import any module of a lower layer and none
of its own layer or a higher one. Every import counts: at module level, inside a function (the
lazy ones that keep the cold start short) and under TYPE_CHECKING, because an import for types
ties the modules together as much as any other. The handler (app.py), the CLI, training and
the benchmarks sit above the whole package; the package never imports them.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "pneumoscan"
PACKAGE_DIR = ROOT / "functions" / "scorer" / PACKAGE

LAYERS: tuple[tuple[str, ...], ...] = (
    # Leaves, each on its own: how a file's format is recognised (and the plain facts a DICOM
    # header gives), the deployment's configuration, S3 notifications, DynamoDB's typed values,
    # the LiteRT interpreter.
    ("formats", "settings", "events", "attribute_values", "litert"),
    ("images",),          # JPEG/PNG decoding and the model input
    ("dicom",),           # DICOM decoding, the header checks
    ("lungs",),           # the lung-field segmenter, run by the model before the classifier
    ("model",),           # model.json and the classifier
    # The heat map's maths; the out-of-distribution and blank-image checks; the population check.
    ("cam", "ood", "population"),
    ("overlay",),         # the heat map drawn over the X-ray (pixels in, PNG out)
    ("scoring",),         # bytes in, score out: the one scoring path
    ("results",),         # the table: keys, attribute names, the item writer and its reads
    ("telemetry", "sr"),  # metrics and stats counters; the DICOM Structured Report
)
# Lower modules a module still may not import.
MAY_NOT_IMPORT = {"lungs": frozenset({"dicom"})}
# What sits above the package: the handlers beside it and the other top-level packages.
ABOVE_PACKAGE = frozenset({"app", "batch_enqueue", "pneumoscan_cli", "pneumoscan_eval", "pneumoscan_gateway", "training",
                           "benchmarks"})

RANK = {module: rank for rank, layer in enumerate(LAYERS) for module in layer}


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, name) of every package module and every module above the package that `tree` imports."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top, _, rest = alias.name.partition(".")
                if top == PACKAGE and rest:
                    found.append((node.lineno, rest.split(".")[0]))
                elif top in ABOVE_PACKAGE:
                    found.append((node.lineno, top))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level == 1 or (node.level == 0 and base.split(".")[0] == PACKAGE):
                inner = base if node.level == 1 else base.partition(".")[2]
                if inner:
                    found.append((node.lineno, inner.split(".")[0]))
                else:  # from . import a, b  /  from pneumoscan import a, b
                    found.extend((node.lineno, alias.name) for alias in node.names)
            elif node.level == 0 and base.split(".")[0] in ABOVE_PACKAGE:
                found.append((node.lineno, base.split(".")[0]))
    return found


def violations(package_dir: Path) -> list[str]:
    """`module.py:line: imports X (why)` for each import that breaks the layers."""
    problems = []
    for path in sorted(package_dir.glob("*.py")):
        module = path.stem
        if module == "__init__":
            continue
        if module not in RANK:
            problems.append(f"{path.name}: is in no layer (add it to LAYERS in {Path(__file__).name})")
            continue
        for line, target in imported_modules(ast.parse(path.read_text(), filename=str(path))):
            where = f"{path.name}:{line}: imports {target}"
            if target in ABOVE_PACKAGE:
                problems.append(f"{where} (above the package)")
            elif target == module:
                continue
            elif target not in RANK:
                problems.append(f"{where} (in no layer)")
            elif RANK[target] > RANK[module]:
                problems.append(f"{where} (a higher layer)")
            elif RANK[target] == RANK[module]:
                problems.append(f"{where} (the same layer: siblings stay independent)")
            elif target in MAY_NOT_IMPORT.get(module, ()):
                problems.append(f"{where} (lower, but kept out of {module})")
    return problems


def main(argv: list[str]) -> int:
    package_dir = Path(argv[0]) if argv else PACKAGE_DIR
    problems = violations(package_dir)
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"layers: {len(list(package_dir.glob('*.py')))} modules of {package_dir.name}, "
          f"{len(problems)} import(s) against the layers")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
