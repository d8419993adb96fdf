"""What a cold start of the handler module loads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pneumoscan.model import MODEL_DIR_ENV, default_model_dir
from pneumoscan_cli.worker import FUNCTION_DIR

pytestmark = pytest.mark.skipif(not (default_model_dir() / "model.json").is_file(),
                                reason="needs a model in model/ (or $PNEUMOSCAN_MODEL_DIR)")


def test_the_handler_module_creates_its_clients_without_importing_boto3():
    # boto3 is importable here (the dev venv has it), so only an import in the function can load it.
    probe = ("import sys, app\n"
             "assert app.s3_client.meta.service_model.service_name == 's3'\n"
             "loaded = sorted(name for name in sys.modules if name.split('.')[0] in ('boto3', 's3transfer'))\n"
             "assert not loaded, loaded\n")
    environment = {"PATH": os.environ.get("PATH", ""), "RESULTS_TABLE": "results", "IMAGES_BUCKET": "images",
                   "AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing",
                   "AWS_SECRET_ACCESS_KEY": "testing", "POWERTOOLS_TRACE_DISABLED": "true",
                   MODEL_DIR_ENV: str(default_model_dir())}
    subprocess.run([sys.executable, "-c", probe], cwd=FUNCTION_DIR, env=environment, check=True)
