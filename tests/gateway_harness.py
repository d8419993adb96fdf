"""`pneumoscan gateway` as its own process for the tests, and the DICOM tools that talk to it.

The gateway listens on 127.0.0.1 on a port it picks itself (`--port 0`) and says which in its
status file; a PACS (storescp, Orthanc) is given free ports and waited for until it listens;
every wait here is bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from pneumoscan_gateway.counters import STATUS_FILE

GATEWAY_STARTUP_S = 60
GATEWAY_STOP_S = 30
TOOL_TIMEOUT_S = 60
TOOL_STARTUP_S = 60


def require_tool(name: str, package: str) -> str:
    """The tool's path; skips, naming the package and how it is installed, when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package {package}; `make {package}` installs it, "
                    "as `make test` does)")
    return path


@dataclass
class Gateway:
    process: subprocess.Popen
    spool: Path
    log_path: Path
    port: int
    ae_title: str

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def status(self) -> dict:
        run = subprocess.run([sys.executable, "-m", "pneumoscan_cli.main", "gateway", "status", "--spool",
                              str(self.spool), "--format", "json"], capture_output=True, text=True,
                             timeout=TOOL_TIMEOUT_S)
        assert run.returncode == 0, run.stderr
        return json.loads(run.stdout)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=GATEWAY_STOP_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


def start_gateway(spool: Path, *arguments: str, ae_title: str = "PNEUMOSCAN", env: dict | None = None,
                  log_name: str = "gateway.log") -> Gateway:
    spool.mkdir(parents=True, exist_ok=True)
    status_path = spool / STATUS_FILE
    log_path = spool.parent / log_name
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "pneumoscan_cli.main", "gateway", "--host", "127.0.0.1", "--port", "0",
             "--ae-title", ae_title, "--spool", str(spool), *arguments],
            env=dict(os.environ, **(env or {})), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + GATEWAY_STARTUP_S
    while True:
        status = _read(status_path)
        if status and status.get("pid") == process.pid and status.get("address"):
            return Gateway(process, spool, log_path, int(status["address"].rsplit(":", 1)[1]), ae_title)
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            pytest.fail(f"the gateway did not start:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.1)


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def wait_for(condition, timeout_s: float, what: str, interval_s: float = 0.2, detail=None):
    """Poll `condition` until it returns something truthy; fails after `timeout_s`, with what
    `detail()` returns (a log) if given."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}" + (f":\n{detail()}" if detail else ""))
        time.sleep(interval_s)


def free_ports(count: int = 1) -> list[int]:
    """`count` distinct ports nothing is bound to on 127.0.0.1 now, for a tool that takes its port
    as an argument (storescp, Orthanc) to bind a moment later; `wait_listening` then tells."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:  # all held at once: no port is handed out twice
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def wait_listening(process: subprocess.Popen, port: int, log_path: Path, what: str,
                   timeout_s: float = TOOL_STARTUP_S) -> None:
    """Until `port` on 127.0.0.1 accepts a connection (the tool logs one dropped before any
    association); fails with the tool's log if it exits first (say, it could not bind the port)
    or never listens."""
    def log() -> str:
        return log_path.read_text(errors="replace")

    def listening() -> bool:
        if process.poll() is not None:
            pytest.fail(f"{what} exited with {process.returncode} before listening on 127.0.0.1:{port}:\n{log()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    wait_for(listening, timeout_s, f"{what} to listen on 127.0.0.1:{port}", interval_s=0.1, detail=log)


def drain(sqs, *queue_urls: str) -> None:
    """Empty the queues of what earlier tests left (PurgeQueue allows one call a minute)."""
    for url in queue_urls:
        while messages := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=60,
                                              WaitTimeSeconds=0).get("Messages", []):
            for message in messages:
                sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


def dcmtk(tool: str, *arguments: str, timeout_s: float = TOOL_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run a dcmtk tool; its verbose output is what the tests read the DIMSE statuses from."""
    path = require_tool(tool, "dcmtk")
    return subprocess.run([path, *arguments], capture_output=True, text=True, timeout=timeout_s)


def storescu(gateway: Gateway, *files: Path, calling: str = "MODALITY", extra: tuple[str, ...] = ()
             ) -> subprocess.CompletedProcess:
    return dcmtk("storescu", "-v", "-aet", calling, "-aec", gateway.ae_title, "-to", "60", "-ta", "60", "-td", "60",
                 *extra, "127.0.0.1", str(gateway.port), *map(str, files))
