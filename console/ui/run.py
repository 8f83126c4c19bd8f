"""Running the console: on a link (attach, watch, replay) or beside an in-process engine
(``deploy --foreground``, the demo)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from console.core import state as st
from console.core.exits import ExitCode
from console.ui.app import CanaryApp


def run_console(link: Any, *, cfg: Any = None, version: str = "", break_glass: Callable[..., Any] | None = None,
                **kw: Any) -> int:
    """Run the console on a link until the operator quits; returns the exit code.

    ``cfg`` (optional) gives the log panes, the pane size and the metrics note; ``break_glass``
    (``console.commands.session.break_glass_rollback``) lets ``r`` roll back through the router when a
    detached engine is gone."""
    if cfg is not None:
        from console.ui.sources import specs_from_config

        kw.setdefault("log_sources", specs_from_config(cfg))
        kw.setdefault("log_max_lines", int(cfg["console"]["log_max_lines"]))
        kw.setdefault("metrics_note", note(cfg))
    kw.setdefault("title_version", version)
    glass = (lambda reason: break_glass(cfg, reason).took_s) if (break_glass is not None and cfg is not None) else None
    app = CanaryApp(link, break_glass=glass, **kw)
    app.run()
    return app.exit_code if app.return_code is not None else ExitCode.INTERRUPTED


def run_console_with_engine(engine: Any, cfg: Any, version: str, **kw: Any) -> int:
    """``deploy --foreground`` and the demo: the engine runs in this process, in the App's loop.

    Quitting while live interrupts the engine (the traffic stays; exit 130); quitting at 100%
    ends monitoring (exit 0); SIGTERM / SIGHUP do the same as a confirmed quit."""
    from console.remote.links import InProcessLink
    from console.ui.sources import specs_from_config

    link = InProcessLink(engine)
    app = CanaryApp(link, title_version=version, log_sources=kw.pop("log_sources", specs_from_config(cfg)),
                    log_max_lines=int(cfg["console"]["log_max_lines"]), metrics_note=kw.pop("metrics_note", note(cfg)),
                    **kw)
    return asyncio.run(with_engine(engine, app, app.run_async))


async def with_engine(engine: Any, app: CanaryApp, run_app: Callable[[], Awaitable[Any]]) -> int:
    """Run ``engine`` beside the console until the console ends; returns the engine's exit code."""
    task = asyncio.ensure_future(engine.run())
    loop = asyncio.get_running_loop()
    sigs = (signal.SIGTERM, signal.SIGHUP)  # the same as a confirmed quit: exit 130 (ExitCode.INTERRUPTED)
    for sig in sigs:
        loop.add_signal_handler(sig, lambda name=sig.name: (engine.interrupt(name), app.exit(130, return_code=130)))
    try:
        await run_app()
    finally:
        for sig in sigs:
            loop.remove_signal_handler(sig)
        if not task.done():
            if engine.state.state == st.AT_100:
                engine.stop()  # at 100%: end monitoring, nothing moves
            else:
                engine.interrupt("console quit")  # the traffic stays where it is
        code = await task
        await engine.aclose()
    return int(code)


def note(cfg: Any) -> str:
    src = cfg["metrics"]["source"]
    where = {"prometheus": cfg["prometheus"]["url"], "scrape": cfg["scrape"]["canary"]}.get(src, "")
    return f"{src}{' at ' + where if where else ''}, checks every {cfg['rollout']['check_interval']:g}s"
