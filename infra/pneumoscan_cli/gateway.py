"""`pneumoscan gateway`: the DICOM gateway beside the PACS; `pneumoscan gateway status`.

The listener (pneumoscan_gateway) takes C-STORE of chest radiographs from the allowed AE titles
and uploads each instance under the incoming prefix before answering; with `--return-to` it
also sends every structured report the scorer writes back to the PACS. It talks to AWS only
outbound (S3 and SQS over HTTPS); nothing outside the hospital connects to it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import boto3
import typer
from botocore.config import Config
from rich.console import Console
from rich.table import Table

from pneumoscan_gateway import tls
from pneumoscan_gateway.counters import STATUS_FILE, Counters, read_status
from pneumoscan_gateway.returns import DEFAULT_BACKOFF_S, DEFAULT_WAIT_S, Destination, ReturnPath
from pneumoscan_gateway.spool import InvalidName, Spool, check_batch
from pneumoscan_gateway.storage import (DEFAULT_RETRY_INTERVAL_S, DEFAULT_UPLOAD_DEADLINE_S, AllowedPeer, StorageSCP,
                                        Uploader, utc_day)

from .aws import (BucketOption, CommandError, EndpointOption, RegionOption, StackOption, Target, process_alive,
                  resolve_target, state_dir)

console = Console(stderr=True)
app = typer.Typer(help="DICOM gateway: receive radiographs from the PACS (C-STORE), return the structured reports.")

DEFAULT_AE_TITLE = "PNEUMOSCAN"
DEFAULT_PORT = 11112


def default_spool() -> Path:
    return state_dir() / "gateway"


SpoolOption = Annotated[Path | None, typer.Option(
    "--spool", envvar="PNEUMOSCAN_GATEWAY_SPOOL", help="Spool folder (default: .pneumoscan/gateway).")]


def _clients(target: Target, upload_deadline_s: float, wait_s: int) -> dict[str, Any]:
    # Each attempt is short and the attempts fit the upload deadline, which the C-STORE
    # response waits for; the long poll's read timeout outlasts its wait.
    upload = Config(connect_timeout=min(5.0, upload_deadline_s / 4), read_timeout=max(1.0, upload_deadline_s / 2),
                    retries={"mode": "standard", "max_attempts": 3})
    polling = Config(connect_timeout=5, read_timeout=wait_s + 10, retries={"mode": "standard", "max_attempts": 3})
    return {"upload_s3": target.new_client("s3", upload), "s3": target.new_client("s3", polling),
            "sqs": target.new_client("sqs", polling)}


def _target(stack: str | None, endpoint_url: str | None, region: str | None, bucket: str | None,
            return_queue_url: str | None) -> Target:
    """The stack's names from its outputs (`--stack`: needs cloudformation:DescribeStacks), or
    given (`--bucket` and `--return-queue-url`: the gateway policy alone suffices), else the
    local stack's. The gateway reads no table."""
    if stack and endpoint_url:
        raise CommandError("--stack and --endpoint-url are alternatives; pass one")
    if stack or not (bucket or endpoint_url):
        target = resolve_target(stack, None, region, bucket, None)
    elif not bucket:
        raise CommandError("with --endpoint-url, name the bucket (--bucket or PNEUMOSCAN_BUCKET)")
    else:
        target = Target(bucket=bucket, table="", region=region or boto3.session.Session().region_name or "us-east-1",
                        endpoint_url=endpoint_url, source="endpoint" if endpoint_url else "options")
    target.return_queue_url = return_queue_url or target.return_queue_url
    return target


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    gateway_logger = logging.getLogger("pneumoscan_gateway")
    gateway_logger.handlers[:] = [handler]
    gateway_logger.setLevel(level.upper())
    gateway_logger.propagate = False


