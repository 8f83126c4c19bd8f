"""The sequential canary-vs-production test: pure math, no I/O, no UI, no numpy.

Why a likelihood-ratio e-process.  A fixed threshold checked every few seconds raises false
alarms with every look, and at 1% traffic a fixed window is either too short to see a real
regression or too long to stop a crash.  A test supermartingale E_t (E_0 = 1, E[E_t | past] <=
E_{t-1} under the null) can be looked at after every scrape: by Ville's inequality
P(sup_t E_t >= 1/alpha) <= alpha, however often and however long we look.

The model.  Within one interval (a stretch of time at one router weight) the canary serves n_c
requests and production n_p.  Conditioned on the interval's totals, each of the m = x + y events
(5xx, schema failures, requests slower than an edge) belongs to the canary with probability

    theta(rho) = rho * n_c / (rho * n_c + n_p)

when the canary's per-request event rate is rho times production's.  The test is of
H0: rho <= rho0.  For one alternative rho_k > rho0 the interval's likelihood ratio is

    (theta(rho_k) / theta(rho0))^x * ((1 - theta(rho_k)) / (1 - theta(rho0)))^y

whose conditional mean is <= 1 for every rho <= rho0, so the running product is a test
supermartingale for the whole composite null.  The e-value is a weighted mixture over a grid of
ratios (and over "components", see below) of those running products: a mixture of test
supermartingales is one too.  theta is computed from the realized counts of each interval, so
the test follows weight changes and traffic bursts by itself; under random routing the
canary's requests are a uniform random subset of the interval's requests, so time-varying rates
that hit both versions (a shared incident) cancel out (with rho0 = 1 the exact conditional law
is hypergeometric, which Hoeffding's convex ordering shows is only more conservative).

Intervals.  A scrape with no event of a series carries no evidence for it (its factor is 1),
so it is merged into the next one: an interval runs from just after the last scrape that saw an
event to the next scrape that sees one.  Its boundaries depend only on version-blind totals, so
the argument above still holds, and theta0 then reflects the canary share over a longer stretch:
at 3 rps one crash error weighs about as much as at 100 rps, instead of 1/16 of a 5 s scrape.
An interval never spans a weight change (``cut``) and an interval with a counter reset is
dropped (``valid`` false), never guessed.

Components.  The same grid is run on the series pooled over modes (each mode's requests and
events summed: valid because routing does not depend on the mode) and on each mode alone, so a
regression confined to one mode is not diluted by the others; latency adds one component per
bucket edge.  Their weights sum to one, so the mixture stays a valid e-process.

PASS.  The mirror test of H0': rho >= b against alternatives b/g (g in the grid) proves an
upper bound b on the pooled ratio.  Bounds from a fixed ladder are tested at once, with alpha
split half to the pass bound and half over the rest of the ladder, so the reported bound is a
valid anytime upper confidence bound and never increases.

Everything here works on plain floats (``SCALAR``) and, unchanged, on numpy arrays when the
``numpy`` module is passed as ``ops``: the benchmark runs thousands of rollouts at once through
this very code.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

INF = math.inf
Z_POWER = 0.8416  # the MDE is detected with 80% probability
MDE_MAX = 1e6  # above this the MDE is reported as inf

# alpha is split across the metrics: errors get the largest share because their events are the
# scarcest at 1% traffic (a crash must be caught within ~3 canary requests), while latency events
# (5% of all requests) and schema failures (a zero baseline) need few nats more for a lower alpha.
ALPHA_SPLIT = {"errors": 0.5, "schema": 0.25, "latency": 0.25}
# share of a metric's mixture weight on its pooled component(s); the rest is split over the modes
POOLED_WEIGHT = 0.75
# the ladder of upper bounds the mirror test tries to prove (the pass bound is always added)
BOUND_LADDER = (1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0)
# latency increments from the canary's first minute of traffic (and the minute after a canary
# counter reset, i.e. a restart) are not scored: a cold start (JIT, caches, connection pools) makes
# a healthy canary slower for seconds to a minute, which the seed's p95 also means to filter out.
WARMUP_S = 60.0
# mixture weights over the grid: "log" puts weight w_k ~ log(rho_k / rho0), the log-evidence
# one canary event carries for rho_k, so a crash (a few events at the top ratio) pays little for
# the mixture while a small ratio, which needs many events anyway, pays a few nats more.
GRID_WEIGHTING = "log"


class _ScalarOps:
    """The four array operations the math needs, for plain floats (numpy has the same names)."""

    @staticmethod
    def log(v: float) -> float:
        return math.log(v) if v > 0 else -INF

    @staticmethod
    def exp(v: float) -> float:
        return math.exp(v) if v < 700.0 else math.exp(700.0)

    @staticmethod
    def maximum(a: Any, b: Any) -> Any:
        return a if a >= b else b

    @staticmethod
    def minimum(a: Any, b: Any) -> Any:
        return a if a <= b else b

    @staticmethod
    def where(cond: Any, a: Any, b: Any) -> Any:
        return a if cond else b


SCALAR = _ScalarOps()


def theta(rho: float, n_c: float, n_p: float) -> float:
    """The canary's share of events when its per-request rate is ``rho`` times production's."""
    den = rho * n_c + n_p
    return rho * n_c / den if den > 0 else 0.0


def grid_weights(alts: Sequence[float], rho0: float, weighting: str = GRID_WEIGHTING) -> list[float]:
    if weighting == "uniform":
        return [1.0 / len(alts)] * len(alts)
    raw = [math.log(r / rho0) for r in alts]
    s = sum(raw)
    return [w / s for w in raw]


def logsumexp(terms: Sequence[Any], ops: Any = SCALAR) -> Any:
    mx = terms[0]
    for t in terms[1:]:
        mx = ops.maximum(mx, t)
    s = 0.0
    for t in terms:
        s = s + ops.exp(t - mx)
    return mx + ops.log(s)


@dataclass(frozen=True)
class Obs:
    """One interval of one component: canary/production events and requests.  ``valid`` false
    (a counter reset) drops the interval."""

    x: Any
    y: Any
    n_c: Any
    n_p: Any
    valid: Any = True


class RatioTest:
    """One metric's e-process (H0: canary rate <= rho0 x production's) and its mirror bound.

    ``components`` maps a component name to its mixture weight (they must sum to 1); ``main``
    is the component whose ratio the PASS bound is about (the pooled series).
    """

    def __init__(
        self,
        *,
        name: str,
        rho0: float,
        grid: Iterable[float],
        alpha: float,
        pass_bound: float,
        components: Mapping[str, float],
        main: str,
        ladder: Iterable[float] = BOUND_LADDER,
        ops: Any = SCALAR,
        zero: Any = 0.0,
        false: Any = False,
        weighting: str = GRID_WEIGHTING,
    ) -> None:
        self.name, self.rho0, self.alpha, self.pass_bound, self.main, self.ops = name, rho0, alpha, pass_bound, main, ops
        self.alts = sorted({float(g) for g in grid if g > rho0})
        if not self.alts:
            raise ValueError(f"no ratio of the grid is above the tolerance {rho0:g}")
        total = sum(components.values())
        if main not in components or abs(total - 1.0) > 1e-9:
            raise ValueError(f"component weights must sum to 1 and include {main!r}")
        self.weights = grid_weights(self.alts, rho0, weighting)
        self.comp_w = dict(components)
        self.log_threshold = math.log(1.0 / alpha)
        self._lrat = [math.log(r / rho0) for r in self.alts]
        self._logw = {c: [math.log(w) + math.log(wk) for wk in self.weights] for c, w in self.comp_w.items()}
        self.l: dict[str, list[Any]] = {c: [zero] * len(self.alts) for c in self.comp_w}
        self.acc: dict[str, list[Any]] = {c: [zero, zero] for c in self.comp_w}
        # mirror: for each bound b, alternatives b/g; alpha split half to the pass bound
        self.bounds = sorted({float(b) for b in ladder if b > 1.0} | {float(pass_bound)})
        others = max(1, len(self.bounds) - 1)
        self._bound_logthr = {
            b: math.log(1.0 / (alpha * (0.5 if b == pass_bound else 0.5 / others))) for b in self.bounds
        }
        grid_sorted = sorted({float(g) for g in grid if g > 1.0}) or [2.0]
        self._mirror_alts = {b: [round(b / g, 12) for g in grid_sorted] for b in self.bounds}
        self._mirror_lrat = {b: [math.log(a / b) for a in alts] for b, alts in self._mirror_alts.items()}
        self._ratios = tuple(sorted({rho0, *self.alts}))
        self._ratios_main = tuple(sorted({*self._ratios, *self.bounds, *(a for v in self._mirror_alts.values() for a in v)}))
        self._mirror_logw = math.log(1.0 / len(grid_sorted))
        self.ml: dict[float, list[Any]] = {b: [zero] * len(grid_sorted) for b in self.bounds}
        self.proven: dict[float, Any] = {b: false for b in self.bounds}
        self.rejected: Any = false
        self.last_log_e: Any = zero
        self.totals = [zero, zero, zero, zero]  # canary events, production events, canary requests, production requests

    # -------------------------------------------------------------- updating
    def cut(self) -> None:
        """Close every open interval without a verdict (a weight change): pending requests that
        saw no event are dropped, which is the same as a factor of 1."""
        for c in self.acc:
            self.acc[c] = [self.acc[c][0] * 0.0, self.acc[c][1] * 0.0]

    def update(self, obs: Mapping[str, Obs]) -> None:
        ops = self.ops
        scalar = ops is SCALAR
        changed = not scalar
        for c, o in obs.items():
            if c not in self.comp_w:
                continue
            v = o.valid
            a_c, a_p = self.acc[c]
            n_c = a_c + o.n_c * v
            n_p = a_p + o.n_p * v
            x = ops.minimum(o.x * v, n_c)  # never more canary events than canary requests
            y = ops.minimum(o.y * v, n_p)
            m = x + y
            if scalar and not m > 0:  # no event: a factor of exactly 1, the interval stays open
                self.acc[c] = [n_c, n_p]
                if c == self.main:
                    t = self.totals
                    self.totals = [t[0], t[1], t[2] + o.n_c * v, t[3] + o.n_p * v]
                continue
            changed = True
            z = ops.where(n_c + n_p > 0, 0.0, 1.0)
            # log(r * n_c + n_p) once per distinct ratio r (the mirror's b/g repeat and overlap the grid)
            lg = {r: ops.log(r * n_c + n_p + z) for r in (self._ratios_main if c == self.main else self._ratios)}
            base = lg[self.rho0]
            ls = self.l[c]
            for k, rho in enumerate(self.alts):
                ls[k] = ls[k] + x * self._lrat[k] + m * (base - lg[rho])
            if c == self.main:
                self._update_mirror(x, m, lg)
                t = self.totals
                self.totals = [t[0] + x, t[1] + y, t[2] + o.n_c * v, t[3] + o.n_p * v]
            closed = m > 0
            self.acc[c] = [ops.where(closed, 0.0, n_c), ops.where(closed, 0.0, n_p)]
        if changed:
            self.last_log_e = self.log_e()
            self.rejected = self.rejected | (self.last_log_e >= self.log_threshold)

    def _update_mirror(self, x: Any, m: Any, lg: Mapping[float, Any]) -> None:
        ops = self.ops
        for b in self.bounds:
            base = lg[b]
            ls = self.ml[b]
            for j, a in enumerate(self._mirror_alts[b]):
                ls[j] = ls[j] + x * self._mirror_lrat[b][j] + m * (base - lg[a])
            log_e = self._mirror_logw + logsumexp(ls, ops)
            self.proven[b] = self.proven[b] | (log_e >= self._bound_logthr[b])

    # -------------------------------------------------------------- reading
    def log_e(self) -> Any:
        terms = [lw + lv for c in self.comp_w for lw, lv in zip(self._logw[c], self.l[c], strict=True)]
        return logsumexp(terms, self.ops)

    def e_value(self) -> Any:
        return self.ops.exp(self.ops.minimum(self.log_e(), 700.0))

    @property
    def threshold(self) -> float:
        return 1.0 / self.alpha

    def bound(self) -> Any:
        """The smallest proven upper bound on the pooled ratio (inf: none yet)."""
        out: Any = INF
        for b in reversed(self.bounds):
            out = self.ops.where(self.proven[b], b, out)
        return out

    def leader(self) -> str:
        """The component with the most evidence (scalar use only): which mode or edge it is."""
        best, name = -INF, self.main
        for c in self.comp_w:
            v = logsumexp([lw + lv for lw, lv in zip(self._logw[c], self.l[c], strict=True)])
            if v > best:
                best, name = v, c
        return name

    def decide(self, stage_elapsed: float, min_stage_time: float, stage_mde: Any) -> tuple[Any, Any]:
        """(fail, pass).  FAIL: the test rejected (sticky).  PASS: a proven bound <= the pass
        bound, the stage's minimum time is over, and the stage could have detected a ratio of
        the pass bound (its MDE is <= the bound): a PASS never rests on too little data."""
        ops = self.ops
        ok = (self.bound() <= self.pass_bound) & (stage_mde <= self.pass_bound)
        ok = ok & (stage_elapsed >= min_stage_time)
        return self.rejected, ops.where(self.rejected, False, ok)

    # -------------------------------------------------------------- planning
    def mde(self, rps: float, share: float, horizon_s: float, p_event: float, component: str | None = None) -> float:
        """Minimum detectable ratio for the coming ``horizon_s`` seconds (scalar).

        With total traffic ``rps``, canary share ``share`` and production event rate
        ``p_event`` per request: the smallest ratio r that the test rejects within the horizon
        with probability >= 80% (the usual power of an MDE), from a normal approximation of the
        log e-value of the best single grid ratio of the pooled component.  inf when there is
        no production traffic to compare with, or no traffic at all.  ``component`` defaults to
        the pooled one (the latency test's threshold edges are ``"thr:all"``)."""
        comp = component or self.main
        if not (0.0 < share < 1.0) or rps <= 0 or horizon_s <= 0 or p_event <= 0:
            return INF
        n_c, n_p = rps * share * horizon_s, rps * (1.0 - share) * horizon_s
        th0 = theta(self.rho0, share, 1.0 - share)
        coeffs = []
        for k, rho in enumerate(self.alts):
            thk = theta(rho, share, 1.0 - share)
            coeffs.append((math.log(thk / th0), math.log((1.0 - thk) / (1.0 - th0)),
                           self.log_threshold - self._logw[comp][k]))

        def detected(r: float) -> bool:
            mu_c, mu_p = r * p_event * n_c, p_event * n_p
            for a, b, need in coeffs:
                mean, sd = mu_c * a + mu_p * b, math.sqrt(mu_c * a * a + mu_p * b * b)
                if mean - Z_POWER * sd >= need:
                    return True
            return False

        lo, hi = self.rho0, self.rho0
        while not detected(hi):
            hi *= 2.0
            if hi > MDE_MAX:
                return INF
        for _ in range(40):
            mid = math.sqrt(lo * hi)
            lo, hi = (lo, mid) if detected(mid) else (mid, hi)
        return hi


# ------------------------------------------------------------------ latency edges


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float:
    """Prometheus' histogram_quantile on one cumulative histogram {le: count} (NaN: no data)."""
    items = sorted(buckets.items())
    if not items or items[-1][1] <= 0:
        return math.nan
    total = items[-1][1]
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in items:
        c = max(c, prev_c)
        if c >= rank:
            if math.isinf(le):
                return prev_le
            if c == prev_c:
                return le
            return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)
        prev_le, prev_c = le, c
    return prev_le


