"""`pneumoscan results` and `upload`: the table's read patterns, never a Scan, against moto."""

import csv
import io
import json
from datetime import datetime, timedelta, timezone

import boto3
import pytest
from typer.testing import CliRunner

from pneumoscan.results import to_dynamodb, utc_timestamp, with_index_keys
from pneumoscan_cli import aws
from pneumoscan_cli.files import collect_files
from pneumoscan_cli.main import app
from pneumoscan.results import days_between
from pneumoscan_cli.results import Label, Status, find_results, parse_time
from pneumoscan_cli.s3_limits import enforce_key_limit
from pneumoscan_cli.template import read_settings
from pneumoscan_cli.upload import upload_files, wait_for_scores

SETTINGS = read_settings()
NOW = datetime.now(timezone.utc).replace(microsecond=0)
runner = CliRunner()


def _item(key, batch, label=None, probability=None, reason=None, at=NOW, etag="e"):
    scored_at = utc_timestamp(at)
    item = {"object_key": key, "batch": batch, "etag": etag, "scored_at": scored_at,
            "model_version": "test", "timings_ms": {"total": 1.5}}
    if reason:
        item |= {"status": "FAILED", "reason": reason, "error": "bad"}
    else:
        item |= {"status": "SCORED", "label": label, "probability": probability}
    return with_index_keys(item)


ITEMS = [
    _item("incoming/b1/2.jpeg", "b1", "PNEUMONIA", 0.93),
    _item("incoming/b1/1.jpeg", "b1", "NORMAL", 0.12),
    _item("incoming/b1/3.jpeg", "b1", reason="not_an_image"),
    _item("incoming/b2/old.jpeg", "b2", "PNEUMONIA", 0.81, at=NOW - timedelta(days=3)),
    _item("incoming/b2/new.jpeg", "b2", "PNEUMONIA", 0.77, at=NOW - timedelta(hours=1)),
]


@pytest.fixture
def target(cli_target):
    table = boto3.resource("dynamodb", region_name=SETTINGS.region).Table(SETTINGS.table)
    for item in ITEMS:
        table.put_item(Item=to_dynamodb(item))
    return cli_target


def _keys(items):
    return [item["object_key"] for item in items]


def test_a_batch_comes_back_in_key_order(target):
    assert _keys(find_results(target, batch="b1")) == [
        "incoming/b1/1.jpeg", "incoming/b1/2.jpeg", "incoming/b1/3.jpeg"]
    assert _keys(find_results(target, batch="b1", label=Label.pneumonia)) == ["incoming/b1/2.jpeg"]
    assert _keys(find_results(target, batch="b1", status=Status.failed)) == ["incoming/b1/3.jpeg"]


def test_positives_and_failures_in_a_window_use_one_query_per_day(target):
    calls = []
    target.client("dynamodb").meta.events.register("provide-client-params.dynamodb.Query",
                                                   lambda params, **_: calls.append(params))
    positives = find_results(target, label=Label.pneumonia, since=NOW - timedelta(days=4))
    assert _keys(positives) == ["incoming/b2/old.jpeg", "incoming/b2/new.jpeg", "incoming/b1/2.jpeg"]
    assert len(calls) == 5  # today and the four days before
    assert all(call["IndexName"] == "attention-index" for call in calls)
    assert _keys(find_results(target, label=Label.pneumonia)) == ["incoming/b2/new.jpeg", "incoming/b1/2.jpeg"]
    assert _keys(find_results(target, status=Status.failed)) == ["incoming/b1/3.jpeg"]
    # A normal score without warnings is read with its batch, not listed in a window.
    assert sorted(_keys(find_results(target, since=NOW - timedelta(days=7)))) == sorted(
        item["object_key"] for item in ITEMS if item["object_key"] != "incoming/b1/1.jpeg")


def test_normal_scores_without_a_batch_are_refused_with_the_reason(target):
    result = runner.invoke(app, ["results", "--label", "normal"])
    assert result.exit_code != 0
    assert "--batch" in result.output


def test_label_and_failed_together_are_refused(target):
    result = runner.invoke(app, ["results", "--label", "pneumonia", "--status", "failed"])
    assert result.exit_code != 0
    assert "FAILED item has no label" in result.output


