"""What the gateway has done, kept in `<spool>/status.json` for `pneumoscan gateway status`.

The file is rewritten atomically after every change, and a restarted gateway carries on from
it, so the counts cover the spool's whole life; what is in the spool is counted from the spool.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"


@dataclass
class Counts:
    received: int = 0  # C-STOREs of an accepted SOP class
    uploaded: int = 0  # instances put under the incoming prefix (live and replayed)
    upload_failed: int = 0  # C-STOREs answered with a failure because the upload did not finish in time
    refused: int = 0  # C-STOREs refused (SOP class, missing UIDs)
    returned: int = 0  # structured reports the PACS acknowledged
    return_failed: int = 0  # deliveries of a structured report that failed (each is retried)

    @property
    def failed(self) -> int:
        return self.upload_failed + self.return_failed


@dataclass
class Counters:
    path: Path
    counts: Counts = field(default_factory=Counts)
    details: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def load(cls, spool_root: Path) -> Counters:
        path = Path(spool_root) / STATUS_FILE
        counters = cls(path)
        saved = read_status(path)
        if saved:
            known = Counts.__dataclass_fields__
            counters.counts = Counts(**{name: int(saved.get(name, 0)) for name in known})
        return counters

    def add(self, name: str, value: int = 1) -> None:
        with self._lock:
            setattr(self.counts, name, getattr(self.counts, name) + value)
            self._write()

    def describe(self, **details: Any) -> None:
        """Facts about the running gateway (pid, address, AE title) shown beside the counts."""
        with self._lock:
            self.details.update(details)
            self._write()

    def _write(self) -> None:
        document = asdict(self.counts) | {"updated_at": time.time(), **self.details}
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(document, indent=2))
        temporary.replace(self.path)


def read_status(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
