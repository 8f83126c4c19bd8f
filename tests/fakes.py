"""Fakes for engine tests: a router that records weights, scripted checkers and health."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from console.core.events import PASS, GateResult
from console.core.protocols import CheckContext, HealthResult, RouterError


class FakeRouter:
    def __init__(self, weight: int | None = 0, fail_on: Sequence[int] = ()) -> None:
        self.weight = weight
        self.applied: list[int] = []
        self.fail_on = set(fail_on)

    def current_weight(self) -> int | None:
        return self.weight

    async def apply(self, weight: int, generation: str) -> float:
        if weight in self.fail_on:
            raise RouterError("nginx -t failed", detail="nginx: [emerg] host not found", restored_weight=self.weight)
        self.weight = weight
        self.applied.append(weight)
        return 0.001


class FakeHealth:
    def __init__(self, ok: bool = True) -> None:
        self.ok = ok
        self.calls = 0

    async def check(self, url: str, timeout: float) -> HealthResult:
        self.calls += 1
        return HealthResult(self.ok, 200 if self.ok else 503, "healthy" if self.ok else "HTTP 503, status='unhealthy'")


class ScriptedChecker:
    """Answers each check with ``fn(ctx)``; default: every gate passes on data."""

    name = "scripted"

    def __init__(self, fn: Callable[[CheckContext], Sequence[GateResult]] | None = None) -> None:
        self.fn = fn or (lambda ctx: [GateResult("error_rate", PASS, value=0.0, threshold=0.005, window="5m", samples=100)])
        self.contexts: list[CheckContext] = []

    async def check(self, ctx: CheckContext) -> Sequence[GateResult]:
        self.contexts.append(ctx)
        return list(self.fn(ctx))
