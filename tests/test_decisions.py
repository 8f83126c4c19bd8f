"""Decisions, not noise (issue 15, items 1 and 5).

The events pane and the headless lines show what changed: checks that change nothing fold into
one updating line; a verdict change, a breach count, a hold, a stage change, an operator action
and a rollback each get their own line, in words.  ``--json`` keeps every record.  An unknown
reads as a word, never ``?``.  The footer, ``?`` and the command palette name the actions in the
guide's words, so an operator who types "rollback" or "roll back" finds it.

Update the snapshots after a deliberate change: pytest tests/test_decisions.py --snapshot-update"""

from __future__ import annotations

import json
import re

import pytest

from console.commands import term
from console.core import events as ev
from console.core.clock import FakeClock
from console.core.engine import Engine, Settings
from console.core.eventfmt import DecisionFeed, FoldLine, HeadlessLines, feed_lines, format_event
from console.core.events import FAIL, INCONCLUSIVE, PASS, GateResult, Operator
from console.core.exits import ExitCode
from console.core.fakes import FakeRouter, ScriptedChecker, ScriptedLink
from console.core.journal import Journal
from console.ui.app import CanaryApp
from console.ui.model import event_lines
from console.ui.testing import Script, failing_gate, holding, observing, pinned_clock, rolled_back, screen_text, wait_for
from widgets.log_pane import LogPane

SIZE = (80, 24)
UNKNOWN = re.compile(r"(?<![\w/])\?{1,2}(?![\w])|\[\?\?\]")  # a bare "?" or "??" standing for a value


def quiet(n: int = 14) -> Script:
    return Script().start().stage(0).check(n, seq=False)


# ----------------------------------------------------------------------------- the folder (core)

def test_checks_that_change_nothing_fold_into_one_updating_line():
    feed = DecisionFeed()
    s = quiet(14)
    out = [line for e in s.events for line in feed.feed(e)]
    folds = [line for line in out if isinstance(line, FoldLine)]
    assert len(folds) == 14  # one per check, each replacing the one before
    assert folds[0].endswith("checks: 1, every gate passing")
    assert folds[-1] == "00:03:31 checks: 14 in a row, every gate passing"
    shown = feed_lines(s.events)
    assert shown[-1] == folds[-1] and sum("checks:" in line for line in shown) == 1
    assert len(shown) == len(s.events) - 14 + 1


def test_a_verdict_change_gets_its_own_line_with_value_threshold_window_and_n():
    s = quiet(5).check(1, seq=False, verdicts={"p95_latency.fast": INCONCLUSIVE}).check(3, seq=False)
    shown = feed_lines(s.events)
    changes = [line for line in shown if "->" in line and "router" not in line]
    assert changes == [
        "00:01:31 p95_latency.fast PASS -> INCONCLUSIVE: 462ms against 2.50s (5m, n=150)",
        "00:01:46 p95_latency.fast INCONCLUSIVE -> PASS: 487ms against 2.50s (5m, n=155)",
    ]
    # the checks around them fold: 5 before, then 3 after the one that set the verdicts back
    assert [line[9:] for line in shown if "checks:" in line] == [
        "checks: 5 in a row, every gate passing", "checks: 3 in a row, every gate passing"]


def test_each_breach_count_gets_its_own_line():
    s = quiet(3).check(3, seq=False, error_rate=0.0082)
    shown = feed_lines(s.events)
    assert [line[9:] for line in shown[-3:]] == [
        "error_rate PASS -> FAIL: 0.82% against 0.50% (5m, n=461); breach 1 of 3",
        "error_rate still FAIL: 0.82% against 0.50% (5m, n=476); breach 2 of 3",
        "error_rate still FAIL: 0.82% against 0.50% (5m, n=491); breach 3 of 3",
    ]


