"""Metric sources behind one interface: Prometheus (PromQL) or a direct scrape of both apps.

``build_source(cfg)`` returns one of them.  Both answer:

* ``await source.stats()`` -> ``WindowStats``: per version, over the rate window W, the request
  count, the 5xx ratio, the p95 per mode, the schema-failure increase and the RL loss: what
  the gates judge (console/core/gates.py);
* ``await source.snapshot()`` -> ``CounterSnapshot`` (console/core/protocols.py): the cumulative
  counters, for the sequential analysis;
* ``await source.aclose()``.

Calls within ``FRESH_FOR`` seconds are answered from one read, so several checkers in one
check cost one set of queries/scrapes.  A source that cannot answer raises
``MetricsUnavailable`` with one line (never a credential).  A value that came back NaN or
Inf where a number was expected is passed through as such, and the gate that uses it judges
ERROR (see docs/gates.md: "which failure is which").

Importing this package is cheap: prometheus-api-client is imported only when a
PrometheusSource first queries, httpx only when a ScrapeSource first scrapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from console.core.config import format_duration
from console.core.protocols import CounterSnapshot, MetricsUnavailable

__all__ = [
    "FRESH_FOR",
    "GateSource",
    "MetricsUnavailable",
    "VersionStats",
    "WindowStats",
    "build_source",
    "window_label",
]

FRESH_FOR = 0.5  # seconds: calls closer together than this share one read


@dataclass(frozen=True)
class VersionStats:
    """One version over the window.  ``requests``/``by_mode`` are increases (Prometheus'
    extrapolated ``increase()``, so not necessarily integers)."""

    requests: float = 0.0
    by_mode: dict[str, float] = field(default_factory=dict)
    error_ratio: float | None = None  # 5xx / all; None: no requests in W (0/0)
    p95: dict[str, float | None] = field(default_factory=dict)  # None: no requests of that mode in W
    schema_failures: float = 0.0  # increase in W (a version with no such series counts 0)
    schema_series: bool = False  # whether the schema-failure counter exists at all
    rl_loss: float | None = None  # the gauge; None: not reported


@dataclass(frozen=True)
class WindowStats:
    t: float  # clock.monotonic() of the read
    window_s: float
    source: str  # "prometheus" | "scrape"
    canary: VersionStats
    production: VersionStats | None = None
    notes: tuple[str, ...] = ()  # things worth showing that are not failures
    queries: dict[str, str] = field(default_factory=dict)  # gate -> the PromQL behind it (prometheus)


class GateSource(Protocol):
    kind: str

    async def stats(self) -> WindowStats: ...

    async def snapshot(self) -> CounterSnapshot: ...

    async def aclose(self) -> None: ...

    def describe(self) -> str:
        """One line for operators: where the numbers come from (never a credential)."""


def window_label(cfg: Any) -> str:
    """The rate window as the operator wrote it ("5m"), or as seconds ("300s")."""
    raw = cfg["metrics"]["rate_window"]
    return raw if isinstance(raw, str) else format_duration(float(raw))


def build_source(cfg: Any, clock: Any = None) -> GateSource:
    """The source ``[metrics] source`` names.  Nothing is contacted until the first call."""
    kind = cfg["metrics"]["source"]
    if kind == "prometheus":
        from console.adapters.metrics.prometheus import PrometheusSource

        return PrometheusSource(cfg, clock=clock)
    if kind == "scrape":
        from console.adapters.metrics.scrape import ScrapeSource

        return ScrapeSource(cfg, clock=clock)
    raise ValueError(f"[metrics] source = {kind!r} is not valid; allowed: prometheus or scrape")