def nearest_edge(value: float, buckets: Mapping[float, float] | Sequence[float]) -> float | None:
    edges = [le for le in buckets if math.isfinite(le)]
    if not edges or not math.isfinite(value):
        return None
    return min(edges, key=lambda le: (abs(le - value), le))


def choose_edges(
    production_buckets: Mapping[str, Mapping[float, float]], thresholds: Mapping[str, float]
) -> dict[str, tuple[float, ...]]:
    """Per mode, the fixed bucket edges the latency test counts "slow" requests above: the edge
    nearest production's p95 (from a pre-period, before the canary has any say) and the edge at
    the mode's p95 threshold.  Exact bucket counts, no interpolated quantile."""
    out: dict[str, tuple[float, ...]] = {}
    for mode, b in production_buckets.items():
        edges: list[float] = []
        p95_edge = nearest_edge(histogram_quantile(0.95, b), b)
        if p95_edge is not None:
            edges.append(p95_edge)
        if mode in thresholds:
            thr_edge = nearest_edge(thresholds[mode], b)
            if thr_edge is not None and thr_edge not in edges:
                edges.append(thr_edge)
        if edges:
            out[mode] = tuple(edges)
    return out


def above(buckets: Mapping[float, float], edge: float) -> float:
    """Observations above ``edge`` in a cumulative histogram (count(+Inf) - count(le=edge))."""
    total = buckets.get(INF)
    if total is None:
        total = max(buckets.values(), default=0.0)
    return total - buckets.get(edge, 0.0)


