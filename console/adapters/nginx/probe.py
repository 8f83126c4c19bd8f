"""The HTTP probe that proves which generation nginx serves: fresh connections, raw sockets.

A raw stream instead of an HTTP client: it costs nothing to import (this is on the CLI's
rollback path) and a new connection each time is the point (keep-alive would stick to one
old worker).
"""

from __future__ import annotations

import asyncio
import time
from typing import NamedTuple
from urllib.parse import urlsplit

from console.core.protocols import RouterError

__all__ = [
    "DEFAULT_VERIFY_BURST",
    "DEFAULT_VERIFY_HITS",
    "DEFAULT_VERIFY_INTERVAL",
    "DEFAULT_VERIFY_SETTLE",
    "RouterNotVerified",
    "http_get",
    "parse_http_url",
    "verify_generation",
]

DEFAULT_VERIFY_INTERVAL = 0.005
DEFAULT_VERIFY_HITS = 1
DEFAULT_VERIFY_BURST = 8
DEFAULT_VERIFY_SETTLE = 0.12  # nginx master: start new workers, sleep 100 ms, stop old ones


class RouterNotVerified(RouterError):
    """nginx was told to reload the new file but did not verifiably serve it in time.

    Unlike a failed ``nginx -t`` or reload, the new file stays: nginx may already serve it
    (a rollback must not be undone by putting the old weights back), so ``restored_weight``
    is None and the file says the new weight.  ``detail``: the last other answer in full;
    ``answer``: the same in a few words ("connection refused", "HTTP 404", "another body: ...").

    Defined here because ``verify_generation`` raises it; ``console.adapters.nginx.router``
    re-exports it."""

    reloaded = True

    def __init__(self, message: str, detail: str = "", restored_weight: float | None = None, answer: str = "") -> None:
        super().__init__(message, detail, restored_weight)
        self.answer = answer


def parse_http_url(url: str) -> tuple[str, int, str, str]:
    """(host, port, path, Host header) of an http:// URL; ValueError with one line otherwise."""
    parts = urlsplit(url)
    try:
        port = parts.port or 80
    except ValueError:
        port = -1
    if parts.scheme != "http" or not parts.hostname or port < 0:
        raise ValueError(f"[nginx] verify_url = {url!r} is not valid; allowed: an http:// URL, or empty for no verification")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    host_header = parts.netloc.rsplit("@", 1)[-1]
    return parts.hostname, port, path, host_header


async def http_get(host: str, port: int, path: str, host_header: str, timeout: float) -> tuple[int, str]:
    """One GET on a fresh connection (``Connection: close``): (status, body stripped)."""

    async def go() -> tuple[int, str]:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\n\r\n".encode("latin-1"))
            raw = await reader.read(65536)
            while True:
                more = await reader.read(65536)
                if not more:
                    break
                raw += more
        finally:
            writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0].split()
        if len(status_line) < 2 or not status_line[1].isdigit():
            raise ValueError(f"not an HTTP response from {host}:{port}")
        return int(status_line[1]), body.decode(errors="replace").strip()

    return await asyncio.wait_for(go(), timeout)


class _Answer(NamedTuple):
    ok: bool  # served the generation
    full: str  # the answer, for RouterError.detail
    short: str  # the same in a few words, for one-line messages
    timed_out: bool = False


async def _probe(host: str, port: int, path: str, host_header: str, generation: str, timeout: float) -> _Answer:
    try:
        status, body = await http_get(host, port, path, host_header, timeout)
    except ConnectionRefusedError as e:
        return _Answer(False, f"ConnectionRefusedError: {e}", "connection refused")
    except TimeoutError:
        return _Answer(False, "TimeoutError", f"no answer within {timeout:g}s", timed_out=True)
    except ValueError as e:
        return _Answer(False, f"ValueError: {e}", "not an HTTP response")
    except OSError as e:
        return _Answer(False, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__, f"cannot connect ({e.strerror or e})")
    if status == 200 and body == generation:
        return _Answer(True, body, body)
    if status != 200:
        return _Answer(False, f"HTTP {status}: {body[:200]!r}", f"HTTP {status}")
    return _Answer(False, f"HTTP {status}: {body[:200]!r}", f"another body: {body[:60]!r}")


async def verify_generation(
    url: str,
    generation: str,
    timeout: float,
    hits: int = DEFAULT_VERIFY_HITS,
    interval: float = DEFAULT_VERIFY_INTERVAL,
    burst: int = DEFAULT_VERIFY_BURST,
    settle: float = DEFAULT_VERIFY_SETTLE,
    timings: dict[str, float] | None = None,
) -> float:
    """Return once every new connection to ``url`` is served by workers answering ``generation``.

    Why not "the first answer that matches": on reload the nginx master starts the new
    workers, sleeps 100 ms, and only then tells the old ones to stop accepting; in between
    both take connections (with two or more old workers the old ones usually win, with one
    they alternate).  So: poll in bursts of ``burst`` concurrent fresh connections (a burst
    reaches a new worker early, which bounds when the new workers started); once the new
    generation has answered, the old workers are told to quit within ``settle`` seconds
    (100 ms + margin); after that, ``hits`` bursts in a row must all answer the new
    generation.  An old answer after the settle window starts the wait over.

    Returns the seconds spent; raises RouterNotVerified (detail: the last wrong answer, a
    timeout only when nothing else came back) after
    ``timeout``.  ``timings`` (optional) receives ``first_new`` (seconds until the new
    generation first answered) and ``probes`` (connections made).
    """
    host, port, path, host_header = parse_http_url(url)
    start = time.monotonic()
    deadline = start + timeout
    first_new: float | None = None
    in_a_row = 0
    last, last_short = "no answer yet", "no answer yet"
    answered = False  # some wrong answer other than a timeout came back
    while True:
        sent = time.monotonic()
        per_try = max(0.05, min(1.0, deadline - sent))
        answers = await asyncio.gather(*(_probe(host, port, path, host_header, generation, per_try) for _ in range(burst)))
        now = time.monotonic()
        if timings is not None:
            timings["probes"] = timings.get("probes", 0) + burst
        oks = [a.ok for a in answers]
        for a in answers:
            # a probe cut short by the deadline says little: a timeout never hides a real answer
            if not a.ok and (not a.timed_out or not answered):
                last, last_short = a.full, a.short
                answered = answered or not a.timed_out
        if first_new is None:
            if any(oks):
                first_new = now  # a new worker has answered: it started before now
                if timings is not None:
                    timings["first_new"] = now - start
        elif sent >= first_new + settle:
            if all(oks):
                in_a_row += 1
                if in_a_row >= hits:
                    return now - start
            else:
                # an old worker still accepting after the window: start the wait over
                in_a_row = 0
                first_new = now if any(oks) else None
        if now >= deadline:
            raise RouterNotVerified(
                f"nginx did not verifiably serve generation {generation} at {url} within {timeout:g}s "
                f"(last other answer: {last})",
                detail=last,
                answer=last_short,
            )
        wake = first_new + settle if first_new is not None and now < first_new + settle else now + interval
        await asyncio.sleep(max(0.0, min(wake, deadline) - time.monotonic()))