def test_json_is_one_array_and_csv_has_a_header(target):
    result = runner.invoke(app, ["results", "--batch", "b1", "--format", "json"])
    assert result.exit_code == 0, result.output
    items = json.loads(result.stdout)
    assert _keys(items) == ["incoming/b1/1.jpeg", "incoming/b1/2.jpeg", "incoming/b1/3.jpeg"]
    assert items[1]["probability"] == pytest.approx(0.93) and items[0]["timings_ms"] == {"total": 1.5}

    result = runner.invoke(app, ["results", "--label", "PNEUMONIA", "--since", "7d", "--format", "csv"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [row["object_key"] for row in rows] == ["incoming/b2/old.jpeg", "incoming/b2/new.jpeg",
                                                    "incoming/b1/2.jpeg"]


def test_table_output_names_every_item(target):
    result = runner.invoke(app, ["results", "--batch", "b1"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "not_an_image" in result.output and "0.930" in result.output


def test_keys_that_look_like_console_markup_are_shown_as_written(target):
    key = "incoming/b3/[/bold] [red]x.jpeg"
    boto3.resource("dynamodb", region_name=SETTINGS.region).Table(SETTINGS.table).put_item(
        Item=to_dynamodb(_item(key, "b3", "NORMAL", 0.1)))

    result = runner.invoke(app, ["results", "--batch", "b3"], env={"COLUMNS": "200"})

    assert result.exit_code == 0, result.output
    assert "[/bold] [red]x.jpeg" in result.output


def test_without_a_running_stack_the_error_says_how_to_start_one(tmp_path, monkeypatch):
    monkeypatch.setenv(aws.STATE_DIR_ENV, str(tmp_path / "none"))
    result = runner.invoke(app, ["results", "--batch", "b1"])
    assert result.exit_code == 1
    assert "pneumoscan local up" in result.output


def test_times_parse_as_iso_or_age():
    now = datetime(2026, 11, 25, 12, tzinfo=timezone.utc)
    assert parse_time("2h", now) == now - timedelta(hours=2)
    assert parse_time("7d", now) == now - timedelta(days=7)
    assert parse_time("2026-11-20", now) == datetime(2026, 11, 20, tzinfo=timezone.utc)
    assert parse_time("2026-11-20T10:00:00Z", now) == datetime(2026, 11, 20, 10, tzinfo=timezone.utc)
    assert days_between(now - timedelta(days=2), now) == ["2026-11-23", "2026-11-24", "2026-11-25"]


def test_upload_keys_and_wait_matches_the_uploaded_bytes(target, tmp_path):
    folder = tmp_path / "scans"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.JPEG").write_bytes(b"one")
    (folder / "sub" / "b.png").write_bytes(b"two")
    (folder / "notes.txt").write_bytes(b"skipped: not an image name")
    (folder / ".hidden.jpg").write_bytes(b"skipped: hidden")
    files = collect_files([folder])
    assert [file.relative for file in files] == ["a.JPEG", "sub/b.png"]

    uploaded = upload_files(target, files, "b3", show_progress=False)
    assert [u.key for u in uploaded] == ["incoming/b3/a.JPEG", "incoming/b3/sub/b.png"]
    head = target.client("s3").head_object(Bucket=target.bucket, Key="incoming/b3/sub/b.png")
    assert head["ContentType"] == "image/png"

    with pytest.raises(TimeoutError, match="2 of 2"):
        wait_for_scores(target, "b3", uploaded, timeout_s=0, show_progress=False)
    table = boto3.resource("dynamodb", region_name=SETTINGS.region).Table(SETTINGS.table)
    table.put_item(Item=to_dynamodb(_item("incoming/b3/a.JPEG", "b3", "NORMAL", 0.2, etag=uploaded[0].etag)))
    # An item left by an earlier upload of different bytes under the same key does not count.
    table.put_item(Item=to_dynamodb(_item("incoming/b3/sub/b.png", "b3", "NORMAL", 0.2, etag="stale")))
    with pytest.raises(TimeoutError, match="1 of 2"):
        wait_for_scores(target, "b3", uploaded, timeout_s=0, show_progress=False)
    table.put_item(Item=to_dynamodb(_item("incoming/b3/sub/b.png", "b3", "NORMAL", 0.3, etag=uploaded[1].etag)))
    assert _keys(wait_for_scores(target, "b3", uploaded, timeout_s=0, show_progress=False)) == [
        "incoming/b3/a.JPEG", "incoming/b3/sub/b.png"]


def test_wait_never_takes_the_result_of_an_earlier_upload_of_the_same_bytes(target, tmp_path):
    s3 = target.client("s3")
    s3.put_bucket_versioning(Bucket=target.bucket, VersioningConfiguration={"Status": "Enabled"})
    (tmp_path / "a.jpeg").write_bytes(b"the same bytes, uploaded twice")
    files = collect_files([tmp_path / "a.jpeg"])
    first = upload_files(target, files, "b4", show_progress=False)[0]
    table = boto3.resource("dynamodb", region_name=SETTINGS.region).Table(SETTINGS.table)
    table.put_item(Item=to_dynamodb(_item(first.key, "b4", reason="object_missing", etag=first.etag)
                                    | {"version_id": first.version_id}))
    s3.delete_object(Bucket=target.bucket, Key=first.key)

    again = upload_files(target, files, "b4", show_progress=False)

    assert again[0].etag == first.etag and again[0].version_id != first.version_id
    with pytest.raises(TimeoutError, match="1 of 1"):
        wait_for_scores(target, "b4", again, timeout_s=0, show_progress=False)
    table.put_item(Item=to_dynamodb(_item(first.key, "b4", "NORMAL", 0.2, etag=first.etag)
                                    | {"version_id": again[0].version_id}))
    assert _keys(wait_for_scores(target, "b4", again, timeout_s=0, show_progress=False)) == [first.key]


def test_a_file_s3_refuses_is_reported_and_the_others_are_uploaded(target, tmp_path):
    enforce_key_limit()
    deep = tmp_path / "d" / ("f" * 250) / ("g" * 250) / ("h" * 250) / ("i" * 250)  # a 1036-byte key
    deep.mkdir(parents=True)
    (deep / "too-long-a-key.jpeg").write_bytes(b"x")
    (tmp_path / "d" / "fine.jpeg").write_bytes(b"y")

    result = runner.invoke(app, ["upload", str(tmp_path / "d"), "--batch", "b5"])

    assert result.exit_code == 1
    assert "KeyTooLongError" in result.output and "1 of 2" in result.output
    listing = target.client("s3").list_objects_v2(Bucket=SETTINGS.bucket, Prefix="incoming/b5/")["Contents"]
    assert [entry["Key"] for entry in listing] == ["incoming/b5/fine.jpeg"]


def test_a_batch_name_with_a_slash_is_refused(target, tmp_path):
    (tmp_path / "x.jpeg").write_bytes(b"x")
    result = runner.invoke(app, ["upload", str(tmp_path / "x.jpeg"), "--batch", "a/b"])
    assert result.exit_code != 0
    assert "one folder name" in result.output


def test_json_shows_the_whole_keys_of_the_report_and_overlay_of_items_old_and_new(target):
    """Items keep the folder of a derived object (the key is held once); those written before
    kept its whole key. Either way the CLI shows where the object is."""
    new, old = "incoming/d/new.dcm", "incoming/d/old.dcm"
    _put(_item(new, "d", "NORMAL", 0.1) | {"sr_key": "results/sr/", "overlay_key": "results/overlays/"},
         _item(old, "d", "NORMAL", 0.1) | {"sr_key": f"results/sr/{old}.dcm",
                                          "overlay_key": f"results/overlays/{old}.png"})
    result = runner.invoke(app, ["results", "--batch", "d", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert {item["object_key"]: (item["sr_key"], item["overlay_key"]) for item in json.loads(result.stdout)} == {
        key: (f"results/sr/{key}.dcm", f"results/overlays/{key}.png") for key in (new, old)}


def _rescored(key, batch, label, probability, previous_label, previous_probability=None, previous_status="SCORED"):
    item = _item(key, batch, label, probability) | {"model_version": "2026.11.26-1"}
    previous = {"status": previous_status, "model_version": "2026.11.25-3", "scored_at": utc_timestamp(NOW)}
    if previous_status == "FAILED":
        previous["reason"] = "corrupt"
    else:
        previous |= {"label": previous_label, "probability": previous_probability}
    return item | {"previous": previous}


@pytest.fixture
def rescored(target):
    table = boto3.resource("dynamodb", region_name=SETTINGS.region).Table(SETTINGS.table)
    for item in (_rescored("incoming/r/a.jpeg", "r", "PNEUMONIA", 0.81, "NORMAL", 0.64),
                 _rescored("incoming/r/b.jpeg", "r", "NORMAL", 0.10, "NORMAL", 0.12),
                 _rescored("incoming/r/c.jpeg", "r", "NORMAL", 0.30, None, previous_status="FAILED"),
                 _item("incoming/r/d.jpeg", "r", "NORMAL", 0.2)):  # scored once: no change to show
        table.put_item(Item=to_dynamodb(item))
    return target


def test_changes_show_each_rescore_and_whether_its_label_moved(rescored):
    outcome = runner.invoke(app, ["results", "--batch", "r", "--changes", "--format", "json"])

    assert outcome.exit_code == 0, outcome.output
    rows = {row["object_key"].rsplit("/", 1)[1]: row for row in json.loads(outcome.stdout)}
    assert sorted(rows) == ["a.jpeg", "b.jpeg", "c.jpeg"]
    assert (rows["a.jpeg"]["previous_label"], rows["a.jpeg"]["label"], rows["a.jpeg"]["label_changed"]) == (
        "NORMAL", "PNEUMONIA", True)
    assert (rows["a.jpeg"]["previous_model_version"], rows["a.jpeg"]["model_version"]) == (
        "2026.11.25-3", "2026.11.26-1")
    assert rows["a.jpeg"]["previous_probability"] == pytest.approx(0.64)
    assert rows["b.jpeg"]["label_changed"] is False
    assert (rows["c.jpeg"]["previous_label"], rows["c.jpeg"]["label_changed"]) == ("FAILED (corrupt)", True)


def test_changes_table_summarises_the_moves(rescored):
    outcome = runner.invoke(app, ["results", "--batch", "r", "--changes"])

    assert outcome.exit_code == 0, outcome.output
    assert "3 rescored by another model, 2 changed label: 1 FAILED (corrupt) -> NORMAL, 1 NORMAL -> PNEUMONIA" in \
        " ".join(outcome.output.split())


def _put(*items):
    table = boto3.resource("dynamodb", region_name=SETTINGS.region).Table(SETTINGS.table)
    for item in items:
        table.put_item(Item=to_dynamodb(item))


def test_warned_results_are_shown_counted_and_filtered(target):
    def warned(item, codes):
        return with_index_keys(item | {"warnings": codes})

    _put(warned(_item("incoming/b3/noise.png", "b3", "PNEUMONIA", 0.99), ["out_of_distribution"]),
         warned(_item("incoming/b3/photo.jpeg", "b3", "NORMAL", 0.31), ["out_of_distribution"]),
         warned(_item("incoming/b3/xray.jpeg", "b3", "PNEUMONIA", 0.88), []),
         warned(_item("incoming/b3/normal.jpeg", "b3", "NORMAL", 0.08), []),
         warned(_item("incoming/b3/blank.png", "b3", reason="blank_image"), []))

    table = runner.invoke(app, ["results", "--batch", "b3"], env={"COLUMNS": "220"})
    assert table.exit_code == 0, table.output
    rows = {line.split()[1]: line for line in table.stdout.splitlines() if "incoming/b3/" in line}
    assert "out_of_distribution" in rows["incoming/b3/noise.png"] and "out_of_distribution" not in rows["incoming/b3/xray.jpeg"]
    assert "5 result(s): 4 scored (2 PNEUMONIA, 2 warned), 1 failed" in table.output

    warned = json.loads(runner.invoke(app, ["results", "--batch", "b3", "--warned", "--format", "json"]).stdout)
    assert [item["object_key"] for item in warned] == ["incoming/b3/noise.png", "incoming/b3/photo.jpeg"]
    assert all(item["warnings"] == ["out_of_distribution"] for item in warned)

    # A warned NORMAL score is in the time index too (a plain NORMAL one is not).
    in_window = json.loads(runner.invoke(app, ["results", "--warned", "--since", "1h", "--format", "json"]).stdout)
    assert [item["object_key"] for item in in_window] == ["incoming/b3/noise.png", "incoming/b3/photo.jpeg"]
    warned_normal = json.loads(runner.invoke(
        app, ["results", "--warned", "--label", "normal", "--since", "1h", "--format", "json"]).stdout)
    assert [item["object_key"] for item in warned_normal] == ["incoming/b3/photo.jpeg"]

    spreadsheet = list(csv.DictReader(io.StringIO(
        runner.invoke(app, ["results", "--batch", "b3", "--warned", "--format", "csv"]).stdout)))
    assert [row["warnings"] for row in spreadsheet] == ['["out_of_distribution"]'] * 2


@pytest.mark.parametrize("arguments", [["--study", ""], ["--study", "1.2.abc"], ["--study", "1." * 1500 + "1"],
                                       ["--batch", ""]])
def test_an_empty_or_invalid_study_or_batch_is_a_usage_error(target, arguments):
    result = runner.invoke(app, ["results", *arguments])
    assert result.exit_code == 2, result.output  # a usage error, not a traceback
    assert arguments[0] in result.output


def test_subtypes_are_shown_counted_and_filtered(target):
    def positive(name, probability, subtype=None, warnings=()):
        item = _item(f"incoming/b4/{name}", "b4", "PNEUMONIA", 0.9)
        return with_index_keys(item | {"subtype_probability": probability, "warnings": list(warnings)}
                               | ({"subtype": subtype} if subtype else {}))

    _put(positive("lobar.jpeg", 0.05, "bacterial"), positive("diffuse.jpeg", 0.93, "viral"),
         positive("between.jpeg", 0.45, warnings=["subtype_uncertain"]),
         _item("incoming/b4/normal.jpeg", "b4", "NORMAL", 0.1),
         _item("incoming/b4/bad.jpeg", "b4", reason="not_an_image"))

    table = runner.invoke(app, ["results", "--batch", "b4"], env={"COLUMNS": "220"})
    assert table.exit_code == 0, table.output
    rows = {line.split()[1]: line for line in table.stdout.splitlines() if "incoming/b4/" in line}
    assert "viral" in rows["incoming/b4/diffuse.jpeg"] and "bacterial" in rows["incoming/b4/lobar.jpeg"]
    assert "uncertain" in rows["incoming/b4/between.jpeg"]
    assert not {"viral", "bacterial", "uncertain"} & set(rows["incoming/b4/normal.jpeg"].split())
    assert "5 result(s): 4 scored (3 PNEUMONIA: 1 bacterial, 1 viral, 1 uncertain, 1 warned), 1 failed" in table.output

    def keys(*arguments):
        result = runner.invoke(app, ["results", *arguments, "--format", "json"])
        assert result.exit_code == 0, result.output
        return [item["object_key"] for item in json.loads(result.stdout)]

    assert keys("--batch", "b4", "--subtype", "viral") == ["incoming/b4/diffuse.jpeg"]
    assert keys("--batch", "b4", "--subtype", "BACTERIAL") == ["incoming/b4/lobar.jpeg"]
    assert keys("--batch", "b4", "--subtype", "uncertain") == ["incoming/b4/between.jpeg"]
    # The attention index projects the subtype: a window is filtered without reading whole items.
    assert keys("--since", "1h", "--subtype", "viral") == ["incoming/b4/diffuse.jpeg"]
    refused = runner.invoke(app, ["results", "--batch", "b4", "--subtype", "viral", "--label", "normal"])
    assert refused.exit_code != 0 and "only PNEUMONIA results have a subtype" in refused.output
    spreadsheet = {row["object_key"]: row for row in csv.DictReader(io.StringIO(
        runner.invoke(app, ["results", "--batch", "b4", "--format", "csv"]).stdout))}
    assert spreadsheet["incoming/b4/diffuse.jpeg"]["subtype"] == "viral"
    assert spreadsheet["incoming/b4/between.jpeg"]["subtype_probability"] == "0.4500"
    assert spreadsheet["incoming/b4/normal.jpeg"]["subtype"] == ""
