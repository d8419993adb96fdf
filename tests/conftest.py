"""Fixtures shared by the unit and integration tests.

The X-rays are never copied into the repository: they are read from the shared data
folder, `$PNEUMOSCAN_DATA` or else `shared/data` beside the repository
(`pneumoscan_eval.datasets.default_data_dir`). Tests that need it skip without it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pneumoscan_eval.datasets import FULLRES_SET, TRAINING_SET, default_data_dir

# `handler_stack`: the real handler on moto, with the stack's resources as the template defines them.
pytest_plugins = ("handler_harness",)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared data folder."""
    folder = default_data_dir()
    if not folder.is_dir():
        pytest.skip(f"needs the shared data folder {folder} (or set $PNEUMOSCAN_DATA)")
    return folder


@pytest.fixture(scope="session")
def training_set(data_dir: Path) -> Path:
    """The Kaggle-layout training data: train/val/test of NORMAL and PNEUMONIA."""
    return data_dir / TRAINING_SET


@pytest.fixture(scope="session")
def fullres_dir(data_dir: Path) -> Path:
    """The full-resolution originals, NORMAL and PNEUMONIA."""
    return data_dir / FULLRES_SET
