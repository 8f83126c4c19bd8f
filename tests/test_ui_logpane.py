"""The log pane: a ring buffer with a hard maximum, whatever passes through it; a file tail
and a flood through the real App; the pane's stale badge."""

from __future__ import annotations

import gc
import tracemalloc

from console.core.fakes import ScriptedLink
from console.ui.app import CanaryApp
from console.ui.sources import LogSourceSpec
from console.ui.testing import observing, pinned_clock, screen_text, wait_for
from widgets.log_pane import LogPane, wrap_offsets

SIZE = (80, 24)


async def test_memory_of_a_pane_is_bounded_by_its_ring_buffer():
    """200,000 lines through a 2,000-line pane keep 2,000 lines and a few hundred KB."""
    app = CanaryApp(ScriptedLink(observing().events), clock=pinned_clock(observing()), log_max_lines=2000)
    async with app.run_test(size=SIZE) as pilot:
        pane = app.query_one("#events", LogPane)
        view = pane.view
        line = "127.0.0.1 - - [01/Jan/2026:00:00:00 +0000] \"GET /api/v1/recommend HTTP/1.1\" 200 512 0.041 canary"
        batch = [f"{line} {i}" for i in range(10_000)]
        pane.pending.push(batch)
        pane.drain()
        await pilot.pause()
        gc.collect()
        tracemalloc.start()
        base, _ = tracemalloc.get_traced_memory()
        for _ in range(20):
            pane.pending.push(batch)
            pane.drain()
        await pilot.pause()
        gc.collect()
        grown, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert len(view.lines) == 2000 and view.row_count == 2000
        assert view.lines[-1].endswith(" 9999")
        assert grown - base < 512 * 1024, f"memory grew by {(grown - base) / 1024:.0f} KB"
        await wait_for(pilot, lambda: f"{line} 9999"[:70] in screen_text(app), what="newest line on screen")


def test_the_pending_buffer_drops_the_oldest_beyond_the_pane_maximum():
    pane = LogPane("x", "x", max_lines=100)
    pane.pending.push(str(i) for i in range(1000))
    lines, dropped = pane.pending.drain()
    assert lines == [str(i) for i in range(900, 1000)] and dropped == 900


def test_wrap_offsets_respect_cell_widths():
    assert wrap_offsets("abcdefgh", 3) == [(0, 3), (3, 6), (6, 8)]
    assert wrap_offsets("日本語テキスト", 4) == [(0, 2), (2, 4), (4, 6), (6, 7)]  # two cells per character


async def test_a_file_tail_pane_follows_a_real_file_through_rotation(tmp_path):
    log = tmp_path / "canary.log"
    log.write_text("GET /a 200\n")
    spec = LogSourceSpec("file", "nginx canary access log", path=str(log), poll_interval=0.05)
    app = CanaryApp(ScriptedLink(observing().events), clock=pinned_clock(observing()), log_sources=[spec],
                    drain_interval=0.02)
    async with app.run_test(size=SIZE) as pilot:
        pane = app.query(LogPane).first()
        await wait_for(pilot, lambda: "GET /a 200" in pane.view.lines, what="first line")
        log.rename(tmp_path / "canary.log.1")
        log.write_text("GET /b 503\n")
        await wait_for(pilot, lambda: "GET /b 503" in pane.view.lines, what="line of the new file")
        assert any("rotated" in ln for ln in pane.view.lines)  # the pane says why the stream jumped
        await pilot.press("tab", "tab")
        await wait_for(pilot, lambda: "GET /b 503" in screen_text(app), what="pane on show")


async def test_a_log_pane_goes_stale_when_its_reader_stops_reporting():
    script = observing()
    clock = pinned_clock(script)
    app = CanaryApp(ScriptedLink(script.events), clock=clock)
    async with app.run_test(size=SIZE) as pilot:
        pane = app.query_one("#events", LogPane)
        pane.poll_interval = 0.25
        pane.heartbeat()
        clock.advance(0.4)
        pane.check_stale(clock.monotonic())
        assert "STALE" not in pane.border_title
        clock.advance(0.2)
        pane.check_stale(clock.monotonic())
        await wait_for(pilot, lambda: "STALE" in screen_text(app), what="stale badge")
