"""The CLI against a real nginx on loopback with real HTTP backends: bad input, dry run,
one driver, interrupt, kill -9 and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from console.core.journal import read_records
from tests.fixtures.nginx import write_canary_toml
from tests.fixtures.real import wait_for

CLI = str(Path(sys.executable).parent / "canary-console")


def run(cfg: Path, *args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, "--config", str(cfg), *args], capture_output=True, text=True, timeout=timeout, **kw)


def journal(cfg_path: Path) -> list[dict]:
    return list(read_records(cfg_path.parent / ".canary" / "journal.jsonl"))



@pytest.fixture
def cfg(tmp_path, nginx_env):
    return write_canary_toml(tmp_path / "canary.toml", nginx_env, metrics={"source": "none"},
                             rollout={"observation_period": 1.0, "check_interval": 0.25})


def snapshot(nginx_env, cfg):
    jp = cfg.parent / ".canary" / "journal.jsonl"
    return nginx_env.upstream_file.read_bytes(), nginx_env.served_generation(), jp.read_bytes() if jp.exists() else b""


@pytest.mark.parametrize("arg", ["-1", "101", "5%", "abc", "2.55", "100.5", ""])
def test_bad_weight_exits_2_with_one_line_and_changes_nothing(cfg, nginx_env, arg):
    before = snapshot(nginx_env, cfg)
    r = run(cfg, "weights", arg) if arg != "-1" else run(cfg, "weights", "--", arg)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "0..100" in lines[0], r.stderr
    assert snapshot(nginx_env, cfg) == before


@pytest.mark.parametrize(
    "section, body, needle",
    [
        ("rollout", "stages = [1, 50, 25, 100]", "strictly increasing"),
        ("rollout", "stages = [1, 5, 25]", "ending at 100"),
        ("rollout", "colour = \"red\"", "unknown key [rollout] colour"),
        ("nginx", "upstream_file = \"/nonexistent/dir/upstream.conf\"", "does not exist"),
    ],
)
def test_bad_config_exits_2_naming_key_and_file(tmp_path, cfg, nginx_env, section, body, needle):
    bad = tmp_path / "bad.toml"
    bad.write_text(f"[{section}]\n{body}\n")
    before = snapshot(nginx_env, cfg)
    r = run(bad, "weights", "5")
    assert r.returncode == 2
    line = r.stderr.strip()
    assert "\n" not in line and needle in line and str(bad) in line
    assert snapshot(nginx_env, cfg) == before


def test_weights_0_and_100_are_exact_as_soon_as_the_command_returns(cfg, nginx_env):
    assert run(cfg, "weights", "100").returncode == 0
    s = nginx_env.send(300)
    assert (s.production, s.canary) == (0, 300)
    assert run(cfg, "weights", "0").returncode == 0
    s = nginx_env.send(300)
    assert (s.production, s.canary) == (300, 0)
    recs = [r for r in journal(cfg) if r["event"].startswith("router")]
    assert [(r["event"], r["weight"]) for r in recs] == [("router_intent", 100), ("router_applied", 100),
                                                         ("router_intent", 0), ("router_applied", 0)]


def test_status_json_reports_the_weight_from_the_file(cfg, nginx_env):
    assert run(cfg, "weights", "25").returncode == 0
    out = json.loads(run(cfg, "status", "--json").stdout)
    assert out["canary_weight"] == 25 and isinstance(out["canary_weight"], int)
    assert out["health"]["canary"]["ok"] is True


def test_dry_run_touches_nothing(cfg, nginx_env):
    before_file, before_gen, _ = snapshot(nginx_env, cfg)
    mtime = nginx_env.upstream_file.stat().st_mtime_ns
    r = run(cfg, "deploy", "--version", "v0.2.0", "--dry-run", "--headless", "--observation-period", "0.3")
    assert r.returncode == 0, r.stderr
    assert "(dry run)" in r.stdout and "100%" in r.stdout
    assert nginx_env.upstream_file.read_bytes() == before_file and nginx_env.upstream_file.stat().st_mtime_ns == mtime
    assert nginx_env.served_generation() == before_gen
    assert nginx_env.send(200).canary == 0
    assert all(r["dry_run"] for r in journal(cfg))


def test_headless_deploy_reaches_100_with_real_nginx(cfg, nginx_env):
    r = run(cfg, "deploy", "--version", "v0.2.0", "--headless", "--json")
    assert r.returncode == 0, r.stderr
    events = [json.loads(line)["event"] for line in r.stdout.splitlines()]
    assert events.count("stage_passed") == 3 and events[-1] == "completed"
    assert nginx_env.send(100).canary == 100


@pytest.mark.parametrize("skip_checks", [False, True])
def test_unhealthy_canary_exits_4_and_changes_nothing(cfg, nginx_env, skip_checks):
    """Stopped by the pre-deployment checks, or (skipped) by the engine's own health check."""
    nginx_env.backends.canary.healthy = False
    before = snapshot(nginx_env, cfg)[:2]
    r = run(cfg, "deploy", "--version", "v0.2.0", "--headless", *(["--skip-checks"] if skip_checks else []))
    assert r.returncode == 4, r.stdout + r.stderr
    if skip_checks:
        assert "canary is not healthy before the first stage" in r.stdout
    else:
        assert "pre-deployment check(s) failed; nothing was changed" in r.stderr and "canary" in r.stderr
    assert snapshot(nginx_env, cfg)[:2] == before


