"""A console session on an engine link, shared by `attach` and `deploy`: the Textual console
when there is a terminal, one line per event otherwise; how the session ended, as an exit code;
and the break-glass rollback a console offers when its engine is gone.

Leaving a session (Ctrl-C, a closed terminal, q) detaches: a detached engine goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from console.commands.term import err, event_line, event_printer, out
from console.core import events as ev
from console.core import manual
from console.core.exits import ExitCode, exit_code_for
from console.core.journal import read_records
from console.core.manual import BreakGlassRefused, ManualResult
from console.core.state import FINISHED, UNCONFIRMED, DeploymentState, events_of, fold, router_truth
from console.remote import wire
from console.remote.client import LinkRefused, SocketLink, socket_answers

__all__ = ["BreakGlassRefused", "attach_spawned", "break_glass_rollback", "lost_line", "open_console", "ui_runner"]


def break_glass_rollback(cfg: Any, reason: str, operator: ev.Operator | None = None, *,
                         force: bool = False) -> ManualResult:
    """Roll back straight through the router because the engine is lost (core.manual), with the
    configured router and this journal's socket as the test of a live engine."""
    from console.wiring import build_router

    jp = Path(cfg.journal_path)
    return manual.break_glass_rollback(jp, lambda: build_router(cfg), reason, operator, force=force,
                                       engine_answers=lambda: socket_answers(wire.socket_path_for(jp)))


def ui_available() -> bool:
    """Whether the Textual console is installed, without importing it (``ui_runner`` does)."""
    import importlib.util

    return importlib.util.find_spec("textual") is not None


def ui_runner() -> Callable[..., int] | None:
    """console.ui.run.run_console, when the Textual console is installed."""
    try:
        from console.ui.run import run_console
    except ImportError:
        return None
    return run_console


def open_console(link: SocketLink, cfg: Any, ui: Callable[..., int] | None, *, json_lines: bool = False) -> int:
    """The Textual console (``ui``, see ui_runner) or, without it, one line per event."""
    if ui is not None:
        kw = {"cfg": cfg, "break_glass": break_glass_rollback, "version": link.version}
        params = inspect.signature(ui).parameters
        accepted = {k: v for k, v in kw.items() if k in params}

        def hung_up(signum: int, frame: Any) -> None:
            # the terminal is gone: detach (journaled by the engine when we drove) and leave; there
            # is no screen left to restore.  A UI that handles SIGHUP on its own loop replaces this.
            link.hangup("SIGHUP")
            os._exit(ExitCode.OK)

        previous = signal.signal(signal.SIGHUP, hung_up)
        try:
            return int(ui(link, **accepted))
        finally:
            signal.signal(signal.SIGHUP, previous)
    return asyncio.run(print_lines(link, json_lines=json_lines))


