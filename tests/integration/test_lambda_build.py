"""`sam build` of the scorer without Docker, and proof that the trimmed artifact still runs.

The arm64 artifact cannot run on this machine, so the same Makefile also builds it for
x86_64 (same requirements, same trimming) and that copy scores a real X-ray in an
interpreter that sees only the artifact plus what the Lambda runtime itself provides.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from dicom_cases import CASES
from image_cases import REFERENCE_XRAY
from pneumoscan.model import default_model_dir

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
SITE_PACKAGES = Path(boto3.__file__).resolve().parents[1]
# What the python3.13 Lambda runtime ships, and therefore what the build leaves out.
RUNTIME_PROVIDED = ("boto3", "botocore", "s3transfer", "urllib3", "dateutil", "six.py", "jmespath")
XRAY = REFERENCE_XRAY

pytestmark = [
    pytest.mark.integration, pytest.mark.slow,
    pytest.mark.skipif(not (default_model_dir() / "model.json").is_file(), reason="needs a model in model/"),
]


def build_environment() -> dict[str, str]:
    environment = dict(os.environ, SAM_CLI_TELEMETRY="0", MODEL_DIR=str(default_model_dir()))
    environment["PATH"] = f"{VENV_BIN}:{environment.get('PATH', '')}"
    return environment


@pytest.fixture(scope="module")
def sam_build(tmp_path_factory):
    build_dir = tmp_path_factory.mktemp("sam") / "build"
    run = subprocess.run([VENV_BIN / "sam", "build", "--template", ROOT / "template.yaml", "--build-dir", build_dir],
                         cwd=ROOT, env=build_environment(), capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    return build_dir, run.stdout + run.stderr


def test_sam_build_produces_a_checked_arm64_artifact_under_120_mb(sam_build):
    build_dir, output = sam_build
    artifact = build_dir / "ScorerFunction"
    assert "Build Succeeded" in output and f"artifact {artifact}:" in output  # the Makefile ran the check
    assert "PROBLEM" not in output
    assert (artifact / "pneumoscan" / "__pycache__" / "scoring.cpython-313.pyc").is_file()
    assert not (artifact / "aws_xray_sdk").exists()
    size = sum(p.stat().st_size for p in artifact.rglob("*") if p.is_file())
    assert size < 120e6
    metadata = json.loads((artifact / "model" / "model.json").read_text())
    named = [metadata["file"], metadata["ood"]["file"]] + ([metadata["lung_field"]["file"]] if "lung_field" in metadata else [])
    assert sorted(p.name for p in (artifact / "model").iterdir()) == sorted(["model.json", *named])
    assert not any((artifact / name).exists() for name in ("boto3", "botocore", "tests"))
    assert (artifact / "app.py").is_file() and (artifact / "pneumoscan" / "images.py").is_file()
    built_template = (build_dir / "template.yaml").read_text()
    assert "CodeUri: ScorerFunction" in built_template


def test_the_check_rejects_a_wheel_for_another_platform(sam_build, tmp_path):
    build_dir, _ = sam_build
    run = subprocess.run([sys.executable, ROOT / "infra" / "lambda_build" / "check_artifact.py", "--arch", "x86_64",
                          build_dir / "ScorerFunction"], capture_output=True, text=True)
    assert run.returncode == 1 and "is not python3.13 x86_64" in run.stderr and "not x86_64" in run.stderr


@pytest.mark.skipif(not XRAY.is_file(), reason="needs ../shared/data")
def test_the_trimmed_artifact_scores_an_xray_with_only_the_runtime_beside_it(tmp_path):
    artifact = tmp_path / "x86_64"
    run = subprocess.run(["make", "-s", "-f", ROOT / "functions" / "scorer" / "Makefile", "build-ScorerFunction",
                          f"ARTIFACTS_DIR={artifact}", "ARCH=x86_64", "MAX_MB=250"],
                         cwd=tmp_path, env=build_environment(), capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    dicom_dir = tmp_path / "dicom"
    dicom_dir.mkdir()
    for case in CASES:
        (dicom_dir / f"{case.name}.dcm").write_bytes(case.make())
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    for name in RUNTIME_PROVIDED:
        (runtime / name).symlink_to(SITE_PACKAGES / name)
    probe = f"""
import sys
sys.path[:0] = [{str(artifact)!r}, {str(runtime)!r}]
import numpy, PIL, app
assert numpy.__file__.startswith({str(artifact)!r}) and PIL.__file__.startswith({str(artifact)!r})
# No X-Ray SDK is loaded: Lambda's active tracing records the invocations without it.
assert "aws_xray_sdk" not in sys.modules
# Nor boto3: the handler's clients are botocore's (boto3 would bring s3transfer and multiprocessing).
assert "boto3" not in sys.modules and "s3transfer" not in sys.modules
scored = app.scorer.score(open({str(XRAY)!r}, "rb").read(), overlay="all")
print(scored.probability, scored.image.width, scored.image.height, len(scored.overlay_png))
# DICOM (pruned highdicom, stripped codecs): every transfer syntax decodes and gets its SR.
import glob, pydicom
from pneumoscan import sr
assert pydicom.__file__.startswith({str(artifact)!r})
for path in sorted(glob.glob({str(dicom_dir)!r} + "/*.dcm")):
    dicom_score = app.scorer.score(open(path, "rb").read())
    print(path.rsplit("/", 1)[-1], len(sr.report_for(dicom_score, app.model.metadata)))
"""
    environment = {"PATH": "/usr/bin:/bin", "RESULTS_TABLE": "results", "IMAGES_BUCKET": "images",
                   "AWS_DEFAULT_REGION": "us-east-1",
                   "POWERTOOLS_TRACE_DISABLED": "true", "PNEUMOSCAN_MODEL_DIR": str(artifact / "model")}
    # -I -S: no site-packages, no user site, no PYTHON* variables: only the paths above.
    scored = subprocess.run([sys.executable, "-I", "-S", "-c", probe], cwd=tmp_path, env=environment,
                            capture_output=True, text=True, timeout=300)
    assert scored.returncode == 0, scored.stderr[-4000:]
    lines = scored.stdout.splitlines()
    probability, width, height, overlay_bytes = lines[0].split()
    assert 0.0 <= float(probability) <= 1.0 and int(width) * int(height) > 1_000_000 and int(overlay_bytes) > 1000
    reports = dict(line.split() for line in lines[1:])
    assert sorted(reports) == sorted(f"{case.name}.dcm" for case in CASES)
    assert all(int(size) > 1000 for size in reports.values())
