"""Every key of the console, pressed in a Pilot at 80x24 against a scripted engine link:
what the operator sees (dialogs, panes, notifications) and what reaches the engine (intents)."""

from __future__ import annotations

from typing import Any

import pytest

from console.core import events as ev
from console.core.fakes import ScriptedLink
from console.ui.app import CanaryApp
from console.ui.screens import ConfirmScreen, DetailScreen, FaultMenu, HelpScreen
from console.ui.testing import Script, observing, pinned_clock, screen_text, wait_for
from widgets.log_pane import LogPane

SIZE = (80, 24)


def make_app(script: Script | None = None, role: str = "driver", **kw: Any) -> tuple[CanaryApp, ScriptedLink]:
    script = script or observing()
    link = ScriptedLink(script.events, role=role)
    app = CanaryApp(link, clock=pinned_clock(script), **kw)
    return app, link


async def ready(pilot: Any) -> None:
    await wait_for(pilot, lambda: "OBSERVING" in screen_text(pilot.app) or "HOLDING" in screen_text(pilot.app)
                   or "AT 100%" in screen_text(pilot.app) or "ROLLED BACK" in screen_text(pilot.app), what="first frame")


async def footer(pilot: Any) -> str:
    """The footer line, once it has drawn its keys."""
    def line() -> str:
        last = screen_text(pilot.app).splitlines()[-1]
        return last if "q Quit" in last else ""

    return await wait_for(pilot, line, what="footer")


def actions(link: ScriptedLink) -> list[str]:
    return [i.action for i in link.submitted]


def notes(app: CanaryApp) -> str:
    return "\n".join(str(n.message) for n in app._notifications)


# ----------------------------------------------------------------------------- rollback
async def test_r_then_enter_rolls_back_and_the_dialog_shows_current_and_target_weights():
    app, link = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="rollback dialog")
        text = screen_text(app)
        assert "canary 5% / production 95%" in text and "canary 0% / production 100%" in text
        assert app.focused is not None and app.focused.id == "yes"  # the safe direction has the focus
        await pilot.press("enter")
        await wait_for(pilot, lambda: link.submitted, what="rollback intent")
    assert actions(link) == ["rollback"]
    assert link.submitted[0].reason.startswith("manual rollback by ")
    assert link.submitted[0].operator.user


async def test_r_then_y_rolls_back_and_n_or_escape_do_not():
    app, link = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        for key in ("n", "escape"):
            await pilot.press("r")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="dialog")
            await pilot.press(key)
            await wait_for(pilot, lambda: not isinstance(app.screen, ConfirmScreen), what="dialog closed")
        assert link.submitted == []
        await pilot.press("r", "y")
        await wait_for(pilot, lambda: link.submitted, what="rollback intent")
    assert actions(link) == ["rollback"]


async def test_operator_action_is_acknowledged_by_a_notification_and_a_timeline_entry_at_once():
    app, link = make_app()
    link.on_submit = lambda it: [ev.OperatorAction(ts="2026-01-01T00:20:00.000Z", deployment_id="d", action=it.action,
                                                   operator=it.operator, detail=it.reason)]
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("r", "y")
        await wait_for(pilot, lambda: "roll back accepted" in notes(app), timeout=1.0, what="acknowledgement")
        await wait_for(pilot, lambda: "roll back (manual rollback by" in screen_text(app), timeout=1.0, what="timeline entry")


async def test_automatic_rollback_notifies_and_rings_the_bell():
    app, link = make_app()
    bells: list[int] = []
    async with app.run_test(size=SIZE) as pilot:
        app.bell = lambda: bells.append(1)  # type: ignore[method-assign]
        await ready(pilot)
        s = Script()
        s.index, s.t = 1, 2000
        s.rollback("error_rate 0.052 vs threshold 0.005 (5m, n=412)", automatic=True)
        link.feed(*s.events)
        await wait_for(pilot, lambda: "ROLLED BACK" in screen_text(app), what="rolled back state")
        await wait_for(pilot, lambda: "AUTOMATIC ROLLBACK" in notes(app), what="notification")
        assert bells
        assert "error_rate 0.052" in screen_text(app)


# ----------------------------------------------------------------------------- advance / back / pause / promote
async def test_a_asks_with_cancel_focused_and_y_advances():
    app, link = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("a")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="advance dialog")
        assert "canary 25% / production 75%" in screen_text(app)
        assert app.focused is not None and app.focused.id == "no"
        await pilot.press("enter")  # enter on Cancel: nothing moves
        await wait_for(pilot, lambda: not isinstance(app.screen, ConfirmScreen), what="dialog closed")
        assert link.submitted == []
        await pilot.press("a", "y")
        await wait_for(pilot, lambda: link.submitted, what="advance intent")
    assert actions(link) == ["advance"]


async def test_b_steps_back_one_stage_and_is_off_at_the_first_stage():
    app, link = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("b")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="step back dialog")
        assert "canary 1% / production 99%" in screen_text(app)
        await pilot.press("enter")
        await wait_for(pilot, lambda: link.submitted, what="step back intent")
    assert actions(link) == ["step_back"]

    first = Script().start().stage(0).check(3)
    app, link = make_app(first)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("b")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)
        assert "b Back" not in await footer(pilot)
    assert link.submitted == []


