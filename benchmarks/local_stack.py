"""The local stack (`pneumoscan_cli.local.LocalStack`: moto server + resources from template.yaml)
in a process of its own, so the server never shares the measured core or the GIL.

`python -m benchmarks.local_stack` starts it with no workers, prints one JSON line (endpoint,
names, the handler's environment), then obeys stdin: `workers N` starts N handler workers
and answers `started`, `rss` answers their peak RSS; end of input stops everything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from benchmarks.common import REPO_ROOT, peak_rss_mb, probe_pythonpath

def serve() -> None:
    from pneumoscan_cli.local import LocalStack
    from pneumoscan_cli.template import read_settings

    settings = read_settings()
    stack = LocalStack(settings, workers=0)
    target = stack.start()
    try:
        print(json.dumps({**target.to_state(), "environment": stack.worker_environment(),
                          "batch_size": settings.event_source.batch_size,
                          "memory_mb": settings.function_memory_mb,
                          "queue_arn": stack.queue_arn}), flush=True)
        for line in sys.stdin:
            command, _, argument = line.strip().partition(" ")
            if command == "workers":
                stack.worker_count = int(argument)
                stack.start_workers()
                # Workers may use every core: throughput is a whole-machine figure.
                for worker in stack.workers:
                    os.sched_setaffinity(worker.pid, range(os.cpu_count()))
                print("started", flush=True)
            elif command == "rss":
                print(json.dumps([peak_rss_mb(worker.pid) for worker in stack.workers]), flush=True)
    finally:
        stack.stop()


class StackProcess:
    """Client side: start `serve()` pinned to `cores`, read its description, stop it on exit."""

    def __init__(self, cores: Iterable[int], log: Path):
        cores = set(cores)
        self._log = open(log, "ab")  # noqa: SIM115 - closed in close()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.local_stack"], cwd=REPO_ROOT, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            env={**os.environ, "PYTHONPATH": probe_pythonpath()},
            preexec_fn=lambda: os.sched_setaffinity(0, cores))
        line = self._process.stdout.readline()
        if not line:
            self.close()
            raise RuntimeError(f"the local stack did not start; see {log}")
        self.description = json.loads(line)

    def start_workers(self, count: int) -> None:
        self._process.stdin.write(f"workers {count}\n")
        self._process.stdin.flush()
        if self._process.stdout.readline().strip() != "started":
            raise RuntimeError("the local stack did not start its workers")

    def workers_peak_rss_mb(self) -> list[float]:
        self._process.stdin.write("rss\n")
        self._process.stdin.flush()
        return json.loads(self._process.stdout.readline())

    def client(self, service: str):
        return self._session().client(service, endpoint_url=self.description["endpoint_url"])

    def table(self):
        return self._session().resource("dynamodb", endpoint_url=self.description["endpoint_url"]).Table(
            self.description["table"])

    def _session(self):
        import boto3
        environment = self.description["environment"]
        return boto3.session.Session(aws_access_key_id=environment["AWS_ACCESS_KEY_ID"],
                                     aws_secret_access_key=environment["AWS_SECRET_ACCESS_KEY"],
                                     region_name=self.description["region"])

    def close(self) -> None:
        if self._process.stdin and not self._process.stdin.closed:
            self._process.stdin.close()
        try:
            self._process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._log.close()

    def __enter__(self) -> StackProcess:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


if __name__ == "__main__":
    serve()