def test_hold_stage_change_operator_action_and_rollback_are_lines_never_folded():
    s = quiet(2)
    s.hold("inconclusive after 1800s of observation: error_rate inconclusive")
    s.check(2, seq=False).action("resume").passed().stage(1).check(2, seq=False).action("rollback", user="bob")
    s.rollback("manual rollback by bob", automatic=False)
    feed = DecisionFeed()
    lines = [line for e in s.events for line in feed.feed(e)]
    plain = [line[9:] for line in lines if not isinstance(line, FoldLine)]
    for wanted in ("HOLDING at 1%: inconclusive after 1800s of observation: error_rate inconclusive",
                   "operator alice@10.0.0.7: resume",
                   "stage 1 (1%) passed: every gate passed on data",
                   "stage 2/4: 5% canary, observing 900s",
                   "operator bob@10.0.0.7: roll back",
                   "ROLLING BACK from 5%: manual rollback by bob",
                   "ROLLED BACK (manual) from 5% to 0%: manual rollback by bob"):
        assert wanted in plain, wanted
    # a fold line after any other line is a new line, never a rewrite of it; the count goes on while the
    # verdicts stay the same on the same stage (a hold changes no verdict), and starts again on a new stage
    shown = feed_lines(s.events)
    assert [line[9:] for line in shown if "checks:" in line] == [
        "checks: 2 in a row, every gate passing", "checks: 4 in a row, every gate passing",
        "checks: 2 in a row, every gate passing"]


def test_advisory_and_blocking_gates_that_stay_off_say_so_in_the_fold_line():
    assert feed_lines(observing().events)[-1].endswith("checks: 20 in a row, all blocking gates pass, seq.errors INCONCLUSIVE")
    held = feed_lines(holding().events)
    assert held[-2].endswith("checks: 3 in a row, no change: error_rate ERROR, p95_latency.fast ERROR, "
                             "seq.errors INCONCLUSIVE; 4 passing")
    assert held[-1][9:].startswith("HOLDING at 5%: metrics unavailable for 3 checks")


def test_an_unknown_value_reads_as_a_word_never_a_question_mark():
    nobody = [
        ev.DeploymentStarted(ts="2026-01-01T00:00:00.000Z", stages=(1, 100), observation_period=60, check_interval=10),
        ev.RouterIntent(ts="2026-01-01T00:00:00.000Z", weight=1, previous_weight=None, reason="stage 1/2"),
        ev.OperatorAction(ts="2026-01-01T00:00:01.000Z", action="step_back", accepted=False, detail="at the first stage"),
        ev.CheckCompleted(ts="2026-01-01T00:00:10.000Z", weight=1, results=(
            GateResult("error_rate", ev.ERROR, window="5m", detail="Prometheus timed out after 5s"),
            GateResult("p95_latency.fast", INCONCLUSIVE, threshold=2.5, window="5m", samples=0),
            GateResult("seq.errors", INCONCLUSIVE, blocking=False))),
    ]
    texts = [format_event(e) for e in nobody] + feed_lines(nobody)
    for make in (observing, failing_gate, holding, rolled_back):
        events = make().events
        texts += [format_event(e) for e in events] + feed_lines(events)
    assert [t for t in texts if UNKNOWN.search(t)] == []
    joined = "\n".join(texts)
    for words in ("started by an unknown operator", "set canary from an unknown weight -> 1%",
                  "an unknown operator: step back REFUSED (at the first stage)",
                  "error_rate ERROR: no value (5m): Prometheus timed out after 5s",
                  "p95_latency.fast INCONCLUSIVE: no data yet (5m, n=0)", "seq.errors INCONCLUSIVE: no data yet"):
        assert words in joined, words


def test_a_check_from_an_older_journal_without_threshold_window_or_n_still_reads():
    rec = {"event": "check", "ts": "2026-01-01T00:00:10.000Z", "weight": 5, "breaches": {"error_rate": 1},
           "consecutive_failures": 3, "results": [{"gate": "error_rate", "verdict": "fail", "value": 0.0082}]}
    e = ev.event_from_record(rec)
    assert isinstance(e, ev.CheckCompleted)
    assert DecisionFeed().feed(e) == ["00:00:10 error_rate FAIL: 0.82%; breach 1 of 3"]
    assert format_event(e) == "00:00:10 check at 5% +0s: error_rate FAIL 0.82%; error_rate breach 1 of 3"


# ----------------------------------------------------------------------------- headless text (core)

