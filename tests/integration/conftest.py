"""The local stack over real HTTP: `pneumoscan local up` as its own process, on a free port."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from image_cases import FULLRES_DIR
from pneumoscan_cli.aws import STATE_DIR_ENV, STATE_FILE, Target

STARTUP_TIMEOUT_S = 60
SHUTDOWN_TIMEOUT_S = 60


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


def real_xrays(per_class: int) -> list[Path]:
    """The first `per_class` full-resolution originals of each class (never copied into the project)."""
    if not FULLRES_DIR.is_dir():
        pytest.fail(f"{FULLRES_DIR} is missing: the integration tests need ../shared/data beside the repo")
    return [path for label in ("NORMAL", "PNEUMONIA")
            for path in sorted((FULLRES_DIR / label).glob("*.jpeg"))[:per_class]]


class RunningStack:
    """A `pneumoscan local up` process and what its state file says."""

    def __init__(self, state_dir: Path, process: subprocess.Popen, log_path: Path):
        self.state_dir = state_dir
        self.process = process
        self.log_path = log_path
        self.state = json.loads((state_dir / STATE_FILE).read_text())
        self.env = {STATE_DIR_ENV: str(state_dir)}

    @property
    def target(self) -> Target:
        fields = {key: self.state[key] for key in Target.__dataclass_fields__ if key in self.state}
        return Target(**fields)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_stack(state_dir: Path, *arguments: str) -> RunningStack:
    log_path = state_dir / "local-up.log"
    environment = dict(os.environ, **{STATE_DIR_ENV: str(state_dir)})
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "pneumoscan_cli.main", "local", "up", *arguments],
            env=environment, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not (state_dir / STATE_FILE).exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"local up did not start:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.2)
    return RunningStack(state_dir, process, log_path)


def stop_stack(stack: RunningStack) -> int:
    """Ctrl-C, as a user would; returns the exit code."""
    stack.process.send_signal(signal.SIGINT)
    try:
        return stack.process.wait(timeout=SHUTDOWN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        stack.process.kill()
        stack.process.wait()
        raise


@contextmanager
def running_stack(state_dir: Path) -> Iterator[RunningStack]:
    """`local up` for the length of the block, stopped unless a test already stopped it."""
    # Failed messages come back after 1 s instead of the queue's visibility timeout (720 s).
    stack = start_stack(state_dir, "--retry-after", "1")
    try:
        yield stack
    finally:
        if stack.process.poll() is None:
            stop_stack(stack)


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("stack")) as stack:
        yield stack


@pytest.fixture(autouse=True)
def no_scan(monkeypatch):
    """Every DynamoDB client the CLI makes in these tests refuses to Scan: reads are Queries."""
    make_client = Target.client

    def guarded(self, service):
        client = make_client(self, service)
        if service == "dynamodb" and not getattr(client, "_scan_guarded", False):
            client.meta.events.register("before-call.dynamodb.Scan", _refuse_scan)
            client._scan_guarded = True
        return client

    monkeypatch.setattr(Target, "client", guarded)


def _refuse_scan(**_):
    raise AssertionError("the CLI must not Scan the results table")
