"""PrometheusSource: the seed's PromQL, through prometheus-api-client, off the event loop.

* URL from ``[prometheus] url`` (``PROMETHEUS_URL`` maps there).  Optional credentials from
  the environment (or .env): ``CANARY_PROMETHEUS_TOKEN`` (bearer) or
  ``CANARY_PROMETHEUS_USER`` + ``CANARY_PROMETHEUS_PASSWORD`` (basic).  They are sent, and
  never printed, journaled or shown: every message this module produces goes through
  ``redact`` and ``repr`` names only the kind of auth.
* TLS verification follows ``[prometheus] verify_tls`` (on by default).
* One check is one batch of instant queries at one evaluation time, run in one worker thread
  (``asyncio.to_thread``) with ``[metrics] query_timeout`` as the budget of the whole batch:
  each query gets what is left as its HTTP timeout and as Prometheus' own ``timeout``.
* No retries: the engine checks again at the next interval and counts consecutive failures.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import re
import ssl
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from console.adapters.metrics.promql import MetricNames, Queries, build_queries, parse_le
from console.core.clock import RealClock
from console.core.config import (
    PROMETHEUS_PASSWORD_ENV,
    PROMETHEUS_TOKEN_ENV,
    PROMETHEUS_USER_ENV,
    ConfigError,
    parse_duration,
    prometheus_auth_problem,
)
from console.core.protocols import (
    FRESH_FOR,
    CounterSnapshot,
    MetricsUnavailable,
    VersionCounters,
    VersionStats,
    WindowStats,
    window_after,
)

TOKEN_ENV, USER_ENV, PASSWORD_ENV = PROMETHEUS_TOKEN_ENV, PROMETHEUS_USER_ENV, PROMETHEUS_PASSWORD_ENV  # core's names

Vector = list[tuple[dict[str, str], float]]
REJECTED = ("HTTP 400", "HTTP 422")  # Prometheus refuses the query itself (bad_data, execution)


@dataclass(frozen=True)
class Rejected:
    """A query Prometheus refused: ``reason`` is "HTTP 400: <Prometheus' own error>"."""

    reason: str


def safe_url(url: str) -> str:
    """The URL without user:password@ (a URL may carry credentials too)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def os_reason(e: BaseException) -> str:
    """The operating system's words for a failed connection ("Connection refused"), from the
    exception chain (clients wrap them: "All connection attempts failed", "Max retries ...")."""
    seen: set[int] = set()
    x: BaseException | None = e
    while x is not None and id(x) not in seen:
        seen.add(id(x))
        errno = getattr(x, "errno", None)
        if isinstance(errno, int) and errno > 0:
            return os.strerror(errno)
        m = re.search(r"\[Errno (\d+)\]", str(x))
        if m:
            return os.strerror(int(m.group(1)))
        x = x.__cause__ or x.__context__
    return type(e).__name__


def redact(text: str, secrets: list[str]) -> str:
    """Remove every secret (and its base64/basic forms, computed by the caller) from ``text``,
    and fold it to one line."""
    for s in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(s, "***")
    return " ".join(text.split())


