"""The gateway's parts without a network: names, spool, counters, upload races, return retries
(and the return path's association with an SCP on loopback, in this process)."""

from __future__ import annotations

import json
import threading

import pytest

from dicom_cases import CASES
from pneumoscan_gateway.counters import Counters
from pneumoscan_gateway.returns import SQS_MAX_VISIBILITY_S, DeliveryFailed, Destination, ReturnPath, backoff_s
from pneumoscan_gateway.spool import InvalidName, Spool, relative_key
from pneumoscan_gateway.storage import SCORED_TRANSFER_SYNTAXES, AllowedPeer, Uploader

STUDY, SOP = "1.2.3.4", "1.2.3.4.5"


def test_allow_list_entries_take_an_ae_title_and_optionally_a_host():
    assert AllowedPeer.parse("PACS") == AllowedPeer("PACS", None)
    assert AllowedPeer.parse("PACS@10.0.0.5") == AllowedPeer("PACS", "10.0.0.5")
    assert AllowedPeer.parse("PACS").admits("PACS  ", "192.0.2.1")
    assert not AllowedPeer.parse("PACS@10.0.0.5").admits("PACS", "10.0.0.6")
    assert not AllowedPeer.parse("PACS").admits("PACS2", "10.0.0.5")
    for bad in ("", "@host", "A" * 17):
        with pytest.raises(ValueError):
            AllowedPeer.parse(bad)


def test_return_destination_is_aet_at_host_and_port():
    assert Destination.parse("PACS@pacs.example:104") == Destination("PACS", "pacs.example", 104)
    for bad in ("PACS", "PACS@host", "@host:104", "PACS@host:port", "A" * 17 + "@h:1"):
        with pytest.raises(ValueError):
            Destination.parse(bad)


def test_backoff_doubles_with_each_try_up_to_its_cap():
    assert [backoff_s(count, 30, 900) for count in (1, 2, 3, 4, 5, 6, 7)] == [30, 60, 120, 240, 480, 900, 900]
    assert backoff_s(40, 30, 10 ** 9) == SQS_MAX_VISIBILITY_S


def test_keys_are_made_of_valid_uids_and_a_safe_batch_only():
    assert relative_key("2026-12-02", STUDY, SOP) == f"2026-12-02/{STUDY}/{SOP}.dcm"
    for batch, study, sop in (("b", "1.2.x", SOP), ("b", STUDY, "../1.2"), ("a/b", STUDY, SOP), ("..", STUDY, SOP),
                              ("b", "", SOP), ("b", "1." * 40, SOP)):
        with pytest.raises(InvalidName):
            relative_key(batch, study, sop)


def test_transfer_syntaxes_accepted_are_those_the_scorer_is_tested_to_decode():
    assert set(SCORED_TRANSFER_SYNTAXES) == {case.transfer_syntax for case in CASES}


def test_spool_writes_whole_files_and_lists_only_those(tmp_path):
    spool = Spool(tmp_path)
    key = relative_key("b", STUDY, SOP)
    spool.put(key, b"DICM-bytes")
    (spool.path_of(key).parent / ".half.part").write_bytes(b"half")  # a killed write
    assert list(spool.instances()) == [key] and spool.read(key) == b"DICM-bytes"
    assert spool.discard_partial_writes() == 1
    spool.remove(key)
    assert spool.count() == 0 and list(spool.pending_dir.iterdir()) == []  # no empty folders left


def test_counters_survive_a_restart(tmp_path):
    counters = Counters.load(tmp_path)
    counters.add("received")
    counters.add("upload_failed")
    counters.describe(pid=123)
    again = Counters.load(tmp_path)
    assert (again.counts.received, again.counts.failed) == (1, 1)
    assert json.loads((tmp_path / "status.json").read_text())["pid"] == 123


class _S3:
    def __init__(self, during_put=None, error=None):
        self.puts, self.during_put, self.error = [], during_put, error

    def put_object(self, **arguments):
        if self.error:
            raise self.error
        if self.during_put:
            self.during_put()
        self.puts.append((arguments["Key"], arguments["Body"]))


def test_an_upload_removes_only_the_bytes_it_uploaded(tmp_path):
    """A retry of the same instance rewrites the spool file while its first upload runs: the
    rewritten file stays for its own upload."""
    spool, counters = Spool(tmp_path), Counters.load(tmp_path)
    key = relative_key("b", STUDY, SOP)
    spool.put(key, b"first")
    s3 = _S3(during_put=lambda: spool.put(key, b"second, longer"))
    uploader = Uploader(s3, "bucket", "incoming/", spool, counters)
    uploader.submit(key).result(timeout=10)
    assert s3.puts == [(f"incoming/{key}", b"first")] and spool.read(key) == b"second, longer"
    s3.during_put = None
    uploader.submit(key).result(timeout=10)
    assert s3.puts[-1] == (f"incoming/{key}", b"second, longer") and spool.count() == 0
    assert counters.counts.uploaded == 2
    uploader.shutdown()


