"""Follow a log file the way ``tail -F`` does, without any UI.

The console tails the NGINX canary access log with this.  Why it looks the way it does:

* One reader per file, reading in 64 KB chunks, so a burst of 5,000 lines/s costs a few
  ``read`` calls per poll rather than one per line.
* Rotation (the path now names another inode: logrotate's ``create``) is survived by draining
  the old file to its end, then reopening the path from its start.  Truncation (the file is
  shorter than what we read: ``copytruncate``, ``: > file``) restarts at offset 0.
* Every buffer is bounded: a "line" without a newline is cut at ``max_line`` bytes, the
  first read keeps only the last ``initial_lines`` lines, and ``PendingLines`` (the hand-off
  to the UI) holds at most ``maxlen`` lines and tells the reader to wait when it is full
  (backpressure): the file keeps the data, memory does not grow.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

CHUNK = 64 * 1024
MAX_LINE = 16 * 1024


@dataclass(frozen=True)
class TailEvent:
    """Something about the file itself, worth one line in the pane."""

    kind: str  # "opened" | "missing" | "rotated" | "truncated" | "error"
    detail: str = ""


class FileTail:
    """Non-blocking reader of the new complete lines of one path.

    ``poll()`` returns the lines that became available since the last call (at most
    ``max_lines_per_poll``, so one poll never holds the caller for long) and what happened to
    the file.  It never raises for a missing or unreadable file: it reports it once and
    retries on the next poll.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        initial_lines: int = 500,
        chunk: int = CHUNK,
        max_line: int = MAX_LINE,
        max_lines_per_poll: int = 20_000,
    ) -> None:
        self.path = Path(path)
        self.initial_lines = initial_lines
        self.chunk = chunk
        self.max_line = max_line
        self.max_lines_per_poll = max_lines_per_poll
        self._fd: int | None = None
        self._ino: tuple[int, int] | None = None
        self._offset = 0
        self._partial = b""
        self._skipping = False  # inside a runaway line whose first max_line bytes were shown
        self._first = True
        self._reported_missing = False

    # ------------------------------------------------------------------ plumbing
    @property
    def offset(self) -> int:
        return self._offset

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._ino, self._partial, self._skipping = None, None, b"", False

    def _open(self, events: list[TailEvent]) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            if not self._reported_missing:
                events.append(TailEvent("missing", f"{self.path}: no such file yet; waiting for it"))
                self._reported_missing = True
            return False
        except OSError as e:
            if not self._reported_missing:
                events.append(TailEvent("error", f"{self.path}: {e.strerror}"))
                self._reported_missing = True
            return False
        st = os.fstat(fd)
        self._fd, self._ino, self._partial, self._skipping = fd, (st.st_dev, st.st_ino), b"", False
        self._reported_missing = False
        if self._first:
            self._offset = self._start_offset(fd, st.st_size)
            self._first = False
        else:
            self._offset = 0
        events.append(TailEvent("opened", str(self.path)))
        return True

    def _start_offset(self, fd: int, size: int) -> int:
        """The offset of the last ``initial_lines`` complete lines (tail -n N), read backwards
        chunk by chunk so a 10 GB log costs a few reads."""
        if self.initial_lines <= 0 or size == 0:
            return size
        want = self.initial_lines + 1  # the newline that ends the line before the first kept
        pos, seen = size, 0
        while pos > 0:
            step = min(self.chunk, pos)
            pos -= step
            block = os.pread(fd, step, pos)
            i = len(block)
            while True:
                i = block.rfind(b"\n", 0, i)
                if i < 0:
                    break
                seen += 1
                if seen == want:
                    return pos + i + 1
            if size - pos > self.chunk * 64:  # bounded: at most 4 MB scanned
                return pos
        return 0

    def _rotated(self) -> bool:
        try:
            st = os.stat(self.path)
        except OSError:
            return False  # gone for now: keep draining the old file
        return (st.st_dev, st.st_ino) != self._ino

    # ------------------------------------------------------------------ reading
    def poll(self) -> tuple[list[str], list[TailEvent]]:
        events: list[TailEvent] = []
        if self._fd is None and not self._open(events):
            return [], events
        lines = self._drain(events)
        if len(lines) < self.max_lines_per_poll and self._rotated():
            lines += self._flush_partial()
            self.close()
            events.append(TailEvent("rotated", f"{self.path} was rotated; following the new file"))
            if self._open(events):
                lines += self._drain(events)
        return lines, events

    def _drain(self, events: list[TailEvent]) -> list[str]:
        """Complete lines from the offset on, at most ``max_lines_per_poll``: the rest stays in
        the file (backpressure) and the offset points just past the last line returned."""
        assert self._fd is not None
        size = os.fstat(self._fd).st_size
        if size < self._offset:
            events.append(TailEvent("truncated", f"{self.path} was truncated; reading from its start"))
            self._offset, self._partial, self._skipping = 0, b"", False
        out: list[str] = []
        limit = self.max_lines_per_poll
        while self._offset < size and len(out) < limit:
            block = os.pread(self._fd, min(self.chunk, size - self._offset), self._offset)
            if not block:
                break
            base = self._offset - len(self._partial)  # file offset of data[0]
            data = self._partial + block
            parts = data.split(b"\n")
            rest = parts.pop()
            if self._skipping and parts:  # the end of a runaway line already shown
                self._skipping = False
                parts.pop(0)
                base_skip = True
            else:
                base_skip = False
            room = limit - len(out)
            if len(parts) > room:
                taken = parts[:room]
                consumed = sum(len(p) + 1 for p in taken)
                if base_skip:
                    consumed += len(data.split(b"\n", 1)[0]) + 1
                self._offset, self._partial = base + consumed, b""
                out.extend(_decode(p[: self.max_line]) for p in taken)
                break
            self._offset += len(block)
            out.extend(_decode(p[: self.max_line]) for p in parts)
            if self._skipping:
                rest = b""
            elif len(rest) > self.max_line:  # a runaway line: show what we have, drop the rest of it
                out.append(_decode(rest[: self.max_line]))
                rest, self._skipping = b"", True
            self._partial = rest
        return out

    def _flush_partial(self) -> list[str]:
        if not self._partial:
            return []
        p, self._partial = self._partial, b""
        return [_decode(p[: self.max_line])]


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "replace").rstrip("\r")


