"""AWS on-demand prices used for cost per million images: the one place they are written.

US East (N. Virginia), list prices without free tier, savings plans or volume tiers.
Update PRICES_CHECKED together with any figure below.
"""

from __future__ import annotations

import math
from collections import Counter

PRICES_CHECKED = "2026-11-25"
REGION = "us-east-1"
SOURCES = {
    "lambda": "https://aws.amazon.com/lambda/pricing/",
    "sqs": "https://aws.amazon.com/sqs/pricing/",
    "s3": "https://aws.amazon.com/s3/pricing/",
    "dynamodb": "https://aws.amazon.com/dynamodb/pricing/on-demand/",
    "kms": "https://aws.amazon.com/kms/pricing/",
    "cloudwatch": "https://aws.amazon.com/cloudwatch/pricing/",
    "xray": "https://aws.amazon.com/xray/pricing/",
}

# Lambda, arm64 (Graviton2), first 7.5 billion GB-s a month; billed per 1 ms.
LAMBDA_ARM64_PER_GB_SECOND = 0.0000133334
LAMBDA_PER_REQUEST = 0.20 / 1e6
# Lambda gets one full vCPU at this memory size, proportionally less below it.
LAMBDA_FULL_VCPU_MB = 1769
# SQS standard queue, per request (each 64 KB chunk of payload is one request).
SQS_PER_REQUEST = 0.40 / 1e6
# ReceiveMessage returns and DeleteMessageBatch takes at most 10 messages: Lambda's poller
# gathers a larger batch from several receives and deletes it in several calls.
SQS_MESSAGES_PER_CALL = 10
# S3 Standard requests.
S3_GET_PER_REQUEST = 0.0004 / 1000
S3_PUT_PER_REQUEST = 0.005 / 1000
# S3 bills GET and HEAD at the GET rate; PUT, COPY, POST and LIST at the PUT rate.
S3_GET_TIER = ("GetObject", "HeadObject")
# DynamoDB on-demand (after the November 2024 cut): one WRU writes up to 1 KB, and every
# GSI the item is projected into is written again at its own item size.
DYNAMODB_PER_WRITE_REQUEST_UNIT = 0.625 / 1e6
DYNAMODB_PER_READ_REQUEST_UNIT = 0.125 / 1e6
DYNAMODB_WRITE_UNIT_BYTES = 1024
DYNAMODB_READ_UNIT_BYTES = 4096
# KMS: symmetric key requests (the key's $1 a month is not per image).
KMS_PER_REQUEST = 0.03 / 10_000
# Who asks KMS for a data key or a decrypt, each at most once per reuse period: SQS (the
# S3 sender and the Lambda poller, KmsDataKeyReusePeriodSeconds, default 300 s), S3 with
# Bucket Keys (one bucket-level key per requester: the uploader and the function) and
# DynamoDB's table key (cached per caller connection for 5 minutes: one per concurrent
# function instance).
KMS_REUSE_PERIOD_S = 300
KMS_FIXED_CALLERS = 4
# CloudWatch Logs ingestion (Standard class), per GB; PutLogEvents counts 26 bytes per event.
LOGS_PER_GB = 0.50
LOGS_EVENT_OVERHEAD_BYTES = 26
# Lambda's own START, END and REPORT lines (the REPORT with an X-Ray trace id), per invocation.
LAMBDA_PLATFORM_LOG_BYTES = 420
LAMBDA_PLATFORM_LOG_EVENTS = 3
# X-Ray traces recorded; Lambda's active tracing samples by the default rule: the first
# request each second, then 5 % of the rest.
XRAY_PER_TRACE = 5.00 / 1e6
XRAY_RESERVOIR_PER_S = 1.0
XRAY_FIXED_RATE = 0.05


def dynamodb_item_bytes(item: dict) -> int:
    """DynamoDB's billed size of a plain-Python item: attribute name lengths plus value sizes."""
    return sum(len(name.encode()) + _value_bytes(value) for name, value in item.items())


def _value_bytes(value) -> int:
    if isinstance(value, bool) or value is None:
        return 1
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    if isinstance(value, (int, float)) or type(value).__name__ == "Decimal":
        # Numbers: about one byte per two significant digits plus one.
        digits = len(str(value).lstrip("-").replace(".", "").lstrip("0")) or 1
        return 1 + math.ceil(digits / 2)
    if isinstance(value, dict):
        return 3 + sum(len(k.encode()) + 1 + _value_bytes(v) for k, v in value.items())
    if isinstance(value, (list, tuple, set)):
        return 3 + sum(1 + _value_bytes(v) for v in value)
    raise TypeError(f"no DynamoDB size rule for {type(value).__name__}")


def xray_traced_share(invocations_per_s: float) -> float:
    """Share of invocations the default sampling rule records at a steady rate."""
    if invocations_per_s <= XRAY_RESERVOIR_PER_S:
        return 1.0
    return (XRAY_RESERVOIR_PER_S + XRAY_FIXED_RATE * (invocations_per_s - XRAY_RESERVOIR_PER_S)) / invocations_per_s


