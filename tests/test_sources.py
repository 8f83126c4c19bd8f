"""Both metric sources: the same numbers on the same real data, and every way a source can fail.

Real components: two demo-service processes and a real Prometheus scraping them every second.
Fakes only where a real Prometheus or app cannot misbehave on demand: malformed JSON, a
hung server, an auth error that echoes the credentials, NaN/Inf, empty vectors, bad TLS.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from console.adapters.metrics import build_source
from console.adapters.metrics.prometheus import PrometheusSource
from console.adapters.metrics.promql import MetricNames, Queries, build_queries
from console.adapters.metrics.scrape import ScrapeSource
from console.core.clock import FakeClock
from console.core.config import Config, ConfigError, load_config
from console.core.events import ERROR, INCONCLUSIVE, PASS
from console.core.gates import GatePolicy, MetricGates, evaluate
from console.core.protocols import CheckContext, MetricsUnavailable
from console.sandbox.traffic import TrafficGenerator
from tests.fixtures.demo_services import DemoService
from tests.fixtures.prometheus import LocalPrometheus
from tests.fixtures.real import free_port, need_binary

TOKEN = "s3cr3t-T0KEN-value"
USER, PASSWORD = "promuser", "pa55-W0RD-value"
BASIC = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
CTX = CheckContext(deployment_id="d", version="v0.2.0", index=0, weight=10, stage_elapsed=1.0, stage_wall_start=0.0)


def make_cfg(tmp_path: Path, env: dict[str, str] | None = None, **over: Any) -> Any:
    """A Config from an empty canary.toml plus ``section__key=value`` overrides."""
    toml = tmp_path / "canary.toml"
    if not toml.exists():
        toml.write_text("")
    overrides = {tuple(k.split("__", 1)): v for k, v in over.items()}
    return load_config(toml, overrides=overrides, environ=env or {}, check_upstream_dir=False)


# --------------------------------------------------------------------------- real: same data, same numbers


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)  # polling interval of a deadline loop


async def _traffic(prod: DemoService, canary: DemoService, n: int) -> None:
    stats = await asyncio.gather(TrafficGenerator(prod.url, rps=150, seed=1).run(max_requests=n, duration=30),
                                 TrafficGenerator(canary.url, rps=150, seed=2).run(max_requests=n, duration=30))
    assert [s.sent for s in stats] == [n, n] and not any(s.failed for s in stats)


def _served(page: list[dict[str, Any]]) -> float:
    return sum(float(r["value"][1]) for r in page)


def assert_same_numbers(a: Any, b: Any) -> None:
    """Ratios and quantiles agree to float precision: every series of one target shares its
    scrape times, so Prometheus' extrapolation scales numerator and denominator alike."""
    for va, vb in ((a.canary, b.canary), (a.production, b.production)):
        assert va is not None and vb is not None
        assert va.error_ratio == pytest.approx(vb.error_ratio, rel=1e-9, abs=1e-12)
        for mode in ("fast", "balanced", "creative"):
            assert va.p95[mode] == pytest.approx(vb.p95[mode], rel=1e-9), mode
        assert va.rl_loss == vb.rl_loss


EXTRAPOLATION = 1.5  # 1.1 scrape intervals added to a sampled interval of at least 3 s, with margin


def assert_counts(stats: Any, truth: dict[str, dict[str, float]]) -> None:
    """Counts are extrapolated increases, each source from its own scrape times: never below
    the true count (the window holds the counters' 0 and their final value), and not far above."""
    for version, modes in truth.items():
        got = getattr(stats, version)
        for mode, n in modes.items():
            assert n <= got.by_mode[mode] + 1e-9 <= n * EXTRAPOLATION + 1e-9, (stats.source, version, mode, got.by_mode, n)