class PendingLines:
    """Lines handed from a reader thread to the UI: bounded, thread-safe.

    ``push`` returns True when the buffer went from empty to non-empty (the reader then posts
    one wake-up message; more lines before the UI drains need no new message).  When more than
    ``maxlen`` lines wait, the oldest are dropped and counted: the pane could not show more
    than ``maxlen`` lines anyway.  ``full`` is the backpressure signal for a reader that can
    wait (a file keeps its data).
    """

    def __init__(self, maxlen: int) -> None:
        self.maxlen = max(1, maxlen)
        self._q: deque[str] = deque(maxlen=self.maxlen)
        self._lock = threading.Lock()
        self.dropped = 0

    def push(self, lines: Iterable[str]) -> bool:
        with self._lock:
            was_empty = not self._q
            before = len(self._q)
            n = 0
            for ln in lines:
                self._q.append(ln)
                n += 1
            overflow = before + n - len(self._q)
            if overflow > 0:
                self.dropped += overflow
            return was_empty and bool(self._q)

    def drain(self) -> tuple[list[str], int]:
        with self._lock:
            out = list(self._q)
            self._q.clear()
            dropped, self.dropped = self.dropped, 0
            return out, dropped

    def __len__(self) -> int:
        return len(self._q)

    @property
    def full(self) -> bool:
        return len(self._q) >= self.maxlen


def follow_file(
    tail: FileTail,
    pending: PendingLines,
    wake: Callable[[], object],
    on_event: Callable[[TailEvent], object],
    stop: threading.Event,
    interval: float = 0.25,
    heartbeat: Callable[[], object] | None = None,
) -> None:
    """The reader loop, for a thread: poll, hand over, wait.  Waits (without reading) while
    the UI has not drained ``pending`` (backpressure) and returns when ``stop`` is set."""
    tail.max_lines_per_poll = min(tail.max_lines_per_poll, pending.maxlen)
    try:
        while not stop.is_set():
            if pending.full:
                stop.wait(interval / 4)
                continue
            lines, events = tail.poll()
            for e in events:
                on_event(e)
            if lines and pending.push(lines):
                wake()
            if heartbeat is not None:
                heartbeat()
            if not lines or len(lines) < tail.max_lines_per_poll:
                stop.wait(interval)
    finally:
        tail.close()
