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

from typing import Any

from console.core.config import window_label
from console.core.protocols import FRESH_FOR, MetricSource, MetricsUnavailable, VersionStats, WindowStats

__all__ = [
    "FRESH_FOR",
    "MetricsUnavailable",
    "VersionStats",
    "WindowStats",
    "build_source",
    "window_label",
]



def build_source(cfg: Any, clock: Any = None) -> MetricSource:
    """The source ``[metrics] source`` names.  Nothing is contacted until the first call."""
    kind = cfg["metrics"]["source"]
    if kind == "prometheus":
        from console.adapters.metrics.prometheus import PrometheusSource

        return PrometheusSource(cfg, clock=clock)
    if kind == "scrape":
        from console.adapters.metrics.scrape import ScrapeSource

        return ScrapeSource(cfg, clock=clock)
    raise ValueError(f"[metrics] source = {kind!r} is not valid; allowed: prometheus or scrape")