@pytest.mark.real
def test_prometheus_and_scrape_agree_on_real_traffic(tmp_path: Path, demo_services: Callable[..., DemoService],
                                                     prometheus_factory: Callable[..., LocalPrometheus]) -> None:
    prod = demo_services("production", args=["--rl-loss", "0.5"])
    canary = demo_services("canary", args=["--error-rate", "0.1", "--latency", "fast=0.3", "--rl-loss", "0.6"])
    prom = prometheus_factory([prod.address, canary.address])
    cfg = make_cfg(tmp_path, metrics__rate_window="60s", metrics__min_requests=5, prometheus__url=prom.url,
                   scrape__production=prod.metrics_url, scrape__canary=canary.metrics_url)

    async def main() -> None:
        ps = PrometheusSource(cfg)
        ss = ScrapeSource(cfg, interval=1.0)
        try:
            ss.start()  # both sources see the counters at 0 before any traffic
            await asyncio.to_thread(prom.wait_targets_up)
            while ss.scrapes < 2:
                await asyncio.sleep(0.05)
            canary.faults(schema_failures=2)
            await _traffic(prod, canary, 200)
            total = 400.0
            await asyncio.to_thread(_wait, lambda: _served(prom.query("http_requests_total")) == total, 20, "prometheus")
            await ss.read()
            a, b = await ps.stats(), await ss.stats()
            assert_same_numbers(a, b)
            assert a.canary.error_ratio == pytest.approx(20 / 200)  # exactly what the service injected
            assert b.canary.p95["fast"] > 0.25 and a.production.p95["fast"] < 0.25
            assert a.canary.schema_failures == 2 and 2 <= b.canary.schema_failures <= 2 * EXTRAPOLATION
            assert [(r.gate, r.verdict) for r in evaluate(a, GatePolicy.from_cfg(cfg))] == \
                   [(r.gate, r.verdict) for r in evaluate(b, GatePolicy.from_cfg(cfg))]
            sa, sb = await ps.snapshot(), await ss.snapshot()
            assert sa.canary == sb.canary and sa.production == sb.production  # cumulative: identical
            truth = {"canary": sa.canary.requests, "production": sa.production.requests}
            assert_counts(a, truth)
            assert_counts(b, truth)
            assert sum(sa.canary.requests.values()) == 200 and sum(sa.canary.errors.values()) == 20
            assert sa.canary.schema_failures == 2 and sa.canary.rl_loss == 0.6 and sa.production.rl_loss == 0.5
        finally:
            await ps.aclose()
            await ss.aclose()

    asyncio.run(main())


@pytest.mark.real
def test_a_counter_reset_is_not_a_drop(tmp_path: Path, demo_services: Callable[..., DemoService],
                                       prometheus_factory: Callable[..., LocalPrometheus]) -> None:
    """The canary restarts mid-window (its counters start again at 0): both sources add the
    lost value back, agree with each other, and the ratio covers both process lives."""
    prod = demo_services("production")
    canary = demo_services("canary", args=["--error-rate", "0.25"])
    prom = prometheus_factory([prod.address, canary.address])
    cfg = make_cfg(tmp_path, metrics__rate_window="60s", prometheus__url=prom.url,
                   scrape__production=prod.metrics_url, scrape__canary=canary.metrics_url)

    async def main() -> None:
        ps, ss = PrometheusSource(cfg), ScrapeSource(cfg, interval=1.0)
        try:
            ss.start()
            await asyncio.to_thread(prom.wait_targets_up)
            await _traffic(prod, canary, 80)
            await asyncio.to_thread(_wait, lambda: _served(prom.query('http_requests_total{version="canary"}')) == 80,
                                    20, "prometheus to see the first life")
            await ss.read()
            canary.stop()
            demo_services("canary", port=canary.port, args=["--error-rate", "0.25"])
            # both sources see the new life at 0 (a reset is visible only to a sample taken below the old value)
            def new_life_at_zero() -> bool:  # present (not stale) and at 0: a scrape of the new process
                page = prom.query('http_requests_total{version="canary"}')
                return bool(page) and _served(page) == 0

            await asyncio.to_thread(_wait, new_life_at_zero, 20, "prometheus to see the restart")
            await ss.read()
            await TrafficGenerator(canary.url, rps=300, seed=5).run(max_requests=40, duration=30)
            await asyncio.to_thread(_wait, lambda: _served(prom.query('http_requests_total{version="canary"}')) == 40,
                                    20, "prometheus to see the second life")
            await ss.read()
            a, b = await ps.stats(), await ss.stats()
            assert_same_numbers(a, b)
            assert a.canary.error_ratio == pytest.approx(30 / 120)
            for st in (a, b):  # both lives counted, nothing lost, nothing negative
                assert 120 <= st.canary.requests <= 120 * EXTRAPOLATION
        finally:
            await ps.aclose()
            await ss.aclose()

    asyncio.run(main())


# --------------------------------------------------------------------------- fakes: what Prometheus cannot do on demand


