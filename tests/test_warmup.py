"""``[rollout] warmup_requests``: the guide's "warm up canary" before stage 1.

Real components: two demo-service processes (they count their own requests), a real nginx in
front of them, a real Prometheus scraping both every second, the engine `deploy --headless`
builds (run in process, tests.fixtures.real.run_engine) with the real HttpWarmer.  The warm-up
reaches the canary only (production's counter and nginx's access log do not move), and the
gates' and the analysis' sample sizes leave it out although the rate window reaches back over it.
Unit tests on the FakeClock: the order (after the prechecks, before any traffic moves), the
failure path (exit 4, nothing changed), the dry run, and the config's one-line errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from console.core import events as ev
from console.core.clock import FakeClock
from console.core.config import ConfigError, load_config
from console.core.engine import Engine, Settings
from console.core.events import PASS, GateResult, Operator
from console.core.exits import ExitCode
from console.core.fakes import FakeHealth, FakeRouter, FakeWarmer, ScriptedChecker
from console.core.journal import Journal, read_records
from tests.fixtures.demo_services import start_demo_service
from tests.fixtures.nginx import start_nginx_env, write_canary_toml
from tests.fixtures.prometheus import LocalPrometheus
from tests.fixtures.real import free_port, gate_of, journal_summary, need_binary, run_engine

OP = Operator("alice", "10.0.0.7")
WARMUP = 100


# --------------------------------------------------------------------------- unit: the engine on a FakeClock


def make(tmp_path: Path, warmer: FakeWarmer | None, clock: FakeClock, **settings: Any):
    s = Settings(stages=[1, 100], observation_period=60, check_interval=15, canary_health_url="http://canary/health",
                 warmup_requests=settings.pop("warmup_requests", 50), **settings)
    checker = ScriptedChecker(lambda ctx: [GateResult("error_rate", PASS, value=0.0, threshold=0.005, samples=100)])
    eng = Engine(s, version="v0.2.0", router=FakeRouter(), journal=Journal(tmp_path / "j.jsonl"), clock=clock,
                 checkers=[checker], health=FakeHealth(), operator=OP, warmer=warmer)
    seen: list[ev.Event] = []
    eng.add_listener(seen.append)
    return eng, seen, checker


def notes(seen: list[ev.Event], prefix: str) -> list[ev.Note]:
    return [e for e in seen if isinstance(e, ev.Note) and e.message.startswith(prefix)]


async def test_the_warm_up_runs_after_the_prechecks_and_before_any_traffic_moves(tmp_path: Path) -> None:
    clock = FakeClock()
    warmer = FakeWarmer(clock, per_request=0.5)  # 50 requests: 25 s of a long wait
    eng, seen, checker = make(tmp_path, warmer, clock)
    assert await eng.run() == ExitCode.OK
    assert warmer.calls == [50] and warmer.closed is False
    kinds = [e.kind for e in seen]
    done = seen.index(notes(seen, "warm-up done")[0])
    preflight = next(i for i, e in enumerate(seen) if isinstance(e, ev.RouterApplied))
    first_move = next(i for i, e in enumerate(seen) if isinstance(e, ev.RouterIntent) and e.weight > 0)
    assert kinds.index("router_intent") < preflight < seen.index(notes(seen, "warm-up: sending")[0]) < done < first_move
    assert notes(seen, "canary healthy")  # the health precheck came first
    # progress while it runs: every tenth of it, each with the counts
    progress = notes(seen, "warm-up: ")[1:]
    assert [n.data["warmup"]["sent"] for n in progress] == [5, 10, 15, 20, 25, 30, 35, 40, 45, 50]
    assert progress[-1].message == "warm-up: 50 of 50 sent, 50 ok, 0 failed"
    d = notes(seen, "warm-up done")[0]
    assert d.data["warmup"] == {"requested": 50, "sent": 50, "ok": 50, "failed": 0, "seconds": 25.0, "first_error": "",
                                "settled": ""}
    assert "50 of 50 ok" in d.message and "count only what comes after it" in d.message
    # every check's window starts after the warm-up: the checkers are told when it ended
    assert checker.contexts and {c.samples_since for c in checker.contexts} == {25.0}


async def test_progress_is_noted_at_least_every_five_seconds_of_a_slow_warm_up(tmp_path: Path) -> None:
    clock = FakeClock()
    eng, seen, _ = make(tmp_path, FakeWarmer(clock, per_request=3.0), clock, warmup_requests=100)
    assert await eng.run() == ExitCode.OK
    assert [n.data["warmup"]["sent"] for n in notes(seen, "warm-up: ")[1:]] == list(range(2, 101, 2))  # every 6 s


async def test_a_failed_warm_up_stops_before_anything_moves_with_one_line(tmp_path: Path) -> None:
    clock = FakeClock()
    warmer = FakeWarmer(clock, per_request=0.1, fail_first=50)
    eng, seen, checker = make(tmp_path, warmer, clock)
    assert await eng.run() == ExitCode.PRECONDITION == 4
    (failed,) = [e for e in seen if isinstance(e, ev.Failed)]
    assert failed.reason.startswith("warm-up failed: 26 of 26 requests straight to the canary failed "
                                    "(no answer (Connection refused))"), failed.reason
    assert "nothing was changed" in failed.reason and "warmup_requests = 0" in failed.reason
    assert "\n" not in failed.reason
    assert eng.router.applied == [] and eng.router.weight == 0  # only the preflight, which moves nothing
    assert not [e for e in seen if isinstance(e, ev.RouterIntent) and e.weight > 0]
    assert checker.contexts == []  # no stage, no check


async def test_a_warm_up_with_a_few_failures_passes(tmp_path: Path) -> None:
    clock = FakeClock()
    eng, seen, _ = make(tmp_path, FakeWarmer(clock, fail_first=25, error="HTTP 503"), clock)
    assert await eng.run() == ExitCode.OK  # 25 of 50 failed: not most of them
    assert "25 of 50 ok, 25 failed" in notes(seen, "warm-up done")[0].message


async def test_a_dry_run_says_what_it_would_send_and_sends_nothing(tmp_path: Path) -> None:
    clock = FakeClock()
    warmer = FakeWarmer(clock)
    eng, seen, checker = make(tmp_path, warmer, clock, dry_run=True)
    assert await eng.run() == ExitCode.OK
    assert warmer.calls == []
    (n,) = notes(seen, "dry run: the warm-up would send")
    assert n.message == ("dry run: the warm-up would send 50 POST http://canary.test/api/generate, straight to the "
                         "canary; nothing was sent")
    assert {c.samples_since for c in checker.contexts} == {0.0}


async def test_no_warm_up_when_off_or_resumed_past_stage_1(tmp_path: Path) -> None:
    clock = FakeClock()
    warmer = FakeWarmer(clock)
    eng, seen, _ = make(tmp_path, warmer, clock, warmup_requests=0)
    assert await eng.run() == ExitCode.OK
    assert warmer.calls == [] and not notes(seen, "warm-up")


async def test_a_rollback_during_the_warm_up_is_taken_at_once(tmp_path: Path) -> None:
    clock = FakeClock()
    eng, seen, _ = make(tmp_path, FakeWarmer(clock, per_request=1.0), clock)
    clock.at(10.0, lambda: eng.submit(ev.Intent("rollback", operator=OP, reason="not today")))
    assert await eng.run() == ExitCode.ROLLED_BACK
    assert clock.t <= 11 and eng.router.applied == [0]  # 0% confirmed; no stage ever moved traffic
    assert not notes(seen, "warm-up done")


# --------------------------------------------------------------------------- config


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "canary.toml"
    p.write_text(text)
    (tmp_path / "nginx" / "conf.d").mkdir(parents=True, exist_ok=True)
    return p


def test_the_defaults_are_off_with_the_guides_request(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ""), environ={})
    r = cfg["rollout"]
    assert r["warmup_requests"] == 0 and r["warmup_method"] == "POST" and r["warmup_path"] == "/api/generate"
    assert json.loads(r["warmup_bodies"][0]) == {"mode": "fast", "notes": ["citrus", "floral"]}
    from console.wiring import build_warmer

    assert build_warmer(cfg) is None
    on = load_config(write(tmp_path, "[rollout]\nwarmup_requests = 50\n"), environ={})
    w = build_warmer(on)
    assert w is not None and w.describe(50) == ("50 POST http://localhost:8001/api/generate with 1 JSON body, "
                                                "straight to the canary")


@pytest.mark.parametrize(("toml", "needle"), [
    ("warmup_requests = -1", "[rollout] warmup_requests = -1 is not valid; allowed: an integer >= 0"),
    ("warmup_requests = 1.5", "[rollout] warmup_requests = 1.5 is not valid; allowed: an integer >= 0"),
    ("warmup_requests = 1000000", "warmup_requests = 1000000 is not valid; allowed: an integer from 0 (off) to 100000"),
    ('warmup_method = "PUT"', "[rollout] warmup_method = 'PUT' is not valid; allowed: POST or GET"),
    ('warmup_path = "api/generate"', "warmup_path = 'api/generate' is not valid; allowed: an absolute path"),
    ('warmup_path = "/a b"', "warmup_path = '/a b' is not valid; allowed: an absolute path"),
    ("warmup_bodies = ['{\"mode\": ']", "warmup_bodies number 1 = '{\"mode\": ' is not JSON; allowed: JSON texts"),
    ('warmup_bodies = "{}"', "[rollout] warmup_bodies = '{}' is not valid; allowed: a list of strings"),
])
def test_a_bad_warm_up_setting_is_one_line_naming_it(tmp_path: Path, toml: str, needle: str) -> None:
    p = write(tmp_path, f"[rollout]\n{toml}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, environ={})
    assert needle in str(e.value) and "\n" not in str(e.value) and str(p) in str(e.value)


def test_a_warm_up_needs_the_canarys_own_address(tmp_path: Path) -> None:
    p = write(tmp_path, '[rollout]\nwarmup_requests = 5\n[health]\ncanary_url = ""\n')
    with pytest.raises(ConfigError, match=r"warmup_requests = 5 needs \[health\] canary_url"):
        load_config(p, environ={})


# --------------------------------------------------------------------------- real: an unreachable canary


def test_an_unreachable_canary_stops_the_real_warm_up_in_seconds(tmp_path: Path) -> None:
    from console.adapters.warmup import HttpWarmer

    port = free_port()  # nothing listens there
    w = HttpWarmer(f"http://127.0.0.1:{port}/api/generate", "POST", ["{}"], timeout=2.0)
    seen: list[tuple[int, int, int]] = []

    async def go() -> Any:
        try:
            return await w.warm(50, lambda *a: seen.append(a))
        finally:
            await w.aclose()

    res = asyncio.run(go())
    assert not res.passed and res.ok == 0 and 26 <= res.sent <= 29 and res.sent == res.failed  # stopped early
    assert res.first_error == "no answer (Connection refused)" and res.seconds < 5
    assert seen[-1] == (res.sent, 0, res.failed)


# --------------------------------------------------------------------------- real: nginx, Prometheus, two services


def metric_total(url: str, version: str) -> float:
    """The service's own http_requests_total for ``version`` (its /metrics, every status and mode)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=5.0) as r:
        text = r.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "http_requests_total" and s.labels.get("version") == version)


