"""`pneumoscan batch-ops create|status`: rescore an archive with an S3 Batch Operations job.

For archives too large to list from one machine, S3 does the iterating: the job reads a
manifest (an S3 Inventory report, or a CSV of keys this command uploads), invokes the
stack's `BatchEnqueueFunction` once per object, and writes a completion report. The
function only enqueues the object's S3 notification, so scoring goes through the same
queue as uploads: the scorer's concurrency cap, batching, dead-letter queue and
duplicate detection all still hold, and a job of millions cannot outrun them. (Invoking
the scorer directly would bypass all of that; copying every object onto itself to fire
its notification would rewrite the archive.)
"""

from __future__ import annotations

import csv
import io
import json
import sys
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote_plus

import typer
from rich.console import Console

from pneumoscan.settings import RESULTS_PREFIX

from .aws import (
    BucketOption, CommandError, EndpointOption, RegionOption, StackOption, TableOption, Target, resolve_target,
)

app = typer.Typer(help="Rescore an archive with an S3 Batch Operations job.", no_args_is_help=True)
console = Console(stderr=True, soft_wrap=True)  # paths and ids stay whole, on one line

JOBS_PREFIX = f"{RESULTS_PREFIX}batch-operations/"
CSV_MANIFEST = "S3BatchOperations_CSV_20180820"
INVENTORY_MANIFEST = "S3InventoryReport_CSV_20161130"
# Batch Operations invokes the function once per key and sends it keys URL-encoded (schema 1.0).
INVOCATION_SCHEMA = "1.0"


def manifest_rows(lines: Iterable[str], bucket: str, prefix: str) -> Iterator[tuple[str, str]]:
    """(bucket, key) of each line of a key list (`key` or `bucket,key` per line; a header
    `key` or `bucket,key` is skipped) that is an object of `bucket` under `prefix`: the
    stack scores nothing else."""
    for row in csv.reader(lines):
        if not row or row in (["key"], ["bucket", "key"]):
            continue
        row_bucket, key = (bucket, row[0]) if len(row) == 1 else (row[0], row[1])
        if row_bucket == bucket and key.startswith(prefix) and not key.endswith("/"):
            yield row_bucket, key


def write_manifest(rows: Iterable[tuple[str, str]], out: io.TextIOBase) -> int:
    """A Batch Operations CSV manifest: bucket,key per line, keys URL-encoded as the format asks."""
    count = 0
    for bucket, key in rows:
        out.write(f"{bucket},{quote_plus(key, safe='/')}\n")
        count += 1
    return count


def account_of(arn: str) -> str:
    parts = arn.split(":")
    if len(parts) < 6 or not parts[4].isdigit():
        raise CommandError(f"{arn!r} is not an ARN with an account id")
    return parts[4]


def parse_s3_url(url: str) -> tuple[str, str]:
    if not url.startswith("s3://") or "/" not in url[5:]:
        raise typer.BadParameter(f"{url!r} is not s3://BUCKET/KEY")
    bucket, key = url[5:].split("/", 1)
    return bucket, key


def job_request(*, function_arn: str, role_arn: str, bucket: str, manifest_arn: str, manifest_etag: str,
                manifest_format: str, token: str, description: str, priority: int,
                confirmation_required: bool) -> dict[str, Any]:
    """The s3control CreateJob request: LambdaInvoke per object, a report of every task."""
    spec: dict[str, Any] = {"Format": manifest_format}
    if manifest_format == CSV_MANIFEST:
        spec["Fields"] = ["Bucket", "Key"]
    return {
        "AccountId": account_of(role_arn), "ConfirmationRequired": confirmation_required,
        "Operation": {"LambdaInvoke": {"FunctionArn": function_arn, "InvocationSchemaVersion": INVOCATION_SCHEMA}},
        "Report": {"Bucket": f"arn:aws:s3:::{bucket}", "Prefix": f"{JOBS_PREFIX}reports",
                   "Format": "Report_CSV_20180820", "Enabled": True, "ReportScope": "AllTasks"},
        "Manifest": {"Spec": spec, "Location": {"ObjectArn": manifest_arn, "ETag": manifest_etag}},
        "ClientRequestToken": token, "Description": description[:256], "Priority": priority,
        "RoleArn": role_arn,
    }


def _stack_names(target: Target, function_arn: str | None, role_arn: str | None) -> tuple[str, str]:
    function_arn = function_arn or target.batch_function_arn
    role_arn = role_arn or target.batch_role_arn
    if not (function_arn and role_arn):
        raise CommandError("the job needs the stack's BatchEnqueueFunctionArn and BatchOperationsRoleArn: "
                           "pass --stack NAME, or --function-arn and --role-arn")
    return function_arn, role_arn