class FakeServer:
    """A threaded HTTP server whose answers a test sets: ``answer(path, query, headers) ->
    (status, body bytes)``, or ``hang = True`` (the handler blocks until teardown)."""

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self.answer: Callable[[str, dict[str, list[str]], dict[str, str]], tuple[int, bytes]] = lambda p, q, h: (200, b"")
        self.hang = False
        self.release = threading.Event()
        self.requests: list[tuple[str, dict[str, list[str]], dict[str, str]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                q = parse_qs(parts.query)
                headers = {k.lower(): v for k, v in self.headers.items()}
                outer.requests.append((parts.path, q, headers))
                if outer.hang:
                    outer.release.wait(30)
                    return
                status, body = outer.answer(parts.path, q, headers)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

            def log_message(self, *a: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        scheme = "http"
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    def queries(self) -> list[str]:
        return [q["query"][0] for p, q, _ in self.requests if p == "/api/v1/query"]


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    srv = FakeServer()
    try:
        yield srv
    finally:
        srv.close()


def vector(*items: tuple[dict[str, str], Any]) -> bytes:
    result = [{"metric": m, "value": [time.time(), str(v)]} for m, v in items]
    return json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode()


def canned(q: Queries, *, requests: Any = 100, ratio: Any = 0.0, p95: Any = 0.05, schema: Any = 0, rl: Any = None
           ) -> Callable[[str, dict[str, list[str]], dict[str, str]], tuple[int, bytes]]:
    """Answers like a Prometheus whose canary and production both serve ``requests`` per mode."""
    modes = ("fast", "balanced", "creative")

    def answer(path: str, query: dict[str, list[str]], headers: dict[str, str]) -> tuple[int, bytes]:
        text = query.get("query", [""])[0]
        vs = ("production", "canary")
        if text == q.requests:
            return 200, vector(*(({"version": v, "mode": m}, requests) for v in vs for m in modes))
        if text == q.error_ratio:
            return 200, vector(*(({"version": v}, ratio) for v in vs))
        if text == q.p95:
            return 200, vector(*(({"version": v, "mode": m}, p95) for v in vs for m in modes))
        if text == q.schema_failures:
            return 200, vector(*(({"version": v}, schema) for v in vs))
        if text == q.rl_loss:
            return 200, vector() if rl is None else vector(*(({"version": v}, rl) for v in vs))
        return 200, vector(({"version": "canary", "mode": "fast"}, 1))

    return answer


def _gates(cfg: Config) -> MetricGates:
    return MetricGates(cfg, build_source(cfg))


def prom_cfg(tmp_path: Path, url: str, env: dict[str, str] | None = None, **over: Any) -> Any:
    return make_cfg(tmp_path, env, prometheus__url=url, metrics__query_timeout=over.pop("timeout", 2.0),
                    metrics__min_requests=10, **over)


def one_line_without_secrets(msg: str) -> None:
    assert "\n" not in msg
    for secret in (TOKEN, PASSWORD, BASIC, f"{USER}:{PASSWORD}"):
        assert secret not in msg


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, b"{not json", "malformed JSON"),
        (200, b'{"status": "success", "data": {}}', "unexpected answer"),
        (200, b'{"status":"success","data":{"resultType":"scalar","result":[1, "2"]}}', "unexpected answer"),
        (503, b'{"status":"error","errorType":"unavailable","error":"TSDB not ready"}', "HTTP 503: TSDB not ready"),
        (422, b'{"status":"error","errorType":"execution","error":"query timed out in expression evaluation"}',
         "HTTP 422: query timed out"),
    ],
)
def test_a_broken_answer_is_one_line_never_a_pass(tmp_path: Path, fake: FakeServer, status: int, body: bytes,
                                                  expected: str) -> None:
    fake.answer = lambda p, q, h: (status, body)
    gates = _gates(prom_cfg(tmp_path, fake.url))
    results = asyncio.run(gates.check(CTX))
    assert {r.verdict for r in results} == {ERROR}
    assert all(expected in r.detail and "\n" not in r.detail for r in results)
    assert results[0].detail.startswith(f"prometheus {fake.url}: ")


