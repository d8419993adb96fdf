"""Lambda handler: S3 ObjectCreated events in SQS -> LiteRT pneumonia score -> one DynamoDB item.

Each SQS record succeeds or fails on its own (partial batch response). A permanently
bad input becomes a FAILED item and the record succeeds, so it is never retried; a
transient AWS error fails only its record and SQS redelivers it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import time
from collections.abc import Iterator
from typing import Any

import botocore.session
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import BotoCoreError, ClientError

from pneumoscan import results, telemetry
from pneumoscan.events import MISSING_OBJECT_CODES, ObjectCreated, UnknownEvent, parse_message
from pneumoscan.formats import DicomFacts
from pneumoscan.model import ModelLoadError
from pneumoscan.scoring import ImageRejected, ImageScore, Scorer, check_size
from pneumoscan.settings import RETRY_CONFIG, Settings


settings = Settings.from_env()
# One compact JSON line per image at INFO: CloudWatch Logs bills every byte ingested. The
# time, the request and the trace are on Lambda's own START/REPORT lines of the invocation,
# the service is the log group's; the stage timings are in the item and the latency metrics.
logger = Logger(location=None, timestamp=None, xray_trace_id=None)
logger.remove_keys(["service"])
metrics = Metrics()
processor = BatchProcessor(event_type=EventType.SQS)


@contextlib.contextmanager
def _kept_for_the_container() -> Iterator[None]:
    """For the init's long-lived objects: the cyclic garbage collector is paused while they
    are made, then everything tracked so far (the imported modules too, all of which live as
    long as the container) is frozen out of its reach, so no collection walks it again, at
    the init or later. On an error the collector only resumes."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
        gc.freeze()
    finally:
        if was_enabled:
            gc.enable()


def _load_scorer() -> Scorer:
    try:
        # A model without a threshold or CAM weights breaks the model contract: it fails here too.
        return Scorer.load(num_threads=settings.inference_threads)
    except (ModelLoadError, ValueError):
        # Failing the init fails every record of every batch, so all of them are
        # retried once a good model is deployed instead of being scored wrongly.
        logger.exception("the model could not be loaded; no record can be scored")
        raise


# The clients add ~40k objects (botocore's parsed service models) to the ~85k of the imports:
# a full collection while they are made walks all of them and finds next to nothing to free.
with _kept_for_the_container():
    # botocore's clients, not boto3's: boto3 would import s3transfer (and with it multiprocessing and
    # concurrent.futures) at every cold start for transfer methods the handler never calls.
    # The region, credentials and AWS_ENDPOINT_URL come from the environment as they would for boto3.
    _aws = botocore.session.get_session()
    s3_client = _aws.create_client("s3", config=RETRY_CONFIG)
    dynamodb_client = _aws.create_client("dynamodb", config=RETRY_CONFIG)
    scorer = _load_scorer()
model = scorer.model
# What this invocation scored: counted per result, emitted once per batch of records.
tally = telemetry.BatchTally(positive_label=model.metadata.positive_label)
result_store = results.ResultStore(dynamodb_client, settings.table_name, incoming_prefix=settings.incoming_prefix,
                                   positive_label=model.metadata.positive_label)


class Rejected(Exception):
    """The object cannot be scored, permanently: recorded as a FAILED item."""

    def __init__(self, reason: str, error: str, source: results.SourceObject | None = None,
                 dicom: DicomFacts | None = None):
        super().__init__(f"{reason}: {error}")
        self.failure = results.Failure(reason, error, dicom)
        self.source = source


def record_handler(record: SQSRecord) -> None:
    logger.set_correlation_id(record.message_id)
    logger.remove_keys(["object", "object_key"])
    try:
        _handle_message(record)
    except Exception:
        # Transient (throttling, 5xx, a racing write): only this record fails and SQS redelivers it.
        logger.exception("record failed; SQS will redeliver it")
        raise


def _handle_message(record: SQSRecord) -> None:
    try:
        message = parse_message(record.body, bucket=settings.images_bucket)
    except UnknownEvent as exc:
        _record_unknown_event(record, exc)
        return
    for reason in message.skipped:
        logger.info("notification acknowledged without scoring", extra={"skipped": reason})
        metrics.add_metric(name="NotificationsSkipped", unit=MetricUnit.Count, value=1)
    for created in message.objects:
        _score_object(created)