class PrometheusSource:
    kind = "prometheus"

    def __init__(self, cfg: Any, clock: Any = None) -> None:
        env: dict[str, str] = dict(getattr(cfg, "env", {}) or {})
        self.url = str(cfg["prometheus"]["url"]).rstrip("/")
        self.verify_tls = bool(cfg["prometheus"]["verify_tls"])
        self.timeout = float(cfg["metrics"]["query_timeout"])
        self.names = MetricNames.from_cfg(cfg)
        self.window_s = parse_duration(cfg["metrics"]["rate_window"])
        self.queries: Queries = build_queries(self.names, self.window_s)
        self.clock = clock or RealClock()
        token = env.get(TOKEN_ENV, "")
        user, password = env.get(USER_ENV, ""), env.get(PASSWORD_ENV, "")
        problem = prometheus_auth_problem(env)  # load_config refuses it first; a Config built by hand too
        if problem:
            raise ConfigError(problem)
        self._headers: dict[str, str] = {"Authorization": f"Bearer {token}"} if token else {}
        self._auth: tuple[str, str] | None = (user, password) if user else None
        self.auth_kind = "bearer token" if token else ("basic auth" if user else "none")
        secrets = [token, password]
        if user:
            basic = base64.b64encode(f"{user}:{password}".encode()).decode()
            secrets += [basic, f"{user}:{password}"]
        parts = urlsplit(self.url)
        if parts.password:
            secrets.append(parts.password)
        self._secrets = [s for s in secrets if s]
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._lock: asyncio.Lock | None = None
        self._stats: WindowStats | None = None
        self._stats_since = 0.0  # the ``since`` self._stats was read for
        self._snapshot: CounterSnapshot | None = None

    # ------------------------------------------------------------------ presentation

    def __repr__(self) -> str:
        return f"PrometheusSource(url={safe_url(self.url)!r}, auth={self.auth_kind!r}, verify_tls={self.verify_tls})"

    __str__ = __repr__

    def start(self) -> None:
        """Prometheus samples on its own: nothing to start."""

    def describe(self) -> str:
        auth = "" if self.auth_kind == "none" else f", {self.auth_kind}"
        tls = "" if self.verify_tls or not self.url.startswith("https") else ", TLS NOT verified"
        return f"prometheus {safe_url(self.url)} (window {self.window_s:g}s{auth}{tls})"

    def _fail(self, what: str, reason: str) -> MetricsUnavailable:
        return MetricsUnavailable(redact(f"prometheus {safe_url(self.url)}: {reason} ({what})", self._secrets))

    # ------------------------------------------------------------------ I/O

    def _connect(self) -> Any:
        with self._client_lock:
            if self._client is None:
                import urllib3
                from prometheus_api_client.prometheus_connect import PrometheusConnect
                from urllib3.util.retry import Retry

                if not self.verify_tls:  # the operator chose this; describe() says so, not a warning per query
                    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)

                self._client = PrometheusConnect(
                    url=self.url,
                    headers=self._headers or None,
                    disable_ssl=not self.verify_tls,
                    retry=Retry(total=False),  # no retries, and the original error (a read timeout stays one)
                    auth=self._auth,
                    timeout=self.timeout,
                )
            return self._client

    def _run_batch(self, what: str, queries: list[str], at: float, deadline: float, as_answered: bool = False) -> list[Any]:
        """Blocking: the queries in order, one evaluation time, one shared time budget.  With
        ``as_answered`` (queries an operator wrote: custom gates) each result is returned as
        Prometheus sent it (``data.result``), and a query Prometheus refuses (HTTP 400 or 422)
        is a ``Rejected`` with Prometheus' own error instead of a failure of the batch."""
        client = self._connect()
        out: list[Any] = []
        for q in queries:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._fail(what, f"timed out after {self.timeout:g}s")
            try:
                params = {"time": f"{at:.3f}", "timeout": f"{max(1, int(left * 1000))}ms"}
                raw = client.custom_query(q, params=params, timeout=left)
            except Exception as e:  # every failure of the client becomes one line
                reason = self._reason(e)
                if as_answered and reason.startswith(REJECTED):
                    out.append(Rejected(reason))
                    continue
                raise self._fail(what, reason) from None
            out.append(raw if as_answered else self._vector(what, raw))
        return out

    def _reason(self, e: Exception) -> str:
        import requests
        import urllib3.exceptions as ue
        from prometheus_api_client.exceptions import PrometheusApiClientException

        if isinstance(e, requests.exceptions.SSLError | ue.SSLError | ssl.SSLError):
            return "TLS verification failed (the certificate is not trusted; [prometheus] verify_tls)"
        if isinstance(e, ue.NewConnectionError | ue.NameResolutionError | ConnectionRefusedError):
            return f"unreachable ({os_reason(e)})"
        if isinstance(e, requests.exceptions.Timeout | ue.TimeoutError | TimeoutError):
            return f"timed out after {self.timeout:g}s"
        if isinstance(e, requests.exceptions.ConnectionError | ue.HTTPError | ConnectionError):
            text = str(e)
            if "timed out" in text or "Timeout" in text:
                return f"timed out after {self.timeout:g}s"
            if "RemoteDisconnected" in text or "Connection aborted" in text:
                return "unreachable (the connection was closed without an answer)"
            return f"unreachable ({os_reason(e)})"
        if isinstance(e, PrometheusApiClientException):
            return _http_reason(redact(str(e), self._secrets))  # redacted before it is shortened
        if isinstance(e, ValueError):  # requests' JSONDecodeError is a ValueError
            return "malformed JSON in the answer"
        if isinstance(e, KeyError | TypeError | IndexError):
            return "unexpected answer (no data.result)"
        if isinstance(e, requests.exceptions.RequestException):
            return f"request failed ({type(e).__name__})"
        return f"query failed ({type(e).__name__})"

    def _vector(self, what: str, raw: Any) -> Vector:
        if not isinstance(raw, list):
            raise self._fail(what, "unexpected answer (the result is not an instant vector)")
        out: Vector = []
        for item in raw:
            try:
                labels = item["metric"]
                value = float(item["value"][1])
                if not isinstance(labels, dict):
                    raise TypeError
            except (KeyError, TypeError, IndexError, ValueError):
                raise self._fail(what, "unexpected answer (a sample without metric/value)") from None
            out.append(({str(k): str(v) for k, v in labels.items()}, value))
        return out

    async def _batch(self, what: str, queries: list[str], as_answered: bool = False) -> list[Any]:
        deadline = time.monotonic() + self.timeout
        at = time.time()
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(self._run_batch, what, queries, at, deadline, as_answered), timeout=self.timeout + 0.5
            )
        except TimeoutError:
            raise self._fail(what, f"timed out after {self.timeout:g}s") from None

    def _get_lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    # ------------------------------------------------------------------ the interface

    async def stats(self, since: float = 0.0) -> WindowStats:
        async with self._get_lock():
            if (self._stats is not None and self.clock.monotonic() - self._stats.t < FRESH_FOR
                    and self._stats_since == since):
                return self._stats
            window, q = self.window_s, self.queries
            if since:
                # never reach back past ``since`` (the end of the warm-up): whole milliseconds, rounded down
                ms = window_after(self.window_s, self.clock.monotonic() - since)
                if ms is not None:
                    window, q = ms / 1000, build_queries(self.names, ms / 1000, promql_window=f"{max(1, ms)}ms")
            vectors = await self._batch(
                "window query", [q.requests, q.error_ratio, q.p95, q.schema_failures, q.rl_loss]
            )
            self._stats = self._window_stats(*vectors, window=window, queries=q)
            self._stats_since = since
            return self._stats

    async def snapshot(self) -> CounterSnapshot:
        async with self._get_lock():
            if self._snapshot is not None and self.clock.monotonic() - self._snapshot.t < FRESH_FOR:
                return self._snapshot
            q = self.queries
            vectors = await self._batch("counter query", [q.c_requests, q.c_errors, q.c_schema, q.c_buckets, q.c_rl_loss])
            self._snapshot = self._counter_snapshot(*vectors)
            return self._snapshot

    async def answers(self, what: str, queries: list[str]) -> list[Any]:
        """Queries an operator wrote (custom gates), at one instant, in one time budget, through the
        same client, credentials and timeouts as ``stats``: each result as Prometheus sent it, or a
        ``Rejected``.  Raises MetricsUnavailable (one line) when Prometheus does not answer."""
        async with self._get_lock():
            return await self._batch(what, queries, as_answered=True)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)

    close = aclose

    # ------------------------------------------------------------------ decoding

    def _window_stats(self, requests: Vector, ratio: Vector, p95: Vector, schema: Vector, rl: Vector,
                      window: float | None = None, queries: Queries | None = None) -> WindowStats:
        n = self.names
        versions = (n.production, n.canary)
        window = self.window_s if window is None else window
        q = queries or self.queries
        if not requests and window < self.window_s:  # a window cut short by the warm-up: too few scrapes yet
            return WindowStats(t=self.clock.monotonic(), window_s=window, source=self.kind, canary=VersionStats(),
                               notes=(f"the {window:g}s since the warm-up hold too few samples yet",))
        if not requests:
            raise self._fail(
                "window query",
                f"empty vector: no {n.requests_total} series for {n.version_label}={n.production} or {n.canary} "
                f"in the last {self.window_s:g}s (check the [metrics] names and that Prometheus scrapes both apps)",
            )
        by_mode: dict[str, dict[str, float]] = defaultdict(dict)
        for labels, v in requests:
            ver = labels.get(n.version_label, "")
            mode = labels.get(n.mode_label, "")
            by_mode[ver][mode] = by_mode[ver].get(mode, 0.0) + v
        ratios = {labels.get(n.version_label, ""): v for labels, v in ratio}
        quantiles = {(labels.get(n.version_label, ""), labels.get(n.mode_label, "")): v for labels, v in p95}
        schemas: dict[str, float] = {}
        for labels, v in schema:
            ver = labels.get(n.version_label, "")
            schemas[ver] = schemas.get(ver, 0.0) + v
        losses = {labels.get(n.version_label, ""): v for labels, v in rl}
        out: dict[str, VersionStats | None] = {}
        for ver in versions:
            modes = by_mode.get(ver, {})
            total = sum(modes.values())
            present = ver in by_mode
            if not present and ver != n.canary:
                out[ver] = None
                continue
            if total > 0:
                err: float | None = ratios.get(ver, math.nan)  # missing with traffic: an empty vector -> ERROR
            else:
                err = None
            p: dict[str, float | None] = {}
            for mode in n.modes:
                if modes.get(mode, 0.0) > 0:
                    p[mode] = quantiles.get((ver, mode), math.nan)
                else:
                    p[mode] = None
            out[ver] = VersionStats(
                requests=total, by_mode={m: modes.get(m, 0.0) for m in n.modes}, error_ratio=err, p95=p,
                schema_failures=schemas.get(ver, 0.0), schema_series=ver in schemas, rl_loss=losses.get(ver),
            )
        canary = out[n.canary]
        assert canary is not None
        return WindowStats(
            t=self.clock.monotonic(), window_s=window, source=self.kind, canary=canary, production=out[n.production],
            queries={"requests": q.requests, "error_rate": q.error_ratio, "p95_latency": q.p95,
                     "schema_failures": q.schema_failures, "rl_loss": q.rl_loss},
        )

    def _counter_snapshot(self, req: Vector, err: Vector, schema: Vector, buckets: Vector, rl: Vector) -> CounterSnapshot:
        n = self.names
        if not req:
            raise self._fail("counter query", f"empty vector: no {n.requests_total} series for either version")
        per: dict[str, dict[str, Any]] = {}

        def slot(ver: str) -> dict[str, Any]:
            return per.setdefault(ver, {"requests": {}, "errors": {}, "schema": 0.0, "buckets": {}, "rl": None})

        for labels, v in req:
            d = slot(labels.get(n.version_label, ""))
            mode = labels.get(n.mode_label, "")
            d["requests"][mode] = d["requests"].get(mode, 0.0) + v
        for labels, v in err:
            d = slot(labels.get(n.version_label, ""))
            mode = labels.get(n.mode_label, "")
            d["errors"][mode] = d["errors"].get(mode, 0.0) + v
        for labels, v in schema:
            slot(labels.get(n.version_label, ""))["schema"] += v
        for labels, v in buckets:
            try:
                le = parse_le(labels.get("le", ""))
            except ValueError:
                continue
            d = slot(labels.get(n.version_label, ""))
            b = d["buckets"].setdefault(labels.get(n.mode_label, ""), {})
            b[le] = b.get(le, 0.0) + v
        for labels, v in rl:
            slot(labels.get(n.version_label, ""))["rl"] = v

        def counters(ver: str) -> VersionCounters | None:
            d = per.get(ver)
            if d is None or not d["requests"]:
                return None
            for mode in d["requests"]:
                d["errors"].setdefault(mode, 0.0)
            return VersionCounters(requests=d["requests"], errors=d["errors"], schema_failures=d["schema"],
                                   buckets=d["buckets"], rl_loss=d["rl"])

        return CounterSnapshot(t=self.clock.monotonic(), production=counters(n.production), canary=counters(n.canary))


def _http_reason(text: str) -> str:
    """'HTTP Status Code 503 (b'...')' -> 'HTTP 503: <Prometheus' error text>' (short)."""
    m = re.match(r"HTTP Status Code (\d+) \((.*)\)$", text, re.S)
    if not m:
        return "HTTP error"
    code, body = m.group(1), m.group(2)
    detail = ""
    try:
        import ast

        raw = ast.literal_eval(body)
        s = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        try:
            detail = str(json.loads(s).get("error", ""))
        except (ValueError, AttributeError):
            detail = s
    except (ValueError, SyntaxError):
        detail = body
    detail = " ".join(detail.split())[:160]
    return f"HTTP {code}" + (f": {detail}" if detail else "")