def test_credentials_are_sent_but_never_shown(tmp_path: Path, fake: FakeServer) -> None:
    """A server that echoes every header back in its error: the token reaches it, and
    appears in no error, repr or description."""
    def echo(path: str, q: Any, h: dict[str, str]) -> tuple[int, bytes]:
        return 401, json.dumps({"status": "error", "error": f"bad credentials: {h['authorization']}"}).encode()

    fake.answer = echo
    for env in ({"CANARY_PROMETHEUS_TOKEN": TOKEN}, {"CANARY_PROMETHEUS_USER": USER, "CANARY_PROMETHEUS_PASSWORD": PASSWORD}):
        fake.requests.clear()
        src = PrometheusSource(prom_cfg(tmp_path, fake.url, env))
        with pytest.raises(MetricsUnavailable) as err:
            asyncio.run(src.stats())
        msg = str(err.value)
        assert "HTTP 401" in msg and "***" in msg  # the echo was there, and redacted
        one_line_without_secrets(msg)
        for shown in (repr(src), str(src), src.describe(), repr(MetricGates(prom_cfg(tmp_path, fake.url, env), src).last)):
            one_line_without_secrets(shown)
        sent = fake.requests[0][2]["authorization"]
        assert sent == (f"Bearer {TOKEN}" if "CANARY_PROMETHEUS_TOKEN" in env else f"Basic {BASIC}")


def test_credentials_in_the_url_are_not_shown(tmp_path: Path) -> None:
    port = free_port()
    src = PrometheusSource(prom_cfg(tmp_path, f"http://{USER}:{PASSWORD}@127.0.0.1:{port}"))
    with pytest.raises(MetricsUnavailable) as err:
        asyncio.run(src.stats())
    assert "unreachable" in str(err.value) and "Connection refused" in str(err.value)
    one_line_without_secrets(str(err.value))
    one_line_without_secrets(repr(src))


def test_token_and_basic_auth_together_is_a_config_error(tmp_path: Path) -> None:
    env = {"CANARY_PROMETHEUS_TOKEN": TOKEN, "CANARY_PROMETHEUS_USER": USER, "CANARY_PROMETHEUS_PASSWORD": PASSWORD}
    with pytest.raises(ConfigError) as err:
        PrometheusSource(make_cfg(tmp_path, env))
    assert "\n" not in str(err.value) and "bearer token or basic auth" in str(err.value)
    one_line_without_secrets(str(err.value))


def test_a_hung_server_times_out(tmp_path: Path, fake: FakeServer) -> None:
    fake.hang = True
    gates = _gates(prom_cfg(tmp_path, fake.url, timeout=0.5))
    t0 = time.monotonic()
    results = asyncio.run(gates.check(CTX))
    assert time.monotonic() - t0 < 5.0, "a query must not outlive its timeout"
    assert {r.verdict for r in results} == {ERROR}
    assert "timed out after 0.5s" in results[0].detail
    # Prometheus is told the budget too
    assert fake.requests[0][1]["timeout"][0].endswith("ms")


