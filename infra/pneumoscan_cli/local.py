"""`pneumoscan local up|down|status`: the whole stack on this machine.

`local up` is one foreground process: moto in server mode on 127.0.0.1 holding the
bucket, queue, dead-letter queue, notification and table built from template.yaml,
plus worker processes that feed the real handler. It records the endpoint and names
in `.pneumoscan/local.json` for the other commands and removes it on Ctrl-C.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from pneumoscan.model import MODEL_DIR_ENV, default_model_dir

from .aws import LOCAL_CREDENTIALS, CommandError, Target, process_alive, read_state, state_dir, state_path, write_state
from .template import (DEFAULT_TEMPLATE, LAMBDA_DEFAULT_TIMEOUT, StackSettings, TemplateError, create_resources,
                       read_settings)

console = Console(stderr=True)
app = typer.Typer(help="Run the pipeline on this machine (moto server + workers running the real handler).",
                  no_args_is_help=True)

LOCAL_HOST = "127.0.0.1"
WORKER_STOP_GRACE_S = 30
WORKER_CHECK_INTERVAL_S = 1


class LocalStack:
    """moto server + resources from the template + handler workers; a context manager."""

    def __init__(self, settings: StackSettings, *, port: int = 0, workers: int = 1,
                 retry_after_s: int | None = None, model_dir: Path | None = None,
                 worker_log: Path | None = None):
        self.settings = settings
        self.port = port
        limit = settings.event_source.maximum_concurrency
        self.worker_count = min(workers, limit) if limit else workers
        self.retry_after_s = retry_after_s
        self.model_dir = model_dir or default_model_dir()
        self.worker_log = worker_log
        self.workers: list[subprocess.Popen] = []
        self.restarts = 0
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._worker_command: list[str] = []
        self.target: Target | None = None
        self._server: Any = None
        self._log_file: Any = None

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> Target:
        from moto.server import ThreadedMotoServer  # heavy import, only where a server runs

        from .s3_limits import enforce_key_limit

        enforce_key_limit()  # moto stores keys S3 refuses: refuse them here too
        if self.port:
            _check_port_free(LOCAL_HOST, self.port)  # moto's server thread would hang on a busy port
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
        self._server = ThreadedMotoServer(ip_address=LOCAL_HOST, port=self.port, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        settings = self.settings
        self.target = Target(bucket=settings.bucket, table=settings.table, region=settings.region,
                             endpoint_url=f"http://{host}:{port}", incoming_prefix=settings.incoming_prefix,
                             source="local")
        try:
            self._create_resources()
            self.start_workers()
        except BaseException:
            self.stop()
            raise
        return self.target

    def stop(self) -> None:
        self.stop_workers()
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> Target:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    # -- resources -----------------------------------------------------------------------
    def _create_resources(self) -> None:
        target = self.target
        created = create_resources(self.settings, s3=target.client("s3"), sqs=target.client("sqs"),
                                   dynamodb=target.client("dynamodb"))
        target.queue_url, target.dead_letter_queue_url = created.queue_url, created.dead_letter_queue_url
        target.return_queue_url = created.return_queue_url
        target.return_dead_letter_queue_url = created.return_dead_letter_queue_url

    @property
    def queue_arn(self) -> str:
        return self.target.client("sqs").get_queue_attributes(
            QueueUrl=self.target.queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]

    # -- workers -------------------------------------------------------------------------
    def worker_environment(self) -> dict[str, str]:
        """The function's environment from the template, pointed at the local endpoint."""
        environment = dict(os.environ) | self.settings.environment
        environment.update({
            "AWS_ENDPOINT_URL": self.target.endpoint_url,
            "AWS_ACCESS_KEY_ID": LOCAL_CREDENTIALS["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": LOCAL_CREDENTIALS["aws_secret_access_key"],
            "AWS_REGION": self.settings.region,
            "AWS_DEFAULT_REGION": self.settings.region,
            # The template's path is the Lambda's /var/task/model; here it is the repo's model/.
            MODEL_DIR_ENV: str(self.model_dir),
            "POWERTOOLS_TRACE_DISABLED": "true",  # no X-Ray daemon here
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.settings.function_memory_mb),
        })
        environment.pop("AWS_PROFILE", None)
        environment.pop("AWS_SESSION_TOKEN", None)
        return environment

    def start_workers(self) -> None:
        if self.worker_log is not None:
            self.worker_log.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self.worker_log, "ab")  # noqa: SIM115 - closed in stop()
        self._worker_command = self._command()
        self.workers = [self._spawn(index) for index in range(self.worker_count)]
        self._stopping.clear()
        self._supervisor = threading.Thread(target=self._supervise, name="worker-supervisor", daemon=True)
        self._supervisor.start()

    def _command(self) -> list[str]:
        settings, event_source = self.settings, self.settings.event_source
        command = [sys.executable, "-m", "pneumoscan_cli.worker",
                   "--queue-url", self.target.queue_url, "--queue-arn", self.queue_arn,
                   "--region", settings.region, "--batch-size", str(event_source.batch_size),
                   "--batching-window", str(event_source.batching_window_s),
                   "--memory-mb", str(settings.function_memory_mb),
                   "--timeout", str(settings.function_timeout_s or LAMBDA_DEFAULT_TIMEOUT)]
        if not event_source.report_batch_item_failures:
            command.append("--no-batch-item-failures")
        if self.retry_after_s is not None:
            command += ["--retry-after", str(self.retry_after_s)]
        return command

    def _spawn(self, index: int) -> subprocess.Popen:
        # The handler's JSON logs and EMF metrics (stdout) go to the log file; the
        # worker's one line per batch (stderr) stays on the console.
        return subprocess.Popen(
            [*self._worker_command, "--name", f"worker-{index + 1}"], env=self.worker_environment(),
            stdin=subprocess.DEVNULL, stdout=self._log_file or subprocess.DEVNULL, start_new_session=True)

    def _supervise(self) -> None:
        """A worker that dies is replaced, as Lambda starts a new execution environment; the
        messages it held come back after their visibility timeout."""
        while not self._stopping.wait(WORKER_CHECK_INTERVAL_S):
            for index, worker in enumerate(self.workers):
                if worker.poll() is not None and not self._stopping.is_set():
                    console.print(f"[yellow]worker-{index + 1} exited with {worker.returncode}; starting a new one"
                                  f"{f' (see {self.worker_log})' if self.worker_log else ''}[/yellow]")
                    self.workers[index] = self._spawn(index)
                    self.restarts += 1

    def stop_workers(self) -> None:
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join()
            self._supervisor = None
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGINT)  # finish the batch in hand, then exit
        for worker in self.workers:
            try:
                worker.wait(timeout=WORKER_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        self.workers = []


def _check_port_free(host: str, port: int) -> None:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise CommandError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port or 0") from None


# -- commands ------------------------------------------------------------------------------
TemplateOption = Annotated[Path, typer.Option("--template", help="SAM template to read the settings from.")]


@app.command("up")
def up(
    port: Annotated[int, typer.Option(help="Port for the moto server; 0 picks a free one.",
                                      envvar="PNEUMOSCAN_LOCAL_PORT")] = 0,
    workers: Annotated[int, typer.Option(help="Worker processes (capped by the template's MaximumConcurrency).")] = 1,
    retry_after: Annotated[int | None, typer.Option(
        help="Seconds before a failed message is retried; default: the queue's visibility timeout, as on AWS.")] = None,
    template: TemplateOption = DEFAULT_TEMPLATE,
    parameter_overrides: Annotated[list[str] | None, typer.Option(
        "--parameter-overrides", help="Template Parameter as KEY=VALUE (repeatable), as `sam deploy` takes them.")
    ] = None,
    model_dir: Annotated[Path | None, typer.Option(help="Model folder (default: model/ of the repo).")] = None,
) -> None:
    """Start the local stack in the foreground; Ctrl-C stops it cleanly."""
    stack = start_local_stack(template, parse_overrides(parameter_overrides or []), port=port, workers=workers,
                              retry_after_s=retry_after, model_dir=model_dir)
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    try:
        while not stopping.wait(1):
            pass
    finally:
        console.print("stopping the local stack ...")
        stop_local_stack(stack)
        console.print("stopped")


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    overrides = {}
    for pair in pairs:
        name, separator, value = pair.partition("=")
        if not separator or not name:
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE")
        overrides[name] = value
    return overrides


def start_local_stack(template: Path = DEFAULT_TEMPLATE, parameter_overrides: dict[str, str] | None = None,
                      **options: Any) -> LocalStack:
    """Start a stack, write the state file other commands read, and say where it is."""
    existing = running_state()
    if existing:
        raise CommandError(
            f"a local stack is already running (pid {existing['pid']}, {existing['endpoint_url']}); "
            "stop it with `pneumoscan local down`")
    try:
        settings = read_settings(template, parameter_overrides=parameter_overrides)
    except TemplateError as exc:
        raise CommandError(str(exc)) from None
    stack = LocalStack(settings, worker_log=state_dir() / "worker.log", **options)
    target = stack.start()
    write_state(target, pid=os.getpid(), workers=[worker.pid for worker in stack.workers],
                worker_log=str(stack.worker_log), started_at=time.time())
    console.print(f"local stack on [bold]{target.endpoint_url}[/bold]: bucket {target.bucket}, "
                  f"table {target.table}, queue {settings.queue.name} (DLQ {settings.dead_letter_queue.name}, "
                  f"maxReceiveCount {settings.max_receive_count}), {len(stack.workers)} worker(s); "
                  f"handler logs in {stack.worker_log}")
    return stack


def stop_local_stack(stack: LocalStack) -> None:
    stack.stop()
    with suppress(FileNotFoundError):
        state_path().unlink()


def running_state() -> dict[str, Any] | None:
    """The state file's contents if its process is still alive; a stale file is removed."""
    try:
        state = read_state()
    except Exception:  # noqa: BLE001 - no file, or an unreadable one: nothing runs
        return None
    if process_alive(state.get("pid")):
        return state
    with suppress(FileNotFoundError):
        state_path().unlink()
    return None


@app.command("status")
def status() -> None:
    """Say whether a local stack is running, and where."""
    state = running_state()
    if state is None:
        console.print("no local stack is running")
        raise typer.Exit(1)
    typer.echo(json.dumps(state, indent=2))


@app.command("down")
def down(timeout: Annotated[float, typer.Option(help="Seconds to wait for it to stop.")] = 60) -> None:
    """Stop the local stack that `local up` started (as Ctrl-C would)."""
    state = running_state()
    if state is None:
        console.print("no local stack is running")
        return
    os.kill(state["pid"], signal.SIGINT)
    deadline = time.monotonic() + timeout
    while process_alive(state["pid"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    if process_alive(state["pid"]):
        console.print(f"[red]process {state['pid']} is still running after {timeout:.0f}s[/red]")
        raise typer.Exit(1)
    console.print("stopped")
