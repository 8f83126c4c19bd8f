"""Running the demo: start the sandbox, load its config, build the engine and roll out
under the console (a terminal) or headless (one line per event), then stop everything.

``run_sandbox(plan)`` is the whole session; every child stops on every exit path (the
supervisor's ``close()``, from ``finally``, the signal handlers, ``atexit`` and, under the
console, the ``ConsoleWatchdog``).  Exit codes: the deploy's (0 at 100%, 3 rolled back,
4 precondition, 6 router, 130 interrupted); 4 when the sandbox cannot start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import sys
import threading
from collections.abc import Callable
from typing import Any

from console.core import events as ev
from console.core.exits import ExitCode
from console.sandbox.config_writer import write_config
from console.sandbox.faults import FaultScheduler, fault_actions
from console.sandbox.plan import DEPLOY_VERSION, STAGES, Plan, describe_faults
from console.sandbox.stack import Probes, Running, start_sandbox
from console.sandbox.supervisor import Sandbox, SandboxInterrupted, StartFailed


def _say(line: str) -> None:
    print(f"canary-console demo: {line}", file=sys.stderr, flush=True)


def _engine_note(engine: Any, json_lines: bool, interactive: bool) -> Callable[[str, dict[str, Any]], None]:
    """How a demo line reaches the operator: the engine's public ``note`` (journaled, shown by
    the console) when it has one; otherwise a line of headless output."""
    note = getattr(engine, "note", None)

    def report(line: str, data: dict[str, Any]) -> None:
        if callable(note):
            note("info" if data.get("ok", True) else "warning", line, **data)
            return
        if interactive:
            return  # stdout belongs to the console
        if json_lines:
            print(json.dumps({"event": "demo_note", "message": line, **data}), flush=True)
        else:
            print(f"demo: {line}", flush=True)

    return report


def _headless(engine: Any, sb: Sandbox, json_lines: bool) -> int:
    """Headless: every record (--json), or the decisions with one line for quiet checks
    (rewritten in place on a terminal; core/eventfmt.py HeadlessLines says what a file gets)."""
    import shutil

    from console.core.eventfmt import HeadlessLines

    tty = sys.stdout.isatty()
    lines = HeadlessLines(tty, shutil.get_terminal_size().columns if tty else 80)

    def printer(e: ev.Event) -> None:
        print(json.dumps(e.to_record()) if json_lines else lines.feed(e), end="\n" if json_lines else "", flush=True)

    engine.add_listener(printer)
    held = None

    async def main() -> int:
        nonlocal held
        try:
            return await _run_engine(engine)
        finally:
            held = sb.hold_signals()  # until our handlers are back after the loop closes

    try:
        return asyncio.run(main())
    finally:
        if not json_lines:
            with contextlib.suppress(OSError, ValueError):  # the terminal may be gone
                print(lines.close(), end="", flush=True)
        sb.install_handlers(release=held)


async def _run_engine(engine: Any) -> int:
    import signal

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, engine.interrupt, sig.name)
    try:
        return int(await engine.run())
    finally:
        await engine.aclose()


class ConsoleWatchdog:
    """The console's last line of defence for "nothing left behind".

    A stop signal makes the console interrupt the engine and exit; but a terminal that went
    away (SIGHUP) can wedge Textual's shutdown for ever (its output thread waits on a
    terminal that is gone), and the children would outlive us.  So: once a stop signal
    reached the engine (an ``Interrupted`` event for SIGTERM / SIGHUP) or the terminal hung
    up, give the console ``grace`` seconds to hand back; after that, stop the sandbox from
    this thread and end the process (exit 130).  Nobody is left to see the console anyway."""

    def __init__(self, sb: Sandbox, grace: float = 10.0, fd: int = 0) -> None:
        self.sb = sb
        self.grace = grace
        self.fd = fd
        self.returned = threading.Event()  # set when the console handed back
        self._armed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-console-watchdog", daemon=True)

    def __call__(self, e: ev.Event) -> None:
        if isinstance(e, ev.Interrupted) and e.signal in ("SIGTERM", "SIGHUP"):
            self._armed.set()

    def start(self) -> ConsoleWatchdog:
        self._thread.start()
        return self

    def _hung_up(self) -> bool:
        p = select.poll()
        p.register(self.fd, 0)  # POLLHUP / POLLERR / POLLNVAL are always reported
        try:
            return any(ev_ & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, ev_ in p.poll(0))
        except OSError:
            return True

    def _run(self) -> None:
        while not self.returned.is_set():
            if self._armed.wait(0.5) or self._hung_up():
                break
        if self.returned.wait(self.grace):
            return
        self.sb.close()
        os._exit(ExitCode.INTERRUPTED)


def _interactive(engine: Any, cfg: Any, r: Running, report: Callable[[str, dict[str, Any]], None]) -> int:
    """The console on the in-process engine (``run_console_with_engine``: SIGTERM / SIGHUP
    quit it like a confirmed ``q``), with the demo's log panes and the F fault menu."""
    from console.ui.run import run_console_with_engine
    from console.ui.sources import LogSourceSpec

    sources = [LogSourceSpec("file", title, path=str(path)) for title, path in r.logs.items()]
    extra = {"metrics_note": r.metrics_note} if r.metrics_note else {}
    watchdog = ConsoleWatchdog(r.sandbox)
    engine.add_listener(watchdog)
    watchdog.start()
    try:
        return int(run_console_with_engine(engine, cfg, DEPLOY_VERSION, log_sources=sources,
                                           fault_actions=fault_actions(r.canary_url, report), **extra))
    finally:
        watchdog.returned.set()