def test_unreachable_prometheus(tmp_path: Path) -> None:
    src = build_source(prom_cfg(tmp_path, f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(MetricsUnavailable, match=r"unreachable \(Connection refused\)"):
        asyncio.run(src.stats())


def test_tls_is_verified_by_default(tmp_path: Path) -> None:
    openssl = need_binary("openssl")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True, timeout=60)
    srv = FakeServer(tls=(cert, key))
    try:
        q = build_queries(MetricNames(), 300)
        srv.answer = canned(q)
        with pytest.raises(MetricsUnavailable, match="TLS verification failed"):
            asyncio.run(PrometheusSource(prom_cfg(tmp_path, srv.url)).stats())
        stats = asyncio.run(PrometheusSource(prom_cfg(tmp_path, srv.url, prometheus__verify_tls=False)).stats())
        assert stats.canary.requests == 300
    finally:
        srv.close()


def test_empty_vector_nan_and_inf(tmp_path: Path, fake: FakeServer) -> None:
    cfg = prom_cfg(tmp_path, fake.url)
    q = build_queries(MetricNames(), cfg.rate_window_s)
    gates = _gates(cfg)

    def verdicts(**kw: Any) -> dict[str, Any]:
        fake.answer = canned(q, **kw)
        gates.source._stats = None  # a new read
        return {r.gate: r for r in asyncio.run(gates.check(CTX))}

    healthy = verdicts()
    assert {g: r.verdict for g, r in healthy.items()} == {**dict.fromkeys(healthy, PASS), "rl_loss": INCONCLUSIVE}
    assert healthy["rl_loss"].blocking is False and "not reported" in healthy["rl_loss"].detail

    # no series at all: the source failed (a wrong metric name, or Prometheus scrapes neither app)
    fake.answer = lambda p, qq, h: (200, vector())
    gates.source._stats = None
    r = {x.gate: x for x in asyncio.run(gates.check(CTX))}
    assert r["error_rate"].verdict == ERROR and "empty vector" in r["error_rate"].detail

    # zero traffic: 0/0 is no data, not a failure
    r = verdicts(requests=0, ratio="NaN", p95="NaN")
    assert r["error_rate"].verdict == INCONCLUSIVE and r["p95_latency.fast"].verdict == INCONCLUSIVE

    # NaN or Inf where a number is expected: that gate is ERROR, the others still judge
    r = verdicts(ratio="NaN")
    assert r["error_rate"].verdict == ERROR and "NaN" in r["error_rate"].detail
    assert r["p95_latency.fast"].verdict == PASS
    r = verdicts(p95="+Inf")
    assert r["p95_latency.fast"].verdict == ERROR and r["error_rate"].verdict == PASS
    r = verdicts(rl="NaN")
    assert r["rl_loss"].verdict == ERROR


def test_calls_within_half_a_second_share_one_read(tmp_path: Path, fake: FakeServer) -> None:
    cfg = prom_cfg(tmp_path, fake.url)
    q = build_queries(MetricNames(), cfg.rate_window_s)
    fake.answer = canned(q)
    clock = FakeClock()
    src = PrometheusSource(cfg, clock=clock)

    async def main() -> None:
        a = await src.snapshot()
        b, c = await asyncio.gather(src.snapshot(), src.snapshot())
        assert a is b is c and len(fake.queries()) == 5
        clock.advance(0.6)
        await src.snapshot()
        assert len(fake.queries()) == 10
        s1, s2 = await asyncio.gather(src.stats(), src.stats())
        assert s1 is s2 and len(fake.queries()) == 15

    asyncio.run(main())
    assert set(fake.queries()[:5]) == {q.c_requests, q.c_errors, q.c_schema, q.c_buckets, q.c_rl_loss}


def test_the_promql_is_the_seeds() -> None:
    q = build_queries(MetricNames(), 300)
    assert q.p95 == ('histogram_quantile(0.95, sum by (version, mode, le) '
                     '(rate(http_request_duration_seconds_bucket{version=~"production|canary"}[300s])))')
    assert 'rate(http_requests_total{version=~"production|canary",status=~"5.."}[300s])' in q.error_ratio
    assert q.error_ratio.endswith('/ sum by (version) (rate(http_requests_total{version=~"production|canary"}[300s]))')
    assert "increase(llm_brief_schema_failures_total" in q.schema_failures
    renamed = build_queries(MetricNames(requests_total="app_requests", version_label="track", canary='can"ary.v2'), 60)
    assert 'app_requests{track=~"production|can\\"ary\\\\.v2"' in renamed.requests


# --------------------------------------------------------------------------- scrape source failures


def scrape_cfg(tmp_path: Path, prod: str, canary: str, **over: Any) -> Any:
    return make_cfg(tmp_path, scrape__production=prod, scrape__canary=canary, scrape__timeout=over.pop("timeout", 2.0),
                    metrics__source="scrape", **over)


EXPOSITION = """# TYPE http_requests_total counter
http_requests_total{{version="{v}",status="200",mode="fast"}} {n}
http_requests_total{{version="{v}",status="500",mode="fast"}} {e}
# TYPE llm_brief_schema_failures_total counter
llm_brief_schema_failures_total{{version="{v}"}} 0
"""


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, b"<html>not metrics</html>", "malformed metrics text"),
        (500, b"oops", "HTTP 500"),
    ],
)
def test_scrape_failures_are_one_line(tmp_path: Path, fake: FakeServer, status: int, body: bytes, expected: str) -> None:
    fake.answer = lambda p, q, h: (status, body)
    src = ScrapeSource(scrape_cfg(tmp_path, fake.url + "/p", fake.url + "/c"), autostart=False)
    with pytest.raises(MetricsUnavailable) as err:
        asyncio.run(src.stats())
    assert expected in str(err.value) and "\n" not in str(err.value) and "scrape canary" in str(err.value)


