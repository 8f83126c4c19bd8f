"""ScrapeSource: no Prometheus.  Scrape both apps' /metrics, keep the window in memory, and
compute what PromQL would, with Prometheus' own arithmetic (console/adapters/metrics/promql.py).

* Each scrape of a target is one sample set, stamped with ``clock.monotonic()`` when the
  scrape started (Prometheus stamps the scrape's start too).  Only the contract series are kept.
* Memory is bounded twice: samples older than the window (plus two scrape intervals) are
  evicted on every scrape, and each target's deque has a hard ``maxlen``.
* A background sampler scrapes every ``interval`` seconds (W/30, within 1..15 s, never
  slower than the check interval) once the source is started (``start()``, or the first
  call), so rates have several points per window; a call that finds the last read older
  than ``FRESH_FOR`` scrapes right away, so a check always judges fresh data.
* A canary scrape that fails makes the call raise MetricsUnavailable (the check is an
  ERROR); a production scrape that fails is a note, and production figures come from what
  the window still holds (as in Prometheus, where a down target's older samples stay in range).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from console.adapters.metrics.prometheus import os_reason, redact, safe_url
from console.adapters.metrics.promql import MetricNames, Point, bucket_quantile, extrapolated_increase, is_error_status, parse_le
from console.core.clock import RealClock
from console.core.config import parse_duration
from console.core.protocols import FRESH_FOR, CounterSnapshot, MetricsUnavailable, VersionCounters, VersionStats, WindowStats

SeriesKey = tuple[str, tuple[tuple[str, str], ...]]  # (sample name, sorted labels)
MAX_SCRAPES = 4096  # per target, whatever the window
MAX_BODY = 16 * 1024 * 1024
MAX_SERIES_MEMORY = 50_000
ROLES = ("production", "canary")


@dataclass(frozen=True)
class Scrape:
    t: float
    values: dict[SeriesKey, float]


def parse_exposition(text: str, names: MetricNames) -> dict[SeriesKey, float]:
    """The contract series of one /metrics body; ValueError (one line) when it is not the
    Prometheus text format."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = {names.requests_total, names.bucket, names.schema_failures, names.rl_loss}
    out: dict[SeriesKey, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name in wanted:
                    out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    except ValueError as e:
        raise ValueError(f"malformed metrics text ({' '.join(str(e).split())[:120]})") from None
    return out


class ScrapeSource:
    kind = "scrape"

    def __init__(self, cfg: Any, clock: Any = None, *, autostart: bool = True, interval: float | None = None,
                 maxlen: int = MAX_SCRAPES) -> None:
        self.targets = {"production": str(cfg["scrape"]["production"]), "canary": str(cfg["scrape"]["canary"])}
        self.timeout = float(cfg["scrape"]["timeout"])
        self.window_s = parse_duration(cfg["metrics"]["rate_window"])
        self.names = MetricNames.from_cfg(cfg)
        self.clock = clock or RealClock()
        if interval is None:
            interval = min(15.0, max(1.0, self.window_s / 30))
            with contextlib.suppress(KeyError, TypeError):
                interval = min(interval, float(cfg["rollout"]["check_interval"]))
        self.interval = interval
        self.autostart = autostart
        self.maxlen = maxlen
        self._store: dict[str, deque[Scrape]] = {r: deque(maxlen=maxlen) for r in ROLES}
        self._first_seen: dict[str, dict[SeriesKey, float]] = {r: {} for r in ROLES}
        self._ok: dict[str, bool] = {r: False for r in ROLES}  # the last attempt succeeded
        self._error: dict[str, str] = {r: "not scraped yet" for r in ROLES}
        self._read_t: float | None = None
        self._client: Any = None
        self._task: asyncio.Task[None] | None = None
        self._lock: asyncio.Lock | None = None
        self.scrapes = 0  # successful scrapes, all targets (tests and the UI read it)

    def __repr__(self) -> str:
        return f"ScrapeSource(production={safe_url(self.targets['production'])!r}, canary={safe_url(self.targets['canary'])!r})"

    def describe(self) -> str:
        return (f"scrape {safe_url(self.targets['canary'])} and {safe_url(self.targets['production'])} "
                f"every {self.interval:g}s (window {self.window_s:g}s)")

    # ------------------------------------------------------------------ storing

    def ingest(self, role: str, t: float, text: str) -> None:
        """Store one scrape of ``role`` taken at ``t``; ValueError when the text is malformed."""
        values = parse_exposition(text, self.names)
        store, seen = self._store[role], self._first_seen[role]
        first_ever = not store and not seen
        for key in values:
            if key not in seen:
                # series present in the very first scrape existed before we looked
                seen[key] = -math.inf if first_ever else t
        if len(seen) > MAX_SERIES_MEMORY:
            for key in [k for k in seen if k not in values]:
                del seen[key]
        store.append(Scrape(t, values))
        horizon = t - self.window_s - 2 * self.interval
        while len(store) > 1 and store[1].t <= horizon:
            store.popleft()
        self._ok[role] = True
        self._error[role] = ""
        self.scrapes += 1

    def record_failure(self, role: str, reason: str) -> None:
        self._ok[role] = False
        self._error[role] = reason

    # ------------------------------------------------------------------ scraping

    def _get_lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    def _http(self) -> Any:
        if self._client is None:
            import httpx

            self._client = httpx.AsyncClient(
                timeout=self.timeout, follow_redirects=False, trust_env=False,  # apps are reached directly
                headers={"Accept": "text/plain;version=0.0.4;q=1,*/*;q=0.1", "User-Agent": "canary-console"},
            )
        return self._client

    async def _scrape(self, role: str) -> None:
        import httpx

        url = self.targets[role]
        t = self.clock.monotonic()
        try:
            async with self._http().stream("GET", url) as resp:
                if resp.status_code != 200:
                    raise ValueError(f"HTTP {resp.status_code}")
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.aiter_bytes():
                    size += len(chunk)
                    if size > MAX_BODY:
                        raise ValueError(f"answer larger than {MAX_BODY // (1024 * 1024)} MiB")
                    chunks.append(chunk)
            self.ingest(role, t, b"".join(chunks).decode("utf-8", "replace"))
        except httpx.TimeoutException:
            self.record_failure(role, f"timed out after {self.timeout:g}s")
        except httpx.HTTPError as e:
            self.record_failure(role, f"unreachable ({os_reason(e)})")
        except ValueError as e:
            self.record_failure(role, str(e))

    async def read(self) -> None:
        """Scrape both targets now (concurrently)."""
        await asyncio.gather(*(self._scrape(r) for r in ROLES))
        self._read_t = self.clock.monotonic()

    async def _fresh(self) -> float:
        """Make sure the data is at most FRESH_FOR old; raise when the canary cannot be read."""
        if self.autostart:
            self.start()
        async with self._get_lock():
            if self._read_t is None or self.clock.monotonic() - self._read_t >= FRESH_FOR:
                await self.read()
            if not self._ok["canary"]:
                raise MetricsUnavailable(redact(f"scrape canary {safe_url(self.targets['canary'])}: {self._error['canary']}", []))
            assert self._read_t is not None
            return self._read_t

    def start(self) -> None:
        """Start the background sampler (idempotent; needs a running loop)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._sampler(), name="scrape-sampler")

    async def _sampler(self) -> None:
        while True:
            try:
                async with self._get_lock():
                    if self._read_t is None or self.clock.monotonic() - self._read_t >= FRESH_FOR:
                        await self.read()
            except Exception:  # a failed scrape is recorded; the sampler must survive it
                pass
            await asyncio.sleep(self.interval)

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    close = aclose

    # ------------------------------------------------------------------ the interface

    async def stats(self, since: float = 0.0) -> WindowStats:
        now = await self._fresh()
        return self.stats_at(now, since)

    async def snapshot(self) -> CounterSnapshot:
        now = await self._fresh()
        return self.snapshot_at(now)

    # ------------------------------------------------------------------ computing (pure on the store)

    def _series_points(self, start: float, end: float) -> Iterable[tuple[str, SeriesKey, list[Point]]]:
        for role in ROLES:
            points: dict[SeriesKey, list[Point]] = {}
            for sc in self._store[role]:
                if start <= sc.t <= end:
                    for key, v in sc.values.items():
                        points.setdefault(key, []).append((sc.t, v))
            for key, pts in points.items():
                yield role, key, pts

    def stats_at(self, now: float, since: float = 0.0) -> WindowStats:
        """What the PromQL of console/adapters/metrics/promql.py answers at ``now``, from the store;
        the window starts no earlier than ``since`` (the end of the warm-up) when given."""
        n = self.names
        start = max(now - self.window_s, since) if since else now - self.window_s
        req: dict[str, dict[str, float]] = {}
        err: dict[str, float] = {}
        bkt: dict[tuple[str, str], dict[float, float]] = {}
        schema: dict[str, float] = {}
        for role, (name, labels_t), pts in self._series_points(start, now):
            labels = dict(labels_t)
            ver = labels.get(n.version_label, "")
            if ver not in (n.production, n.canary):
                continue
            mode = labels.get(n.mode_label, "")
            if name == n.schema_failures:
                born = self._first_seen[role].get((name, labels_t), -math.inf) > start
                if born:
                    schema[ver] = schema.get(ver, 0.0) + pts[-1][1]
                else:
                    inc = extrapolated_increase(pts, start, now)
                    if inc is not None:
                        schema[ver] = schema.get(ver, 0.0) + inc
                continue
            if name == n.rl_loss:
                continue
            inc = extrapolated_increase(pts, start, now)
            if inc is None:
                continue
            if name == n.requests_total:
                req.setdefault(ver, {})
                req[ver][mode] = req[ver].get(mode, 0.0) + inc
                if is_error_status(labels.get(n.status_label, "")):
                    err[ver] = err.get(ver, 0.0) + inc
            elif name == n.bucket:
                try:
                    le = parse_le(labels.get("le", ""))
                except ValueError:
                    continue
                b = bkt.setdefault((ver, mode), {})
                b[le] = b.get(le, 0.0) + inc
        notes: list[str] = []
        if not req:
            scrapes_in_window = sum(1 for sc in self._store["canary"] if start <= sc.t <= now)
            if scrapes_in_window >= 2:
                raise MetricsUnavailable(
                    f"scrape: no {n.requests_total} series for {n.version_label}={n.production} or {n.canary} in "
                    f"{scrapes_in_window} scrapes of the last {self.window_s:g}s (check the [metrics] names and [scrape] URLs)"
                )
            notes.append(f"warming up: {scrapes_in_window} scrape(s) of the canary in the window, rates need 2")
        if not self._ok["production"]:
            notes.append(f"production scrape failed: {self._error['production']}")
        losses = self._latest_losses()
        out: dict[str, VersionStats | None] = {}
        for ver in (n.production, n.canary):
            if ver not in req and ver != n.canary:
                out[ver] = None
                continue
            modes = req.get(ver, {})
            total = sum(modes.values())
            ratio = (err.get(ver, 0.0) / total) if total > 0 else None
            p95: dict[str, float | None] = {}
            for mode in n.modes:
                if modes.get(mode, 0.0) > 0:
                    b = bkt.get((ver, mode))
                    p95[mode] = bucket_quantile(0.95, b.items()) if b else math.nan
                else:
                    p95[mode] = None
            out[ver] = VersionStats(
                requests=total, by_mode={m: modes.get(m, 0.0) for m in n.modes}, error_ratio=ratio, p95=p95,
                schema_failures=schema.get(ver, 0.0), schema_series=ver in schema, rl_loss=losses.get(ver),
            )
        canary = out[n.canary]
        assert canary is not None
        window = now - start if since and start > now - self.window_s else self.window_s
        return WindowStats(t=now, window_s=window, source=self.kind, canary=canary, production=out[n.production],
                           notes=tuple(notes))

    def _latest(self) -> Iterable[tuple[str, SeriesKey, float]]:
        """The instant vector now: the last scrape of each target whose last attempt succeeded
        (a failed scrape makes its series stale, as in Prometheus)."""
        for role in ROLES:
            if self._ok[role] and self._store[role]:
                for key, v in self._store[role][-1].values.items():
                    yield role, key, v

    def _latest_losses(self) -> dict[str, float]:
        n = self.names
        out: dict[str, float] = {}
        for _, (name, labels_t), v in self._latest():
            if name == n.rl_loss:
                ver = dict(labels_t).get(n.version_label, "")
                out[ver] = v if ver not in out else max(out[ver], v)
        return out

    def snapshot_at(self, now: float) -> CounterSnapshot:
        n = self.names
        per: dict[str, dict[str, Any]] = {}
        for _, (name, labels_t), v in self._latest():
            labels = dict(labels_t)
            ver = labels.get(n.version_label, "")
            if ver not in (n.production, n.canary):
                continue
            d = per.setdefault(ver, {"requests": {}, "errors": {}, "schema": 0.0, "buckets": {}})
            mode = labels.get(n.mode_label, "")
            if name == n.requests_total:
                d["requests"][mode] = d["requests"].get(mode, 0.0) + v
                d["errors"].setdefault(mode, 0.0)
                if is_error_status(labels.get(n.status_label, "")):
                    d["errors"][mode] += v
            elif name == n.bucket:
                try:
                    le = parse_le(labels.get("le", ""))
                except ValueError:
                    continue
                b = d["buckets"].setdefault(mode, {})
                b[le] = b.get(le, 0.0) + v
            elif name == n.schema_failures:
                d["schema"] += v
        losses = self._latest_losses()

        def counters(ver: str) -> VersionCounters | None:
            d = per.get(ver)
            if d is None or not d["requests"]:
                return None
            return VersionCounters(requests=d["requests"], errors=d["errors"], schema_failures=d["schema"],
                                   buckets=d["buckets"], rl_loss=losses.get(ver))

        return CounterSnapshot(t=now, production=counters(n.production), canary=counters(n.canary))
