"""SequentialChecker: the analysis as a ``console.core.protocols.Checker``.

On every check it reads the source's cumulative counters, turns the difference with the
previous read into one interval per series, and updates three e-processes (console/core/analysis/
core.py) that run for the whole rollout: ``seq.errors`` (5xx), ``seq.schema`` (schema failures)
and ``seq.latency`` (requests above fixed bucket edges).  Each answers FAIL (critical: the
engine rolls back at once) when its test rejects, PASS when the mirror test has proven the
ratio below the pass bound in a stage able to detect it, INCONCLUSIVE otherwise.

Intervals are the checks themselves: a lost read simply makes a longer interval; a counter
that went down (a restart) drops that interval instead of guessing; an interval that spans a
weight change by more than a sliver is dropped too, because theta0 must come from one weight.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from console.core.analysis import core
from console.core.analysis.core import ERRORS, LATENCY, SCHEMA, WARMUP_S, Increment, Params
from console.core.config import ConfigError, parse_duration
from console.core.events import ERROR, FAIL, INCONCLUSIVE, PASS, GateResult
from console.core.protocols import CheckContext, CounterSnapshot, MetricSource, MetricsUnavailable, VersionCounters

GATES = {ERRORS: "seq.errors", SCHEMA: "seq.schema", LATENCY: "seq.latency"}
WHAT = {ERRORS: "5xx rate", SCHEMA: "schema-failure rate", LATENCY: "share of slow requests"}
SPAN_TOLERANCE = 0.1  # an interval may start before the weight change by at most this share of it
C, P = "canary", "production"


def _fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "inf" if v is not None and v > 0 else "-"
    if v >= 1e6:
        return f"{v:.2e}"
    return f"{v:.3g}"


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


class SequentialChecker:
    """``SequentialChecker(cfg, source, clock)``; see the module docstring."""

    name = "seq"

    def __init__(self, cfg: Any, source: MetricSource, clock: Any) -> None:
        try:
            self.params = Params.from_config(cfg)
        except ValueError as e:
            where = str(getattr(cfg, "path", None) or "config")
            raise ConfigError(f"{where}: {e}") from None
        self.source, self.clock = source, clock
        self.observation = float(cfg["rollout"]["observation_period"])
        self.thresholds = dict(cfg["gates.p95_latency"])
        self.modes = list(cfg["metrics"]["modes"])
        try:
            self.rate_window = parse_duration(cfg["metrics"]["rate_window"])
        except (KeyError, ValueError):
            self.rate_window = 300.0
        self.tests: dict[str, core.RatioTest] = {
            k: v for k, v in core.build_tests(self.params, self.modes, None).items()
        }
        self.edges: dict[str, tuple[float, ...]] | None = None
        self.prev: CounterSnapshot | None = None
        self.stage: int | None = None
        self.weight: int | None = None
        self.stage_mde: dict[str, float | None] = {}
        self.warm_until: float | None = None
        self.history: deque[tuple[float, float]] = deque()  # (t, all requests of both versions)
        self.dropped = 0  # intervals dropped (resets, weight changes)
        self.span_pending = False

    # ------------------------------------------------------------------ protocol
    async def begin_stage(self, ctx: CheckContext) -> Sequence[dict[str, Any]]:
        """Called before a stage's traffic is applied: fix the latency edges (first stage),
        close every open interval, and journal what this stage can detect."""
        notes: list[dict[str, Any]] = []
        try:
            snap = await self.source.snapshot()
        except MetricsUnavailable as e:
            return [{"level": "warning", "message": f"analysis: no counters before stage {ctx.index + 1}: {e}"}]
        had_edges = self.edges is not None
        self._observe_rates(snap)
        self._ensure_edges(snap)
        if self.edges and not had_edges:
            notes.append(self._edges_note())
        for t in self.tests.values():
            t.cut()
        if snap.production is not None and snap.canary is not None:
            self.prev = snap
        self.stage, self.weight, self.span_pending = ctx.index, ctx.weight, True
        self.stage_mde = self._mde(snap, ctx.weight, self.observation)
        notes.append(self._mde_note(ctx))
        return notes

    async def check(self, ctx: CheckContext) -> Sequence[GateResult]:
        try:
            snap = await self.source.snapshot()
        except MetricsUnavailable as e:
            return self._errors(f"metrics unavailable: {e}")
        if snap.production is None or snap.canary is None:
            which = "canary" if snap.canary is None else "production"
            return self._errors(f"no counters from the {which} yet")
        self._observe_rates(snap)
        self._ensure_edges(snap)
        if ctx.index != self.stage or ctx.weight != self.weight:
            self._new_stage(ctx, snap)
        if self.span_pending:
            self._drop_if_spanning(ctx, snap)
        self._ingest(snap)
        if not self.stage_mde or all(v is None for v in self.stage_mde.values()):
            self.stage_mde = self._mde(snap, ctx.weight, self.observation)
        remaining = max(0.0, self.observation - ctx.stage_elapsed)
        mde_now = self._mde(snap, ctx.weight, remaining) if remaining > 0 else {}
        out = [self._result(k, self.tests[k], ctx, snap, mde_now.get(k)) for k in (ERRORS, SCHEMA, LATENCY) if k in self.tests]
        if LATENCY not in self.tests:
            out.append(GateResult(GATES[LATENCY], INCONCLUSIVE, window="rollout", blocking=self._blocking(LATENCY, ctx.weight),
                                  detail="no latency edges yet: production has not filled its duration histogram"))
        return out

    async def aclose(self) -> None:
        return None

    # ------------------------------------------------------------------ intervals
    def _new_stage(self, ctx: CheckContext, snap: CounterSnapshot) -> None:
        """The first check of a stage begin_stage was not called for: close open intervals."""
        for t in self.tests.values():
            t.cut()
        self.stage, self.weight, self.span_pending = ctx.index, ctx.weight, True
        self.stage_mde = self._mde(snap, ctx.weight, self.observation)

    def _drop_if_spanning(self, ctx: CheckContext, snap: CounterSnapshot) -> None:
        """The first interval of a stage must not mix two weights: theta0 would be an average of
        both shares.  A sliver (the router's apply time after begin_stage's read) is tolerated;
        more than that and the interval is dropped."""
        self.span_pending = False
        if self.prev is None or self.prev.t >= ctx.stage_wall_start:
            return
        span = snap.t - self.prev.t
        if span <= 0 or (ctx.stage_wall_start - self.prev.t) / span > SPAN_TOLERANCE:
            self.prev = snap
            self.dropped += 1

    def _ingest(self, snap: CounterSnapshot) -> None:
        prev = self.prev
        self.prev = snap
        if prev is None or prev.production is None or prev.canary is None:
            return
        assert snap.production is not None and snap.canary is not None
        inc, canary_reset = increments(prev, snap, self.edges or {})
        d_canary = sum(inc.requests[C].values()) if inc.valid else 0.0
        if canary_reset:
            self.warm_until = snap.t + WARMUP_S
        elif self.warm_until is None and d_canary > 0:
            self.warm_until = prev.t + WARMUP_S  # the canary's first requests
        if not inc.valid:
            self.dropped += 1
        warm = self.warm_until is not None and prev.t >= self.warm_until
        inc.valid_latency = bool(inc.valid_latency) and warm
        core.feed(self.tests, inc, self.edges)

    def _ensure_edges(self, snap: CounterSnapshot) -> None:
        """Fix the latency edges from production's cumulative histogram (a pre-period: every
        request production served before the analysis started), once."""
        if self.edges is not None or snap.production is None:
            return
        buckets = {m: b for m, b in snap.production.buckets.items() if b and max(b.values()) > 0}
        if not buckets:
            return
        edges = core.choose_edges(buckets, self.thresholds)
        if not edges:
            return
        self.edges = edges
        lat = core.build_tests(self.params, self.modes, edges)[LATENCY]
        self.tests[LATENCY] = lat

    def _observe_rates(self, snap: CounterSnapshot) -> None:
        total = 0.0
        for vc in (snap.production, snap.canary):
            if vc is not None:
                total += sum(vc.requests.values())
        if self.history and total < self.history[-1][1]:
            self.history.clear()  # a reset: start the rate over
        self.history.append((snap.t, total))
        while len(self.history) > 2 and snap.t - self.history[1][0] >= self.rate_window:
            self.history.popleft()

    def rps(self) -> float | None:
        if len(self.history) < 2:
            return None
        (t0, n0), (t1, n1) = self.history[0], self.history[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else None

    # ------------------------------------------------------------------ planning
    def _baselines(self, snap: CounterSnapshot) -> dict[str, float]:
        """Production's per-request event rates over its life (half an event when it has none,
        so a zero baseline gives a large, finite MDE instead of a division by zero)."""
        pv = snap.production
        if pv is None:
            return {}
        n = sum(pv.requests.values())
        if n <= 0:
            return {}
        out = {ERRORS: max(sum(pv.errors.values()), 0.5) / n, SCHEMA: max(pv.schema_failures, 0.5) / n}
        if self.edges:
            slow = tot = 0.0
            for m, e in self.edges.items():
                b = pv.buckets.get(m)
                if b:
                    slow += core.above(b, e[0])
                    tot += b.get(math.inf, max(b.values()))
            if tot > 0:
                out[LATENCY] = max(slow, 0.5) / tot
        return out

    def _mde(self, snap: CounterSnapshot, weight: int, horizon: float) -> dict[str, float | None]:
        rps = self.rps()
        base = self._baselines(snap)
        out: dict[str, float | None] = {}
        for k, t in self.tests.items():
            if rps is None or k not in base:
                out[k] = None
            else:
                out[k] = t.mde(rps, weight / 100.0, horizon, base[k])
        return out

    def _mde_note(self, ctx: CheckContext) -> dict[str, Any]:
        known, unknown = [], []
        for k in (ERRORS, LATENCY, SCHEMA):
            if k in self.tests:
                v = self.stage_mde.get(k)
                if v is None:
                    unknown.append(k)
                else:
                    known.append(f"{k} {_fmt(v)}x")
        what = ", ".join(known) + (" production's rate" if known else "")
        if unknown:
            what += ("; " if known else "") + f"{', '.join(unknown)} unknown until the first check"
        rps = self.rps()
        rate = f"{_fmt(rps)} rps" if rps is not None else "an unknown request rate (no traffic measured yet)"
        msg = (f"analysis: stage {ctx.index + 1} ({ctx.weight}%) can detect, with 80% power within "
               f"{self.observation:g}s at {rate}: {what}")
        data = {"stage": ctx.index, "weight": ctx.weight, "rps": rps,
                "mde": {k: (_finite(v) if v is not None else None) for k, v in self.stage_mde.items()},
                "pass_bound": {ERRORS: self.params.pass_bound_errors, LATENCY: self.params.pass_bound_latency}}
        return {"level": "info", "message": msg, "data": data}

    def _edges_note(self) -> dict[str, Any]:
        assert self.edges is not None
        txt = "; ".join(
            f"{m} > {e[0]:g}s (production p95)" + (f" and > {e[1]:g}s (threshold)" if len(e) > 1 else "")
            for m, e in self.edges.items()
        )
        return {"level": "info", "message": f"analysis: latency edges fixed before the canary: {txt}",
                "data": {"edges": {m: list(e) for m, e in self.edges.items()}}}

    # ------------------------------------------------------------------ results
    def _errors(self, detail: str) -> list[GateResult]:
        return [
            GateResult(GATES[k], ERROR, window="rollout", detail=detail, blocking=self._blocking(k, self.weight or 0))
            for k in (ERRORS, SCHEMA, LATENCY)
        ]

    def _blocking(self, metric: str, weight: int) -> bool:
        # a ratio to production can only be proven while production serves traffic, and a
        # schema-failure ratio to a zero baseline never: those stay advisory
        return self.params.require_pass and metric != SCHEMA and weight < 100

    def _result(self, metric: str, t: core.RatioTest, ctx: CheckContext, snap: CounterSnapshot,
                mde_now: float | None) -> GateResult:
        stage_mde = self.stage_mde.get(metric)
        guard = stage_mde if stage_mde is not None else math.inf
        if ctx.weight >= 100:
            guard = math.inf
        fail, ok = t.decide(ctx.stage_elapsed, self.params.min_stage_time, guard)
        e = float(t.e_value())
        bound = float(t.bound())
        xc, yp, nc, np_ = (float(v) for v in t.totals)
        verdict = FAIL if fail else PASS if ok else INCONCLUSIVE
        extra: dict[str, Any] = {
            "e_value": e, "threshold": t.threshold, "bound": _finite(bound),
            "mde": _finite(stage_mde) if stage_mde is not None else None,
            "mde_remaining": _finite(mde_now) if mde_now is not None else None,
            "rho0": t.rho0, "alpha": t.alpha, "pass_bound": t.pass_bound,
            "canary_events": xc, "production_events": yp, "canary_requests": nc, "production_requests": np_,
            "leader": t.leader(), "dropped_intervals": self.dropped,
        }
        if metric == LATENCY and self.edges:
            extra["edges"] = {m: list(v) for m, v in self.edges.items()}
        counts = f"canary {xc:.0f}/{nc:.0f}, production {yp:.0f}/{np_:.0f}"
        if verdict == FAIL:
            detail = (f"canary {WHAT[metric]} > {t.rho0:g}x production's (e = {_fmt(e)} >= {_fmt(t.threshold)}; "
                      f"{counts}; strongest: {extra['leader']})")
        elif verdict == PASS:
            detail = f"proven: canary {WHAT[metric]} <= {_fmt(bound)}x production's ({counts})"
        else:
            why = []
            if math.isfinite(bound):
                why.append(f"proven <= {_fmt(bound)}x")
            if stage_mde is not None and stage_mde > t.pass_bound:
                why.append(f"this stage cannot detect below {_fmt(stage_mde)}x (pass bound {t.pass_bound:g}x)")
            elif ctx.stage_elapsed < self.params.min_stage_time:
                why.append(f"minimum stage time {self.params.min_stage_time:g}s not over")
            if ctx.weight >= 100:
                why.append("no production traffic to compare with")
            detail = f"e = {_fmt(e)} < {_fmt(t.threshold)}; " + ("; ".join(why) + "; " if why else "") + counts
        return GateResult(
            gate=GATES[metric], verdict=verdict, value=e, threshold=t.threshold, window="rollout",
            samples=int(nc), critical=True, detail=detail,
            production_value=(yp / np_) if np_ > 0 else None,
            blocking=self._blocking(metric, ctx.weight), extra=extra,
        )


# ---------------------------------------------------------------------- counter differences


def _delta(cur: Mapping[Any, float], prev: Mapping[Any, float]) -> tuple[dict[Any, float], bool]:
    """Per-key increase; a key that vanished counts as 0 now.  ok is False when any went down."""
    out, ok = {}, True
    for k in set(cur) | set(prev):
        d = cur.get(k, 0.0) - prev.get(k, 0.0)
        if d < 0:
            ok = False
        out[k] = d
    return out, ok


def increments(prev: CounterSnapshot, cur: CounterSnapshot, edges: Mapping[str, Sequence[float]]) -> tuple[Increment, bool]:
    """The interval between two snapshots, and whether the canary's counters were reset.

    A counter that went down is a reset (a restart), not data: the interval is then marked
    invalid (``valid``/``valid_latency``) and no verdict comes from it.  A version whose
    histogram lacks one of the fixed edges (a release that changed its buckets) gives no
    latency verdict either: its count above the edge is unknown, not "everything"."""
    req: dict[str, dict[str, float]] = {}
    err: dict[str, dict[str, float]] = {}
    schema: dict[str, float] = {}
    hist: dict[str, dict[str, float]] = {}
    slow: dict[str, dict[tuple[str, float], float]] = {}
    ok = ok_lat = same_edges = True
    canary_reset = False
    for name, a, b in ((C, prev.canary, cur.canary), (P, prev.production, cur.production)):
        a = a or VersionCounters()
        b = b or VersionCounters()
        req[name], ok1 = _delta(b.requests, a.requests)
        err[name], ok2 = _delta(b.errors, a.errors)
        schema[name] = b.schema_failures - a.schema_failures
        ok3 = schema[name] >= 0
        hist[name], slow[name] = {}, {}
        ok4 = True
        for m in set(a.buckets) | set(b.buckets):
            db, okb = _delta(b.buckets.get(m, {}), a.buckets.get(m, {}))
            ok4 = ok4 and okb
            hist[name][m] = db.get(math.inf, max(db.values(), default=0.0))
            for e in edges.get(m, ()):
                if b.buckets.get(m) and e not in b.buckets[m]:
                    same_edges = False  # this version has other buckets: its slow count is unknown
                slow[name][(m, e)] = hist[name][m] - db.get(e, 0.0)
        ok = ok and ok1 and ok2 and ok3
        ok_lat = ok_lat and ok1 and ok4
        if name == C and not (ok1 and ok2 and ok4):
            canary_reset = True
    inc = Increment(requests=req, errors=err, schema=schema, hist=hist, slow=slow, valid=ok,
                    valid_latency=ok_lat and same_edges)
    return inc, canary_reset
