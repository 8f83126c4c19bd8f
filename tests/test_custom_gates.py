"""Custom gates ([[gates.custom]]): parsing and its one-line errors, rendering, the verdict
tables, the checker and the engine's preflight on fakes, the Prometheus reader on a real
Prometheus, and every bad input through the real CLI (exit 2, nothing changed).

The end-to-end rollouts on a real instrumented service are in tests/test_custom_gates_e2e.py.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from console.core import events as ev
from console.core.clock import FakeClock
from console.core.config import ConfigError, load_config
from console.core.custom_gates import (
    CustomGate,
    CustomGateError,
    CustomGates,
    Reading,
    judge_custom,
    parse_custom_gates,
    placeholders,
    render,
)
from console.core.engine import Engine, Settings
from console.core.events import ERROR, FAIL, INCONCLUSIVE, PASS
from console.core.fakes import FakeHealth, FakeRouter
from console.core.journal import Journal
from console.core.protocols import CheckContext

REPO = Path(__file__).resolve().parents[1]
CTX = CheckContext(deployment_id="d", version="v0.2.0", index=0, weight=10, stage_elapsed=1.0, stage_wall_start=0.0)
P95 = 'histogram_quantile(0.95, sum by (le) (rate(starlette_request_duration_seconds_bucket{version="$version"}[$window])))'
COUNT = 'sum(increase(starlette_requests_total{version="$version"}[$window]))'


def table(**kw: Any) -> dict[str, Any]:
    return {"name": "p95", "query": P95, "compare": "<=", "threshold": 0.5, **kw}


def parse(*tables: dict[str, Any], source: str = "prometheus", min_requests: int = 20) -> tuple[CustomGate, ...]:
    return parse_custom_gates(list(tables), where="canary.toml", source=source, min_requests=min_requests)


# --------------------------------------------------------------------------- parsing


def test_a_table_becomes_a_gate_with_defaults() -> None:
    (g,) = parse(table())
    assert g == CustomGate(name="p95", query=P95, compare="<=", threshold=0.5)
    assert g.gate == "custom.p95" and not g.relative and not g.critical and g.min_samples == 0
    (g,) = parse(table(min_samples_query=COUNT, relative=True, critical=True, threshold=1.2))
    assert g.min_samples == 20, "min_samples defaults to [metrics] min_requests when there is a samples query"
    assert g.relative and g.critical and g.threshold == 1.2
    (g,) = parse(table(min_samples_query=COUNT, min_samples=5, threshold=1))
    assert g.min_samples == 5 and isinstance(g.threshold, float)


@pytest.mark.parametrize(
    ("tables", "needle"),
    [
        ([table(query='up{version="$foo"}')], "unknown placeholder $foo; allowed: $version, $window"),
        ([table(query="rate(x[${windows}])")], "unknown placeholder $windows"),
        ([table(query="rate(x[${window)")], "an unterminated ${"),
        ([table(min_samples_query="sum($count)")], "min_samples_query has unknown placeholder $count"),
        ([table(compare="==")], "compare = '==' is not valid; allowed: '<', '<=', '>', '>='"),
        ([table(compare="lt")], "compare = 'lt' is not valid"),
        ([table(threshold="0.5")], "threshold = '0.5' is not valid; allowed: a finite number"),
        ([table(threshold=True)], "threshold = True is not valid"),
        ([table(threshold=math.inf)], "threshold = inf is not valid"),
        ([table(threshold=0, relative=True)], "allowed: a ratio > 0"),
        ([table(query="")], "query is empty"),
        ([table(query="   ")], "query is empty"),
        ([table(query=5)], "query = 5 is not valid; allowed: a PromQL string"),
        ([table(min_samples_query="")], "min_samples_query is empty"),
        ([table(), table()], "name 'p95' is used twice"),
        ([table(colour="red")], "unknown key colour; allowed: name, query, compare, threshold"),
        ([{"name": "x", "query": "up", "compare": "<"}], "threshold is missing; required: name, query, compare, threshold"),
        ([table(name="has space")], "name = 'has space' is not valid"),
        ([table(relative="yes")], "relative = 'yes' is not valid; allowed: true or false"),
        ([table(critical=1)], "critical = 1 is not valid"),
        ([table(min_samples=5)], "min_samples needs min_samples_query"),
        ([table(min_samples_query=COUNT, min_samples=-1)], "min_samples = -1 is not valid"),
    ],
)
def test_every_bad_table_is_one_line_naming_it(tables: list[dict[str, Any]], needle: str) -> None:
    with pytest.raises(CustomGateError) as e:
        parse(*tables)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg and msg.startswith("canary.toml: [[gates.custom]] #")


@pytest.mark.parametrize("source", ["scrape", "none"])
def test_custom_gates_need_prometheus(source: str) -> None:
    with pytest.raises(CustomGateError, match=r'needs \[metrics\] source = "prometheus"'):
        parse(table(), source=source)
    assert parse(source=source) == ()  # none configured: any source


def test_not_an_array_of_tables() -> None:
    with pytest.raises(CustomGateError, match=r"single table; allowed: an array of tables"):
        parse_custom_gates(table(), where="c.toml", source="prometheus", min_requests=1)
    with pytest.raises(CustomGateError, match=r"custom = 3 is not valid"):
        parse_custom_gates(3, where="c.toml", source="prometheus", min_requests=1)


# --------------------------------------------------------------------------- rendering


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ('x{version="$version"}[$window]', 'x{version="canary"}[300s]'),
        ('x{version="${version}"}[${window}]', 'x{version="canary"}[300s]'),
        ('x{path=~"/api$",version="$version"}', 'x{path=~"/api$",version="canary"}'),  # a regex anchor stays
        ("x $$version", "x $version"),  # $$ is a literal $
        ("$version$window", "canary300s"),
    ],
)
def test_render(template: str, expected: str) -> None:
    assert render(template, version="canary", window="300s") == expected


def test_placeholders_found() -> None:
    assert placeholders('a{v="$version"}[$window] $$x ${version} ${') == ["version", "window", "version", ""]


# --------------------------------------------------------------------------- verdicts


def gate(**kw: Any) -> CustomGate:
    base = dict(name="g", query="q", compare="<=", threshold=0.5)
    return CustomGate(**{**base, **kw})  # type: ignore[arg-type]


R = Reading


def judged(g: CustomGate, canary: Reading, production: Reading = R(0.1), samples: Reading | None = None) -> ev.GateResult:
    return judge_custom(g, canary, production, samples, window="5m", extra={"query": "q"})


@pytest.mark.parametrize(
    ("compare", "value", "verdict"),
    [
        ("<", 0.49, PASS), ("<", 0.5, FAIL), ("<", 0.51, FAIL),
        ("<=", 0.49, PASS), ("<=", 0.5, PASS), ("<=", 0.51, FAIL),
        (">", 0.51, PASS), (">", 0.5, FAIL), (">", 0.49, FAIL),
        (">=", 0.51, PASS), (">=", 0.5, PASS), (">=", 0.49, FAIL),
    ],
)
def test_absolute_each_compare_at_the_edge(compare: str, value: float, verdict: str) -> None:
    r = judged(gate(compare=compare), R(value))
    assert r.verdict == verdict, r.detail
    assert r.gate == "custom.g" and r.threshold == 0.5 and r.value == value and r.window == "5m"
    assert r.production_value == 0.1 and r.extra["compare"] == compare and r.extra["query"] == "q"
    if verdict == FAIL:
        assert f"must be {compare} 0.5" in r.detail


@pytest.mark.parametrize(
    ("canary", "production", "verdict"),
    [(0.59, 0.5, PASS), (0.6, 0.5, PASS), (0.61, 0.5, FAIL), (0.0, 0.0, PASS), (0.01, 0.0, FAIL)],
)
def test_relative_is_a_ratio_to_production(canary: float, production: float, verdict: str) -> None:
    r = judged(gate(threshold=1.2, relative=True), R(canary), R(production))
    assert r.verdict == verdict, r.detail
    assert r.threshold == pytest.approx(1.2 * production) and r.production_value == production
    assert r.extra["ratio"] == 1.2 and r.extra["relative"] is True
    assert "x production" in r.detail


def test_relative_without_production_is_inconclusive_and_absolute_does_not_need_it() -> None:
    r = judged(gate(relative=True, threshold=1.2), R(0.3), R(None))
    assert r.verdict == INCONCLUSIVE and "no production value" in r.detail and r.threshold is None
    r = judged(gate(), R(0.3), R(None))
    assert r.verdict == PASS and r.production_value is None
    r = judged(gate(), R(0.3), R(error="prometheus x: HTTP 503"))
    assert r.verdict == PASS, "production is only shown for an absolute gate"
    r = judged(gate(relative=True, threshold=1.2), R(0.3), R(math.nan))
    assert r.verdict == ERROR and "query for production returned NaN" in r.detail


def test_no_data_and_few_samples_are_inconclusive() -> None:
    r = judged(gate(), R(None))
    assert r.verdict == INCONCLUSIVE and "no series for the canary" in r.detail and r.value is None
    g = gate(min_samples_query="count", min_samples=20)
    r = judged(g, R(0.9), samples=R(19.4))
    assert r.verdict == INCONCLUSIVE and r.samples == 19 and "fewer than min_samples 20" in r.detail
    r = judged(g, R(0.9), samples=R(None))
    assert r.verdict == INCONCLUSIVE and r.samples == 0, "no samples series: nothing counted"
    r = judged(g, R(0.9), samples=R(20.0))
    assert r.verdict == FAIL and r.samples == 20 and "20 samples" in r.detail
    assert judged(gate(), R(0.1)).samples is None, "no samples query: no sample size"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_inf_are_errors(bad: float) -> None:
    r = judged(gate(), R(bad))
    assert r.verdict == ERROR and "query for the canary returned" in r.detail and r.blocking
    r = judged(gate(min_samples_query="c", min_samples=1), R(0.1), samples=R(bad))
    assert r.verdict == ERROR and "min_samples_query returned" in r.detail


def test_a_source_error_is_an_error_with_its_line() -> None:
    why = "prometheus http://127.0.0.1:9: unreachable (Connection refused) (custom gate query)"
    r = judged(gate(critical=True), R(error=why), R(error=why))
    assert r.verdict == ERROR and r.detail == why and r.critical and r.blocking and r.value is None
    r = judged(gate(min_samples_query="c", min_samples=1), R(0.1), samples=R(error=why))
    assert r.verdict == ERROR and r.detail == why


# --------------------------------------------------------------------------- the checker, on a fake reader


class FakeReader:
    """Answers each query from ``answers`` (exact text), else ``default``."""

    kind = "fake"

    def __init__(self, answers: dict[str, Reading] | None = None, default: Reading = R(0.1), fail: Exception | None = None):
        self.answers = answers or {}
        self.default = default
        self.fail = fail
        self.asked: list[list[str]] = []
        self.closed = 0

    async def read(self, queries: Sequence[str]) -> list[Reading]:
        self.asked.append(list(queries))
        if self.fail is not None:
            raise self.fail
        return [self.answers.get(q, self.default) for q in queries]

    def describe(self) -> str:
        return "fake reader"

    async def aclose(self) -> None:
        self.closed += 1


def checker(reader: FakeReader, *gates: CustomGate) -> CustomGates:
    return CustomGates(gates or (gate(name="p95", query='p95{v="$version"}[$window]'),), reader, canary_value="canary",
                       production_value="production", window="10s", promql_window="10s")


async def test_the_checker_reads_every_query_once_and_names_each_gate() -> None:
    g1 = gate(name="p95", query='p95{v="$version"}[$window]', min_samples_query='n{v="$version"}', min_samples=5)
    g2 = gate(name="errors", query='e{v="$version"}', compare="<", threshold=0.01, critical=True)
    reader = FakeReader({'p95{v="canary"}[10s]': R(0.7), 'p95{v="production"}[10s]': R(0.2), 'n{v="canary"}': R(50),
                         'e{v="canary"}': R(0.0), 'e{v="production"}': R(0.0)})
    c = checker(reader, g1, g2)
    res = await c.check(CTX)
    assert len(reader.asked) == 1 and len(reader.asked[0]) == 5
    assert [(r.gate, r.verdict) for r in res] == [("custom.p95", FAIL), ("custom.errors", PASS)]
    assert res[0].extra["query"] == 'p95{v="canary"}[10s]' and res[0].extra["samples_query"] == 'n{v="canary"}'
    assert res[0].production_value == 0.2 and res[0].samples == 50 and res[1].critical
    notes = await c.begin_stage(CTX)
    assert "custom gates: p95 (value <= 0.5), errors (value < 0.01, critical)" in notes[0]["message"]
    await c.aclose()
    assert reader.closed == 1


async def test_a_reader_that_breaks_is_an_error_on_every_gate_never_a_pass() -> None:
    c = checker(FakeReader(fail=RuntimeError("boom")), gate(name="a"), gate(name="b", critical=True))
    res = await c.check(CTX)
    assert [(r.gate, r.verdict, r.critical) for r in res] == [("custom.a", ERROR, False), ("custom.b", ERROR, True)]
    assert "failed: RuntimeError" in res[0].detail


async def test_preflight_names_the_gate_and_prometheus_own_error() -> None:
    bad = 'sum(rate(x{v="$version"}[$window])'
    rejected = R(error="Prometheus rejected the query (HTTP 400: 1:33: parse error: unclosed left parenthesis)",
                 invalid=True)
    reader = FakeReader({render(bad, version=v, window="10s"): rejected for v in ("canary", "production")})
    c = checker(reader, gate(name="ok"), gate(name="broken", query=bad))
    problems = await c.preflight()
    assert problems == ["custom.broken query (canary): Prometheus rejected the query (HTTP 400: 1:33: parse error: "
                        "unclosed left parenthesis)"]
    probed = {g.name: status for g, status, _ in await c.probe()}
    assert probed == {"ok": "pass", "broken": "invalid"}
    # Prometheus down: nothing to refuse now (the checks judge ERROR, like every gate)
    down = checker(FakeReader(default=R(error="prometheus x: unreachable (Connection refused)")))
    assert await down.preflight() == []
    assert [s for _, s, _ in await down.probe()] == ["unavailable"]
    assert [s for _, s, _ in await checker(FakeReader(default=R(None))).probe()] == ["no data"]


async def test_after_a_warm_up_the_window_never_reaches_back_over_it() -> None:
    """As the built-in gates': while ``$window`` would reach back past the end of the warm-up
    (``samples_since``), each check asks for the time since it, in whole milliseconds."""
    import dataclasses

    clock = FakeClock(start=1000.0)
    g = gate(name="p95", query='p95{v="$version"}[$window]', min_samples_query='sum(increase(n{v="$version"}[$window]))',
             min_samples=1)
    reader = FakeReader()
    c = CustomGates((g,), reader, canary_value="canary", production_value="production", window="5m",
                    promql_window="300s", window_s=300.0, clock=clock)
    warmed = dataclasses.replace(CTX, samples_since=clock.monotonic())
    clock.advance(12.3456)
    res = await c.check(warmed)
    assert reader.asked[-1] == ['p95{v="canary"}[12345ms]', 'p95{v="production"}[12345ms]',
                                'sum(increase(n{v="canary"}[12345ms]))']
    assert res[0].window == "12.345s" and res[0].extra["query"] == 'p95{v="canary"}[12345ms]'
    clock.advance(300)  # the whole window is past the warm-up now
    assert (await c.check(warmed))[0].window == "5m" and reader.asked[-1][0] == 'p95{v="canary"}[300s]'
    await c.check(CTX)  # no warm-up: the whole window from the first check
    assert reader.asked[-1][0] == 'p95{v="canary"}[300s]'


# --------------------------------------------------------------------------- the engine: same policies as every gate


def engine(tmp_path: Path, reader: FakeReader, *gates: CustomGate, **settings: Any) -> tuple[Engine, list[ev.Event]]:
    s = Settings(stages=[10, 50, 100], observation_period=60, check_interval=5, canary_health_url="http://canary/health",
                 **settings)
    eng = Engine(s, version="v0.2.0", router=FakeRouter(), journal=Journal(tmp_path / "j.jsonl"), clock=FakeClock(),
                 checkers=[checker(reader, *gates)], health=FakeHealth())
    seen: list[ev.Event] = []
    eng.add_listener(seen.append)
    return eng, seen


async def test_a_rejected_query_fails_the_preflight_exit_4_and_nothing_moves(tmp_path: Path) -> None:
    reader = FakeReader(default=R(error="Prometheus rejected the query (HTTP 400: parse error: x)", invalid=True))
    eng, seen = engine(tmp_path, reader, gate(name="p95"))
    assert await eng.run() == 4
    failed = [e for e in seen if isinstance(e, ev.Failed)]
    assert len(failed) == 1 and failed[0].reason.startswith("preflight: custom.p95 query (canary): Prometheus rejected")
    assert "HTTP 400: parse error: x" in failed[0].reason and failed[0].reason.endswith("nothing was changed")
    assert eng.router.applied == [] and eng.router.preflights == 0  # type: ignore[attr-defined]
    assert not [e for e in seen if isinstance(e, ev.RouterIntent | ev.CheckCompleted)]


async def test_a_critical_custom_gate_rolls_back_at_once_naming_it(tmp_path: Path) -> None:
    reader = FakeReader({'p95{v="canary"}[10s]': R(0.9)})
    eng, seen = engine(tmp_path, reader, gate(name="p95", query='p95{v="$version"}[$window]', critical=True))
    assert await eng.run() == 3
    rb = next(e for e in seen if isinstance(e, ev.RolledBack))
    assert rb.reason.startswith("custom.p95 0.9 vs threshold 0.5") and rb.automatic
    assert {g.gate for g in rb.snapshot} == {"custom.p95", "health"}
    assert eng.router.applied == [10, 0]  # type: ignore[attr-defined]


async def test_a_non_critical_custom_gate_rolls_back_after_consecutive_failures(tmp_path: Path) -> None:
    reader = FakeReader({'p95{v="canary"}[10s]': R(0.9)})
    eng, seen = engine(tmp_path, reader, gate(name="p95", query='p95{v="$version"}[$window]'), consecutive_failures=3)
    assert await eng.run() == 3
    checks = [e for e in seen if isinstance(e, ev.CheckCompleted)]
    assert [c.breaches.get("custom.p95") for c in checks] == [1, 2, 3]
    assert "custom.p95" in next(e for e in seen if isinstance(e, ev.RolledBack)).reason


async def test_source_errors_follow_on_metrics_unavailable(tmp_path: Path) -> None:
    down = R(error="prometheus x: unreachable (Connection refused) (custom gate query)")
    eng, seen = engine(tmp_path, FakeReader(default=down), gate(name="p95"), on_metrics_unavailable="rollback",
                       unavailable_after=3)
    assert await eng.run() == 3
    rb = next(e for e in seen if isinstance(e, ev.RolledBack))
    assert "metrics unavailable for 3 checks" in rb.reason and "unreachable" in rb.reason


async def test_no_data_extends_the_stage_then_follows_on_inconclusive(tmp_path: Path) -> None:
    eng, seen = engine(tmp_path, FakeReader(default=R(None)), gate(name="p95"), on_inconclusive="rollback")
    assert await eng.run() == 3
    assert [e.until for e in seen if isinstance(e, ev.StageExtended)] == [120]
    rb = next(e for e in seen if isinstance(e, ev.RolledBack))
    assert rb.reason.startswith("inconclusive after 120s of observation: custom.p95 inconclusive")
    assert eng.router.applied == [10, 0]  # type: ignore[attr-defined]  # never advanced on missing data


# --------------------------------------------------------------------------- config: load and the real CLI


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "nginx" / "conf.d").mkdir(parents=True, exist_ok=True)
    p = tmp_path / "canary.toml"
    p.write_text(text)
    return p


GOOD = f"""
[gates]
builtin = false

