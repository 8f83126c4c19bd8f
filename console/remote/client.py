"""The console's end of the engine's socket: ``SocketLink`` (the EngineLink of a detached
engine), ``socket_answers`` and ``ask_engine`` (one intent from another terminal).

The handshake is synchronous, so the CLI knows before any UI starts whether it drives, what it
missed and which engine it is on; the reading, pinging and sending run on whichever asyncio
loop first uses the link (the line printer's, or the Textual app's).  Its event queue and its
error list are bounded: a console that lags loses old checks and is told how many.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import socket
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from console.core import events as ev
from console.core.events import Intent, Operator
from console.core.exits import ExitCode
from console.core.protocols import LinkStatus
from console.core.state import events_of
from console.remote import wire

PING_INTERVAL = 2.0
REQUEST_TIMEOUT = 5.0
ERRORS_MAX = 100  # errors kept for the console to show


class LinkRefused(Exception):
    """The engine refused this console (another user, too many consoles): one line why."""


_END = object()


class SocketLink:
    """EngineLink over ``<journal>.sock``.  Build it with ``SocketLink.connect``."""

    detached = True  # the engine is its own process: leaving this console leaves the rollout running
    can_take_over = True

    def __init__(self, sock: socket.socket, hello: dict[str, Any], buf: wire.LineBuffer, pending: list[bytes],
                 operator: Operator, protocol: int, journal_path: Path, ping_interval: float,
                 queue_size: int = ev.SUBSCRIBER_MAX) -> None:
        self._sock = sock
        self.hello = hello
        self._buf = buf
        self._pending = pending  # lines that arrived with the hello
        self.operator = operator
        self.protocol = protocol
        self.journal_path = journal_path
        self.ping_interval = ping_interval
        self.engine_pid = int(hello.get("engine_pid") or 0)
        self.engine_host = str(hello.get("engine_host") or "")
        self.deployment_id = str(hello.get("deployment_id") or "")
        self.version = str(hello.get("version") or "")
        self.role = str(hello.get("role") or wire.WATCHER)
        self.driver: str | None = hello.get("driver")
        self.note = str(hello.get("note") or "")
        if hello.get("protocol") != protocol:
            self.role = wire.WATCHER
            self.note = (f"the engine speaks protocol v{hello.get('protocol')}, this console v{protocol}: "
                         "it will not drive (it may watch); use the canary-console of the engine's version to drive")
        if self.role == wire.DRIVER:
            self.driver = f"{operator.label()} (this console)"
        self.latency_ms: float | None = None
        self.lost = ""
        self.exit_code: int | None = None
        self.errors: deque[str] = deque(maxlen=ERRORS_MAX)  # the latest errors only
        self.on_status: Callable[[LinkStatus], object] | None = None
        self._history = _history(journal_path, int(hello.get("journal_offset") or 0), self.deployment_id)
        self._queue: ev.EventQueue | None = None
        self.queue_size = queue_size
        self._tasks: list[asyncio.Task[Any]] = []
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._send_lock: asyncio.Lock | None = None
        self._closed = False
        self._detaching = False

    # ------------------------------------------------------------------ connecting
    @classmethod
    def connect(
        cls,
        socket_path: Path,
        *,
        journal_path: Path | None = None,
        operator: Operator | None = None,
        role: str = wire.DRIVER,
        take_over: bool = False,
        timeout: float = 5.0,
        ping_interval: float = PING_INTERVAL,
        protocol: int = wire.VERSION,
        queue_size: int = ev.SUBSCRIBER_MAX,
    ) -> SocketLink:
        """Connect and say hello (blocking, up to ``timeout``).  OSError: nothing answers;
        LinkRefused: the engine answered no."""
        op = operator or Operator.current()
        name, dir_fd = wire.short_path(Path(socket_path))
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(timeout)
            s.connect(name)
            s.sendall(wire.encode(wire.HELLO, v=protocol, operator={"user": op.user, "ssh_client": op.ssh_client,
                                                                    "host": op.host}, role=role, take_over=take_over))
            buf = wire.LineBuffer(wire.CLIENT_MAX_LINE)
            deadline = time.monotonic() + timeout
            lines: list[bytes] = []
            hello: dict[str, Any] | None = None
            while hello is None:
                s.settimeout(max(0.01, deadline - time.monotonic()))
                data = s.recv(65536)
                if not data:
                    raise LinkRefused("the engine closed the connection before its hello")
                for line, _ in buf.feed(data):
                    if line is None:
                        continue
                    if hello is not None:
                        lines.append(line)
                        continue
                    msg = wire.decode(line)
                    if msg["type"] == wire.ERROR:
                        raise LinkRefused(str(msg.get("message", "refused")))
                    if msg["type"] == wire.HELLO:
                        hello = msg
        except BaseException:
            s.close()
            raise
        finally:
            if dir_fd is not None:
                os.close(dir_fd)
        jp = Path(journal_path) if journal_path else Path(str(hello.get("journal", "")))
        return cls(s, hello, buf, lines, op, protocol, jp, ping_interval, queue_size)

    # ------------------------------------------------------------------ EngineLink
    def history(self) -> list[ev.Event]:
        return list(self._history)

    async def events(self) -> AsyncIterator[ev.Event]:
        await self._start()
        assert self._queue is not None
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            yield item

    async def submit(self, intent: Intent) -> None:
        if self.role != wire.DRIVER:
            raise PermissionError(f"this console is a {self.role}: it cannot move traffic"
                                  + (f" ({self.note})" if self.note else "; take over first (T, or attach --take-over)"))
        await self._request(wire.INTENT, intent=intent.to_dict())

    async def take_over(self) -> None:
        """Become the driver (the engine journals it and tells the previous driver)."""
        if self.protocol != self.hello.get("protocol"):
            raise PermissionError(self.note)
        await self._request(wire.TAKE_OVER)

    async def stop(self) -> None:
        """End the engine, leaving the traffic where it is (interrupt; at 100%: end monitoring)."""
        if self.role != wire.DRIVER:
            raise PermissionError(f"this console is a {self.role}: only the driver may stop the engine")
        await self._request(wire.STOP)

    async def ping(self) -> float:
        """One round trip now, in milliseconds."""
        reply = await self._request(wire.PING, t=time.monotonic())
        return self.latency_ms if self.latency_ms is not None else (time.monotonic() - float(reply.get("t") or 0)) * 1000

    async def close(self, reason: str = "quit") -> None:
        """Detach, telling the engine why (journaled when this console drove): the rollout goes on."""
        if self._closed:
            return
        self._detaching = True
        if not self.lost:
            # say bye and wait for the engine to close its end, so that it reads the bye before any error
            with contextlib.suppress(OSError, ConnectionError, TimeoutError):
                if self._queue is None:  # never used from a loop: the socket is still blocking
                    self._sock.settimeout(1.0)
                    self._sock.sendall(wire.encode(wire.BYE, v=self.protocol, reason=reason))
                    self._sock.shutdown(socket.SHUT_WR)
                    while self._sock.recv(65536):
                        pass
                else:
                    await asyncio.wait_for(self._send(wire.BYE, reason=reason), 1.0)
                    self._sock.shutdown(socket.SHUT_WR)
                    await asyncio.wait_for(asyncio.shield(self._tasks[0]), 1.0)
        self._closed = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(BaseException):
                await t
        self._sock.close()
        if not self.lost:
            self.lost = "detached"
        self._fail_waiting(ConnectionError("detached"))

    def hangup(self, reason: str = "SIGHUP", timeout: float = 1.0) -> None:
        """Detach from a signal handler, outside any loop: say bye, wait for the engine to close.

        Blocking (at most ``timeout``); the caller exits right after.  Used when the terminal is
        gone (SIGHUP) while a UI owns the event loop."""
        if self._closed or self.lost:
            return
        self._detaching = True
        with contextlib.suppress(OSError, ValueError):
            self._sock.setblocking(True)
            self._sock.settimeout(timeout)
            self._sock.sendall(wire.encode(wire.BYE, v=self.protocol, reason=reason))
            self._sock.shutdown(socket.SHUT_WR)
            while self._sock.recv(65536):
                pass
        self.lost = "detached"

    def status(self) -> LinkStatus:
        return LinkStatus(
            attached=not self.lost and not self._closed, role=self.role, engine_pid=self.engine_pid,
            engine_host=self.engine_host, deployment_id=self.deployment_id, version=self.version,
            latency_ms=self.latency_ms, driver=self.driver, note=self.note, lost=self.lost, exit_code=self.exit_code,
        )

    # ------------------------------------------------------------------ internals
    async def _start(self) -> None:
        if self._queue is not None:
            return
        self._queue = ev.EventQueue(self.queue_size)
        self._send_lock = asyncio.Lock()
        self._sock.setblocking(False)
        for line in self._pending:
            self._dispatch(line)
        self._pending = []
        self._tasks.append(asyncio.create_task(self._read_loop()))
        if self.ping_interval > 0:
            self._tasks.append(asyncio.create_task(self._ping_loop()))

    async def _send(self, msg_type: str, **fields: Any) -> None:
        await self._start()
        assert self._send_lock is not None
        if self.lost:
            raise ConnectionError(f"not attached: {self.lost}")
        data = wire.encode(msg_type, v=self.protocol, **fields)
        async with self._send_lock:
            await asyncio.get_running_loop().sock_sendall(self._sock, data)

    async def _request(self, msg_type: str, **fields: Any) -> dict[str, Any]:
        await self._start()
        rid = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        try:
            await self._send(msg_type, id=rid, **fields)
            reply = await asyncio.wait_for(fut, REQUEST_TIMEOUT)
        finally:
            self._waiting.pop(rid, None)
        if reply.get("type") == wire.ERROR:
            code, message = reply.get("code", ""), str(reply.get("message", ""))
            if code in ("not_driver", "identity", "protocol", "forbidden"):
                raise PermissionError(message)
            raise ValueError(message)
        return reply

    async def _read_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await loop.sock_recv(self._sock, 65536)
                if not data:
                    if self._detaching:
                        self._set_lost("detached")
                    elif self.exit_code is None:
                        self._set_lost("engine lost: the connection closed")
                    break
                for line, _size in self._buf.feed(data):
                    if line is not None:
                        self._dispatch(line)
        except OSError as e:
            self._set_lost(f"engine lost: {e}")
        finally:
            if self._queue is not None:
                self._queue.put_nowait(_END)

    async def _ping_loop(self) -> None:
        while not self.lost:
            with contextlib.suppress(OSError, ConnectionError):
                await self._send(wire.PING, t=time.monotonic())
            await asyncio.sleep(self.ping_interval)  # a period, not a synchronisation

    def _dispatch(self, line: bytes) -> None:
        try:
            msg = wire.decode(line)
        except wire.WireError as e:
            self.errors.append(f"from the engine: {e}")
            return
        t = msg["type"]
        rid = msg.get("id")
        if t == wire.EVENT:
            e = ev.event_from_record(msg.get("record") or {})
            if e is not None and self._queue is not None:
                self._queue.put_nowait(e)
            return
        if t == wire.PONG:
            sent = msg.get("t")
            if isinstance(sent, int | float):
                self.latency_ms = round((time.monotonic() - sent) * 1000, 3)
                self._notify()
        elif t == wire.ROLE:
            self.role = str(msg.get("role", self.role))
            self.driver = msg.get("driver", self.driver)
            self.note = "" if self.role == wire.DRIVER else str(msg.get("reason", ""))
            self._notify()
        elif t == wire.ERROR:
            self.errors.append(str(msg.get("message", "")))
            if rid is None:
                self.note = str(msg.get("message", ""))
                self._notify()
        elif t == wire.BYE:
            self.exit_code = msg.get("exit_code")
            self.lost = f"the engine ended: {msg.get('state', '')}" + (f" ({msg['reason']})" if msg.get("reason") else "")
            self._notify()
        if rid is not None and rid in self._waiting and not self._waiting[rid].done():
            self._waiting[rid].set_result(msg)

    def _set_lost(self, why: str) -> None:
        if not self.lost:
            self.lost = why
        self._fail_waiting(ConnectionError(self.lost))
        self._notify()

    def _fail_waiting(self, exc: Exception) -> None:
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(exc)

    def _notify(self) -> None:
        if self.on_status is not None:
            try:
                self.on_status(self.status())
            except Exception as e:  # a UI callback must not kill the link
                self.errors.append(f"on_status: {type(e).__name__}: {e}")


def _history(journal: Path, offset: int, deployment_id: str) -> list[ev.Event]:
    """The deployment's events in the first ``offset`` bytes of the journal: what happened before
    this console attached (everything after reaches it over the socket)."""
    if not offset or not journal.is_file():
        return []
    with open(journal, "rb") as f:
        data = f.read(offset)
    records = []
    needle = json.dumps(deployment_id).encode()  # skip other deployments' lines without parsing them
    for raw in data.split(b"\n"):
        if needle not in raw:
            continue
        try:
            rec = json.loads(raw)
        except ValueError:
            continue  # a torn line from a crash
        if isinstance(rec, dict):
            records.append(rec)
    return events_of(records, deployment_id)


def socket_answers(path: Path, timeout: float = 1.0) -> bool:
    """Whether a live engine accepts connections on ``path`` (a dead engine leaves a refusing file)."""
    if not path.exists():
        return False
    name, dir_fd = wire.short_path(path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(name)
        return True
    except OSError:
        return False
    finally:
        s.close()
        if dir_fd is not None:
            os.close(dir_fd)


def pid_alive(pid: int) -> bool:
    """A running process (a zombie is dead)."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rsplit(b")", 1)[-1].split()[0] not in (b"Z", b"X")