def terminal(text: str) -> list[str]:
    """What a terminal shows for ``text``: "\\r" returns to column 0 and overwrites."""
    lines: list[str] = []
    cur: list[str] = []
    col = 0
    for ch in text:
        if ch == "\n":
            lines.append("".join(cur).rstrip())
            cur, col = [], 0
        elif ch == "\r":
            col = 0
        else:
            if col < len(cur):
                cur[col] = ch
            else:
                cur.append(ch)
            col += 1
    if cur:
        lines.append("".join(cur).rstrip())
    return lines


def test_on_a_terminal_the_fold_line_is_rewritten_in_place():
    s = quiet(14).check(2, seq=False, error_rate=0.0071).passed()
    out = HeadlessLines(tty=True, width=200)
    text = "".join(out.feed(e) for e in s.events) + out.close()
    assert "\r" in text and text.count("\n") == len(feed_lines(s.events))
    assert terminal(text) == feed_lines(s.events)  # the screen ends up with what the events pane shows


def test_on_a_narrow_terminal_the_open_fold_line_is_cut_and_written_whole_once_finished():
    s = quiet(3).passed()
    out = HeadlessLines(tty=True, width=30)
    chunks = [out.feed(e) for e in s.events]
    open_fold = chunks[-2].split("\r")[-1]
    assert len(open_fold) <= 30 and open_fold.endswith("…")  # no wrap: "\r" can rewrite it
    assert chunks[-1].startswith("\r00:00:46 checks: 3 in a row, every gate passing\n")


def test_into_a_file_each_line_is_written_once_with_a_sign_of_life_every_minute():
    s = Script(interval=10).start().stage(0).check(15, seq=False).passed()  # 150 s of quiet checks
    out = HeadlessLines(tty=False)
    text = "".join(out.feed(e) for e in s.events) + out.close()
    assert "\r" not in text
    folds = [line[9:] for line in text.splitlines() if "checks:" in line]
    assert folds == ["checks: 6 in a row, every gate passing", "checks: 12 in a row, every gate passing",
                     "checks: 15 in a row, every gate passing"]  # 60 s, 120 s, then the run's final count
    assert text.splitlines()[-1].endswith("stage 1 (1%) passed: every gate passed on data")


def test_a_quiet_run_at_the_end_of_a_file_is_written_on_close():
    out = HeadlessLines(tty=False)
    text = "".join(out.feed(e) for e in quiet(3).events)
    assert "checks:" not in text
    assert out.close() == "00:00:46 checks: 3 in a row, every gate passing\n"


# ----------------------------------------------------------------------------- headless run (engine)

def scripted_engine(tmp_path, listener):
    """A real Engine on virtual time: gates pass at 1%, error_rate fails at 5% (3 breaches roll back)."""
    def gates(ctx):
        failing = ctx.weight >= 5
        return [GateResult("error_rate", FAIL if failing else PASS, value=0.0071 if failing else 0.001, threshold=0.005,
                           window="5m", samples=100 + int(ctx.stage_elapsed)),
                GateResult("p95_latency.fast", PASS, value=0.41, threshold=2.5, window="5m", samples=60)]

    settings = Settings(stages=[1, 5, 25, 100], observation_period=150, check_interval=10)
    seen: list[ev.Event] = []
    engine = Engine(settings, version="v0.2.0", router=FakeRouter(), journal=Journal(tmp_path / "journal.jsonl"),
                    clock=FakeClock(), checkers=[ScriptedChecker(gates)], operator=Operator("alice", "10.0.0.7"),
                    listeners=[seen.append, listener])
    return engine, seen


