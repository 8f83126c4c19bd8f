"""The rollout outlives the terminal (issue 8), against a real nginx and real engine processes.

`canary-console deploy` starts the engine as its own process (console.remote.daemon) and attaches to
it; these tests kill consoles, hang up terminals, attach several consoles, kill -9 the engine
at random points and talk to its socket as another user.  Every process a test starts (CLIs,
engines, tmux) is killed and reaped when it ends, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from console.core.eventfmt import DecisionFeed, format_event
from console.core.events import Intent, Operator, event_from_record
from console.core.journal import read_records
from console.core.lock import is_held, lock_path_for
from console.core.state import events_of, last_applied_weight, unfinished
from console.remote import wire
from console.remote.client import SocketLink, pid_alive
from tests.fixtures.nginx import NginxEnv, write_canary_toml
from tests.fixtures.real import await_for, need_binary, wait_for

CLI = str(Path(sys.executable).parent / "canary-console")
# the attach command on its own module entry (same code as `canary-console attach`), with --headless
ATTACH = [sys.executable, "-m", "console.commands.attach"]
PR_SET_CHILD_SUBREAPER = 36


# ---------------------------------------------------------------------------- process hygiene
def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


OURS = (b"console.remote.daemon", b"canary-console", b"console.commands.attach")


def processes_with(marker: str) -> list[int]:
    """Live consoles, engines and tmux servers whose command line mentions ``marker`` (this test's directory)."""
    me, out = os.getpid(), []
    needle = marker.encode()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        cmd = _cmdline(int(d))
        if needle in cmd and any(x in cmd for x in OURS) and pid_alive(int(d)):
            out.append(int(d))
    return out


def reap(pid: int, timeout: float = 10.0) -> None:
    """Wait until ``pid`` is gone; reap it when it is our child (we are a subreaper here)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _ppid(pid) == os.getpid():
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        if not os.path.exists(f"/proc/{pid}"):
            return
        if not pid_alive(pid) and _ppid(pid) != os.getpid():
            return  # a zombie of some other parent: dead
        time.sleep(0.01)
    raise AssertionError(f"process {pid} ({_cmdline(pid)!r}) is still there")


class Procs:
    """Everything this test started; ``cleanup`` kills and reaps it all."""

    def __init__(self, marker: str, journals: list[Path]) -> None:
        self.marker = marker
        self.journals = journals  # engines write their pid there: reap them even if they ended by themselves
        self.popen: list[subprocess.Popen[Any]] = []
        self.tmux: list[str] = []

    def start(self, argv: list[str], **kw: Any) -> subprocess.Popen[Any]:
        p = subprocess.Popen(argv, start_new_session=True, **kw)
        self.popen.append(p)
        return p

    def engine_pids(self) -> set[int]:
        return {r["engine_pid"] for jp in self.journals for r in records(jp) if r["event"] == "deployment_started"}

    def cleanup(self) -> None:
        for name in self.tmux:
            subprocess.run(["tmux", "-L", name, "kill-server"], capture_output=True, timeout=10)
        for p in self.popen:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
        left = set(processes_with(self.marker)) | {p for p in self.engine_pids() if pid_alive(p)}
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL) if os.getpgid(pid) == pid else os.kill(pid, signal.SIGKILL)
        for pid in left | {p for p in self.engine_pids() if _ppid(p) == os.getpid()}:
            reap(pid)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    """Orphaned engines become our children (subreaper) so that they can be reaped."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    tracker = Procs(str(tmp_path), [journal_path(tmp_path / "canary.toml")])
    try:
        yield tracker
    finally:
        try:
            tracker.cleanup()
            assert processes_with(str(tmp_path)) == []
            assert not any(pid_alive(p) or _ppid(p) == os.getpid() for p in tracker.engine_pids())
        finally:
            libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


# ---------------------------------------------------------------------------- helpers


def journal_path(cfg: Path) -> Path:
    return cfg.parent / ".canary" / "journal.jsonl"


def records(jp: Path) -> list[dict[str, Any]]:
    return list(read_records(jp))


def started_weights(jp: Path) -> list[int]:
    return [r["weight"] for r in records(jp) if r["event"] == "stage_started"]


def engine_pid(jp: Path) -> int:
    return [r for r in records(jp) if r["event"] == "deployment_started"][-1]["engine_pid"]


def make_cfg(tmp_path: Path, env: NginxEnv, **rollout: Any) -> Path:
    return write_canary_toml(tmp_path / "canary.toml", env, metrics={"source": "none"},
                             rollout={"observation_period": 1.0, "check_interval": 0.2, **rollout})


def deploy(procs: Procs, cfg: Path, *args: str, out: Path | None = None) -> subprocess.Popen[Any]:
    """`canary-console deploy` without a terminal: engine in the background, this one watches."""
    out = out or cfg.parent / f"deploy-{uuid.uuid4().hex[:6]}.out"
    f = open(out, "w")  # noqa: SIM115 - closed by the Popen's exit, read by the test
    try:
        return procs.start([CLI, "--config", str(cfg), "deploy", "--version", "v0.2.0", *args],
                           stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    finally:
        f.close()


def sock_of(cfg: Path) -> Path:
    return wire.socket_path_for(journal_path(cfg))


def engine_answers(cfg: Path) -> bool:
    from console.remote.client import socket_answers

    return socket_answers(sock_of(cfg))


# ---------------------------------------------------------------------------- the console dies, the rollout lives
def test_killing_the_console_leaves_the_rollout_running_and_a_later_breach_still_rolls_back(tmp_path, nginx_env, procs):
    cfg = make_cfg(tmp_path, nginx_env, observation_period=60.0)
    jp = journal_path(cfg)
    console = deploy(procs, cfg, "--start-stage", "5")
    wait_for(lambda: 5 in started_weights(jp) and engine_answers(cfg), what="stage 5 with its engine answering")
    pid = engine_pid(jp)
    assert pid != console.pid

    os.killpg(console.pid, signal.SIGKILL)  # the console's whole process group: a dropped SSH session
    console.wait()
    checks = sum(r["event"] == "check" for r in records(jp))
    wait_for(lambda: sum(r["event"] == "check" for r in records(jp)) >= checks + 3, what="checks after the console died")
    assert pid_alive(pid) and is_held(lock_path_for(jp))

    nginx_env.backends.canary.healthy = False  # a critical gate breach, nobody attached
    rb = wait_for(lambda: [r for r in records(jp) if r["event"] == "rolled_back"], what="automatic rollback")[0]
    assert rb["automatic"] is True and rb["from_weight"] == 5 and "health" in rb["reason"]
    reap(pid)
    assert nginx_env.router().current_weight() == 0
    assert nginx_env.send(100).canary == 0
    assert not sock_of(cfg).exists() and not is_held(lock_path_for(jp))

    r = subprocess.run([*ATTACH, "--config", str(cfg), "--headless"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 3, r.stderr
    lines = r.stdout.splitlines()
    assert any("stage 2/4: 5% canary" in x for x in lines)
    assert any("ROLLED BACK (automatic) from 5% to 0%" in x and "health" in x for x in lines)
    assert "rolled back" in r.stderr


def test_rollback_command_goes_through_a_running_engine(tmp_path, nginx_env, procs):
    """`canary-console rollback` from another terminal while a detached engine holds the lock."""
    cfg = make_cfg(tmp_path, nginx_env, observation_period=60.0)
    jp = journal_path(cfg)
    console = deploy(procs, cfg, "--start-stage", "25")
    wait_for(lambda: 25 in started_weights(jp) and engine_answers(cfg), what="stage 25 with its engine answering")
    pid = engine_pid(jp)
    r = subprocess.run([CLI, "--config", str(cfg), "rollback", "--reason", "pager went off"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"rolled back by the engine (pid {pid})" in r.stdout
    assert nginx_env.send(100).canary == 0
    rb = [x for x in records(jp) if x["event"] == "rolled_back"]
    assert len(rb) == 1 and rb[0]["reason"] == "pager went off" and rb[0]["automatic"] is False
    acts = [x for x in records(jp) if x["event"] == "operator_action" and x["action"] == "rollback"]
    assert acts and acts[0]["operator"]["user"] == Operator.current().user
    reap(pid)
    console.wait(timeout=30)


def test_promote_command_goes_through_a_running_engine_with_its_rules(tmp_path, nginx_env, procs):
    """At 100% the detached engine keeps the lock; `promote` asks it, and its rules still apply."""
    cfg = make_cfg(tmp_path, nginx_env, promote_after=0.0, required_approvals=1)
    jp = journal_path(cfg)
    # an engine that monitors at 100% until promoted, as `deploy` starts it under a terminal console
    engine = procs.start([sys.executable, "-m", "console.remote.daemon", "--config", str(cfg), "--version", "v0.2.0",
                          "--deployment-id", "v0.2.0-promote-test", "--start-index", "3", "--stay-at-100"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    wait_for(lambda: any(r["event"] == "completed" for r in records(jp)) and engine_answers(cfg), what="100% held")
    pid = engine_pid(jp)
    r = subprocess.run([CLI, "--config", str(cfg), "promote", "--yes"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 4 and "approval" in r.stderr, r.stderr
    assert pid_alive(pid) and not [x for x in records(jp) if x["event"] == "promoted"]
    r = subprocess.run([CLI, "--config", str(cfg), "promote", "--yes", "--approved-by", "alice"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"promoted by the engine (pid {pid})" in r.stdout
    (promoted,) = [x for x in records(jp) if x["event"] == "promoted"]
    assert promoted["approvals"] == ["alice"]
    assert "Promoted canary v0.2.0 to production" in (cfg.parent / "CHANGELOG.md").read_text()
    assert engine.wait(timeout=30) == 0


# ---------------------------------------------------------------------------- SIGHUP in tmux
def tmux(name: str, *args: str) -> str:
    return subprocess.run(["tmux", "-L", name, *args], capture_output=True, text=True, timeout=10, check=True).stdout.strip()


def test_sighup_to_a_console_in_tmux_detaches_it_and_the_rollout_goes_on(tmp_path, nginx_env, procs):
    need_binary("tmux")
    cfg = make_cfg(tmp_path, nginx_env, observation_period=60.0)
    jp = journal_path(cfg)
    deploy(procs, cfg, "--start-stage", "5")
    wait_for(lambda: 5 in started_weights(jp) and engine_answers(cfg), what="stage 5 with its engine answering")
    pid = engine_pid(jp)

    name = f"cc-{uuid.uuid4().hex[:8]}"
    procs.tmux.append(name)
    # the console drives (take-over) in a real terminal; tmux runs it directly (several arguments: no shell)
    tmux(name, "-f", "/dev/null", "new-session", "-d", "-s", "t", "-x", "160", "-y", "40",
         *ATTACH, "--config", str(cfg), "--headless", "--take-over", ";", "set-option", "-t", "t", "remain-on-exit", "on")
    pane_pid = int(tmux(name, "display", "-p", "-t", "t", "#{pane_pid}"))
    label = f"(console pid {pane_pid})"
    wait_for(lambda: any(r["event"] == "note" and f"driver console attached: root {label}" in r["message"]
                         for r in records(jp)) and "attached to engine" in tmux(name, "capture-pane", "-p", "-t", "t"),
             what="the tmux console driving")

    os.kill(pane_pid, signal.SIGHUP)
    # the console says why it leaves: the hang-up was handled, not fatal
    detached = wait_for(lambda: [r for r in records(jp) if r["event"] == "note" and "detached" in r["message"]],
                        what="the driver's detach journaled")
    assert detached[0]["message"] == f"driver console root {label} detached (detached: SIGHUP): the rollout goes on"
    wait_for(lambda: not pid_alive(pane_pid), what="the console process to exit")
    wait_for(lambda: "detached (SIGHUP): the rollout goes on in engine pid" in tmux(name, "capture-pane", "-p", "-t", "t", "-J")
             or tmux(name, "display", "-p", "-t", "t", "#{pane_dead}") == "1", what="the pane to end")
    os.kill(pid, signal.SIGHUP)  # the engine itself ignores hang-ups
    checks = sum(r["event"] == "check" for r in records(jp))
    wait_for(lambda: sum(r["event"] == "check" for r in records(jp)) >= checks + 3, what="checks after the hang-up")
    assert pid_alive(pid) and nginx_env.router().current_weight() == 5

    os.kill(pid, signal.SIGTERM)  # an operator's way to stop it: interrupted, the traffic stays
    reap(pid)
    it = [r for r in records(jp) if r["event"] == "interrupted"]
    assert it and it[0]["signal"] == "SIGTERM" and it[0]["weight"] == 5 and "--resume" in it[0]["resume_command"]
    assert nginx_env.router().current_weight() == 5 and not sock_of(cfg).exists() and not is_held(lock_path_for(jp))


def test_the_console_deploy_opens_in_a_terminal_detaches_on_sighup(tmp_path, nginx_env, procs):
    """An SSH drop during `deploy`: the terminal's console goes, the engine it started stays."""
    need_binary("tmux")
    cfg = make_cfg(tmp_path, nginx_env, observation_period=60.0)
    jp = journal_path(cfg)
    name = f"cc-{uuid.uuid4().hex[:8]}"
    procs.tmux.append(name)
    tmux(name, "-f", "/dev/null", "new-session", "-d", "-s", "t", "-x", "160", "-y", "45",
         CLI, "--config", str(cfg), "deploy", "--version", "v0.2.0", "--start-stage", "5")
    pane_pid = int(tmux(name, "display", "-p", "-t", "t", "#{pane_pid}"))
    wait_for(lambda: 5 in started_weights(jp) and any(r["event"] == "note" and f"(console pid {pane_pid})" in r["message"]
                                                      for r in records(jp)), what="the console driving stage 5")
    pid = engine_pid(jp)
    assert pid != pane_pid

    os.kill(pane_pid, signal.SIGHUP)
    note = wait_for(lambda: [r for r in records(jp) if r["event"] == "note" and "detached" in r["message"]],
                    what="the console's detach journaled")[0]
    assert note["message"] == f"driver console root (console pid {pane_pid}) detached (detached: SIGHUP): the rollout goes on"
    wait_for(lambda: not pid_alive(pane_pid), what="the console to exit")
    checks = sum(r["event"] == "check" for r in records(jp))
    wait_for(lambda: sum(r["event"] == "check" for r in records(jp)) >= checks + 3, what="checks after the hang-up")
    assert pid_alive(pid) and nginx_env.router().current_weight() == 5


# ---------------------------------------------------------------------------- several consoles, one driver
async def next_event(it: Any, kind: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        e = await asyncio.wait_for(it.__anext__(), max(0.01, deadline - time.monotonic()))
        if e.kind == kind:
            return e


async def test_two_consoles_one_drives_and_take_over_is_journaled(tmp_path, nginx_env, procs):
    cfg = make_cfg(tmp_path, nginx_env, observation_period=60.0)
    jp = journal_path(cfg)
    deploy(procs, cfg)
    await await_for(lambda: 1 in started_weights(jp) and engine_answers(cfg), what="stage 1 with its engine answering")
    pid = engine_pid(jp)
    alice = Operator("root", ssh_client="10.0.0.1", host="laptop-a")
    bob = Operator("root", ssh_client="10.0.0.2", host="laptop-b")
    a = SocketLink.connect(sock_of(cfg), journal_path=jp, operator=alice)
    b = SocketLink.connect(sock_of(cfg), journal_path=jp, operator=bob)
    try:
        assert (a.role, b.role) == ("driver", "watcher")
        assert a.engine_pid == b.engine_pid == pid and a.engine_host == socket.gethostname()
        assert "drives; you watch" in b.note and "--take-over" in b.note
        assert [e.kind for e in a.history()][:1] == ["deployment_started"]  # what it missed, from the journal
        assert a.deployment_id == b.deployment_id == records(jp)[0]["deployment_id"]
        ea, eb = a.events().__aiter__(), b.events().__aiter__()
        assert await a.ping() >= 0 and a.latency_ms is not None

        with pytest.raises(PermissionError, match="watcher"):
            await b.submit(Intent("pause", bob))
        b.role = "driver"  # a console that lies about its role: the engine refuses and journals it
        with pytest.raises(PermissionError, match="watches"):
            await b.submit(Intent("pause", bob))
        b.role = "watcher"
        with pytest.raises(PermissionError, match="names operator mallory"):
            await a.submit(Intent("pause", Operator("mallory", "10.6.6.6", "x")))

        await a.submit(Intent("pause", alice, reason="looking at a graph"))
        assert (await next_event(ea, "paused")).weight == 1
        assert (await next_event(eb, "paused")).weight == 1  # every console sees it

        taker = procs.start([*ATTACH, "--config", str(cfg), "--headless", "--take-over"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        took = await next_event(ea, "operator_action")
        while took.action != "take_over":
            took = await next_event(ea, "operator_action")
        assert took.accepted and took.detail.startswith("from root@10.0.0.1")
        await await_for(lambda: a.role == "watcher", what="the old driver told it watches")
        assert f"(console pid {taker.pid}) took over" in a.note
        with pytest.raises(PermissionError):
            await a.submit(Intent("resume", alice))

        await b.take_over()
        assert b.role == "driver"
        await b.submit(Intent("resume", bob))
        assert (await next_event(eb, "resumed")).weight == 1

        other = SocketLink.connect(sock_of(cfg), journal_path=jp, operator=alice, take_over=True,
                                   protocol=wire.VERSION + 1)
        try:
            # the engine makes it a watcher, and the console itself says why in one line
            assert other.hello["role"] == other.role == "watcher"
            assert f"protocol v{wire.VERSION + 1}" in other.hello["note"] and "cannot drive" in other.hello["note"]
            assert "\n" not in other.note and "will not drive (it may watch)" in other.note
            with pytest.raises(PermissionError, match="will not drive"):
                await other.take_over()
            with pytest.raises(PermissionError, match="cannot drive"):  # the engine refuses it too
                await other._request(wire.TAKE_OVER)
            assert (await next_event(other.events().__aiter__(), "check")).weight == 1  # it still watches
        finally:
            await other.close()

        acts = [(r["action"], r["accepted"], r["operator"]["ssh_client"], r["detail"])
                for r in records(jp) if r["event"] == "operator_action"]
        assert ("pause", False, "10.0.0.2", acts[0][3]) == acts[0] and "refused" in acts[0][3]
        assert acts[1][:3] == ("pause", False, "10.0.0.1") and "mallory" in acts[1][3]
        assert acts[2][:3] == ("pause", True, "10.0.0.1")
        assert acts[3][:2] == ("take_over", True) and acts[3][3].startswith("from root@10.0.0.1")
        assert acts[4][:3] == ("take_over", True, "10.0.0.2") and f"(console pid {taker.pid})" in acts[4][3]
        assert acts[5][:3] == ("resume", True, "10.0.0.2")

        await b.stop()  # the driver ends the engine: traffic stays, journaled
        assert (await next_event(eb, "interrupted")).weight == 1
    finally:
        await a.close()
        await b.close()
    await await_for(lambda: not pid_alive(pid) or _ppid(pid) == os.getpid(), what="the engine to exit")
    reap(pid)
    st = [r for r in records(jp) if r["event"] == "interrupted"][-1]
    assert st["signal"] == "stop by root@10.0.0.2"
    assert nginx_env.router().current_weight() == 1


# ---------------------------------------------------------------------------- kill -9 of the engine, 20 times
TORN = b'{"event":"router_applied","weight":1'  # what a crash in the middle of a write leaves


def kill_point_reached(jp: Path, n_before: int, console: subprocess.Popen[Any], router: Any, target: int | None,
                       start_weight: int) -> bool:
    """The engine run that began after record ``n_before`` has journaled ``target`` records, or (target None)
    is in the middle of a router change: the upstream file says the new weight, the journal not yet."""
    if console.poll() is not None:
        return True
    new = records(jp)[n_before:]
    first = next((i for i, r in enumerate(new) if r["event"] == "deployment_started"), None)
    mine = [] if first is None else new[first:]
    if target is not None:
        return len(mine) >= target
    return bool(mine) and router.current_weight() != (last_applied_weight(mine) or start_weight)


@pytest.mark.slow
def test_kill_9_of_the_engine_at_20_random_points_resume_reconciles_to_the_journal(tmp_path, nginx_env, procs):
    rng = random.Random(8)
    cfg = make_cfg(tmp_path, nginx_env, observation_period=0.3, check_interval=0.1)
    jp = journal_path(cfg)
    router = nginx_env.router()
    versions = (f"v0.2.{i}" for i in range(100))
    version = next(versions)
    expect: tuple[str, int, bool] | None = None  # (deployment, journaled weight, file drifted) after a kill
    kills = drifts = cycle = 0
    while kills < 20:
        cycle += 1
        recs = records(jp)
        n_before = len(recs)
        resume = expect is not None and unfinished(recs, version) is not None
        if not resume and recs:
            version = next(versions)  # the last rollout ended: a new one
        out, err = tmp_path / f"cycle-{cycle}.out", tmp_path / f"cycle-{cycle}.err"
        args = ["--resume", "--yes"] if resume else ["--skip-checks"]
        with open(out, "w") as fo, open(err, "w") as fe:
            console = procs.start([CLI, "--config", str(cfg), "deploy", "--version", version, *args],
                                  stdout=fo, stderr=fe, stdin=subprocess.DEVNULL)
        # kill once the engine has journaled ``target`` records, or (one time in four) in the middle of a
        # router change: the upstream file already says the new weight, the journal not yet
        target = rng.randint(1, 12)
        mid_write = rng.random() < 0.25
        start_weight = expect[1] if resume and expect else (last_applied_weight(records(jp)) or 0)
        wait_for(functools.partial(kill_point_reached, jp, n_before, console, router, None if mid_write else target,
                                   start_weight), what=f"kill point of cycle {cycle}")
        snap = records(jp)[n_before:]
        assert any(r["event"] == "deployment_started" for r in snap), err.read_text()
        start = next(i for i, r in enumerate(snap) if r["event"] == "deployment_started")
        mine = snap[start:]
        if resume:
            assert expect is not None
            dep, journaled, drift = expect
            recon = [x for x in snap[:start] if x["event"] == "router_intent" and x["reason"].startswith("resume: reconcile")]
            assert bool(recon) == drift and all(x["weight"] == journaled for x in recon)
            assert mine[0]["resumed"] and mine[0]["deployment_id"] == dep
            if journaled in (1, 5, 25, 100):
                assert mine[0]["start_stage"] == journaled
            changes = [x for x in mine if x["event"] == "router_intent"]
            if changes:  # the engine starts from the journal's traffic, not from a drifted file
                assert changes[0]["previous_weight"] == journaled
        if console.poll() is not None:
            assert console.returncode == 0, err.read_text()  # the rollout completed before this kill point
            expect = None
            continue
        pid = mine[0]["engine_pid"]
        os.kill(pid, signal.SIGKILL)
        kills += 1
        assert console.wait(timeout=30) == 130, err.read_text()
        reap(pid)
        assert "engine lost" in err.read_text() and "--resume" in err.read_text()

        # every line of the journal is a whole record, or a torn tail we left; nothing the console showed is missing
        lines = jp.read_bytes().split(b"\n")
        assert lines[-1] == b""
        good = []
        for raw in lines[:-1]:
            try:
                good.append(json.loads(raw))
            except ValueError:
                assert raw == TORN, f"a record broken by no crash: {raw[:80]!r}"
        assert good == records(jp)
        shown = {format_event(e) for e in map(event_from_record, good) if e is not None}
        for dep_id in {r.get("deployment_id") for r in good}:  # the decision lines a console of each one prints
            feed = DecisionFeed()
            shown |= {line for e in events_of(good, dep_id) for line in feed.feed(e)}
        seen = out.read_text().splitlines()
        assert seen and set(seen) <= shown

        dep = mine[0]["deployment_id"]
        journaled = last_applied_weight(r for r in good if r["deployment_id"] == dep) or 0
        drift = router.current_weight() != journaled
        drifts += drift
        expect = (dep, journaled, drift)
        if kills % 4 == 0:
            with open(jp, "ab") as f:
                f.write(TORN)  # no newline: the next writer must start on a fresh line
    recs = records(jp)
    if unfinished(recs, version) is not None:
        r = subprocess.run([CLI, "--config", str(cfg), "deploy", "--version", version, "--resume", "--yes"],
                           capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stdout + r.stderr
    assert router.current_weight() == 100 and nginx_env.send(50).canary == 50
    assert drifts >= 1  # at least one kill came between a file write and its journal record
    print(f"20 kills in {cycle} engine runs, {drifts} with the upstream file ahead of the journal")


# ---------------------------------------------------------------------------- the socket: owner only, garbage-proof
def connect_as(uid: int, path: Path) -> tuple[str, bytes]:
    """Connect to ``path`` from a forked child running as ``uid``; returns (outcome, what the engine answered)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only system calls, then _exit
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            try:
                s.connect(str(path))
            except OSError as e:
                os.write(w, f"connect:{type(e).__name__}\n".encode())
                os._exit(0)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            os.write(w, b"connected\n" + data)
        except BaseException as e:  # noqa: BLE001 - report anything from the child
            os.write(w, f"error:{e!r}\n".encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    head, _, rest = data.partition(b"\n")
    return head.decode(), rest


def lines_from(sock: socket.socket, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    sock.settimeout(timeout)
    buf, out = b"", []
    while len(out) < n:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {out}"
        buf += chunk
        while b"\n" in buf and len(out) < n:
            line, buf = buf.split(b"\n", 1)
            out.append(json.loads(line))
    return out


def test_the_socket_refuses_another_user_and_rejects_garbage_without_crashing(tmp_path, nginx_env, procs):
    nobody = 65534
    jdir = Path(tempfile.mkdtemp(prefix="cc-sock-"))
    try:
        jdir.chmod(0o711)  # other users may traverse the directory: only the socket's own protections are left
        cfg = write_canary_toml(tmp_path / "canary.toml", nginx_env, metrics={"source": "none"},
                                rollout={"observation_period": 60.0, "check_interval": 0.2},
                                journal={"path": str(jdir / "journal.jsonl")})
        jp = jdir / "journal.jsonl"
        procs.journals.append(jp)
        sock = wire.socket_path_for(jp)
        deploy(procs, cfg)
        wait_for(lambda: 1 in started_weights(jp) and sock.exists(), what="stage 1 and the engine socket")
        pid = engine_pid(jp)
        st = sock.stat()
        assert st.st_mode & 0o777 == 0o600 and st.st_uid == os.getuid()

        # another user: the file mode keeps it out ...
        outcome, _ = connect_as(nobody, sock)
        assert outcome == "connect:PermissionError"
        # ... and should the mode ever be loosened, the kernel's peer credentials still do (before any hello)
        sock.chmod(0o666)
        outcome, answer = connect_as(nobody, sock)
        sock.chmod(0o600)
        assert outcome == "connected"
        msgs = [json.loads(x) for x in answer.splitlines()]
        assert [m["type"] for m in msgs] == ["error"] and msgs[0]["code"] == "forbidden"
        assert f"uid {nobody}" in msgs[0]["message"] and "only the user who started the engine" in msgs[0]["message"]

        # the owner sends garbage: an error line each, the connection and the engine go on
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        name, dir_fd = wire.short_path(sock)
        s.connect(name)
        if dir_fd is not None:
            os.close(dir_fd)
        garbage = [b"not json", b"\xff\xfe\xfd", b"[1, 2]", b'{"v": 1}', b'{"v": 1, "type": "launch_missiles"}',
                   b'{"v": 1, "type": "intent", "intent": {"action": "rollback"}}',
                   b'{"v": 1, "type": "hello", "operator": 42}', b"x" * (wire.MAX_LINE + 1)]
        for g in garbage:
            s.sendall(g + b"\n")
        s.sendall(b"y" * (3 * wire.MAX_LINE))  # an oversized line in several pieces
        s.sendall(b"y" * 10 + b"\n")
        errors = lines_from(s, len(garbage) + 1)
        assert all(e["type"] == "error" for e in errors)
        codes = [e["code"] for e in errors]
        assert codes == ["malformed"] * 7 + ["too_long", "too_long"]
        assert "not JSON" in errors[0]["message"] and "not UTF-8" in errors[1]["message"]
        assert "launch_missiles" in errors[4]["message"] and "before hello" in errors[5]["message"]
        assert f"longer than the {wire.MAX_LINE} bytes allowed" in errors[7]["message"]
        assert errors[8]["message"].startswith(f"message of {3 * wire.MAX_LINE + 10} bytes refused")
        s.sendall(wire.encode(wire.PING, id=7, t=1.5))
        assert lines_from(s, 1) == [{"v": wire.VERSION, "type": "pong", "id": 7, "t": 1.5}]
        s.sendall(wire.encode(wire.HELLO, operator={"user": "root", "ssh_client": None, "host": "h"}, role="driver"))
        hello_back = lines_from(s, 1)[0]
        assert hello_back["type"] == "hello" and hello_back["role"] == "driver" and hello_back["engine_pid"] == pid
        s.close()

        assert pid_alive(pid)
        checks = sum(r["event"] == "check" for r in records(jp))
        wait_for(lambda: sum(r["event"] == "check" for r in records(jp)) >= checks + 2, what="checks after the garbage")
        assert not any(r["event"] == "operator_action" and r["operator"]["user"] == "nobody" for r in records(jp))
    finally:
        procs.cleanup()
        shutil.rmtree(jdir, ignore_errors=True)


# ---------------------------------------------------------------------------- engine death: attach offers resume or rollback
def test_a_dead_engine_is_detected_at_attach_which_offers_a_break_glass_rollback(tmp_path, nginx_env, procs):
    from console.commands.session import BreakGlassRefused, break_glass_rollback
    from console.core.config import load_config

    need_binary("tmux")
    cfg = make_cfg(tmp_path, nginx_env, observation_period=60.0)
    jp = journal_path(cfg)
    deploy(procs, cfg, "--start-stage", "25")
    wait_for(lambda: 25 in started_weights(jp) and engine_answers(cfg), what="stage 25 with its engine answering")
    pid = engine_pid(jp)
    with pytest.raises(BreakGlassRefused, match="the engine answers"):  # a live engine rolls back itself
        break_glass_rollback(load_config(cfg), "should not happen")

    os.kill(pid, signal.SIGKILL)  # OOM, reboot ...
    reap(pid)
    assert sock_of(cfg).exists() and not engine_answers(cfg) and not is_held(lock_path_for(jp))  # a stale socket
    assert nginx_env.router().current_weight() == 25  # the traffic stays where the journal says

    r = subprocess.run([*ATTACH, "--config", str(cfg), "--headless"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 130
    assert "stage 3/4: 25% canary" in r.stdout
    lost = r.stderr.strip().splitlines()[-1]
    assert f"engine lost: deployment {records(jp)[0]['deployment_id']}" in lost and f"engine pid {pid}" in lost
    assert "nginx last served canary 25%" in lost and "--resume" in lost and "canary-console rollback" in lost

    # in a terminal, attach offers resume or rollback; "b" rolls back straight through the router
    name = f"cc-{uuid.uuid4().hex[:8]}"
    procs.tmux.append(name)
    tmux(name, "-f", "/dev/null", "new-session", "-d", "-s", "t", "-x", "200", "-y", "50",
         *ATTACH, "--config", str(cfg), ";", "set-option", "-t", "t", "remain-on-exit", "on")
    wait_for(lambda: "[b] roll back now" in tmux(name, "capture-pane", "-p", "-t", "t", "-J"), what="the offer")
    tmux(name, "send-keys", "-t", "t", "b", "Enter")
    wait_for(lambda: "rolled back (break-glass)" in tmux(name, "capture-pane", "-p", "-t", "t", "-J"),
             what="the break-glass rollback")
    assert nginx_env.router().current_weight() == 0 and nginx_env.send(100).canary == 0
    tail = records(jp)[-4:]
    assert [x["event"] for x in tail] == ["operator_action", "router_intent", "router_applied", "rolled_back"]
    assert tail[0]["action"] == "rollback" and tail[0]["detail"].startswith("break-glass: engine lost")
    assert tail[3]["from_weight"] == 25 and tail[3]["automatic"] is False
    assert unfinished(records(jp)) is None
