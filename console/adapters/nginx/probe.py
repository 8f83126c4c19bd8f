"""The HTTP probe that proves which generation nginx serves: fresh connections, raw sockets.

A raw stream instead of an HTTP client: it costs nothing to import (this is on the CLI's
rollback path) and a new connection each time is the point (keep-alive would stick to one
old worker).  Two drivers of one verification (``_Verification``): ``verify_generation`` on
an event loop, ``verify_generation_now`` blocking (the CLI's rollback, which loads no asyncio).
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import time
from typing import NamedTuple
from urllib.parse import urlsplit

from console.core.routing import RouterError

__all__ = [
    "DEFAULT_VERIFY_BURST",
    "DEFAULT_VERIFY_HITS",
    "DEFAULT_VERIFY_INTERVAL",
    "DEFAULT_VERIFY_SETTLE",
    "RouterNotVerified",
    "http_get",
    "parse_http_url",
    "verify_generation",
    "verify_generation_now",
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
    import asyncio

    async def go() -> tuple[int, str]:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(http_request(path, host_header))
            raw = await reader.read(65536)
            while True:
                more = await reader.read(65536)
                if not more:
                    break
                raw += more
        finally:
            writer.close()
        return http_response(raw, host, port)

    return await asyncio.wait_for(go(), timeout)


def http_request(path: str, host_header: str, method: str = "GET") -> bytes:
    """One HTTP/1.1 request with no body, ``Connection: close`` (a PUT says its empty body)."""
    length = "" if method == "GET" else "Content-Length: 0\r\n"
    return f"{method} {path} HTTP/1.1\r\nHost: {host_header}\r\n{length}Connection: close\r\n\r\n".encode("latin-1")


def http_response(raw: bytes, host: str, port: int) -> tuple[int, str]:
    """(status, body stripped) of a whole response read until the server closed."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[1].isdigit():
        raise ValueError(f"not an HTTP response from {host}:{port}")
    return int(status_line[1]), body.decode(errors="replace").strip()


class _Answer(NamedTuple):
    ok: bool  # served the generation
    full: str  # the answer, for RouterError.detail
    short: str  # the same in a few words, for one-line messages
    timed_out: bool = False


async def _probe(host: str, port: int, path: str, host_header: str, generation: str, timeout: float) -> _Answer:
    try:
        status, body = await http_get(host, port, path, host_header, timeout)
    except (OSError, ValueError) as e:  # TimeoutError is an OSError
        return _failed(e, timeout)
    return _judged(status, body, generation)


def _failed(e: OSError | ValueError, timeout: float) -> _Answer:
    """What a probe that got no HTTP answer says."""
    if isinstance(e, ConnectionRefusedError):
        return _Answer(False, f"ConnectionRefusedError: {e}", "connection refused")
    if isinstance(e, TimeoutError):
        return _Answer(False, "TimeoutError", f"no answer within {timeout:g}s", timed_out=True)
    if isinstance(e, ValueError):
        return _Answer(False, f"ValueError: {e}", "not an HTTP response")
    return _Answer(False, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__, f"cannot connect ({e.strerror or e})")


def _judged(status: int, body: str, generation: str) -> _Answer:
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
    import asyncio

    v = _Verification(url, generation, timeout, hits, settle, timings)
    while True:
        sent = time.monotonic()
        per_try = v.per_try(sent)
        answers = await asyncio.gather(*(_probe(*v.target, generation, per_try) for _ in range(burst)))
        took = v.judge(answers, sent, burst)
        if took is not None:
            return took
        await asyncio.sleep(v.pause(interval))


def verify_generation_now(
    url: str,
    generation: str,
    timeout: float,
    hits: int = DEFAULT_VERIFY_HITS,
    interval: float = DEFAULT_VERIFY_INTERVAL,
    burst: int = DEFAULT_VERIFY_BURST,
    settle: float = DEFAULT_VERIFY_SETTLE,
    timings: dict[str, float] | None = None,
) -> float:
    """``verify_generation`` without an event loop (the CLI's rollback): the same bursts of
    ``burst`` concurrent fresh connections (non-blocking, one thread), the same rules and answers."""
    v = _Verification(url, generation, timeout, hits, settle, timings)
    while True:
        sent = time.monotonic()
        per_try = v.per_try(sent)
        took = v.judge(_burst_now(v.target, generation, per_try, burst), sent, burst)
        if took is not None:
            return took
        time.sleep(v.pause(interval))


