"""The journal: append-only JSON lines, flushed and fsynced per record.

It is the source of truth for "where is the traffic and why".  ``read_records`` skips a
torn last line (a crash mid-write) and any line that is not a JSON object, so one bad
record never hides the rest.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from console.core.events import Event


class Journal:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._fd: int | None = None

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            # a torn last line from a crash: start our first record on a fresh line
            size = os.fstat(self._fd).st_size
            if size:
                with open(self.path, "rb") as f:
                    f.seek(size - 1)
                    if f.read(1) != b"\n":
                        os.write(self._fd, b"\n")
        return self._fd

    def append(self, record: Event | dict[str, Any], *more: Event | dict[str, Any]) -> dict[str, Any]:
        """Append records in one write and one fsync; returns the first as written."""
        recs = [r.to_record() if isinstance(r, Event) else r for r in (record, *more)]
        data = b"".join((json.dumps(r, separators=(",", ":"), allow_nan=False) + "\n").encode() for r in recs)
        with self._lock:
            fd = self._open()
            os.write(fd, data)
            os.fsync(fd)
        return recs[0]

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_records(path: str | os.PathLike[str], offset: int = 0) -> Iterator[dict[str, Any]]:
    """Every complete, valid record from ``offset`` on."""
    p = Path(path)
    if not p.exists():
        return
    with open(p, "rb") as f:
        f.seek(offset)
        for raw in f:
            if not raw.endswith(b"\n"):
                break  # torn last line
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            if isinstance(rec, dict):
                yield rec


def tail_records(path: str | os.PathLike[str], offset: int) -> tuple[list[dict[str, Any]], int]:
    """New complete records since ``offset`` and the offset to continue from."""
    p = Path(path)
    if not p.exists():
        return [], offset
    out: list[dict[str, Any]] = []
    with open(p, "rb") as f:
        if os.fstat(f.fileno()).st_size < offset:
            offset = 0
        f.seek(offset)
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            offset += len(raw)
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
    return out, offset