async def test_p_pauses_then_resumes_once_the_engine_says_paused():
    app, link = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert "p Pause" in await footer(pilot)
        await pilot.press("p")
        await wait_for(pilot, lambda: actions(link) == ["pause"], what="pause intent")
        link.feed(ev.Paused(ts="2026-01-01T00:20:00.000Z", deployment_id="d", index=1, weight=5, remaining=600))
        await wait_for(pilot, lambda: "PAUSED" in screen_text(app), what="paused state")
        await wait_for(pilot, lambda: "p Resume" in screen_text(app).splitlines()[-1], what="resume key")
        await pilot.press("p")
        await wait_for(pilot, lambda: actions(link) == ["pause", "resume"], what="resume intent")


async def test_P_promotes_only_at_100_with_cancel_focused_and_the_exact_change_named():
    app, link = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("P")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)  # not before 100%
        s = Script()
        s.t, s.index = 3000, 2
        s.stage(3)
        link.feed(*s.events)
        await wait_for(pilot, lambda: "AT 100%" in screen_text(app), what="100%")
        await pilot.press("P")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="promote dialog")
        text = screen_text(app)
        assert "Promote v0.2.0 to production?" in text and "canary 100% / production 0%" in text
        assert app.focused is not None and app.focused.id == "no"
        await pilot.press("enter")
        await pilot.pause()
        assert link.submitted == []
        await pilot.press("P", "y")
        await wait_for(pilot, lambda: link.submitted, what="promote intent")
    assert actions(link) == ["promote"]


async def test_a_watcher_cannot_move_traffic_and_does_not_see_the_keys():
    app, link = make_app(role="watcher")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        keys = await footer(pilot)
        for key in ("a Advance", "r Roll back", "p Pause", "b Back"):
            assert key not in keys
        await pilot.press("a", "b", "r", "p", "P")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)
        assert "READ-ONLY watcher" in screen_text(app)
    assert link.submitted == []


# ----------------------------------------------------------------------------- logs: / f w
def flood(app: CanaryApp, lines: list[str]) -> LogPane:
    pane = app.query_one("#events", LogPane)
    pane.pending.push(lines)
    pane.drain()
    return pane


async def test_slash_filters_the_log_pane_with_a_regex_and_highlights_matches():
    app, link = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        pane = flood(app, [f"GET /recommend 200 {i}" for i in range(50)] + ["GET /recommend 503 upstream timeout"])
        await pilot.press("slash")
        await wait_for(pilot, lambda: pane.has_class("-filtering"), what="filter input")
        await pilot.press(*"50[0-9]", "enter")
        await wait_for(pilot, lambda: pane.view.row_count == 1, what="filtered rows")
        assert "GET /recommend 503 upstream timeout" in screen_text(app)
        assert "/50[0-9]/" in pane.border_title
        strip = pane.view._render_row(pane.view._rows[0][0], 0, 40, pane.view.rich_style)
        assert any(seg.style and seg.style.reverse for seg in strip if "503" in seg.text)  # highlighted, not colour only
        # an invalid regex keeps the old filter and says why in one line
        await pilot.press("slash", "backspace", "backspace", "backspace", "backspace", "backspace", "backspace", "(",
                          "enter")
        await wait_for(pilot, lambda: "not a valid regular expression" in notes(app), what="regex error")
        assert pane.view.row_count == 1
        await pilot.press("escape")
        # an empty filter shows everything again
        await pilot.press("slash", *["backspace"] * 10, "enter")
        await wait_for(pilot, lambda: pane.view.row_count > 50, what="filter cleared")


async def test_f_pauses_the_pane_and_counts_new_lines_then_follows_again():
    app, link = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        pane = flood(app, [f"line {i}" for i in range(100)])
        await pilot.press("f")
        await wait_for(pilot, lambda: not pane.view.follow, what="paused")
        top = pane.view.scroll_y
        flood(app, [f"more {i}" for i in range(30)])
        await wait_for(pilot, lambda: "PAUSED +30 new lines" in screen_text(app), what="new-lines marker")
        assert pane.view.scroll_y == top  # the view stays where the operator is reading
        await pilot.press("f")
        await wait_for(pilot, lambda: pane.view.follow and pane.view.scroll_y == pane.view.max_scroll_y, what="follow")
        assert "more 29" in screen_text(app)


async def test_w_wraps_long_lines():
    app, link = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        long = "x" * 80 + "TAIL-OF-A-LONG-LINE"  # the pane shows 80 columns
        pane = flood(app, [long])
        rows_before = pane.view.row_count
        assert "TAIL-OF-A-LONG-LINE" not in screen_text(app)
        await pilot.press("w")
        await wait_for(pilot, lambda: pane.view.row_count > rows_before, what="wrapped rows")
        await wait_for(pilot, lambda: "TAIL-OF-A-LONG-LINE" in screen_text(app), what="the end of the long line")
        assert "wrap" in pane.border_title


