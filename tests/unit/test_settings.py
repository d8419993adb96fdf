"""The function's settings: defaults pinned to template.yaml's Parameters, bad values refused at init."""

from pathlib import Path

import pytest

from pneumoscan import settings as settings_module
from pneumoscan.settings import OVERLAY_POLICIES
from pneumoscan.settings import Settings, SettingsError
from pneumoscan_cli.template import load_template

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"


@pytest.fixture(scope="module")
def template():
    return load_template(TEMPLATE)


def test_defaults_are_the_templates_parameter_defaults(template):
    parameters, defaults = template["Parameters"], Settings()
    assert defaults.incoming_prefix == parameters["IncomingPrefix"]["Default"]
    assert defaults.results_prefix == parameters["ResultsPrefix"]["Default"]
    assert defaults.overlay_images == parameters["OverlayImages"]["Default"]
    assert tuple(parameters["OverlayImages"]["AllowedValues"]) == OVERLAY_POLICIES
    assert defaults.max_object_bytes == parameters["MaxObjectBytes"]["Default"]
    assert defaults.inference_threads == parameters["InferenceThreads"]["Default"]
    assert defaults.log_keys_in_clear == (parameters["LogLevel"]["Default"] == settings_module.KEYS_IN_CLEAR_LOG_LEVEL)
    assert defaults.structured_reports == settings_module.STRUCTURED_REPORT_SWITCH[
        parameters["StructuredReports"]["Default"]]
    assert set(parameters["StructuredReports"]["AllowedValues"]) == set(settings_module.STRUCTURED_REPORT_SWITCH)


def test_every_variable_read_is_set_by_the_template_from_its_parameter(template):
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert variables[settings_module.TABLE_ENV] == {"Ref": "ResultsTable"}
    assert variables[settings_module.IMAGES_BUCKET_ENV] == {"Ref": "ImagesBucket"}
    for name, parameter in ((settings_module.INCOMING_PREFIX_ENV, "IncomingPrefix"),
                            (settings_module.RESULTS_PREFIX_ENV, "ResultsPrefix"),
                            (settings_module.OVERLAY_IMAGES_ENV, "OverlayImages"),
                            (settings_module.MAX_OBJECT_BYTES_ENV, "MaxObjectBytes"),
                            (settings_module.INFERENCE_THREADS_ENV, "InferenceThreads"),
                            (settings_module.LOG_LEVEL_ENV, "LogLevel"),
                            (settings_module.STRUCTURED_REPORTS_ENV, "StructuredReports")):
        assert variables[name] == {"Ref": parameter}, name


def test_from_env_reads_every_setting():
    read = Settings.from_env({"RESULTS_TABLE": "t", "INCOMING_PREFIX": "in/", "RESULTS_PREFIX": "out/",
                              "OVERLAY_IMAGES": "positives", "MAX_OBJECT_BYTES": "1000",
                              "INFERENCE_THREADS": "2", "LOG_LEVEL": "debug", "IMAGES_BUCKET": "b",
                              "STRUCTURED_REPORTS": "off"})
    assert read == Settings("t", "in/", "out/", "positives", 1000, 2, True, images_bucket="b", structured_reports=False)
    assert Settings.from_env({"RESULTS_TABLE": "t", "IMAGES_BUCKET": "b"}) == Settings("t", images_bucket="b")


@pytest.mark.parametrize("environment, message", [
    ({}, "RESULTS_TABLE"),
    ({"RESULTS_TABLE": "t"}, "IMAGES_BUCKET"),
    ({"RESULTS_TABLE": "t", "OVERLAY_IMAGES": "some"}, "OVERLAY_IMAGES"),
    ({"RESULTS_TABLE": "t", "MAX_OBJECT_BYTES": "64MB"}, "MAX_OBJECT_BYTES"),
    ({"RESULTS_TABLE": "t", "MAX_OBJECT_BYTES": "0"}, "MAX_OBJECT_BYTES"),
    ({"RESULTS_TABLE": "t", "INFERENCE_THREADS": "0"}, "INFERENCE_THREADS"),
    ({"RESULTS_TABLE": "t", "INCOMING_PREFIX": "incoming"}, "INCOMING_PREFIX"),
    ({"RESULTS_TABLE": "t", "RESULTS_PREFIX": "incoming/overlays/"}, "overlaps"),
    ({"RESULTS_TABLE": "t", "STRUCTURED_REPORTS": "yes"}, "STRUCTURED_REPORTS"),
])
def test_a_bad_setting_fails_at_init_naming_the_variable(environment, message):
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(environment)


def test_offline_scoring_needs_no_table():
    assert Settings.from_env({"MAX_OBJECT_BYTES": "5"}, table_required=False).max_object_bytes == 5
