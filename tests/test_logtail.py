"""The file tail against real files: the last N lines first, then new lines; logrotate's
rename-and-create, copytruncate, a file that appears later, partial and runaway lines, and
the bounded hand-off to the UI with backpressure (nothing lost while the UI is slow)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from console.adapters.logtail import FileTail, PendingLines, follow_file


def write(path: Path, text: str, mode: str = "a") -> None:
    with open(path, mode) as f:
        f.write(text)


def poll_until(tail: FileTail, want: int, timeout: float = 5.0) -> tuple[list[str], list[str]]:
    """Poll until ``want`` lines arrived; returns (lines, event kinds)."""
    lines: list[str] = []
    kinds: list[str] = []
    deadline = time.monotonic() + timeout
    while len(lines) < want:
        got, events = tail.poll()
        lines += got
        kinds += [e.kind for e in events]
        if time.monotonic() > deadline:
            raise AssertionError(f"got {len(lines)} of {want} lines: {lines[-3:]}, events {kinds}")
    return lines, kinds


def test_starts_with_the_last_n_lines_then_follows(tmp_path):
    log = tmp_path / "canary.log"
    write(log, "".join(f"old {i}\n" for i in range(1000)))
    tail = FileTail(log, initial_lines=5)
    lines, events = tail.poll()
    assert lines == [f"old {i}" for i in range(995, 1000)]
    assert [e.kind for e in events] == ["opened"]
    write(log, "new 1\nnew 2\n")
    assert tail.poll()[0] == ["new 1", "new 2"]
    assert tail.poll() == ([], [])
    tail.close()


def test_a_partial_line_waits_for_its_newline(tmp_path):
    log = tmp_path / "canary.log"
    log.write_text("")
    tail = FileTail(log, initial_lines=0)
    tail.poll()
    write(log, "GET /reco")
    assert tail.poll()[0] == []
    write(log, "mmend 200\r\n")
    assert tail.poll()[0] == ["GET /recommend 200"]
    tail.close()


def test_survives_rotation_by_rename_and_create(tmp_path):
    log = tmp_path / "canary.log"
    write(log, "before 1\n")
    tail = FileTail(log, initial_lines=10)
    assert tail.poll()[0] == ["before 1"]
    write(log, "before 2\n")  # written, not yet read, when logrotate renames the file
    os.rename(log, tmp_path / "canary.log.1")
    write(log, "after 1\nafter 2\n", "w")
    lines, kinds = poll_until(tail, 3)
    assert lines == ["before 2", "after 1", "after 2"]  # the old file is drained first, nothing lost
    assert "rotated" in kinds
    write(log, "after 3\n")
    assert tail.poll()[0] == ["after 3"]
    tail.close()


def test_survives_truncation_in_place(tmp_path):
    log = tmp_path / "canary.log"
    write(log, "".join(f"line {i}\n" for i in range(50)))
    tail = FileTail(log, initial_lines=2)
    assert tail.poll()[0] == ["line 48", "line 49"]
    with open(log, "r+") as f:  # copytruncate
        f.truncate(0)
    write(log, "fresh 1\n")
    lines, kinds = poll_until(tail, 1)
    assert lines == ["fresh 1"] and "truncated" in kinds
    tail.close()


def test_waits_for_a_file_that_does_not_exist_yet(tmp_path):
    log = tmp_path / "later.log"
    tail = FileTail(log)
    lines, events = tail.poll()
    assert lines == [] and [e.kind for e in events] == ["missing"]
    assert tail.poll() == ([], [])  # reported once, not every poll
    write(log, "hello\n")
    assert poll_until(tail, 1)[0] == ["hello"]
    tail.close()


def test_reads_large_bursts_in_chunks_and_cuts_runaway_lines(tmp_path):
    log = tmp_path / "canary.log"
    log.write_text("")
    tail = FileTail(log, initial_lines=0, max_line=1000)
    tail.poll()
    body = "".join(f"{i:08d} " + "y" * 90 + "\n" for i in range(20_000))  # ~2 MB: 30+ chunks of 64 KB
    write(log, body + "z" * 70_000)  # a runaway line longer than a chunk
    lines, _ = poll_until(tail, 20_001)
    assert lines[0].startswith("00000000") and lines[19_999].startswith("00019999")
    assert lines[20_000] == "z" * 1000  # a line without an end is cut, memory stays bounded
    write(log, "zzz\nnext\n")  # the rest of the runaway line is not shown as a line of its own
    assert poll_until(tail, 1)[0] == ["next"]
    tail.close()


def test_pending_lines_are_bounded_and_count_what_they_drop():
    p = PendingLines(100)
    assert p.push(f"l{i}" for i in range(150)) is True  # empty -> non-empty: one wake-up
    assert p.push(["x"]) is False  # already pending: no new wake-up needed
    lines, dropped = p.drain()
    assert len(lines) == 100 and lines[-1] == "x" and dropped == 51


def test_follow_file_waits_while_the_ui_is_slow_and_loses_nothing(tmp_path):
    log = tmp_path / "canary.log"
    log.write_text("")
    n = 5_000
    write(log, "".join(f"{i}\n" for i in range(n)))
    pending = PendingLines(500)
    stop = threading.Event()
    wakes = threading.Semaphore(0)
    t = threading.Thread(target=follow_file, args=(FileTail(log, initial_lines=n), pending, wakes.release, lambda e: None,
                                                   stop, 0.01), daemon=True)
    t.start()
    got: list[str] = []
    deadline = time.monotonic() + 10
    try:
        while len(got) < n and time.monotonic() < deadline:
            wakes.acquire(timeout=0.5)  # a slow UI: drains only when woken
            lines, dropped = pending.drain()
            assert dropped == 0
            assert len(lines) <= 500
            got += lines
    finally:
        stop.set()
        t.join(5)
    assert got == [str(i) for i in range(n)]
    assert not t.is_alive()
