"""What a cold start of the handler module loads, and what it leaves to the garbage collector."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pneumoscan.model import MODEL_DIR_ENV, default_model_dir
from pneumoscan_cli.worker import FUNCTION_DIR

pytestmark = pytest.mark.skipif(not (default_model_dir() / "model.json").is_file(),
                                reason="needs a model in model/ (or $PNEUMOSCAN_MODEL_DIR)")


def run_in_a_fresh_process(code: str, model_dir: str = str(default_model_dir())) -> None:
    environment = {"PATH": os.environ.get("PATH", ""), "RESULTS_TABLE": "results", "IMAGES_BUCKET": "images",
                   "AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing",
                   "AWS_SECRET_ACCESS_KEY": "testing", "POWERTOOLS_TRACE_DISABLED": "true", MODEL_DIR_ENV: model_dir}
    subprocess.run([sys.executable, "-c", code], cwd=FUNCTION_DIR, env=environment, check=True)


def test_the_handler_module_creates_its_clients_without_importing_boto3():
    # boto3 is importable here (the dev venv has it), so only an import in the function can load it.
    run_in_a_fresh_process(
        "import sys, app\n"
        "assert app.s3_client.meta.service_model.service_name == 's3'\n"
        "loaded = sorted(name for name in sys.modules if name.split('.')[0] in ('boto3', 's3transfer'))\n"
        "assert not loaded, loaded\n")


def test_the_init_is_frozen_out_of_the_collectors_reach_and_the_collector_runs_on():
    run_in_a_fresh_process(
        "import gc, app\n"
        "assert gc.isenabled()\n"
        "assert gc.get_freeze_count() > 50_000, gc.get_freeze_count()  # the clients' service models among them\n")


def test_a_failed_init_leaves_the_collector_running(tmp_path):
    run_in_a_fresh_process(
        "import gc\n"
        "from pneumoscan.model import ModelLoadError\n"
        "try:\n"
        "    import app\n"
        "except ModelLoadError:\n"
        "    pass\n"
        "else:\n"
        "    raise AssertionError('the init did not fail')\n"
        "assert gc.isenabled() and gc.get_freeze_count() == 0\n", model_dir=str(tmp_path))
