"""The scorer function's configuration: read once from the environment, checked at init.

template.yaml's Parameters set these variables on the function; the defaults here are
the template's defaults (a unit test pins them), so the CLI and tests that run without
the template behave as a default deployment does.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from botocore.config import Config

TABLE_ENV = "RESULTS_TABLE"
IMAGES_BUCKET_ENV = "IMAGES_BUCKET"
INCOMING_PREFIX_ENV = "INCOMING_PREFIX"
RESULTS_PREFIX_ENV = "RESULTS_PREFIX"
OVERLAY_IMAGES_ENV = "OVERLAY_IMAGES"
MAX_OBJECT_BYTES_ENV = "MAX_OBJECT_BYTES"
INFERENCE_THREADS_ENV = "INFERENCE_THREADS"
LOG_LEVEL_ENV = "LOG_LEVEL"
STRUCTURED_REPORTS_ENV = "STRUCTURED_REPORTS"
DEFAULT_INCOMING_PREFIX = "incoming/"
# Everything the pipeline itself writes to the bucket goes here, outside the
# notification prefix, so it can never trigger another scoring.
RESULTS_PREFIX = "results/"
# Whether a scored DICOM source gets a DICOM Structured Report under the results prefix.
STRUCTURED_REPORT_SWITCH = {"on": True, "off": False}
# Keys may carry patient identifiers: only this log level shows them in clear.
KEYS_IN_CLEAR_LOG_LEVEL = "DEBUG"
# Which scored images get an overlay PNG: every one, only those given the positive label, or none.
OVERLAY_POLICIES = ("all", "positives", "none")
# Objects larger than this are refused from their size, never downloaded.
DEFAULT_MAX_OBJECT_BYTES = 64 * 1024 * 1024
# Every AWS client, the function's and the CLI's: standard retry mode backs off on
# throttling and 5xx before a call (and with it an SQS record) is given up.
RETRY_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=30)


class SettingsError(ValueError):
    """An environment variable is missing or holds a value the function cannot run with."""


@dataclass(frozen=True)
class Settings:
    table_name: str | None = None  # required by the function, not by offline scoring
    incoming_prefix: str = DEFAULT_INCOMING_PREFIX
    results_prefix: str = RESULTS_PREFIX
    overlay_images: str = "none"  # one of OVERLAY_POLICIES
    max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES
    inference_threads: int = 1
    log_keys_in_clear: bool = False
    # The one bucket whose events the function acts on (required by the function): the
    # table key holds no bucket, so another bucket's object must never reach an item.
    images_bucket: str | None = None
    structured_reports: bool = True

    def __post_init__(self) -> None:
        if self.overlay_images not in OVERLAY_POLICIES:
            raise SettingsError(f"{OVERLAY_IMAGES_ENV}={self.overlay_images!r} is not one of "
                                f"{', '.join(OVERLAY_POLICIES)}")
        for name, prefix in ((INCOMING_PREFIX_ENV, self.incoming_prefix), (RESULTS_PREFIX_ENV, self.results_prefix)):
            if not prefix.endswith("/") or prefix == "/":
                raise SettingsError(f"{name}={prefix!r} must be a folder name ending in '/'")
        if self.results_prefix.startswith(self.incoming_prefix) or self.incoming_prefix.startswith(
                self.results_prefix):
            raise SettingsError(f"{RESULTS_PREFIX_ENV}={self.results_prefix!r} overlaps "
                                f"{INCOMING_PREFIX_ENV}={self.incoming_prefix!r}: overlays would be scored")
        if self.max_object_bytes < 1:
            raise SettingsError(f"{MAX_OBJECT_BYTES_ENV}={self.max_object_bytes} must be at least 1")
        if self.inference_threads < 1:
            raise SettingsError(f"{INFERENCE_THREADS_ENV}={self.inference_threads} must be at least 1")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, table_required: bool = True) -> Settings:
        """The function's settings; `table_required=False` for scoring with no table or bucket (the CLI)."""
        env = os.environ if environ is None else environ
        table = env.get(TABLE_ENV) or None
        if table_required and table is None:
            raise SettingsError(f"{TABLE_ENV} is not set: the function has no table to write results to")
        defaults = cls()
        settings = cls(
            table_name=table,
            incoming_prefix=env.get(INCOMING_PREFIX_ENV, defaults.incoming_prefix),
            results_prefix=env.get(RESULTS_PREFIX_ENV, defaults.results_prefix),
            overlay_images=env.get(OVERLAY_IMAGES_ENV, defaults.overlay_images),
            max_object_bytes=_integer(env, MAX_OBJECT_BYTES_ENV, defaults.max_object_bytes),
            inference_threads=_integer(env, INFERENCE_THREADS_ENV, defaults.inference_threads),
            log_keys_in_clear=env.get(LOG_LEVEL_ENV, "INFO").upper() == KEYS_IN_CLEAR_LOG_LEVEL,
            images_bucket=env.get(IMAGES_BUCKET_ENV) or None,
            structured_reports=_switch(env, STRUCTURED_REPORTS_ENV, defaults.structured_reports),
        )
        if table_required and settings.images_bucket is None:
            raise SettingsError(f"{IMAGES_BUCKET_ENV} is not set: the function cannot tell its bucket's events "
                                f"from another bucket's")
        return settings


def _switch(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name)
    if value is None or value == "":
        return default
    if value.lower() not in STRUCTURED_REPORT_SWITCH:
        raise SettingsError(f"{name}={value!r} is not one of {', '.join(STRUCTURED_REPORT_SWITCH)}")
    return STRUCTURED_REPORT_SWITCH[value.lower()]


def _integer(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise SettingsError(f"{name}={value!r} is not a whole number") from None
