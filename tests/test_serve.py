"""`canary-console serve`: the live console, read-only, in a browser (docs/serve.md).

The end-to-end test runs a real rollout (real nginx, real backends, the real headless deploy),
`canary-console serve` on a free loopback port and a real headless Chromium over WebDriver; it
reads the page's terminal (xterm.js draws on a canvas, so the text is read from xterm's buffer)
and presses the traffic keys there: nothing moves.  The page's screenshot is kept when it fails.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from console.commands.serve import mirror_command
from console.core import events as ev
from console.core.journal import Journal, read_records
from console.remote.links import JournalFollowLink, MirrorLink
from console.ui.app import TRAFFIC, UNBOUND_FOR_OBSERVER, CanaryApp
from console.ui.screens import ConfirmScreen
from console.ui.testing import Script, pinned_clock, screen_text
from console.ui.testing import wait_for as pilot_wait_for
from tests.fixtures.browser import CONTROL, ENTER, ESCAPE, Browser
from tests.fixtures.real import children, free_port, spawn_headless_deploy, stop_group, wait_for

REPO = Path(__file__).resolve().parents[1]
TRAFFIC_WORDS = ("rollback", "roll back", "advance", "promote", "take over", "fault")
# what the console says of each key the mirror must not have: its palette entry and its tooltip
UNBOUND_TEXTS = tuple(t.lower() for b in CanaryApp.BINDINGS if b.action in UNBOUND_FOR_OBSERVER
                      for t in (f"{b.description} ({b.key})", b.tooltip) if t)

# textual-serve keeps its xterm.js Terminal inside its bundle; this records the object that holds
# it (the one that gets a `webglAddon`) before the page's script runs, so the test can read the
# terminal's buffer: the text the operator sees
TERMINAL_HOOK = """
Object.defineProperty(Object.prototype, "webglAddon", {configurable: true, set(v) {
  Object.defineProperty(this, "webglAddon", {value: v, writable: true, configurable: true});
  (window.__canaryTerminals = window.__canaryTerminals || []).push(this);
}});
"""
READ_SCREEN = """
const holders = window.__canaryTerminals || [];
if (!holders.length || !holders[0].terminal) return null;
const t = holders[0].terminal, b = t.buffer.active, rows = [];
for (let i = 0; i < t.rows; i++) { const l = b.getLine(b.viewportY + i); rows.push(l ? l.translateToString(true) : ""); }
return rows.join("\\n");
"""


def serve_argv(toml: Path, listen: str) -> list[str]:
    return [sys.executable, "-m", "console.commands.cli", "--config", str(toml), "serve", "--listen", listen]


def spawn_serve(toml: Path, listen: str, out: Path) -> subprocess.Popen[bytes]:
    with open(out, "wb") as f:
        return subprocess.Popen(serve_argv(toml, listen), stdout=f, stderr=subprocess.STDOUT, cwd=toml.parent,
                                start_new_session=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def write_journal(path: Path, events: list[ev.Event]) -> None:
    with Journal(path) as j:
        for e in events:
            j.append(e)


# --------------------------------------------------------------------------- bad input, the command line


@pytest.mark.parametrize("listen", ["8566", "localhost", "example.com:8566", "127.0.0.1:0", "127.0.0.1:65536",
                                    "127.0.0.1:85x", "::1:8566", "[::1]8566", "127.0.0.1:8566; sh", " 127.0.0.1:8566"])
def test_a_bad_listen_address_is_one_line_and_exit_2(tmp_path, listen):
    r = subprocess.run([sys.executable, "-m", "console.commands.cli", "serve", "--listen", listen], cwd=tmp_path,
                       capture_output=True, text=True, timeout=30, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 2, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and repr(listen) in lines[0] and "allowed: HOST:PORT" in lines[0], r.stderr
    assert r.stdout == ""


def test_a_port_in_use_is_one_line_and_exit_4(tmp_path):
    toml = tmp_path / "canary.toml"
    toml.write_text(f'[journal]\npath = "{tmp_path / "journal.jsonl"}"\n')
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run(serve_argv(toml, f"127.0.0.1:{port}"), capture_output=True, text=True, timeout=30,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 4, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot listen on 127.0.0.1:{port}" in lines[0], r.stderr
    assert "serving" not in r.stdout


def test_a_non_loopback_address_is_said_on_start(tmp_path):
    toml = tmp_path / "canary.toml"
    toml.write_text(f'[journal]\npath = "{tmp_path / "journal.jsonl"}"\n')
    port = free_port()
    out = tmp_path / "serve.out"
    proc = spawn_serve(toml, f"0.0.0.0:{port}", out)
    try:
        line = wait_for(lambda: next((ln for ln in out.read_text().splitlines() if "serving" in ln), None), 30,
                        "the serving line", screen=out.read_text)
        assert f"http://0.0.0.0:{port}" in line and "NOT loopback" in line and "without a login" in line
    finally:
        stop_group(proc)
    assert proc.returncode == 0  # SIGTERM stops serve cleanly


def test_the_served_command_is_fixed_words_and_the_quoted_config_path(tmp_path):
    """textual-serve runs one shell string: a path with shell syntax in it stays one word."""
    odd = tmp_path / "a dir; touch pwned $(id)" / "canary.toml"
    cmd = mirror_command(odd, None, python="/opt/py thon/bin/python")
    assert shlex.split(cmd) == ["exec", "/opt/py thon/bin/python", "-m", "console.commands.cli", "--config", str(odd),
                                "watch", "--mirror"]
    out = subprocess.run(["sh", "-c", cmd.replace("exec ", "exec printf '%s\\n' ", 1)], capture_output=True, text=True)
    assert out.stdout.splitlines() == shlex.split(cmd)[1:] and not (tmp_path / "pwned").exists()
    assert mirror_command(None, str(tmp_path / ".env"), python="py").endswith(
        f"--env-file {tmp_path / '.env'} watch --mirror")


# --------------------------------------------------------------------------- the observer console (Pilot)


async def test_the_observer_console_binds_no_traffic_key_at_all(tmp_path):
    jp = tmp_path / "journal.jsonl"
    s = Script().start().stage(1).check(2)
    write_journal(jp, s.events)
    link = MirrorLink(jp, poll=0.05)
    app = CanaryApp(link, clock=pinned_clock(s))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot_wait_for(pilot, lambda: "stage 2/4 5%" in screen_text(app), what="the live stage")
        assert "READ-ONLY observer" in screen_text(app)
        bound = {b.action for _, b in app._bindings}
        assert not bound & set(UNBOUND_FOR_OBSERVER), bound  # not merely disabled: not there
        assert {"help", "request_quit", "follow"} <= bound
        palette = " ".join(c.title.lower() + " " + c.help.lower() for c in app.get_system_commands(app.screen))
        helped = " ".join(f"{k.key} {k.description}".lower() for k in app.key_help())
        for word in (*TRAFFIC_WORDS, *UNBOUND_TEXTS):
            assert word not in palette and word not in helped, word
        await pilot.press("r", "a", "b", "p", "P", "T", "F")
        await pilot.press("question_mark")
        await pilot_wait_for(pilot, lambda: app.screen.id == "help" or "Every key" in screen_text(app), what="help")
        assert not any(isinstance(sc, ConfirmScreen) for sc in app.screen_stack)
        shown = screen_text(app).lower()  # the help, over a footer
        for word in TRAFFIC_WORDS:
            assert word not in shown, word
        for action in TRAFFIC:
            with pytest.raises(PermissionError, match="browser mirror is read-only"):
                await link.submit(ev.Intent(action, operator=ev.Operator.current()))
        with pytest.raises(PermissionError):
            await link.take_over()
    # the same journal in `watch`: the keys are bound and shown as off (the mirror is stricter)
    app = CanaryApp(JournalFollowLink(jp, poll=0.05), clock=pinned_clock(s))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot_wait_for(pilot, lambda: "stage 2/4 5%" in screen_text(app), what="the live stage")
        assert "rollback" in {b.action for _, b in app._bindings}
        assert any(k.key == "r" and not k.enabled for k in app.key_help())


# --------------------------------------------------------------------------- a real browser on a real rollout


@contextlib.contextmanager
def screenshot_on_failure(browser: Browser, directory: Path, name: str) -> Iterator[None]:
    try:
        yield
    except Exception as e:
        where = Path(os.environ.get("CANARY_ARTIFACTS") or directory)
        where.mkdir(parents=True, exist_ok=True)
        try:
            shot = f"screenshot of the page: {browser.screenshot(where / f'{name}.png')}"
        except Exception as s:  # the browser itself may be what failed
            shot = f"no screenshot: {s}"
        raise AssertionError(f"{e}\n{shot}") from e


def moving_records(jp: Path) -> list[dict]:
    """The journal without the checks and notes that a live observation keeps adding."""
    return [r for r in read_records(jp) if r.get("event") not in ("check", "note")]


@pytest.mark.real
def test_the_browser_shows_the_live_stage_and_gates_and_no_key_there_moves_traffic(tmp_path, nginx_env, browser):
    from tests.fixtures.nginx import write_canary_toml

    toml = write_canary_toml(tmp_path / "canary.toml", nginx_env,
                             rollout={"stages": [1, 5, 25, 100], "observation_period": 600.0, "check_interval": 0.5})
    jp = tmp_path / ".canary" / "journal.jsonl"
    deploy = spawn_headless_deploy(toml, tmp_path, tmp_path / "deploy.out")
    serve = None
    try:
        def first_check() -> dict | None:
            assert deploy.poll() is None, f"deploy ended:\n{(tmp_path / 'deploy.out').read_text()[-3000:]}"
            return next((r for r in read_records(jp) if r.get("event") == "check"), None) if jp.exists() else None

        check = wait_for(first_check, 60, "the first check at 1%", screen=lambda: (tmp_path / "deploy.out").read_text())
        assert check["weight"] == 1
        upstream = nginx_env.upstream_file.read_bytes()
        port = free_port()
        serve = spawn_serve(toml, f"127.0.0.1:{port}", tmp_path / "serve.out")
        served = wait_for(lambda: "serving the read-only console" in (tmp_path / "serve.out").read_text(), 30,
                          "serve to listen", screen=lambda: (tmp_path / "serve.out").read_text())
        assert served and "loopback only" in (tmp_path / "serve.out").read_text()
        browser.on_new_document(TERMINAL_HOOK)
        with screenshot_on_failure(browser, tmp_path, "serve-failure"):
            browser.open(f"http://127.0.0.1:{port}/")

            def page() -> str:
                return browser.js(READ_SCREEN) or ""

            wait_for(lambda: "stage 1/4 1%" in page(), 60, "the live stage in the browser", screen=page)
            gates = [g["gate"] for g in check["results"]]
            wait_for(lambda: all(g in page() for g in gates), 30, f"the gates {gates} in the browser", screen=page)
            text = page()
            assert "READ-ONLY observer" in text
            footer = text.strip().splitlines()[-1].lower()
            assert "quit" in footer and not any(w in footer for w in TRAFFIC_WORDS), footer
            before = moving_records(jp)
            browser.js("window.__canaryTerminals[0].terminal.focus()")
            browser.keys("r", "P", "a", "b", "p", "T", "F")
            browser.keys(CONTROL + "p")
            wait_for(lambda: "Search for commands" in page(), 30, "the command palette", screen=page)
            browser.keys(*"roll back")
            wait_for(lambda: "roll back" in page(), 30, "the typed search", screen=page)
            listed = _palette_lines(page())
            assert not any(w in ln for ln in listed for w in (*TRAFFIC_WORDS, *UNBOUND_TEXTS)), listed
            browser.keys(ENTER)
            # escape clears the search, then closes the palette; one at a time (ESC + a key at once is alt+key)
            wait_for(lambda: "🔎" not in page() or browser.keys(ESCAPE), 30, "the palette to close", screen=page,
                     interval=0.5)
            browser.keys("?")  # keys are handled in order: the help on show means every key above was
            helped = wait_for(lambda: "escape or q closes" in (t := page()) and t, 30, "the help", screen=page)
            shown = helped.lower()
            assert not any(w in shown for w in UNBOUND_TEXTS), helped
            assert "(off: read-only" not in shown and "(confirm)" not in shown, helped
            browser.keys(ESCAPE)
            wait_for(lambda: "escape or q closes" not in page(), 30, "the help to close", screen=page)
            assert "Yes" not in page().split()  # no confirmation was ever asked
            # nothing moved: the deployment still observes stage 1 at 1%, nginx's file is the same bytes
            assert moving_records(jp) == before
            assert nginx_env.upstream_file.read_bytes() == upstream
            assert deploy.poll() is None
            consoles = children(serve.pid)
            assert len(consoles) == 1, "serve runs one console per browser tab"
            browser.close_tab()
            wait_for(lambda: not _alive(consoles[0]), 15, "the console to end with its tab")
            browser.open(f"http://127.0.0.1:{port}/")
            wait_for(lambda: "stage 1/4 1%" in page(), 60, "the stage in a new tab", screen=page)
            consoles = children(serve.pid)
        serve.send_signal(signal.SIGTERM)  # serve alone: it ends its browsers' consoles
        assert serve.wait(30) == 0
        wait_for(lambda: not [p for p in consoles if _alive(p)], 15, "the mirror consoles to end with serve")
        assert deploy.poll() is None and moving_records(jp) == before  # the rollout never noticed
    finally:
        if serve is not None:
            stop_group(serve)
        stop_group(deploy)


@pytest.mark.real
def test_a_killed_serve_leaves_no_console_behind(tmp_path, browser):
    toml = tmp_path / "canary.toml"
    toml.write_text(f'[journal]\npath = "{tmp_path / "journal.jsonl"}"\n')
    port = free_port()
    serve = spawn_serve(toml, f"127.0.0.1:{port}", tmp_path / "serve.out")
    try:
        wait_for(lambda: "serving" in (tmp_path / "serve.out").read_text(), 30, "serve to listen")
        browser.on_new_document(TERMINAL_HOOK)
        with screenshot_on_failure(browser, tmp_path, "serve-kill-failure"):
            browser.open(f"http://127.0.0.1:{port}/")
            wait_for(lambda: "READ-ONLY observer" in (browser.js(READ_SCREEN) or ""), 60, "the console in the browser")
            console = wait_for(lambda: children(serve.pid), 15, "the console process")[0]
        serve.kill()  # no chance to tidy up: the kernel ends the console (PR_SET_PDEATHSIG)
        serve.wait(15)
        wait_for(lambda: not _alive(console), 15, "the console to end with a SIGKILLed serve")
    finally:
        stop_group(serve)


def _palette_lines(text: str) -> list[str]:
    """The commands the palette lists: the lines under its search line, down to its bottom edge."""
    lines = text.lower().splitlines()
    start = next(i for i, ln in enumerate(lines) if "🔎" in ln)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].strip().startswith("▁")), len(lines))
    return [ln.strip() for ln in lines[start + 1:end] if ln.strip()]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
