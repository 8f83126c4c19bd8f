"""Colour is never the only signal: with NO_COLOR every verdict, breach and state still reads
as a word or a symbol, the filter highlight uses reverse video, and no stylesheet pins a hex
colour (themes, 16-colour terminals and tmux pick the colours)."""

from __future__ import annotations

import re
from pathlib import Path

from console.core.fakes import ScriptedLink
from console.ui.app import CanaryApp
from console.ui.testing import failing_gate, pinned_clock, rolled_back, screen_text, wait_for

ROOT = Path(__file__).resolve().parents[1]
HEX = re.compile(r"(?:color|background|border[\w-]*|tint|outline)\s*:[^;\n]*#[0-9a-fA-F]{3,8}\b")


def test_no_stylesheet_of_the_console_pins_a_hex_colour():
    sources = [ROOT / "console" / "ui" / "app.tcss", *(ROOT / "widgets").glob("*.py"), *(ROOT / "console" / "ui").glob("*.py")]
    offenders = [f"{p.name}: {m.group(0)}" for p in sources for m in HEX.finditer(p.read_text())]
    assert offenders == []


async def test_with_no_color_verdicts_breaches_and_states_are_words(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    script = failing_gate()
    app = CanaryApp(ScriptedLink(script.events), clock=pinned_clock(script))
    assert app.no_color
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: "breach 2 of 3" in screen_text(app), what="failing gate")
        text = screen_text(app)
        for word in ("● OBSERVING", "✗ FAIL error_rate", "✓ PASS", "… WAIT", "breach 2 of 3", "✗"):
            assert word in text, word
        assert "0.71%✗" in text  # the sparkline row of a breached gate is marked, not just red


async def test_with_no_color_a_rollback_reads_as_one():
    script = rolled_back()
    app = CanaryApp(ScriptedLink(script.events), clock=pinned_clock(script))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: "ROLLED BACK" in screen_text(app), what="rolled back")
        lines = screen_text(app).splitlines()
        assert lines[0].startswith(" ✗ ROLLED BACK")
        assert "✗ 5%" in lines[1]  # the failed stage is marked with a symbol in the timeline