def test_scrape_hung_and_unreachable(tmp_path: Path, fake: FakeServer) -> None:
    fake.hang = True
    src = ScrapeSource(scrape_cfg(tmp_path, fake.url + "/p", fake.url + "/c", timeout=0.5), autostart=False)
    with pytest.raises(MetricsUnavailable, match="timed out after 0.5s"):
        asyncio.run(src.stats())
    src = ScrapeSource(scrape_cfg(tmp_path, fake.url, f"http://127.0.0.1:{free_port()}/metrics"), autostart=False)
    with pytest.raises(MetricsUnavailable, match=r"unreachable \(.*refused"):
        asyncio.run(src.stats())


def test_production_down_is_a_note_not_a_failure(tmp_path: Path, fake: FakeServer) -> None:
    clock = FakeClock(start=100.0)
    state = {"n": 0}

    def answer(path: str, q: Any, h: Any) -> tuple[int, bytes]:
        if path == "/p":
            return 503, b"down"
        state["n"] += 50
        return 200, EXPOSITION.format(v="canary", n=state["n"], e=0).encode()

    fake.answer = answer
    src = ScrapeSource(scrape_cfg(tmp_path, fake.url + "/p", fake.url + "/c", metrics__rate_window="60s"),
                       clock=clock, autostart=False)

    async def main() -> Any:
        first = await src.stats()
        assert first.canary.requests == 0 and any("warming up" in n for n in first.notes)
        clock.advance(1.0)
        return await src.stats()

    stats = asyncio.run(main())
    assert stats.production is None and stats.canary.requests > 0 and stats.canary.error_ratio == 0.0
    assert any("production scrape failed: HTTP 503" in n for n in stats.notes)


def test_scrape_memory_is_bounded_by_the_window(tmp_path: Path) -> None:
    cfg = scrape_cfg(tmp_path, "http://127.0.0.1:9/p", "http://127.0.0.1:9/c", metrics__rate_window="10s")
    src = ScrapeSource(cfg, clock=FakeClock(), autostart=False, interval=1.0)
    for i in range(500):
        src.ingest("canary", float(i), EXPOSITION.format(v="canary", n=i * 10, e=i))
    # the window (10 s) plus two intervals of slack, at one scrape per second
    assert len(src._store["canary"]) <= 13
    capped = ScrapeSource(scrape_cfg(tmp_path, "http://127.0.0.1:9/p", "http://127.0.0.1:9/c", metrics__rate_window="1h"),
                          clock=FakeClock(), autostart=False, maxlen=50)
    for i in range(500):
        capped.ingest("canary", float(i), EXPOSITION.format(v="canary", n=i, e=0))
    assert len(capped._store["canary"]) == 50
    stats = src.stats_at(499.0)
    assert stats.canary.error_ratio == pytest.approx(1 / 11)  # 10 ok for every 5xx and math.isfinite(stats.canary.requests)


def test_a_nan_or_inf_request_count_is_an_error_never_no_data(tmp_path: Path, fake: FakeServer) -> None:
    """docs/gates.md "which failure is which": a NaN/Inf answer is a source error (ERROR, so
    on_metrics_unavailable applies), never INCONCLUSIVE "no data"; on each source."""
    cfg = prom_cfg(tmp_path, fake.url)
    q = build_queries(MetricNames(), cfg.rate_window_s)
    gates = _gates(cfg)
    for bad in ("NaN", "+Inf"):
        fake.answer = canned(q, requests=bad)
        gates.source._stats = None
        r = {x.gate: x for x in asyncio.run(gates.check(CTX))}
        assert r["error_rate"].verdict == ERROR and "request count" in r["error_rate"].detail, r["error_rate"]
        assert r["p95_latency.fast"].verdict == ERROR and r["schema_failures"].verdict == ERROR

    clock = FakeClock(start=100.0)
    fake.answer = lambda p, qq, h: (200, EXPOSITION.format(v="canary" if p == "/c" else "production", n="NaN", e=0).encode())
    src = ScrapeSource(scrape_cfg(tmp_path, fake.url + "/p", fake.url + "/c", metrics__rate_window="60s"),
                       clock=clock, autostart=False)
    sg = MetricGates(scrape_cfg(tmp_path, fake.url + "/p", fake.url + "/c", metrics__rate_window="60s"), src)

    async def main() -> list[Any]:
        await src.stats()
        clock.advance(1.0)
        src._stats = None
        return await sg.check(CTX)

    r = {x.gate: x for x in asyncio.run(main())}
    assert r["error_rate"].verdict == ERROR, r["error_rate"]
