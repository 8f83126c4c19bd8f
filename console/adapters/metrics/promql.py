"""Prometheus' own arithmetic, in Python, and the PromQL the Prometheus source sends.

The scrape source computes rates and quantiles in-process; to give the same numbers as
Prometheus on the same samples it follows Prometheus 2.x exactly:

* ``extrapolated_increase`` is ``extrapolatedRate`` (promql/functions.go) for counters: the
  range is closed ``[t - W, t]``, a value lower than its predecessor is a counter reset (the
  predecessor is added back), and the result is extrapolated towards the range boundaries
  (not past the counter's zero point, not more than half an average scrape interval when
  the first/last sample is far from the boundary).  ``increase = rate * W`` exactly.
* ``bucket_quantile`` is ``bucketQuantile`` (promql/quantile.go): coalesce equal ``le``,
  force monotonicity, linear interpolation inside the bucket, the lower bound of the first
  bucket is 0, a rank in the +Inf bucket answers the highest finite ``le``, NaN without a
  +Inf bucket or without observations.

Everything here is pure (no I/O), so tests drive it with tables.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from console.core.config import format_duration

Point = tuple[float, float]  # (seconds, value)


def extrapolated_increase(points: Sequence[Point], range_start: float, range_end: float, is_counter: bool = True) -> float | None:
    """Prometheus' ``increase()`` of one series; None with fewer than two points (no result)."""
    if len(points) < 2:
        return None
    first_t, first_v = points[0]
    last_t, last_v = points[-1]
    result = last_v - first_v
    if is_counter:
        prev = first_v
        for _, v in points[1:]:
            if v < prev:  # a counter reset: the value before it was lost, add it back
                result += prev
            prev = v
    duration_to_start = first_t - range_start
    duration_to_end = range_end - last_t
    sampled = last_t - first_t
    if sampled <= 0:
        return None
    avg_step = sampled / (len(points) - 1)
    if is_counter and result > 0 and first_v >= 0:
        # counters cannot be negative: do not extrapolate to before the zero point
        duration_to_zero = sampled * (first_v / result)
        if duration_to_zero < duration_to_start:
            duration_to_start = duration_to_zero
    threshold = avg_step * 1.1
    interval = sampled
    interval += duration_to_start if duration_to_start < threshold else avg_step / 2
    interval += duration_to_end if duration_to_end < threshold else avg_step / 2
    return result * (interval / sampled)


def extrapolated_rate(points: Sequence[Point], range_start: float, range_end: float) -> float | None:
    inc = extrapolated_increase(points, range_start, range_end)
    return None if inc is None else inc / (range_end - range_start)


def bucket_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float:
    """Prometheus' ``histogram_quantile`` over (le, count) pairs (counts cumulative or rates)."""
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    merged: dict[float, float] = {}
    for le, count in buckets:
        merged[le] = merged.get(le, 0.0) + count
    bs = sorted(merged.items())
    if not bs or not math.isinf(bs[-1][0]):
        return math.nan
    # ensure monotonic (a scrape may catch buckets mid-update)
    top = -math.inf
    fixed: list[tuple[float, float]] = []
    for le, c in bs:
        top = max(top, c)
        fixed.append((le, top))
    bs = fixed
    if len(bs) < 2:
        return math.nan
    observations = bs[-1][1]
    if observations == 0 or math.isnan(observations):
        return math.nan
    rank = q * observations
    b = next((i for i in range(len(bs) - 1) if bs[i][1] >= rank), len(bs) - 1)
    if b == len(bs) - 1:
        return bs[-2][0]
    if b == 0 and bs[0][0] <= 0:
        return bs[0][0]
    start, end, count = 0.0, bs[b][0], bs[b][1]
    if b > 0:
        start = bs[b - 1][0]
        count -= bs[b - 1][1]
        rank -= bs[b - 1][1]
    return start + (end - start) * (rank / count)


# --------------------------------------------------------------------------- names and queries


