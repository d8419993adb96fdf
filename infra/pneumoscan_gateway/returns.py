"""The structured reports' way back: the return queue -> C-STORE to the PACS.

Each SR the scorer writes under `<results prefix>sr/` notifies the return queue (template.yaml).
The gateway long-polls it (outbound HTTPS only), reads the SR and sends it by C-STORE to the
configured destination, where the PACS files it in the source's study (the SR carries the
source's Study Instance UID). A notification is deleted only after the PACS acknowledged every
SR it names; a failed delivery comes back after a backoff that doubles with each try, and
after the queue's maxReceiveCount tries SQS moves it to the return dead-letter queue.
"""

from __future__ import annotations

import io
import logging
import threading
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pneumoscan.events import UnknownEvent, parse_message

from .counters import Counters

logger = logging.getLogger("pneumoscan_gateway")

# C-STORE statuses that mean stored: success and the storage warnings (coercion, elements
# discarded, data set does not match the SOP class: PS3.4 B.2.3).
STORED_STATUSES = {0x0000, 0xB000, 0xB006, 0xB007}
SQS_MAX_VISIBILITY_S = 43_200
DEFAULT_WAIT_S = 20
DEFAULT_BACKOFF_S = 30.0
DEFAULT_MAX_BACKOFF_S = 900.0


class DeliveryFailed(Exception):
    """The PACS did not take the SR (no association, a failure status, no response)."""


@dataclass(frozen=True)
class Destination:
    """`AET@host:port`: where the structured reports go."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        ae_title, at, address = text.partition("@")
        host, colon, port = address.rpartition(":")
        if not (at and colon and ae_title.strip() and host and port.isdigit()) or len(ae_title.strip()) > 16:
            raise ValueError(f"{text!r} is not AET@host:port")
        return cls(ae_title.strip(), host, int(port))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def backoff_s(receive_count: int, base_s: float, max_s: float) -> int:
    """Seconds before the next try: base, 2x base, 4x base ... capped (and SQS's 12 h limit)."""
    return int(min(base_s * 2 ** max(receive_count - 1, 0), max_s, SQS_MAX_VISIBILITY_S))


class ReturnPath:
    def __init__(self, *, sqs: Any, s3: Any, queue_url: str, bucket: str, destination: Destination,
                 calling_ae_title: str, counters: Counters, wait_s: int = DEFAULT_WAIT_S,
                 backoff_base_s: float = DEFAULT_BACKOFF_S, backoff_max_s: float = DEFAULT_MAX_BACKOFF_S,
                 tls_args: tuple[Any, str] | None = None, dimse_timeout_s: float = 30):
        from pynetdicom import AE

        self.sqs, self.s3 = sqs, s3
        self.queue_url, self.bucket = queue_url, bucket
        self.destination = destination
        self.counters = counters
        self.wait_s = wait_s
        self.backoff_base_s, self.backoff_max_s = backoff_base_s, backoff_max_s
        self.tls_args = tls_args
        self.ae = AE(ae_title=calling_ae_title)
        self.ae.dimse_timeout = dimse_timeout_s
        self.ae.acse_timeout = dimse_timeout_s
        self.ae.connection_timeout = dimse_timeout_s
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="return-path", daemon=True)
        self._thread.start()
        logger.info("returning structured reports to %s", self.destination)

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=self.wait_s + 5)
            self._thread = None

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.poll_once()
            except Exception as exc:  # noqa: BLE001 - the queue unreachable: wait, never die
                if self._stopping.is_set():
                    break
                logger.warning("return queue not reachable (%s); retrying in %.0f s", type(exc).__name__,
                               self.backoff_base_s)
                self._stopping.wait(self.backoff_base_s)

    def poll_once(self) -> int:
        """One long poll; returns how many notifications were delivered (and deleted)."""
        response = self.sqs.receive_message(
            QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=self.wait_s,
            MessageSystemAttributeNames=["ApproximateReceiveCount"])
        delivered = 0
        association = None
        try:
            for message in response.get("Messages", []):
                if self._stopping.is_set():
                    break  # left invisible until its timeout: delivered after the restart
                association, ok = self._deliver(message, association)
                delivered += ok
        finally:
            if association is not None and association.is_established:
                association.release()
        return delivered

    def _deliver(self, message: dict[str, Any], association: Any) -> tuple[Any, bool]:
        receive_count = int(message.get("Attributes", {}).get("ApproximateReceiveCount", 1))
        try:
            parsed = parse_message(message["Body"], bucket=self.bucket)
            for created in parsed.objects:
                association = self._send(self._read(created.key, created.version_id), association)
        except (UnknownEvent, DeliveryFailed, Exception) as exc:  # noqa: BLE001 - each failure is retried, then dead-lettered
            self.counters.add("return_failed")
            delay = backoff_s(receive_count, self.backoff_base_s, self.backoff_max_s)
            logger.warning("structured report not delivered to %s (try %d: %s); next try in %d s",
                           self.destination, receive_count, _reason(exc), delay)
            self.sqs.change_message_visibility(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"],
                                               VisibilityTimeout=delay)
            if association is not None and not association.is_established:
                association = None
            return association, False
        self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
        return association, True

    def _read(self, key: str, version_id: str | None) -> Any:
        arguments = {"Bucket": self.bucket, "Key": key} | ({"VersionId": version_id} if version_id else {})
        body = self.s3.get_object(**arguments)["Body"].read()
        return pydicom.dcmread(io.BytesIO(body))

    def _send(self, dataset: Any, association: Any) -> Any:
        if association is None or not association.is_established:
            association = self._associate(dataset.SOPClassUID)
        status = association.send_c_store(dataset)
        code = int(getattr(status, "Status", -1)) if status else -1
        if code not in STORED_STATUSES:
            raise DeliveryFailed(f"C-STORE status 0x{code:04X}" if code >= 0 else "no C-STORE response")
        self.counters.add("returned")
        logger.info("returned sr_sop_uid=%s study_uid=%s to %s", dataset.SOPInstanceUID, dataset.StudyInstanceUID,
                    self.destination)
        return association

    def _associate(self, sop_class: str) -> Any:
        from pynetdicom import evt
        from pynetdicom.pdu import A_ASSOCIATE_RJ

        self.ae.requested_contexts = []
        self.ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        # pynetdicom's requesting thread can find the connection already closed by the PACS's
        # A-ASSOCIATE-RJ (its reader thread closes it on receipt) and then reports a failed
        # connection, not the rejection: the reject PDU is taken where the reader decodes it.
        rejects: list[Any] = []

        def received(event: Any) -> None:
            if isinstance(event.pdu, A_ASSOCIATE_RJ):
                rejects.append(event.pdu)

        association = self.ae.associate(self.destination.host, self.destination.port,
                                        ae_title=self.destination.ae_title, tls_args=self.tls_args,
                                        evt_handlers=[(evt.EVT_PDU_RECV, received)])
        if not association.is_established:
            if rejects:
                raise DeliveryFailed(f"association rejected ({_rejection(rejects[0])})")
            raise DeliveryFailed("association rejected" if association.is_rejected else "no association")
        return association


def _rejection(pdu: Any) -> str:
    """The A-ASSOCIATE-RJ's result, source and reason (PS3.8 9.3.4), as pynetdicom names them."""
    try:
        return f"{pdu.result_str}; source: {pdu.source_str}; reason: {pdu.reason_str}"
    except ValueError:  # a value the standard does not define: the numbers
        return f"result {pdu.result}; source {pdu.source}; reason {pdu.reason_diagnostic}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, (DeliveryFailed, UnknownEvent)):
        return str(exc)[:200]
    return type(exc).__name__
