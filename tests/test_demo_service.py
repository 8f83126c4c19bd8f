"""The demo service's contract, as real processes (uvicorn on loopback), and the traffic generator."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from console.sandbox.service import BUCKETS, MODES, Faults, Settings, apply_fault_update, build_app, parse_args
from console.sandbox.traffic import BackgroundTraffic, TrafficGenerator
from tests.fixtures.demo_services import REPO, DemoService, http_json
from tests.fixtures.real import port_listening


def samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page: (name, sorted labels) -> value."""
    text = httpx.get(url, timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def value(page: dict, name: str, **labels: str) -> float | None:
    return page.get((name, tuple(sorted(labels.items()))))


# --------------------------------------------------------------------------- the HTTP contract


def test_health_has_the_seeds_shape(demo_services: Callable[..., DemoService]) -> None:
    canary = demo_services("canary", "0.2.0")
    status, body = http_json("GET", canary.health_url)
    assert status == 200
    assert set(body) == {"status", "version", "deployment", "llm_ensemble", "timestamp"}
    assert body["status"] == "healthy" and body["version"] == "0.2.0" and body["deployment"] == "canary"
    assert body["llm_ensemble"] == {"enabled": True, "models": ["gpt-3.5-turbo", "claude-3-haiku", "gemini-pro"]}
    assert datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00")).tzinfo is not None


def test_generate_answers_an_llm_brief_and_rejects_bad_input(demo_services: Callable[..., DemoService]) -> None:
    svc = demo_services("production", "0.1.0")
    status, body = svc.generate("creative", ["rose", "cedar"])
    assert status == 200
    brief = body["llm_brief"]
    assert brief["notes"] == ["rose", "cedar"] and brief["families"] == ["floral", "woody"] and brief["description"]
    assert body["deployment"] == "production" and body["version"] == "0.1.0" and body["mode"] == "creative"

    status, body = http_json("POST", f"{svc.url}/api/generate", {"mode": "turbo", "notes": []})
    assert status == 400 and "turbo" in body["error"] and "fast, balanced, creative" in body["error"]
    status, body = http_json("POST", f"{svc.url}/api/generate", {"mode": "fast", "notes": "rose"})
    assert status == 400 and "notes" in body["error"]
    status, cfg = http_json("GET", f"{svc.url}/api/config")
    assert status == 200 and cfg["modes"] == list(MODES) and cfg["deployment"] == "production"


def test_metrics_follow_the_contract(demo_services: Callable[..., DemoService]) -> None:
    svc = demo_services("canary")
    for mode in ("fast", "fast", "balanced"):
        assert svc.generate(mode)[0] == 200
    page = samples(svc.metrics_url)
    assert value(page, "http_requests_total", version="canary", status="200", mode="fast") == 2
    assert value(page, "http_requests_total", version="canary", status="200", mode="balanced") == 1
    # every series exists from the start (so rate()/increase() see the first event), at 0
    assert value(page, "http_requests_total", version="canary", status="500", mode="creative") == 0
    assert value(page, "llm_brief_schema_failures_total", version="canary") == 0
    assert value(page, "http_request_duration_seconds_count", version="canary", mode="fast") == 2
    les = sorted(float(dict(k[1])["le"]) for k in page if k[0] == "http_request_duration_seconds_bucket"
                 and dict(k[1])["mode"] == "fast")
    assert les == list(BUCKETS)
    assert not [k for k in page if k[0] == "rl_training_loss"], "no RL loss unless RL training reports one"


def test_error_rate_is_exact_and_counted_as_5xx(demo_services: Callable[..., DemoService]) -> None:
    svc = demo_services("canary", args=["--error-rate", "0.25"])
    statuses = [svc.generate("balanced")[0] for _ in range(40)]
    assert statuses.count(500) == 10 and statuses.count(200) == 30
    page = samples(svc.metrics_url)
    assert value(page, "http_requests_total", version="canary", status="500", mode="balanced") == 10
    assert value(page, "http_request_duration_seconds_count", version="canary", mode="balanced") == 40


def test_faults_change_at_run_time(demo_services: Callable[..., DemoService]) -> None:
    svc = demo_services("canary", args=["--rl-loss", "0.4"])
    assert value(samples(svc.metrics_url), "rl_training_loss", version="canary") == 0.4

    svc.faults(latency={"fast": 0.3})
    t0 = time.monotonic()
    assert svc.generate("fast")[0] == 200
    assert time.monotonic() - t0 >= 0.3
    page = samples(svc.metrics_url)
    assert value(page, "http_request_duration_seconds_bucket", version="canary", mode="fast", le="0.25") == 0
    assert value(page, "http_request_duration_seconds_bucket", version="canary", mode="fast", le="0.5") == 1

    svc.faults(schema_failures=1, latency=0)
    first, second = svc.generate("fast")[1]["llm_brief"], svc.generate("fast")[1]["llm_brief"]
    assert "description" not in first and "description" in second
    assert value(samples(svc.metrics_url), "llm_brief_schema_failures_total", version="canary") == 1

    svc.faults(unhealthy=True, rl_loss=2.5, metrics_down=True)
    status, body = http_json("GET", svc.health_url)
    assert status == 503 and body["status"] == "unhealthy"
    assert httpx.get(svc.metrics_url, timeout=5).status_code == 503
    svc.faults(metrics_down=False)
    assert value(samples(svc.metrics_url), "rl_training_loss", version="canary") == 2.5
    svc.faults(rl_loss=None)
    assert not [k for k in samples(svc.metrics_url) if k[0] == "rl_training_loss"]

    cleared = svc.faults(clear=True)
    assert cleared["unhealthy"] is False and cleared["latency"] == {} and cleared["rl_loss"] == 0.4
    assert http_json("GET", svc.health_url)[0] == 200
    assert http_json("GET", f"{svc.url}/admin/faults")[1] == cleared


def test_faults_reject_bad_input_with_one_line(demo_services: Callable[..., DemoService]) -> None:
    svc = demo_services("canary")
    for body, word in (({"bogus": 1}, "bogus"), ({"error_rate": 2}, "0..1"), ({"latency": {"warp": 1}}, "latency"),
                       ({"unhealthy": "yes"}, "true or false")):
        status, answer = http_json("POST", f"{svc.url}/admin/faults", body)
        assert status == 400 and word in answer["error"] and "\n" not in answer["error"]
    assert http_json("GET", f"{svc.url}/admin/faults")[1]["error_rate"] == 0.0  # nothing applied


def test_faults_only_from_loopback_without_a_proxy(demo_services: Callable[..., DemoService]) -> None:
    svc = demo_services("canary")
    status, _ = http_json("POST", f"{svc.url}/admin/faults", {"unhealthy": True}, headers={"X-Forwarded-For": "203.0.113.7"})
    assert status == 403
    assert http_json("GET", svc.health_url)[0] == 200

    async def remote() -> int:  # a non-loopback peer cannot be produced on a loopback-only machine: in-process ASGI
        app = build_app(Settings(deployment="canary"))
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://demo") as c:
            return (await c.post("/admin/faults", json={"unhealthy": True})).status_code

    assert asyncio.run(remote()) == 403


def test_one_log_line_per_request_and_clean_sigterm(demo_services: Callable[..., DemoService]) -> None:
    svc = demo_services("canary", "0.2.0")
    svc.generate("fast")
    http_json("GET", svc.health_url)
    httpx.get(svc.metrics_url, timeout=5)
    assert svc.stop() == 0
    assert not port_listening(svc.port)
    lines = svc.log().splitlines()
    assert any("canary 0.2.0 POST /api/generate 200" in ln and "mode=fast" in ln for ln in lines)
    assert any("GET /health 200" in ln for ln in lines)
    assert not any("/metrics" in ln for ln in lines), "scrapes are not logged"
    assert lines[-1].endswith("stopped")


def test_sigterm_during_a_slow_request_still_exits(demo_services: Callable[..., DemoService]) -> None:
    svc = demo_services("canary", args=["--latency", "fast=20"])

    async def slow() -> None:
        async with httpx.AsyncClient(timeout=30) as c:
            await c.post(f"{svc.url}/api/generate", json={"mode": "fast"})

    async def main() -> None:
        task = asyncio.create_task(slow())
        deadline = time.monotonic() + 10
        # wait until the slow request is inside the server
        while value(await asyncio.to_thread(samples, svc.metrics_url), "demo_requests_in_flight") != 1:
            assert time.monotonic() < deadline, "the slow request never reached the server"
            await asyncio.sleep(0.05)
        os.killpg(svc.proc.pid, signal.SIGTERM)
        await asyncio.to_thread(svc.proc.wait, 15)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    assert svc.proc.returncode == 0


def test_flags_and_env() -> None:
    s = parse_args(["--deployment", "canary", "--latency", "fast=3.0,creative=1"],
                   {"DEMO_ERROR_RATE": "0.05", "DEMO_UNHEALTHY": "true", "DEMO_PORT": "8123"})
    assert s.port == 8123 and s.faults.error_rate == 0.05 and s.faults.unhealthy
    assert s.faults.latency == {"fast": 3.0, "creative": 1.0}
    assert parse_args(["--error-rate", "0.1"], {"DEMO_ERROR_RATE": "0.5"}).faults.error_rate == 0.1  # flag wins
    r = subprocess.run([sys.executable, "-m", "console.sandbox.service", "--deployment", "blue"], cwd=REPO,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "--deployment" in r.stderr and "production or canary" in r.stderr


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"error_rate": 0.5}, {"error_rate": 0.5}),
        ({"latency": "fast=1.5"}, {"latency": {"fast": 1.5}}),
        ({"latency": 2}, {"latency": dict.fromkeys(MODES, 2.0)}),
        ({"clear": True}, {"error_rate": 0.0, "latency": {}, "unhealthy": False}),
    ],
)
def test_fault_updates(body: dict, expected: dict) -> None:
    new = apply_fault_update(Faults(error_rate=0.2, latency={"fast": 1.0}, unhealthy=True), body)
    assert {k: getattr(new, k) for k in expected} == expected