# ------------------------------------------------------------------ one analysis = three tests


@dataclass(frozen=True)
class Params:
    """The [analysis] keys (plus [rollout] min_stage_time), validated."""

    alpha: float = 0.01
    error_tolerance: float = 1.0
    latency_tolerance: float = 1.2
    pass_bound_errors: float = 2.0
    pass_bound_latency: float = 1.5
    grid: tuple[float, ...] = (1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0)
    min_stage_time: float = 0.0
    require_pass: bool = False

    @classmethod
    def from_config(cls, cfg: Any) -> Params:
        """Raises ValueError with one line (key, value, what is allowed)."""
        a = cfg["analysis"]
        p = cls(
            alpha=float(a["alpha"]),
            error_tolerance=float(a["error_tolerance"]),
            latency_tolerance=float(a["latency_tolerance"]),
            pass_bound_errors=float(a["pass_bound_errors"]),
            pass_bound_latency=float(a["pass_bound_latency"]),
            grid=tuple(float(g) for g in a["grid"]),
            min_stage_time=float(cfg["rollout"]["min_stage_time"]),
            require_pass=bool(a["require_pass"]),
        )
        p.validate()
        return p

    def validate(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"[analysis] alpha = {self.alpha} is not valid; allowed: 0 < alpha < 1")
        for key in ("error_tolerance", "latency_tolerance", "pass_bound_errors", "pass_bound_latency"):
            v = getattr(self, key)
            if not (math.isfinite(v) and v > 0.0):
                raise ValueError(f"[analysis] {key} = {v} is not valid; allowed: a number > 0")
        for key in ("error_tolerance", "latency_tolerance"):
            rho0 = getattr(self, key)
            if not any(g > rho0 for g in self.grid):
                raise ValueError(
                    f"[analysis] grid = {list(self.grid)} has no ratio above {key} = {rho0:g}; "
                    f"allowed: a list of ratios, some > {rho0:g}"
                )
        if any(not math.isfinite(g) or g <= 0 for g in self.grid):
            raise ValueError(f"[analysis] grid = {list(self.grid)} is not valid; allowed: finite ratios > 0")

    def alpha_of(self, metric: str) -> float:
        return self.alpha * ALPHA_SPLIT[metric]


