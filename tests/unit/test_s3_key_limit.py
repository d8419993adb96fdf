"""S3 refuses keys over 1024 bytes of UTF-8 (400 KeyTooLongError); moto stores any key, so
the local stack and the tests' moto enforce the limit in moto's S3 backend, as AWS does."""

from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.server import ThreadedMotoServer

from pneumoscan_cli.s3_limits import S3_MAX_KEY_BYTES, enforce_key_limit

BUCKET = "limits"


def _fits_and_one_byte_over() -> tuple[str, str]:
    fits = "incoming/" + "王" * ((S3_MAX_KEY_BYTES - 9) // 3) + "x" * ((S3_MAX_KEY_BYTES - 9) % 3)
    assert len(fits.encode()) == S3_MAX_KEY_BYTES
    return fits, fits + "y"


def _check_refusals(s3) -> None:
    s3.create_bucket(Bucket=BUCKET)
    fits, too_long = _fits_and_one_byte_over()
    s3.put_object(Bucket=BUCKET, Key=fits, Body=b"x")
    for attempt in (lambda: s3.put_object(Bucket=BUCKET, Key=too_long, Body=b"x"),
                    lambda: s3.copy_object(Bucket=BUCKET, Key=too_long, CopySource={"Bucket": BUCKET, "Key": fits}),
                    lambda: s3.create_multipart_upload(Bucket=BUCKET, Key=too_long)):
        with pytest.raises(ClientError) as refused:
            attempt()
        assert refused.value.response["Error"]["Code"] == "KeyTooLongError"
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert [entry["Key"] for entry in s3.list_objects_v2(Bucket=BUCKET)["Contents"]] == [fits]


def test_the_tests_moto_refuses_keys_over_the_limit(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    enforce_key_limit()
    with mock_aws():
        _check_refusals(boto3.client("s3", region_name="us-east-1"))


def test_the_moto_server_refuses_keys_over_the_limit_over_http():
    enforce_key_limit()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        _check_refusals(boto3.client("s3", region_name="us-east-1", endpoint_url=f"http://{host}:{port}",
                                     aws_access_key_id="testing", aws_secret_access_key="testing"))
    finally:
        server.stop()