def _score_object(created: ObjectCreated) -> None:
    log_keys = {"object": results.key_digest(created.key)}
    if settings.log_keys_in_clear:
        log_keys["object_key"] = created.key
    logger.append_keys(**log_keys)

    seen = result_store.current(created.key, consistent=False)
    # An event naming its version is checked against the result before S3 is asked anything.
    # Without one (an unversioned bucket, or moto), the ETag alone cannot tell a redelivery
    # from a re-upload of the same bytes: the version is read from the GET's headers first.
    if created.version_id and _already_done(seen, created.version_id, created.etag):
        _report_duplicate()
        return

    source = results.SourceObject(version_id=created.version_id, etag=created.etag, uploaded_at=created.event_time)
    overlay_key, sr_key, sr_error, timings = None, None, None, {}
    start = time.perf_counter()
    try:
        if not created.key.startswith(settings.incoming_prefix):
            raise Rejected("outside_prefix", f"only keys under {settings.incoming_prefix} are scored")
        body, source = _open(created, source)
        try:
            if not created.version_id and _already_done(seen, source.version_id, source.etag):
                _report_duplicate()
                return
            data = _read(body, source)
        finally:
            body.close()  # when unread, the connection is dropped instead of downloading the rest
        timings["fetch"] = _elapsed_ms(start)
        try:
            outcome: ImageScore | results.Failure = scorer.score(data, overlay=settings.overlay_images)
        except ImageRejected as exc:
            raise Rejected(exc.reason, exc.detail, source, exc.dicom) from exc
        timings.update(outcome.timings_ms)
        if outcome.heat_map_error:
            logger.warning("heat map failed; the image is scored without it",
                           extra={"error": outcome.heat_map_error})
            metrics.add_metric(name="OverlayErrors", unit=MetricUnit.Count, value=1)
        if outcome.overlay_png is not None:
            overlay_key, overlay_error = _write_overlay(created, outcome.overlay_png)
            if overlay_error:
                outcome = dataclasses.replace(outcome, heat_map_error=overlay_error)
        if outcome.image.dicom is not None and settings.structured_reports:
            sr_key, sr_error = _write_structured_report(created, outcome)
    except Rejected as rejected:
        outcome, source = rejected.failure, rejected.source or source
    except _Superseded:
        return
    timings["total"] = _elapsed_ms(start)

    item = results.object_item(created.key, batch=results.batch_of(created.key, settings.incoming_prefix),
                               source=source, model=model.metadata, outcome=outcome, timings_ms=timings,
                               overlay_key=overlay_key, sr_key=sr_key, sr_error=sr_error)
    written = result_store.save(item, seen)
    _report(item, outcome, written)


def _already_done(seen: dict | None, version_id: str | None, etag: str | None) -> bool:
    return result_store.already_done(seen, version_id=version_id, etag=etag,
                                     model_sha256=model.sha256, model_version=model.version)


def _elapsed_ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)


class _Superseded(Exception):
    """A newer version of the object exists; its own event scores it."""


def _open(created: ObjectCreated, source: results.SourceObject) -> tuple[Any, results.SourceObject]:
    """One GET of what S3 holds under the key now. Its headers decide before any of the body is
    read (deletion, a newer upload, the size), so no HEAD is needed, and the facts recorded
    (size, ETag, version) are those of the bytes that will be read."""
    try:
        response = s3_client.get_object(Bucket=created.bucket, Key=created.key)
    except ClientError as exc:
        _reject_if_missing(exc, source)
        raise
    current_version, current_etag = response.get("VersionId"), response["ETag"].strip('"')
    # The version where the event names one; otherwise the ETag (a later upload of other bytes).
    if created.version_id and current_version:
        superseded = current_version != created.version_id
    else:
        superseded = bool(created.etag) and current_etag != created.etag
    if superseded:
        response["Body"].close()
        logger.info("a newer upload of the object exists; this event is superseded")
        metrics.add_metric(name="EventsSuperseded", unit=MetricUnit.Count, value=1)
        raise _Superseded()
    return response["Body"], dataclasses.replace(source, size_bytes=response["ContentLength"], etag=current_etag,
                                                 version_id=current_version or created.version_id)


def _read(body: Any, source: results.SourceObject) -> bytes:
    """The object's bytes, unless its Content-Length is over the size cap: refused unread."""
    try:
        check_size(source.size_bytes, settings.max_object_bytes)
    except ImageRejected as exc:
        raise Rejected(exc.reason, exc.detail, source) from exc
    return body.read()


def _reject_if_missing(exc: ClientError, source: results.SourceObject) -> None:
    if exc.response.get("Error", {}).get("Code") in MISSING_OBJECT_CODES:
        raise Rejected(results.OBJECT_MISSING, "the object was deleted before it could be scored", source) from exc