ERRORS, SCHEMA, LATENCY = "errors", "schema", "latency"


def _components(pooled: Sequence[str], per_mode: Sequence[str]) -> dict[str, float]:
    if not per_mode:
        return {c: 1.0 / len(pooled) for c in pooled}
    out = {c: POOLED_WEIGHT / len(pooled) for c in pooled}
    out.update({c: (1.0 - POOLED_WEIGHT) / len(per_mode) for c in per_mode})
    return out


def build_tests(
    params: Params,
    modes: Sequence[str],
    edges: Mapping[str, Sequence[float]] | None,
    ops: Any = SCALAR,
    zero: Any = 0.0,
    false: Any = False,
) -> dict[str, RatioTest]:
    """The analysis' three e-processes.  ``edges`` (mode -> (p95 edge[, threshold edge])) may be
    None when no pre-period was seen yet: the latency test is then built later."""
    common = {"grid": params.grid, "ops": ops, "zero": zero, "false": false}
    multi = [f"mode:{m}" for m in modes] if len(modes) > 1 else []
    tests = {
        ERRORS: RatioTest(
            name=ERRORS, rho0=params.error_tolerance, alpha=params.alpha_of(ERRORS), pass_bound=params.pass_bound_errors,
            components=_components(["all"], multi), main="all", **common,
        ),
        SCHEMA: RatioTest(
            name=SCHEMA, rho0=params.error_tolerance, alpha=params.alpha_of(SCHEMA), pass_bound=params.pass_bound_errors,
            components={"all": 1.0}, main="all", **common,
        ),
    }
    if edges:
        pooled = ["p95:all"] + (["thr:all"] if any(len(e) > 1 for e in edges.values()) else [])
        per = [f"p95:{m}" for m in edges] + [f"thr:{m}" for m, e in edges.items() if len(e) > 1] if len(edges) > 1 else []
        tests[LATENCY] = RatioTest(
            name=LATENCY, rho0=params.latency_tolerance, alpha=params.alpha_of(LATENCY),
            pass_bound=params.pass_bound_latency, components=_components(pooled, per), main="p95:all", **common,
        )
    return tests