def _announce(r: Running, plan: Plan) -> None:
    info = {"event": "demo_sandbox", **r.sandbox.describe(), "nginx_url": r.nginx_url, "metrics_source": r.source,
            "prometheus_url": r.prometheus_url, "metrics_note": r.metrics_note}
    if plan.json:
        print(json.dumps(info), flush=True)
        return
    for c in r.sandbox.children:
        _say(f"  {c.name:<11} pid {c.pid:<7} {c.url}")


def drive(r: Running, plan: Plan) -> int:
    """Load the sandbox's config, build the engine, run the rollout; the deploy exit code."""
    from console.core.clock import RealClock
    from console.core.journal import Journal
    from console.wiring import build_checkers, build_engine

    cfg = write_config(r, plan)
    interactive = not plan.headless and sys.stdin.isatty() and sys.stdout.isatty()
    with Journal(cfg.journal_path) as journal:
        clock = RealClock()
        checkers, source = build_checkers(cfg, clock)
        engine = build_engine(cfg, DEPLOY_VERSION, journal=journal, clock=clock, checkers=checkers, source=source,
                              stay_at_100=interactive)  # the warm-up: [rollout] warmup_requests (config_writer.py)
        report = _engine_note(engine, plan.json, interactive)
        engine.add_listener(Probes(r.sandbox, r.canary_url, plan.observation))
        if plan.faults and plan.fault_at is not None:
            engine.add_listener(FaultScheduler(r.canary_url, plan.faults, plan.fault_at, report))
        _announce(r, plan)
        _say(f"rolling out {DEPLOY_VERSION}: stages {', '.join(f'{s}%' for s in STAGES)}, "
             f"observation {plan.observation:g}s, checks every {plan.check_interval:g}s, "
             f"metrics from {r.source} over {cfg['metrics']['rate_window']}"
             + (f"; fault {describe_faults(plan.faults)} at stage {plan.fault_at}%" if plan.faults else ""))
        if interactive:
            try:
                code = _interactive(engine, cfg, r, report)
            finally:
                r.sandbox.install_handlers()  # the UI's event loop put back SIG_DFL
            return code
        if not plan.headless:
            _say("no terminal: running headless")
        return _headless(engine, r.sandbox, plan.json)


def run_sandbox(plan: Plan) -> int:
    """Start the sandbox for ``plan``, roll out, stop every child; the exit code."""
    sb = Sandbox(keep=plan.keep, progress=_say)
    try:
        with sb:
            try:
                running = start_sandbox(sb, plan, _say)
            except StartFailed as e:
                print(f"canary-console demo: {e}", file=sys.stderr, flush=True)
                return ExitCode.PRECONDITION
            code = drive(running, plan)
            _say("stopping the sandbox...")
            return code
    except SandboxInterrupted as e:
        _say(f"{e.signame}: the sandbox is stopped")
        return ExitCode.INTERRUPTED
    except KeyboardInterrupt:
        _say("interrupted: the sandbox is stopped")
        return ExitCode.INTERRUPTED
    finally:
        n = len(sb.children)
        where = f"kept {sb.root}" if plan.keep else f"removed {sb.root}"
        if plan.keep and n:
            where += f" (journal: canary-console --config {sb.root / 'canary.toml'} history)"
        if n or plan.keep:
            _say(f"stopped {n} process{'es' if n != 1 else ''}; {where}")
