"""Clocks: the engine asks a Clock for time and sleeps through it, so tests swap in a
FakeClock that jumps virtual time instead of sleeping.  asyncio is imported by the sleeps
only: the CLI's rollback (which imports this through console.wiring) runs without it."""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def utcnow(self) -> datetime: ...

    async def sleep(self, seconds: float) -> None: ...


class RealClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def utcnow(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        import asyncio

        await asyncio.sleep(max(0.0, seconds))


class FakeClock:
    """Virtual time.  ``sleep`` advances time at once (after yielding to the loop), firing
    any callbacks scheduled with ``at`` on the way, so a 15-minute stage runs in
    milliseconds and a test can script "at t=120 the canary starts failing"."""

    def __init__(self, start: float = 0.0, wall: datetime | None = None) -> None:
        self.t = start
        self._wall0 = wall or datetime(2026, 1, 1, tzinfo=UTC)
        self._start = start
        self._timers: list[tuple[float, int, Callable[[], object]]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self.t

    def utcnow(self) -> datetime:
        return self._wall0 + timedelta(seconds=self.t - self._start)

    def at(self, t: float, fn: Callable[[], object]) -> None:
        heapq.heappush(self._timers, (t, next(self._seq), fn))

    def advance(self, seconds: float) -> None:
        target = self.t + max(0.0, seconds)
        while self._timers and self._timers[0][0] <= target:
            t, _, fn = heapq.heappop(self._timers)
            self.t = max(self.t, t)
            fn()
        self.t = target

    async def sleep(self, seconds: float) -> None:
        import asyncio

        await asyncio.sleep(0)
        self.advance(seconds)
        await asyncio.sleep(0)