[analysis]
enabled = false

[[gates.custom]]
name = "p95"
query = '{P95}'
compare = "<="
threshold = 0.25
min_samples_query = '{COUNT}'

[[gates.custom]]
name = "p95_vs_production"
query = '{P95}'
compare = "<="
threshold = 1.5
relative = true
critical = true
"""


def test_load_config_reads_the_tables(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD), environ={})
    assert [g.gate for g in cfg.custom_gates] == ["custom.p95", "custom.p95_vs_production"]
    assert cfg["gates"]["builtin"] is False and cfg.custom_gates[0].min_samples == 20
    assert "custom" not in cfg["gates"]
    assert load_config(write(tmp_path, ""), environ={}).custom_gates == ()


def test_custom_gates_with_the_scrape_source_from_the_environment_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r'needs \[metrics\] source = "prometheus" \(source \'scrape\''):
        load_config(write(tmp_path, GOOD), environ={"CANARY_METRICS_SOURCE": "scrape"})


def test_wiring_builtin_false_keeps_only_the_custom_gates(tmp_path: Path) -> None:
    from console.core.clock import RealClock
    from console.core.gates import MetricGates
    from console.wiring import build_checkers

    cfg = load_config(write(tmp_path, GOOD), environ={})
    metric_checkers = ("MetricGates", "CustomGates", "SequentialChecker")  # the ones on the metric source
    checkers, source = build_checkers(cfg, RealClock())
    on_source = [c for c in checkers if type(c).__name__ in metric_checkers]
    assert [type(c).__name__ for c in on_source] == ["CustomGates"] and source is not None
    assert on_source[0].reader.owns_source, "nobody else closes the source"  # type: ignore[attr-defined]
    cfg = load_config(write(tmp_path, GOOD.replace("builtin = false", "builtin = true")), environ={})
    checkers, _ = build_checkers(cfg, RealClock())
    on_source = [c for c in checkers if type(c).__name__ in metric_checkers]
    assert [type(c).__name__ for c in on_source] == ["MetricGates", "CustomGates"]
    assert isinstance(on_source[0], MetricGates) and not on_source[1].reader.owns_source  # type: ignore[attr-defined]


BAD = {
    "unknown placeholder": ("query = 'up{version=\"$foo\"}'", "unknown placeholder $foo"),
    "bad comparison": ('compare = "=<"', "compare = '=<' is not valid"),
    "threshold not a number": ('threshold = "fast"', "threshold = 'fast' is not valid; allowed: a finite number"),
    "empty query": ("query = ''", "query is empty"),
    "unknown key": ("treshold = 1", "unknown key treshold"),
    "duplicate name": ("DUP", "name 'p95' is used twice"),
    "scrape source": ("SCRAPE", 'needs [metrics] source = "prometheus"'),
}


def _bad_toml(case: str) -> str:
    change, _ = BAD[case]
    lines = {"name": 'name = "p95"', "query": f"query = '{P95}'", "compare": 'compare = "<="', "threshold": "threshold = 0.5"}
    head = "[metrics]\nsource = \"scrape\"\n" if change == "SCRAPE" else ""
    if change not in ("DUP", "SCRAPE"):
        key = change.split(" ", 1)[0]
        if key in lines:
            lines[key] = change
        else:
            lines["extra"] = change
    one = "[[gates.custom]]\n" + "\n".join(lines.values()) + "\n"
    return head + "[gates]\nbuiltin = false\n\n" + one + (one if change == "DUP" else "")


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exits_2_with_one_line_and_changes_nothing(tmp_path: Path, case: str) -> None:
    from console.adapters.nginx.router import render_upstream

    toml = write(tmp_path, _bad_toml(case))
    upstream = tmp_path / "nginx" / "conf.d" / "upstream.conf"
    upstream.write_text(render_upstream("fragrance_app", "127.0.0.1:8000", "127.0.0.1:8001", 0, "initial"))
    before = upstream.read_bytes()
    proc = subprocess.run(
        [sys.executable, "-m", "console.commands.cli", "--config", str(toml), "deploy", "--version", "v0.2.0",
         "--headless", "--foreground"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and proc.stdout == "", proc.stderr
    assert lines[0].startswith(f"canary-console: config error: {toml}: ") and BAD[case][1] in lines[0], lines[0]
    assert upstream.read_bytes() == before
    assert not (tmp_path / ".canary").exists(), "no journal, no lock"


# --------------------------------------------------------------------------- the Prometheus reader


def test_decode_every_answer_shape() -> None:
    from console.adapters.metrics.custom import decode
    from console.adapters.metrics.prometheus import Rejected

    sample = {"metric": {"version": "canary"}, "value": [1.0, "0.25"]}
    assert decode([sample]) == R(0.25)
    assert decode([1.0, "2"]) == R(2.0), "a scalar"
    assert decode([]) == R(None), "an empty vector: no data"
    assert math.isnan(decode([{"metric": {}, "value": [1.0, "NaN"]}]).value or 0.0)
    assert decode([{"metric": {}, "value": [1.0, "+Inf"]}]).value == math.inf
    many = decode([sample, {"metric": {"version": "production"}, "value": [1.0, "1"]}])
    assert many.invalid and "returns 2 series" in many.error and 'version="production"' in many.error
    rng = decode([{"metric": {}, "values": [[1.0, "1"], [2.0, "2"]]}])
    assert rng.invalid and "a range vector" in rng.error
    assert decode([1.0, "abc"]).invalid, "a string result"
    rej = decode(Rejected("HTTP 400: 1:5: parse error: unexpected end of input"))
    assert rej.invalid and rej.error == "Prometheus rejected the query (HTTP 400: 1:5: parse error: unexpected end of input)"


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.fixtures.prometheus import LocalPrometheus
    from tests.fixtures.real import need_binary

    prom = LocalPrometheus(need_binary("prometheus"), tmp_path_factory.mktemp("prom"), [])
    try:
        yield prom.start()
    finally:
        prom.stop()


def reader_cfg(tmp_path: Path, url: str) -> Any:
    return load_config(write(tmp_path, ""), overrides={("prometheus", "url"): url, ("metrics", "query_timeout"): 2.0},
                       environ={}, check_upstream_dir=False)


@pytest.mark.real
async def test_the_reader_on_a_real_prometheus(tmp_path: Path, prometheus: Any) -> None:
    from console.adapters.metrics.custom import PrometheusQueries
    from console.adapters.metrics.prometheus import PrometheusSource

    reader = PrometheusQueries(PrometheusSource(reader_cfg(tmp_path, prometheus.url)), owns_source=True)
    queries = {
        "one": "vector(0.25)",
        "scalar": "scalar(vector(2))",
        "empty": "vector(1) unless vector(1)",
        "nan": "vector(0) / vector(0)",
        "inf": "vector(1) / vector(0)",
        "many": 'label_replace(vector(1), "v", "a", "", "") or label_replace(vector(2), "v", "b", "", "")',
        "range": "vector(1)[1m:10s]",
        "string": '"text"',
        "rejected": "sum(rate(starlette_requests_total[10s])",
    }
    try:
        got = dict(zip(queries, await reader.read(list(queries.values())), strict=True))
    finally:
        await reader.aclose()
    assert got["one"] == R(0.25) and got["scalar"] == R(2.0) and got["empty"] == R(None)
    assert math.isnan(got["nan"].value or 0.0) and got["inf"].value == math.inf and not got["nan"].error
    assert judged(gate(), got["nan"]).verdict == ERROR and judged(gate(), got["inf"]).verdict == ERROR
    assert got["many"].invalid and "returns 2 series" in got["many"].error
    assert got["range"].invalid and "range vector" in got["range"].error
    assert got["string"].invalid
    rej = got["rejected"]
    assert rej.invalid and rej.error.startswith("Prometheus rejected the query (HTTP 400: ") and "parse error" in rej.error
    assert "\n" not in rej.error


@pytest.mark.real
async def test_preflight_on_a_real_prometheus_names_the_gate_and_its_error(tmp_path: Path, prometheus: Any) -> None:
    from console.adapters.metrics.custom import PrometheusQueries
    from console.adapters.metrics.prometheus import PrometheusSource

    reader = PrometheusQueries(PrometheusSource(reader_cfg(tmp_path, prometheus.url)), owns_source=True)
    c = CustomGates((gate(name="fine", query='count(up{v="$version"}) or vector(0)'),
                     gate(name="broken", query='sum(rate(x{v="$version"}[$window])')),
                    reader, canary_value="canary", production_value="production", window="10s", promql_window="10s")
    try:
        problems = await c.preflight()
        res = await c.check(CTX)
    finally:
        await c.aclose()
    assert len(problems) == 1 and problems[0].startswith("custom.broken query (canary): Prometheus rejected the query "
                                                         "(HTTP 400: ") and "parse error" in problems[0], problems
    assert [(r.gate, r.verdict) for r in res] == [("custom.fine", PASS), ("custom.broken", ERROR)]
    assert "parse error" in res[1].detail


async def test_prometheus_unreachable_is_an_error_on_every_reading_not_a_rejection(tmp_path: Path) -> None:
    from console.adapters.metrics.custom import PrometheusQueries
    from console.adapters.metrics.prometheus import PrometheusSource
    from tests.fixtures.real import free_port

    reader = PrometheusQueries(PrometheusSource(reader_cfg(tmp_path, f"http://127.0.0.1:{free_port()}")), owns_source=True)
    try:
        got = await reader.read(["vector(1)", "vector(2)"])
    finally:
        await reader.aclose()
    assert len(got) == 2 and all("unreachable" in r.error and not r.invalid for r in got), got
    assert "custom gate query" in got[0].error and "\n" not in got[0].error


@pytest.mark.parametrize(("compare", "sign"), [("<", "<"), ("<=", "≤"), (">", ">"), (">=", "≥")])
def test_the_decision_panel_shows_a_custom_gates_own_comparison(compare: str, sign: str) -> None:
    from console.core.events import PASS, GateResult
    from widgets.decision import threshold_text

    r = GateResult("custom.apdex", PASS, value=0.97, threshold=0.9, extra={"compare": compare})
    assert threshold_text(r).startswith(sign)
    assert threshold_text(GateResult("error_rate", PASS, value=0.0, threshold=0.005)).startswith("≤")