def _write_overlay(created: ObjectCreated, png: bytes) -> tuple[str | None, str | None]:
    """The heat-map overlay under the results prefix: its key, or why it was not written."""
    key = results.overlay_key(created.key, settings.results_prefix)
    error = _put_derived(created, key, png, "image/png", "OverlayErrors")
    return (None, error) if error else (key, None)


def _put_derived(created: ObjectCreated, key: str, body: bytes, content_type: str, error_metric: str) -> str | None:
    """Put an object derived from the score (outside the notification prefix, so it never
    triggers a scoring); None, or why it could not be written. A derived object is an aid:
    once botocore's retries are spent, the score is recorded without it, never retried."""
    try:
        s3_client.put_object(Bucket=created.bucket, Key=key, Body=body, ContentType=content_type,
                             Metadata={"model-version": model.version})
    except (BotoCoreError, ClientError) as exc:
        logger.exception("derived object not written; the image is scored without it", extra={"derived": key})
        metrics.add_metric(name=error_metric, unit=MetricUnit.Count, value=1)
        # S3's error code (SlowDown, AccessDenied) or botocore's error type: one short fixed clause.
        code = exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else None
        return f"not written ({code or type(exc).__name__})"
    return None


def _write_structured_report(created: ObjectCreated, score: ImageScore) -> tuple[str | None, str | None]:
    """The score as a DICOM SR in the source's study, under the results prefix: (key, None),
    or (None, why) when it cannot be made or written; the SR never holds back the score."""
    from pneumoscan import sr  # highdicom: loaded with the first DICOM object, like pydicom

    try:
        body = sr.report_for(score, model.metadata)
    except Exception as exc:  # noqa: BLE001 - an SR is an output of the score, not a condition for it
        # The SR's own refusals say which header element was unusable, by name; anything else
        # (highdicom's checks) may quote the header, so only its type is kept.
        error = str(exc) if isinstance(exc, sr.ReportNotPossible) else f"not made ({type(exc).__name__})"
        logger.warning("no structured report; the image is scored without it", extra={"error": error})
        metrics.add_metric(name="StructuredReportErrors", unit=MetricUnit.Count, value=1)
        return None, error
    key = results.structured_report_key(created.key, settings.results_prefix)
    error = _put_derived(created, key, body, "application/dicom", "StructuredReportErrors")
    return (None, error) if error else (key, None)


def _report_duplicate() -> None:
    logger.info("this object version already has a result from this model or a newer one; delivery skipped")
    metrics.add_metric(name="DuplicatesSkipped", unit=MetricUnit.Count, value=1)


def _report(item: dict, outcome: ImageScore | results.Failure, written: str) -> None:
    if written == "duplicate":
        _report_duplicate()
        return
    tally.observe(item)
    facts = {"status": item[results.STATUS], "write": written, "total_ms": item[results.TIMINGS_MS].get("total")}
    if isinstance(outcome, results.Failure):
        logger.warning("image not scored", extra=dict(facts, reason=outcome.reason, error=outcome.error))
        return
    facts.update(label=outcome.label, probability=round(outcome.probability, 4))
    if outcome.warnings:
        facts["warnings"] = list(outcome.warnings)
    logger.info("image scored", extra=facts)


def _record_unknown_event(record: SQSRecord, exc: UnknownEvent) -> None:
    """Not an S3 notification: one FAILED item keyed by the message, so it is visible
    in `pneumoscan results --status failed` and never retried."""
    item = results.unknown_event_item(record.message_id, str(exc), model.metadata)
    logger.error("message is not an S3 notification", extra={"error": str(exc)})
    metrics.add_metric(name="UnknownEvents", unit=MetricUnit.Count, value=1)
    result_store.save(item, result_store.current(item[results.KEY]))


@metrics.log_metrics
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    tally.reset()
    try:
        return process_partial_response(event=event, record_handler=record_handler, processor=processor,
                                        context=context)
    finally:
        _flush_tally()


def _flush_tally() -> None:
    """Metrics and counter items of this batch. The counters are best effort: a failed
    update is logged and counted, never a reason to redeliver records already scored."""
    tally.emit(metrics, EphemeralMetrics, MetricUnit)
    for request in tally.counter_updates():
        try:
            result_store.update(request)
        except (BotoCoreError, ClientError):
            logger.exception("stats counters not updated; `pneumoscan stats` will undercount this batch")
            metrics.add_metric(name="StatsWriteErrors", unit=MetricUnit.Count, value=1)
