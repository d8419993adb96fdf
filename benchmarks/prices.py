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
}

# Lambda, arm64 (Graviton2), first 7.5 billion GB-s a month; billed per 1 ms.
LAMBDA_ARM64_PER_GB_SECOND = 0.0000133334
LAMBDA_PER_REQUEST = 0.20 / 1e6
# Lambda gets one full vCPU at this memory size, proportionally less below it.
LAMBDA_FULL_VCPU_MB = 1769
# SQS standard queue, per request (each 64 KB chunk of payload is one request).
SQS_PER_REQUEST = 0.40 / 1e6
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


def cost_per_million(*, handler_cpu_ms: float, handler_wait_ms: float, memory_mb: int, batch_size: int,
                     aws_calls_per_image: dict[str, float], item_bytes: int, indexes_written: int) -> dict:
    """Dollars per million images: S3 object -> SQS message -> Lambda -> DynamoDB item.

    `handler_cpu_ms` is measured on one full core. Below LAMBDA_FULL_VCPU_MB the function
    gets that share of a vCPU, so CPU time stretches by the same factor; time spent
    waiting on S3 and DynamoDB (`handler_wait_ms`) does not.
    `aws_calls_per_image` counts the handler's own calls, e.g. {"s3:GetObject": 1.0}.
    """
    cpu_share = min(1.0, memory_mb / LAMBDA_FULL_VCPU_MB)
    billed_ms = handler_cpu_ms / cpu_share + handler_wait_ms
    write_units = max(1, math.ceil(item_bytes / DYNAMODB_WRITE_UNIT_BYTES)) * (1 + indexes_written)
    read_units = max(1, math.ceil(item_bytes / DYNAMODB_READ_UNIT_BYTES))  # strongly consistent
    calls = Counter(aws_calls_per_image)
    s3_get_tier = sum(calls[f"s3:{op}"] for op in S3_GET_TIER)
    s3_put_tier = sum(count for name, count in calls.items()
                      if name.startswith("s3:") and name.split(":")[1] not in S3_GET_TIER)
    million = 1e6
    lines = {
        "lambda_compute": billed_ms / 1e3 * memory_mb / 1024 * LAMBDA_ARM64_PER_GB_SECOND * million,
        "lambda_requests": LAMBDA_PER_REQUEST * million / batch_size,
        # The S3 notification's SendMessage, then the poller's ReceiveMessage and
        # DeleteMessageBatch once per batch.
        "sqs": SQS_PER_REQUEST * million * (1 + 2 / batch_size),
        "s3_requests": (s3_get_tier * S3_GET_PER_REQUEST + s3_put_tier * S3_PUT_PER_REQUEST) * million,
        "dynamodb_reads": calls["dynamodb:GetItem"] * read_units * DYNAMODB_PER_READ_REQUEST_UNIT * million,
        "dynamodb_writes": calls["dynamodb:PutItem"] * write_units * DYNAMODB_PER_WRITE_REQUEST_UNIT * million,
    }
    lines = {name: round(value, 4) for name, value in lines.items()}
    return {"memory_mb": memory_mb, "cpu_share": round(cpu_share, 3), "handler_cpu_ms": handler_cpu_ms,
            "handler_wait_ms": handler_wait_ms, "billed_ms_per_image": round(billed_ms, 3),
            "batch_size": batch_size, "dynamodb_item_bytes": item_bytes,
            "dynamodb_wru_per_write": write_units, "aws_calls_per_image": dict(calls),
            "lines_usd": lines, "total_usd": round(sum(lines.values()), 4)}
