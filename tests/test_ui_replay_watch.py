"""`replay` and `watch`: read-only consoles built from the journal, and a console attached to a
detached engine that vanishes (engine lost, break-glass rollback through the router)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from console.commands.history import run_replay as replay_run
from console.core import events as ev
from console.core.fakes import ScriptedDetachedLink
from console.core.journal import Journal, read_records
from console.core.state import events_of
from console.remote.links import JournalFollowLink, ReplayLink
from console.ui.app import CanaryApp
from console.ui.screens import ConfirmScreen
from console.ui.testing import DEP, Script, observing, pinned_clock, rolled_back, screen_text, wait_for

SIZE = (80, 24)


@dataclass
class _Cfg:
    journal_path: Path


def write_journal(path: Path, events: list[ev.Event]) -> None:
    with Journal(path) as j:
        for e in events:
            j.append(e)


def test_replay_without_a_terminal_prints_the_event_log(tmp_path, capsys):
    jp = tmp_path / "journal.jsonl"
    write_journal(jp, rolled_back().events)
    assert replay_run(argparse.Namespace(deployment_id=DEP[-4:]), _Cfg(jp)) == 0  # a unique suffix is enough
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("00:00:00 deployment v0.2.0-20260101T000000Z-ab12 started by alice")
    assert "ROLLED BACK (automatic) from 5% to 0%" in out[-1]


def test_replay_of_an_unknown_id_says_what_is_allowed_in_one_line(tmp_path, capsys):
    jp = tmp_path / "journal.jsonl"
    write_journal(jp, rolled_back().events)
    assert replay_run(argparse.Namespace(deployment_id="nope"), _Cfg(jp)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0] and DEP in err[0]


async def test_replay_console_shows_the_outcome_and_history_and_moves_nothing(tmp_path):
    script = rolled_back()
    jp = tmp_path / "journal.jsonl"
    write_journal(jp, script.events)
    events = events_of(read_records(jp), DEP)  # through the journal's JSON, as `replay` reads it
    assert len(events) == len(script.events)
    app = CanaryApp(ReplayLink(events), clock=pinned_clock(script, after=86_400))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: "ROLLED BACK" in screen_text(app), what="outcome")
        text = screen_text(app)
        assert "READ-ONLY replay" in text
        assert "STALE" not in text  # a day-old journal is history, not stale data
        await pilot.press("r", "a", "p")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)
        await pilot.press("enter")  # the detail chart works on history
        await wait_for(pilot, lambda: "error_rate: canary 0.82%" in screen_text(app), what="detail of error_rate")
        await pilot.press("escape", "q")
        await wait_for(pilot, lambda: not app.is_running, what="exit")
    assert app.return_code == 0


async def test_watch_follows_records_appended_to_the_journal(tmp_path):
    jp = tmp_path / "journal.jsonl"
    s = Script().start().stage(0).check(2)
    write_journal(jp, s.events)
    link = JournalFollowLink(jp, poll=0.05)
    assert link.role == "watcher" and link.deployment_id == DEP
    app = CanaryApp(link, clock=pinned_clock(s))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: "stage 1/4 1%" in screen_text(app), what="history")
        n = len(s.events)
        s.passed().stage(1)
        write_journal(jp, s.events[n:])  # the driver's engine appends
        await wait_for(pilot, lambda: "stage 2/4 5%" in screen_text(app), what="appended records")
        await pilot.press("r")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)
        assert "r Roll back" not in screen_text(app).splitlines()[-1]


async def test_quitting_an_attached_console_detaches_or_stops_the_engine():
    link = ScriptedDetachedLink(observing().events)
    app = CanaryApp(link, clock=pinned_clock(observing()))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: "OBSERVING" in screen_text(app), what="first frame")
        await pilot.press("q")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="quit dialog")
        text = " ".join(screen_text(app).split())
        assert "engine keeps running" in text and "canary-console attach" in text and "--resume" in text
        await pilot.press("s")
        await wait_for(pilot, lambda: not app.is_running, what="exit")
    assert link.stopped and app.return_code == 130


async def test_a_lost_engine_is_announced_and_r_rolls_back_through_the_router():
    calls: list[str] = []
    link = ScriptedDetachedLink(observing().events)
    app = CanaryApp(link, clock=pinned_clock(observing()), break_glass=calls.append)
    bells: list[int] = []
    async with app.run_test(size=SIZE) as pilot:
        app.bell = lambda: bells.append(1)  # type: ignore[method-assign]
        await wait_for(pilot, lambda: "OBSERVING" in screen_text(app), what="first frame")
        link.lose("engine lost: the connection closed")
        await wait_for(pilot, lambda: "ENGINE LOST" in screen_text(app), what="lost badge")
        assert bells
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="break-glass dialog")
        assert "break-glass" in screen_text(app)
        await pilot.press("y")
        await wait_for(pilot, lambda: calls, what="break-glass rollback")
    assert calls[0].startswith("engine lost; rolled back from the console by ")
    assert link.submitted == []


async def test_a_watching_console_can_take_over_with_T():
    link = ScriptedDetachedLink(observing().events, role="watcher")
    app = CanaryApp(link, clock=pinned_clock(observing()))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: "T Take over" in screen_text(app), what="take over key")
        assert "r Roll back" not in screen_text(app)
        await pilot.press("T", "y")
        await wait_for(pilot, lambda: "r Roll back" in screen_text(app).splitlines()[-1], what="driver keys")


def test_the_engine_side_modules_import_without_textual_or_rich():
    code = ("import sys, console.core.engine, console.commands.cli, console.adapters.logtail, console.commands.history, "
            "console.commands.attach, console.remote.links, console.ui.model;"
            "bad = [m for m in ('textual', 'rich') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
