"""Snapshots of the console at 80x24 and 160x50 in the four states an operator must read at a
glance: observing, a failing gate, holding, rolled back.  Time is pinned (the console runs on a
FakeClock standing 5 s after the last event), nothing blinks, the data is scripted.

Update after a deliberate change: pytest tests/test_ui_snapshots.py --snapshot-update"""

from __future__ import annotations

import pytest

from console.core.fakes import ScriptedLink
from console.ui.app import CanaryApp
from console.ui.model import event_lines
from console.ui.testing import failing_gate, holding, observing, pinned_clock, rolled_back, screen_text
from widgets.log_pane import LogPane

STATES = {
    "observing": (observing, "OBSERVING"),
    "failing_gate": (failing_gate, "breach 2 of 3"),
    "holding": (holding, "HOLDING"),
    "rolled_back": (rolled_back, "ROLLED BACK"),
}


@pytest.mark.parametrize("size", [(80, 24), (160, 50)], ids=["80x24", "160x50"])
@pytest.mark.parametrize("state", list(STATES))
def test_console_snapshot(snap_compare, state, size):
    make, marker = STATES[state]
    script = make()
    app = CanaryApp(ScriptedLink(script.events), clock=pinned_clock(script))

    async def settle(pilot):
        events = pilot.app.query_one("#events", LogPane)

        def drawn() -> bool:
            text = screen_text(pilot.app)
            return marker in text and "q Quit" in text and len(events.view.lines) == len(event_lines(script.events)) \
                and not len(events.pending)

        for _ in range(300):
            if drawn():
                break
            await pilot.pause(0.01)
        assert drawn()
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=settle)
