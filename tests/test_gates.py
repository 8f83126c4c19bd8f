"""Gate logic on edge values, and Prometheus' arithmetic as the scrape source computes it.

Everything here is pure (no servers): tables of values -> verdicts, samples -> rates.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest

from console.adapters.metrics import VersionStats, WindowStats
from console.adapters.metrics.promql import bucket_quantile, extrapolated_increase
from console.adapters.metrics.scrape import ScrapeSource
from console.core.clock import FakeClock
from console.core.config import load_config
from console.core.events import ERROR, FAIL, INCONCLUSIVE, PASS, GateResult
from console.core.fakes import FakeMetricSource
from console.core.gates import GatePolicy, MetricGates, evaluate, judge, judge_rl_loss, source_errors
from console.core.protocols import CheckContext, MetricsUnavailable

INF, NAN = math.inf, math.nan
CTX = CheckContext(deployment_id="d", version="v0.2.0", index=0, weight=5, stage_elapsed=3.0, stage_wall_start=0.0)


@pytest.fixture
def cfg(tmp_path: Path) -> Any:
    toml = tmp_path / "canary.toml"
    toml.write_text('[metrics]\nmin_requests = 20\nrate_window = "5m"\nsource = "scrape"\n')
    return load_config(toml, environ={}, check_upstream_dir=False)


# --------------------------------------------------------------------------- value -> verdict

# (gate, op, critical, fail_on_few, value, threshold, samples, expected)
ERR, CRIT, P95, SCHEMA = ("error_rate", ">=", False, False), ("critical_error_rate", ">", True, False), \
    ("p95_latency.fast", ">", False, False), ("schema_failures", ">", True, True)
JUDGE_TABLE = [
    pytest.param(*ERR, 0.005, 0.005, 200, FAIL, id="error rate exactly at the threshold fails (at or over)"),
    pytest.param(*ERR, 0.0049999, 0.005, 200, PASS, id="error rate just below passes"),
    pytest.param(*CRIT, 0.01, 0.01, 200, PASS, id="critical rate exactly at the threshold passes (over only)"),
    pytest.param(*CRIT, 0.0100001, 0.01, 200, FAIL, id="critical rate just above fails"),
    pytest.param(*P95, 2.5, 2.5, 50, PASS, id="p95 exactly at the threshold passes"),
    pytest.param(*P95, 2.5000001, 2.5, 50, FAIL, id="p95 just above fails"),
    pytest.param(*ERR, None, 0.005, 0, INCONCLUSIVE, id="zero traffic: 0/0 is no data"),
    pytest.param(*ERR, 0.0, 0.005, 0, INCONCLUSIVE, id="zero traffic with a value is still no data"),
    pytest.param(*ERR, 0.5, 0.005, 19, INCONCLUSIVE, id="a breach on 19 requests (< min 20) is inconclusive"),
    pytest.param(*ERR, 0.5, 0.005, 20, FAIL, id="a breach on exactly min_requests fails"),
    pytest.param(*ERR, 0.0, 0.005, 19.6, PASS, id="an extrapolated 19.6 rounds to 20 requests"),
    pytest.param(*ERR, NAN, 0.005, 200, ERROR, id="NaN is an error, never a pass"),
    pytest.param(*P95, INF, 2.5, 200, ERROR, id="+Inf is an error"),
    pytest.param(*P95, -INF, 2.5, 200, ERROR, id="-Inf is an error"),
    pytest.param(*ERR, -0.1, 0.005, 200, ERROR, id="a negative ratio (a reset gone wrong) is an error"),
    pytest.param(*SCHEMA, 1.0, 0, 3, FAIL, id="one schema failure fails at once, even on 3 requests"),
    pytest.param(*SCHEMA, 0.04, 0, 3, FAIL, id="an extrapolated fraction of a failure still fails"),
    pytest.param(*SCHEMA, 0.0, 0, 3, INCONCLUSIVE, id="no schema failure on 3 requests proves nothing"),
    pytest.param(*SCHEMA, 0.0, 0, 20, PASS, id="no schema failure on enough requests passes"),
    pytest.param(*SCHEMA, 2.0, 2, 50, PASS, id="schema failures exactly at a non-zero threshold pass"),
    pytest.param(*SCHEMA, None, 0, 0, INCONCLUSIVE, id="schema failures without data"),
]


@pytest.mark.parametrize(("gate", "op", "critical", "fail_on_few", "value", "threshold", "samples", "expected"), JUDGE_TABLE)
def test_judge(gate: str, op: str, critical: bool, fail_on_few: bool, value: float | None, threshold: float,
               samples: float, expected: str) -> None:
    r = judge(gate, value, threshold, op=op, samples=samples, min_requests=20, window="5m", critical=critical,
              fail_on_few=fail_on_few, production_value=0.001)
    assert r.verdict == expected, r.detail
    assert (r.gate, r.threshold, r.window, r.critical, r.production_value) == (gate, threshold, "5m", critical, 0.001)
    assert r.samples == int(round(samples))
    assert r.detail and "\n" not in r.detail
    assert GateResult.from_dict(r.to_dict()).verdict == expected  # journal round trip (NaN becomes null)


@pytest.mark.parametrize(
    ("canary", "production", "expected", "blocking"),
    [
        (None, 0.5, INCONCLUSIVE, False),
        (0.5, None, INCONCLUSIVE, False),
        (None, None, INCONCLUSIVE, False),
        (1.0, 0.5, PASS, True),  # exactly 2.0 x production: not a spike
        (1.0000001, 0.5, FAIL, True),
        (0.1, 0.5, PASS, True),
        (NAN, 0.5, ERROR, True),
        (0.5, INF, ERROR, True),
    ],
)
def test_rl_loss_only_when_both_report(canary: float | None, production: float | None, expected: str, blocking: bool) -> None:
    r = judge_rl_loss(canary, production, 2.0, "5m")
    assert (r.verdict, r.blocking, r.critical) == (expected, blocking, False)
    if expected in (PASS, FAIL):
        assert r.threshold == pytest.approx(2.0 * production) and r.production_value == production
    if expected == INCONCLUSIVE:
        assert "not reported" in r.detail


def stats(canary: VersionStats, production: VersionStats | None = None, **kw: Any) -> WindowStats:
    return WindowStats(t=0.0, window_s=300.0, source="prometheus", canary=canary, production=production, **kw)


def vs(requests: float = 300.0, error_ratio: float | None = 0.0, p95: float | None = 0.1, schema: float = 0.0,
       rl: float | None = None, by_mode: dict[str, float] | None = None) -> VersionStats:
    modes = ("fast", "balanced", "creative")
    bm = by_mode or {m: requests / 3 for m in modes}
    return VersionStats(requests=requests, by_mode=bm, error_ratio=error_ratio,
                        p95={m: (p95 if bm[m] > 0 else None) for m in modes}, schema_failures=schema, rl_loss=rl)


def test_evaluate_judges_every_gate_with_its_own_samples(cfg: Any) -> None:
    policy = GatePolicy.from_cfg(cfg)
    canary = vs(error_ratio=0.02, p95=2.6, by_mode={"fast": 200.0, "balanced": 90.0, "creative": 10.0}, rl=0.9)
    results = evaluate(stats(canary, vs(error_ratio=0.001, p95=0.2, rl=0.4), queries={"error_rate": "Q"}), policy)
    by = {r.gate: r for r in results}
    assert list(by) == ["error_rate", "critical_error_rate", "p95_latency.fast", "p95_latency.balanced",
                        "p95_latency.creative", "schema_failures", "rl_loss"]
    assert by["error_rate"].verdict == FAIL and not by["error_rate"].critical
    assert by["critical_error_rate"].verdict == FAIL and by["critical_error_rate"].critical
    assert by["error_rate"].production_value == 0.001 and by["error_rate"].samples == 300
    assert by["error_rate"].extra["query"] == "Q" and by["critical_error_rate"].extra["query"] == "Q"
    assert by["p95_latency.fast"].verdict == FAIL and by["p95_latency.fast"].samples == 200  # 2.6 > 2.5
    assert by["p95_latency.balanced"].verdict == PASS and by["p95_latency.balanced"].threshold == 3.2
    assert by["p95_latency.creative"].verdict == INCONCLUSIVE and by["p95_latency.creative"].samples == 10
    assert by["rl_loss"].verdict == FAIL and by["rl_loss"].threshold == pytest.approx(0.8)  # 0.9 > 2 x 0.4
    assert {r.window for r in results} == {"5m"}


def test_no_data_is_never_a_pass(cfg: Any) -> None:
    idle = VersionStats(requests=0.0, by_mode={"fast": 0.0, "balanced": 0.0, "creative": 0.0}, error_ratio=None,
                        p95={"fast": None, "balanced": None, "creative": None})
    results = evaluate(stats(idle, None, notes=("warming up",)), GatePolicy.from_cfg(cfg))
    assert {r.verdict for r in results} == {INCONCLUSIVE}
    assert results[0].extra["notes"] == ["warming up"]


def test_source_failure_is_an_error_on_every_gate(cfg: Any) -> None:
    results = source_errors("prometheus http://p:9090: timed out after 5s (window query)", GatePolicy.from_cfg(cfg))
    assert [r.verdict for r in results] == [ERROR] * 7
    assert all(r.detail.endswith("(window query)") for r in results)
    assert [r.gate for r in results if r.critical] == ["critical_error_rate", "schema_failures"]
    assert [r.gate for r in results if not r.blocking] == ["rl_loss"]


@pytest.mark.parametrize(
    ("outcome", "detail"),
    [
        (MetricsUnavailable("prometheus http://p: unreachable (Connection refused) (window query)"), "Connection refused"),
        (RuntimeError("bug"), "stub source failed: RuntimeError"),
    ],
)
def test_checker_turns_failures_into_errors(cfg: Any, outcome: BaseException, detail: str) -> None:
    src = FakeMetricSource(outcome)
    gates = MetricGates(cfg, src)
    results = asyncio.run(gates.check(CTX))
    assert {r.verdict for r in results} == {ERROR} and detail in results[0].detail
    assert gates.last == results
    asyncio.run(gates.aclose())
    assert src.closed == 1


def test_checker_notes_before_a_stage(cfg: Any) -> None:
    gates = MetricGates(cfg, FakeMetricSource(stats(vs())))
    notes = asyncio.run(gates.begin_stage(CTX))
    assert "5xx < 0.50%" in notes[0]["message"] and "min 20 canary requests in 5m" in notes[0]["message"]
    assert notes[0]["data"]["gates"][-1] == "rl_loss"


# --------------------------------------------------------------------------- Prometheus' arithmetic


# (points, range_start, range_end, expected increase)
INCREASE_TABLE = [
    pytest.param([], 0, 10, None, id="no samples: no result"),
    pytest.param([(5, 3.0)], 0, 10, None, id="one sample: no result"),
    pytest.param([(0, 0), (1, 10), (2, 20), (3, 30)], 0, 3, 30.0, id="samples on both edges: exact"),
    pytest.param([(0, 10), (1, 20), (2, 5), (3, 15)], 0, 3, 25.0, id="a counter reset adds the lost value back"),
    pytest.param([(0, 10), (1, 20), (2, 0), (3, 0)], 0, 3, 10.0, id="a reset to 0 that stays: still no drop"),
    pytest.param([(0, 10), (1, 10), (2, 10)], 0, 2, 0.0, id="a flat counter"),
    pytest.param([(2, 0), (3, 10), (4, 20)], 0, 4, 20.0, id="a counter born at 0 is not extrapolated before 0"),
    pytest.param([(5, 100), (6, 110), (7, 120)], 0, 10, 30.0, id="far from both edges: half an interval each side"),
    pytest.param([(1, 100), (2, 110), (3, 120)], 0, 4, 40.0, id="within 1.1 intervals: to the edges"),
    pytest.param([(1, 5), (2, 15), (3, 25)], 0, 3, 25.0, id="zero point closer than the range start"),
]


@pytest.mark.parametrize(("points", "start", "end", "expected"), INCREASE_TABLE)
def test_increase_is_prometheus_increase(points: list[tuple[float, float]], start: float, end: float,
                                         expected: float | None) -> None:
    got = extrapolated_increase(points, start, end)
    assert got == (None if expected is None else pytest.approx(expected))


BUCKETS = [(0.1, 50.0), (0.5, 100.0), (INF, 100.0)]
QUANTILE_TABLE = [
    pytest.param(0.95, BUCKETS, 0.1 + 0.4 * 45 / 50, id="linear inside the bucket"),
    pytest.param(0.5, BUCKETS, 0.1, id="rank exactly at a bucket edge"),
    pytest.param(0.25, BUCKETS, 0.05, id="the first bucket starts at 0"),
    pytest.param(0.95, [(1.0, 10.0), (INF, 100.0)], 1.0, id="a rank in the +Inf bucket answers the highest finite le"),
    pytest.param(0.95, [(0.1, 5.0), (0.5, 10.0)], NAN, id="no +Inf bucket: NaN"),
    pytest.param(0.95, [(0.1, 0.0), (INF, 0.0)], NAN, id="no observations: NaN"),
    pytest.param(0.95, [(INF, 10.0)], NAN, id="only the +Inf bucket: NaN"),
    pytest.param(-0.1, BUCKETS, -INF, id="q < 0"),
    pytest.param(1.1, BUCKETS, INF, id="q > 1"),
    pytest.param(0.95, [(0.1, 60.0), (0.5, 50.0), (1.0, 100.0), (INF, 100.0)], 0.5 + 0.5 * 35 / 40,
                 id="non-monotonic counts are fixed"),
    pytest.param(0.95, [(0.1, 25.0), (0.1, 25.0), (0.5, 100.0), (INF, 100.0)], 0.1 + 0.4 * 45 / 50, id="equal le merged"),
]


@pytest.mark.parametrize(("q", "buckets", "expected"), QUANTILE_TABLE)
def test_quantile_is_histogram_quantile(q: float, buckets: list[tuple[float, float]], expected: float) -> None:
    got = bucket_quantile(q, buckets)
    if math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(expected)


# --------------------------------------------------------------------------- a counter reset, end to end in the scrape math

PAGE = """# TYPE http_requests_total counter
http_requests_total{{version="canary",status="200",mode="fast"}} {ok}
http_requests_total{{version="canary",status="500",mode="fast"}} {err}
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{{version="canary",mode="fast",le="0.5"}} {fast_le}
http_request_duration_seconds_bucket{{version="canary",mode="fast",le="+Inf"}} {total}
http_request_duration_seconds_count{{version="canary",mode="fast"}} {total}
{schema}"""


def page(ok: int, err: int, slow: int = 0, schema: int | None = 0) -> str:
    s = "" if schema is None else f'llm_brief_schema_failures_total{{version="canary"}} {schema}\n'
    return PAGE.format(ok=ok, err=err, total=ok + err, fast_le=ok + err - slow, schema=s)


def test_a_counter_reset_keeps_the_gates_right(cfg: Any) -> None:
    """The canary restarts between two scrapes: its counters go back to 0.  The increase is not
    negative, the ratio covers both lives, and a slow tail stays visible."""
    src = ScrapeSource(cfg, clock=FakeClock(), autostart=False, interval=1.0)
    lives = [page(0, 0), page(95, 5), page(190, 10, slow=20), page(0, 0), page(95, 5, slow=10)]
    for t, text in enumerate(lives):
        src.ingest("canary", float(t), text)
    st = src.stats_at(4.0)
    assert st.canary.requests == pytest.approx(300.0)  # 200 before the reset + 100 after, nothing lost
    assert st.canary.error_ratio == pytest.approx(15 / 300)
    # 30 of 300 slower than 0.5 s: rank 285 falls in the +Inf bucket, which answers the highest finite le
    # (without the slow tail it would interpolate to 0.475)
    assert st.canary.p95["fast"] == 0.5
    results = {r.gate: r for r in evaluate(st, GatePolicy.from_cfg(cfg))}
    assert results["critical_error_rate"].verdict == FAIL and results["critical_error_rate"].samples == 300
    assert results["p95_latency.fast"].verdict == PASS and results["p95_latency.fast"].value == 0.5


def test_schema_failures_of_a_series_born_inside_the_window_count(cfg: Any) -> None:
    """An app that creates the failure counter at its first failure (value 1 at first sight):
    ``increase`` alone would miss it; the series counts its value."""
    src = ScrapeSource(cfg, clock=FakeClock(), autostart=False, interval=1.0)
    src.ingest("canary", 0.0, page(10, 0, schema=None))
    src.ingest("canary", 1.0, page(20, 0, schema=None))
    src.ingest("canary", 2.0, page(30, 0, schema=1))
    assert src.stats_at(2.0).canary.schema_failures == 1.0
    pre = ScrapeSource(cfg, clock=FakeClock(), autostart=False, interval=1.0)
    pre.ingest("canary", 0.0, page(10, 0, schema=3))  # failures from before we looked are not this window's
    pre.ingest("canary", 1.0, page(20, 0, schema=3))
    assert pre.stats_at(1.0).canary.schema_failures == 0.0


@pytest.mark.parametrize("samples", [math.nan, math.inf, -math.inf, -3.0])
def test_a_non_finite_request_count_is_an_error_not_no_data(samples: float) -> None:
    """docs/gates.md: NaN/Inf where a number is expected is a source ERROR (on_metrics_unavailable
    applies), even when the value itself is missing; it was INCONCLUSIVE (or crashed on round())."""
    for value in (None, 0.001):
        r = judge("error_rate", value, 0.005, op=">=", samples=samples, min_requests=20, window="5m")
        assert r.verdict == ERROR and "request count" in r.detail and r.samples == 0
