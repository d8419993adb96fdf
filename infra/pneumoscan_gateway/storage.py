"""The storage SCP: C-STORE of chest radiographs in, each one spooled and uploaded under the
incoming prefix before the response says it is stored.

An instance the PACS was told is stored must not be lost, and a PACS waits only so long for a
response: each C-STORE is spooled (fsync'd), then uploaded with a deadline under the PACS's
DIMSE timeout. Success is answered only after the upload succeeded; a late or failed upload
is answered "out of resources" (0xA700), which a PACS retries, while the instance stays in the
spool and a background retry keeps uploading it. Either way the key is the same for the same
instance (`<batch>/<study>/<sop>.dcm`), so nothing is stored twice.

Patient data: the gateway's log names UIDs, SOP classes, transfer syntaxes and sizes only;
pynetdicom's own logger (which can dump headers at DEBUG) is kept at WARNING.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from .counters import Counters
from .spool import InvalidName, Spool, relative_key

logger = logging.getLogger("pneumoscan_gateway")

VERIFICATION = "1.2.840.10008.1.1"
# The image storage SOP classes a chest radiograph comes in.
RADIOGRAPH_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1": "CR Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
}
# The transfer syntaxes the scorer decodes (pneumoscan.dicom): others are refused at
# negotiation, so the PACS converts or keeps the instance instead of sending what cannot be scored.
SCORED_TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, RLELossless,
    JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless,
    JPEG2000Lossless, JPEG2000,
]

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # Storage: "Refused: Out of Resources"; PACSs retry it
SOP_CLASS_NOT_SUPPORTED = 0x0122
CANNOT_UNDERSTAND = 0xC000
# Association rejection (PS3.8 7.1.1.9): permanent, by the service user, calling AE title not recognised.
REJECT_PERMANENT, REJECT_BY_USER, CALLING_AE_NOT_RECOGNISED = 0x01, 0x01, 0x03

DEFAULT_UPLOAD_DEADLINE_S = 20.0  # under the 30 s DIMSE timeout most PACSs and dcmtk default to
DEFAULT_RETRY_INTERVAL_S = 30.0


@dataclass(frozen=True)
class AllowedPeer:
    """`AET` or `AET@host`: a calling AE title the gateway accepts, optionally from one address."""

    ae_title: str
    host: str | None = None

    @classmethod
    def parse(cls, text: str) -> AllowedPeer:
        ae_title, _, host = text.partition("@")
        ae_title = ae_title.strip()
        if not ae_title or len(ae_title) > 16:
            raise ValueError(f"{text!r}: an AE title is 1-16 characters")
        return cls(ae_title, host.strip() or None)

    def admits(self, ae_title: str, address: str) -> bool:
        return ae_title.strip() == self.ae_title and (self.host is None or self.host == address)


def utc_day() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


class Uploader:
    """Puts spooled instances under the incoming prefix, one upload per key at a time."""

    def __init__(self, s3: Any, bucket: str, incoming_prefix: str, spool: Spool, counters: Counters,
                 *, workers: int = 4):
        self.s3 = s3
        self.bucket = bucket
        self.incoming_prefix = incoming_prefix
        self.spool = spool
        self.counters = counters
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="upload")
        self._key_locks: dict[str, threading.Lock] = {}
        self._in_flight: dict[str, int] = {}
        self._lock = threading.Lock()

    def submit(self, key: str) -> Future:
        with self._lock:
            self._key_locks.setdefault(key, threading.Lock())
            self._in_flight[key] = self._in_flight.get(key, 0) + 1
        future = self._executor.submit(self._upload, key)
        future.add_done_callback(lambda _: self._done(key))
        return future

    def in_flight(self, key: str) -> bool:
        with self._lock:
            return self._in_flight.get(key, 0) > 0

    def _done(self, key: str) -> None:
        with self._lock:
            self._in_flight[key] -= 1
            if not self._in_flight[key]:
                del self._in_flight[key]
                self._key_locks.pop(key, None)

    def _upload(self, key: str) -> None:
        with self._lock:
            key_lock = self._key_locks[key]
        with key_lock:  # a retry of the same instance waits for the upload in hand
            path = self.spool.path_of(key)
            try:
                stamp = path.stat()
            except FileNotFoundError:
                return  # an earlier upload of the same bytes took it
            data = path.read_bytes()
            started = time.monotonic()
            self.s3.put_object(Bucket=self.bucket, Key=self.incoming_prefix + key, Body=data,
                               ContentType="application/dicom")
            # Only the bytes just uploaded leave the spool; a newer copy waits for its own upload.
            try:
                current = path.stat()
            except FileNotFoundError:
                current = None
            if current is not None and (current.st_mtime_ns, current.st_size) == (stamp.st_mtime_ns, stamp.st_size):
                self.spool.remove(key)
            self.counters.add("uploaded")
            logger.info("uploaded %s bytes=%d upload_ms=%.0f", key, len(data), (time.monotonic() - started) * 1000)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class StorageSCP:
    """The listening AE: C-ECHO, and C-STORE of the radiograph SOP classes."""

    def __init__(self, *, ae_title: str, host: str, port: int, allow: list[AllowedPeer], spool: Spool,
                 uploader: Uploader, counters: Counters, batch: Callable[[], str] = utc_day,
                 upload_deadline_s: float = DEFAULT_UPLOAD_DEADLINE_S,
                 retry_interval_s: float = DEFAULT_RETRY_INTERVAL_S, ssl_context: Any = None):
        from pynetdicom import AE, AllStoragePresentationContexts, evt  # noqa: F401 - evt used below

        if not allow:
            raise ValueError("no calling AE title is allowed: pass at least one --allow AET[@host]")
        self.allow = list(allow)
        self.spool = spool
        self.uploader = uploader
        self.counters = counters
        self.batch = batch
        self.upload_deadline_s = upload_deadline_s
        self.retry_interval_s = retry_interval_s
        self.ssl_context = ssl_context
        self.address = (host, port)
        self.ae = AE(ae_title=ae_title)
        # Every storage SOP class is negotiated, so one that is not a radiograph gets a C-STORE
        # status that says why (0x0122) instead of a bare rejected presentation context.
        for context in AllStoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax, SCORED_TRANSFER_SYNTAXES)
        self.ae.add_supported_context(VERIFICATION)
        self.ae.dimse_timeout = max(30.0, upload_deadline_s + 10)
        self._server: Any = None
        self._stopping = threading.Event()
        self._retrier: threading.Thread | None = None
        self._evt = evt

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> tuple[str, int]:
        """Replay the spool in the background, start listening; returns the bound address."""
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        # Reading the few UIDs the key needs never warns (a warning can quote a header value).
        pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
        discarded = self.spool.discard_partial_writes()
        if discarded:
            logger.info("removed %d partial spool writes (never answered as stored)", discarded)
        handlers = [(self._evt.EVT_REQUESTED, self._on_requested), (self._evt.EVT_C_ECHO, self._on_echo),
                    (self._evt.EVT_C_STORE, self._on_store)]
        self._server = self.ae.start_server(self.address, block=False, evt_handlers=handlers,
                                            ssl_context=self.ssl_context)
        bound = self._server.server_address[:2]
        self._stopping.clear()
        self._retrier = threading.Thread(target=self._retry_spool, name="spool-retry", daemon=True)
        self._retrier.start()
        logger.info("listening on %s:%d as %s (TLS %s), spool %s holds %d instance(s)", bound[0], bound[1],
                    self.ae.ae_title, "on" if self.ssl_context else "off", self.spool.root, self.spool.count())
        return bound

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._retrier is not None:
            self._retrier.join(timeout=5)
            self._retrier = None
        self.uploader.shutdown()

    def upload_spooled(self) -> int:
        """Upload what the spool holds (a restart's replay, and the retry of failed uploads)."""
        submitted = 0
        for key in self.spool.instances():
            if not self.uploader.in_flight(key):
                self.uploader.submit(key).add_done_callback(self._log_retry_failure(key))
                submitted += 1
        return submitted

    def _retry_spool(self) -> None:
        replayed = self.upload_spooled()
        if replayed:
            logger.info("replaying %d spooled instance(s)", replayed)
        while not self._stopping.wait(self.retry_interval_s):
            self.upload_spooled()

    @staticmethod
    def _log_retry_failure(key: str) -> Callable[[Future], None]:
        def check(future: Future) -> None:
            if not future.cancelled() and future.exception() is not None:
                logger.warning("upload of spooled %s failed (%s); retried later", key, type(future.exception()).__name__)
        return check

    # -- handlers --------------------------------------------------------------------------
    def _on_requested(self, event: Any) -> None:
        assoc = event.assoc
        calling = assoc.requestor.primitive.calling_ae_title.strip()
        address = assoc.requestor.address
        if any(peer.admits(calling, address) for peer in self.allow):
            logger.info("association from %s at %s", calling, address)
            return
        logger.warning("association from %s at %s rejected: not on the allow-list", calling, address)
        assoc.acse.send_reject(REJECT_PERMANENT, REJECT_BY_USER, CALLING_AE_NOT_RECOGNISED)
        assoc.is_rejected = True
        assoc.kill()

    def _on_echo(self, event: Any) -> int:
        return SUCCESS

    def _on_store(self, event: Any) -> int | Dataset:
        request = event.request
        sop_class, sop_uid = str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID)
        if sop_class not in RADIOGRAPH_SOP_CLASSES:
            self.counters.add("refused")
            logger.warning("refused sop_class=%s sop_uid=%s: not a radiograph storage SOP class", sop_class, sop_uid)
            return _status(SOP_CLASS_NOT_SUPPORTED, "SOP class is not a radiograph")
        data = event.encoded_dataset(include_meta=True)
        try:
            study_uid = str(event.dataset.get("StudyInstanceUID", "")).strip()
            key = relative_key(self.batch(), study_uid, sop_uid)
        except (InvalidName, ValueError) as exc:
            self.counters.add("refused")
            logger.warning("refused sop_uid=%s bytes=%d: %s", sop_uid, len(data), exc)
            return _status(CANNOT_UNDERSTAND, "no valid StudyInstanceUID/SOPInstanceUID")
        self.counters.add("received")
        logger.info("received sop_class=%s study_uid=%s sop_uid=%s transfer_syntax=%s bytes=%d", sop_class,
                    study_uid, sop_uid, event.context.transfer_syntax, len(data))
        try:
            self.spool.put(key, data)
        except OSError as exc:
            self.counters.add("upload_failed")
            logger.error("cannot spool %s (%s): answered out of resources", key, exc.strerror)
            return _status(OUT_OF_RESOURCES, "spool not writable")
        try:
            self.uploader.submit(key).result(timeout=self.upload_deadline_s)
        except FutureTimeout:
            self.counters.add("upload_failed")
            logger.warning("upload of %s not done in %.0f s: answered out of resources, kept in the spool",
                           key, self.upload_deadline_s)
            return _status(OUT_OF_RESOURCES, "upload timed out; retry")
        except Exception as exc:  # noqa: BLE001 - any failed upload is answered as one, never as stored
            self.counters.add("upload_failed")
            logger.warning("upload of %s failed (%s): answered out of resources, kept in the spool",
                           key, type(exc).__name__)
            return _status(OUT_OF_RESOURCES, "upload failed; retry")
        return SUCCESS


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    return status
