"""The seed's absolute stage gates, judged on live metrics on every check.

``MetricGates(cfg, source)`` is a ``console.core.protocols.Checker``: each ``check`` reads the
source once and returns one GateResult per gate:

=====================  ========  ==============================================  ==========
gate                   critical  fails when                                      samples
=====================  ========  ==============================================  ==========
error_rate             no        canary 5xx ratio >= [gates] error_rate          canary requests in W
critical_error_rate    yes       canary 5xx ratio >  [gates] critical_error_rate canary requests in W
p95_latency.<mode>     no        canary p95 of <mode> > [gates.p95_latency]      canary <mode> requests in W
schema_failures        yes       increase in W > [gates] schema_failures         canary requests in W
rl_loss                no        canary loss > rl_loss_spike_ratio x production  (a gauge: none)
=====================  ========  ==============================================  ==========

No data is not a pass: fewer than ``min_requests`` canary requests in W make a gate
INCONCLUSIVE (a schema failure still FAILS on a handful of requests: one failure is
conclusive).  A source failure makes every gate ERROR with the one-line reason; a NaN or
Inf where a number was expected makes that gate ERROR.  RL loss is judged only when both
versions report it; otherwise the ``rl_loss`` result is INCONCLUSIVE with ``blocking=False``
(shown, journaled, never holds a stage).  The engine applies the policy (critical ->
rollback, non-critical held ``consecutive_failures`` checks -> rollback, inconclusive
extends, ERROR x ``unavailable_after`` -> ``on_metrics_unavailable``).

The verdict logic is pure (``judge``, ``judge_rl_loss``, ``evaluate``, ``source_errors``)
so that tests drive it with tables; ``MetricGates`` only adds the I/O.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from console.core.config import parse_duration, window_label
from console.core.events import ERROR, FAIL, INCONCLUSIVE, PASS, GateResult
from console.core.protocols import CheckContext, MetricSource, MetricsUnavailable, WindowStats

OPS: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, ">": operator.gt}


@dataclass(frozen=True)
class GatePolicy:
    error_rate: float = 0.005
    critical_error_rate: float = 0.01
    schema_failures: float = 0
    rl_loss_spike_ratio: float = 2.0
    p95: tuple[tuple[str, float], ...] = (("fast", 2.5), ("balanced", 3.2), ("creative", 4.5))
    min_requests: int = 20
    window: str = "5m"

    @classmethod
    def from_cfg(cls, cfg: Any) -> GatePolicy:
        g = cfg["gates"]
        thresholds = dict(cfg["gates.p95_latency"])
        modes = [m for m in cfg["metrics"]["modes"] if m in thresholds]  # a mode without a threshold has no gate
        return cls(
            error_rate=float(g["error_rate"]), critical_error_rate=float(g["critical_error_rate"]),
            schema_failures=float(g["schema_failures"]), rl_loss_spike_ratio=float(g["rl_loss_spike_ratio"]),
            p95=tuple((m, float(thresholds[m])) for m in modes), min_requests=int(cfg["metrics"]["min_requests"]),
            window=window_label(cfg),
        )

    @property
    def gate_names(self) -> list[str]:
        return ["error_rate", "critical_error_rate", *(f"p95_latency.{m}" for m, _ in self.p95), "schema_failures", "rl_loss"]


# --------------------------------------------------------------------------- pure verdicts


def _finite(v: float) -> bool:
    return not (math.isnan(v) or math.isinf(v))


def _prom(v: float) -> str:
    """NaN/Inf the way Prometheus writes them."""
    return "NaN" if math.isnan(v) else ("+Inf" if v > 0 else "-Inf") if math.isinf(v) else f"{v:g}"


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "n/a"
    if not _finite(v):
        return _prom(v)
    if unit == "%":
        return f"{v * 100:.2f}%"
    if unit == "s":
        return f"{v:.3f}s"
    return f"{v:g}"


def judge(
    gate: str,
    value: float | None,
    threshold: float,
    *,
    op: str,
    samples: float | None,
    min_requests: int,
    window: str,
    critical: bool = False,
    production_value: float | None = None,
    fail_on_few: bool = False,
    what: str = "value",
    unit: str = "",
) -> GateResult:
    """One gate from one value.  ``op`` says when the value breaches (">=" or ">").

    Order: a NaN/Inf/negative request count -> ERROR (a source error, docs/gates.md: never "no
    data"); no value -> INCONCLUSIVE; NaN/Inf/negative value -> ERROR; breach with ``fail_on_few`` (a
    count such as schema failures, conclusive on any sample size) -> FAIL; fewer than
    ``min_requests`` samples -> INCONCLUSIVE; breach -> FAIL; else PASS."""
    bad_count = samples is not None and not (_finite(samples) and samples >= 0)
    n = 0 if samples is None or bad_count else int(round(samples))
    base = dict(gate=gate, value=value, threshold=threshold, window=window, samples=n, critical=critical,
                production_value=production_value)
    limit = f"{'must stay below' if op == '>=' else 'limit'} {_fmt(threshold, unit)}"
    if bad_count:
        shown = _prom(samples) if not _finite(samples) else f"{samples:g}"  # type: ignore[arg-type]
        return GateResult(verdict=ERROR, detail=f"the source returned {shown} for the canary request count", **base)
    if value is None:
        return GateResult(verdict=INCONCLUSIVE, detail=f"no data: {n} canary requests in {window}", **base)
    if not _finite(value):
        return GateResult(verdict=ERROR, detail=f"the source returned {_prom(value)} for the {what}", **base)
    if value < 0:
        return GateResult(verdict=ERROR, detail=f"the source returned a negative {what} ({value:g})", **base)
    breach = OPS[op](value, threshold)
    shown = f"{what} {_fmt(value, unit)} over {window} ({limit}; {n} canary requests)"
    if breach and fail_on_few:
        return GateResult(verdict=FAIL, detail=shown, **base)
    if n < min_requests:
        return GateResult(
            verdict=INCONCLUSIVE,
            detail=f"{n} canary requests in {window}, fewer than min_requests {min_requests} ({what} {_fmt(value, unit)})",
            **base,
        )
    return GateResult(verdict=FAIL if breach else PASS, detail=shown, **base)


def judge_rl_loss(canary: float | None, production: float | None, ratio: float, window: str) -> GateResult:
    """Canary loss > ratio x production fails; judged only when both versions report it."""
    base = dict(gate="rl_loss", value=canary, window=window, samples=None, critical=False, production_value=production)
    if canary is None or production is None:
        missing = " and ".join(v for v, x in (("canary", canary), ("production", production)) if x is None)
        return GateResult(verdict=INCONCLUSIVE, blocking=False, threshold=None,
                          detail=f"rl_training_loss not reported by {missing}: RL training inactive, not checked", **base)
    if not (_finite(canary) and _finite(production)):
        return GateResult(verdict=ERROR, threshold=None,
                          detail=f"the source returned a non-finite RL loss (canary {_prom(canary)}, "
                                 f"production {_prom(production)})", **base)
    threshold = ratio * production
    breach = canary > threshold
    return GateResult(
        verdict=FAIL if breach else PASS, threshold=threshold,
        detail=f"canary loss {canary:g} {'>' if breach else '<='} {ratio:g} x production {production:g}", **base,
    )


def evaluate(stats: WindowStats, policy: GatePolicy) -> list[GateResult]:
    """Every gate, judged on one read of the source."""
    c, p = stats.canary, stats.production
    w, mr = policy.window, policy.min_requests
    out = [
        judge("error_rate", c.error_ratio, policy.error_rate, op=">=", samples=c.requests, min_requests=mr, window=w,
              production_value=p.error_ratio if p else None, what="5xx ratio", unit="%"),
        judge("critical_error_rate", c.error_ratio, policy.critical_error_rate, op=">", samples=c.requests, min_requests=mr,
              window=w, critical=True, production_value=p.error_ratio if p else None, what="5xx ratio", unit="%"),
    ]
    for mode, threshold in policy.p95:
        out.append(judge(f"p95_latency.{mode}", c.p95.get(mode), threshold, op=">", samples=c.by_mode.get(mode, 0.0),
                         min_requests=mr, window=w, production_value=(p.p95.get(mode) if p else None),
                         what=f"{mode} p95", unit="s"))
    out.append(judge("schema_failures", c.schema_failures, policy.schema_failures, op=">", samples=c.requests,
                     min_requests=mr, window=w, critical=True, fail_on_few=True,
                     production_value=p.schema_failures if p else None, what="schema-failure increase"))
    out.append(judge_rl_loss(c.rl_loss, p.rl_loss if p else None, policy.rl_loss_spike_ratio, w))
    extras: dict[str, Any] = {"source": stats.source}
    queries = stats.queries
    result: list[GateResult] = []
    for i, r in enumerate(out):
        extra = dict(extras)
        q = queries.get(r.gate.split(".")[0].replace("critical_", ""))
        if q:
            extra["query"] = q
        if i == 0 and stats.notes:
            extra["notes"] = list(stats.notes)
        result.append(_with_extra(r, extra))
    return result


def _with_extra(r: GateResult, extra: dict[str, Any]) -> GateResult:
    return dataclasses.replace(r, extra={**r.extra, **extra})


def source_errors(reason: str, policy: GatePolicy) -> list[GateResult]:
    """The source could not answer: every gate ERROR, with the reason (never a pass)."""
    reason = " ".join(reason.split()) or "metrics unavailable"
    crit = {"critical_error_rate", "schema_failures"}
    return [
        GateResult(gate=g, verdict=ERROR, window=policy.window, critical=g in crit, detail=reason,
                   blocking=g != "rl_loss")
        for g in policy.gate_names
    ]


# --------------------------------------------------------------------------- the checker


class MetricGates:
    """The Checker the engine calls on every check.

    ``aclose`` closes the source too (wiring shares one source between this checker and the
    sequential analysis, and nothing else closes it; closing is idempotent and a closed source
    reopens on its next call).  Pass ``owns_source=False`` to keep it open."""

    name = "metrics"

    def __init__(self, cfg: Any, source: MetricSource, *, owns_source: bool = True) -> None:
        self.policy = GatePolicy.from_cfg(cfg)
        self.source = source
        self.owns_source = owns_source
        self.last: list[GateResult] = []

    def describe(self) -> str:
        p = self.policy
        p95 = ", ".join(f"{m} {t:g}s" for m, t in p.p95)
        return (f"{self.source.describe()}; gates: 5xx < {p.error_rate:.2%} (critical > {p.critical_error_rate:.2%}), "
                f"p95 {p95}, schema failures <= {p.schema_failures:g}, RL loss <= {p.rl_loss_spike_ratio:g}x production; "
                f"min {p.min_requests} canary requests in {p.window}")

    async def begin_stage(self, ctx: CheckContext) -> Sequence[dict[str, Any]]:
        self.source.start()  # the scrape source starts sampling before the first check
        return [{"level": "info", "message": f"metric gates: {self.describe()}",
                 "data": {"source": self.source.kind, "window": self.policy.window, "gates": self.policy.gate_names}}]

    async def check(self, ctx: CheckContext) -> list[GateResult]:
        try:
            # after a warm-up the window starts after it (console/adapters/warmup.py): none of it counts
            stats = await (self.source.stats(since=ctx.samples_since) if ctx.samples_since else self.source.stats())
        except MetricsUnavailable as e:
            self.last = source_errors(str(e), self.policy)
        except Exception as e:  # a source bug must show as ERROR, not kill the rollout
            self.last = source_errors(f"{self.source.kind} source failed: {type(e).__name__}", self.policy)
        else:
            policy = self.policy
            if ctx.samples_since and stats.window_s < parse_duration(policy.window) - 1e-6:
                policy = dataclasses.replace(policy, window=f"{math.floor(stats.window_s)}s")  # the window it judged
            self.last = evaluate(stats, policy)
        return self.last

    async def aclose(self) -> None:
        if self.owns_source:
            await self.source.aclose()

    close = aclose
