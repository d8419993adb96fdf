"""The Makefile: `make help` lists every target, and `make test` lints first."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][a-z0-9]*):", text, re.MULTILINE))


def test_help_lists_every_target():
    shown = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    listed = set(re.findall(r"^make (\S+)", shown, re.MULTILINE))
    assert {"test", "unit", "lint", "help", "demo"} <= targets()
    assert listed == targets()


def test_make_test_runs_lint_before_the_tests():
    recipe = re.search(r"^test:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.MULTILINE).group(1)
    assert recipe.index("lint") < recipe.index("pytest")