def cost_per_million(*, handler_cpu_ms: float, handler_wait_ms: float, memory_mb: int, batch_size: int,
                     aws_calls_per_image: dict[str, float], item_bytes: int, index_writes_per_image: float,
                     consistent_reads: bool = True, log_bytes_per_image: float = 0.0,
                     log_events_per_image: float = 0.0, concurrency: int = 1,
                     images_per_s: float | None = None) -> dict:
    """Dollars per million images: S3 object -> SQS message -> Lambda -> DynamoDB item, with the
    KMS requests, CloudWatch Logs and X-Ray traces that come with them.

    `handler_cpu_ms` is measured on one full core. Below LAMBDA_FULL_VCPU_MB the function
    gets that share of a vCPU, so CPU time stretches by the same factor; time spent
    waiting on S3 and DynamoDB (`handler_wait_ms`) does not.
    `aws_calls_per_image` counts the handler's own calls, e.g. {"s3:GetObject": 1.0}.
    `index_writes_per_image`: index entries written per item on average (a sparse index
    holds only some items); each is one WRU, the indexes projecting only a listing's fields.
    `log_bytes_per_image` / `log_events_per_image`: what the handler printed per image.
    KMS and X-Ray depend on the rate: `images_per_s` (default: `concurrency` instances
    each scoring one image per billed time, a backlog being worked off).
    """
    cpu_share = min(1.0, memory_mb / LAMBDA_FULL_VCPU_MB)
    billed_ms = handler_cpu_ms / cpu_share + handler_wait_ms
    if images_per_s is None:
        images_per_s = concurrency * 1000.0 / billed_ms
    write_units = max(1, math.ceil(item_bytes / DYNAMODB_WRITE_UNIT_BYTES))
    read_units = max(1, math.ceil(item_bytes / DYNAMODB_READ_UNIT_BYTES)) * (1.0 if consistent_reads else 0.5)
    calls = Counter(aws_calls_per_image)
    s3_get_tier = sum(calls[f"s3:{op}"] for op in S3_GET_TIER)
    s3_put_tier = sum(count for name, count in calls.items()
                      if name.startswith("s3:") and name.split(":")[1] not in S3_GET_TIER)
    invocations_per_s = images_per_s / batch_size
    kms_per_image = (KMS_FIXED_CALLERS + concurrency) / KMS_REUSE_PERIOD_S / images_per_s
    log_bytes = (log_bytes_per_image + LOGS_EVENT_OVERHEAD_BYTES * log_events_per_image
                 + (LAMBDA_PLATFORM_LOG_BYTES + LOGS_EVENT_OVERHEAD_BYTES * LAMBDA_PLATFORM_LOG_EVENTS) / batch_size)
    million = 1e6
    lines = {
        "lambda_compute": billed_ms / 1e3 * memory_mb / 1024 * LAMBDA_ARM64_PER_GB_SECOND * million,
        "lambda_requests": LAMBDA_PER_REQUEST * million / batch_size,
        # The S3 notification's SendMessage, then the poller's ReceiveMessage and
        # DeleteMessageBatch calls, 10 messages at most each.
        "sqs": SQS_PER_REQUEST * million * (1 + 2 * math.ceil(batch_size / SQS_MESSAGES_PER_CALL) / batch_size),
        "s3_requests": (s3_get_tier * S3_GET_PER_REQUEST + s3_put_tier * S3_PUT_PER_REQUEST) * million,
        "dynamodb_reads": calls["dynamodb:GetItem"] * read_units * DYNAMODB_PER_READ_REQUEST_UNIT * million,
        # The result items, their index entries, and the hourly counter items added to once per
        # invocation (UpdateItem, each under 1 KB: one WRU).
        "dynamodb_writes": (calls["dynamodb:PutItem"] * write_units + index_writes_per_image
                            + calls["dynamodb:UpdateItem"]) * DYNAMODB_PER_WRITE_REQUEST_UNIT * million,
        "kms": kms_per_image * KMS_PER_REQUEST * million,
        "cloudwatch_logs": log_bytes / 1024 ** 3 * LOGS_PER_GB * million,
        "xray": xray_traced_share(invocations_per_s) / batch_size * XRAY_PER_TRACE * million,
    }
    lines = {name: round(value, 4) for name, value in lines.items()}
    return {"memory_mb": memory_mb, "cpu_share": round(cpu_share, 3), "handler_cpu_ms": handler_cpu_ms,
            "handler_wait_ms": handler_wait_ms, "billed_ms_per_image": round(billed_ms, 3),
            "batch_size": batch_size, "dynamodb_item_bytes": item_bytes, "dynamodb_wru_per_write": write_units,
            "index_writes_per_image": round(index_writes_per_image, 3), "consistent_reads": consistent_reads,
            "log_bytes_per_image": round(log_bytes, 1), "images_per_s": round(images_per_s, 1),
            "xray_traced_share": round(xray_traced_share(invocations_per_s), 4),
            "kms_requests_per_image": round(kms_per_image, 6),
            "aws_calls_per_image": dict(calls), "lines_usd": lines, "total_usd": round(sum(lines.values()), 4)}
