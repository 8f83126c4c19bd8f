"""The detached engine's unix-socket server: engine events out, operator intents in.

One server per engine process, on ``<journal>.sock`` (mode 0600).  Why each rule exists:

* Owner only.  The file mode keeps other users out; SO_PEERCRED refuses any peer whose uid
  is not the engine's, should the mode ever be loosened (a copied directory, a umask).
* One driver.  The first console that asks to drive drives; the others watch.  A take-over
  hands the seat over at once (the old driver may be a frozen SSH session) and is journaled.
* Identity.  Every intent names its operator; it must be the operator the console declared
  in its hello, whose user is replaced by the account the kernel says the peer runs as.
  Accepted or refused, the engine journals it (OperatorAction).
* The engine never waits for a console.  Each console has a bounded queue; a console that
  falls behind is dropped (it can reattach and read what it missed from the journal).
  Malformed or oversized lines get an error line; the connection and the engine go on.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import pwd
import socket
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from console.core import events as ev
from console.core.events import Intent, Operator
from console.remote import wire

QUEUE_SIZE = 1000  # messages waiting for one console before it is dropped
MAX_CLIENTS = 32
HELLO_TIMEOUT = 10.0  # seconds a connection may stay silent before its hello
BYE_TIMEOUT = 2.0  # seconds to flush the last messages to consoles when the engine ends


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a unix socket, from the kernel."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def account_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid{uid}"


def bind_socket(path: Path) -> socket.socket:
    """A listening unix socket at ``path``, mode 0600 from its creation.

    The caller holds the driver lock, so a socket file already there is a dead engine's.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    name, dir_fd = wire.short_path(path)
    try:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            s.bind(name)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        s.listen(16)
        return s
    finally:
        if dir_fd is not None:
            os.close(dir_fd)


@dataclass(eq=False)
class Client:
    id: int
    writer: asyncio.StreamWriter
    pid: int
    uid: int
    queue: asyncio.Queue[bytes | None]
    role: str = ""  # "" until the hello
    protocol: int = 0
    declared: Operator | None = None  # as the console said
    operator: Operator | None = None  # as journaled (user from the kernel)
    closed: bool = False
    task: asyncio.Task[None] | None = None
    tags: dict[str, Any] = field(default_factory=dict)

    def label(self) -> str:
        who = self.operator.label() if self.operator else "an unnamed operator"
        return f"{who} (console pid {self.pid})"


