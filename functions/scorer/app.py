"""Lambda handler: S3 ObjectCreated events in SQS -> LiteRT pneumonia score -> one DynamoDB item.

Each SQS record succeeds or fails on its own (partial batch response). A permanently
bad input becomes a FAILED item and the record succeeds, so it is never retried; a
transient AWS error fails only its record and SQS redelivers it.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from pneumoscan import cam, images, results, telemetry
from pneumoscan.events import ObjectCreated, UnknownEvent, parse_message
from pneumoscan.model import ModelLoadError, PneumoniaModel

INCOMING_PREFIX = os.environ.get(results.INCOMING_PREFIX_ENV, results.DEFAULT_INCOMING_PREFIX)
RESULTS_PREFIX = os.environ.get("RESULTS_PREFIX", results.RESULTS_PREFIX)
# Which scored images get a PNG overlay (one S3 PUT each): all, positives or none.
OVERLAY_IMAGES = os.environ.get("OVERLAY_IMAGES", "all")
if OVERLAY_IMAGES not in cam.OVERLAY_POLICIES:
    raise ValueError(f"OVERLAY_IMAGES={OVERLAY_IMAGES!r} is not one of {', '.join(cam.OVERLAY_POLICIES)}")
MAX_OBJECT_BYTES = int(os.environ.get("MAX_OBJECT_BYTES", images.MAX_BYTES))
INFERENCE_THREADS = int(os.environ.get("INFERENCE_THREADS", "1"))
# Keys may carry patient identifiers: only DEBUG logging shows them in clear.
LOG_KEYS_IN_CLEAR = os.environ.get("LOG_LEVEL", "INFO").upper() == "DEBUG"
MISSING_OBJECT_CODES = {"404", "NoSuchKey", "NoSuchVersion", "NotFound"}

logger = Logger()
tracer = Tracer()
metrics = Metrics()
processor = BatchProcessor(event_type=EventType.SQS)

# Standard retry mode backs off on throttling and 5xx before a record is given up to SQS.
BOTO_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=30)
s3_client = boto3.client("s3", config=BOTO_CONFIG)
result_store = results.ResultStore(
    boto3.resource("dynamodb", config=BOTO_CONFIG).Table(os.environ[results.TABLE_ENV]))


def _load_model() -> PneumoniaModel:
    try:
        return PneumoniaModel(num_threads=INFERENCE_THREADS)
    except ModelLoadError:
        # Failing the init fails every record of every batch, so all of them are
        # retried once a good model is deployed instead of being scored wrongly.
        logger.exception("the model could not be loaded; no record can be scored")
        raise


model = _load_model()
# A model without CAM weights breaks the model contract: fail at init like a corrupt model.
cam_weights = cam.CamWeights.from_metadata(model.metadata)
# What this invocation scored: counted per result, emitted once per batch of records.
tally = telemetry.BatchTally(positive_label=model.metadata["labels"][1])


@contextmanager
def _timed(timings: dict, stage: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = round((time.perf_counter() - start) * 1000, 2)


class Rejected(Exception):
    """The object cannot be scored, permanently: recorded as a FAILED item."""

    def __init__(self, reason: str, error: str, **facts):
        super().__init__(f"{reason}: {error}")
        self.reason, self.error, self.facts = reason, error, facts


@tracer.capture_method
def record_handler(record: SQSRecord) -> None:
    logger.set_correlation_id(record.message_id)
    logger.remove_keys(["object", "object_key"])
    try:
        message = parse_message(record.body)
    except UnknownEvent as exc:
        _record_unknown_event(record, exc)
        return
    for reason in message.skipped:
        logger.info("notification acknowledged without scoring", extra={"skipped": reason})
        metrics.add_metric(name="NotificationsSkipped", unit=MetricUnit.Count, value=1)
    for created in message.objects:
        try:
            _score_object(created)
        except Exception:
            # Transient (throttling, 5xx, a racing write): only this record fails and SQS redelivers it.
            logger.exception("record failed; SQS will redeliver it")
            raise


def _score_object(created: ObjectCreated) -> None:
    log_keys = {"object": results.key_digest(created.key)}
    if LOG_KEYS_IN_CLEAR:
        log_keys["object_key"] = created.key
    logger.append_keys(**log_keys)

    seen = result_store.current(created.key)
    if result_store.already_done(seen, version_id=created.version_id, etag=created.etag,
                                 model_sha256=model.sha256, model_version=model.version):
        _report(seen, "duplicate")
        return

    item = {results.KEY: created.key, "bucket": created.bucket, "version_id": created.version_id,
            "etag": created.etag, "batch": results.batch_of(created.key, INCOMING_PREFIX),
            "uploaded_at": created.event_time,
            "model_version": model.version, "model_sha256": model.sha256, "threshold": model.threshold}
    timings: dict[str, float] = {}
    try:
        with _timed(timings, "total"):
            if not created.key.startswith(INCOMING_PREFIX):
                raise Rejected("outside_prefix", f"only keys under {INCOMING_PREFIX} are scored")
            with _timed(timings, "fetch"):
                data, facts = _fetch(created)
            item.update(facts)
            with _timed(timings, "decode"):
                pixels, decoded = _decode(data)
            item.update(image_width=decoded.width, image_height=decoded.height,
                        image_format=decoded.format, image_mode=decoded.mode,
                        ignored_metadata=decoded.ignored_metadata)
            with _timed(timings, "inference"):
                prediction = model.predict(pixels)
            probability = float(prediction.probability[0])
            label = model.label(probability)
            with _timed(timings, "overlay"):
                item.update(_write_overlay(created, prediction.feature_map[0], decoded, probability, label))
        item.update(status=results.STATUS_SCORED, probability=probability, label=label)
        outcome = label
    except Rejected as rejected:
        item.update(rejected.facts, status=results.STATUS_FAILED, reason=rejected.reason,
                    error=rejected.error)
        outcome = results.OUTCOME_FAILED
    except _Superseded:
        return

    item["timings_ms"] = timings
    item[results.SCORED_AT] = results.utc_timestamp()
    item[results.OUTCOME_DAY] = results.outcome_day(outcome, item[results.SCORED_AT])
    written = result_store.save(item, seen)
    _report(item, written)


class _Superseded(Exception):
    """A newer version of the object exists; its own event scores it."""


def _fetch(created: ObjectCreated) -> tuple[bytes, dict]:
    """Head first (size cap, deletion, newer version), then get exactly what was headed."""
    try:
        head = s3_client.head_object(Bucket=created.bucket, Key=created.key)
    except ClientError as exc:
        _reject_if_missing(exc)
        raise
    current_version = head.get("VersionId")
    if created.version_id and current_version and current_version != created.version_id:
        logger.info("a newer version of the object exists; this event is superseded")
        metrics.add_metric(name="EventsSuperseded", unit=MetricUnit.Count, value=1)
        raise _Superseded()
    facts = {"size_bytes": head["ContentLength"], "etag": head["ETag"].strip('"'),
             "version_id": current_version or created.version_id}
    if head["ContentLength"] > MAX_OBJECT_BYTES:
        raise Rejected("object_too_large",
                       f"{head['ContentLength']} bytes is above the {MAX_OBJECT_BYTES}-byte limit", **facts)
    # Pin the read to what was headed: a version, or the ETag where versioning is off.
    pin = {"VersionId": current_version} if current_version else {"IfMatch": head["ETag"]}
    try:
        response = s3_client.get_object(Bucket=created.bucket, Key=created.key, **pin)
    except ClientError as exc:
        _reject_if_missing(exc, **facts)
        raise
    return response["Body"].read(), facts


def _reject_if_missing(exc: ClientError, **facts) -> None:
    if exc.response.get("Error", {}).get("Code") in MISSING_OBJECT_CODES:
        raise Rejected("object_missing", "the object was deleted before it could be scored", **facts) from exc


def _decode(data: bytes):
    height, width, channels = model.input_shape
    try:
        return images.load_model_input(data, height, width, channels)
    except images.ImageRejected as exc:
        raise Rejected(exc.reason, exc.detail) from exc


def _write_overlay(created: ObjectCreated, feature_map, decoded: images.DecodedImage,
                   probability: float, label: str) -> dict:
    """Class activation map of the label given: PNG overlay under the results prefix
    (outside the notification prefix, so it never triggers a scoring) plus the item's
    `overlay_key`, `hot_region` and `cam` shares. A failed put raises: the record is retried."""
    positive = label == model.metadata["labels"][1]
    try:
        explanation = cam.explain(feature_map, cam_weights, decoded, probability=probability, label=label,
                                  positive=positive, overlay=cam.wants_overlay(OVERLAY_IMAGES, positive))
    except Exception as exc:  # noqa: BLE001 - the heat map is an aid: it must never hold back a score
        logger.exception("heat map failed; the image is scored without it")
        metrics.add_metric(name="OverlayErrors", unit=MetricUnit.Count, value=1)
        return {"overlay_error": f"{type(exc).__name__}: {exc}"[:500]}
    if explanation.overlay_png is None:
        return explanation.item_fields(None)
    key = cam.overlay_key(RESULTS_PREFIX, created.key)
    s3_client.put_object(Bucket=created.bucket, Key=key, Body=explanation.overlay_png,
                         ContentType="image/png", Metadata={"model-version": model.version})
    return explanation.item_fields(key)


def _report(item: dict, written: str) -> None:
    if written == "duplicate":
        logger.info("this object version already has a result from this model or a newer one; delivery skipped")
        metrics.add_metric(name="DuplicatesSkipped", unit=MetricUnit.Count, value=1)
        return
    tally.observe(item)
    failed = item["status"] == results.STATUS_FAILED
    facts = {"status": item["status"], "write": written, "timings_ms": item["timings_ms"]}
    if failed:
        logger.warning("image not scored", extra=dict(facts, reason=item["reason"], error=item["error"]))
    else:
        logger.info("image scored", extra=dict(facts, probability=item["probability"], label=item["label"]))


def _record_unknown_event(record: SQSRecord, exc: UnknownEvent) -> None:
    """Not an S3 notification: one FAILED item keyed by the message, so it is visible
    in `pneumoscan results --status failed` and never retried."""
    key = f"sqs-message/{record.message_id}"
    scored_at = results.utc_timestamp()
    item = {results.KEY: key, "batch": results.UNKNOWN_EVENT_BATCH, "status": results.STATUS_FAILED,
            "reason": "unknown_event", "error": str(exc), "etag": record.message_id,
            "model_version": model.version, "model_sha256": model.sha256, "timings_ms": {},
            results.SCORED_AT: scored_at,
            results.OUTCOME_DAY: results.outcome_day(results.OUTCOME_FAILED, scored_at)}
    logger.error("message is not an S3 notification", extra={"error": str(exc)})
    metrics.add_metric(name="UnknownEvents", unit=MetricUnit.Count, value=1)
    result_store.save(item, result_store.current(key))


@logger.inject_lambda_context
@tracer.capture_lambda_handler
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
            result_store.table.update_item(**request)
        except (BotoCoreError, ClientError):
            logger.exception("stats counters not updated; `pneumoscan stats` will undercount this batch")
            metrics.add_metric(name="StatsWriteErrors", unit=MetricUnit.Count, value=1)
