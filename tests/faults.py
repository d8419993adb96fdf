"""Fault injection at the HTTP layer of a real boto3 client.

A hook on botocore's `before-send` event answers matching requests with an AWS error
response (or a delay, or a read timeout) before they reach moto, so the handler's own
retry configuration, error parsing and record-level failure handling all run as they
would against AWS.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from botocore.awsrequest import AWSResponse
from botocore.exceptions import ReadTimeoutError
from moto.core.botocore_stubber import MockRawResponse

# (HTTP status, error code) pairs as AWS sends them.
DYNAMODB_THROTTLING = (400, "ProvisionedThroughputExceededException")
DYNAMODB_5XX = (500, "InternalServerError")
S3_SLOW_DOWN = (503, "SlowDown")
S3_5XX = (500, "InternalError")


@dataclass
class Fault:
    """Fails `operation` on `client` `times` times (None: until cleared), optionally only
    for requests whose body or URL mentions `only_if`.

    By default a failed request never reaches the service (a throttled write writes
    nothing); `reaches_service` lets it through and loses only the response, the case
    where a write was applied but the caller saw an error.
    """

    client: Any
    operation: str
    error: tuple[int, str] | None = None
    times: int | None = None
    only_if: str | None = None
    delay_s: float = 0.0
    read_timeout: bool = False
    reaches_service: bool = False
    injected: int = 0
    seen: int = 0
    active: bool = True
    _event: str = field(init=False)

    def __post_init__(self) -> None:
        self._event = f"before-send.{self.client.meta.service_model.endpoint_prefix}.{self.operation}"
        self.client.meta.events.register_first(self._event, self._hook)

    def clear(self) -> None:
        self.active = False

    def remove(self) -> None:
        self.client.meta.events.unregister(self._event, self._hook)

    def _applies(self, request: Any) -> bool:
        if not self.active or (self.times is not None and self.injected >= self.times):
            return False
        if self.only_if is None:
            return True
        body = request.body.decode() if isinstance(request.body, bytes) else str(request.body or "")
        return self.only_if in body or self.only_if in request.url

    def _hook(self, request: Any, **_: Any) -> AWSResponse | None:
        self.seen += 1
        if not self._applies(request):
            return None
        self.injected += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.read_timeout:
            raise ReadTimeoutError(endpoint_url=request.url)
        if self.error is None:
            return None  # only slow: the request then goes through
        status, code = self.error
        response = AWSResponse(request.url, status, *self._error_body(code))
        if not self.reaches_service:
            # Later before-send handlers (moto's) see an address no backend serves, and pass.
            request.url = "http://fault-injected.invalid/"
        return response

    def _error_body(self, code: str) -> tuple[dict[str, str], MockRawResponse]:
        if self.client.meta.service_model.protocol == "json":
            body = json.dumps({"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": "injected fault"})
            return {"x-amzn-requestid": "injected", "content-type": "application/x-amz-json-1.0"}, \
                MockRawResponse(body.encode())
        body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                f"<Message>injected fault</Message><RequestId>injected</RequestId></Error>")
        return {"x-amz-request-id": "injected", "content-type": "application/xml"}, MockRawResponse(body.encode())