class EngineServer:
    """Serves one Engine (console.core.engine.Engine) on a unix socket."""

    def __init__(
        self,
        engine: Any,
        socket_path: Path,
        *,
        queue_size: int = QUEUE_SIZE,
        max_clients: int = MAX_CLIENTS,
        hello_timeout: float = HELLO_TIMEOUT,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.engine = engine
        self.path = Path(socket_path)
        self.queue_size = queue_size
        self.max_clients = max_clients
        self.hello_timeout = hello_timeout
        self.owner_uid = os.getuid()
        self.clients: list[Client] = []
        self.driver: Client | None = None
        self._ids = itertools.count(1)
        self._server: asyncio.AbstractServer | None = None
        self._inode: int | None = None
        self._closing = False
        self._log = log or (lambda line: print(line, file=sys.stderr, flush=True))

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        sock = bind_socket(self.path)
        self._inode = os.stat(self.path).st_ino
        self._server = await asyncio.start_unix_server(self._serve, sock=sock)
        self.engine.add_listener(self.broadcast)
        self.log(f"listening on {self.path}")

    async def close(self, exit_code: int | None = None) -> None:
        """Say bye (with the exit code) to every console, flush briefly, stop listening."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        st = self.engine.state
        bye = wire.encode(wire.BYE, exit_code=exit_code, state=st.state, reason=st.reason)
        for c in list(self.clients):
            if c.role:
                self._enqueue(c, bye)
            self._enqueue(c, None)
        tasks = [c.task for c in self.clients if c.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=BYE_TIMEOUT)
        for c in list(self.clients):
            self._drop(c, "engine ended")
        self._unlink()

    def _unlink(self) -> None:
        try:
            if self._inode is not None and os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    def log(self, line: str) -> None:
        ts = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        try:
            self._log(f"{ts} server: {line}")
        except Exception:  # a full disk must not stop the engine
            pass

    # ------------------------------------------------------------------ events out
    def broadcast(self, e: ev.Event) -> None:
        """Engine listener: every event to every console that said hello."""
        line = wire.encode(wire.EVENT, record=e.to_record())
        for c in list(self.clients):
            if c.role:
                self._enqueue(c, line)

    def _enqueue(self, c: Client, line: bytes | None) -> None:
        if c.closed:
            return
        try:
            c.queue.put_nowait(line)
        except asyncio.QueueFull:
            self._drop(c, f"too slow: {c.queue.qsize()} messages waiting")

    def _send(self, c: Client, msg_type: str, **fields: Any) -> None:
        self._enqueue(c, wire.encode(msg_type, **fields))

    def _error(self, c: Client, code: str, message: str, **fields: Any) -> None:
        self._send(c, wire.ERROR, code=code, message=message, **fields)

    async def _write_loop(self, c: Client) -> None:
        try:
            while True:
                line = await c.queue.get()
                if line is None:
                    break
                c.writer.write(line)
                await c.writer.drain()
        except (ConnectionError, OSError, RuntimeError):
            pass
        finally:
            c.writer.close()

    def _drop(self, c: Client, reason: str) -> None:
        """Forget a console: a polite close after what is queued, or at once when it is too slow."""
        if c.closed:
            return
        c.closed = True
        if c in self.clients:
            self.clients.remove(c)
        slow = reason.startswith("too slow")
        if not slow:
            try:
                c.queue.put_nowait(None)  # the writer flushes what is queued, then closes
            except asyncio.QueueFull:
                slow = True
        if slow:  # its buffers are full: no goodbye can get through
            c.writer.transport.abort()
            if c.task is not None:
                c.task.cancel()
        if c.role:
            self.log(f"console {c.id} {c.label()} detached ({c.role}): {reason}")
        if c is self.driver:
            self.driver = None
            self._journal(ev.Note, level="info", message=f"driver console {c.label()} detached ({reason}): the rollout goes on")

    def _journal(self, cls: type[ev.Event], **kw: Any) -> None:
        """Emit an event through the engine (journal, state, every console), if it still runs."""
        if self._closing or self.engine.exit_code is not None:
            return
        try:
            self.engine.emit(cls, **kw)
        except Exception as exc:  # journaling an audit line never takes the engine down
            self.log(f"could not journal {cls.kind}: {type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ one connection
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        try:
            pid, uid, _ = peer_credentials(sock)
        except OSError:
            pid, uid = 0, -1
        c = Client(next(self._ids), writer, pid, uid, asyncio.Queue(self.queue_size))
        c.task = asyncio.create_task(self._write_loop(c))
        self.clients.append(c)
        if uid != self.owner_uid:
            self.log(f"refused a console of uid {uid} (pid {pid}): not the owner")
            owner = f"uid {self.owner_uid}, {account_name(self.owner_uid)}"
            self._error(c, "forbidden", f"refused: uid {uid} ({account_name(uid)}) is not the engine's owner "
                        f"({owner}); only the user who started the engine may attach")
            self._drop(c, "forbidden")
            await asyncio.wait([c.task], timeout=1.0)
            return
        if len(self.clients) > self.max_clients:
            self._error(c, "busy", f"refused: {self.max_clients} consoles are attached already")
            self._drop(c, "too many consoles")
            return
        buf = wire.LineBuffer(wire.MAX_LINE)
        loop = asyncio.get_running_loop()
        hello_deadline = loop.time() + self.hello_timeout
        try:
            while not c.closed:
                timeout = None if c.role else max(0.0, hello_deadline - loop.time())
                try:
                    data = await asyncio.wait_for(reader.read(65536), timeout)
                except TimeoutError:
                    self._error(c, "timeout", f"no hello within {self.hello_timeout:g}s")
                    self._drop(c, "no hello")
                    break
                if not data:
                    self._drop(c, "connection closed")
                    break
                for line, size in buf.feed(data):
                    if c.closed:
                        break
                    self._line(c, line, size)
        except (ConnectionError, OSError) as e:
            self._drop(c, f"connection lost: {e}")
        except asyncio.CancelledError:
            self._drop(c, "server closing")
            raise
        except Exception as e:  # a bug in one connection must never reach the engine
            self.log(f"console {c.id}: {type(e).__name__}: {e}")
            self._drop(c, f"internal error: {type(e).__name__}")

    def _line(self, c: Client, line: bytes | None, size: int) -> None:
        if line is None:
            self._error(c, "too_long", f"message of {size} bytes refused: longer than the {wire.MAX_LINE} bytes allowed")
            return
        if not line.strip():
            return
        try:
            msg = wire.decode(line, wire.TO_ENGINE)
            self._handle(c, msg)
        except wire.WireError as e:
            self._error(c, "malformed", str(e))

    def _handle(self, c: Client, msg: dict[str, Any]) -> None:
        t = msg["type"]
        if t == wire.PING:
            self._send(c, wire.PONG, id=msg.get("id"), t=msg.get("t"))
        elif t == wire.HELLO:
            self._hello(c, msg)
        elif not c.role:
            raise wire.WireError(f"{t} before hello; allowed first: hello")
        elif t == wire.INTENT:
            self._intent(c, msg)
        elif t == wire.TAKE_OVER:
            self._take_over(c, msg.get("id"))
        elif t == wire.STOP:
            self._stop(c, msg.get("id"))
        elif t == wire.BYE:
            self._drop(c, f"detached: {str(msg.get('reason') or 'quit')[:100]}")

    # ------------------------------------------------------------------ hello and roles
    def _hello(self, c: Client, msg: dict[str, Any]) -> None:
        if c.role:
            raise wire.WireError("hello sent twice; allowed: one hello per connection")
        declared = _operator(msg.get("operator"))
        c.declared = declared
        c.operator = Operator(user=account_name(c.uid), ssh_client=declared.ssh_client, host=declared.host)
        c.protocol = msg["v"]
        want = msg.get("role", wire.DRIVER)
        take_over = bool(msg.get("take_over"))
        note = ""
        role = wire.WATCHER
        if c.protocol != wire.VERSION:
            note = (f"this console speaks protocol v{c.protocol}, the engine v{wire.VERSION}: "
                    "it cannot drive (it may watch); use the canary-console of the engine's version to drive")
        elif want == wire.DRIVER or take_over:
            if self.driver is None or take_over:
                role = wire.DRIVER
            else:
                note = f"{self.driver.label()} drives; you watch. Drive with: canary-console attach --take-over"
        # Register and measure the journal in the same step (no await in between): every event
        # after this offset reaches the console through its queue, every one before it is in
        # the journal prefix it reads as history.
        c.role = wire.WATCHER
        journal_path = Path(self.engine.journal.path)
        try:
            offset = os.stat(journal_path).st_size
        except FileNotFoundError:
            offset = 0
        st = self.engine.state
        previous = self.driver
        self._send(
            c, wire.HELLO, protocol=wire.VERSION, role=role, note=note, client_id=c.id,
            engine_pid=os.getpid(), engine_host=socket.gethostname(), deployment_id=self.engine.deployment_id,
            version=self.engine.version, state=st.state, driver=previous.label() if previous else None,
            operator=_op_dict(c.operator), journal=str(journal_path), journal_offset=offset,
            max_line=wire.MAX_LINE,
        )
        self.log(f"console {c.id} {c.label()} attached as {role}" + (f" ({note})" if note else ""))
        if role == wire.DRIVER:
            if previous is not None:
                self._hand_over(c, previous, msg.get("id"))
            else:
                c.role = wire.DRIVER
                self.driver = c
                self._journal(ev.Note, level="info", message=f"driver console attached: {c.label()}")

    def _hand_over(self, c: Client, previous: Client | None, req_id: Any) -> None:
        c.role = wire.DRIVER
        self.driver = c
        detail = f"from {previous.label()}" if previous else "no console was driving"
        if previous is not None and previous is not c:
            previous.role = wire.WATCHER
            self._send(previous, wire.ROLE, role=wire.WATCHER, reason=f"{c.label()} took over", driver=c.label())
        self._send(c, wire.ROLE, role=wire.DRIVER, reason=f"took over {detail}", driver=c.label(), id=req_id)
        self._journal(ev.OperatorAction, action="take_over", operator=c.operator, detail=detail, accepted=True)
        self.log(f"console {c.id} {c.label()} took over {detail}")

    def _take_over(self, c: Client, req_id: Any) -> None:
        if c.protocol != wire.VERSION:
            self._error(c, "protocol", f"protocol v{c.protocol} console cannot drive a v{wire.VERSION} engine", id=req_id)
            return
        if c is self.driver:
            self._send(c, wire.ACK, id=req_id, detail="already driving")
            return
        self._hand_over(c, self.driver, req_id)

    # ------------------------------------------------------------------ intents
    def _refuse(self, c: Client, action: str, code: str, why: str, req_id: Any) -> None:
        self._error(c, code, why, id=req_id)
        self._journal(ev.OperatorAction, action=action, operator=c.operator, detail=f"refused: {why}", accepted=False)

    def _intent(self, c: Client, msg: dict[str, Any]) -> None:
        req_id = msg.get("id")
        body = msg.get("intent")
        if not isinstance(body, dict):
            raise wire.WireError("intent message has no \"intent\" object; allowed: {\"intent\": Intent.to_dict()}")
        try:
            it = Intent.from_dict(body)
        except (ValueError, TypeError) as e:
            self._error(c, "malformed", f"bad intent: {e}", id=req_id)
            return
        if it.action == "take_over":
            self._take_over(c, req_id)
            return
        if c.protocol != wire.VERSION or it.protocol != wire.VERSION:
            self._refuse(c, it.action, "protocol", f"a protocol v{it.protocol or c.protocol} console cannot drive a "
                         f"v{wire.VERSION} engine (it may watch)", req_id)
            return
        if c is not self.driver:
            who = self.driver.label() if self.driver else "nobody"
            self._refuse(c, it.action, "not_driver", f"this console watches ({who} drives): "
                         "take over first (canary-console attach --take-over)", req_id)
            return
        if it.operator != c.declared:
            self._refuse(c, it.action, "identity", f"intent names operator {it.operator.label()} but this console "
                         f"is {c.declared.label() if c.declared else 'not declared'}", req_id)
            return
        self.engine.submit(Intent(it.action, c.operator or it.operator, it.reason, it.approvals, it.protocol))
        self._send(c, wire.ACK, id=req_id, action=it.action)

    def _stop(self, c: Client, req_id: Any) -> None:
        """End this engine without touching the traffic (the driver's "quit and stop")."""
        if c is not self.driver:
            self._refuse(c, "stop", "not_driver", "only the driving console may stop the engine", req_id)
            return
        op = c.operator
        at_100 = self.engine.state.state == "at 100%"
        self._journal(ev.OperatorAction, action="stop", operator=op, accepted=True,
                      detail="monitoring at 100% ends" if at_100 else "engine stops; traffic stays where it is")
        if at_100:
            self.engine.stop()
        else:
            self.engine.interrupt(f"stop by {op.label() if op else 'an unnamed operator'}")
        self._send(c, wire.ACK, id=req_id, action="stop")


def _operator(d: Any) -> Operator:
    if not isinstance(d, dict) or not isinstance(d.get("user"), str) or not d["user"]:
        raise wire.WireError("hello has no operator identity; allowed: {\"operator\": {\"user\": ..., \"ssh_client\": ..., "
                             "\"host\": ...}}")
    ssh = d.get("ssh_client")
    host = d.get("host", "")
    return Operator(user=d["user"][:64], ssh_client=str(ssh)[:64] if ssh else None, host=str(host)[:255])


def _op_dict(op: Operator | None) -> dict[str, Any] | None:
    if op is None:
        return None
    return {"user": op.user, "ssh_client": op.ssh_client, "host": op.host}
