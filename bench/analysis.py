#!/usr/bin/env python3
"""Simulated rollouts (no servers): the sequential analysis vs the seed's rule vs a Flagger-like rule.

    python bench/analysis.py [--runs N] [--seed S] [--json] [--workers W] [--rps 3,30] [--scenarios crash,healthy]

Each (scenario, rps) group simulates ``N`` healthy rollouts (default 2000) or ``N // 4``
regressed ones (default 500) at 1% -> 5% -> 25% (15 minutes each; reaching 100% ends the run),
in counts per 5 s scrape, all runs of a group at once with numpy.  The three deciders see the
same streams:

* ``sequential``: console/core/analysis/core.py itself (``build_tests``/``feed``/``decide``, the
  code the SequentialChecker runs, driven with numpy arrays instead of floats), checked at
  every scrape; it rolls back when a test rejects and otherwise advances at the end of the
  observation (the default ``require_pass = false``); a stage without a proven PASS of the
  errors and latency tests counts as inconclusive;
* ``seed``: observe 15 minutes, then require canary error rate < 0.5% and p95 <= the mode's
  threshold over the last 5 minutes (the seed's ``rate(...[5m])``); no data passes, as in the
  seed, and is counted as inconclusive;
* ``flagger``: a check every minute on the last minute (same thresholds), no canary request
  counting as a failed check, rollback at the 5th failed check.

Seeded and repeatable: group g of seed S uses numpy's generator seeded with (S, g, rps).
numpy is needed here only (the console does not use it): ``pip install numpy``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

try:
    import numpy as np
except ImportError:  # pragma: no cover - depends on the machine
    print("bench/analysis.py: numpy is not installed; allowed: `pip install numpy` (the bench needs it, the console does not)",
          file=sys.stderr)
    sys.exit(2)

from console.core.analysis import core  # noqa: E402
from console.core.config import SCHEMA  # noqa: E402

# ------------------------------------------------------------------ the simulated world
STEP = 5.0  # seconds between scrapes
STAGES = (1, 5, 25)  # reaching 100% ends a run
STAGE_S = 900.0
STEPS_PER_STAGE = int(STAGE_S / STEP)
TOTAL_STEPS = STEPS_PER_STAGE * len(STAGES)
MODES = ("fast", "balanced", "creative")
THRESHOLDS = {m: d for m, (_, d) in SCHEMA["gates.p95_latency"].items()}  # the seed's 2.5 / 3.2 / 4.5 s
MEDIAN = np.array([0.8, 1.2, 1.8])  # lognormal latency per mode (s); p95 = 1.78 x median
SIGMA = 0.35
# the demo service's bucket edges (console/sandbox/service.py) from 0.25 s up; the lowest bucket absorbs the rest
EDGES = np.array([0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.2, 4.0, 4.5, 5.0, 7.5, 10.0, math.inf])
BASE_ERR = np.array([0.001, 0.002, 0.004])  # production 5xx rate per mode
BASE_SCHEMA = 0.0002
MIX_START, MIX_END = np.array([0.5, 0.3, 0.2]), np.array([0.25, 0.35, 0.4])  # the mode mix shifts
NOISE = 0.05  # +-5% per scrape, per version and mode: traffic, error rate, latency scale
BURST_P, BURST_STEPS, BURST_X = 1 / 240, 6, 2.5  # a 30 s x2.5 burst about every 20 minutes
AR_PHI, AR_SD = 0.98, 0.3  # slow log-normal drift of the traffic
RESET_P = 0.10  # share of runs in which one process restarts (its counters reset) at a random scrape
DROP_P = 0.02  # share of scrapes lost
INCIDENT_ERR, INCIDENT_LAT = 15.0, 1.4  # a shared incident: both versions, 1-3 minutes
COLD_X, COLD_TAU = 0.6, 20.0  # canary latency x(1 + 0.6 e^{-t/20 s}) after it starts
SEED_ERROR_RATE = 0.005
FLAGGER_FAILS = 5
PREPERIOD_S = 600.0  # production-only data the latency edges are chosen from
# alpha only moves the thresholds, so the same e-values give the sequential decider at other
# alphas for free: used to compare time-to-detect at the seed's false-rollback rate
ALPHA_LADDER = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
VERSIONS = ((0, "production"), (1, "canary"))


@dataclass(frozen=True)
class Scenario:
    name: str
    healthy: bool = False
    err_mult: float = 1.0
    err_mode: str | None = None  # the regression hits this mode only
    crash: bool = False
    schema_mult: float = 1.0
    lat_mult: float = 1.0
    tail_share: float = 0.0  # this share of canary requests gets +tail_add seconds
    tail_add: float = 0.0
    delayed: bool = False  # onset uniform in [300, 1500] s instead of at the start
    incident: bool = False
    cold_start: bool = False


SCENARIOS = (
    Scenario("healthy", healthy=True),
    Scenario("incident", healthy=True, incident=True),
    Scenario("cold_start", healthy=True, cold_start=True),
    Scenario("errors_x1.5", err_mult=1.5),
    Scenario("errors_x2", err_mult=2.0),
    Scenario("errors_x5", err_mult=5.0),
    Scenario("errors_x25", err_mult=25.0),
    Scenario("crash", crash=True),
    Scenario("schema_x25", schema_mult=25.0),
    Scenario("latency_x1.25", lat_mult=1.25),
    Scenario("latency_x1.5", lat_mult=1.5),
    Scenario("latency_x2", lat_mult=2.0),
    Scenario("tail_only", tail_share=0.04, tail_add=3.0),
    Scenario("one_mode_errors_x5", err_mult=5.0, err_mode="creative"),
    Scenario("delayed_errors_x5", err_mult=5.0, delayed=True),
)
RPS = (1, 3, 10, 30, 100)

def phi(z: Any) -> Any:
    """Standard normal CDF (Abramowitz & Stegun 7.1.26 erfc, |error| < 2e-7), vectorized."""
    x = np.abs(z) / math.sqrt(2.0)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    half_erfc = 0.5 * poly * np.exp(-x * x)
    return np.where(z < 0, half_erfc, 1.0 - half_erfc)


def default_params() -> core.Params:
    """The [analysis] defaults of console/core/config.py SCHEMA, as the console would load them."""
    a = {k: d for k, (_, d) in SCHEMA["analysis"].items()}
    return core.Params.from_config({"analysis": a, "rollout": {"min_stage_time": SCHEMA["rollout"]["min_stage_time"][1]}})


def mix_at(t: float) -> Any:
    s = min(max(t / (STAGE_S * len(STAGES)), 0.0), 1.0)
    return (1 - s) * MIX_START + s * MIX_END


def cdf(edges: Any, scale: Any, tail_share: Any = 0.0, tail_add: float = 0.0) -> Any:
    """P(latency <= edge) of a mode whose lognormal median is ``scale`` (broadcast), with an
    optional share of requests slowed by ``tail_add`` seconds."""
    with np.errstate(divide="ignore"):
        z = (np.log(edges) - np.log(scale)[..., None]) / SIGMA
    base = phi(z)
    if tail_add:
        with np.errstate(divide="ignore", invalid="ignore"):
            zt = (np.log(np.maximum(edges - tail_add, 1e-12)) - np.log(scale)[..., None]) / SIGMA
        slowed = np.where(edges > tail_add, phi(zt), 0.0)
        ts = np.asarray(tail_share)[..., None]
        base = (1 - ts) * base + ts * slowed
    return base


def bucket_probs(scale: Any, tail_share: Any = 0.0, tail_add: float = 0.0) -> Any:
    c = cdf(EDGES, scale, tail_share, tail_add)
    c[..., -1] = 1.0
    return np.diff(c, prepend=0.0, axis=-1)


def hist_p95(counts: Any) -> Any:
    """histogram_quantile(0.95) on non-cumulative bucket counts (..., B); NaN when empty."""
    cum = counts.cumsum(-1)
    total = cum[..., -1]
    rank = 0.95 * total
    idx = np.minimum((cum < rank[..., None]).sum(-1), len(EDGES) - 1)
    lower = np.where(idx == 0, 0.0, EDGES[np.maximum(idx - 1, 0)])
    c_prev = np.where(idx == 0, 0.0, np.take_along_axis(cum, np.maximum(idx - 1, 0)[..., None], -1)[..., 0])
    c_here = np.take_along_axis(cum, idx[..., None], -1)[..., 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(c_here > c_prev, (rank - c_prev) / (c_here - c_prev), 1.0)
        val = lower + (EDGES[idx] - lower) * frac
    val = np.where(idx == len(EDGES) - 1, EDGES[-2], val)
    return np.where(total > 0, val, np.nan)


# ------------------------------------------------------------------ effect sizes and MDE


def _slow_share(edges: dict[str, tuple[float, ...]], which: int, mix: Any, lat_mult: float, tail: tuple[float, float],
                err_mode: str | None) -> float:
    num = den = 0.0
    for j, m in enumerate(MODES):
        e = edges.get(m, ())
        if len(e) <= which:
            continue
        mult = lat_mult if (err_mode is None or err_mode == m) else 1.0
        p = 1.0 - float(cdf(np.array([e[which]]), np.array(MEDIAN[j] * mult), tail[0], tail[1])[0])
        num += mix[j] * p
        den += mix[j]
    return num / den if den else 0.0


def effect_and_mde(sc: Scenario, rps: float, tests: dict[str, core.RatioTest], edges: dict[str, tuple[float, ...]],
                   stage: int) -> tuple[float, float]:
    """(effect / MDE of the onset stage, effect) for the metric the scenario regresses."""
    w = STAGES[stage] / 100.0
    mix = mix_at((stage + 0.5) * STAGE_S)
    p_err = float((mix * BASE_ERR).sum())
    if sc.crash or sc.err_mult != 1.0:
        mult = np.where([sc.err_mode in (None, m) for m in MODES], 1.0 / BASE_ERR if sc.crash else sc.err_mult, 1.0)
        effect = float((mix * BASE_ERR * mult).sum()) / p_err
        mde = tests[core.ERRORS].mde(rps, w, STAGE_S, p_err)
        return effect / mde, effect
    if sc.schema_mult != 1.0:
        mde = tests[core.SCHEMA].mde(rps, w, STAGE_S, BASE_SCHEMA)
        return sc.schema_mult / mde, sc.schema_mult
    best, eff = 0.0, 1.0
    lat = tests[core.LATENCY]
    for which, comp in ((0, "p95:all"), (1, "thr:all")):
        if comp not in lat.comp_w:
            continue
        p0 = _slow_share(edges, which, mix, 1.0, (0.0, 0.0), None)
        p1 = _slow_share(edges, which, mix, sc.lat_mult, (sc.tail_share, sc.tail_add), sc.err_mode)
        if p0 <= 0:
            continue
        mde = lat.mde(rps, w, STAGE_S, p0, component=comp)
        if (p1 / p0) / mde > best:
            best, eff = (p1 / p0) / mde, p1 / p0
    return best, eff


# ------------------------------------------------------------------ one group of runs


def simulate(sc: Scenario, rps: float, runs: int, seed: tuple[int, ...]) -> list[dict[str, Any]]:
    rng = np.random.default_rng(list(seed))
    params = default_params()
    R = runs
    # the pre-period: production alone, from which the latency edges are fixed
    pre = rng.poisson(rps * PREPERIOD_S * MIX_START[:, None] * bucket_probs(MEDIAN))
    pre_cum = {m: dict(zip(EDGES.tolist(), np.cumsum(pre[j]).astype(float).tolist(), strict=True)) for j, m in enumerate(MODES)}
    edges = core.choose_edges(pre_cum, THRESHOLDS)
    zero, false = np.zeros(R), np.zeros(R, dtype=bool)
    tests = core.build_tests(params, MODES, edges, ops=np, zero=zero, false=false)
    pairs = [(m, e) for m, es in edges.items() for e in es]
    pair_idx = [(MODES.index(m), int(np.searchsorted(EDGES, e))) for m, e in pairs]
    # production is sampled in 3 bins per mode, split at that mode's (up to) two edges
    prod_edges = np.array([(sorted(edges.get(m, ())) + [math.inf, math.inf])[:2] for m in MODES])
    prod_bin = [(MODES.index(m), int(np.searchsorted(prod_edges[MODES.index(m)], e))) for m, e in pairs]

    onset = rng.uniform(300.0, 1500.0, R) if sc.delayed else np.zeros(R)
    if sc.healthy:
        onset = np.full(R, math.inf)
    inc_start = rng.uniform(0.0, STAGE_S * len(STAGES) - 180.0, R) if sc.incident else np.full(R, math.inf)
    inc_end = inc_start + rng.uniform(60.0, 180.0, R)
    reset_step = np.where(rng.random(R) < RESET_P, rng.integers(1, TOTAL_STEPS, R), -1)
    reset_canary = rng.random(R) < 0.5  # which process restarted
    warm_until = np.full(R, core.WARMUP_S)  # the canary starts at t = 0
    last_scrape = np.zeros(R)
    ar = rng.normal(0.0, AR_SD, R)
    burst = np.zeros(R)

    # per-decider outcome
    seq_rb = np.full(R, math.inf)
    seed_rb = np.full(R, math.inf)
    fl_rb = np.full(R, math.inf)
    exposed = np.zeros(R)  # canary requests served since onset
    exp_at = {k: np.full(R, math.nan) for k in ("sequential", "seed", "flagger")}
    seq_pass_stages = np.zeros(R)
    seq_stages = np.zeros(R)
    seed_nodata = np.zeros(R)
    seed_stages = np.zeros(R)
    unguarded_pass_high_mde = 0
    guarded_pass_high_mde = 0
    fl_fails = np.zeros(R)
    first_cross = {a: np.full(R, math.inf) for a in ALPHA_LADDER}
    # pending increments while scrapes are lost
    pend_req = np.zeros((R, 2, 3))
    pend_err = np.zeros((R, 2, 3))
    pend_sch = np.zeros((R, 2))
    pend_slow = np.zeros((R, 2, len(pairs)))
    reset_pending = np.zeros(R, dtype=bool)
    win_seed = np.zeros((R, 3, len(EDGES)))
    win_seed_err = np.zeros(R)
    win_fl = np.zeros((R, 3, len(EDGES)))
    win_fl_err = np.zeros(R)

    stage_mde = {}
    for s_i in range(len(STAGES)):
        w = STAGES[s_i] / 100.0
        mix = mix_at((s_i + 0.5) * STAGE_S)
        stage_mde[s_i] = {
            core.ERRORS: tests[core.ERRORS].mde(rps, w, STAGE_S, float((mix * BASE_ERR).sum())),
            core.SCHEMA: tests[core.SCHEMA].mde(rps, w, STAGE_S, BASE_SCHEMA),
            core.LATENCY: tests[core.LATENCY].mde(rps, w, STAGE_S, _slow_share(edges, 0, mix, 1.0, (0, 0), None)),
        }

    for step in range(TOTAL_STEPS):
        s_i = step // STEPS_PER_STAGE
        w = STAGES[s_i] / 100.0
        t0, t1 = step * STEP, (step + 1) * STEP
        if step % STEPS_PER_STAGE == 0:
            for tst in tests.values():
                tst.cut()  # the weight changes here: no interval spans it
            fl_window_steps = 0
        # traffic
        ar = AR_PHI * ar + math.sqrt(1 - AR_PHI**2) * AR_SD * rng.standard_normal(R)
        burst = np.maximum(burst - 1, 0)
        burst = np.where((burst == 0) & (rng.random(R) < BURST_P), BURST_STEPS, burst)
        level = rps * np.exp(ar - AR_SD**2 / 2) * np.where(burst > 0, BURST_X, 1.0)
        mix = mix_at(t0)
        share = np.array([1.0 - w, w])  # [production, canary]
        noise = rng.uniform(1 - NOISE, 1 + NOISE, (3, R, 2, 3))
        mu = level[:, None, None] * share[None, :, None] * mix[None, None, :] * STEP * noise[0]
        active = t0 >= onset  # regression on
        in_inc = (t0 >= inc_start) & (t0 < inc_end)
        # latency scale per run, version, mode
        scale = MEDIAN[None, None, :] * noise[1]
        scale = scale * np.where(in_inc, INCIDENT_LAT, 1.0)[:, None, None]
        if sc.cold_start:
            scale[:, 1, :] *= 1.0 + COLD_X * math.exp(-t0 / COLD_TAU)
        mode_hit = np.array([sc.err_mode in (None, m) for m in MODES])
        if sc.lat_mult != 1.0:
            scale[:, 1, :] *= np.where(active[:, None] & mode_hit[None, :], sc.lat_mult, 1.0)
        # the canary's full histogram (every decider reads it); production only at the sequential
        # test's edges (the seed and Flagger rules never read production's latency)
        tail = np.where(active, sc.tail_share, 0.0)[:, None] * np.ones(3) if sc.tail_share else 0.0
        counts_c = rng.poisson(mu[:, 1, :, None] * bucket_probs(scale[:, 1, :], tail, sc.tail_add))  # (R, mode, bucket)
        with np.errstate(divide="ignore"):
            zp = (np.log(prod_edges)[None] - np.log(scale[:, 0, :])[..., None]) / SIGMA
        cp = phi(zp)
        probs_p = np.diff(np.concatenate([np.zeros((R, 3, 1)), cp, np.ones((R, 3, 1))], -1), axis=-1)
        counts_p = rng.poisson(mu[:, 0, :, None] * probs_p)  # (R, mode, 3 bins split at the two edges)
        req = np.stack([counts_p.sum(-1), counts_c.sum(-1)], 1)  # (R, version, mode)
        p_err = BASE_ERR[None, None, :] * noise[2] * np.where(in_inc, INCIDENT_ERR, 1.0)[:, None, None]
        if sc.crash:
            p_err[:, 1, :] = np.where(active[:, None], 1.0, p_err[:, 1, :])
        elif sc.err_mult != 1.0:
            p_err[:, 1, :] *= np.where(active[:, None] & mode_hit[None, :], sc.err_mult, 1.0)
        err = rng.binomial(req, np.minimum(p_err, 1.0))
        q = np.full((R, 2), BASE_SCHEMA)
        q[:, 1] *= np.where(active, sc.schema_mult, 1.0)
        sch = rng.binomial(req.sum(-1), q)
        exposed += np.where(active, req[:, 1, :].sum(-1), 0)

        # --- sequential: scrapes (some lost), resets, the shared core
        suffix_c = counts_c[..., ::-1].cumsum(-1)[..., ::-1]  # requests in bucket i or above
        slow = np.zeros((R, 2, len(pairs)))
        for k, ((j, i), (jp, b)) in enumerate(zip(pair_idx, prod_bin, strict=True)):
            slow[:, 1, k] = suffix_c[:, j, i + 1]
            slow[:, 0, k] = counts_p[:, jp, b + 1:].sum(-1)
        pend_req += req
        pend_err += err
        pend_sch += sch
        pend_slow += slow
        reset_pending |= reset_step == step
        last_of_stage = (step + 1) % STEPS_PER_STAGE == 0
        scraped = (rng.random(R) >= DROP_P) | last_of_stage
        sc_f = scraped.astype(float)
        valid = ~reset_pending
        # as the checker does: no latency verdict from the canary's first minute after (re)start
        warm_until = np.where(reset_pending & scraped & reset_canary, t1 + core.WARMUP_S, warm_until)
        valid_lat = valid & (last_scrape >= warm_until)
        per_mode_req = {v: {m: pend_req[:, vi, j] * sc_f for j, m in enumerate(MODES)} for vi, v in VERSIONS}
        inc = core.Increment(
            requests=per_mode_req,
            errors={v: {m: pend_err[:, vi, j] * sc_f for j, m in enumerate(MODES)} for vi, v in VERSIONS},
            schema={"production": pend_sch[:, 0] * sc_f, "canary": pend_sch[:, 1] * sc_f},
            hist=per_mode_req,
            slow={v: {p: pend_slow[:, vi, k] * sc_f for k, p in enumerate(pairs)} for vi, v in VERSIONS},
            valid=valid, valid_latency=valid_lat,
        )
        core.feed(tests, inc, edges)
        keep = ~scraped
        pend_req *= keep[:, None, None]
        pend_err *= keep[:, None, None]
        pend_sch *= keep[:, None]
        pend_slow *= keep[:, None, None]
        reset_pending &= ~scraped
        last_scrape = np.where(scraped, t1, last_scrape)
        rejected = tests[core.ERRORS].rejected | tests[core.SCHEMA].rejected | tests[core.LATENCY].rejected
        for a in ALPHA_LADDER:
            crossed = false
            for metric, tst in tests.items():
                crossed = crossed | (tst.last_log_e >= math.log(1.0 / (a * core.ALPHA_SPLIT[metric])))
            first_cross[a] = np.where(np.isinf(first_cross[a]) & crossed, t1, first_cross[a])
        new = rejected & np.isinf(seq_rb)
        seq_rb[new] = t1
        exp_at["sequential"][new] = exposed[new]

        # --- seed: the last 5 minutes of each stage
        in_last5 = step % STEPS_PER_STAGE >= STEPS_PER_STAGE - 60
        if in_last5:
            win_seed += counts_c
            win_seed_err += err[:, 1].sum(-1)
        # --- flagger: the last minute, every minute
        win_fl += counts_c
        win_fl_err += err[:, 1].sum(-1)
        fl_window_steps += 1
        if fl_window_steps == 12:
            fl_window_steps = 0
            n = win_fl.sum((-1, -2))
            with np.errstate(divide="ignore", invalid="ignore"):
                bad = (n == 0) | (win_fl_err / np.maximum(n, 1) >= SEED_ERROR_RATE)
                p95 = hist_p95(win_fl)
            for j, m in enumerate(MODES):
                bad |= np.nan_to_num(p95[:, j], nan=0.0) > THRESHOLDS[m]
            live = np.isinf(fl_rb)
            fl_fails += bad & live
            new = live & (fl_fails >= FLAGGER_FAILS)
            fl_rb[new] = t1
            exp_at["flagger"][new] = exposed[new]
            win_fl[:] = 0
            win_fl_err[:] = 0

        if last_of_stage:
            live = np.isinf(seed_rb)
            n = win_seed.sum((-1, -2))
            with np.errstate(divide="ignore", invalid="ignore"):
                bad = win_seed_err / np.maximum(n, 1) >= SEED_ERROR_RATE
                p95 = hist_p95(win_seed)
            for j, m in enumerate(MODES):
                bad |= np.nan_to_num(p95[:, j], nan=0.0) > THRESHOLDS[m]
            seed_nodata += live & (n == 0)
            seed_stages += live
            new = live & bad
            seed_rb[new] = t1
            exp_at["seed"][new] = exposed[new]
            win_seed[:] = 0
            win_seed_err[:] = 0
            # the sequential verdict at the end of the stage
            live = np.isinf(seq_rb)
            passed = np.ones(R, dtype=bool)
            for metric in (core.ERRORS, core.LATENCY):
                mde = stage_mde[s_i][metric]
                _, ok = tests[metric].decide(STAGE_S, params.min_stage_time, mde)
                _, ok_unguarded = tests[metric].decide(STAGE_S, params.min_stage_time, 0.0)
                if mde > tests[metric].pass_bound:
                    guarded_pass_high_mde += int((ok & live).sum())
                    unguarded_pass_high_mde += int((ok_unguarded & live).sum())
                passed &= ok
            seq_pass_stages += passed & live
            seq_stages += live

        if not sc.healthy and np.all(np.isfinite(seq_rb)) and np.all(np.isfinite(seed_rb)) and np.all(np.isfinite(fl_rb)):
            break

    ratio, effect, per_stage = (math.nan, math.nan, [])
    if not sc.healthy:
        # judged by the MDE of the stage the regression starts in (stage 1; the delayed onset
        # starts in stage 1 or 2, and stage 1's larger MDE is the stricter choice)
        per_stage = [effect_and_mde(sc, rps, tests, edges, i) for i in range(len(STAGES))]
        ratio, effect = per_stage[0]
    out = []
    for name, rb in (("sequential", seq_rb), ("seed", seed_rb), ("flagger", fl_rb)):
        rolled = np.isfinite(rb)
        detected = rolled & (rb >= onset)
        early = rolled & (rb < onset)
        ttd = rb[detected] - onset[detected]
        row: dict[str, Any] = {
            "decider": name, "scenario": sc.name, "rps": rps, "runs": R,
            "false_rollback_rate": float(rolled.mean()) if sc.healthy else (float(early.mean()) if sc.delayed else None),
            "power": None if sc.healthy else float(detected.mean()),
            "ttd_median_s": float(np.median(ttd)) if len(ttd) else None,
            "ttd_p90_s": float(np.percentile(ttd, 90)) if len(ttd) else None,
            "exposed_median": float(np.median(exp_at[name][detected])) if detected.any() else None,
            "inconclusive_rate": None,
            "healthy_duration_s": float(np.where(rolled, rb, STAGE_S * len(STAGES)).mean()) if sc.healthy else None,
        }
        if name == "sequential":
            by_alpha = {}
            for a in ALPHA_LADDER:
                fc = first_cross[a]
                det = np.isfinite(fc) & (fc >= onset)
                by_alpha[str(a)] = {
                    "false_rollback_rate": float(np.isfinite(fc).mean()) if sc.healthy else None,
                    "power": None if sc.healthy else float(det.mean()),
                    "ttd_median_s": float(np.median(fc[det] - onset[det])) if det.any() else None,
                }
            row["by_alpha"] = by_alpha
            row["inconclusive_rate"] = float(1.0 - seq_pass_stages.sum() / max(seq_stages.sum(), 1))
            row["pass_with_mde_above_bound"] = guarded_pass_high_mde
            row["pass_with_mde_above_bound_unguarded"] = unguarded_pass_high_mde
            row["mde_errors"] = [round(stage_mde[i][core.ERRORS], 3) for i in range(len(STAGES))]
            row["mde_latency"] = [round(stage_mde[i][core.LATENCY], 3) for i in range(len(STAGES))]
        elif name == "seed":
            row["inconclusive_rate"] = float(seed_nodata.sum() / max(seed_stages.sum(), 1))
        if not sc.healthy:
            row["effect"] = round(effect, 3)
            row["effect_over_mde"] = round(ratio, 3)
            row["effect_over_mde_by_stage"] = [round(r, 3) for r, _ in per_stage]
        out.append(row)
    return out


# ------------------------------------------------------------------ targets and report


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if pct:
        return f"{100 * v:.1f}%"
    if isinstance(v, float):
        return f"{v:.0f}" if abs(v) >= 10 else f"{v:.2g}"
    return str(v)


def wilson_upper(k: int, n: int, z: float = 2.576) -> float:
    """One-sided-ish 99.5% upper bound of a binomial proportion (Wilson)."""
    if n == 0:
        return 1.0
    p = k / n
    den = 1 + z * z / n
    return min(1.0, (p + z * z / (2 * n) + z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / den)


def matched_alpha(rows: list[dict[str, Any]], rps: float) -> tuple[str, float, float] | None:
    """The largest alpha of the ladder at which the sequential decider's healthy false-rollback
    rate is still <= the seed's at this rps: (alpha, ours, seed's)."""
    seq = next((r for r in rows if r["decider"] == "sequential" and r["scenario"] == "healthy" and r["rps"] == rps), None)
    seed = next((r for r in rows if r["decider"] == "seed" and r["scenario"] == "healthy" and r["rps"] == rps), None)
    if seq is None or seed is None:
        return None
    best = None
    for a in ALPHA_LADDER:
        frr = seq["by_alpha"][str(a)]["false_rollback_rate"]
        if frr <= seed["false_rollback_rate"]:
            best = (str(a), frr, seed["false_rollback_rate"])
    return best


def targets(rows: list[dict[str, Any]]) -> list[tuple[str, bool | None, str]]:
    by = {(r["decider"], r["scenario"], r["rps"]): r for r in rows}
    out: list[tuple[str, bool | None, str]] = []
    healthy = [r for r in rows if r["decider"] == "sequential" and r["power"] is None]
    if healthy:
        worst = max(healthy, key=lambda r: r["false_rollback_rate"])
        ok = all(r["false_rollback_rate"] <= 0.01 for r in healthy)
        k = round(worst["false_rollback_rate"] * worst["runs"])
        total_k = sum(round(r["false_rollback_rate"] * r["runs"]) for r in healthy)
        total_n = sum(r["runs"] for r in healthy)
        out.append(("false rollbacks <= 1% of healthy rollouts (nuisances included)", ok,
                    f"worst {worst['scenario']} @ {worst['rps']} rps: {100 * worst['false_rollback_rate']:.2f}% "
                    f"({k}/{worst['runs']}, 99.5% upper bound {100 * wilson_upper(k, worst['runs']):.2f}%); all healthy "
                    f"groups: {total_k}/{total_n} = {100 * total_k / max(total_n, 1):.2f}% "
                    f"(upper bound {100 * wilson_upper(total_k, total_n):.2f}%)"))
    for rps, limit in ((30, 15.0), (3, 90.0)):
        r = by.get(("sequential", "crash", rps))
        if r:
            med = r["ttd_median_s"]
            out.append((f"crash rolled back: median <= {limit:g} s at {rps} rps", med is not None and med <= limit,
                        f"median {_fmt(med)} s, exposed median {_fmt(r['exposed_median'])} canary requests"))
    applies = [r for r in rows if r["decider"] == "sequential" and r.get("effect_over_mde") is not None
               and r["effect_over_mde"] >= 2.0]
    if applies:
        pw = [r for r in applies if r["power"] < 0.9]
        below = "; below: " + ", ".join(f"{r['scenario']}@{r['rps']} {100 * r['power']:.0f}%" for r in pw) if pw else ""
        out.append(("power >= 90% before 100% where the effect is >= 2 x its onset stage's MDE", not pw,
                    f"{len(applies) - len(pw)}/{len(applies)} groups{below}"))
        slow, unmatched = [], []
        for r in applies:
            seed_ttd = by[("seed", r["scenario"], r["rps"])]["ttd_median_s"]
            m = matched_alpha(rows, r["rps"])
            if m is None:
                unmatched.append(f"{r['scenario']}@{r['rps']}")
                ours = r["ttd_median_s"]
            else:
                ours = r["by_alpha"][m[0]]["ttd_median_s"]
            if ours is None or (seed_ttd is not None and ours > seed_ttd / 3):
                slow.append(f"{r['scenario']}@{r['rps']} ({_fmt(ours)} s vs seed {_fmt(seed_ttd)} s)")
        alphas = sorted({(rps, matched_alpha(rows, rps)) for rps in {r["rps"] for r in applies}}, key=lambda x: x[0])
        match_txt = ", ".join(f"{rps} rps: alpha {m[0]} (FRR {100 * m[1]:.1f}% vs seed {100 * m[2]:.1f}%)"
                              for rps, m in alphas if m)
        detail = f"{len(applies) - len(slow)}/{len(applies)} groups" + ("; slower: " + ", ".join(slow) if slow else "")
        detail += f"; matched: {match_txt}" if match_txt else ""
        detail += f"; no healthy rows to match for {', '.join(unmatched)} (default alpha used)" if unmatched else ""
        out.append(("median TTD <= 1/3 of the seed's at a matched false-rollback rate (same groups)", not slow, detail))
    seqs = [r for r in rows if r["decider"] == "sequential"]
    if seqs:
        n = sum(r["pass_with_mde_above_bound"] for r in seqs)
        u = sum(r["pass_with_mde_above_bound_unguarded"] for r in seqs)
        out.append(("no PASS in a stage whose MDE exceeds the pass bound", n == 0,
                    f"{n} such PASS (the mirror test alone, without the MDE guard, would have given {u})"))
    return out


def render(rows: list[dict[str, Any]], elapsed: float, args: argparse.Namespace) -> str:
    head = ("decider", "scenario", "rps", "runs", "false_rb", "power", "ttd_med_s", "ttd_p90_s", "exposed_med",
            "inconcl", "healthy_dur_s", "eff/MDE")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        lines.append(" | ".join([
            r["decider"], r["scenario"], str(r["rps"]), str(r["runs"]), _fmt(r["false_rollback_rate"], True),
            _fmt(r["power"], True), _fmt(r["ttd_median_s"]), _fmt(r["ttd_p90_s"]), _fmt(r["exposed_median"]),
            _fmt(r["inconclusive_rate"], True), _fmt(r["healthy_duration_s"]), _fmt(r.get("effect_over_mde")),
        ]))
    lines.append("")
    lines.append(f"targets (seed {args.seed}, {args.runs} healthy / {max(1, args.runs // 4)} regressed runs per group, "
                 f"{elapsed:.0f} s on {args.workers} workers):")
    for name, ok, detail in targets(rows):
        lines.append(f"  [{'met' if ok else 'NOT met'}] {name}: {detail}")
    return "\n".join(lines)


def markdown(rows: list[dict[str, Any]], elapsed: float, args: argparse.Namespace) -> str:
    """The README table: per scenario and rps, each decider's false-rollback rate or power and its
    median time to detect (the sequential one also at the seed's false-rollback rate)."""
    by = {(r["decider"], r["scenario"], r["rps"]): r for r in rows}
    keys = sorted({(r["scenario"], r["rps"]) for r in rows},
                  key=lambda k: ([s.name for s in SCENARIOS].index(k[0]), k[1]))
    out = ["| scenario | rps | runs | sequential FRR / power | TTD med (p90) s | at seed's FRR | inconcl. | eff/MDE "
           "| seed FRR / power | TTD med s | flagger FRR / power | TTD med s |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def rate(r: dict[str, Any]) -> str:
        return _fmt(r["false_rollback_rate"], True) if r["power"] is None else _fmt(r["power"], True)

    for sc, rps in keys:
        q, s, f = by[("sequential", sc, rps)], by[("seed", sc, rps)], by[("flagger", sc, rps)]
        m = matched_alpha(rows, rps)
        matched = "-" if q["power"] is None or m is None else f"{_fmt(q['by_alpha'][m[0]]['ttd_median_s'])} (a={m[0]})"
        out.append(f"| {sc} | {rps} | {q['runs']} | {rate(q)} | {_fmt(q['ttd_median_s'])} ({_fmt(q['ttd_p90_s'])}) "
                   f"| {matched} | {_fmt(q['inconclusive_rate'], True)} | {_fmt(q.get('effect_over_mde'))} "
                   f"| {rate(s)} | {_fmt(s['ttd_median_s'])} | {rate(f)} | {_fmt(f['ttd_median_s'])} |")
    out.append("")
    out.append(f"Targets (seed {args.seed}, {elapsed:.0f} s):")
    out.append("")
    for name, ok, detail in targets(rows):
        out.append(f"- **{'met' if ok else 'NOT met'}** — {name}: {detail}")
    return "\n".join(out)


def _task(job: tuple[int, Scenario, float, int, int]) -> list[dict[str, Any]]:
    gi, sc, rps, runs, seed = job
    return simulate(sc, rps, runs, (seed, gi, int(rps)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=2000, help="healthy rollouts per group (regressions: a quarter; default 2000)")
    p.add_argument("--seed", type=int, default=1, help="master seed (default 1)")
    p.add_argument("--json", action="store_true", help="print a JSON array, one object per decider x scenario x rps")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: every core)")
    p.add_argument("--rps", default=",".join(str(r) for r in RPS), help="comma-separated traffic levels (default 1,3,10,30,100)")
    p.add_argument("--scenarios", default="", help="comma-separated scenario names (default: all)")
    p.add_argument("--markdown", action="store_true", help="print the condensed comparison table and the targets")
    p.add_argument("--save", metavar="PATH", help="also write the JSON rows to PATH")
    p.add_argument("--load", metavar="PATH", help="do not simulate: report the JSON rows saved in PATH")
    args = p.parse_args(argv)
    if args.load:
        try:
            rows = json.loads(Path(args.load).read_text())
        except (OSError, ValueError) as e:
            print(f"bench/analysis.py: --load {args.load}: cannot read saved rows ({e}); allowed: a file written by --save",
                  file=sys.stderr)
            return 2
        print(markdown(rows, 0.0, args) if args.markdown else json.dumps(rows, indent=1) if args.json
              else render(rows, 0.0, args))
        return 0
    names = {s.name for s in SCENARIOS}
    wanted = [x for x in args.scenarios.split(",") if x]
    bad = [x for x in wanted if x not in names]
    if bad or args.runs < 4 or args.workers < 1:
        print(f"bench/analysis.py: bad input {bad or args.runs}; allowed: --runs >= 4, "
              f"--scenarios from {', '.join(sorted(names))}", file=sys.stderr)
        return 2
    try:
        rps_list = [float(x) if "." in x else int(x) for x in args.rps.split(",") if x]
    except ValueError:
        print(f"bench/analysis.py: --rps {args.rps!r} is not valid; allowed: comma-separated numbers", file=sys.stderr)
        return 2
    jobs = []
    for gi, sc in enumerate(SCENARIOS):
        if wanted and sc.name not in wanted:
            continue
        for rps in rps_list:
            jobs.append((gi, sc, rps, args.runs if sc.healthy else max(1, args.runs // 4), args.seed))
    jobs.sort(key=lambda j: -j[3] * (1 + j[2] / 50))  # big groups first
    t0 = time.monotonic()
    with ProcessPoolExecutor(max_workers=args.workers) as ex:
        results = list(ex.map(_task, jobs))
    order = {(sc.name, r): i for i, sc in enumerate(SCENARIOS) for r in rps_list}
    rows = sorted((r for part in results for r in part),
                  key=lambda r: (["sequential", "seed", "flagger"].index(r["decider"]), order[(r["scenario"], r["rps"])]))
    elapsed = time.monotonic() - t0
    if args.save:
        Path(args.save).write_text(json.dumps(rows, indent=1))
    if args.json:
        print(json.dumps(rows, indent=1))
    elif args.markdown:
        print(markdown(rows, elapsed, args))
    else:
        print(render(rows, elapsed, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
