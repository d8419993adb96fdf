"""S3's 1024-byte key limit, enforced on moto's S3 backend as AWS enforces it.

AWS refuses PutObject, CopyObject and CreateMultipartUpload with a key longer than 1024
bytes of UTF-8 (400 KeyTooLongError); moto stores any key, so a pipeline that derives a
longer key (an overlay under `results/`) works locally and fails on AWS. The check sits
in moto's backend, not in a client hook: every client of the local stack (the handler's,
the CLI's, the AWS CLI) gets the error from the server, over HTTP, as from S3, and the
tests' in-process moto is patched by the same call.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from moto.s3.exceptions import S3ClientError
from moto.s3.models import S3Backend

from pneumoscan.results import S3_MAX_KEY_BYTES
# Backend methods that create an object, and the argument that names its key.
_KEY_ARGUMENTS = {"put_object": "key_name", "copy_object": "dest_key_name", "create_multipart_upload": "key_name"}
_CHECKED = "_pneumoscan_key_limit"


class KeyTooLong(S3ClientError):
    code = "KeyTooLongError"

    def __init__(self) -> None:
        super().__init__("KeyTooLongError", "Your key is too long")


def enforce_key_limit() -> None:
    """Make this process's moto refuse over-long keys (idempotent)."""
    for method_name, argument in _KEY_ARGUMENTS.items():
        method = getattr(S3Backend, method_name)
        if not getattr(method, _CHECKED, False):
            setattr(S3Backend, method_name, _checked(method, argument))


def _checked(method: Callable[..., Any], argument: str) -> Callable[..., Any]:
    signature = inspect.signature(method)

    @functools.wraps(method)
    def refuse_long_keys(*args: Any, **kwargs: Any) -> Any:
        key = signature.bind(*args, **kwargs).arguments[argument]
        if len(key.encode("utf-8")) > S3_MAX_KEY_BYTES:
            raise KeyTooLong()
        return method(*args, **kwargs)

    setattr(refuse_long_keys, _CHECKED, True)
    return refuse_long_keys