# --------------------------------------------------------------------------- the traffic generator


def test_traffic_counts_what_the_service_served(demo_services: Callable[..., DemoService]) -> None:
    svc = demo_services("canary", args=["--error-rate", "0.25"])
    gen = TrafficGenerator(svc.url, rps=200, mix={"fast": 1, "creative": 1}, seed=7)
    st = asyncio.run(gen.run(max_requests=40, duration=30))
    assert st.sent == 40 and st.dropped == 0 and st.failed == 0
    assert st.ok == 30 and st.errors_5xx == 10
    assert sum(st.by_mode.values()) == 40 and set(st.by_mode) <= {"fast", "creative"}
    assert st.by_deployment == {"canary": 30}
    page = samples(svc.metrics_url)
    served = sum(v for (name, _), v in page.items() if name == "http_requests_total")
    assert served == 40


def test_paced_traffic_sends_every_mode_in_turn(demo_services: Callable[..., DemoService]) -> None:
    """The demo's probe on the canary (stack.Probes): as many of each mode as asked, not a draw."""
    svc = demo_services("canary")
    gen = TrafficGenerator(svc.url, rps=200, mix={"fast": 1, "creative": 1, "balanced": 1}, seed=7, paced=True)
    st = asyncio.run(gen.run(max_requests=30, duration=30))
    assert st.sent == 30 and st.ok == 30 and st.by_mode == {"fast": 10, "creative": 10, "balanced": 10}


