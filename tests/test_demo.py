"""`canary-console demo` end to end: real nginx, real Prometheus, real demo services, real
traffic, and nothing left behind on any exit path.

Each test reads the children the sandbox started (pids, process groups, ports, directory)
from its ``--json`` announcement or its ``sandbox.json``, and after the demo is gone checks
/proc (no process in those groups, none carrying the sandbox's marker variable), the ports
(nothing answers) and the directory (removed).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from console.commands import demo
from console.commands.cli import build_parser
from console.core.journal import read_records
from console.sandbox import drive, stack
from console.sandbox.supervisor import MARKER_ENV, Sandbox
from tests.fixtures.real import need_binary, port_listening

CLI = str(Path(sys.executable).parent / "canary-console")
FAST = ["--check-interval", "1", "--rps", "60"]
pytestmark = pytest.mark.real


# --------------------------------------------------------------------------- helpers


def leftovers(info: dict[str, Any]) -> list[str]:
    """Processes of the sandbox that still exist: in one of its children's process groups, or
    carrying its marker variable (anything they forked)."""
    pgids = {c["pgid"] for c in info["children"]}
    marker = f"{MARKER_ENV}={info['dir']}".encode()
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            environ = (d / "environ").read_bytes()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        state, pgrp = fields[0], int(fields[2])
        if pgrp in pgids or marker in environ.split(b"\0"):
            found.append(f"pid {d.name} state {state} pgid {pgrp}: {cmd[:120]}")
    return found


def assert_nothing_left(info: dict[str, Any]) -> None:
    assert info["children"], info
    assert leftovers(info) == []
    listening = [c for c in info["children"] if c["port"] and port_listening(c["port"])]
    assert listening == [], f"ports still answering: {listening}"
    assert not Path(info["dir"]).exists(), f"{info['dir']} was not removed"


def json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def sandbox_info(records: list[dict[str, Any]]) -> dict[str, Any]:
    found = [r for r in records if r.get("event") == "demo_sandbox"]
    assert len(found) == 1, records[:3]
    return found[0]


def run_demo(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI to its end; on a timeout it gets SIGTERM first (so it cleans up), then SIGKILL."""
    proc = subprocess.Popen([CLI, "demo", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
        raise AssertionError(f"demo did not finish within {timeout}s:\n{out}\n{err}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


class Running:
    """A demo started in the background with --json; stdout (JSON lines) and stderr (progress)
    read as they come."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen([CLI, "demo", "--headless", "--json", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env, start_new_session=True)
        self.records: list[dict[str, Any]] = []
        self.err = ""
        self._out = b""

    def _pump(self, timeout: float) -> bool:
        """Read what is there; False once both streams ended."""
        assert self.proc.stdout is not None and self.proc.stderr is not None
        streams = {f.fileno(): f for f in (self.proc.stdout, self.proc.stderr) if not f.closed}
        if not streams:
            return False
        ready, _, _ = select.select(list(streams), [], [], timeout)
        for fd in ready:
            chunk = os.read(fd, 65536)
            stream = streams[fd]
            if not chunk:
                stream.close()
            elif stream is self.proc.stdout:
                *lines, self._out = (self._out + chunk).split(b"\n")
                self.records += json_lines(b"\n".join(lines).decode())
            else:
                self.err += chunk.decode(errors="replace")
        return True

    def wait_for(self, pred: Any, timeout: float = 60.0, what: str = "record") -> Any:
        """Until ``pred(self)`` is truthy; its value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = pred(self)
            if found:
                return found
            if not self._pump(0.1) and self.proc.poll() is not None:
                break
        raise AssertionError(f"no {what} within {timeout}s (exit {self.proc.poll()}); stderr: {self.err[-3000:]}")

    def record(self, kind: str, cond: Any = lambda r: True) -> Any:
        return lambda run: next((r for r in run.records if r.get("event") == kind and cond(r)), None)

    def finish(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while self._pump(0.1) and time.monotonic() < deadline:
            pass
        return self.proc.wait(max(0.1, deadline - time.monotonic()))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


@pytest.fixture
def real_stack() -> None:
    need_binary("nginx")
    need_binary("prometheus")


def kinds(records: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get("event") == kind]


# --------------------------------------------------------------------------- headless rollouts


@pytest.mark.slow
def test_healthy_headless_demo_reaches_100_percent_and_leaves_nothing(real_stack: None) -> None:
    r = run_demo("--headless", "--json", "--observation-period", "4", *FAST)
    assert r.returncode == 0, r.stderr[-3000:]
    records = json_lines(r.stdout)
    info = sandbox_info(records)
    assert info["metrics_source"] == "prometheus"
    assert {c["name"] for c in info["children"]} == {"production", "canary", "nginx", "prometheus"}
    assert [s["weight"] for s in kinds(records, "stage_started")] == [1, 5, 25, 100]
    assert [a["weight"] for a in kinds(records, "router_applied")] == [0, 1, 5, 25, 100]  # the preflight, then stages
    assert len(kinds(records, "completed")) == 1 and not kinds(records, "rolled_back")
    # judged on traffic that went through nginx: at the end of the 25% stage the 10 s window no
    # longer holds the warm-up (sent to the canary directly 12 s before), yet it counts dozens
    # of canary requests (25% of 60/s)
    last_25 = [c for c in kinds(records, "check") if c["weight"] == 25][-1]
    assert last_25["elapsed"] >= 3.5
    err = next(g for g in last_25["results"] if g["gate"] == "error_rate")
    assert err["window"] == "10s" and err["verdict"] == "pass" and err["samples"] >= 30, err
    for line in ("starting nginx", "waiting for Prometheus to scrape both services", "sending 60 requests/s"):
        assert line in r.stderr
    assert_nothing_left(info)


@pytest.mark.slow
def test_error_rate_fault_at_stage_5_rolls_back_at_5_percent(real_stack: None) -> None:
    r = run_demo("--headless", "--json", "--keep", "--observation-period", "10", "--fault", "error_rate=0.05",
                 "--fault-at-stage", "5", "--check-interval", "1", "--rps", "80")
    records = json_lines(r.stdout)
    info = sandbox_info(records)
    try:
        assert r.returncode == 3, r.stderr[-3000:]
        assert [s["weight"] for s in kinds(records, "stage_started")] == [1, 5]
        (rb,) = kinds(records, "rolled_back")
        assert rb["automatic"] and rb["from_weight"] == 5
        assert "error_rate" in rb["reason"] and "5xx ratio" in rb["reason"], rb["reason"]
        # the gate that fired saw the injected 5xx only after the fault went in at 5%
        failing = [g for c in kinds(records, "check") for g in c["results"]
                   if g["gate"] == "critical_error_rate" and g["verdict"] == "fail"]
        assert failing and all(c["weight"] == 5 for c in kinds(records, "check")
                               if any(g["verdict"] == "fail" for g in c["results"]))
        assert failing[-1]["value"] > 0.01
        assert any("fault injected into the canary at stage 5%: error_rate=0.05" in (n.get("message") or "")
                   for n in records if n.get("event") in ("note", "demo_note"))
        # --keep: the journal and the manifest stay; the processes do not
        journal = list(read_records(Path(info["dir"]) / ".canary" / "journal.jsonl"))
        assert [j["event"] for j in journal if j["event"] == "rolled_back"] == ["rolled_back"]
        manifest = json.loads((Path(info["dir"]) / "sandbox.json").read_text())
        assert [c["pid"] for c in manifest["children"]] == [c["pid"] for c in info["children"]]
        assert leftovers(info) == []
        assert not [c for c in info["children"] if port_listening(c["port"])]
    finally:
        shutil.rmtree(info["dir"], ignore_errors=True)


# --------------------------------------------------------------------------- signals


def test_sigterm_while_observing_stops_every_child(real_stack: None) -> None:
    run = Running("--observation-period", "60", *FAST)
    try:
        info = run.wait_for(run.record("demo_sandbox"), what="sandbox announcement")
        run.wait_for(run.record("check"), what="first check")
        run.proc.send_signal(signal.SIGTERM)
        code = run.finish()
    finally:
        run.close()
    assert code == 130, run.err[-2000:]
    assert run.record("interrupted")(run)["signal"] == "SIGTERM"
    assert "stopped 4 processes" in run.err
    assert_nothing_left(info)


def test_sigterm_while_the_sandbox_starts_stops_what_already_runs(real_stack: None, tmp_path: Path) -> None:
    """Before the rollout (here: waiting for Prometheus' first scrape) the signal unwinds the
    start-up itself; the manifest is current from the first child on."""
    run = Running(*FAST, env={**os.environ, "TMPDIR": str(tmp_path)})
    try:
        run.wait_for(lambda r: "waiting for Prometheus to scrape both services" in r.err, what="the Prometheus wait")
        (manifest,) = tmp_path.glob("canary-demo-*/sandbox.json")
        info = json.loads(manifest.read_text())
        run.proc.send_signal(signal.SIGTERM)
        code = run.finish()
    finally:
        run.close()
    assert code == 130 and "SIGTERM: the sandbox is stopped" in run.err, run.err[-2000:]
    assert not run.record("deployment_started")(run)
    assert {c["name"] for c in info["children"]} == {"production", "canary", "prometheus", "nginx"}
    assert_nothing_left(info)


@pytest.mark.slow
def test_sighup_without_prometheus_uses_the_scrape_source_and_stops_every_child(tmp_path: Path) -> None:
    need_binary("nginx")
    env = {**os.environ, "PATH": str(tmp_path)}  # no prometheus on PATH; nginx is found in /usr/sbin
    run = Running("--observation-period", "60", *FAST, env=env)
    try:
        info = run.wait_for(run.record("demo_sandbox"), what="sandbox announcement")
        # the scrape source judges stage 1 on data (the window starts after the warm-up: its first
        # checks may hold a single scrape, "no data"; within a few seconds the gate passes)
        check = run.wait_for(run.record("check", lambda r: r["index"] == 0 and any(
            g["gate"] == "schema_failures" and g["verdict"] == "pass" for g in r["results"])), what="a check on data")
        run.proc.send_signal(signal.SIGHUP)
        code = run.finish()
    finally:
        run.close()
    assert info["metrics_source"] == "scrape" and "prometheus" not in {c["name"] for c in info["children"]}
    assert "Prometheus is not installed" in info["metrics_note"] and "apt-get install -y prometheus" in run.err
    assert {g["gate"]: g["verdict"] for g in check["results"]}["schema_failures"] == "pass"
    assert code == 130, run.err[-2000:]
    assert_nothing_left(info)


STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
ignore = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"
kid = subprocess.Popen([sys.executable, "-c", ignore])
print(kid.pid, flush=True)
time.sleep(120)
"""


def test_sandbox_kills_a_group_that_ignores_sigterm_after_the_grace_period(tmp_path: Path) -> None:
    """What no demo child does on demand: ignore SIGTERM, with a grandchild in its group."""
    sb = Sandbox(tmp_path / "sb", grace=0.5)
    with sb:
        child = sb.spawn("stubborn", [sys.executable, "-c", STUBBORN])
        assert child.log_path is not None
        deadline = time.monotonic() + 20
        while not child.log_path.read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.05)  # polling interval of a deadline loop
        grandchild = int(child.log_path.read_text().split()[0])
        info = {**sb.describe(), "children": [{**c, "port": None} for c in sb.describe()["children"]]}
        t0 = time.monotonic()
    took = time.monotonic() - t0
    assert 0.5 <= took < 5.0, took  # waited out the grace period, then SIGKILL
    assert child.proc is not None and child.proc.returncode == -signal.SIGKILL
    assert not Path(f"/proc/{grandchild}").exists()
    assert_nothing_left(info)


WEDGED_CONSOLE = """
import json, os, pty, sys, time
from pathlib import Path
from console.sandbox.drive import ConsoleWatchdog
from console.sandbox.supervisor import Sandbox

sb = Sandbox(Path(sys.argv[1]))
sb.install_handlers()
sb.spawn("sleeper", [sys.executable, "-c", "import time; time.sleep(120)"])
print(json.dumps(sb.describe()), flush=True)
master, slave = pty.openpty()
ConsoleWatchdog(sb, grace=0.5, fd=slave).start()
os.close(master)  # the terminal goes away
time.sleep(120)  # a console that never hands back
"""


def test_console_watchdog_stops_the_sandbox_when_the_terminal_vanishes_and_the_console_hangs(tmp_path: Path) -> None:
    """Textual can wedge in its shutdown when its terminal is gone (SIGHUP); the watchdog then
    stops every child itself and ends the demo (exit 130)."""
    r = subprocess.run([sys.executable, "-c", WEDGED_CONSOLE, str(tmp_path / "sb")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 130, r.stderr
    info = json.loads(r.stdout.splitlines()[0])
    assert_nothing_left(info)


# --------------------------------------------------------------------------- failures to start


def demo_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["demo", *argv])


def test_a_taken_nginx_port_is_one_clear_line_and_exit_4(capsys: pytest.CaptureFixture[str]) -> None:
    """nginx really fails to bind a port another process holds; the services it started first
    are stopped again."""
    need_binary("nginx")
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    seen: list[dict[str, Any]] = []
    real_start_nginx = stack.start_nginx

    def start_nginx_on_taken_port(sb: Any, nginx_bin: str, port: int, urls: dict[str, str]) -> Any:
        seen.append(sb.describe())
        return real_start_nginx(sb, nginx_bin, taken, urls)

    mp = pytest.MonkeyPatch()
    mp.setattr(stack, "start_nginx", start_nginx_on_taken_port)
    try:
        code = demo.run(demo_args("--headless", "--source", "scrape"))
    finally:
        mp.undo()
        holder.close()
    err = capsys.readouterr().err
    assert code == 4
    lines = [ln for ln in err.splitlines() if "is taken" in ln]
    assert len(lines) == 1 and f"port {taken} on 127.0.0.1 is taken" in lines[0] and "ss -ltnp" in lines[0], err
    (info,) = seen
    assert {c["name"] for c in info["children"]} == {"production", "canary"}
    assert_nothing_left(info)


def test_a_taken_port_asked_for_explicitly_fails_before_anything_starts(capsys: pytest.CaptureFixture[str]) -> None:
    need_binary("nginx")
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        args = demo_args("--headless")
        args.port = holder.getsockname()[1]  # the --port flag (see docs/demo.md)
        code = demo.run(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 4
    assert len(err) == 1 and f"port {args.port} on 127.0.0.1 is taken" in err[0], err


def test_prometheus_required_but_missing_is_one_line_with_the_apt_command(tmp_path: Path) -> None:
    need_binary("nginx")
    r = run_demo("--headless", "--source", "prometheus", env={**os.environ, "PATH": str(tmp_path)}, timeout=30)
    assert r.returncode == 4
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "apt-get install -y prometheus" in lines[0] and "--source scrape" in lines[0], r.stderr


@pytest.mark.parametrize("argv, needle", [
    (["--fault", "error_rate"], "NAME=VALUE"),
    (["--fault", "error_rate=2"], "within 0..1"),
    (["--fault", "bogus=1"], "error_rate, latency"),
    (["--fault", "latency=slow:3"], "MODE=SECONDS"),
    (["--fault", "error_rate=0.05", "--fault-at-stage", "7"], "one of the stages 1, 5, 25, 100"),
    (["--fault-at-stage", "5"], "needs at least one --fault"),
    (["--rps", "0"], "> 0"),
])
def test_bad_flags_are_one_line_and_exit_2(argv: list[str], needle: str) -> None:
    r = run_demo("--headless", *argv, timeout=30)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr


def test_a_crash_inside_the_demo_still_stops_every_child(capsys: pytest.CaptureFixture[str]) -> None:
    need_binary("nginx")
    seen: list[dict[str, Any]] = []

    def crash(r: Any, plan: Any) -> int:
        seen.append(r.sandbox.describe())
        raise RuntimeError("boom")

    mp = pytest.MonkeyPatch()
    mp.setattr(drive, "drive", crash)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            demo.run(demo_args("--headless", "--source", "scrape"))
    finally:
        mp.undo()
    (info,) = seen
    assert {c["name"] for c in info["children"]} == {"production", "canary", "nginx"}
    assert_nothing_left(info)
    assert "stopped 3 processes" in capsys.readouterr().err


# --------------------------------------------------------------------------- the console, in tmux


class Tmux:
    """A tmux server of our own (-L unique socket), killed at teardown."""

    def __init__(self, binary: str, name: str, env: dict[str, str]) -> None:
        self.base = [binary, "-L", name, "-f", "/dev/null"]
        self.env = env

    def __call__(self, *args: str) -> str:
        r = subprocess.run([*self.base, *args], capture_output=True, text=True, env=self.env, timeout=10)
        assert r.returncode == 0, r.stderr
        return r.stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "demo")

    def wait_screen(self, pred: Any, timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.screen()
            if pred(text):
                return text
            time.sleep(0.2)  # polling interval of a deadline loop
        raise AssertionError(f"screen never showed {what} within {timeout}s:\n{text}")

    def kill(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True, env=self.env, timeout=10)


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    binary = need_binary("tmux")
    env = {**os.environ, "TMPDIR": str(tmp_path), "TERM": "xterm-256color"}
    t = Tmux(binary, f"canary-demo-test-{os.getpid()}-{time.monotonic_ns()}", env)
    try:
        yield t
    finally:
        t.kill()
        # the demo got SIGHUP with its terminal: wait until it has cleaned up after itself
        deadline = time.monotonic() + 30
        while list(tmp_path.glob("canary-demo-*")) and time.monotonic() < deadline:
            time.sleep(0.1)  # polling interval of a deadline loop


@pytest.mark.slow
def test_console_fault_menu_error_burst_rolls_back_on_screen(real_stack: None, tmux: Tmux, tmp_path: Path) -> None:
    tmux("new-session", "-d", "-x", "80", "-y", "24", "-s", "demo", CLI, "demo", "--observation-period", "30",
         "--check-interval", "1", "--rps", "40")
    tmux.wait_screen(lambda s: "OBSERVING" in s and "stage 1/4" in s, 60, "stage 1 observing")
    manifests = list(tmp_path.glob("canary-demo-*/sandbox.json"))
    assert len(manifests) == 1
    info = json.loads(manifests[0].read_text())
    tmux("send-keys", "-t", "demo", "F")
    tmux.wait_screen(lambda s: "error burst" in s, 10, "the fault menu")
    tmux("send-keys", "-t", "demo", "Enter")  # the first entry: the error burst
    screen = tmux.wait_screen(lambda s: "ROLLED BACK" in s, 60, "the automatic rollback")
    assert "canary 0%" in screen and "stage 1/4" in screen, screen
    tmux("send-keys", "-t", "demo", "q")  # not live any more: quits at once
    deadline = time.monotonic() + 30
    while Path(info["dir"]).exists() and time.monotonic() < deadline:
        time.sleep(0.1)  # polling interval of a deadline loop
    assert_nothing_left(info)


def test_console_closed_terminal_sighup_stops_every_child(real_stack: None, tmux: Tmux, tmp_path: Path) -> None:
    """The terminal goes away under a live console (tmux kill-server: SIGHUP and a hung-up tty)."""
    tmux("new-session", "-d", "-x", "100", "-y", "30", "-s", "demo", CLI, "demo", "--observation-period", "30",
         "--check-interval", "1", "--rps", "40")
    tmux.wait_screen(lambda s: "OBSERVING" in s and "stage 1/4" in s, 60, "stage 1 observing")
    (manifest,) = tmp_path.glob("canary-demo-*/sandbox.json")
    info = json.loads(manifest.read_text())
    tmux.kill()
    deadline = time.monotonic() + 30  # the console's watchdog gives a wedged shutdown 10 s
    while Path(info["dir"]).exists() and time.monotonic() < deadline:
        time.sleep(0.1)  # polling interval of a deadline loop
    assert_nothing_left(info)
