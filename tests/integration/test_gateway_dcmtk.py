"""`pneumoscan gateway` against dcmtk (echoscu, storescu, storescp) and dciodvfy, with S3 and
SQS on a moto server in this process built from template.yaml (the scorer is not needed here:
the structured reports are put where the scorer puts them).

Faults: S3 down while the modality sends (failure status, the retry succeeds, nothing lost);
the gateway killed mid-association and restarted (spool replayed, one object); a PACS that
refuses the SR (retried, then the return dead-letter queue); an AE title not on the list; a
non-image SOP class.
"""

from __future__ import annotations

import io
import socket
import subprocess
import threading

import pydicom
import pytest

from dicom_cases import PHI_MARKERS, radiograph, reference_pixels, to_bytes
from gateway_harness import (dcmtk, drain, free_ports, require_tool, start_gateway, storescu, wait_for,
                             wait_listening)
from pneumoscan import dicom, sr
from pneumoscan_cli.aws import LOCAL_CREDENTIALS
from pneumoscan_cli.template import create_resources, read_settings

STUDY = "1.2.826.0.1.3680043.8.498.22.1"
SERIES = "1.2.826.0.1.3680043.8.498.22.2"
RETURN_TRIES = 2
MOTO_ENVIRONMENT = {"AWS_ACCESS_KEY_ID": LOCAL_CREDENTIALS["aws_access_key_id"],
                    "AWS_SECRET_ACCESS_KEY": LOCAL_CREDENTIALS["aws_secret_access_key"], "AWS_DEFAULT_REGION": "us-east-1"}
SR_SCORE = sr.Score(model_name="pneumoscan-cnn", model_version="test", probability=0.81, label="PNEUMONIA",
                    positive=True, threshold=0.76)


