"""The sequential analysis (console/analysis): its error guarantee, its speed on a crash, and the
checker's handling of what real counters do (resets, weight changes, missing reads).

Statistical tests use fixed seeds and enough runs that their binomial bounds mean something;
they run on the pure-Python code path the SequentialChecker runs."""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace

import pytest

from console.core import events as ev
from console.core.analysis import SequentialChecker, core
from console.core.analysis.checker import increments
from console.core.analysis.core import ERRORS, LATENCY, SCHEMA, Obs, Params
from console.core.clock import FakeClock
from console.core.config import ConfigError, load_config
from console.core.engine import Engine, Settings
from console.core.events import ERROR, FAIL, INCONCLUSIVE, PASS
from console.core.fakes import FakeHealth, FakeRouter
from console.core.journal import Journal
from console.core.protocols import CheckContext, CounterSnapshot, MetricsUnavailable, VersionCounters

MODES = ("fast", "balanced", "creative")
EDGES = (0.5, 1.0, 1.5, 2.5, 3.2, 4.5, 10.0, math.inf)


def config(tmp_path, **analysis):
    lines = ["[analysis]"] + [f"{k} = {str(v).lower() if isinstance(v, bool) else v}" for k, v in analysis.items()]
    p = tmp_path / "canary.toml"
    p.write_text("\n".join(lines) + "\n")
    return load_config(p, environ={}, check_upstream_dir=False)