def test_bad_version_and_start_stage_exit_2(cfg):
    assert run(cfg, "deploy", "--version", "0.2.0", "--headless").returncode == 2
    r = run(cfg, "deploy", "--version", "v0.2.0", "--start-stage", "10", "--headless")
    assert r.returncode == 2 and "one of the stages [1, 5, 25, 100]" in r.stderr


def _start_deploy(cfg: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([CLI, "--config", str(cfg), "deploy", "--version", "v0.2.0", "--headless", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _stage_started(cfg: Path, weight: int) -> bool:
    return any(r["event"] == "stage_started" and r["weight"] == weight for r in journal(cfg))


def test_second_driver_gets_exit_5_naming_the_holder(cfg, nginx_env):
    p = _start_deploy(cfg, "--observation-period", "60")
    try:
        wait_for(lambda: _stage_started(cfg, 1), what="stage 1")
        before = nginx_env.upstream_file.read_bytes()
        for args in (("weights", "50"), ("rollback",), ("deploy", "--version", "v0.3.0", "--headless")):
            r = run(cfg, *args)
            assert r.returncode == 5, (args, r.stderr)
            line = r.stderr.strip()
            assert "\n" not in line and f"pid {p.pid}" in line and "since" in line and os.environ.get("USER", "") in line
        assert nginx_env.upstream_file.read_bytes() == before
        assert run(cfg, "status").returncode == 0  # status never needs the lock
    finally:
        p.kill()
        p.wait()


def test_sigterm_keeps_traffic_journals_interrupt_and_prints_resume(cfg, nginx_env):
    p = _start_deploy(cfg, "--observation-period", "60")
    try:
        wait_for(lambda: _stage_started(cfg, 1), what="stage 1")
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
    finally:
        p.kill()
    assert p.returncode == 130
    assert "canary-console deploy --version v0.2.0 --resume" in err
    rec = [r for r in journal(cfg) if r["event"] == "interrupted"][0]
    assert rec["weight"] == 1 and rec["signal"] == "SIGTERM"
    assert nginx_env.router().current_weight() == 1
    # an unfinished deployment blocks a fresh deploy, with the exact commands
    r = run(cfg, "deploy", "--version", "v0.2.0", "--headless")
    assert r.returncode == 4 and "--resume" in r.stderr and "canary-console rollback" in r.stderr


def test_kill_9_mid_stage_then_resume_continues_from_the_journaled_stage(cfg, nginx_env):
    p = _start_deploy(cfg, "--observation-period", "60", "--start-stage", "5")
    try:
        wait_for(lambda: _stage_started(cfg, 5), what="stage 5")
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    dep_id = next(r["deployment_id"] for r in journal(cfg) if r["event"] == "deployment_started")
    # the file drifts from the journal (as if the crash came between a write and its record)
    import asyncio

    asyncio.run(nginx_env.router().apply(25, "drift"))
    assert nginx_env.router().current_weight() == 25
    r = run(cfg, "deploy", "--version", "v0.2.0", "--resume", "--headless", "--json")  # no --yes and no tty
    assert r.returncode == 4 and "--yes" in r.stderr
    assert nginx_env.router().current_weight() == 25
    r = run(cfg, "deploy", "--version", "v0.2.0", "--resume", "--yes", "--headless", "--json")
    assert r.returncode == 0, r.stderr
    out = [json.loads(x) for x in r.stdout.splitlines()]
    started = out[0]
    assert started["event"] == "deployment_started" and started["resumed"] and started["deployment_id"] == dep_id
    assert started["start_stage"] == 5
    recon = [x for x in journal(cfg) if x["event"] == "router_intent" and x["reason"].startswith("resume")]
    assert recon and recon[0]["weight"] == 5 and recon[0]["previous_weight"] == 25
    applied = [(x["weight"], ":preflight-" in x["generation"]) for x in out if x["event"] == "router_applied"]
    assert applied == [(5, True), (5, False), (25, False), (100, False)]  # the preflight at the reconciled 5%, then stages
    assert nginx_env.router().current_weight() == 100


def test_help_works_for_every_command():
    from console.commands.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) >= {"deploy", "weights", "rollback", "status", "check", "promote", "history", "replay",
                                "watch", "attach", "demo"}
    r = subprocess.run([CLI, "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "exit codes" in r.stdout
    for name in sub.choices:
        r = subprocess.run([CLI, name, "--help"], capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout.startswith("usage: canary-console " + name), (name, r.stderr)


async def test_history_and_replay_of_a_journal_recorded_by_real_headless_deploys(cfg, nginx_env):
    """One deploy reaches 100%; a second deploy of the same version is rolled back by a failing
    health gate; history and replay read what they journaled."""
    from console.core.state import events_of
    from console.remote.links import ReplayLink
    from console.ui.app import CanaryApp
    from console.ui.testing import screen_text
    from console.ui.testing import wait_for as ui_wait_for

    assert run(cfg, "deploy", "--version", "v0.2.0", "--headless").returncode == 0
    p = _start_deploy(cfg, "--observation-period", "60")
    try:
        wait_for(lambda: sum(r["event"] == "stage_started" for r in journal(cfg)) >= 5, what="second deploy's stage 1")
        nginx_env.backends.canary.healthy = False  # a critical gate breaks
        assert p.wait(timeout=30) == 3
    finally:
        p.kill()
    rows = json.loads(run(cfg, "history", "--json").stdout)
    assert [(r["version"], r["outcome"]) for r in rows] == [("v0.2.0", "at 100%"), ("v0.2.0", "rolled back")]
    assert "health" in rows[1]["reason"] and rows[1]["who"]
    text = run(cfg, "history").stdout
    assert "rolled back at 1/4 (1%)" in text

    dep = rows[1]["id"]
    r = run(cfg, "replay", dep)  # no terminal: the event log
    assert r.returncode == 0 and "ROLLED BACK (automatic) from 1% to 0%" in r.stdout
    events = events_of(read_records(cfg.parent / ".canary" / "journal.jsonl"), dep)
    app = CanaryApp(ReplayLink(events))
    async with app.run_test(size=(80, 24)) as pilot:
        await ui_wait_for(pilot, lambda: "ROLLED BACK" in screen_text(app), what="outcome on screen")
        assert "READ-ONLY replay" in screen_text(app)
        await pilot.press("q")


def test_the_resume_attach_offers_is_exactly_deploy_resume(monkeypatch):
    from console.commands import deploy
    from console.commands.cli import build_parser

    seen = []
    monkeypatch.setattr(deploy, "run", lambda args, cfg: seen.append(vars(args)) or 0)
    assert deploy.resume(object(), "v0.2.0") == 0
    parsed = vars(build_parser().parse_args(["deploy", "--version", "v0.2.0", "--resume"]))
    parsed = {k: v for k, v in parsed.items() if k not in ("command", "config")}
    assert seen == [parsed]
