"""The round trip with Orthanc as the PACS: Orthanc sends a radiograph to `pneumoscan gateway`
(its REST `/modalities/.../store`), the local stack scores it and writes the SR, the gateway
sends the SR back, and Orthanc holds it in the radiograph's study (same Study Instance UID).

Orthanc runs with its own configuration, storage and free ports in a temporary folder, its HTTP
API refusing remote clients and its DICOM side accepting stores only from the gateway's AE
title at 127.0.0.1 (Orthanc 1.10 has no option to bind to one address).
"""

from __future__ import annotations

import io
import json
import subprocess
import urllib.error
import urllib.request

import pydicom
import pytest

from dicom_cases import radiograph, reference_pixels, to_bytes
from gateway_harness import drain, free_ports, require_tool, start_gateway, wait_for, wait_listening

STUDY = "1.2.826.0.1.3680043.8.498.22.100"
SERIES = "1.2.826.0.1.3680043.8.498.22.101"
SOP = "1.2.826.0.1.3680043.8.498.22.102"
ORTHANC_STARTUP_S = 60
ROUND_TRIP_S = 180
SCORER_IDLE_S = 300
HTTP_TIMEOUT_S = 60


class Orthanc:
    def __init__(self, folder):
        self.http_port, self.dicom_port = free_ports(2)
        folder.mkdir(parents=True)
        self.config = folder / "orthanc.json"
        self.config.write_text(json.dumps({
            "Name": "pneumoscan-test", "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "index"), "Plugins": [], "HttpPort": self.http_port,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomAet": "ORTHANC",
            "DicomPort": self.dicom_port, "DicomAlwaysAllowStore": False, "DicomAlwaysAllowEcho": False,
            "DicomCheckModalityHost": True, "DicomModalities": {}, "StableAge": 1}))
        self.log = folder / "orthanc.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen([require_tool("Orthanc", "orthanc"), str(self.config)], stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for(self._up, ORTHANC_STARTUP_S, "Orthanc's REST API")
        wait_listening(self.process, self.dicom_port, self.log, "Orthanc's DICOM server", ORTHANC_STARTUP_S)

    def _up(self):
        if self.process.poll() is not None:
            pytest.fail(f"Orthanc exited:\n{self.log.read_text(errors='replace')}")
        try:
            return self.get("/system")
        except (urllib.error.URLError, ConnectionError):
            return None

    def request(self, method, path, body=None, content_type="application/json"):
        data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=data, method=method,
                                         headers={"Content-Type": content_type} if data is not None else {})
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            payload = response.read()
        return json.loads(payload) if payload[:1] in (b"{", b"[") else payload

    def get(self, path):
        return self.request("GET", path)

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture()
def orthanc(tmp_path):
    pacs = Orthanc(tmp_path / "orthanc")
    yield pacs
    pacs.stop()


def _only_this_tests_reports_to_return(stack):
    """The session's stack notifies its return queue of every SR the earlier tests' DICOMs got, and
    the gateway returns whatever that queue holds; so once the scorer is idle (no SR still to come
    from them), the queue is emptied."""
    sqs = stack.target.client("sqs")

    def scorer_idle():
        attributes = sqs.get_queue_attributes(QueueUrl=stack.target.queue_url, AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        return all(count == "0" for count in attributes.values())

    wait_for(scorer_idle, SCORER_IDLE_S, "the scoring queue to empty", interval_s=1)
    drain(sqs, stack.target.return_queue_url)


def test_orthanc_sends_a_radiograph_and_gets_its_sr_back_in_the_study(local_stack, orthanc, tmp_path):
    _only_this_tests_reports_to_return(local_stack)
    gateway = start_gateway(tmp_path / "spool", "--batch", "pacs", "--allow", "ORTHANC@127.0.0.1",
                            "--return-to", f"ORTHANC@127.0.0.1:{orthanc.dicom_port}", "--return-wait", "1",
                            env=local_stack.env)
    try:
        orthanc.request("PUT", "/modalities/pneumoscan", {"AET": gateway.ae_title, "Host": "127.0.0.1",
                                                          "Port": gateway.port})
        ds = radiograph(reference_pixels(), ViewPosition="PA", PatientID="TEST-22", PatientName="TEST^GATEWAY")
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = STUDY, SERIES, SOP
        ds.file_meta.MediaStorageSOPInstanceUID = SOP
        image = orthanc.request("POST", "/instances", to_bytes(ds), "application/dicom")
        stored = orthanc.request("POST", "/modalities/pneumoscan/store", {"Resources": [image["ID"]],
                                                                          "Synchronous": True})
        assert stored.get("FailedInstancesCount", 0) == 0, stored

        def sr_in_study():
            return orthanc.request("POST", "/tools/find", {"Level": "Instance", "Expand": True,
                                                           "Query": {"StudyInstanceUID": STUDY, "Modality": "SR"}})

        found = wait_for(sr_in_study, ROUND_TRIP_S, "the structured report in Orthanc", interval_s=1)
    finally:
        gateway.stop()
    report = pydicom.dcmread(io.BytesIO(orthanc.request("GET", f"/instances/{found[0]['ID']}/file")))
    assert report.StudyInstanceUID == STUDY and report.Modality == "SR"
    evidence = report.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == STUDY
    assert evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == SOP
    status = gateway.status()
    assert (status["received"], status["uploaded"], status["returned"], status["in_spool"]) == (1, 1, 1, 0), status