async def test_headless_output_of_a_scripted_run_shows_folded_checks_and_decision_lines(tmp_path, capsys):
    printer = term.event_printer(tty=False)
    engine, seen = scripted_engine(tmp_path, printer)
    assert await engine.run() == ExitCode.ROLLED_BACK
    printer.close()
    lines = [line[9:] for line in capsys.readouterr().out.splitlines()]
    assert not any("[ok]" in line or UNKNOWN.search(line) for line in lines)
    start = lines.index("stage 1/4: 1% canary, observing 150s")
    stage1 = lines[start:lines.index("stage 1 (1%) passed: every gate passed on data")]
    assert [line for line in stage1 if line.startswith("checks:")] == [
        "checks: 6 in a row, every gate passing", "checks: 12 in a row, every gate passing",
        "checks: 15 in a row, every gate passing"]
    at5 = lines[lines.index("stage 2/4: 5% canary, observing 150s") + 1:]
    assert at5[:3] == [
        "error_rate PASS -> FAIL: 0.71% against 0.50% (5m, n=110); breach 1 of 3",
        "error_rate still FAIL: 0.71% against 0.50% (5m, n=120); breach 2 of 3",
        "error_rate still FAIL: 0.71% against 0.50% (5m, n=130); breach 3 of 3",
    ]
    assert at5[3].startswith("router: set canary 5% -> 0% (rollback: error_rate")  # traffic first
    assert at5[-1].startswith("ROLLED BACK (automatic) from 5% to 0%: error_rate")
    checks = sum(isinstance(e, ev.CheckCompleted) for e in seen)
    assert checks == 18 and len(lines) == len(seen) - checks + 3 + 3  # 18 checks: 3 fold lines, 3 breach lines


async def test_headless_json_keeps_every_record(tmp_path, capsys):
    printer = term.event_printer(json_lines=True)
    engine, seen = scripted_engine(tmp_path, printer)
    assert await engine.run() == ExitCode.ROLLED_BACK
    printer.close()
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert records == [e.to_record() for e in seen]


async def test_on_a_terminal_the_headless_run_rewrites_the_check_line_and_err_ends_it_first(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    printer = term.event_printer(tty=True)
    engine, seen = scripted_engine(tmp_path, printer)
    assert await engine.run() == ExitCode.ROLLED_BACK
    printer.close()
    out = capsys.readouterr().out
    assert terminal(out) == feed_lines(seen)
    for e in quiet(2).events:  # a fold line is open: a line on stderr must not land on it
        printer(e)
    term.err("the engine said something")
    got = capsys.readouterr()
    assert got.out.endswith("00:00:31 checks: 2 in a row, every gate passing\n")
    assert got.err == "canary-console: the engine said something\n"


# ----------------------------------------------------------------------------- the events pane (Pilot + snapshots)

def fold_only() -> Script:
    return quiet(14)


def verdict_change() -> Script:
    return quiet(14).check(1, seq=False, verdicts={"p95_latency.fast": INCONCLUSIVE})


def breach() -> Script:
    return quiet(14).check(2, seq=False, error_rate=0.0071)


def hold() -> Script:
    return quiet(14).hold("inconclusive after 1800s of observation: p95_latency.fast inconclusive")


def stage_change() -> Script:
    return quiet(14).passed().stage(1)


def operator_action() -> Script:
    return quiet(14).action("pause", user="bob")


def rollback() -> Script:
    return quiet(14).action("rollback", user="bob").rollback("manual rollback by bob", automatic=False)


KINDS = {
    "folded_checks": (fold_only, "checks: 14 in a row, every gate passing"),
    "verdict_change": (verdict_change, "p95_latency.fast PASS -> INCONCLUSIVE: 487ms against 2.50s (5m, n=195)"),
    "breach": (breach, "error_rate still FAIL: 0.71% against 0.50% (5m, n=641); breach 2 of 3"),
    "hold": (hold, "HOLDING at 1%: inconclusive after 1800s of observation: p95_latency.fast inconclusive"),
    "stage_change": (stage_change, "stage 2/4: 5% canary, observing 900s"),
    "operator_action": (operator_action, "operator bob@10.0.0.7: pause"),
    "rollback": (rollback, "ROLLED BACK (manual) from 1% to 0%: manual rollback by bob"),
}


def drawn(app: CanaryApp, script: Script) -> bool:
    events = app.query_one("#events", LogPane)
    return "q Quit" in screen_text(app) and len(events.view.lines) == len(event_lines(script.events)) \
        and not len(events.pending)


@pytest.mark.parametrize("kind", list(KINDS))
async def test_the_events_pane_shows_each_decision_as_its_own_line(kind, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    make, last = KINDS[kind]
    script = make()
    app = CanaryApp(ScriptedLink(script.events), clock=pinned_clock(script))
    assert app.no_color
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: drawn(app, script), what="the events pane")
        events = app.query_one("#events", LogPane)
        assert events.view.lines[-1][9:] == last
        assert last[:70] in screen_text(app)  # on screen at 80 columns, in words
        assert sum("checks:" in line for line in events.view.lines) == 1  # 14 quiet checks, one line


async def test_live_quiet_checks_rewrite_one_line_and_a_decision_starts_a_new_one():
    script = quiet(1)
    link = ScriptedLink(script.events)
    app = CanaryApp(link, clock=pinned_clock(script), drain_interval=0.01)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: drawn(app, script), what="first frame")
        events = app.query_one("#events", LogPane)
        before = len(events.view.lines)
        n = len(script.events)
        script.check(9, seq=False)
        link.feed(*script.events[n:])
        await wait_for(pilot, lambda: "checks: 10 in a row, every gate passing" in screen_text(app), what="fold line")
        assert len(events.view.lines) == before  # rewritten in place, no new line
        n = len(script.events)
        script.check(1, seq=False, error_rate=0.0071).check(2, seq=False, error_rate=0.0071)
        link.feed(*script.events[n:])
        await wait_for(pilot, lambda: events.view.lines[-1].endswith("breach 3 of 3"), what="breach lines")
        assert events.view.lines[-1] in screen_text(app)
        assert events.view.lines[-3:] == [line for line in feed_lines(script.events)[-3:]]
        assert len(events.view.lines) == before + 3


