"""Stages below 1% (issue 13, item 5): a weight is a percentage with at most one decimal.

Whole weights stay ints everywhere ("5%", JSON 5); only fractional ones are floats (0.1), and
they are written per 1000 (``1000 - 10w`` / ``10w``), so the round-robin split is exact per
1000 requests.  The unit tests need nothing; the ``real`` ones count requests through a real
nginx (2 workers, shared zone) in front of the real backends."""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from dataclasses import astuple
from pathlib import Path

import pytest

from console.adapters.nginx.render import check_weight, header_weight, render_upstream, weight_of
from console.commands.cli import _percent
from console.core import events as ev
from console.core.config import ConfigError, is_weight, load_config, normalize_weight, validate_stages
from console.core.eventfmt import format_event
from console.core.exits import ExitCode
from console.core.journal import read_records
from tests.fixtures.nginx import NginxEnv, write_canary_toml
from tests.fixtures.real import journal_summary, run_engine, shutting_down, wait_for

TENTHS = [t // 10 if t % 10 == 0 else t / 10 for t in range(1001)]  # every weight there is: 0, 0.1, ... 99.9, 100


def cli(cfg: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "console.commands.cli", "--config", str(cfg), *args],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


# --------------------------------------------------------------------------- the helper


def test_normalize_weight_keeps_whole_weights_ints_and_rounds_to_one_decimal() -> None:
    assert normalize_weight(5) == 5 and type(normalize_weight(5)) is int
    assert normalize_weight(5.0) == 5 and type(normalize_weight(5.0)) is int
    assert normalize_weight(0.1) == 0.1 and type(normalize_weight(0.1)) is float
    assert normalize_weight(12.34) == 12.3 and normalize_weight(99.96) == 100
    for w in TENTHS:  # the production side of any weight prints with at most one decimal
        p = normalize_weight(100 - w)
        assert p == round(1000 - w * 10) / 10 and len(str(p).partition(".")[2]) <= 1, (w, p)
        assert normalize_weight(w) == w and type(normalize_weight(w)) is type(w)


@pytest.mark.parametrize("x", [0, 100, 0.1, 12.3, 99.9, 5.0, 50])
def test_is_weight_accepts_percentages_with_at_most_one_decimal(x: float) -> None:
    assert is_weight(x)


@pytest.mark.parametrize("x", [0.15, 0.05, -0.1, 100.1, 101, True, "5", None, float("nan"), float("inf")])
def test_is_weight_refuses_the_rest(x: object) -> None:
    assert not is_weight(x)


@pytest.mark.parametrize("x", [0.15, 5.0, 100.0, -1, 101, True, "0.1", None])
def test_the_router_takes_only_normalised_weights(x: object) -> None:
    with pytest.raises(ValueError, match=r"0\.\.100 with at most one decimal"):
        check_weight(x)


# --------------------------------------------------------------------------- the file


def test_a_fractional_weight_is_rendered_per_1000_and_read_back_exactly() -> None:
    text = render_upstream("u", "a:1", "b:2", 0.1, "g")
    assert "# canary-weight: 0.1\n" in text
    assert "    server a:1 weight=999;\n    server b:2 weight=1;\n" in text
    assert "    server a:1 weight=745;\n    server b:2 weight=255;\n" in render_upstream("u", "a:1", "b:2", 25.5, "g")
    assert "    server a:1 weight=75;\n    server b:2 weight=25;\n" in render_upstream("u", "a:1", "b:2", 25, "g")  # as before
    for w in TENTHS:
        t = render_upstream("u", "a:1", "b:2", w, "g")
        for got in (weight_of(t, "u", "a:1", "b:2"), header_weight(t)):
            assert got == w and type(got) is type(w), (w, got)
        assert f"# canary-weight: {w}\n" in t
    # the sticky split hashes within the same per-1000 weights
    assert "hash $cookie_s;" in render_upstream("u", "a:1", "b:2", 0.1, "g", sticky_key="$cookie_s")


def test_reading_back_a_hand_written_or_foreign_file() -> None:
    hand = "upstream u {\n    server a:1 weight=2;\n    server b:2;\n}\n"
    assert weight_of(hand, "u", "a:1", "b:2") == 33.3  # one decimal now, no longer 33
    ours = render_upstream("u", "x:1", "y:2", 0.1, "g")
    assert weight_of(ours, "u", "a:1", "b:2") is None and header_weight(ours) == 0.1
    assert header_weight(ours.replace("canary-weight: 0.1", "canary-weight: 0.15")) is None
    assert header_weight(ours.replace("canary-weight: 0.1", "canary-weight: 100.5")) is None


# --------------------------------------------------------------------------- the command line and the config


@pytest.mark.parametrize(("text", "want"), [("0.5", 0.5), ("5", 5), ("5.0", 5), ("0", 0), ("100", 100), ("99.9", 99.9)])
def test_the_weights_argument_takes_one_decimal(text: str, want: float) -> None:
    got = _percent(text)
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize("text", ["0.55", "5%", "101", "100.5", ".5", "1e1", "-1", "", "abc", "5."])
def test_the_weights_argument_refuses_the_rest_in_one_line(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as e:
        _percent(text)
    assert "0..100 with at most one decimal" in str(e.value) and "\n" not in str(e.value)


def _toml(tmp_path: Path, stages: str) -> Path:
    (tmp_path / "conf.d").mkdir(exist_ok=True)
    p = tmp_path / "canary.toml"
    p.write_text(f'[rollout]\nstages = {stages}\n[nginx]\nupstream_file = "conf.d/upstream.conf"\n'
                 '[journal]\npath = ".canary/journal.jsonl"\n[metrics]\nsource = "none"\n')
    return p


def test_stages_may_have_one_decimal(tmp_path: Path) -> None:
    cfg = load_config(_toml(tmp_path, "[0.1, 1, 5, 25, 100]"), environ={})
    assert cfg.stages == [0.1, 1, 5, 25, 100] and [type(s) for s in cfg.stages] == [float, int, int, int, int]
    cfg = load_config(_toml(tmp_path, "[0.5, 1.0, 100.0]"), environ={})  # whole ones become ints
    assert cfg.stages == [0.5, 1, 100] and [type(s) for s in cfg.stages] == [float, int, int]
    assert validate_stages([0.1, 99.9, 100], "x") == [0.1, 99.9, 100]


@pytest.mark.parametrize(("stages", "needle"), [
    ("[0.15, 1, 100]", "at most one decimal"),
    ("[0, 1, 100]", "0.1..100"),
    ("[0.1, 0.1, 100]", "strictly increasing"),
    ("[1, 0.5, 100]", "strictly increasing"),
    ("[0.1, 1, 99.9]", "ending at 100"),
    ('["0.1", 1, 100]', "a list of integers (or numbers with at most one decimal"),
])
def test_bad_stages_exit_2_with_one_line_and_change_nothing(tmp_path: Path, stages: str, needle: str) -> None:
    toml = _toml(tmp_path, stages)
    upstream = tmp_path / "conf.d" / "upstream.conf"
    upstream.write_text(render_upstream("fragrance_app", "127.0.0.1:8000", "127.0.0.1:8001", 0, "initial"))
    before = upstream.read_bytes()
    with pytest.raises(ConfigError, match="stages"):
        load_config(toml, environ={})
    for args in (("deploy", "--version", "v0.2.0", "--headless", "--skip-checks"), ("weights", "0.1")):
        r = cli(toml, *args, timeout=60)
        assert r.returncode == ExitCode.USAGE, r.stdout + r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and str(toml) in lines[0] and "[rollout] stages" in lines[0] and needle in lines[0], r.stderr
        assert upstream.read_bytes() == before and not (tmp_path / ".canary").exists()


# --------------------------------------------------------------------------- what people read


def test_fractional_weights_print_as_written() -> None:
    from types import SimpleNamespace

    from console.core.state import fold
    from console.ui import asks
    from console.ui.present import header_info

    events = [ev.DeploymentStarted(deployment_id="d", version="v0.2.0", stages=(0.1, 1, 100)),
              ev.RouterApplied(deployment_id="d", version="v0.2.0", weight=0.1, generation="g", duration_ms=140.0),
              ev.StageStarted(deployment_id="d", version="v0.2.0", index=0, weight=0.1, total=3, observation_period=60)]
    assert "stages [0.1, 1, 100]" in format_event(events[0])
    assert "nginx serves canary 0.1%" in format_event(events[1]) and "0.1% canary" in format_event(events[2])
    s = fold(events)
    head = header_info(SimpleNamespace(state=s, remaining=lambda: None), "driver")  # type: ignore[arg-type]
    assert head.stage == "stage 1/3 0.1%" and head.weight.startswith("canary 0.1%")
    assert "canary 0.1% / production 99.9%  →  canary 1% / production 99%" in asks.advance(s, None).body
    back = fold([*events, ev.StageStarted(deployment_id="d", version="v0.2.0", index=1, weight=1, total=3)])
    assert "→  canary 0.1% / production 99.9%." in asks.step_back(back).body


# --------------------------------------------------------------------------- real nginx, counted requests


@pytest.mark.slow
@pytest.mark.real
def test_at_0_1_percent_10000_requests_give_exactly_10_to_the_canary(nginx_env: NginxEnv) -> None:
    env = nginx_env
    router = env.router()
    asyncio.run(router.apply(0.1, "tenth"))
    assert router.current_weight() == 0.1 and "weight=999;" in env.upstream_file.read_text()
    assert astuple(env.send(10_000)) == (9_990, 10, 0)  # one keep-alive connection: one worker
    wait_for(lambda: shutting_down(env.nginx.pid) == 0, timeout=30, what="the old nginx workers to finish")
    assert astuple(env.send(2_000, fresh=True)) == (1_998, 2, 0)  # a connection each, both workers: the shared zone
    asyncio.run(router.apply(0.5, "half"))
    assert astuple(env.send(1_000)) == (995, 5, 0)


@pytest.mark.real
def test_a_rollout_through_0_1_percent_splits_exactly_at_every_stage(tmp_path: Path, nginx_env: NginxEnv) -> None:
    """The engine as `deploy --headless` builds it; at each stage (inside the engine's emit, so the
    stage waits) status --json and 1000 counted requests."""
    env = nginx_env
    toml = write_canary_toml(tmp_path / "canary.toml", env, metrics={"source": "none"},
                             rollout={"stages": [0.1, 1, 100], "observation_period": 1.0, "check_interval": 0.25})
    cfg = load_config(toml, environ={})
    seen: dict[float, tuple[object, ...]] = {}

    def at_stage(e: ev.Event) -> None:
        if isinstance(e, ev.StageStarted):
            st = json.loads(cli(toml, "status", "--json").stdout)
            split = env.send(1_000)
            seen[e.weight] = (st["canary_weight"], st["production_weight"], st["confirmed"], astuple(split))

    code = run_engine(cfg, [at_stage])
    recs = list(read_records(cfg.journal_path))
    assert code == ExitCode.OK, journal_summary(recs)
    assert seen == {0.1: (0.1, 99.9, True, (999, 1, 0)), 1: (1, 99, True, (990, 10, 0)), 100: (100, 0, True, (0, 1000, 0))}


@pytest.mark.real
def test_deploy_headless_through_0_1_then_weights_0_5(tmp_path: Path, nginx_env: NginxEnv) -> None:
    env = nginx_env
    toml = write_canary_toml(tmp_path / "canary.toml", env, metrics={"source": "none"},
                             rollout={"stages": [0.1, 1, 100], "observation_period": 1.0, "check_interval": 0.25})
    r = cli(toml, "deploy", "--version", "v0.2.0", "--headless", "--skip-checks")
    recs = list(read_records(tmp_path / ".canary" / "journal.jsonl"))
    assert r.returncode == ExitCode.OK, r.stdout + r.stderr + journal_summary(recs)
    applied = [x["weight"] for x in recs if x["event"] == "router_applied"]
    assert applied == [0, 0.1, 1, 100], journal_summary(recs)  # the preflight at 0%, then each stage confirmed
    assert [x["weight"] for x in recs if x["event"] == "stage_started"] == [0.1, 1, 100]
    assert "stage 1/3: 0.1% canary" in r.stdout and "nginx serves canary 0.1%" in r.stdout
    r = cli(toml, "weights", "0.5")
    assert r.returncode == 0 and "canary 0.5% / production 99.5%" in r.stdout, r.stdout + r.stderr
    st = json.loads(cli(toml, "status", "--json").stdout)
    assert (st["canary_weight"], st["production_weight"], st["confirmed"]) == (0.5, 99.5, True)
    assert "traffic:    canary 0.5% / production 99.5%" in cli(toml, "status").stdout
    assert astuple(env.send(2_000)) == (1_990, 10, 0)
