"""The console on a real Engine (fake router, scripted gates, a clock the test steps): keys
reach the state machine, the router moves, the journal records who asked, and the screen
follows.  Nothing is scripted on the event side: every event comes from the engine."""

from __future__ import annotations

import asyncio

from console.core.clock import FakeClock
from console.core.engine import Engine, Settings
from console.core.events import FAIL, PASS, GateResult, Operator
from console.core.fakes import FakeRouter, ScriptedChecker
from console.core.journal import Journal, read_records
from console.remote.links import InProcessLink
from console.ui.app import CanaryApp
from console.ui.screens import ConfirmScreen
from console.ui.testing import screen_text, wait_for

SIZE = (80, 24)


class SteppedClock(FakeClock):
    """Virtual time that only moves when the test says so: the engine's sleeps wait for it."""

    def __init__(self) -> None:
        super().__init__(start=100.0)
        self._moved: asyncio.Event | None = None

    def _event(self) -> asyncio.Event:
        if self._moved is None:
            self._moved = asyncio.Event()
        return self._moved

    async def sleep(self, seconds: float) -> None:
        target = self.t + max(0.0, seconds)
        while self.t < target - 1e-9:
            ev = self._event()
            ev.clear()
            await ev.wait()

    def advance(self, seconds: float) -> None:
        super().advance(seconds)
        self._event().set()


def make_engine(tmp_path, fn=None):
    clock = SteppedClock()
    router = FakeRouter()
    settings = Settings(stages=[1, 5, 25, 100], observation_period=60, check_interval=10)
    engine = Engine(settings, version="v0.2.0", router=router, journal=Journal(tmp_path / "journal.jsonl"), clock=clock,
                    checkers=[ScriptedChecker(fn)], operator=Operator("alice", "10.0.0.7"))
    return engine, router, clock


async def test_keys_drive_a_real_engine_and_the_screen_follows_it(tmp_path):
    engine, router, clock = make_engine(tmp_path)
    link = InProcessLink(engine)
    app = CanaryApp(link, clock=clock)
    async with app.run_test(size=SIZE) as pilot:
        task = asyncio.ensure_future(engine.run())
        try:
            await wait_for(pilot, lambda: "stage 1/4 1%" in screen_text(app), what="stage 1")
            clock.advance(10)
            await wait_for(pilot, lambda: "error_rate" in screen_text(app), what="first check on screen")

            await pilot.press("a", "y")
            await wait_for(pilot, lambda: router.applied == [1, 5], what="advance to 5%")
            await wait_for(pilot, lambda: "stage 2/4 5%" in screen_text(app), what="stage 2 on screen")

            await pilot.press("p")
            await wait_for(pilot, lambda: "PAUSED" in screen_text(app), what="paused")
            await pilot.press("p")
            await wait_for(pilot, lambda: "OBSERVING" in screen_text(app), what="resumed")

            await pilot.press("b")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="step back dialog")
            await pilot.press("enter")
            await wait_for(pilot, lambda: router.applied == [1, 5, 1], what="step back to 1%")

            await pilot.press("r", "y")
            await wait_for(pilot, lambda: router.applied[-1] == 0, what="rollback to 0%")
            await wait_for(pilot, lambda: "ROLLED BACK" in screen_text(app), what="rolled back on screen")
            assert await asyncio.wait_for(task, 5) == 3
            await pilot.press("q")  # finished: quits without asking
            await wait_for(pilot, lambda: not app.is_running, what="exit")
        finally:
            if not task.done():
                engine.interrupt("test")
                await asyncio.wait_for(task, 5)
    assert app.return_code == 3
    actions = [(r["action"], r["operator"]["user"]) for r in read_records(tmp_path / "journal.jsonl")
               if r["event"] == "operator_action"]
    assert [a for a, _ in actions] == ["advance", "pause", "resume", "step_back", "rollback"]
    assert all(user for _, user in actions)


async def test_an_automatic_rollback_from_the_engine_reaches_the_screen_and_the_bell(tmp_path):
    def gates(ctx):
        bad = ctx.weight == 5
        return [GateResult("error_rate", FAIL if bad else PASS, value=0.02 if bad else 0.0, threshold=0.005, window="5m",
                           samples=300, critical=bad)]

    engine, router, clock = make_engine(tmp_path, gates)
    link = InProcessLink(engine)
    app = CanaryApp(link, clock=clock)
    bells: list[int] = []
    async with app.run_test(size=SIZE) as pilot:
        app.bell = lambda: bells.append(1)  # type: ignore[method-assign]
        task = asyncio.ensure_future(engine.run())
        try:
            await wait_for(pilot, lambda: "stage 1/4 1%" in screen_text(app), what="stage 1")
            for _ in range(7):  # 60 s of observation, checks every 10 s: stage 1 passes, stage 2 fails its first check
                clock.advance(10)
                await pilot.pause()
            await wait_for(pilot, lambda: "ROLLED BACK" in screen_text(app), what="automatic rollback")
            assert router.applied == [1, 5, 0]
            assert bells
            assert "AUTOMATIC ROLLBACK" in "\n".join(str(n.message) for n in app._notifications)
            assert await asyncio.wait_for(task, 5) == 3
        finally:
            if not task.done():
                engine.interrupt("test")
                await asyncio.wait_for(task, 5)


async def test_quitting_the_in_process_console_while_live_stops_the_engine_and_leaves_the_traffic(tmp_path):
    from console.ui.run import with_engine

    engine, router, clock = make_engine(tmp_path)
    app = CanaryApp(InProcessLink(engine), clock=clock)

    async def run_app() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: "stage 1/4 1%" in screen_text(app), what="stage 1")
            await pilot.press("q")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="quit dialog")
            await pilot.press("y")
            await wait_for(pilot, lambda: not app.is_running, what="exit")

    assert await asyncio.wait_for(with_engine(engine, app, run_app), 20) == 130
    assert router.applied == [1]  # the traffic stayed at 1%
    kinds = [r["event"] for r in read_records(tmp_path / "journal.jsonl")]
    assert kinds[-1] == "interrupted"
