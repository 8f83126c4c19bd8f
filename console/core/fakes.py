"""Fakes for the Protocols of console/core/protocols.py, in one place: a router that records
weights, scripted checkers, health, a metric source and an engine link.  Tests (and the UI
bench) choose them instead of the real adapters; each behaves as its Protocol says."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

from console.core import events as ev
from console.core.events import PASS, GateResult
from console.core.protocols import CheckContext, CounterSnapshot, HealthResult, LinkStatus, WarmupResult, WindowStats
from console.core.routing import RouterError


class FakeRouter:
    """Records the weights it applies.  ``fail_on``: weights whose ``nginx -t`` fails (the old
    file stays); ``unconfirmed_on``: weights nginx is reloaded with but never confirms (the new
    file stays); ``late_on``: weights confirmed only after the deadline (the next probe sees
    them); ``preflight_error``: what the preflight raises, if anything."""

    def __init__(self, weight: int | None = 0, fail_on: Sequence[int] = (), unconfirmed_on: Sequence[int] = (),
                 late_on: Sequence[int] = (), preflight_error: RouterError | None = None) -> None:
        self.weight = weight
        self.applied: list[int] = []
        self.shadows: list[bool] = []  # the ``shadow`` of each applied change, beside ``applied``
        self.shadow = False  # the mirror is on (the shadow stage)
        self.fail_on = set(fail_on)
        self.unconfirmed_on = set(unconfirmed_on)
        self.late_on = set(late_on)
        self.preflight_error = preflight_error
        self.preflights = 0
        self.served: str | None = None  # the generation "nginx" answers

    def current_weight(self) -> int | None:
        return self.weight

    async def apply(self, weight: float, generation: str, shadow: bool = False) -> float:
        if weight in self.fail_on:
            raise RouterError("nginx -t failed", detail="nginx: [emerg] host not found", restored_weight=self.weight)
        if weight in self.unconfirmed_on or weight in self.late_on:
            self.weight = weight  # the new file stays; nginx was reloaded
            if weight in self.late_on:
                self.served = generation
            err = RouterError(f"nginx did not serve generation {generation} within 10s")
            err.reloaded = True
            raise err
        self.weight = weight
        self.applied.append(weight)
        self.shadows.append(shadow)
        self.shadow = shadow
        self.served = generation
        return 0.001

    async def preflight(self, generation: str | None = None) -> float:
        self.preflights += 1
        if self.preflight_error is not None:
            raise self.preflight_error
        self.served = generation
        return 0.001

    async def served_generation(self, timeout: float = 2.0) -> tuple[str | None, str]:
        return (self.served, "") if self.served else (None, "connection refused")


class FakeHealth:
    def __init__(self, ok: bool = True) -> None:
        self.ok = ok
        self.calls = 0

    async def check(self, url: str, timeout: float) -> HealthResult:
        self.calls += 1
        return HealthResult(self.ok, 200 if self.ok else 503, "healthy" if self.ok else "HTTP 503, status='unhealthy'")

    async def aclose(self) -> None:
        return None


class FakeWarmer:
    """A warm-up on the engine's clock: each request takes ``per_request`` clock seconds; the
    first ``fail_first`` of them fail (``error`` says how), the rest answer 2xx.  Stops early
    like the real one once more than half failed.  ``calls`` records each ``warm(count)``."""

    def __init__(self, clock: Any = None, per_request: float = 0.0, fail_first: int = 0,
                 error: str = "no answer (Connection refused)") -> None:
        self.clock = clock
        self.per_request = per_request
        self.fail_first = fail_first
        self.error = error
        self.calls: list[int] = []
        self.closed = False

    def describe(self, count: int) -> str:
        return f"{count} POST http://canary.test/api/generate, straight to the canary"

    async def warm(self, count: int, progress: Callable[[int, int, int], object]) -> WarmupResult:
        self.calls.append(count)
        t0 = self.clock.monotonic() if self.clock is not None else 0.0
        ok = failed = sent = 0
        while sent < count and failed * 2 <= count:
            if self.clock is not None and self.per_request:
                await self.clock.sleep(self.per_request)
            sent += 1
            if sent <= self.fail_first:
                failed += 1
            else:
                ok += 1
            progress(sent, ok, failed)
        took = (self.clock.monotonic() - t0) if self.clock is not None else 0.0
        return WarmupResult(requested=count, sent=sent, ok=ok, failed=failed, seconds=took,
                            first_error=self.error if failed else "")

    async def aclose(self) -> None:
        self.closed = True


class ScriptedChecker:
    """Answers each check with ``fn(ctx)``; default: every gate passes on data."""

    name = "scripted"

    def __init__(self, fn: Callable[[CheckContext], Sequence[GateResult]] | None = None) -> None:
        self.fn = fn or (lambda ctx: [GateResult("error_rate", PASS, value=0.0, threshold=0.005, window="5m", samples=100)])
        self.contexts: list[CheckContext] = []

    async def check(self, ctx: CheckContext) -> Sequence[GateResult]:
        self.contexts.append(ctx)
        return list(self.fn(ctx))


class FakeMetricSource:
    """Answers ``stats`` with a fixed WindowStats, or raises the exception it was given."""

    kind = "stub"

    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome
        self.closed = 0

    async def stats(self, since: float = 0.0) -> WindowStats:
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    async def snapshot(self) -> CounterSnapshot:
        raise NotImplementedError

    def start(self) -> None:
        return None

    async def aclose(self) -> None:
        self.closed += 1

    def describe(self) -> str:
        return "stub"


class ScriptedLink:
    """An EngineLink for Pilot and snapshot tests (and the bench): plays the events a test feeds,
    records the intents the console submits.  An in-process link: no detached engine."""

    detached = False
    can_take_over = False

    def __init__(self, history: Iterable[ev.Event] = (), role: str = "driver") -> None:
        self.role = role
        self.on_status: Callable[[LinkStatus], object] | None = None
        self._history = list(history)
        self._queue: asyncio.Queue[ev.Event | None] = asyncio.Queue()
        self.submitted: list[ev.Intent] = []
        self.closed = False
        self.on_submit: Any = None  # optional callable(intent) -> events to play back (an engine stand-in)

    def history(self) -> list[ev.Event]:
        return list(self._history)

    def feed(self, *events: ev.Event) -> None:
        for e in events:
            self._queue.put_nowait(e)

    def end(self) -> None:
        self._queue.put_nowait(None)

    async def events(self) -> AsyncIterator[ev.Event]:
        while True:
            e = await self._queue.get()
            if e is None:
                return
            yield e

    async def submit(self, intent: ev.Intent) -> None:
        if self.role != "driver":
            raise PermissionError(f"this console is a {self.role}: it cannot move traffic")
        self.submitted.append(intent)
        if self.on_submit is not None:
            self.feed(*self.on_submit(intent))

    def status(self) -> LinkStatus:
        return LinkStatus(attached=not self.closed, role=self.role)

    async def stop(self) -> None:
        raise PermissionError("a scripted link has no engine to stop")

    async def take_over(self) -> None:
        raise PermissionError("a scripted link has no driver's seat")

    async def close(self) -> None:
        self.closed = True


class ScriptedDetachedLink(ScriptedLink):
    """A ScriptedLink shaped like console.remote.client.SocketLink: an engine in another process,
    with a status the test changes (``lose``), ``stop`` and ``take_over``."""

    detached = True
    can_take_over = True

    def __init__(self, history: Iterable[ev.Event] = (), role: str = "driver") -> None:
        super().__init__(history, role)
        self._status = LinkStatus(attached=True, role=role, engine_pid=4242, engine_host="ops1",
                                  deployment_id="v0.2.0-20260101T000000Z-ab12", version="v0.2.0", latency_ms=2.0,
                                  driver="alice")
        self.stopped = False

    def status(self) -> LinkStatus:
        return self._status

    def _changed(self, **kw: Any) -> None:
        self._status = dataclasses.replace(self._status, **kw)
        if self.on_status is not None:
            self.on_status(self._status)

    def lose(self, why: str) -> None:
        self._changed(lost=why, attached=False)

    async def stop(self) -> None:
        self.stopped = True

    async def take_over(self) -> None:
        self.role = "driver"
        self._changed(role="driver")