@dataclass(frozen=True)
class MetricNames:
    """The metric contract, renamable in ``[metrics]``."""

    request_duration: str = "http_request_duration_seconds"
    requests_total: str = "http_requests_total"
    schema_failures: str = "llm_brief_schema_failures_total"
    rl_loss: str = "rl_training_loss"
    version_label: str = "version"
    mode_label: str = "mode"
    status_label: str = "status"
    production: str = "production"
    canary: str = "canary"
    modes: tuple[str, ...] = ("fast", "balanced", "creative")

    @classmethod
    def from_cfg(cls, cfg: Any) -> MetricNames:
        m = cfg["metrics"]
        return cls(
            request_duration=m["request_duration"], requests_total=m["requests_total"],
            schema_failures=m["schema_failures"], rl_loss=m["rl_loss"], version_label=m["version_label"],
            mode_label=m["mode_label"], status_label=m["status_label"], production=m["production_value"],
            canary=m["canary_value"], modes=tuple(m["modes"]),
        )

    @property
    def bucket(self) -> str:
        return self.request_duration + "_bucket"


_RE2_META = re.compile(r"([\\.+*?()|\[\]{}^$])")
ERROR_STATUS = "5.."  # PromQL regexes are anchored: a three-character status starting with 5


def promql_string(value: str) -> str:
    """A PromQL double-quoted string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def regex_literal(value: str) -> str:
    return _RE2_META.sub(r"\\\1", value)


@dataclass(frozen=True)
class Queries:
    """The PromQL of one check, evaluated at one instant.  Shown to operators as-is, so that
    they can paste it into Prometheus; equivalent to the seed's queries (per version)."""

    requests: str  # increase of all requests in W, by version and mode (the sample sizes)
    error_ratio: str  # sum(rate(5xx)) / sum(rate(all)), by version; 0 when traffic has no 5xx series
    p95: str  # histogram_quantile(0.95, sum by (le) (rate(bucket[W]))), by version and mode
    schema_failures: str  # increase in W, by version; a series born inside W counts its value
    rl_loss: str  # the gauge, by version
    # cumulative counters (snapshot): no range, no extrapolation
    c_requests: str
    c_errors: str
    c_schema: str
    c_buckets: str
    c_rl_loss: str


def build_queries(n: MetricNames, window_s: float, promql_window: str = "") -> Queries:
    """The queries over ``window_s`` (``promql_window``, when given, is that range as PromQL: "12345ms")."""
    w = promql_window or format_duration(window_s)
    v, m = n.version_label, n.mode_label
    sel = f"{v}=~{promql_string(regex_literal(n.production) + '|' + regex_literal(n.canary))}"
    err = f"{sel},{n.status_label}=~{promql_string(ERROR_STATUS)}"
    total = f"sum by ({v}) (rate({n.requests_total}{{{sel}}}[{w}]))"
    five = f"sum by ({v}) (rate({n.requests_total}{{{err}}}[{w}]))"
    s = f"{n.schema_failures}{{{sel}}}"
    born = f"({s} unless {s} offset {w})"
    return Queries(
        requests=f"sum by ({v}, {m}) (increase({n.requests_total}{{{sel}}}[{w}]))",
        error_ratio=f"({five} or {total} * 0) / {total}",
        p95=f"histogram_quantile(0.95, sum by ({v}, {m}, le) (rate({n.bucket}{{{sel}}}[{w}])))",
        schema_failures=f"sum by ({v}) ((increase({s}[{w}]) unless {born}) or {born})",
        rl_loss=f"max by ({v}) ({n.rl_loss}{{{sel}}})",
        c_requests=f"sum by ({v}, {m}) ({n.requests_total}{{{sel}}})",
        c_errors=f"sum by ({v}, {m}) ({n.requests_total}{{{err}}})",
        c_schema=f"sum by ({v}) ({s})",
        c_buckets=f"sum by ({v}, {m}, le) ({n.bucket}{{{sel}}})",
        c_rl_loss=f"max by ({v}) ({n.rl_loss}{{{sel}}})",
    )


def is_error_status(status: str) -> bool:
    return len(status) == 3 and status[0] == "5"


def parse_le(text: str) -> float:
    """A bucket's ``le`` label as a float ("+Inf" included); ValueError when it is not one."""
    return float(text)
