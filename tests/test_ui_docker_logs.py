"""The canary app log pane against a real Docker engine (tests/fixtures/dockerd.py): a container
found by its compose service label, its last lines then new ones, in the console's pane; a
stopped container is said in the pane, not a crash."""

from __future__ import annotations

from typing import Any

import pytest

from console.core.fakes import ScriptedLink
from console.ui.app import CanaryApp
from console.ui.sources import LogSourceSpec
from console.ui.testing import observing, pinned_clock, screen_text, wait_for
from widgets.log_pane import LogPane

pytestmark = pytest.mark.real


async def test_canary_container_logs_flow_into_their_pane(docker_sandbox: Any) -> None:
    ctr = docker_sandbox.run_app(service="app-canary", message="canary-app", interval=0.05, healthcheck=False)
    spec = LogSourceSpec("docker", "canary app (service app-canary)", service="app-canary", tail=5,
                         docker={"host": docker_sandbox.host})
    script = observing()
    app = CanaryApp(ScriptedLink(script.events), clock=pinned_clock(script), log_sources=[spec], drain_interval=0.05)
    async with app.run_test(size=(160, 50)) as pilot:
        pane = app.query(LogPane).first()

        def numbers() -> list[int]:
            return [int(ln.rsplit(" ", 1)[1]) for ln in pane.view.lines if ln.startswith("canary-app line ")]

        await wait_for(pilot, lambda: len(numbers()) >= 10, timeout=20, what="container log lines")
        got = numbers()
        assert got == sorted(got) and got[-1] - got[0] == len(got) - 1  # in order, none lost
        assert "canary-app line" in screen_text(app)  # on screen (wide layout: every pane side by side)
        assert any(f"following {ctr.name}" in ln for ln in pane.view.lines)
        ctr.stop(timeout=1)
        await wait_for(pilot, lambda: any("ended" in ln for ln in pane.view.lines), timeout=20, what="stream end noted")
        assert app.is_running


async def test_an_unreachable_docker_engine_is_one_line_in_the_pane(tmp_path) -> None:
    spec = LogSourceSpec("docker", "canary app", service="app-canary",
                         docker={"host": f"unix://{tmp_path}/no-docker.sock"})
    script = observing()
    app = CanaryApp(ScriptedLink(script.events), clock=pinned_clock(script), log_sources=[spec], drain_interval=0.05)
    async with app.run_test(size=(160, 50)) as pilot:
        pane = app.query(LogPane).first()
        await wait_for(pilot, lambda: any("Docker unreachable" in ln for ln in pane.view.lines), timeout=15,
                       what="docker warning")
        assert app.is_running
