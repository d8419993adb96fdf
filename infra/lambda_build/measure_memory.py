"""Peak RSS of the scorer handler on full-resolution X-rays: what template.yaml's MemorySize is sized from.

    .venv/bin/python infra/lambda_build/measure_memory.py [--data ../shared/data] [--limit N]

Starts the local stack with one worker process (the real handler, fed by the real
S3 -> SQS notifications), uploads the full-resolution sample plus the worst plausible
inputs (a ~50 MP JPEG, 16-bit PNGs of 1.9 and ~50 MP, generated from tests/image_cases.py), waits until
every object has its item, and reads the worker's peak RSS (VmHWM) from /proc.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tests"))

import numpy as np  # noqa: E402
from image_cases import _encode, jpeg_50mp, png_16bit_grey, reference_image  # noqa: E402  (test-time generators)
from PIL import Image  # noqa: E402
from pneumoscan_cli.local import LocalStack  # noqa: E402
from pneumoscan_cli.template import read_settings  # noqa: E402
from pneumoscan_eval.datasets import default_data_dir  # noqa: E402


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def current_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def png_16bit_50mp() -> bytes:
    """The worst plausible input: a ~50 MP 16-bit export cannot be decoded at a reduced scale."""
    big = reference_image().resize((7100, 7040), Image.Resampling.BILINEAR)
    return _encode(Image.fromarray(np.asarray(big, dtype=np.uint16) * 16 + 200), "PNG", compress_level=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data_dir())
    parser.add_argument("--limit", type=int, default=None, help="at most this many full-resolution originals")
    args = parser.parse_args()
    originals = sorted((args.data / "xray_fullres_sample").rglob("*.jpeg"))[: args.limit]

    settings = read_settings()
    stack = LocalStack(settings, workers=1)
    with stack as target:
        worker_pid = stack.workers[0].pid
        time.sleep(8)  # the worker's cold start: imports and the model
        idle_mb = current_rss_mb(worker_pid)
        s3 = target.client("s3")
        prefix = f"{settings.incoming_prefix}memory/"
        uploads = {f"{prefix}{path.parent.name}-{path.name}": path.read_bytes() for path in originals}
        uploads[f"{prefix}synthetic-50mp.jpeg"] = jpeg_50mp()
        uploads[f"{prefix}synthetic-16bit.png"] = png_16bit_grey()
        uploads[f"{prefix}synthetic-16bit-50mp.png"] = png_16bit_50mp()
        for key, body in uploads.items():
            s3.put_object(Bucket=target.bucket, Key=key, Body=body)
        dynamodb = target.client("dynamodb")
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            # measurement only; counter items have no status
            count = dynamodb.scan(TableName=target.table, Select="COUNT", FilterExpression="attribute_exists(#s)",
                                  ExpressionAttributeNames={"#s": "status"})["Count"]
            if count >= len(uploads):
                break
            time.sleep(2)
        print(f"{count}/{len(uploads)} objects scored ({len(originals)} full-resolution originals, "
              f"a ~50 MP JPEG, 16-bit PNGs of 1.9 and ~50 MP)")
        print(f"worker RSS after cold start: {idle_mb:.0f} MB; peak RSS while scoring: {peak_rss_mb(worker_pid):.0f} MB")


if __name__ == "__main__":
    main()