def ask_engine(journal_path: Path, intent: Intent, judge: Callable[[ev.Event, SocketLink], int | None],
               timeout: float = 60.0, say: Callable[[str], object] | None = None) -> int | None:
    """Send one intent to a running detached engine (taking the driver's seat, journaled) and
    wait for the event ``judge`` turns into an exit code.  None when no engine answers.

    This is how `rollback` and `promote` work from another terminal while an engine holds the
    lock."""
    say = say or _stderr
    sock = wire.socket_path_for(Path(journal_path))
    if not socket_answers(sock, 0.5):
        return None

    async def go() -> int:
        link = SocketLink.connect(sock, journal_path=Path(journal_path), take_over=True)
        try:
            await link.submit(intent)
            async for e in link.events():
                code = judge(e, link)
                if code is not None:
                    return code
            say("the engine went away before answering: run `canary-console status`")
            return ExitCode.ROUTER
        finally:
            await link.close(f"{intent.action} command")

    try:
        return asyncio.run(asyncio.wait_for(go(), timeout))
    except (LinkRefused, OSError, TimeoutError) as e:
        say(f"the running engine did not take the {intent.action} ({type(e).__name__}: {e}); "
             "use its console, or see `canary-console status`")
        return ExitCode.ROUTER


def _stderr(msg: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        print(f"canary-console: {msg}", file=sys.stderr, flush=True)
