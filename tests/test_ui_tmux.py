"""The real `canary-console deploy` in a real terminal (tmux, 80x24) against a real nginx and
real backends: the operator presses r then y; the upstream file goes to 0% canary and the
screen says rolled back."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from console.core.journal import read_records
from tests.fixtures.nginx import write_canary_toml
from tests.fixtures.real import need_binary, wait_for

pytestmark = pytest.mark.real

CLI = str(Path(sys.executable).parent / "canary-console")


class Tmux:
    """A private tmux server (its own socket) running one command in an 80x24 window."""

    def __init__(self, argv: list[str], cwd: Path, width: int = 80, height: int = 24) -> None:
        self.tmux = need_binary("tmux")
        self.sock = f"cc-{uuid.uuid4().hex[:10]}"
        env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "TMUX_PANE")}  # not nested in a caller's tmux
        env["TERM"] = "xterm-256color"
        subprocess.run([self.tmux, "-L", self.sock, "-f", "/dev/null", "new-session", "-d", "-s", "t",
                        "-x", str(width), "-y", str(height), "-c", str(cwd), *argv], check=True, env=env, timeout=30)
        self.cmd("set-option", "-t", "t", "remain-on-exit", "on")  # a crash stays readable on the screen

    def cmd(self, *args: str) -> str:
        return subprocess.run([self.tmux, "-L", self.sock, *args], capture_output=True, text=True, timeout=30).stdout

    def screen(self) -> str:
        return self.cmd("capture-pane", "-p", "-t", "t")

    def keys(self, *keys: str) -> None:
        self.cmd("send-keys", "-t", "t", *keys)

    def alive(self) -> bool:
        return self.cmd("list-panes", "-t", "t", "-F", "#{pane_dead}").strip() == "0"

    def kill(self) -> None:
        subprocess.run([self.tmux, "-L", self.sock, "kill-server"], capture_output=True, timeout=30)
        with contextlib.suppress(OSError):  # the server's socket file, which tmux may leave behind
            (Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}" / self.sock).unlink()




def test_r_then_y_in_a_real_terminal_rolls_back_nginx_and_the_screen_says_so(tmp_path, nginx_env):
    cfg = write_canary_toml(tmp_path / "canary.toml", nginx_env,
                            rollout={"observation_period": 600.0, "check_interval": 1.0})
    router = nginx_env.router()
    term = Tmux([CLI, "--config", str(cfg), "deploy", "--version", "v0.2.0", "--skip-checks"], tmp_path)
    try:
        wait_for(lambda: "OBSERVING" in term.screen() and "stage 1/4 1%" in term.screen(), 60, "the console at 1%",
                 term.screen)
        assert router.current_weight() == 1
        screen = term.screen()
        assert len(screen.splitlines()) <= 24 and max(len(ln) for ln in screen.splitlines()) <= 80
        term.keys("r")
        wait_for(lambda: "Roll back now?" in term.screen(), 10, "the rollback dialog", term.screen)
        assert "canary 1% / production 99%" in term.screen()
        term.keys("y")
        wait_for(lambda: router.current_weight() == 0, 20, "the upstream file at 0% canary", term.screen)
        wait_for(lambda: "ROLLED BACK" in term.screen(), 10, "rolled back on screen", term.screen)
        split = nginx_env.send(50, fresh=True)
        assert split.canary == 0 and split.production == 50  # nginx really serves it
        records = list(read_records(tmp_path / ".canary" / "journal.jsonl"))
        acts = [r for r in records if r["event"] == "operator_action" and r["action"] == "rollback"]
        assert acts and acts[0]["operator"]["user"]
        term.keys("q")  # finished: quits without asking
        wait_for(lambda: not term.alive(), 20, "the console to exit", term.screen)
    finally:
        term.kill()
        _stop_engines(tmp_path / ".canary" / "journal.jsonl")


def _stop_engines(journal: Path) -> None:
    """The detached engine process, if the test failed before it ended on its own."""
    pids = {r.get("engine_pid") for r in read_records(journal) if r.get("event") == "deployment_started"}
    for pid in pids:
        if not pid or pid == os.getpid():
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            try:
                if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
                    break
            except OSError:
                break
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
