"""The router never loses the traffic (issue 12), with a real nginx, real backends and counted
requests: a preflight before anything moves, a change nginx does not confirm (late, refused, or
interrupted by kill -9) rolls the canary back to 0% or is reconciled, and verification works
with nothing but the include in nginx.conf (verify_listen).

The misbehaving nginx is made by wrapper scripts given as test_command / reload_command (argv
lists, as an operator's would be): one backgrounds the real reload once, late; one refuses
`nginx -t` for one weight."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from console.adapters.nginx import generation_of
from console.core.journal import read_records
from console.core.state import last_applied_weight
from tests.fixtures.nginx import NginxEnv, write_canary_toml
from tests.fixtures.real import REFUSE_TEST, free_port, journal_summary, shutting_down, wait_for

pytestmark = pytest.mark.real

CLI = str(Path(sys.executable).parent / "canary-console")

# Runs the real command; the first time the upstream file routes WEIGHT, it backgrounds the real
# reload DELAY seconds late instead (the late reload this file is about), once.
LATE_RELOAD = r"""
import os, re, subprocess, sys, time
state, upstream, weight, delay, real = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5:]
text = open(upstream).read()
m = re.search(r"^# canary-weight: (\d+)$", text, re.M)
once = os.path.join(state, "armed-once")
if m and m.group(1) == weight and not os.path.exists(once):
    open(once, "w").close()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.setsid()  # a group of its own first: the test kills it with killpg(late.pid)
        os.write(w, b"1")
        fd = os.open(os.devnull, os.O_RDWR)
        for i in (0, 1, 2):
            os.dup2(fd, i)
        time.sleep(delay)
        subprocess.run(real)
        open(os.path.join(state, "landed"), "w").close()
        os._exit(0)
    os.read(r, 1)
    tmp = os.path.join(state, "late.pid.tmp")
    with open(tmp, "w") as f:
        f.write(str(pid))
    os.replace(tmp, os.path.join(state, "late.pid"))  # whole, or not there
    sys.exit(0)
