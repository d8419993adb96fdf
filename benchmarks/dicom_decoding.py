"""DICOM: decode time per transfer syntax, the memory a 4k x 4k 16-bit image needs, import cost.

`python -m benchmarks.dicom_decoding [--data DIR] [--limit N] [--repeats R]` prints one JSON line:

- `transfer_syntaxes`: per syntax, p50/p95 of the scoring path's decode step
  (`pneumoscan.scoring.decode`: DICOM decode plus the shared resize to the model input), over
  the sample radiographs written as 12-bit data in 16-bit words (8-bit for JPEG baseline,
  which wraps the original JPEG bytes), as the tests build them;
- `memory_4k_16bit`: peak RSS (VmHWM) of a fresh process that decodes one 4096 x 4096 12-bit
  image, per transfer syntax, against the function's MemorySize;
- `imports`: what importing DICOM support costs the first DICOM object (in a fresh process),
  and whether the JPEG/PNG path loads pydicom (it must not).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import DEFAULT_DATA, REPO_ROOT, load_samples, peak_rss_mb, probe_pythonpath, summarize

# The encoders the tests use: real X-ray pixels in each transfer syntax.
sys.path.insert(0, str(REPO_ROOT / "tests"))
from dicom_cases import radiograph, sixteen_bit, to_bytes  # noqa: E402

from pneumoscan import scoring  # noqa: E402
from pneumoscan.model import InputSpec  # noqa: E402

SYNTAXES = {
    "explicit_vr_little_endian": ("1.2.840.10008.1.2.1", {}),
    "implicit_vr_little_endian": ("1.2.840.10008.1.2", {}),
    "deflated": ("1.2.840.10008.1.2.1.99", {}),
    "rle": ("1.2.840.10008.1.2.5", {}),
    "jpeg_ls_lossless": ("1.2.840.10008.1.2.4.80", {}),
    "jpeg2000_lossless": ("1.2.840.10008.1.2.4.90", {}),
    "jpeg2000_lossy_20to1": ("1.2.840.10008.1.2.4.91", {"j2k_cr": [20]}),
}
JPEG_BASELINE = "jpeg_baseline_8bit"
MEMORY_SYNTAXES = ("explicit_vr_little_endian", "rle", "jpeg2000_lossless")
MEMORY_SIDE = 4096
TEMPLATE_MEMORY_MB = 1024
MODEL_INPUT = InputSpec(height=224, width=224, channels=1)


def _greyscale(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("L"), dtype=np.uint8)


def _jpeg_baseline(data: bytes) -> bytes:
    """The original JPEG bytes (re-encoded baseline greyscale if needed) in a DICOM wrapper."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit
    with Image.open(io.BytesIO(data)) as image:
        if image.info.get("progressive") or image.mode != "L":
            buffer = io.BytesIO()
            image.convert("L").save(buffer, "JPEG", quality=92)
            data = buffer.getvalue()
    ds = radiograph(_greyscale(data))
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([data])
    ds["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def encode_all(samples) -> dict[str, list[bytes]]:
    files = {name: [] for name in (*SYNTAXES, JPEG_BASELINE)}
    for sample in samples:
        dataset = radiograph(sixteen_bit(_greyscale(sample.data)), bits_stored=12)
        for name, (uid, options) in SYNTAXES.items():
            files[name].append(to_bytes(dataset, uid, **options))
        files[JPEG_BASELINE].append(_jpeg_baseline(sample.data))
    return files


def time_decoding(files: dict[str, list[bytes]], repeats: int) -> dict:
    results = {}
    for name, blobs in files.items():
        per_image = []
        for data in blobs:
            runs = []
            for _ in range(repeats):
                start = time.perf_counter()
                scoring.decode(data, MODEL_INPUT)
                runs.append(time.perf_counter() - start)
            per_image.append(float(np.median(runs)))
        results[name] = {**summarize(per_image), "mean_file_mb": round(float(np.mean([len(b) for b in blobs])) / 1e6, 2)}
    return results


def memory_probe(path: str) -> dict:
    """In a fresh process: peak RSS before and after decoding the file at `path`."""
    data = Path(path).read_bytes()
    before = peak_rss_mb()
    pixels, result = scoring.decode(data, MODEL_INPUT)
    return {"peak_rss_mb_before_decode": before, "peak_rss_mb": peak_rss_mb(),
            "file_mb": round(len(data) / 1e6, 1), "image": list(result.image.size)}


def measure_memory(sample_data: bytes) -> dict:
    image = Image.fromarray(_greyscale(sample_data)).resize((MEMORY_SIDE, MEMORY_SIDE), Image.Resampling.BILINEAR)
    dataset = radiograph(sixteen_bit(np.asarray(image)), bits_stored=12)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in MEMORY_SYNTAXES:
            uid, options = SYNTAXES[name]
            path = Path(folder) / f"{name}.dcm"
            path.write_bytes(to_bytes(dataset, uid, **options))
            results[name] = _fresh_process(["-m", "benchmarks.dicom_decoding", "--memory-probe", str(path)])
    return {"image": f"{MEMORY_SIDE}x{MEMORY_SIDE}, 12 bits stored in 16", "by_syntax": results,
            "function_memory_mb": TEMPLATE_MEMORY_MB,
            "max_peak_rss_mb": max(run["peak_rss_mb"] for run in results.values())}


# Run as `python -c` so nothing but the standard library is loaded before the clock starts.
IMPORT_PROBE = """
import json, sys, time
start = time.perf_counter()
import pneumoscan.formats, pneumoscan.images
jpeg_path = time.perf_counter()
loaded = "pydicom" in sys.modules
import pneumoscan.dicom
decode_ready = time.perf_counter()
import pneumoscan.sr
report_ready = time.perf_counter()
print(json.dumps({"import_jpeg_path_ms": round((jpeg_path - start) * 1e3, 1),
                  "jpeg_path_imports_pydicom": loaded,
                  "import_dicom_decode_ms": round((decode_ready - jpeg_path) * 1e3, 1),
                  "import_structured_report_ms": round((report_ready - decode_ready) * 1e3, 1)}))
"""


def measure_imports(runs: int = 3) -> dict:
    results = [_fresh_process(["-c", IMPORT_PROBE]) for _ in range(runs)]
    return {key: (float(np.median([run[key] for run in results])) if key != "jpeg_path_imports_pydicom"
                  else any(run[key] for run in results)) for key in results[0]}


def _fresh_process(arguments: list[str]) -> dict:
    completed = subprocess.run([sys.executable, *arguments],
                               capture_output=True, text=True, cwd=REPO_ROOT, check=True,
                               env={"PYTHONPATH": probe_pythonpath(), "PATH": "/usr/bin:/bin"})
    return json.loads(completed.stdout.strip().splitlines()[-1])


def run(samples, *, repeats: int = 3) -> dict:
    files = encode_all(samples)
    return {"images": len(samples), "repeats_per_image": repeats,
            "transfer_syntaxes": time_decoding(files, repeats),
            "memory_4k_16bit": measure_memory(samples[0].data),
            "imports": measure_imports()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe)))
    else:
        print(json.dumps(run(load_samples(args.data, args.limit), repeats=args.repeats)))


if __name__ == "__main__":
    main()
