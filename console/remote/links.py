"""Engine links: how a console talks to an engine (see console.core.protocols.EngineLink).

InProcessLink wraps an Engine running in the same process (``deploy --foreground``);
ReplayLink serves a finished deployment from the journal.  The socket link for a detached
engine speaks the same records."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from console.core import events as ev
from console.core.engine import Engine


class InProcessLink:
    role = "driver"

    def __init__(self, engine: Engine, history: list[ev.Event] | None = None) -> None:
        self.engine = engine
        self._history = list(history or [])
        self._queue = engine.subscribe()

    def history(self) -> list[ev.Event]:
        return list(self._history)

    async def events(self) -> AsyncIterator[ev.Event]:
        while True:
            yield await self._queue.get()

    async def submit(self, intent: ev.Intent) -> None:
        if self.role != "driver":
            raise PermissionError(f"this console is a {self.role}: it cannot move traffic")
        self.engine.submit(intent)

    async def close(self) -> None:
        self.engine.unsubscribe(self._queue)


class ReplayLink:
    """A finished deployment, read-only."""

    role = "replay"

    def __init__(self, events: list[ev.Event]) -> None:
        self._events = events

    def history(self) -> list[ev.Event]:
        return list(self._events)

    async def events(self) -> AsyncIterator[Any]:
        await asyncio.Event().wait()  # nothing new ever happens
        yield  # pragma: no cover

    async def submit(self, intent: ev.Intent) -> None:
        raise PermissionError("replay is read-only")

    async def close(self) -> None:
        return None
