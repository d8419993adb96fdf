"""Check a built scorer Lambda folder before it ships: `python check_artifact.py [--arch aarch64] DIR`.

Fails (exit 1, one line per problem) unless the unzipped artifact is under the size
budget, every wheel and shared library is built for the python3.13 arm64 runtime,
the model and its metadata match, nothing the runtime provides or never loads is
bundled, and every module the handler imports is either in the folder, in the
standard library or provided by the runtime. Prints a size summary either way.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import re
import sys
from pathlib import Path

ELF_MACHINES = {"aarch64": 183, "x86_64": 62}
RUNTIME_PROVIDED = {"boto3", "botocore", "s3transfer"}
FORBIDDEN_PATHS = ("model/reference",)
# .pyc of the runtime's CPython, hash-based and unchecked (flags 0b01): see the Makefile.
PYC_SUFFIX = ".cpython-313.pyc"
PYC_UNCHECKED_HASH = 0b01
# cp313 wheels, stable-ABI wheels from any CPython 3 up to 3.13, or pure Python.
WHEEL_TAG = r"(cp313-cp313|cp3(\d+)-abi3)-manylinux[\w.]*_{arch}|py\d*-none-any"


def tree_size(root: Path) -> int:
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file() and not path.is_symlink())


def wheel_problems(root: Path, arch: str) -> list[str]:
    runtime_wheel_tag = re.compile(WHEEL_TAG.format(arch=arch))
    problems = []
    for wheel_file in root.glob("*.dist-info/WHEEL"):
        tags = [line.split(":", 1)[1].strip() for line in wheel_file.read_text().splitlines()
                if line.startswith("Tag:")]
        for tag in tags:
            match = runtime_wheel_tag.fullmatch(tag)
            if not match or (match.group(2) and int(match.group(2)) > 13):
                problems.append(f"{wheel_file.parent.name}: wheel tag {tag} is not python3.13 {arch}")
    return problems


def library_problems(root: Path, arch: str) -> list[str]:
    problems = []
    for library in root.rglob("*.so*"):
        if not library.is_file():
            continue
        header = library.read_bytes()[:20]
        if header[:4] != b"\x7fELF":
            continue
        machine = int.from_bytes(header[18:20], "little")
        if machine != ELF_MACHINES[arch]:
            problems.append(f"{library.relative_to(root)}: ELF machine {machine}, not {arch}")
        if ".cpython-" in library.name and ".cpython-313-" not in library.name:
            problems.append(f"{library.relative_to(root)}: extension not built for CPython 3.13")
    return problems


def model_files(metadata: object) -> dict[str, str | None]:
    """Every file model.json names, as {name: sha256 or None}: the network (top-level `file`) and
    each section with its own `file` (`ood`, `lung_field`, ...), wherever it sits in the tree."""
    files: dict[str, str | None] = {}
    if isinstance(metadata, dict):
        if isinstance(metadata.get("file"), str):
            digest = metadata.get("sha256")
            files[metadata["file"]] = digest if isinstance(digest, str) else None
        for value in metadata.values():
            files.update(model_files(value))
    elif isinstance(metadata, list):
        for value in metadata:
            files.update(model_files(value))
    return files


def model_problems(root: Path) -> list[str]:
    metadata_path = root / "model" / "model.json"
    if not metadata_path.is_file():
        return ["model/model.json is missing"]
    metadata = json.loads(metadata_path.read_text())
    if "ood" not in metadata:
        return ["model.json has no 'ood' entry (out-of-distribution statistics)"]
    # The network, the out-of-distribution statistics, the lung segmenter: whatever model.json names.
    expected = model_files(metadata)
    problems = []
    for name, digest in expected.items():
        path = root / "model" / name
        if not path.is_file():
            problems.append(f"model/{name} is missing")
        elif digest is None:
            problems.append(f"model.json names model/{name} without its sha256")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            problems.append(f"model/{name} does not match the sha256 in model.json")
    extra = sorted(p.name for p in (root / "model").iterdir() if p.name not in {"model.json", *expected})
    if extra:
        problems.append(f"model/ holds files the function never reads: {extra}")
    return problems


def bundling_problems(root: Path) -> list[str]:
    problems = [f"{name} is bundled but the runtime provides it" for name in sorted(RUNTIME_PROVIDED)
                if (root / name).exists()]
    for path in root.rglob("*"):
        relative = path.relative_to(root).as_posix()
        if any(part in relative for part in FORBIDDEN_PATHS):
            problems.append(f"{relative} should not be bundled")
    return problems + pyc_problems(root)


def pyc_problems(root: Path) -> list[str]:
    """Every module the handler imports at init is precompiled for the runtime's CPython, in a
    form the read-only /var/task keeps valid; no .pyc of another interpreter is bundled."""
    problems = []
    for pyc in root.rglob("*.pyc"):
        flags = int.from_bytes(pyc.read_bytes()[4:8], "little")
        if not pyc.name.endswith(PYC_SUFFIX) or flags != PYC_UNCHECKED_HASH:
            problems.append(f"{pyc.relative_to(root)}: not an unchecked-hash .pyc for CPython 3.13")
    for source in [root / "app.py", *(root / "pneumoscan").glob("*.py")]:
        if source.is_file() and not (source.parent / "__pycache__" / f"{source.stem}{PYC_SUFFIX}").is_file():
            problems.append(f"{source.relative_to(root)} has no .pyc: every cold start would compile it")
    return problems


def import_problems(root: Path) -> list[str]:
    """Every import of app.py and pneumoscan/ resolves inside the artifact, the stdlib or the runtime."""
    problems = []
    available = {path.stem if path.suffix == ".py" else path.name.split(".")[0] for path in root.iterdir()}
    available |= set(sys.stdlib_module_names) | RUNTIME_PROVIDED
    for source in [root / "app.py", *sorted((root / "pneumoscan").glob("*.py"))]:
        tree = ast.parse(source.read_text(), filename=str(source))
        # `except ImportError:` fallbacks (tflite_runtime for older images) are optional.
        optional = {id(node) for handler in ast.walk(tree) if isinstance(handler, ast.ExceptHandler)
                    and isinstance(handler.type, ast.Name) and handler.type.id == "ImportError"
                    for node in ast.walk(handler)}
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: a sibling module of the package
                    sibling = (node.module or "").split(".")[0]
                    if sibling and not (source.parent / f"{sibling}.py").exists():
                        problems.append(f"{source.relative_to(root)} imports .{sibling}, which is not bundled")
                    continue
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top, _, rest = name.partition(".")
                if top == "pneumoscan" and rest and not (root / "pneumoscan" / f"{rest.split('.')[0]}.py").exists():
                    problems.append(f"{source.relative_to(root)} imports {name}, which is not bundled")
                elif top not in available and top != "__future__":
                    problems.append(f"{source.relative_to(root)} imports {top}, which is not bundled")
    return problems


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(ELF_MACHINES), default="aarch64")
    parser.add_argument("--max-mb", type=float, default=100, help="budget for the unzipped size (10^6 bytes)")
    parser.add_argument("--list-model-files", type=Path, metavar="MODEL_JSON",
                        help="print the files this model.json names, one a line, and exit (the Makefile copies them)")
    parser.add_argument("folder", type=Path, nargs="?")
    args = parser.parse_args(argv)
    if args.list_model_files:
        print("\n".join(model_files(json.loads(args.list_model_files.read_text()))))
        return 0
    if args.folder is None:
        parser.error("the artifact folder is required")
    root = args.folder
    size = tree_size(root)
    problems = [*wheel_problems(root, args.arch), *library_problems(root, args.arch), *model_problems(root),
                *bundling_problems(root), *import_problems(root)]
    if size >= args.max_mb * 1e6:
        problems.append(f"unzipped artifact is {size / 1e6:.1f} MB, the budget is {args.max_mb:.0f} MB")
    largest = sorted(((tree_size(p) if p.is_dir() else p.stat().st_size, p.name) for p in root.iterdir()),
                     reverse=True)[:6]
    print(f"artifact {root}: {size / 1e6:.1f} MB unzipped; largest: "
          + ", ".join(f"{name} {bytes_ / 1e6:.1f}" for bytes_, name in largest))
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
