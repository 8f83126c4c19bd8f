"""The seed's health check: GET /health must answer 200 with JSON "status": "healthy"."""

from __future__ import annotations

import time

from console.core.protocols import HealthResult


class HttpHealth:
    def __init__(self) -> None:
        self._client = None

    async def check(self, url: str, timeout: float) -> HealthResult:
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(trust_env=False)
        t0 = time.perf_counter()
        try:
            r = await self._client.get(url, timeout=timeout)
        except httpx.TimeoutException:
            return HealthResult(False, None, f"GET {url} timed out after {timeout:g}s")
        except httpx.HTTPError as e:
            return HealthResult(False, None, f"GET {url} failed: {type(e).__name__}: {e}".rstrip(": "))
        ms = (time.perf_counter() - t0) * 1000
        try:
            body = r.json()
        except ValueError:
            return HealthResult(False, r.status_code, f"GET {url}: HTTP {r.status_code}, body is not JSON", None, ms)
        status = body.get("status") if isinstance(body, dict) else None
        if r.status_code != 200 or status != "healthy":
            return HealthResult(False, r.status_code, f"GET {url}: HTTP {r.status_code}, status={status!r}",
                                body if isinstance(body, dict) else None, ms)
        ver = body.get("version", "not reported")
        return HealthResult(True, 200, f"healthy (version {ver}, {ms:.0f} ms)", body, ms)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