def generate_lines(log: Path, upstream: str) -> list[str]:
    text = log.read_text() if log.exists() else ""
    return [ln for ln in text.splitlines() if "/api/generate" in ln and f"upstream={upstream}" in ln]


REQUESTS_QUERY = 'sum(increase(http_requests_total{version="$version"}[$window]))'


@pytest.mark.slow
@pytest.mark.real
def test_the_warm_up_reaches_the_canary_only_and_the_gates_samples_leave_it_out(tmp_path: Path) -> None:
    """With a 30 s rate window that reaches back over the warm-up, every check of the 50% stage
    counts only the canary requests nginx sent it, in the metric gates, the custom gates and
    the analysis."""
    need_binary("nginx")
    prom_bin = need_binary("prometheus")
    from console.sandbox.traffic import BackgroundTraffic

    with contextlib.ExitStack() as stack:
        prod = start_demo_service(tmp_path / "logs", "production", "0.1.0")
        stack.callback(prod.stop)
        canary = start_demo_service(tmp_path / "logs", "canary", "0.2.0")
        stack.callback(canary.stop)
        backends = SimpleNamespace(production=SimpleNamespace(address=prod.address, url=prod.url),
                                   canary=SimpleNamespace(address=canary.address, url=canary.url))
        env = start_nginx_env(tmp_path, backends)  # type: ignore[arg-type]  # duck-typed Backends
        stack.callback(env.nginx.stop)
        prom = LocalPrometheus(prom_bin, tmp_path / "prometheus", [prod.address, canary.address])
        stack.callback(prom.stop)
        prom.start().wait_targets_up()
        toml = write_canary_toml(
            tmp_path / "canary.toml", env,
            rollout={"stages": [50, 100], "observation_period": 6.0, "check_interval": 1.0, "warmup_requests": WARMUP,
                     "warmup_bodies": ['{"mode": "fast", "notes": ["citrus"]}', '{"mode": "creative", "notes": ["oud"]}']},
            metrics={"source": "prometheus", "rate_window": "30s", "min_requests": 1, "query_timeout": 3.0},
            prometheus={"url": prom.url}, gates={"split": False},
        )
        with open(toml, "a") as f:  # a custom gate counts the canary's requests in its $window
            f.write(f"\n[[gates.custom]]\nname = \"requests\"\nquery = {json.dumps(REQUESTS_QUERY)}\n"
                    "compare = \">=\"\nthreshold = 0\n")
        cfg = load_config(toml, environ={})
        before = {"production": metric_total(prod.metrics_url, "production"),
                  "canary": metric_total(canary.metrics_url, "canary")}
        at_done: dict[str, Any] = {}
        traffic: list[BackgroundTraffic] = []
        first_check: dict[str, Any] = {}

        def listener(e: ev.Event) -> None:
            if isinstance(e, ev.Note) and e.message.startswith("warm-up done"):
                at_done.update(production=metric_total(prod.metrics_url, "production"),
                               canary=metric_total(canary.metrics_url, "canary"),
                               log=generate_lines(env.access_log, canary.address), note=e)
            if isinstance(e, ev.StageStarted) and e.weight == 50:  # traffic through nginx from stage 1 on
                bg = BackgroundTraffic(env.url, rps=3.0, seed=7, max_seconds=60, drain=2.0, timeout=5.0)
                traffic.append(bg)
                stack.callback(bg.stop)
                bg.start()
            if isinstance(e, ev.CheckCompleted) and not first_check:
                # the full rate window, asked of Prometheus directly, still holds the warm-up
                q = 'sum(increase(http_requests_total{version="canary"}[30s]))'
                first_check["full_window"] = float(prom.query(q)[0]["value"][1])

        code = run_engine(cfg, [listener])
        for bg in traffic:
            bg.stop()
        records = list(read_records(cfg.journal_path))
        assert code == ExitCode.OK, journal_summary(records)
        # the warm-up reached the canary only, straight: production's counter and nginx's log did not move
        assert at_done["canary"] - before["canary"] == WARMUP
        assert at_done["production"] == before["production"]
        assert at_done["log"] == []
        done = at_done["note"].data["warmup"]
        assert done["ok"] == WARMUP and done["failed"] == 0 and f"the metric source counted all {WARMUP}" in done["settled"]
        # afterwards the canary got only what nginx sent it
        via_nginx = len(generate_lines(env.access_log, canary.address))
        assert metric_total(canary.metrics_url, "canary") - before["canary"] == WARMUP + via_nginx
        assert via_nginx > 0
        checks = [r for r in records if r["event"] == "check" and r["weight"] == 50]
        assert checks, journal_summary(records)
        assert first_check["full_window"] >= WARMUP  # what the gates would have counted without the cut
        for c in checks:
            err = gate_of(c, "error_rate")
            # extrapolation to the window's ends may add a little, never the warm-up's
            assert err["samples"] <= via_nginx + 3 < WARMUP, (err, via_nginx, journal_summary(records, verbose=True))
            seq = gate_of(c, "seq.errors")
            assert seq["extra"]["canary_requests"] <= via_nginx, (seq, via_nginx)
            custom = gate_of(c, "custom.requests")  # a custom gate's $window is cut at the warm-up too
            assert custom["value"] is None or custom["value"] <= via_nginx + 3, (custom, via_nginx)
        assert gate_of(checks[-1], "error_rate")["samples"] >= 1
        n = [gate_of(c, "error_rate")["samples"] for c in checks]
        windows = [gate_of(c, "error_rate")["window"] for c in checks]
        seq_n = [gate_of(c, "seq.errors")["extra"]["canary_requests"] for c in checks]
        custom_n = [gate_of(c, "custom.requests")["value"] for c in checks]
        print(f"warm-up {WARMUP} ({done['settled']}); canary via nginx {via_nginx}; full 30s window at the first "
              f"check {first_check['full_window']:.1f}; gate n per check {n} windows {windows}; seq canary_requests {seq_n}; "
              f"custom.requests {custom_n}")
        assert gate_of(checks[0], "error_rate")["window"] != "30s"  # the window it judged, cut at the warm-up
        assert gate_of(checks[0], "custom.requests")["window"] != "30s"
        assert gate_of(checks[0], "custom.requests")["extra"]["query"].endswith("ms]))")
