"""The engine socket's wire protocol and server, in one process: a real Engine (fake router and
gates, real time in milliseconds), a real unix socket, real SocketLinks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from console.core import events as ev
from console.core.engine import Engine, Settings
from console.core.events import Intent, Operator
from console.core.fakes import FakeHealth, FakeRouter, ScriptedChecker
from console.core.journal import Journal, read_records
from console.remote import wire
from console.remote.client import SocketLink, socket_answers
from console.remote.server import EngineServer
from tests.fixtures.real import await_for

OP = Operator("root", "10.1.2.3", "laptop")


# ---------------------------------------------------------------------------- framing
def test_lines_split_across_chunks_and_oversized_ones_are_skipped_whole():
    b = wire.LineBuffer(limit=10)
    assert b.feed(b"abc") == []
    assert b.feed(b"de\nfgh\n0123456789\n") == [(b"abcde", 5), (b"fgh", 3), (b"0123456789", 10)]
    # 11 bytes: refused once, with its size; the next line is intact
    assert b.feed(b"0123456789A\nok\n") == [(None, 11), (b"ok", 2)]
    # an oversized line in many pieces costs one report and no memory
    assert b.feed(b"x" * 8) == []
    assert b.feed(b"x" * 8) == [] and b.pending == 16
    assert b.feed(b"x" * 30) == [] and len(b._buf) == 0
    assert b.feed(b"xx\nnext\n") == [(None, 48), (b"next", 4)]
    assert b.pending == 0


@pytest.mark.parametrize(
    "line, needle",
    [
        (b"\xff", "not UTF-8"),
        (b"{", "not JSON"),
        (b"42", "a JSON int, not an object"),
        (b'{"v": 1}', 'no "type"'),
        (b'{"type": "ping"}', 'no integer "v"'),
        (b'{"v": true, "type": "ping"}', 'no integer "v"'),
        (b'{"v": 1, "type": "reboot"}', "unknown message type 'reboot'; allowed: hello, intent"),
    ],
)
def test_a_bad_message_is_named_in_one_line_with_what_is_allowed(line, needle):
    with pytest.raises(wire.WireError) as e:
        wire.decode(line, wire.TO_ENGINE)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_every_message_carries_the_protocol_version():
    msg = wire.decode(wire.encode(wire.PING, id=3, t=0.5).rstrip(b"\n"), wire.TO_ENGINE)
    assert msg == {"v": wire.VERSION, "type": "ping", "id": 3, "t": 0.5}
    assert wire.decode(wire.encode(wire.PING, v=7).rstrip(b"\n"))["v"] == 7


def test_a_long_socket_path_is_reached_through_its_directory(tmp_path):
    deep = tmp_path / ("d" * 90) / "journal.jsonl.sock"
    deep.parent.mkdir()
    name, fd = wire.short_path(deep)
    try:
        assert len(name) < 108 and fd is not None
        s = socket.socket(socket.AF_UNIX)
        s.bind(name)
        s.close()
        assert deep.exists()
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- a served engine
async def _served(tmp_path: Path, **server_kw: Any) -> tuple[Engine, EngineServer, Path]:
    s = Settings(stages=[1, 5, 100], observation_period=0.05, check_interval=0.02, canary_health_url="http://c/health",
                 stay_at_100=True)
    jp = tmp_path / "journal.jsonl"
    engine = Engine(s, version="v0.2.0", router=FakeRouter(), journal=Journal(jp), checkers=[ScriptedChecker()],
                    health=FakeHealth(), operator=OP)
    server = EngineServer(engine, wire.socket_path_for(jp), log=lambda line: None, **server_kw)
    await server.start()
    return engine, server, jp


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Engine, EngineServer, Path, asyncio.Task[int]]]:
    engine, server, jp = await _served(tmp_path)
    task = asyncio.create_task(engine.run())
    try:
        yield engine, server, jp, task
    finally:
        if not task.done():
            engine.interrupt("test ends")
        code = await asyncio.wait_for(task, 10)
        await server.close(code)
        engine.journal.close()



async def connect(path: Path, **kw: Any) -> SocketLink:
    """SocketLink.connect blocks (it is made for the CLI): off the loop that serves the engine."""
    return await asyncio.to_thread(SocketLink.connect, path, **kw)


async def test_history_then_live_events_give_the_journal_exactly_and_bye_carries_the_exit_code(served):
    engine, server, jp, task = served
    await await_for(lambda: engine.state.state == "at 100%")
    link = await connect(server.path, operator=OP)
    assert link.role == "driver" and link.engine_pid == os.getpid() and link.deployment_id == engine.deployment_id
    assert link.hello["protocol"] == wire.VERSION and link.hello["engine_host"] == socket.gethostname()
    statuses: list[Any] = []
    link.on_status = statuses.append
    live: list[ev.Event] = []

    async def read() -> None:
        async for e in link.events():
            live.append(e)

    reader = asyncio.create_task(read())
    await await_for(lambda: len([e for e in live if e.kind == "check"]) >= 3)  # it keeps checking at 100%
    assert await link.ping() >= 0
    await link.submit(Intent("promote", OP))
    assert await asyncio.wait_for(task, 10) == 0
    await server.close(0)
    await asyncio.wait_for(reader, 10)
    journal = [r for r in read_records(jp) if r["deployment_id"] == engine.deployment_id]
    assert [e.to_record() for e in link.history() + live] == journal  # no gap, no duplicate
    assert live[-1].kind == "promoted"
    st = link.status()
    assert st.exit_code == 0 and not st.attached and st.lost == "the engine ended: promoted"
    assert any(s.latency_ms is not None for s in statuses) and statuses[-1].exit_code == 0
    assert not server.path.exists()  # the engine took its socket with it
    await link.close()


async def test_a_slow_console_is_dropped_and_the_engine_and_the_others_go_on(tmp_path):
    engine, server, _ = await _served(tmp_path, queue_size=20)
    try:
        slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await asyncio.to_thread(slow.connect, str(server.path))
        slow.sendall(wire.encode(wire.HELLO, operator={"user": "root"}, role="watcher"))  # and never reads again
        fast = await connect(server.path, operator=OP, role="watcher")
        await await_for(lambda: len(server.clients) == 2 and all(c.role for c in server.clients))
        got: list[ev.Event] = []
        it = fast.events().__aiter__()
        big = "x" * 8000
        for i in range(400):  # about 3 MB: far more than the slow console's buffers and queue
            server.broadcast(ev.Note(message=f"{i} {big}", deployment_id=engine.deployment_id))
            got.append(await asyncio.wait_for(it.__anext__(), 5))
        assert [int(e.message.split()[0]) for e in got] == list(range(400))
        assert len(server.clients) == 1 and server.clients[0].operator.ssh_client == OP.ssh_client


        def drain() -> int:  # what reached the slow console before the engine hung up on it
            slow.settimeout(5)
            n = 0
            with contextlib.suppress(ConnectionResetError):
                while chunk := slow.recv(1 << 20):
                    n += len(chunk)
            return n

        assert await asyncio.to_thread(drain) < 400 * 8000
        slow.close()
        await fast.close()
    finally:
        await server.close(None)
        engine.journal.close()


async def test_a_dead_engines_socket_file_is_replaced_owner_only(tmp_path):
    path = wire.socket_path_for(tmp_path / "journal.jsonl")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # kill -9 leaves the file, nobody listening
    assert path.exists() and not socket_answers(path)
    engine, server, _ = await _served(tmp_path)
    try:
        assert await asyncio.to_thread(socket_answers, path)
        assert path.stat().st_mode & 0o777 == 0o600
    finally:
        await server.close(None)
        engine.journal.close()
    assert not path.exists()


async def test_the_engine_journals_take_over_and_refused_intents_with_who_asked(served):
    engine, server, jp, task = served
    await await_for(lambda: engine.state.state == "at 100%")
    a = await connect(server.path, operator=OP)
    other = Operator("root", "10.9.9.9", "desk")
    b = await connect(server.path, operator=other, take_over=True)
    try:
        assert b.role == "driver"
        ea = a.events().__aiter__()
        while (await asyncio.wait_for(ea.__anext__(), 5)).kind != "operator_action":
            pass
        await await_for(lambda: a.role == "watcher")
        assert "took over" in a.note and a.driver is not None and "10.9.9.9" in a.driver
        a.role = "driver"  # pretend: the engine still knows better
        with pytest.raises(PermissionError, match="watches"):
            await a.submit(Intent("rollback", OP))
        acts = [r for r in read_records(jp) if r["event"] == "operator_action"]
        assert [(r["action"], r["accepted"], r["operator"]["ssh_client"]) for r in acts] == [
            ("take_over", True, "10.9.9.9"), ("rollback", False, "10.1.2.3")]
        assert engine.state.state == "at 100%"  # the refused rollback changed nothing
        await b.stop()  # at 100%: monitoring ends, the traffic stays
        assert await asyncio.wait_for(task, 10) == 0
    finally:
        await a.close()
        await b.close()
    recs = list(read_records(jp))
    assert [r["event"] for r in recs if r["event"] in ("interrupted", "promoted", "rolled_back")] == []
    stop = [r for r in recs if r["event"] == "operator_action" and r["action"] == "stop"]
    assert stop and stop[0]["operator"]["ssh_client"] == "10.9.9.9" and "monitoring at 100% ends" in stop[0]["detail"]
    assert engine.state.state == "at 100%" and engine.router.weight == 100
