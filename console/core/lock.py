"""One driver: an flock on a file beside the journal, naming its holder."""

from __future__ import annotations

import fcntl
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from console.core.events import Operator, utc_now_iso


class LockHeld(Exception):
    def __init__(self, holder: dict) -> None:
        self.holder = holder
        super().__init__(describe_holder(holder))


def describe_holder(h: dict) -> str:
    who = h.get("user", "an unknown user")
    if h.get("ssh_client"):
        who += f" (ssh from {h['ssh_client']})"
    return (f"{who} on {h.get('host', 'an unknown host')}, pid {h.get('pid', 'unknown')}, "
            f"since {h.get('since', 'an unknown time')} ({h.get('command', 'command unknown')})")


def lock_path_for(journal: Path) -> Path:
    return journal.with_name(journal.name + ".lock")


@dataclass
class DriverLock:
    path: Path
    fd: int | None = None

    def acquire(self, command: str, operator: Operator | None = None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockHeld(read_holder(self.path)) from None
        op = operator or Operator.current()
        info = {
            "user": op.user,
            "ssh_client": op.ssh_client,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": utc_now_iso(),
            "command": command,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        os.fsync(fd)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> DriverLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def is_held(path: Path) -> bool:
    """True when some live process holds the lock (a stale file is not held)."""
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
