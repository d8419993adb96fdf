"""The scorer package's layers (infra/check_layers.py, run by `make lint`): the package keeps
them, and the check finds each way of breaking them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "infra"))
import check_layers  # noqa: E402 - a script beside the packages, imported by path


def test_the_scorer_package_keeps_its_layers():
    modules = {path.stem for path in check_layers.PACKAGE_DIR.glob("*.py")} - {"__init__"}
    assert {"formats", "images", "dicom", "model", "scoring", "results"} <= modules
    assert check_layers.violations(check_layers.PACKAGE_DIR) == []


def _package(tmp_path: Path, **sources: str) -> Path:
    package = tmp_path / "pneumoscan"
    package.mkdir()
    for module in ("formats", "images", "dicom", "model", "cam", "ood", "scoring", "results"):
        (package / f"{module}.py").write_text(sources.get(module, '"""Imports nothing."""\n'))
    return package


@pytest.mark.parametrize("module, source, why", [
    ("images", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .dicom import DicomFacts\n",
     "images.py:3: imports dicom (a higher layer)"),
    ("dicom", "from pneumoscan import images, results\n", "dicom.py:1: imports results (a higher layer)"),
    ("scoring", "def draw():\n    import pneumoscan.results\n", "scoring.py:2: imports results (a higher layer)"),
    ("cam", "from . import ood\n", "cam.py:1: imports ood (the same layer"),
    ("results", "from pneumoscan_cli import aws\n", "results.py:1: imports pneumoscan_cli (above the package)"),
    ("model", "from .nowhere import thing\n", "model.py:1: imports nowhere (in no layer)"),
])
def test_an_import_against_the_layers_is_found_wherever_it_is(tmp_path, module, source, why):
    package = _package(tmp_path, **{module: source})
    problems = check_layers.violations(package)
    assert len(problems) == 1 and problems[0].startswith(why)
    result = subprocess.run([sys.executable, str(ROOT / "infra" / "check_layers.py"), str(package)],
                            capture_output=True, text=True)
    assert result.returncode == 1 and why in result.stderr


def test_downward_imports_and_a_module_in_no_layer(tmp_path):
    package = _package(tmp_path, scoring="from . import cam, formats\nfrom .images import decode\n",
                       results="from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .scoring import X\n")
    assert check_layers.violations(package) == []
    (package / "newcomer.py").write_text("")
    assert check_layers.violations(package) == ["newcomer.py: is in no layer (add it to LAYERS in check_layers.py)"]


def test_the_lung_segmenter_may_not_import_dicom(tmp_path):
    package = _package(tmp_path)
    (package / "lungs.py").write_text("from . import formats, images\n")
    assert check_layers.violations(package) == []
    (package / "lungs.py").write_text("from . import dicom\n")
    assert check_layers.violations(package) == ["lungs.py:1: imports dicom (lower, but kept out of lungs)"]