def wilson_upper(k: int, n: int, z: float = 2.326) -> float:
    """One-sided 99% upper confidence bound of a binomial proportion."""
    p = k / n
    den = 1 + z * z / n
    return (p + z * z / (2 * n) + z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / den


def poisson(rng: random.Random, lam: float) -> int:
    n, t = 0, rng.expovariate(1.0)
    while t < lam:
        n += 1
        t += rng.expovariate(1.0)
    return n


# ---------------------------------------------------------------------- the guarantee


def test_aa_false_rejections_stay_below_alpha_with_a_check_every_step():
    """500 A/A rollouts (identical versions), 150 looks each, while everything that could fool
    a naive test moves: weights 1 -> 5 -> 25%, the mode mix shifts, error rates differ by mode
    and surge (a shared incident) right after each weight change.  The e-process may only
    reject with probability <= alpha_m; the 99% upper bound of the observed rate must be below."""
    params = Params(alpha=0.2)  # errors get alpha_m = 0.1: enough rejections to measure in 500 runs
    rng = random.Random(20260107)
    runs, steps, rejected = 500, 150, 0
    base = {"fast": 0.01, "balanced": 0.03, "creative": 0.06}
    for _ in range(runs):
        t = core.build_tests(params, MODES, None)[ERRORS]
        assert t.alpha == pytest.approx(0.1)
        for step in range(steps):
            stage, pos = divmod(step, 50)
            if pos == 0:
                t.cut()
            w = (0.01, 0.05, 0.25)[stage]
            surge = 5.0 if pos < 8 else 1.0
            mix = (0.6 - step / 500, 0.3, 0.1 + step / 500)
            obs: dict[str, Obs] = {}
            tot = [0, 0, 0, 0]
            for m, share in zip(MODES, mix, strict=True):
                n = poisson(rng, 40 * share)
                n_c = sum(rng.random() < w for _ in range(n))
                p = base[m] * surge
                x = sum(rng.random() < p for _ in range(n_c))
                y = sum(rng.random() < p for _ in range(n - n_c))
                obs[f"mode:{m}"] = Obs(x, y, n_c, n - n_c)
                tot = [tot[0] + x, tot[1] + y, tot[2] + n_c, tot[3] + n - n_c]
            obs["all"] = Obs(*tot)
            t.update(obs)
            if t.rejected:
                break
        rejected += bool(t.rejected)
    assert wilson_upper(rejected, runs) <= params.alpha_of(ERRORS), f"{rejected}/{runs} false rejections"


def test_proportional_events_never_count_as_evidence_whatever_the_weight():
    """theta0 comes from each interval's own counts: events split exactly like the requests are
    no evidence at 1% or at 50%, so weight changes cannot bias the test."""
    t = core.build_tests(Params(), ["all"], None)[ERRORS]
    for w in (1, 5, 25, 50, 5, 1):
        t.cut()
        for _ in range(20):
            n_c, n_p = 4 * w, 4 * (100 - w)
            t.update({"all": Obs(x=n_c * 0.1, y=n_p * 0.1, n_c=n_c, n_p=n_p)})
            assert t.log_e() <= 1e-9
    assert not t.rejected


def test_an_interval_spanning_a_weight_change_would_be_biased_so_it_is_cut():
    """What cut() protects against: at 1% the canary saw no events; right after the move to 25%
    an incident hits both versions.  Counted as one interval, theta0 (~13%) understates the
    canary's real share of the incident (25%) and A/A data looks like a regression."""
    merged = core.build_tests(Params(), ["all"], None)[ERRORS]
    split = core.build_tests(Params(), ["all"], None)[ERRORS]
    quiet = Obs(x=0, y=0, n_c=10, n_p=990)  # 1% for a while, nothing happens
    incident = Obs(x=25, y=75, n_c=100, n_p=300)  # 25%: events split exactly like the requests
    merged.update({"all": Obs(x=25, y=75, n_c=110, n_p=1290)})
    split.update({"all": quiet})
    split.cut()
    split.update({"all": incident})
    assert merged.log_e() > math.log(10)  # the spanning interval fakes evidence
    assert split.log_e() <= 0.0


# ---------------------------------------------------------------------- a crash


def expected_crash_events(share: float, params: Params) -> int:
    """From the formula alone: with the mixture E_k = sum_j w_j (theta_j / theta0)^k (w_j ~
    log rho_j, one component), the k at which E_k first reaches 1 / alpha_errors."""
    alts = [g for g in params.grid if g > params.error_tolerance]
    raw = [math.log(g / params.error_tolerance) for g in alts]
    w = [r / sum(raw) for r in raw]
    th0 = share
    th = [g * share / (g * share + 1 - share) for g in alts]
    k = 0
    while sum(wj * (tj / th0) ** k for wj, tj in zip(w, th, strict=True)) < 1 / params.alpha_of(ERRORS):
        k += 1
    return k


def test_a_crash_is_rejected_at_the_request_the_math_predicts():
    params = Params()
    k = expected_crash_events(0.01, params)
    assert k <= 3  # "a crashed canary rolled back within about 3 canary requests"
    t = core.build_tests(params, ["all"], None)[ERRORS]
    for i in range(1, k + 1):
        t.update({"all": Obs(x=1, y=0, n_c=1, n_p=99)})  # every canary request fails
        assert bool(t.rejected) == (i == k), f"request {i}: e = {t.e_value():.3g}"


@pytest.mark.parametrize("rps", [3, 30])
def test_a_crash_is_caught_within_about_three_canary_requests_at_1_percent(rps):
    """Poisson traffic at 1%, 5 s reads, production failing 0.3% of its requests: the median
    number of canary requests served before the rollback is at most 3."""
    rng = random.Random(rps)
    served = []
    for _ in range(200):
        t = core.build_tests(Params(), ["all"], None)[ERRORS]
        n_c_total = 0
        while not t.rejected:
            n = poisson(rng, rps * 5)
            n_c = sum(rng.random() < 0.01 for _ in range(n))
            y = sum(rng.random() < 0.003 for _ in range(n - n_c))
            n_c_total += n_c
            t.update({"all": Obs(x=n_c, y=y, n_c=n_c, n_p=n - n_c)})
        served.append(n_c_total)
    served.sort()
    assert served[len(served) // 2] <= 3
    assert served[int(0.9 * len(served))] <= 5


# ---------------------------------------------------------------------- the checker on counters


class SimSource:
    """A MetricSource whose counters grow with virtual time: Poisson requests split by the
    router's current weight, per-version error rates, lognormal latencies in fixed buckets."""

    def __init__(self, clock, router, rps=30.0, p_prod=0.003, p_canary=0.003, seed=1, median=(0.3, 0.6, 1.2)):
        self.clock, self.router, self.rps = clock, router, rps
        self.p = {"production": p_prod, "canary": p_canary}
        self.rng = random.Random(seed)
        self.median = dict(zip(MODES, median, strict=True))
        self.last = clock.monotonic()
        self.down = False
        self.c = {v: self._zero() for v in ("production", "canary")}

    @staticmethod
    def _zero():
        return {"requests": dict.fromkeys(MODES, 0.0), "errors": dict.fromkeys(MODES, 0.0), "schema": 0.0,
                "buckets": {m: dict.fromkeys(EDGES, 0.0) for m in MODES}}

    def reset(self, version: str, requests: int = 0, errors: int = 0) -> None:
        """The process restarts: its counters start over (with a few requests already served)."""
        self.c[version] = self._zero()
        self.c[version]["requests"]["fast"] = float(requests)
        self.c[version]["errors"]["fast"] = float(errors)
        for e in EDGES:
            self.c[version]["buckets"]["fast"][e] = float(requests)

    def advance(self) -> None:
        now = self.clock.monotonic()
        n = poisson(self.rng, self.rps * max(0.0, now - self.last))
        self.last = now
        w = (self.router.weight or 0) / 100.0
        for _ in range(n):
            v = "canary" if self.rng.random() < w else "production"
            m = self.rng.choice(MODES)
            c = self.c[v]
            c["requests"][m] += 1
            c["errors"][m] += self.rng.random() < self.p[v]
            lat = self.rng.lognormvariate(math.log(self.median[m]), 0.35)
            for e in EDGES:
                if lat <= e:
                    c["buckets"][m][e] += 1

    def counters(self, v: str) -> VersionCounters:
        c = self.c[v]
        return VersionCounters(requests=dict(c["requests"]), errors=dict(c["errors"]), schema_failures=c["schema"],
                               buckets={m: dict(b) for m, b in c["buckets"].items()})

    async def snapshot(self) -> CounterSnapshot:
        if self.down:
            raise MetricsUnavailable("prometheus: connection refused")
        self.advance()
        return CounterSnapshot(t=self.clock.monotonic(), production=self.counters("production"), canary=self.counters("canary"))


def ctx(index=0, weight=1, elapsed=0.0, wall_start=0.0):
    return CheckContext(deployment_id="d", version="v2", index=index, weight=weight, stage_elapsed=elapsed,
                        stage_wall_start=wall_start)


async def run_stage(chk, clock, router, weight, index, seconds, interval=15.0, begin=True):
    router.weight = weight
    start = clock.monotonic()
    if begin:
        await chk.begin_stage(ctx(index, weight, 0.0, start))
    results = []
    while clock.monotonic() - start < seconds - 1e-9:
        clock.advance(interval)
        results = list(await chk.check(ctx(index, weight, clock.monotonic() - start, start)))
        if any(r.verdict == FAIL for r in results):
            break
    return {r.gate: r for r in results}


async def test_checker_results_notes_and_defaults(tmp_path):
    cfg = config(tmp_path)
    clock, router = FakeClock(), FakeRouter(weight=0)
    src = SimSource(clock, router)
    chk = SequentialChecker(cfg, src, clock)
    clock.advance(300)  # production alone: the pre-period the latency edges come from
    notes = await chk.begin_stage(ctx(0, 1))
    text = " | ".join(n["message"] for n in notes)
    assert "latency edges fixed before the canary" in text and "fast > " in text
    assert "can detect, with 80% power" in text and "unknown until the first check" in text  # one read: no rate yet
    assert "at an unknown request rate (no traffic measured yet)" in text and " ? " not in text  # a word, never "?"
    res = await run_stage(chk, clock, router, 1, 0, 120, begin=False)
    assert res["seq.errors"].extra["mde"] > 1  # known from the first check on
    assert set(res) == {"seq.errors", "seq.schema", "seq.latency"}
    for r in res.values():
        assert r.verdict == INCONCLUSIVE and r.critical and not r.blocking and r.window == "rollout"
        assert r.value == r.extra["e_value"] and r.threshold == r.extra["threshold"]
        assert {"e_value", "threshold", "bound", "mde", "rho0", "canary_events", "production_events",
                "canary_requests", "production_requests"} <= set(r.extra)
        json.dumps(r.to_dict(), allow_nan=False)  # journal-safe
    assert res["seq.errors"].threshold == pytest.approx(1 / (0.01 * 0.5))
    assert res["seq.latency"].extra["rho0"] == pytest.approx(1.2) and res["seq.latency"].extra["edges"]
    src.down = True
    clock.advance(15)
    err = await chk.check(ctx(0, 1, 135.0))
    assert [r.verdict for r in err] == [ERROR] * 3 and not any(r.blocking for r in err)
    assert "connection refused" in err[0].detail
    src.down = False
    notes = await chk.begin_stage(ctx(1, 5, 0.0, clock.monotonic()))
    assert notes[-1]["data"]["weight"] == 5 and notes[-1]["data"]["mde"][ERRORS] > 1
    assert "errors " in notes[-1]["message"] and "unknown" not in notes[-1]["message"]


async def test_require_pass_makes_the_verdicts_blocking(tmp_path):
    cfg = config(tmp_path, require_pass=True)
    clock, router = FakeClock(), FakeRouter(weight=1)
    chk = SequentialChecker(cfg, SimSource(clock, router), clock)
    res = await run_stage(chk, clock, router, 1, 0, 60)
    assert res["seq.errors"].blocking and res["seq.latency"].blocking
    assert not res["seq.schema"].blocking  # a ratio to a zero baseline can never be proven
    res100 = await run_stage(chk, clock, router, 100, 3, 30)
    assert not any(r.blocking for r in res100.values())  # no production left to compare with


async def test_a_counter_reset_produces_no_verdict(tmp_path):
    """The canary restarts between two reads and comes back with 40 failed requests on its fresh
    counters.  Read as an increase, that interval alone would roll back; as a reset it is
    dropped, and the evidence stays where it was."""
    cfg = config(tmp_path)
    clock, router = FakeClock(), FakeRouter(weight=0)
    src = SimSource(clock, router, rps=60, seed=5)
    chk = SequentialChecker(cfg, src, clock)
    clock.advance(120)
    before = await run_stage(chk, clock, router, 5, 0, 300)
    assert before["seq.errors"].verdict == INCONCLUSIVE
    src.reset("canary", requests=40, errors=40)
    src.rps = 0.0  # nothing else happens in this interval
    clock.advance(15)
    after = {r.gate: r for r in await chk.check(ctx(0, 5, 315.0, 120.0))}
    assert after["seq.errors"].verdict == INCONCLUSIVE
    assert after["seq.errors"].value == pytest.approx(before["seq.errors"].value)
    assert after["seq.errors"].extra["canary_requests"] == before["seq.errors"].extra["canary_requests"]
    assert after["seq.errors"].extra["dropped_intervals"] == before["seq.errors"].extra["dropped_intervals"] + 1
    # the same numbers taken as data would have been a verdict
    naive = core.build_tests(Params(), ["all"], None)[ERRORS]
    naive.update({"all": Obs(x=40, y=0, n_c=40, n_p=0.95 / 0.05 * 40)})
    assert naive.rejected
    # a production restart is dropped the same way, and counting resumes from the new base
    src.reset("production", requests=3)
    clock.advance(15)
    again = {r.gate: r for r in await chk.check(ctx(0, 5, 330.0, 120.0))}
    assert again["seq.errors"].extra["dropped_intervals"] == before["seq.errors"].extra["dropped_intervals"] + 2
    src.rps = 60.0
    clock.advance(15)
    resumed = {r.gate: r for r in await chk.check(ctx(0, 5, 345.0, 120.0))}
    assert resumed["seq.errors"].extra["production_requests"] > again["seq.errors"].extra["production_requests"]


def test_increments_treat_a_decrease_as_a_reset_and_a_new_series_as_growth():
    a = VersionCounters(requests={"fast": 10.0}, errors={"fast": 1.0}, buckets={"fast": {1.0: 8.0, math.inf: 10.0}})
    b = VersionCounters(requests={"fast": 12.0, "creative": 3.0}, errors={"fast": 1.0},
                        buckets={"fast": {1.0: 9.0, math.inf: 12.0}, "creative": {1.0: 1.0, math.inf: 3.0}})
    inc, reset = increments(CounterSnapshot(0, a, a), CounterSnapshot(5, b, b), {"fast": (1.0,), "creative": (1.0,)})
    assert inc.valid and inc.valid_latency and not reset
    assert inc.requests["canary"] == {"fast": 2.0, "creative": 3.0}
    assert inc.slow["canary"] == {("fast", 1.0): 1.0, ("creative", 1.0): 2.0}
    inc, reset = increments(CounterSnapshot(5, b, b), CounterSnapshot(10, b, a), {})
    assert not inc.valid and reset  # the canary went from 15 requests to 10
    # a canary release with other buckets: no latency verdict (its count above 1.0 s is unknown)
    def canary(n: float) -> VersionCounters:
        return VersionCounters(requests={"fast": n}, errors={"fast": 0.0}, buckets={"fast": {2.0: n - 1, math.inf: n}})

    inc, reset = increments(CounterSnapshot(5, b, canary(10)), CounterSnapshot(10, b, canary(14)), {"fast": (1.0,)})
    assert inc.valid and not reset and not inc.valid_latency
    inc, _ = increments(CounterSnapshot(5, b, b), CounterSnapshot(10, b, b), {"fast": (1.0,)})
    assert inc.valid_latency  # the same edges on both sides


async def test_an_interval_that_spans_a_weight_change_is_dropped(tmp_path):
    """Without begin_stage (the read before the change is 10 s old), the first interval of a
    stage mixes two weights and is dropped; with begin_stage's read just before the change,
    it is kept."""
    cfg = config(tmp_path)
    clock, router = FakeClock(), FakeRouter(weight=1)
    chk = SequentialChecker(cfg, SimSource(clock, router, rps=50), clock)
    await run_stage(chk, clock, router, 1, 0, 60, begin=False)
    clock.advance(10)
    router.weight, wall = 25, clock.monotonic()
    clock.advance(5)
    first = {r.gate: r for r in await chk.check(ctx(1, 25, 5.0, wall))}
    assert first["seq.errors"].extra["dropped_intervals"] == 1
    clock.advance(5)
    await chk.begin_stage(ctx(2, 50, 0.0, clock.monotonic()))
    clock.advance(0.2)
    router.weight, wall = 50, clock.monotonic()
    clock.advance(14.8)
    kept = {r.gate: r for r in await chk.check(ctx(2, 50, 14.8, wall))}
    assert kept["seq.errors"].extra["dropped_intervals"] == 1
    assert kept["seq.errors"].extra["canary_requests"] > first["seq.errors"].extra["canary_requests"]


# ---------------------------------------------------------------------- config


async def test_grid_alpha_and_tolerance_come_from_config(tmp_path):
    cfg = config(tmp_path, grid="[1.5, 2.0, 4.0]", alpha=0.05, error_tolerance=1.8)
    clock, router = FakeClock(), FakeRouter(weight=1)
    chk = SequentialChecker(cfg, SimSource(clock, router), clock)
    assert chk.tests[ERRORS].alts == [2.0, 4.0]  # ratios at or below the tolerance are not alternatives
    assert chk.tests[ERRORS].threshold == pytest.approx(1 / (0.05 * 0.5))
    res = await run_stage(chk, clock, router, 1, 0, 30)
    assert res["seq.errors"].threshold == pytest.approx(40.0) and res["seq.errors"].extra["rho0"] == pytest.approx(1.8)
    # a grid without the large ratios needs more crash events to reach the same evidence
    def crash_events(params: Params) -> int:
        t = core.build_tests(params, ["all"], None)[ERRORS]
        k = 0
        while not t.rejected:
            k += 1
            t.update({"all": Obs(x=1, y=0, n_c=1, n_p=99)})
        return k

    assert crash_events(replace(Params(), grid=(1.5, 2.0))) > crash_events(Params()) + 3
    assert crash_events(replace(Params(), alpha=1e-6)) > crash_events(Params())
    with pytest.raises(ConfigError, match=r"\[analysis\] grid .* no ratio above latency_tolerance"):
        SequentialChecker(config(tmp_path, grid="[1.1]", latency_tolerance=1.2, error_tolerance=1.0), None, clock)


# ---------------------------------------------------------------------- PASS


async def test_pass_needs_proof_and_a_stage_able_to_detect_the_bound(tmp_path):
    """Plenty of traffic at 50%: the mirror test proves the canary's 5xx rate <= 2x production's
    and the stage passes; at 1% and 3 rps the stage could not detect a 2x regression, so it
    never passes however identical the versions are."""
    cfg = config(tmp_path, pass_bound_errors=2.0)
    clock, router = FakeClock(), FakeRouter(weight=0)
    chk = SequentialChecker(cfg, SimSource(clock, router, rps=200, p_prod=0.05, p_canary=0.05, seed=3), clock)
    clock.advance(60)
    res = await run_stage(chk, clock, router, 50, 0, 600)
    assert res["seq.errors"].verdict == PASS, res["seq.errors"].detail
    assert res["seq.errors"].extra["bound"] <= 2.0 and res["seq.errors"].extra["mde"] <= 2.0
    low = SequentialChecker(cfg, SimSource(clock, router, rps=3, p_prod=0.05, p_canary=0.05, seed=4), clock)
    clock.advance(60)
    res = await run_stage(low, clock, router, 1, 0, 900)
    assert res["seq.errors"].verdict == INCONCLUSIVE and res["seq.errors"].extra["mde"] > 2.0
    assert "cannot detect below" in res["seq.errors"].detail


# ---------------------------------------------------------------------- with the engine


async def engine_run(tmp_path, p_canary):
    cfg = config(tmp_path)
    clock, router = FakeClock(), FakeRouter(weight=0)
    src = SimSource(clock, router, rps=30, p_prod=0.003, p_canary=p_canary, seed=11)
    clock.advance(120)
    s = Settings(stages=[1, 5, 25, 100], observation_period=900, check_interval=15, canary_health_url="http://c/health")
    eng = Engine(s, version="v2", router=router, journal=Journal(tmp_path / "j.jsonl"), clock=clock,
                 checkers=[SequentialChecker(cfg, src, clock)], health=FakeHealth(), operator=ev.Operator("t"))
    seen: list[ev.Event] = []
    eng.add_listener(seen.append)
    return await eng.run(), seen, clock


async def test_engine_rolls_a_crashed_canary_back_on_seq_errors_within_seconds(tmp_path):
    code, seen, clock = await engine_run(tmp_path, p_canary=1.0)
    assert code == 3
    rb = next(e for e in seen if isinstance(e, ev.RolledBack))
    assert rb.reason.startswith("seq.errors") and "5xx rate > 1x production's" in rb.reason
    assert rb.from_weight == 1 and clock.t - 120 <= 120  # 1% of 30 rps: ~3 canary requests


async def test_engine_healthy_rollout_is_not_held_by_the_analysis(tmp_path):
    code, seen, _ = await engine_run(tmp_path, p_canary=0.003)
    assert code == 0
    checks = [e for e in seen if isinstance(e, ev.CheckCompleted)]
    verdicts = {r.verdict for c in checks for r in c.results if r.gate.startswith("seq.")}
    assert FAIL not in verdicts and not any(isinstance(e, ev.Holding) for e in seen)
    gates = {r.gate for c in checks for r in c.results}
    assert {f"seq.{m}" for m in (ERRORS, SCHEMA, LATENCY)} <= gates