def test_a_failed_upload_keeps_the_instance_in_the_spool(tmp_path):
    spool, counters = Spool(tmp_path), Counters.load(tmp_path)
    key = relative_key("b", STUDY, SOP)
    spool.put(key, b"bytes")
    uploader = Uploader(_S3(error=ConnectionError("down")), "bucket", "incoming/", spool, counters)
    with pytest.raises(ConnectionError):
        uploader.submit(key).result(timeout=10)
    assert spool.count() == 1 and counters.counts.uploaded == 0
    uploader.shutdown()


class _SQS:
    def __init__(self, messages):
        self.messages, self.deleted, self.visibility = messages, [], []

    def receive_message(self, **_):
        messages, self.messages = self.messages, []
        return {"Messages": messages}

    def delete_message(self, ReceiptHandle, **_):  # noqa: N803 - the API's own name
        self.deleted.append(ReceiptHandle)

    def change_message_visibility(self, ReceiptHandle, VisibilityTimeout, **_):  # noqa: N803
        self.visibility.append((ReceiptHandle, VisibilityTimeout))


class _MissingS3:
    def get_object(self, **_):
        raise FileNotFoundError("no such key")


def _notification(key):
    return json.dumps({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                                    "s3": {"bucket": {"name": "bucket"}, "object": {"key": key, "size": 10}}}]})


def test_a_failed_return_is_put_back_with_its_backoff_and_a_test_event_is_acknowledged(tmp_path):
    sqs = _SQS([
        {"ReceiptHandle": "test", "Body": json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent",
                                                     "Bucket": "bucket"}), "Attributes": {"ApproximateReceiveCount": "1"}},
        {"ReceiptHandle": "sr", "Body": _notification("results/sr/incoming/b/x.dcm.dcm"),
         "Attributes": {"ApproximateReceiveCount": "3"}},
    ])
    counters = Counters.load(tmp_path)
    returns = ReturnPath(sqs=sqs, s3=_MissingS3(), queue_url="q", bucket="bucket",
                         destination=Destination("PACS", "127.0.0.1", 1), calling_ae_title="PNEUMOSCAN",
                         counters=counters, wait_s=1, backoff_base_s=10)
    assert returns.poll_once() == 1
    assert sqs.deleted == ["test"] and sqs.visibility == [("sr", 40)]
    assert counters.counts.return_failed == 1 and counters.counts.returned == 0


def test_a_rejected_association_is_named_so_even_when_the_connection_closed_first(tmp_path):
    """pynetdicom's reader thread closes the connection as the A-ASSOCIATE-RJ arrives; the
    requesting thread, held here until then, finds it closed and reports a failed connection."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import ComprehensiveSRStorage

    pacs = AE(ae_title="PACS")
    pacs.add_supported_context(ComprehensiveSRStorage)
    pacs.require_calling_aet = ["MODALITY"]
    server = pacs.start_server(("127.0.0.1", 0), block=False)
    try:
        returns = ReturnPath(sqs=None, s3=None, queue_url="q", bucket="bucket",
                             destination=Destination("PACS", "127.0.0.1", server.server_address[1]),
                             calling_ae_title="PNEUMOSCAN", counters=Counters.load(tmp_path))
        closed, held = threading.Event(), []
        associate = returns.ae.associate

        def closed_first(*arguments, evt_handlers=(), **options):
            handlers = [*evt_handlers, (evt.EVT_CONN_CLOSE, lambda _: closed.set()),
                        (evt.EVT_REQUESTED, lambda _: held.append(closed.wait(10)))]
            return associate(*arguments, evt_handlers=handlers, **options)

        returns.ae.associate = closed_first
        with pytest.raises(DeliveryFailed) as failed:
            returns._associate(ComprehensiveSRStorage)
    finally:
        server.shutdown()
    assert held == [True]  # the connection was closed before the requesting thread went on
    assert str(failed.value) == ("association rejected (Rejected (Permanent); source: DUL service-user; "
                                 "reason: Calling AE title not recognised)")


def test_the_gateway_does_not_import_the_lambda_handler():
    import subprocess
    import sys
    code = ("import sys, pneumoscan_cli.gateway, pneumoscan_gateway.storage, pneumoscan_gateway.returns; "
            "print('app' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.stdout.strip() == "False", run.stderr
