"""The engine socket's wire protocol: versioned JSON lines over a unix socket.

Every line is one JSON object with ``v`` (the protocol version, console.core.events.PROTOCOL_VERSION)
and ``type``.  Engine -> console: ``hello``, ``event`` (an ``Event.to_record()``), ``role``,
``ack``, ``error``, ``pong``, ``bye`` (the engine ends, with its exit code).  Console -> engine:
``hello``, ``intent`` (an ``Intent.to_dict()``), ``take_over``, ``stop``, ``ping``, ``bye`` (the
console detaches on purpose, saying why: quit, SIGHUP ...).

The envelope (one JSON object per line, ``v`` and ``type``) is the part that never changes,
so a console of another version can always read the hello, say in one line why it will not
drive, and still watch.  Lines are at most MAX_LINE bytes towards the engine; the engine's
lines may be longer (a check with many gates), so consoles read with CLIENT_MAX_LINE.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from console.core.events import PROTOCOL_VERSION

VERSION = PROTOCOL_VERSION
MAX_LINE = 64 * 1024  # bytes in one message to the engine
CLIENT_MAX_LINE = 16 * 1024 * 1024  # bytes in one message from the engine

# message types
HELLO, EVENT, ROLE, ACK, ERROR, PONG, BYE = "hello", "event", "role", "ack", "error", "pong", "bye"
INTENT, TAKE_OVER, STOP, PING = "intent", "take_over", "stop", "ping"
TO_ENGINE = (HELLO, INTENT, TAKE_OVER, STOP, PING, BYE)

DRIVER, WATCHER = "driver", "watcher"


class WireError(ValueError):
    """A message that is not valid on this wire: the text says what, and what is allowed."""


def encode(msg_type: str, *, v: int = VERSION, **fields: Any) -> bytes:
    """One line: the envelope (``v`` is only ever changed by tests of version skew) plus ``fields``."""
    body = {"v": v, "type": msg_type, **fields}
    return (json.dumps(body, separators=(",", ":"), allow_nan=False) + "\n").encode()


def decode(line: bytes, allowed: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Parse one line (without its newline) into a message; WireError says what is wrong."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise WireError("malformed message: not UTF-8; allowed: one JSON object per line") from None
    try:
        msg = json.loads(text)
    except ValueError as e:
        raise WireError(f"malformed message: not JSON ({e}); allowed: one JSON object per line") from None
    if not isinstance(msg, dict):
        raise WireError(f"malformed message: a JSON {type(msg).__name__}, not an object; allowed: one JSON object per line")
    t = msg.get("type")
    if not isinstance(t, str):
        raise WireError("malformed message: no \"type\"; allowed: a JSON object with \"v\" and \"type\"")
    if allowed is not None and t not in allowed:
        raise WireError(f"unknown message type {t!r}; allowed: {', '.join(allowed)}")
    v = msg.get("v")
    if not isinstance(v, int) or isinstance(v, bool):
        raise WireError("malformed message: no integer \"v\" (protocol version)")
    return msg


class LineBuffer:
    """Splits a byte stream into lines, refusing any longer than ``limit``.

    An over-long line is skipped up to its newline and reported once as ``(None, size)``, so
    one oversized message costs its sender an error, never the connection or the engine.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._skipping = 0  # bytes of an over-long line dropped so far (0: not skipping)

    def feed(self, data: bytes) -> list[tuple[bytes | None, int]]:
        out: list[tuple[bytes | None, int]] = []
        self._buf += data
        while True:
            nl = self._buf.find(b"\n")
            if self._skipping:
                if nl < 0:
                    self._skipping += len(self._buf)
                    self._buf.clear()
                    return out
                out.append((None, self._skipping + nl))
                del self._buf[: nl + 1]
                self._skipping = 0
                continue
            if nl < 0:
                if len(self._buf) > self.limit:
                    self._skipping = len(self._buf)
                    self._buf.clear()
                return out
            if nl > self.limit:
                out.append((None, nl))
            else:
                out.append((bytes(self._buf[:nl]), nl))
            del self._buf[: nl + 1]

    @property
    def pending(self) -> int:
        return len(self._buf) + self._skipping


# ---------------------------------------------------------------------------- paths beside the journal
def socket_path_for(journal: Path) -> Path:
    return journal.with_name(journal.name + ".sock")


def pid_path_for(journal: Path) -> Path:
    return journal.with_name(journal.name + ".pid")


def log_path_for(journal: Path) -> Path:
    return journal.with_name(journal.name + ".engine.log")


SUN_PATH_MAX = 100  # sockaddr_un.sun_path is 108 bytes on Linux; keep a margin


def short_path(path: Path) -> tuple[str, int | None]:
    """A path for bind/connect that fits sun_path.

    A long path (deep temporary directories) goes through ``/proc/self/fd/N/name`` with N an
    O_PATH descriptor of its directory; the caller closes the returned fd (None: nothing to close).
    """
    s = str(path)
    if len(os.fsencode(s)) <= SUN_PATH_MAX:
        return s, None
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    return f"/proc/self/fd/{fd}/{path.name}", fd