# ----------------------------------------------------------------------------- focus, detail, help, quit
async def test_tab_moves_focus_through_the_panels_and_brings_each_log_pane_on_show(tmp_path):
    from console.ui.sources import LogSourceSpec

    log = tmp_path / "canary.log"
    log.write_text("GET / 200\n")
    app, link = make_app(log_sources=[LogSourceSpec("file", "nginx canary access log", path=str(log))])
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        seen = []
        for _ in range(4):
            await pilot.press("tab")
            await pilot.pause()
            f = app.focused
            seen.append(f.id if f is not None and f.id else type(f).__name__)
        assert seen[0] == "sparks"
        assert seen[3] == "gates"
        await pilot.press("tab", "tab")
        await pilot.pause()
        nginx = app.query(LogPane).first()
        assert nginx.has_class("-shown") and "nginx canary access log" in screen_text(app)
        await pilot.press("shift+tab")
        await pilot.pause()
        assert app.focused is not None and app.focused.id == "sparks"


async def test_enter_opens_the_detail_chart_of_the_selected_gate_and_escape_returns():
    app, link = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("down")  # second gate: critical_error_rate
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, DetailScreen), what="detail view")
        assert app.screen.gate == "critical_error_rate"
        await wait_for(pilot, lambda: "threshold 1.00%" in screen_text(app), what="threshold line label")
        assert "critical_error_rate: canary" in screen_text(app)
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, DetailScreen), what="back")


async def test_question_mark_shows_every_key_and_why_one_is_off():
    app, link = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), what="help")
        text = screen_text(app)
        inside = [line.split("┃")[1] for line in text.splitlines() if line.count("┃") == 2]
        rows = {row.strip().split("  ")[0]: row for row in inside}
        for key in ("a", "b", "r", "p", "P", "/", "f", "w", "enter", "?", "q ctrl+c", "tab", "ctrl+p"):
            assert key in rows, f"{key} missing from the help screen"
        assert "only at 100%" in rows["P"]
        for key in ("a", "r", "p"):  # judged on the console beneath the help, not on the help itself
            assert "(off" not in rows[key], rows[key]
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, HelpScreen), what="closed")


@pytest.mark.parametrize("key", ["q", "ctrl+c"])
async def test_quit_while_live_asks_and_says_the_traffic_stays_and_how_to_resume(key):
    app, link = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press(key)
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="quit dialog")
        text = " ".join(screen_text(app).split())
        assert "traffic stays where it is" in text
        assert "canary-console deploy --version v0.2.0 --resume" in text
        assert "canary-console attach" in text
        await pilot.press("n")
        await pilot.pause()
        assert app.is_running
        await pilot.press(key, "y")
        await wait_for(pilot, lambda: not app.is_running, what="exit")
    assert app.return_code == 130 and link.submitted == []


async def test_quit_after_a_rollback_exits_at_once_with_code_3():
    from console.ui.testing import rolled_back

    app, link = make_app(rolled_back())
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("q")
        await wait_for(pilot, lambda: not app.is_running, what="exit")
    assert app.return_code == 3


async def test_F_opens_the_fault_menu_only_when_the_sandbox_passes_faults():
    called: list[str] = []

    async def burst() -> None:
        called.append("error burst")

    app, link = make_app(fault_actions={"error burst": burst})
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("F")
        await wait_for(pilot, lambda: isinstance(app.screen, FaultMenu), what="fault menu")
        await pilot.press("enter")
        await wait_for(pilot, lambda: called == ["error burst"], what="fault injected")
    app, link = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("F")
        await pilot.pause()
        assert not isinstance(app.screen, FaultMenu)


async def test_stale_badge_when_checks_stop_arriving_for_twice_the_interval():
    script = observing()
    link = ScriptedLink(script.events)
    clock = pinned_clock(script, after=1.0)
    app = CanaryApp(link, clock=clock)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert "STALE" not in screen_text(app)
        clock.advance(31)  # checks every 15 s: 2 x 15 s without one
        app._tick()
        await wait_for(pilot, lambda: "STALE" in screen_text(app), what="stale badge")
        s = Script()
        s.t, s.index, s.stages = 3000, 1, (1, 5, 25, 100)
        s.check()
        link.feed(*s.events)
        await wait_for(pilot, lambda: "STALE" not in screen_text(app), what="fresh again")


async def test_the_command_palette_offers_the_actions_that_apply_now():
    app, link = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert any(t.startswith("Roll back") for t in titles)
        assert not any(t.startswith("Promote") for t in titles)  # not before 100%
        await pilot.press("ctrl+p", *"rollback")
        await wait_for(pilot, lambda: "Roll back: all traffic to production (0% canary) now" in screen_text(app),
                       what="palette match")
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="rollback dialog from the palette")
        await pilot.press("y")
        await wait_for(pilot, lambda: link.submitted, what="rollback intent")
    assert actions(link) == ["rollback"]
