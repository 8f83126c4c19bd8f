"""`canary-console attach`: a console on the detached engine (console.remote.daemon), over its socket.

``SocketLink`` is the EngineLink of a detached engine: the handshake is synchronous (so the
CLI knows, before any UI starts, whether it drives, what it missed and which engine it is
on); the reading, pinging and sending run on whichever asyncio loop first uses the link
(the line printer's, or the Textual app's).

When no engine answers, attach says why in one line and, for an unfinished deployment whose
engine died (kill -9, OOM, reboot), offers resume or a break-glass rollback straight through
the router (``break_glass_rollback``, journaled).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import itertools
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from console.core import events as ev
from console.core.eventfmt import format_event
from console.core.events import Intent, Operator
from console.core.journal import Journal
from console.core.state import FINISHED, DeploymentState, deployments, events_of, fold, last_applied_weight, unfinished
from console.remote import wire

EXIT_OK, EXIT_USAGE, EXIT_ROLLED_BACK, EXIT_PRECONDITION, EXIT_LOCKED, EXIT_ROUTER, EXIT_INTERRUPTED = 0, 2, 3, 4, 5, 6, 130
PING_INTERVAL = 2.0
REQUEST_TIMEOUT = 5.0


class LinkRefused(Exception):
    """The engine refused this console (another user, too many consoles): one line why."""


@dataclass(frozen=True)
class LinkStatus:
    """What the console shows about its link: attached or not, to which engine, how fast."""

    attached: bool
    role: str  # driver | watcher
    engine_pid: int
    engine_host: str
    deployment_id: str
    version: str
    latency_ms: float | None  # last ping round trip
    driver: str | None  # who drives, as the engine last said
    note: str  # why this console does not drive, or the engine's last error
    lost: str  # "" while attached; why the link ended
    exit_code: int | None  # the engine's exit code, once it said bye


_END = object()


class SocketLink:
    """EngineLink over ``<journal>.sock``.  Build it with ``SocketLink.connect``."""

    def __init__(self, sock: socket.socket, hello: dict[str, Any], buf: wire.LineBuffer, pending: list[bytes],
                 operator: Operator, protocol: int, journal_path: Path, ping_interval: float) -> None:
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
        self.errors: list[str] = []
        self.on_status: Callable[[LinkStatus], object] | None = None
        self._history = _history(journal_path, int(hello.get("journal_offset") or 0), self.deployment_id)
        self._queue: asyncio.Queue[Any] | None = None
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
        return cls(s, hello, buf, lines, op, protocol, jp, ping_interval)

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
        self._queue = asyncio.Queue()
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


# ---------------------------------------------------------------------------- break glass
class BreakGlassRefused(Exception):
    """The break-glass rollback would race a live driver: one line why."""


@dataclass(frozen=True)
class BreakGlassResult:
    deployment_id: str
    from_weight: int | None  # what the upstream file said before
    took_s: float


def break_glass_rollback(cfg: Any, reason: str, operator: Operator | None = None, *, force: bool = False) -> BreakGlassResult:
    """Roll back to 0% straight through the router, without the engine (it is lost), journaled.

    Takes the driver lock first.  If a live process holds it: when its engine answers on the
    socket, roll back through the engine instead (BreakGlassRefused); when nothing answers (a
    hung engine), only ``force`` goes ahead without the lock.  Raises RouterError if nginx
    cannot be changed (the previous file is kept).  Blocking: call it from a thread in a UI.
    """
    from console.commands.cli import _router_change
    from console.core.lock import DriverLock, LockHeld, describe_holder, lock_path_for
    from console.core.protocols import RouterError
    from console.remote.daemon import socket_answers
    from console.wiring import build_router

    op = operator or Operator.current()
    jp = Path(cfg.journal_path)
    lk = DriverLock(lock_path_for(jp))
    try:
        lk.acquire(f"break-glass rollback by {op.label()}", op)
    except LockHeld as e:
        if socket_answers(wire.socket_path_for(jp)):
            raise BreakGlassRefused(f"the engine answers ({describe_holder(e.holder)}): roll back through it") from None
        if not force:
            raise BreakGlassRefused(f"the lock is held by {describe_holder(e.holder)} and its engine does not answer: "
                                    "force the break-glass rollback to go ahead without the lock") from None
        lk = None
    try:
        from console.core.journal import read_records

        records = list(read_records(jp))
        dep = unfinished(records)
        if dep is None:
            deps = list(deployments(records).values())
            dep = deps[-1] if deps else DeploymentState(deployment_id="manual")
        why = f"break-glass: {reason}" + ("" if lk is not None else " (forced: the lock holder does not answer)")
        router = build_router(cfg)
        before = router.current_weight()
        common = {"deployment_id": dep.deployment_id, "version": dep.version}
        with Journal(jp) as j:
            j.append(ev.OperatorAction(action="rollback", operator=op, detail=why, **common))
            try:
                took = asyncio.run(_router_change(cfg, j, 0, f"rollback: {why}", dep.deployment_id, dep.version,
                                                  router=router))
            except RouterError:
                raise
            if dep.deployment_id != "manual":
                j.append(ev.RolledBack(reason=why, automatic=False, index=max(dep.index, 0), from_weight=dep.weight or 0,
                                       snapshot=dep.results, **common))
        return BreakGlassResult(dep.deployment_id, before, took)
    finally:
        if lk is not None:
            lk.release()


async def break_glass_rollback_async(cfg: Any, reason: str, operator: Operator | None = None, *,
                                     force: bool = False) -> BreakGlassResult:
    """``break_glass_rollback`` off the event loop (for the Textual app)."""
    return await asyncio.to_thread(break_glass_rollback, cfg, reason, operator, force=force)


# ---------------------------------------------------------------------------- exit codes from the journal
def outcome_code(st: DeploymentState) -> int:
    """The exit code `deploy` would have returned for a deployment in this state."""
    if st.state == "rolled back":
        return EXIT_ROLLED_BACK
    if st.state in ("at 100%", "promoted"):
        return EXIT_OK
    if st.state == "failed":
        return EXIT_ROUTER if st.reason.startswith(("router:", "rollback to 0% failed")) else EXIT_PRECONDITION
    return EXIT_INTERRUPTED


def _say(msg: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        print(f"canary-console: {msg}", file=sys.stderr, flush=True)


def _out(line: str) -> bool:
    """Print one line; False when the terminal is gone (EIO, EPIPE)."""
    try:
        print(line, flush=True)
        return True
    except (OSError, ValueError):
        return False


# ---------------------------------------------------------------------------- attach
def run(args: argparse.Namespace, cfg: Any) -> int:
    """`canary-console attach [--take-over] [--headless] [--json]`."""
    json_lines = bool(getattr(args, "json", False))
    headless = bool(getattr(args, "headless", False)) or json_lines
    tty = sys.stdout.isatty() and sys.stdin.isatty()
    ui = ui_runner() if tty and not headless else None
    jp = Path(cfg.journal_path)
    link = _connect(jp, take_over=bool(getattr(args, "take_over", False)), driver=ui is not None)
    if isinstance(link, int):
        return link
    if link is None:
        return _no_engine(cfg, tty and not headless, json_lines=json_lines)
    return open_console(link, cfg, ui, json_lines=json_lines)


def ui_runner() -> Callable[..., int] | None:
    """console.ui.app.run_console, when the Textual console is installed."""
    try:
        from console.ui.app import run_console
    except ImportError:
        return None
    return run_console


def _connect(jp: Path, *, take_over: bool, driver: bool, timeout: float = 3.0) -> SocketLink | int | None:
    """A link to the engine; None when no engine answers; an exit code when refused."""
    from console.core.lock import describe_holder, is_held, lock_path_for, read_holder
    from console.remote.daemon import socket_answers

    sock = wire.socket_path_for(jp)
    lp = lock_path_for(jp)
    deadline = time.monotonic() + timeout
    while True:
        try:
            # a console that cannot take keys still watches, unless asked to take the seat
            role = wire.DRIVER if (driver or take_over) else wire.WATCHER
            return SocketLink.connect(sock, journal_path=jp, role=role, take_over=take_over)
        except LinkRefused as e:
            _say(f"the engine refused this console: {e}")
            return EXIT_LOCKED
        except OSError:
            pass
        if not is_held(lp):
            return None  # no engine: nobody holds the lock
        if time.monotonic() >= deadline:
            holder = read_holder(lp)
            _say(f"the driver lock is held by {describe_holder(holder)} but no engine answers on {sock} "
                 "(a --foreground or --headless deploy, or a weights/rollback command, has no socket): "
                 "watch with `canary-console watch` or `canary-console status`")
            return EXIT_LOCKED
        if socket_answers(sock, timeout=0.2):
            continue
        time.sleep(0.05)  # an engine that is starting: poll until the deadline


def open_console(link: SocketLink, cfg: Any, ui: Callable[..., int] | None, *, json_lines: bool = False) -> int:
    """The Textual console (``ui``, see ui_runner) or, without it, one line per event."""
    if ui is not None:
        kw = {"cfg": cfg, "break_glass": break_glass_rollback, "version": link.version}
        params = inspect.signature(ui).parameters
        accepted = {k: v for k, v in kw.items() if k in params}

        def hung_up(signum: int, frame: Any) -> None:
            # the terminal is gone: detach (journaled by the engine when we drove) and leave; there
            # is no screen left to restore.  A UI that handles SIGHUP on its own loop replaces this.
            link.hangup("SIGHUP")
            os._exit(EXIT_OK)

        previous = signal.signal(signal.SIGHUP, hung_up)
        try:
            return int(ui(link, **accepted))
        finally:
            signal.signal(signal.SIGHUP, previous)
    return asyncio.run(print_lines(link, json_lines=json_lines))


async def print_lines(link: SocketLink, *, json_lines: bool = False) -> int:
    """Line mode: the history it missed, then live events, until the engine ends or we detach.

    Ctrl-C, SIGTERM and SIGHUP (a closed terminal) detach: the rollout goes on."""
    def show(e: ev.Event) -> bool:
        return _out(json.dumps(e.to_record()) if json_lines else format_event(e))

    loop = asyncio.get_running_loop()
    detach = asyncio.Event()
    why: list[str] = []

    def on_signal(name: str) -> None:
        why.append(name)
        detach.set()

    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    for sig in sigs:  # before the first line: a hang-up from now on is a clean detach
        loop.add_signal_handler(sig, on_signal, sig.name)
    for e in link.history():
        if not show(e):
            why.append("terminal gone")
            detach.set()
            break
    _say(f"attached to engine pid {link.engine_pid} on {link.engine_host} as {link.role}: deployment "
         f"{link.deployment_id}" + (f" ({link.note})" if link.note else "")
         + ". Leaving (Ctrl-C, closed terminal) detaches; the rollout goes on.")

    async def pump() -> bool:
        async for e in link.events():
            if not show(e):
                why.append("terminal gone")
                return False
        return True

    pump_task = asyncio.create_task(pump())
    detach_task = asyncio.create_task(detach.wait())
    try:
        await asyncio.wait({pump_task, detach_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for sig in sigs:
            loop.remove_signal_handler(sig)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a second hang-up while we close changes nothing
        detach_task.cancel()
    ended = pump_task.done() and pump_task.result() and not detach.is_set()
    if not ended:
        pump_task.cancel()
        with contextlib.suppress(BaseException):
            await pump_task
        await link.close(why[0] if why else "quit")
        _say(f"detached ({why[0] if why else 'quit'}): the rollout goes on in engine pid {link.engine_pid} on "
             f"{link.engine_host}. Reattach: canary-console attach")
        return EXIT_OK
    await link.close()
    return _after_end(link)


def _after_end(link: SocketLink) -> int:
    """The engine said bye (its exit code), or vanished (look at the journal)."""
    if link.exit_code is not None:
        _say(f"engine pid {link.engine_pid} ended: {link.lost.removeprefix('the engine ended: ')}")
        return int(link.exit_code)
    from console.core.journal import read_records

    records = list(read_records(link.journal_path))
    st = fold(events_of(records, link.deployment_id))
    if st.state in FINISHED or st.state == "at 100%":
        return outcome_code(st)
    _say(lost_line(st, records))
    return EXIT_INTERRUPTED


def lost_line(st: DeploymentState, records: list[dict[str, Any]]) -> str:
    w = last_applied_weight(r for r in records if r.get("deployment_id") == st.deployment_id)
    return (f"engine lost: deployment {st.deployment_id} ({st.version}) at stage {st.stage_label()}, engine pid "
            f"{st.engine_pid} on {st.engine_host or '?'} is gone; the journal says nginx last served canary "
            f"{0 if w is None else w}%, and the traffic stays there. Resume: canary-console deploy --version "
            f"{st.version} --resume   Roll back: canary-console rollback --reason \"...\"")


def _no_engine(cfg: Any, interactive: bool, json_lines: bool = False) -> int:
    """No engine answers: an unfinished deployment means its engine died; otherwise show the last one."""
    from console.core.journal import read_records

    jp = Path(cfg.journal_path)
    records = list(read_records(jp))
    dep = unfinished(records)
    if dep is None:
        deps = [d for d in deployments(records).values() if not d.dry_run] or list(deployments(records).values())
        if not deps:
            _say(f"no engine is running and {jp} holds no deployment: start one with `canary-console deploy --version ...`")
            return EXIT_PRECONDITION
        last = deps[-1]
        for e in events_of(records, last.deployment_id):
            if not _out(json.dumps(e.to_record()) if json_lines else format_event(e)):
                return EXIT_OK
        _say(f"no engine is running: deployment {last.deployment_id} ({last.version}) ended {last.state}"
             + (f" ({last.reason})" if last.reason else ""))
        return outcome_code(last)
    for e in events_of(records, dep.deployment_id):
        if not _out(json.dumps(e.to_record()) if json_lines else format_event(e)):
            return EXIT_OK
    _say(lost_line(dep, records))
    if not interactive:
        return EXIT_INTERRUPTED
    return _offer(cfg, dep, records)


def _offer(cfg: Any, dep: DeploymentState, records: list[dict[str, Any]]) -> int:
    """The engine died: resume (reconciling the upstream file first), roll back now, or leave it."""
    try:
        answer = input("[r] resume   [b] roll back now (break-glass, straight through the router)   [q] leave it: ")
    except EOFError:
        answer = "q"
    answer = answer.strip().lower()
    if answer in ("r", "resume"):
        from console.commands.cli import build_parser
        from console.commands.deploy import deploy

        args = build_parser().parse_args(["deploy", "--version", dep.version, "--resume"])
        return deploy(args, cfg)
    if answer in ("b", "rollback", "roll back"):
        from console.core.protocols import RouterError

        try:
            res = break_glass_rollback(cfg, "engine lost; rolled back from `canary-console attach`")
        except BreakGlassRefused as e:
            _say(str(e))
            return EXIT_LOCKED
        except RouterError as e:
            _say(f"break-glass rollback failed, the previous upstream file is kept: {e}")
            return EXIT_ROUTER
        print(f"rolled back (break-glass): canary 0% / production 100%, nginx serves it (verified in {res.took_s * 1000:.0f} ms)")
        return EXIT_ROLLED_BACK
    return EXIT_INTERRUPTED


# ---------------------------------------------------------------------------- after `deploy` spawned the engine
def attach_spawned(cfg: Any, proc: Any, deployment_id: str, *, ready: bool, ui: Callable[..., int] | None,
                   json_lines: bool = False) -> int:
    """`deploy` started the engine: attach to it, or report how it ended if it already did."""
    jp = Path(cfg.journal_path)
    link: SocketLink | None = None
    if ready:
        try:
            link = SocketLink.connect(wire.socket_path_for(jp), journal_path=jp,
                                      role=wire.DRIVER if ui is not None else wire.WATCHER)
        except (OSError, LinkRefused):
            link = None
    if link is not None:
        code = open_console(link, cfg, ui, json_lines=json_lines)
        if link.exit_code is not None:
            with contextlib.suppress(Exception):
                proc.wait(timeout=10)
        return code
    # the engine ended before we could attach (a failed precondition, a config error, a crash)
    try:
        rc = proc.wait(timeout=30)
    except Exception:
        rc = None
    from console.core.journal import read_records

    records = list(read_records(jp))
    evs = events_of(records, deployment_id)
    for e in evs:
        if not _out(json.dumps(e.to_record()) if json_lines else format_event(e)):
            break
    if not evs:
        tail = _log_tail(wire.log_path_for(jp))
        _say(f"the engine exited ({rc}) before its first event; its log {wire.log_path_for(jp)} says: {tail}")
        return int(rc) if isinstance(rc, int) and rc > 0 else EXIT_PRECONDITION
    st = fold(evs)
    if rc is not None and rc >= 0:
        return int(rc)
    if st.state in FINISHED or st.state == "at 100%":
        return outcome_code(st)
    _say(lost_line(st, records))
    return EXIT_INTERRUPTED


def _log_tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty)"


# ---------------------------------------------------------------------------- python -m console.commands.attach
def main(argv: list[str] | None = None) -> int:
    """The attach command on its own: `python -m console.commands.attach [--config P] [--take-over] [--headless] [--json]`."""
    from console.core.config import ConfigError, load_config

    p = argparse.ArgumentParser(prog="python -m console.commands.attach", description="attach a console to the running engine")
    p.add_argument("--config", metavar="PATH")
    p.add_argument("--env-file", metavar="PATH")
    p.add_argument("--take-over", action="store_true", help="ask the current driver to hand over")
    p.add_argument("--headless", action="store_true", help="no console: one line per event")
    p.add_argument("--json", action="store_true", help="with --headless: JSON lines")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.env_file)
    except ConfigError as e:
        print(f"canary-console: config error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return run(args, cfg)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


def ask_engine(cfg: Any, intent: Intent, judge: Callable[[ev.Event, SocketLink], int | None],
               timeout: float = 60.0) -> int | None:
    """Send one intent to a running detached engine (taking the driver's seat, journaled) and
    wait for the event ``judge`` turns into an exit code.  None when no engine answers.

    This is how `rollback` and `promote` work from another terminal while an engine holds the
    lock."""
    from console.remote.daemon import socket_answers

    sock = wire.socket_path_for(cfg.journal_path)
    if not socket_answers(sock, 0.5):
        return None

    async def go() -> int:
        link = SocketLink.connect(sock, journal_path=cfg.journal_path, take_over=True)
        try:
            await link.submit(intent)
            async for e in link.events():
                code = judge(e, link)
                if code is not None:
                    return code
            _say("the engine went away before answering: run `canary-console status`")
            return EXIT_ROUTER
        finally:
            await link.close(f"{intent.action} command")

    try:
        return asyncio.run(asyncio.wait_for(go(), timeout))
    except (LinkRefused, OSError, TimeoutError) as e:
        _say(f"the running engine did not take the {intent.action} ({type(e).__name__}: {e}); "
             "use its console, or see `canary-console status`")
        return EXIT_ROUTER