@app.callback(invoke_without_command=True)
def gateway(
    ctx: typer.Context,
    allow: Annotated[list[str] | None, typer.Option(
        "--allow", help="Calling AE title allowed to send, as AET or AET@host (repeatable; at least one).")] = None,
    ae_title: Annotated[str, typer.Option(help="The gateway's own AE title.")] = DEFAULT_AE_TITLE,
    host: Annotated[str, typer.Option(help="Address to listen on (the hospital-side interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="DICOM port to listen on (0 picks a free one).")] = DEFAULT_PORT,
    batch: Annotated[str | None, typer.Option(help="Batch of the uploads (default: the UTC day, e.g. 2026-12-02).")] = None,
    return_to: Annotated[str | None, typer.Option(
        help="Send each structured report to AET@host:port (the PACS); without it nothing is returned.")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="PEM certificate: DICOM over TLS (with --tls-key).")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key of --tls-cert.")] = None,
    tls_ca: Annotated[Path | None, typer.Option(
        help="PEM CA: calling AEs must present a certificate it signed; the PACS's is checked against it.")] = None,
    upload_deadline: Annotated[float, typer.Option(
        help="Seconds an upload may take before the C-STORE is answered 'out of resources' (keep under the PACS's timeout).")
    ] = DEFAULT_UPLOAD_DEADLINE_S,
    retry_interval: Annotated[float, typer.Option(help="Seconds between uploads of what the spool still holds.")
                              ] = DEFAULT_RETRY_INTERVAL_S,
    return_wait: Annotated[int, typer.Option(help="Seconds of each long poll of the return queue (1-20).",
                                             min=1, max=20)] = DEFAULT_WAIT_S,
    return_backoff: Annotated[float, typer.Option(
        help="Seconds before a failed return is retried; doubles with each try.")] = DEFAULT_BACKOFF_S,
    return_queue_url: Annotated[str | None, typer.Option(
        help="Return queue (default: the stack's ReturnQueueUrl output or the local stack's).")] = None,
    incoming_prefix: Annotated[str | None, typer.Option(
        help="The stack's IncomingPrefix (default: its output with --stack, else incoming/).")] = None,
    spool: SpoolOption = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO or WARNING.")] = "INFO",
    stack: StackOption = None,
    endpoint_url: EndpointOption = None,
    region: RegionOption = None,
    bucket: BucketOption = None,
) -> None:
    """Run the gateway in the foreground until Ctrl-C or SIGTERM (a systemd stop)."""
    if ctx.invoked_subcommand is not None:
        return
    try:
        peers = [AllowedPeer.parse(text) for text in allow or []]
        destination = Destination.parse(return_to) if return_to else None
        if batch is not None:
            check_batch(batch)
    except (ValueError, InvalidName) as exc:
        raise typer.BadParameter(str(exc)) from None
    if not peers:
        raise typer.BadParameter("name at least one calling AE title with --allow AET[@host]")
    if (tls_cert is None) != (tls_key is None):
        raise typer.BadParameter("--tls-cert and --tls-key go together")
    _configure_logging(log_level)
    target = _target(stack, endpoint_url, region, bucket, return_queue_url)
    target.incoming_prefix = incoming_prefix or target.incoming_prefix
    if destination is not None and not target.return_queue_url:
        raise CommandError("--return-to needs the return queue: deploy the current template or pass --return-queue-url")
    clients = _clients(target, upload_deadline, return_wait)
    spool_root = spool or default_spool()
    queue = Spool(spool_root)
    counters = Counters.load(spool_root)
    server_tls = tls.server_context(tls_cert, tls_key, tls_ca) if tls_cert and tls_key else None
    scp = StorageSCP(
        ae_title=ae_title, host=host, port=port, allow=peers, spool=queue,
        uploader=Uploader(clients["upload_s3"], target.bucket, target.incoming_prefix, queue, counters),
        counters=counters, batch=(lambda: batch) if batch else utc_day, upload_deadline_s=upload_deadline,
        retry_interval_s=retry_interval, ssl_context=server_tls)
    returns = None
    if destination is not None:
        client_tls = (tls.client_context(tls_ca, tls_cert, tls_key), destination.host) if server_tls else None
        returns = ReturnPath(sqs=clients["sqs"], s3=clients["s3"], queue_url=target.return_queue_url,
                             bucket=target.bucket, destination=destination, calling_ae_title=ae_title,
                             counters=counters, wait_s=return_wait, backoff_base_s=return_backoff, tls_args=client_tls)
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    try:
        bound_host, bound_port = scp.start()
    except OSError as exc:
        raise CommandError(f"cannot listen on {host}:{port} ({exc.strerror})") from None
    counters.describe(pid=os.getpid(), ae_title=ae_title, address=f"{bound_host}:{bound_port}",
                      bucket=target.bucket, return_to=str(destination) if destination else None)
    if returns is not None:
        returns.start()
    try:
        while not stopping.wait(1):
            pass
    finally:
        console.print("stopping the gateway ...")
        if returns is not None:
            returns.stop()
        scp.stop()
        counters.describe(pid=None)


@app.command("status")
def status(
    spool: SpoolOption = None,
    output: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """Received, uploaded, returned, failed and in-spool counts of the gateway using --spool."""
    spool_root = spool or default_spool()
    saved = read_status(spool_root / STATUS_FILE)
    if saved is None:
        raise CommandError(f"no gateway has run with the spool {spool_root} ({STATUS_FILE} not found)")
    counters = Counters.load(spool_root)
    counts = counters.counts
    running = process_alive(saved.get("pid"))
    report = {"running": running, "address": saved.get("address"), "ae_title": saved.get("ae_title"),
              "return_to": saved.get("return_to"), "received": counts.received, "uploaded": counts.uploaded,
              "returned": counts.returned, "failed": counts.failed, "in_spool": Spool(spool_root).count(),
              "upload_failed": counts.upload_failed, "return_failed": counts.return_failed, "refused": counts.refused}
    if output == "json":
        typer.echo(json.dumps(report, indent=2))
        return
    where = f" on {report['address']} as {report['ae_title']}" if running else ""
    table = Table(title=f"gateway {'running' if running else 'stopped'}{where}")
    table.add_column("instances")
    table.add_column("count", justify="right")
    for name in ("received", "uploaded", "returned", "failed", "in_spool", "upload_failed", "return_failed", "refused"):
        table.add_row(name.replace("_", " "), str(report[name]))
    Console().print(table)