async def print_lines(link: SocketLink, *, json_lines: bool = False) -> int:
    """Line mode: the history it missed, then live events, until the engine ends or we detach.

    Ctrl-C, SIGTERM and SIGHUP (a closed terminal) detach: the rollout goes on."""
    show = event_printer(json_lines)  # decisions; the checks that change nothing in one line
    loop = asyncio.get_running_loop()
    detach = asyncio.Event()
    why: list[str] = []

    def on_signal(name: str) -> None:
        why.append(name)
        detach.set()

    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    for sig in sigs:  # before the first line: a hang-up from now on is a clean detach
        loop.add_signal_handler(sig, on_signal, sig.name)
    for e in link.history():
        if not show(e):
            why.append("terminal gone")
            detach.set()
            break
    err(f"attached to engine pid {link.engine_pid} on {link.engine_host} as {link.role}: deployment "
         f"{link.deployment_id}" + (f" ({link.note})" if link.note else "")
         + ". Leaving (Ctrl-C, closed terminal) detaches; the rollout goes on.")

    async def pump() -> bool:
        async for e in link.events():
            if not show(e):
                why.append("terminal gone")
                return False
        return True

    pump_task = asyncio.create_task(pump())
    detach_task = asyncio.create_task(detach.wait())
    try:
        await asyncio.wait({pump_task, detach_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for sig in sigs:
            loop.remove_signal_handler(sig)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a second hang-up while we close changes nothing
        detach_task.cancel()
        show.close()
    ended = pump_task.done() and pump_task.result() and not detach.is_set()
    if not ended:
        pump_task.cancel()
        with contextlib.suppress(BaseException):
            await pump_task
        await link.close(why[0] if why else "quit")
        err(f"detached ({why[0] if why else 'quit'}): the rollout goes on in engine pid {link.engine_pid} on "
             f"{link.engine_host}. Reattach: canary-console attach")
        return ExitCode.OK
    await link.close()
    return _after_end(link)


def _after_end(link: SocketLink) -> int:
    """The engine said bye (its exit code), or vanished (look at the journal)."""
    if link.exit_code is not None:
        err(f"engine pid {link.engine_pid} ended: {link.lost.removeprefix('the engine ended: ')}")
        return int(link.exit_code)
    records = list(read_records(link.journal_path))
    st = fold(events_of(records, link.deployment_id))
    if st.state in FINISHED or st.state == "at 100%":
        return exit_code_for(st)
    err(lost_line(st, records))
    return ExitCode.INTERRUPTED


def lost_line(st: DeploymentState, records: list[dict[str, Any]]) -> str:
    truth = router_truth(r for r in records if r.get("deployment_id") == st.deployment_id)
    w = truth.confirmed_weight
    where = f"the journal says nginx last served canary {0 if w is None else w}%, and the traffic stays there"
    if truth.state == UNCONFIRMED:
        where = (f"the journal says nginx last confirmed canary {0 if w is None else w}%, and a change to canary "
                 f"{truth.pending_weight}% is UNCONFIRMED (the upstream file may hold it, nginx may serve it)")
    return (f"engine lost: deployment {st.deployment_id} ({st.version}) at stage {st.stage_label()}, engine pid "
            f"{st.engine_pid} on {st.engine_host or 'an unknown host'} is gone; {where}. Resume: canary-console deploy --version "
            f"{st.version} --resume   Roll back: canary-console rollback --reason \"...\"")


def attach_spawned(cfg: Any, proc: Any, deployment_id: str, *, ready: bool, ui: Callable[..., int] | None,
                   json_lines: bool = False) -> int:
    """`deploy` started the engine: attach to it, or report how it ended if it already did."""
    jp = Path(cfg.journal_path)
    link: SocketLink | None = None
    if ready:
        try:
            link = SocketLink.connect(wire.socket_path_for(jp), journal_path=jp,
                                      role=wire.DRIVER if ui is not None else wire.WATCHER)
        except (OSError, LinkRefused):
            link = None
    if link is not None:
        code = open_console(link, cfg, ui, json_lines=json_lines)
        if link.exit_code is not None:
            with contextlib.suppress(Exception):
                proc.wait(timeout=10)
        return code
    # the engine ended before we could attach (a failed precondition, a config error, a crash)
    try:
        rc = proc.wait(timeout=30)
    except Exception:
        rc = None
    records = list(read_records(jp))
    evs = events_of(records, deployment_id)
    for e in evs:
        if not out(event_line(e, json_lines)):
            break
    if not evs:
        tail = _log_tail(wire.log_path_for(jp))
        err(f"the engine exited ({rc}) before its first event; its log {wire.log_path_for(jp)} says: {tail}")
        return int(rc) if isinstance(rc, int) and rc > 0 else ExitCode.PRECONDITION
    st = fold(evs)
    if rc is not None and rc >= 0:
        return int(rc)
    if st.state in FINISHED or st.state == "at 100%":
        return exit_code_for(st)
    err(lost_line(st, records))
    return ExitCode.INTERRUPTED


def _log_tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty)"
