"""The links a console attaches to besides the socket (console/remote/client.py): each is a
``console.core.protocols.EngineLink``.

* ``InProcessLink`` wraps an Engine running in the same process (``deploy --foreground``, the demo);
* ``ReplayLink`` serves a finished deployment from the journal (``replay``);
* ``JournalFollowLink`` follows the journal as the driver's engine appends to it (``watch``).
* ``MirrorLink``: the same, for the browser mirror (``serve`` -> ``watch --mirror``), role "observer".

Importing this module does not import the engine (replay and watch start faster)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from console.core import events as ev
from console.core.journal import read_records, tail_records
from console.core.protocols import LinkStatus
from console.core.state import deployments, events_of

if TYPE_CHECKING:
    from console.core.engine import Engine


class _Link:
    """What every local link shares: no separate engine process, no driver's seat to take."""

    role = "driver"
    detached = False
    can_take_over = False
    refusal = "this console cannot move traffic"

    def __init__(self) -> None:
        self.on_status: Callable[[LinkStatus], object] | None = None

    def status(self) -> LinkStatus:
        return LinkStatus(attached=True, role=self.role)

    async def submit(self, intent: ev.Intent) -> None:
        raise PermissionError(self.refusal)

    async def stop(self) -> None:
        raise PermissionError(self.refusal)

    async def take_over(self) -> None:
        raise PermissionError(self.refusal)

    async def close(self) -> None:
        return None


class InProcessLink(_Link):
    def __init__(self, engine: Engine, history: list[ev.Event] | None = None, queue_size: int = ev.SUBSCRIBER_MAX) -> None:
        super().__init__()
        self.engine = engine
        self._history = list(history or [])
        self._queue = engine.subscribe(queue_size)

    def history(self) -> list[ev.Event]:
        return list(self._history)

    async def events(self) -> AsyncIterator[ev.Event]:
        while True:
            yield await self._queue.get()

    def status(self) -> LinkStatus:
        import os
        import socket

        return LinkStatus(attached=True, role=self.role, engine_pid=os.getpid(), engine_host=socket.gethostname(),
                          deployment_id=self.engine.deployment_id, version=self.engine.version,
                          exit_code=self.engine.exit_code)

    async def submit(self, intent: ev.Intent) -> None:
        self.engine.submit(intent)

    async def close(self) -> None:
        self.engine.unsubscribe(self._queue)


class ReplayLink(_Link):
    """A finished deployment, read-only."""

    role = "replay"
    refusal = "replay is read-only"

    def __init__(self, events: list[ev.Event]) -> None:
        super().__init__()
        self._events = list(events)

    def history(self) -> list[ev.Event]:
        return list(self._events)

    async def events(self) -> AsyncIterator[Any]:
        await asyncio.Event().wait()  # nothing new ever happens
        yield  # pragma: no cover


class JournalFollowLink(_Link):
    """Events of one deployment, from the journal, as they are appended."""

    role = "watcher"
    refusal = "watch is read-only: the driver holds the lock (take over with `canary-console attach --take-over`)"

    def __init__(self, path: str | Path, deployment_id: str | None = None, poll: float = 0.5) -> None:
        super().__init__()
        self.path = Path(path)
        self.poll = poll
        records = list(read_records(self.path))
        deps = deployments(records)
        if deployment_id is None:
            live = [d for d in deps.values() if d.live]
            chosen = (live or list(deps.values()) or [None])[-1]
            deployment_id = chosen.deployment_id if chosen else None
        self.deployment_id = deployment_id
        self._history = events_of(records, deployment_id) if deployment_id else []
        self._offset = self.path.stat().st_size if self.path.exists() else 0
        self._closed = asyncio.Event()
        self._others: set[str] = set()

    def history(self) -> list[ev.Event]:
        return list(self._history)

    async def events(self) -> AsyncIterator[ev.Event]:
        while not self._closed.is_set():
            records, self._offset = await asyncio.to_thread(tail_records, self.path, self._offset)
            for rec in records:
                e = ev.event_from_record(rec)
                if e is None:
                    continue
                if self.deployment_id is None and isinstance(e, ev.DeploymentStarted):
                    self.deployment_id = e.deployment_id
                if e.deployment_id == self.deployment_id:
                    yield e
                elif isinstance(e, ev.DeploymentStarted) and e.deployment_id not in self._others:
                    self._others.add(e.deployment_id)
                    yield ev.Note(level="warning", deployment_id=self.deployment_id or "", ts=e.ts,
                                  message=f"another deployment started: {e.deployment_id}; run watch again to follow it")
            try:
                await asyncio.wait_for(self._closed.wait(), self.poll)
            except TimeoutError:
                pass

    async def close(self) -> None:
        self._closed.set()


class MirrorLink(JournalFollowLink):
    """``watch --mirror``, the console ``serve`` runs for each browser: it follows the journal like
    ``watch`` and refuses every intent, stop and take-over like it; the console binds no key that
    would ask (console/ui/app.py, role "observer")."""

    role = "observer"
    refusal = "the browser mirror is read-only: nothing here moves traffic (drive with `canary-console attach`)"