@dataclass
class Increment:
    """What happened between two scrapes, per version ("canary"/"production").

    ``requests``/``errors``: version -> mode -> count; ``schema``: version -> count;
    ``hist``: version -> mode -> requests counted by the histogram; ``slow``: version ->
    (mode, edge) -> requests above the edge.  Values are floats, or arrays of runs in the bench.
    ``valid`` false marks a counter reset: the interval is dropped."""

    requests: Mapping[str, Mapping[str, Any]]
    errors: Mapping[str, Mapping[str, Any]]
    schema: Mapping[str, Any]
    hist: Mapping[str, Mapping[str, Any]]
    slow: Mapping[str, Mapping[tuple[str, float], Any]]
    valid: Any = True
    valid_latency: Any = True


def _sum(values: Iterable[Any]) -> Any:
    out: Any = 0.0
    for v in values:
        out = out + v
    return out


def feed(tests: Mapping[str, RatioTest], inc: Increment, edges: Mapping[str, Sequence[float]] | None) -> None:
    """Turn one increment into each component's observation and update the e-processes."""
    C, P = "canary", "production"
    modes = list(inc.requests[C].keys() | inc.requests[P].keys())
    req = {v: {m: inc.requests[v].get(m, 0.0) for m in modes} for v in (C, P)}
    err = {v: {m: inc.errors[v].get(m, 0.0) for m in modes} for v in (C, P)}
    obs = {"all": Obs(_sum(err[C].values()), _sum(err[P].values()), _sum(req[C].values()), _sum(req[P].values()), inc.valid)}
    for m in modes:
        obs[f"mode:{m}"] = Obs(err[C][m], err[P][m], req[C][m], req[P][m], inc.valid)
    tests[ERRORS].update(obs)
    tests[SCHEMA].update({"all": Obs(inc.schema[C], inc.schema[P], obs["all"].n_c, obs["all"].n_p, inc.valid)})
    lat = tests.get(LATENCY)
    if lat is None or not edges:
        return
    lobs: dict[str, Obs] = {}
    for kind, idx in (("p95", 0), ("thr", 1)):
        xs, ys, ncs, nps = [], [], [], []
        for m, e in edges.items():
            if len(e) <= idx:
                continue
            x = inc.slow[C].get((m, e[idx]), 0.0)
            y = inc.slow[P].get((m, e[idx]), 0.0)
            n_c, n_p = inc.hist[C].get(m, 0.0), inc.hist[P].get(m, 0.0)
            lobs[f"{kind}:{m}"] = Obs(x, y, n_c, n_p, inc.valid_latency)
            xs.append(x), ys.append(y), ncs.append(n_c), nps.append(n_p)
        if xs:
            lobs[f"{kind}:all"] = Obs(_sum(xs), _sum(ys), _sum(ncs), _sum(nps), inc.valid_latency)
    lat.update(lobs)