sys.exit(subprocess.run(real).returncode)
"""

def settled_send(env: NginxEnv, n: int):
    """``n`` requests once no old worker is left: what nginx serves now, on fresh connections."""
    wait_for(lambda: shutting_down(env.nginx.pid) == 0, timeout=30, what="the old nginx workers to finish")
    return env.send(n, fresh=True)


def run(cfg: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, "--config", str(cfg), *args], capture_output=True, text=True, timeout=timeout)


def journal(cfg: Path) -> list[dict]:
    return list(read_records(cfg.parent / ".canary" / "journal.jsonl"))


def status(cfg: Path) -> dict:
    r = run(cfg, "status", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def events(stdout: str) -> list[dict]:
    return [json.loads(x) for x in stdout.splitlines() if x.startswith("{")]


@pytest.fixture
def late(tmp_path: Path):
    """A state directory for LATE_RELOAD; kills a delayed reload that has not landed yet."""
    d = tmp_path / "late"
    d.mkdir()
    script = tmp_path / "late_reload.py"
    script.write_text(LATE_RELOAD)
    yield d, script
    pid_file = d / "late.pid"
    if pid_file.exists():
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        except ProcessLookupError:
            pass


def fast(tmp_path: Path, env: NginxEnv, **over) -> Path:
    over.setdefault("rollout", {})
    over["rollout"] = {"observation_period": 1.0, "check_interval": 0.25, **over["rollout"]}
    return write_canary_toml(tmp_path / "canary.toml", env, metrics={"source": "none"}, **over)


def test_deploy_without_the_verify_location_exits_4_and_changes_nothing(tmp_path, plain_nginx_env):
    env = plain_nginx_env
    cfg = fast(tmp_path, env, nginx={"verify_timeout": 2.0})
    before = env.upstream_file.read_bytes()
    r = run(cfg, "deploy", "--version", "v0.2.0", "--headless", "--skip-checks")
    assert r.returncode == 4, r.stdout + r.stderr
    failed = [ln for ln in r.stdout.splitlines() if "FAILED" in ln or "failed:" in ln.lower()]
    line = next(ln for ln in r.stdout.splitlines() if "preflight:" in ln and "nothing was changed" in ln)
    assert env.verify_url in line and "fix:" in line and "location = /__canary/generation" in line, failed
    assert 'verify_listen = "127.0.0.1:8089"' in line
    assert env.upstream_file.read_bytes() == before  # byte for byte
    assert settled_send(env, 300).canary == 0
    assert not any(x["event"] == "stage_started" for x in journal(cfg))
    # `check` says the same and exits 4 too
    r = run(cfg, "check", "--version", "v0.2.0")
    assert r.returncode == 4, r.stdout
    row = next(ln for ln in r.stdout.splitlines() if ln.startswith("nginx confirms"))
    assert "FAIL" in row and env.verify_url in row
    assert env.upstream_file.read_bytes() == before


@pytest.mark.slow
def test_a_reload_13s_late_at_the_5_stage_rolls_back_to_0_and_the_journal_says_0(tmp_path, nginx_env, late):
    state, script = late
    env = nginx_env
    reload = [sys.executable, str(script), str(state), str(env.upstream_file), "5", "13", *env.nginx.reload_command]
    cfg = fast(tmp_path, env, nginx={"reload_command": reload, "verify_timeout": 10.0})
    r = run(cfg, "deploy", "--version", "v0.2.0", "--headless", "--json", "--skip-checks")
    recs = journal(cfg)
    assert r.returncode == 3, journal_summary(recs)
    failed = next(x for x in recs if x["event"] == "router_failed")
    assert failed["weight"] == 5 and failed["outcome"] == "unconfirmed" and failed["file_weight"] == 5
    rolled = next(x for x in recs if x["event"] == "rolled_back")
    assert rolled["automatic"] and rolled["reason"].startswith("router: the change to canary 5% was not confirmed")
    wait_for(lambda: (state / "landed").exists(), timeout=30, what="the late reload to land")
    assert settled_send(env, 300).canary == 0
    assert last_applied_weight(journal(cfg)) == 0
    st = status(cfg)
    assert st["canary_weight"] == 0 and st["confirmed"] is True and st["router"]["state"] == "applied"


def test_a_failing_nginx_t_at_a_raised_stage_rolls_back_exit_3(tmp_path, nginx_env):
    env = nginx_env
    script = tmp_path / "refuse_test.py"
    script.write_text(REFUSE_TEST)
    test_cmd = [sys.executable, str(script), str(env.upstream_file), "25", *env.nginx.test_command]
    cfg = fast(tmp_path, env, nginx={"test_command": test_cmd})
    r = run(cfg, "deploy", "--version", "v0.2.0", "--headless", "--json", "--skip-checks")
    recs = journal(cfg)
    assert r.returncode == 3, journal_summary(recs)
    failed = next(x for x in recs if x["event"] == "router_failed")
    assert failed["weight"] == 25 and failed["outcome"] == "restored" and "refuses canary 25%" in failed["error"]
    assert [x["weight"] for x in recs if x["event"] == "router_applied"][-1] == 0
    assert env.router().current_weight() == 0 and settled_send(env, 300).canary == 0


def test_kill_9_before_nginx_confirms_a_raised_weight_is_unconfirmed_and_resume_reconciles(tmp_path, nginx_env, late):
    state, script = late
    env = nginx_env
    # the 5% reload would land a minute late: the engine sits waiting for nginx to confirm it
    reload = [sys.executable, str(script), str(state), str(env.upstream_file), "5", "60", *env.nginx.reload_command]
    cfg = fast(tmp_path, env, nginx={"reload_command": reload, "verify_timeout": 30.0})
    p = subprocess.Popen([CLI, "--config", str(cfg), "deploy", "--version", "v0.2.0", "--headless", "--json",
                          "--foreground", "--skip-checks"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    try:
        wait_for(lambda: (state / "late.pid").exists(), timeout=60, what="the 5% file written and its reload sent")
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    os.killpg(int((state / "late.pid").read_text()), signal.SIGKILL)  # and the reload never lands
    assert env.router().current_weight() == 5 and settled_send(env, 200).canary == pytest.approx(2, abs=2)  # nginx: still 1%
    st = status(cfg)
    assert st["canary_weight"] == 5 and st["confirmed"] is False
    assert st["router"]["state"] == "unconfirmed" and st["router"]["pending_weight"] == 5
    assert st["router"]["confirmed_weight"] == 1
    text = run(cfg, "status").stdout
    assert "UNCONFIRMED" in text and "--resume" in text

    r = run(cfg, "deploy", "--version", "v0.2.0", "--resume", "--yes", "--headless", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    recs = journal(cfg)
    recon = [x for x in recs if x["event"] == "router_intent" and x["reason"].startswith("resume")]
    assert recon and recon[0]["weight"] == 1 and recon[0]["previous_weight"] == 5
    assert env.router().current_weight() == 100 and settled_send(env, 200).canary == 200
    st = status(cfg)
    assert st["confirmed"] is True and st["canary_weight"] == 100


def test_verify_listen_alone_confirms_every_stage_of_a_full_rollout(tmp_path, plain_nginx_env):
    env = plain_nginx_env
    listen = f"127.0.0.1:{free_port()}"
    cfg = fast(tmp_path, env, nginx={"verify_listen": listen, "verify_url": None})
    r = run(cfg, "deploy", "--version", "v0.2.0", "--headless", "--json", "--skip-checks")
    recs = journal(cfg)
    assert r.returncode == 0, journal_summary(recs)
    assert not any(x["event"] == "router_failed" for x in recs)
    intents = [x["generation"] for x in recs if x["event"] == "router_intent"]
    applied = [(x["generation"], x["weight"]) for x in recs if x["event"] == "router_applied"]
    assert [g for g, _ in applied] == intents and [w for _, w in applied] == [0, 1, 5, 25, 100]
    assert generation_of(env.upstream_file.read_text()) == intents[-1]
    assert settled_send(env, 200).canary == 200


def test_a_verify_listen_that_is_not_host_port_exits_2_with_one_line_and_changes_nothing(tmp_path, nginx_env):
    cfg = fast(tmp_path, nginx_env, nginx={"verify_listen": "8089"})
    before = nginx_env.upstream_file.read_bytes()
    r = run(cfg, "deploy", "--version", "v0.2.0", "--headless")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "verify_listen" in lines[0] and "allowed" in lines[0], r.stderr
    assert nginx_env.upstream_file.read_bytes() == before and not (cfg.parent / ".canary" / "journal.jsonl").exists()