class Moto:
    """A moto server on 127.0.0.1 that a test can stop and start again on the same port."""

    def __init__(self):
        from moto.server import ThreadedMotoServer

        self._factory = ThreadedMotoServer
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        self.host, self.port = self.server.get_host_and_port()
        self.url = f"http://{self.host}:{self.port}"

    def stop(self):
        self.server.stop()

    def start_again(self):
        self.server = self._factory(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def client(self, service):
        import boto3
        return boto3.client(service, endpoint_url=self.url, region_name="us-east-1", **LOCAL_CREDENTIALS)


@pytest.fixture(scope="module")
def stack():
    require_tool("storescu", "dcmtk")
    moto = Moto()
    settings = read_settings(parameter_overrides={"ReturnMaxReceiveCount": str(RETURN_TRIES)})
    created = create_resources(settings, s3=moto.client("s3"), sqs=moto.client("sqs"),
                               dynamodb=moto.client("dynamodb"))
    moto.bucket, moto.queues = settings.bucket, created
    yield moto
    moto.stop()


def _gateway_arguments(stack, batch, *extra, endpoint=None):
    return ("--endpoint-url", endpoint or stack.url, "--bucket", stack.bucket, "--batch", batch,
            "--return-queue-url", stack.queues.return_queue_url, "--allow", "MODALITY", "--allow", "PACS@127.0.0.1",
            "--allow", "ELSEWHERE@192.0.2.7", "--upload-deadline", "5", *extra)


def _radiograph(tmp_path, sop_uid, name="image.dcm", **attributes):
    ds = radiograph(reference_pixels(), ViewPosition="AP", **attributes)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = STUDY, SERIES, sop_uid
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    path = tmp_path / name
    path.write_bytes(to_bytes(ds))
    return path


def _after_file_meta(data: bytes) -> bytes:
    """The data set's bytes: what follows the preamble, 'DICM' and the file meta group."""
    assert data[128:132] == b"DICM"
    group_length = int.from_bytes(data[140:144], "little")  # (0002,0000) UL, explicit VR
    return data[144 + group_length:]


def _keys(stack, prefix):
    listed = stack.client("s3").list_objects_v2(Bucket=stack.bucket, Prefix=prefix)
    return [item["Key"] for item in listed.get("Contents", [])]


def _stored(run):
    return run.returncode == 0 and "Received Store Response (Success)" in run.stdout + run.stderr


@pytest.fixture()
def gateway(stack, tmp_path, request):
    started = []

    def start(batch, *extra, endpoint=None, log_name="gateway.log", spool=None):
        running = start_gateway(spool or tmp_path / "spool", *_gateway_arguments(stack, batch, *extra, endpoint=endpoint),
                                log_name=log_name, env=MOTO_ENVIRONMENT)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


def test_echo_and_a_stored_radiograph_uploaded_as_received(stack, gateway, tmp_path):
    running = gateway("store")
    echo = dcmtk("echoscu", "-v", "-aet", "MODALITY", "-aec", "PNEUMOSCAN", "127.0.0.1", str(running.port))
    assert echo.returncode == 0, echo.stdout + echo.stderr
    source = _radiograph(tmp_path, "1.2.826.0.1.3680043.8.498.22.10")
    run = storescu(running, source)
    assert _stored(run), run.stdout + run.stderr
    key = f"incoming/store/{STUDY}/1.2.826.0.1.3680043.8.498.22.10.dcm"
    body = stack.client("s3").get_object(Bucket=stack.bucket, Key=key)["Body"].read()
    assert _after_file_meta(body) == _after_file_meta(source.read_bytes())
    stored = pydicom.dcmread(io.BytesIO(body))
    assert stored.file_meta.TransferSyntaxUID == pydicom.dcmread(source).file_meta.TransferSyntaxUID
    status = running.status()
    assert (status["received"], status["uploaded"], status["in_spool"], status["failed"]) == (1, 1, 0, 0), status
    assert status["running"] is True


def test_calling_ae_titles_off_the_list_are_rejected(stack, gateway):
    running = gateway("reject")
    for calling in ("STRANGER", "ELSEWHERE"):  # ELSEWHERE is allowed from another host only
        echo = dcmtk("echoscu", "-v", "-aet", calling, "-aec", "PNEUMOSCAN", "127.0.0.1", str(running.port))
        output = echo.stdout + echo.stderr
        assert echo.returncode != 0 and "Association Rejected" in output, output
        assert "Calling AE Title Not Recognized" in output, output
    allowed = dcmtk("echoscu", "-aet", "PACS", "-aec", "PNEUMOSCAN", "127.0.0.1", str(running.port))
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr


def test_a_non_image_sop_class_is_refused_with_its_status(stack, gateway, tmp_path):
    running = gateway("refuse")
    facts = dicom.decode(_radiograph(tmp_path, "1.2.826.0.1.3680043.8.498.22.20").read_bytes()).dicom
    report = tmp_path / "report.dcm"
    report.write_bytes(sr.report_bytes(facts, SR_SCORE))
    run = storescu(running, report)
    output = run.stdout + run.stderr
    assert "Received Store Response (Refused: SOPClassNotSupported)" in output, output
    assert not _keys(stack, "incoming/refuse/")
    assert running.status()["refused"] == 1


def test_the_log_names_uids_and_sizes_only(stack, gateway, tmp_path):
    running = gateway("phi", "--log-level", "DEBUG")
    source = _radiograph(tmp_path, "1.2.826.0.1.3680043.8.498.22.30", PatientAge="045Y", **PHI_MARKERS)
    assert _stored(storescu(running, source))
    running.stop()
    log = running.log()
    assert "sop_uid=1.2.826.0.1.3680043.8.498.22.30" in log and "bytes=" in log, log
    leaked = [marker for marker in PHI_MARKERS.values() if marker in log]
    assert not leaked, log


def test_storage_down_answers_a_failure_and_the_retry_loses_nothing(stack, gateway, tmp_path):
    running = gateway("down", "--retry-interval", "3600")
    source = _radiograph(tmp_path, "1.2.826.0.1.3680043.8.498.22.40")
    stack.stop()
    try:
        run = storescu(running, source)
        output = run.stdout + run.stderr
        assert "Received Store Response (Refused: OutOfResources)" in output, output
        status = running.status()
        assert (status["upload_failed"], status["in_spool"], status["uploaded"]) == (1, 1, 0), status
    finally:
        stack.start_again()
    retry = storescu(running, source)  # the modality's retry
    assert _stored(retry), retry.stdout + retry.stderr
    assert _keys(stack, "incoming/down/") == [f"incoming/down/{STUDY}/1.2.826.0.1.3680043.8.498.22.40.dcm"]
    wait_for(lambda: running.status()["in_spool"] == 0, 10, "the spool to empty")


def _blackhole():
    """A TCP endpoint that accepts connections and never answers: an upload that hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held = []
    stopping = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stopping.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()

    def close():
        stopping.set()
        thread.join(timeout=5)
        for connection in held:
            connection.close()
        listener.close()

    return f"http://127.0.0.1:{listener.getsockname()[1]}", close


def test_a_gateway_killed_mid_association_replays_its_spool_without_a_duplicate(stack, gateway, tmp_path):
    hanging_endpoint, close = _blackhole()
    spool = tmp_path / "spool"
    try:
        running = gateway("killed", "--upload-deadline", "30", endpoint=hanging_endpoint, spool=spool)
        source = _radiograph(tmp_path, "1.2.826.0.1.3680043.8.498.22.50")
        sending = subprocess.Popen(
            [require_tool("storescu", "dcmtk"), "-v", "-aet", "MODALITY", "-aec", "PNEUMOSCAN", "127.0.0.1",
             str(running.port), str(source)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_for(lambda: list((spool / "pending").rglob("*.dcm")), 30, "the instance in the spool")
        running.kill()  # mid-association: the C-STORE response was never sent
        output, _ = sending.communicate(timeout=60)
        assert "Received Store Response (Success)" not in output, output
    finally:
        close()
    restarted = gateway("killed", spool=spool, log_name="restarted.log")
    key = f"incoming/killed/{STUDY}/1.2.826.0.1.3680043.8.498.22.50.dcm"
    wait_for(lambda: _keys(stack, "incoming/killed/") == [key], 30, "the replayed upload")
    wait_for(lambda: restarted.status()["in_spool"] == 0, 10, "the spool to empty")
    assert "replaying 1 spooled instance" in restarted.log()
    assert _stored(storescu(restarted, source))  # the modality's retry: the same key again
    assert _keys(stack, "incoming/killed/") == [key]


class Storescp:
    """storescp as the PACS the SRs go back to, listening before the gateway is told its port."""

    def __init__(self, tmp_path, *extra):
        self.received = tmp_path / "received"
        self.received.mkdir()
        self.log_path = tmp_path / "storescp.log"
        [self.port] = free_ports()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [require_tool("storescp", "dcmtk"), "-v", "-aet", "RETURNPACS", "-od", str(self.received), *extra,
                 str(self.port)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            wait_listening(self.process, self.port, self.log_path, "storescp")
        except BaseException:
            self.stop()
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=10)


def _put_report(stack, tmp_path, sop_uid):
    facts = dicom.decode(_radiograph(tmp_path, sop_uid, name=f"{sop_uid}.dcm").read_bytes()).dicom
    body = sr.report_bytes(facts, SR_SCORE)
    key = f"results/sr/incoming/returned/{STUDY}/{sop_uid}.dcm.dcm"
    stack.client("s3").put_object(Bucket=stack.bucket, Key=key, Body=body, ContentType="application/dicom")
    return pydicom.dcmread(io.BytesIO(body))


def test_structured_reports_go_back_to_the_pacs_and_validate(stack, gateway, tmp_path):
    drain(stack.client("sqs"), stack.queues.return_queue_url, stack.queues.return_dead_letter_queue_url)
    pacs = Storescp(tmp_path)
    try:
        running = gateway("returned", "--return-to", f"RETURNPACS@127.0.0.1:{pacs.port}", "--return-wait", "1")
        report = _put_report(stack, tmp_path, "1.2.826.0.1.3680043.8.498.22.60")
        files = wait_for(lambda: list(pacs.received.glob("*")), 30, "the SR at the PACS")
    finally:
        pacs.stop()
    returned = pydicom.dcmread(files[0])
    assert returned.SOPInstanceUID == report.SOPInstanceUID and returned.StudyInstanceUID == STUDY
    assert returned.Modality == "SR"
    wait_for(lambda: running.status()["returned"] == 1, 10, "the returned count")
    attributes = stack.client("sqs").get_queue_attributes(
        QueueUrl=stack.queues.return_queue_url, AttributeNames=["ApproximateNumberOfMessages",
                                                                "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    assert attributes == {"ApproximateNumberOfMessages": "0", "ApproximateNumberOfMessagesNotVisible": "0"}
    dciodvfy = require_tool("dciodvfy", "dicom3tools")
    checked = subprocess.run([dciodvfy, str(files[0])], capture_output=True, text=True, timeout=60)
    output = checked.stdout + checked.stderr
    assert "ComprehensiveSR" in output and not [line for line in output.splitlines() if line.startswith("Error")], output


def test_a_pacs_refusing_the_report_gets_retries_then_the_dead_letter_queue(stack, gateway, tmp_path):
    drain(stack.client("sqs"), stack.queues.return_queue_url, stack.queues.return_dead_letter_queue_url)
    pacs = Storescp(tmp_path, "--refuse")
    try:
        running = gateway("returned", "--return-to", f"RETURNPACS@127.0.0.1:{pacs.port}", "--return-wait", "1",
                          "--return-backoff", "1")
        _put_report(stack, tmp_path, "1.2.826.0.1.3680043.8.498.22.70")
        sqs = stack.client("sqs")

        def dead_letters():
            messages = sqs.receive_message(QueueUrl=stack.queues.return_dead_letter_queue_url,
                                           WaitTimeSeconds=1).get("Messages", [])
            return [m for m in messages if "ObjectCreated" in m["Body"]]

        dead = wait_for(dead_letters, 60, "the refused SR's notification in the return dead-letter queue")
        log = running.log()  # its tries, all made while storescp listened
    finally:
        pacs.stop()
    assert "1.2.826.0.1.3680043.8.498.22.70" in dead[0]["Body"]
    assert not list(pacs.received.glob("*"))
    status = running.status()
    assert status["returned"] == 0 and status["return_failed"] >= RETURN_TRIES, status
    # Every try was answered by the refusal, none taken for a failed connection.
    tries = [line for line in log.splitlines() if "not delivered" in line]
    assert len(tries) >= RETURN_TRIES, log
    assert all("association rejected (Rejected (Permanent); source: DUL service-user; reason: No reason given)"
               in line for line in tries), log + pacs.log()


def _certificates(folder):
    """A CA, and the gateway's and the modality's certificates it signed (openssl, 1 day)."""
    openssl = require_tool("openssl", "openssl")

    def run(*arguments):
        subprocess.run([openssl, *arguments], check=True, capture_output=True, timeout=60, cwd=folder)

    # As strict as Python's default verification (X.509 strict): key usages, key identifiers.
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
        "-subj", "/CN=pneumoscan test CA", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\nauthorityKeyIdentifier=keyid,issuer\n"
                                    "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n")
    for name in ("gateway", "modality"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "1", "-extfile", "san.ext")
    return folder


def test_tls_with_client_certificates(stack, gateway, tmp_path):
    certificates = _certificates(tmp_path)
    running = gateway("tls", "--tls-cert", str(certificates / "gateway.pem"),
                      "--tls-key", str(certificates / "gateway.key"), "--tls-ca", str(certificates / "ca.pem"))
    address = ("-aet", "MODALITY", "-aec", "PNEUMOSCAN", "127.0.0.1", str(running.port))
    trusted = ("+cf", str(certificates / "ca.pem"))
    mutual = dcmtk("echoscu", "-v", "+tls", str(certificates / "modality.key"), str(certificates / "modality.pem"),
                   *trusted, *address)
    assert mutual.returncode == 0, mutual.stdout + mutual.stderr
    anonymous = dcmtk("echoscu", "+tla", *trusted, *address)  # no client certificate: refused
    assert anonymous.returncode != 0
    plain = dcmtk("echoscu", *address)  # no TLS at all
    assert plain.returncode != 0
    source = _radiograph(tmp_path, "1.2.826.0.1.3680043.8.498.22.80")
    stored = storescu(running, source, extra=("+tls", str(certificates / "modality.key"),
                                              str(certificates / "modality.pem"), *trusted))
    assert _stored(stored), stored.stdout + stored.stderr
    assert _keys(stack, "incoming/tls/") == [f"incoming/tls/{STUDY}/1.2.826.0.1.3680043.8.498.22.80.dcm"]


def test_structured_reports_go_back_over_tls(stack, gateway, tmp_path):
    """The PACS's certificate checked against --tls-ca, the gateway's own offered to it."""
    certificates = _certificates(tmp_path)
    drain(stack.client("sqs"), stack.queues.return_queue_url, stack.queues.return_dead_letter_queue_url)
    pacs = Storescp(tmp_path, "+tls", str(certificates / "modality.key"), str(certificates / "modality.pem"),
                    "+cf", str(certificates / "ca.pem"))
    try:
        gateway("returned", "--return-to", f"RETURNPACS@127.0.0.1:{pacs.port}", "--return-wait", "1",
                "--tls-cert", str(certificates / "gateway.pem"), "--tls-key", str(certificates / "gateway.key"),
                "--tls-ca", str(certificates / "ca.pem"))
        report = _put_report(stack, tmp_path, "1.2.826.0.1.3680043.8.498.22.90")
        files = wait_for(lambda: list(pacs.received.glob("*")), 30, "the SR at the PACS over TLS")
    finally:
        pacs.stop()
    assert pydicom.dcmread(files[0]).SOPInstanceUID == report.SOPInstanceUID
