"""The spool: each received instance on disk from its arrival until its upload succeeded.

An instance is written (atomically: a temporary file, fsync, rename) before its upload starts
and removed only after the upload succeeded, so a gateway killed at any point finds on restart
every instance whose C-STORE it may have answered, and uploads it again. The spool mirrors the
object keys below the incoming prefix (`<batch>/<StudyInstanceUID>/<SOPInstanceUID>.dcm`):
the same instance always lands on the same file and the same key, so a replay or a PACS's
retry overwrites instead of adding a duplicate.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

PENDING = "pending"
SUFFIX = ".dcm"
# DICOM UIDs (PS3.5 9.1): digits and dots, at most 64 characters.
UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")
UID_MAX = 64
BATCH_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class InvalidName(ValueError):
    """A UID or batch name that cannot be a folder or object key as given."""


def valid_uid(value: str) -> bool:
    return len(value) <= UID_MAX and bool(UID_PATTERN.match(value))


def check_batch(batch: str) -> str:
    if not BATCH_PATTERN.match(batch) or batch in (".", ".."):
        raise InvalidName(f"batch {batch!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return batch


def relative_key(batch: str, study_uid: str, sop_uid: str) -> str:
    """`<batch>/<study>/<sop>.dcm`: the object key below the incoming prefix, and the spool path."""
    for name, uid in (("StudyInstanceUID", study_uid), ("SOPInstanceUID", sop_uid)):
        if not valid_uid(uid):
            raise InvalidName(f"{name} is not a valid UID")
    return f"{check_batch(batch)}/{study_uid}/{sop_uid}{SUFFIX}"


class Spool:
    """Instances received but not yet uploaded, under `<root>/pending/`."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.pending_dir = self.root / PENDING
        self.pending_dir.mkdir(parents=True, exist_ok=True)

    def path_of(self, key: str) -> Path:
        return self.pending_dir / key

    def put(self, key: str, data: bytes) -> Path:
        """Write `data` as `key`, whole or not at all, and durable before this returns."""
        path = self.path_of(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".part")
        try:
            with os.fdopen(descriptor, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, path)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        _fsync_directory(path.parent)
        return path

    def remove(self, key: str) -> None:
        path = self.path_of(key)
        with suppress(FileNotFoundError):
            path.unlink()
        # Empty study and batch folders go too, so the spool shows only what is in flight.
        for folder in (path.parent, path.parent.parent):
            if folder == self.pending_dir:
                break
            with suppress(OSError):
                folder.rmdir()

    def instances(self) -> Iterator[str]:
        """Every complete instance in the spool (temporary files of an interrupted write are not)."""
        for path in sorted(self.pending_dir.rglob(f"*{SUFFIX}")):
            if not path.name.startswith("."):
                yield path.relative_to(self.pending_dir).as_posix()

    def read(self, key: str) -> bytes:
        return self.path_of(key).read_bytes()

    def count(self) -> int:
        return sum(1 for _ in self.instances())

    def discard_partial_writes(self) -> int:
        """Remove what a killed write left behind (never answered as stored)."""
        removed = 0
        for path in self.pending_dir.rglob(".*.part"):
            with suppress(FileNotFoundError):
                path.unlink()
                removed += 1
        return removed


def _fsync_directory(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
