"""The guide's "warm up canary": ``[rollout] warmup_requests`` sent straight to the canary.

``HttpWarmer.from_config(cfg, source)`` is a ``console.core.protocols.Warmer``.  The requests go
to the host of ``[health] canary_url`` (the address the console already reaches the canary at,
not through nginx: nginx's access log and the split gate never see them) at ``warmup_path``,
``warmup_method`` with the ``warmup_bodies`` in turn, a few at a time.  It stops as soon as more
than half failed (the warm-up can no longer pass; an unreachable canary is told in seconds).

Kept out of the gates' samples: before the first request it reads the metric source's canary
request counter; afterwards it polls the source until that counter shows every request the
canary answered (or ``SETTLE_TIMEOUT`` passed), so that the engine's ``samples_since``, taken
when ``warm`` returns, comes after a sample that already holds the whole warm-up.  A window that
starts there (console/adapters/metrics: ``stats(since)``) and the analysis' first interval (its
baseline is read after it) count none of it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from console.core.protocols import MetricSource, WarmupResult

CONCURRENCY = 4  # requests in flight at once
SETTLE_TIMEOUT = 60.0  # seconds to wait for the metric source to count the warm-up (Prometheus' default scrape is 1m)
SETTLE_POLL = 0.5
USER_AGENT = "canary-console-warmup"


def canary_origin(canary_health_url: str) -> str:
    """``http://host:port`` of ``[health] canary_url``."""
    parts = urlsplit(canary_health_url)
    return urlunsplit((parts.scheme, parts.netloc, "", "", ""))


class HttpWarmer:
    def __init__(self, url: str, method: str = "POST", bodies: list[str] | None = None, timeout: float = 5.0,
                 source: MetricSource | None = None, *, settle_timeout: float = SETTLE_TIMEOUT) -> None:
        self.url = url
        self.method = method
        self.bodies = list(bodies or []) if method != "GET" else []
        self.timeout = timeout
        self.source = source
        self.settle_timeout = settle_timeout
        self._client: Any = None

    @classmethod
    def from_config(cls, cfg: Any, source: MetricSource | None = None) -> HttpWarmer:
        r = cfg["rollout"]
        return cls(canary_origin(cfg["health"]["canary_url"]) + r["warmup_path"], r["warmup_method"],
                   list(r["warmup_bodies"]), float(cfg["health"]["timeout"]), source)

    def describe(self, count: int) -> str:
        n = len(self.bodies)
        bodies = f" with {n} JSON bod{'y' if n == 1 else 'ies in turn'}" if n else ""
        return f"{count} {self.method} {self.url}{bodies}, straight to the canary"

    async def _canary_requests(self) -> float | None:
        """The canary's request counter as the metric source has it now (None: no source or no answer)."""
        if self.source is None:
            return None
        try:
            snap = await self.source.snapshot()
        except Exception:  # the gates report an unreachable source; the warm-up goes on without settling
            return None
        return sum(snap.canary.requests.values()) if snap.canary is not None else 0.0

    async def warm(self, count: int, progress: Callable[[int, int, int], object]) -> WarmupResult:
        import httpx

        from console.adapters.metrics.prometheus import os_reason

        t0 = time.monotonic()
        before = await self._canary_requests()
        if self._client is None:
            self._client = httpx.AsyncClient(trust_env=False, follow_redirects=False,
                                             headers={"User-Agent": USER_AGENT, "Content-Type": "application/json"})
        client = self._client
        state = {"next": 0, "sent": 0, "ok": 0, "failed": 0, "answered": 0}
        first_error = ""

        async def worker() -> None:
            nonlocal first_error
            while state["next"] < count and state["failed"] * 2 <= count:
                i = state["next"]
                state["next"] += 1
                body = self.bodies[i % len(self.bodies)] if self.bodies else None
                error = ""
                try:
                    r = await client.request(self.method, self.url, content=body, timeout=self.timeout)
                except httpx.TimeoutException:
                    error = f"timed out after {self.timeout:g}s"
                except httpx.HTTPError as e:
                    error = f"no answer ({os_reason(e)})"
                else:
                    state["answered"] += 1
                    if not 200 <= r.status_code < 300:
                        error = f"HTTP {r.status_code}"
                state["sent"] += 1
                if error:
                    state["failed"] += 1
                    first_error = first_error or error
                else:
                    state["ok"] += 1
                progress(state["sent"], state["ok"], state["failed"])

        await asyncio.gather(*(worker() for _ in range(max(0, min(CONCURRENCY, count)))))
        result = WarmupResult(requested=count, sent=state["sent"], ok=state["ok"], failed=state["failed"],
                              seconds=time.monotonic() - t0, first_error=first_error)
        if result.passed and before is not None and state["answered"]:
            settled = await self._settle(before + state["answered"], state["answered"])
            result = dataclasses.replace(result, seconds=time.monotonic() - t0, settled=settled)
        return result

    async def _settle(self, target: float, answered: int) -> str:
        """Until the source counts every answered request (one line: how that went)."""
        t0 = time.monotonic()
        while True:
            now = await self._canary_requests()
            waited = time.monotonic() - t0
            if now is not None and now >= target - 1e-9:
                return f"the metric source counted all {answered} after {waited:.1f}s"
            if waited >= self.settle_timeout:
                return (f"the metric source did not count all {answered} within {self.settle_timeout:g}s "
                        "(a path it does not count, or a slow scrape): the windows start now")
            await asyncio.sleep(SETTLE_POLL)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