@pytest.mark.parametrize("kind", list(KINDS))
def test_decision_snapshot(snap_compare, kind, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    make, last = KINDS[kind]
    script = make()
    app = CanaryApp(ScriptedLink(script.events), clock=pinned_clock(script))

    async def settle(pilot):
        await wait_for(pilot, lambda: drawn(pilot.app, script) and last[:70] in screen_text(pilot.app), what=kind)
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=settle)


# ----------------------------------------------------------------------------- words: footer, ?, palette

async def test_the_footer_help_and_palette_name_the_actions_in_the_guides_words():
    script = observing()
    link = ScriptedLink(script.events)
    app = CanaryApp(link, clock=pinned_clock(script))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: "q Quit" in screen_text(app), what="footer")
        footer = screen_text(app).splitlines()[-1]
        for words in ("a Advance", "b Back", "r Roll back", "p Pause"):
            assert words in footer, words
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"Advance (a)", "Back (b)", "Roll back (r)", "Pause (p)"} <= titles
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: "Roll back: all traffic to production (0% canary) now" in screen_text(app),
                       what="help screen")
        text = screen_text(app)
        for words in ("Advance: skip the rest", "Step back one stage", "Pause / resume", "Promote the canary to production"):
            assert words in text, words
        await pilot.press("escape")


@pytest.mark.parametrize("query", ["rollback", "roll back"])
async def test_a_palette_search_for_rollback_finds_the_roll_back_command(query):
    from textual.command import CommandPalette

    script = observing()
    link = ScriptedLink(script.events)
    app = CanaryApp(link, clock=pinned_clock(script))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: "q Quit" in screen_text(app), what="footer")
        await pilot.press("ctrl+p")
        await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette), what="palette")
        await pilot.press(*query)
        await wait_for(pilot, lambda: "Roll back (r)" in screen_text(app), what=f"a hit for {query!r}")
        hits = [line for line in screen_text(app).splitlines() if "(r)" in line or "(b)" in line]
        assert hits and "Roll back (r)" in hits[0]  # the first hit
        await pilot.press("enter")
        await wait_for(pilot, lambda: "Roll back" in screen_text(app) and type(app.screen).__name__ == "ConfirmScreen",
                       what="the roll back dialog")
        await pilot.press("y")
        await wait_for(pilot, lambda: link.submitted, what="the rollback intent")
    assert [i.action for i in link.submitted] == ["rollback"]


@pytest.mark.parametrize("make", [observing, failing_gate, holding, rolled_back, lambda: observing().stage(3)],
                         ids=["observing", "failing_gate", "holding", "rolled_back", "at_100"])
async def test_at_80_columns_the_footer_keeps_every_key_it_shows_and_q_quit(make):
    script = make()
    app = CanaryApp(ScriptedLink(script.events), clock=pinned_clock(script))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: drawn(app, script), what="first frame")
        await pilot.pause()
        footer = screen_text(app).splitlines()[-1]
        assert footer.rstrip().endswith("q Quit") and "…" not in footer, footer