def _burst_now(target: tuple[str, int, str, str], generation: str, per_try: float, burst: int) -> list[_Answer]:
    """``burst`` probes at once on fresh non-blocking connections, one thread (as the event loop
    does them), each answered within ``per_try``."""
    host, port, path, host_header = target
    deadline = time.monotonic() + per_try
    answers: list[_Answer | None] = [None] * burst
    try:
        # an ASCII name as bytes: a str makes socket load the idna codec (~1 ms of a CLI rollback)
        name = host.encode() if host.isascii() else host
        family, kind, proto, _, addr = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)[0]
    except OSError as e:
        return [_failed(e, per_try)] * burst
    request = http_request(path, host_header)
    sel = selectors.DefaultSelector()
    try:
        for k in range(burst):
            s = socket.socket(family, kind, proto)
            s.setblocking(False)
            code = s.connect_ex(addr)
            if code not in (0, errno.EINPROGRESS):
                s.close()
                answers[k] = _failed(_os_error(code), per_try)
                continue
            sel.register(s, selectors.EVENT_WRITE, (k, []))
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for key, _ in sel.select(left):
                s, (k, chunks) = key.fileobj, key.data
                assert isinstance(s, socket.socket)
                answer = _step(s, key.events, chunks, request, host, port, generation, per_try)
                if answer is None and key.events == selectors.EVENT_WRITE:
                    sel.modify(s, selectors.EVENT_READ, key.data)
                elif answer is not None:
                    sel.unregister(s)
                    s.close()
                    answers[k] = answer
    finally:
        for key in list(sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        sel.close()
    late = _failed(TimeoutError(), per_try)
    return [a if a is not None else late for a in answers]


def _step(s: socket.socket, events: int, chunks: list[bytes], request: bytes, host: str, port: int,
          generation: str, per_try: float) -> _Answer | None:
    """One step of a probe: connected (send), or readable (read; the answer once it is whole)."""
    try:
        if events == selectors.EVENT_WRITE:
            code = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise _os_error(code)
            s.sendall(request)  # a few dozen bytes into an empty socket buffer
            return None
        more = s.recv(65536)
        if more:
            chunks.append(more)
            return None
        status, body = http_response(b"".join(chunks), host, port)
    except (OSError, ValueError) as e:
        return _failed(e, per_try)
    return _judged(status, body, generation)


def _os_error(code: int) -> OSError:
    """The OSError subclass Python raises for ``code`` (ConnectionRefusedError for ECONNREFUSED)."""
    return OSError(code, os.strerror(code))


class _Verification:
    """The rules of ``verify_generation``, whoever sends the bursts: ``judge`` each burst's
    answers (the seconds spent once verified, None to go on, RouterNotVerified at the
    deadline), then wait ``pause`` seconds."""

    def __init__(self, url: str, generation: str, timeout: float, hits: int, settle: float,
                 timings: dict[str, float] | None) -> None:
        self.target = parse_http_url(url)
        self.url, self.generation, self.timeout, self.hits, self.settle = url, generation, timeout, hits, settle
        self.timings = timings
        self.start = time.monotonic()
        self.deadline = self.start + timeout
        self.now = self.start  # when the last burst was judged
        self.first_new: float | None = None
        self.in_a_row = 0
        self.last, self.last_short = "no answer yet", "no answer yet"
        self.answered = False  # some wrong answer other than a timeout came back

    def per_try(self, sent: float) -> float:
        return max(0.05, min(1.0, self.deadline - sent))

    def judge(self, answers: list[_Answer], sent: float, burst: int) -> float | None:
        now = self.now = time.monotonic()
        if self.timings is not None:
            self.timings["probes"] = self.timings.get("probes", 0) + burst
        oks = [a.ok for a in answers]
        for a in answers:
            # a probe cut short by the deadline says little: a timeout never hides a real answer
            if not a.ok and (not a.timed_out or not self.answered):
                self.last, self.last_short = a.full, a.short
                self.answered = self.answered or not a.timed_out
        if self.first_new is None:
            if any(oks):
                self.first_new = now  # a new worker has answered: it started before now
                if self.timings is not None:
                    self.timings["first_new"] = now - self.start
        elif sent >= self.first_new + self.settle:
            if all(oks):
                self.in_a_row += 1
                if self.in_a_row >= self.hits:
                    return now - self.start
            else:
                # an old worker still accepting after the window: start the wait over
                self.in_a_row = 0
                self.first_new = now if any(oks) else None
        if now >= self.deadline:
            raise RouterNotVerified(
                f"nginx did not verifiably serve generation {self.generation} at {self.url} within {self.timeout:g}s "
                f"(last other answer: {self.last})",
                detail=self.last,
                answer=self.last_short,
            )
        return None

    def pause(self, interval: float) -> float:
        """Seconds until the next burst: the end of the settle window, else ``interval``."""
        now, first_new = self.now, self.first_new
        wake = first_new + self.settle if first_new is not None and now < first_new + self.settle else now + interval
        return max(0.0, min(wake, self.deadline) - time.monotonic())