def test_traffic_bounds_in_flight_requests(demo_services: Callable[..., DemoService]) -> None:
    svc = demo_services("canary", args=["--latency", "0.5"])
    gen = TrafficGenerator(svc.url, rps=200, seed=3, max_in_flight=4, drain=5)
    st = asyncio.run(gen.run(duration=1.0))
    # at most 4 open at a time, each 0.5 s: about 8 answered in 1 s, the other arrivals dropped
    assert st.sent <= 4 * math.ceil(1.0 / 0.5) + 4
    assert st.dropped > 0 and st.failed == 0 and st.ok == st.sent


def test_traffic_needs_a_bound_and_a_valid_mix() -> None:
    with pytest.raises(ValueError, match="bound"):
        asyncio.run(TrafficGenerator("http://127.0.0.1:9", rps=1).run())
    with pytest.raises(ValueError, match="mix"):
        TrafficGenerator("http://127.0.0.1:9", mix={"fast": -1})


def test_background_traffic_stops_and_drains(demo_pair: tuple[DemoService, DemoService]) -> None:
    prod, _ = demo_pair
    with BackgroundTraffic(prod.url, rps=50, seed=1) as bg:
        deadline = time.monotonic() + 10
        while bg.stats.ok < 10 and time.monotonic() < deadline:
            time.sleep(0.05)  # polling interval of a deadline loop
    assert bg.stats.ok >= 10 and bg.stats.failed == 0
    assert bg.stats.by_deployment == {"production": bg.stats.ok}
