"""Fixtures shared by the unit and integration tests.

The X-rays are never copied into the repository: they are read from the shared data
folder, `$PNEUMOSCAN_DATA` or else `shared/data` beside the repository
(`pneumoscan_eval.datasets.default_data_dir`). Tests that need it skip without it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from moto import mock_aws

from pneumoscan_cli import aws
from pneumoscan_cli.template import read_settings
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


@pytest.fixture
def cli_target(tmp_path, monkeypatch) -> Iterator[aws.Target]:
    """What the CLI's commands resolve to, on moto: the template's bucket and table.
    A Scan of the table fails the test: the CLI reads by key and index only."""
    settings = read_settings()
    monkeypatch.setenv(aws.STATE_DIR_ENV, str(tmp_path))
    for name in ("AWS_ENDPOINT_URL", "PNEUMOSCAN_STACK", "PNEUMOSCAN_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    with mock_aws():
        target = aws.Target(bucket=settings.bucket, table=settings.table, region=settings.region, source="local")
        target.client("dynamodb").create_table(**settings.table_definition)
        target.client("s3").create_bucket(Bucket=settings.bucket)
        aws.write_state(target)

        def no_scan(**_):
            raise AssertionError("the CLI must never Scan the table")
        target.client("dynamodb").meta.events.register("before-call.dynamodb.Scan", no_scan)
        # The CLI builds its own Target from the state file: give it this one's guarded client.
        monkeypatch.setattr(aws, "local_target", lambda: target)
        yield target