@app.command()
def create(
    keys: Annotated[Path | None, typer.Option(
        "--keys", exists=True, dir_okay=False,
        help="CSV of object keys (`key` or `bucket,key` per line); those of the stack's bucket under "
             "the incoming prefix are uploaded as the job's manifest.")] = None,
    inventory: Annotated[str | None, typer.Option(
        "--inventory", metavar="s3://BUCKET/.../manifest.json",
        help="An S3 Inventory report's manifest.json (CSV format) of the stack's bucket; objects outside "
             "the incoming prefix end as failed tasks in the report, nothing else.")] = None,
    prefix: Annotated[str | None, typer.Option(
        help="With --keys: only keys under this prefix (relative to the incoming prefix).")] = None,
    priority: Annotated[int, typer.Option(help="Job priority (higher runs first).")] = 10,
    hold: Annotated[bool, typer.Option(
        "--hold", help="Create the job awaiting confirmation (console or update-job-status) before it runs.")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the job request; upload and create nothing.")
                       ] = False,
    function_arn: Annotated[str | None, typer.Option(
        "--function-arn", envvar="PNEUMOSCAN_BATCH_FUNCTION_ARN", help="BatchEnqueueFunction (default: stack output).")
    ] = None,
    role_arn: Annotated[str | None, typer.Option(
        "--role-arn", envvar="PNEUMOSCAN_BATCH_ROLE_ARN", help="BatchOperationsRole (default: stack output).")
    ] = None,
    stack: StackOption = None, endpoint_url: EndpointOption = None, region: RegionOption = None,
    bucket: BucketOption = None, table: TableOption = None,
) -> None:
    """Create an S3 Batch Operations job that enqueues every listed object for scoring."""
    if (keys is None) == (inventory is None):
        raise typer.BadParameter("pass one manifest: --keys FILE or --inventory s3://.../manifest.json")
    target = resolve_target(stack, endpoint_url, region, bucket, table)
    function_arn, role_arn = _stack_names(target, function_arn, role_arn)
    token = uuid.uuid4().hex
    s3 = target.client("s3")

    if keys is not None:
        key_prefix = target.incoming_prefix + (prefix or "").lstrip("/")
        manifest_key = f"{JOBS_PREFIX}manifests/{token}.csv"
        body = io.StringIO()  # a manifest line is ~100 bytes: 10 million keys is ~1 GB, use --inventory beyond that
        with keys.open(newline="", encoding="utf-8") as lines:
            count = write_manifest(manifest_rows(lines, target.bucket, key_prefix), body)
        if not count:
            raise CommandError(f"{keys} lists no object under {key_prefix}")
        manifest_arn, manifest_format = f"arn:aws:s3:::{target.bucket}/{manifest_key}", CSV_MANIFEST
        etag = "<ETag of the uploaded manifest>"
        if not dry_run:
            etag = s3.put_object(Bucket=target.bucket, Key=manifest_key, Body=body.getvalue().encode(),
                                 ContentType="text/csv")["ETag"].strip('"')
        description = f"pneumoscan: score {count} object(s) listed in {keys.name}"
    else:
        manifest_bucket, manifest_key = parse_s3_url(inventory)
        manifest_arn, manifest_format = f"arn:aws:s3:::{manifest_bucket}/{manifest_key}", INVENTORY_MANIFEST
        etag = s3.head_object(Bucket=manifest_bucket, Key=manifest_key)["ETag"].strip('"')
        count = None
        description = f"pneumoscan: score the objects of inventory {manifest_key}"

    request = job_request(function_arn=function_arn, role_arn=role_arn, bucket=target.bucket,
                          manifest_arn=manifest_arn, manifest_etag=etag, manifest_format=manifest_format,
                          token=token, description=description, priority=priority, confirmation_required=hold)
    if dry_run:
        json.dump({"CreateJob": request, "objects_in_manifest": count}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        console.print("dry run: no manifest uploaded, no job created")
        return
    job_id = target.client("s3control").create_job(**request)["JobId"]
    console.print(f"created job {job_id} ({count if count is not None else 'inventory'} object(s)); "
                  f"report under s3://{target.bucket}/{JOBS_PREFIX}reports/; "
                  f"follow it with `pneumoscan batch-ops status {job_id}`")
    print(job_id)


@app.command()
def status(
    job_id: Annotated[str, typer.Argument(help="The job id `create` printed.")],
    role_arn: Annotated[str | None, typer.Option(
        "--role-arn", envvar="PNEUMOSCAN_BATCH_ROLE_ARN", help="BatchOperationsRole (for the account id).")] = None,
    stack: StackOption = None, endpoint_url: EndpointOption = None, region: RegionOption = None,
    bucket: BucketOption = None, table: TableOption = None,
) -> None:
    """A job's state, task counts and where its completion report is."""
    target = resolve_target(stack, endpoint_url, region, bucket, table)
    role_arn = role_arn or target.batch_role_arn
    if not role_arn:
        raise CommandError("pass --stack NAME or --role-arn")
    job = target.client("s3control").describe_job(AccountId=account_of(role_arn), JobId=job_id)["Job"]
    progress = job.get("ProgressSummary", {})
    console.print(f"job {job_id}: {job['Status']}; tasks {progress.get('TotalNumberOfTasks', '?')}, "
                  f"succeeded {progress.get('NumberOfTasksSucceeded', 0)}, "
                  f"failed {progress.get('NumberOfTasksFailed', 0)}")
    for failure in job.get("FailureReasons", []):
        console.print(f"[red]{failure.get('FailureCode')}: {failure.get('FailureReason')}[/red]")
    report = job.get("Report", {})
    if report.get("Enabled"):
        console.print(f"completion report: s3://{report['Bucket'].split(':::')[-1]}/{report.get('Prefix', '')}"
                      f"/job-{job_id}/")
