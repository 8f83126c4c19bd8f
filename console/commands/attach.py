"""`canary-console attach` and `watch`: a console on the running engine.

`attach` connects over the engine's socket (console/remote/client.py) as driver or watcher.
When no engine answers, it says why in one line and, for an unfinished deployment whose engine
died (kill -9, OOM, reboot), offers resume or a break-glass rollback straight through the
router (journaled).  `watch` follows the journal read-only, for a second on-call engineer.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from console.commands.session import BreakGlassRefused, break_glass_rollback, lost_line, open_console, ui_runner
from console.commands.term import err, event_line, out
from console.core.exits import ExitCode, exit_code_for
from console.core.journal import read_records
from console.core.state import DeploymentState, deployments, events_of, unfinished
from console.remote import wire
from console.remote.client import LinkRefused, SocketLink


def run(args: argparse.Namespace, cfg: Any) -> int:
    """`canary-console attach [--take-over] [--headless] [--json]`."""
    json_lines = bool(getattr(args, "json", False))
    headless = bool(getattr(args, "headless", False)) or json_lines
    tty = sys.stdout.isatty() and sys.stdin.isatty()
    ui = ui_runner() if tty and not headless else None
    jp = Path(cfg.journal_path)
    link = _connect(jp, take_over=bool(getattr(args, "take_over", False)), driver=ui is not None)
    if isinstance(link, int):
        return link
    if link is None:
        return _no_engine(cfg, tty and not headless, json_lines=json_lines)
    return open_console(link, cfg, ui, json_lines=json_lines)


def _connect(jp: Path, *, take_over: bool, driver: bool, timeout: float = 3.0) -> SocketLink | int | None:
    """A link to the engine; None when no engine answers; an exit code when refused."""
    from console.core.lock import describe_holder, is_held, lock_path_for, read_holder
    from console.remote.client import socket_answers

    sock = wire.socket_path_for(jp)
    lp = lock_path_for(jp)
    deadline = time.monotonic() + timeout
    while True:
        try:
            # a console that cannot take keys still watches, unless asked to take the seat
            role = wire.DRIVER if (driver or take_over) else wire.WATCHER
            return SocketLink.connect(sock, journal_path=jp, role=role, take_over=take_over)
        except LinkRefused as e:
            err(f"the engine refused this console: {e}")
            return ExitCode.LOCKED
        except OSError:
            pass
        if not is_held(lp):
            return None  # no engine: nobody holds the lock
        if time.monotonic() >= deadline:
            holder = read_holder(lp)
            err(f"the driver lock is held by {describe_holder(holder)} but no engine answers on {sock} "
                 "(a --foreground or --headless deploy, or a weights/rollback command, has no socket): "
                 "watch with `canary-console watch` or `canary-console status`")
            return ExitCode.LOCKED
        if socket_answers(sock, timeout=0.2):
            continue
        time.sleep(0.05)  # an engine that is starting: poll until the deadline


def _no_engine(cfg: Any, interactive: bool, json_lines: bool = False) -> int:
    """No engine answers: an unfinished deployment means its engine died; otherwise show the last one."""
    jp = Path(cfg.journal_path)
    records = list(read_records(jp))
    dep = unfinished(records)
    if dep is None:
        deps = [d for d in deployments(records).values() if not d.dry_run] or list(deployments(records).values())
        if not deps:
            err(f"no engine is running and {jp} holds no deployment: start one with `canary-console deploy --version ...`")
            return ExitCode.PRECONDITION
        last = deps[-1]
        for e in events_of(records, last.deployment_id):
            if not out(event_line(e, json_lines)):
                return ExitCode.OK
        err(f"no engine is running: deployment {last.deployment_id} ({last.version}) ended {last.state}"
             + (f" ({last.reason})" if last.reason else ""))
        return exit_code_for(last)
    for e in events_of(records, dep.deployment_id):
        if not out(event_line(e, json_lines)):
            return ExitCode.OK
    err(lost_line(dep, records))
    if not interactive:
        return ExitCode.INTERRUPTED
    return _offer(cfg, dep, records)


def _offer(cfg: Any, dep: DeploymentState, records: list[dict[str, Any]]) -> int:
    """The engine died: resume (reconciling the upstream file first), roll back now, or leave it."""
    try:
        answer = input("[r] resume   [b] roll back now (break-glass, straight through the router)   [q] leave it: ")
    except EOFError:
        answer = "q"
    answer = answer.strip().lower()
    if answer in ("r", "resume"):
        from console.commands import deploy

        return deploy.resume(cfg, dep.version)
    if answer in ("b", "rollback", "roll back"):
        from console.core.routing import RouterError

        try:
            res = break_glass_rollback(cfg, "engine lost; rolled back from `canary-console attach`")
        except BreakGlassRefused as e:
            err(str(e))
            return ExitCode.LOCKED
        except RouterError as e:
            err(f"break-glass rollback failed, the previous upstream file is kept: {e}")
            return ExitCode.ROUTER
        print(f"rolled back (break-glass): canary 0% / production 100%, nginx serves it (verified in {res.took_s * 1000:.0f} ms)")
        return ExitCode.ROLLED_BACK
    return ExitCode.INTERRUPTED


def _drift(cfg: Any) -> str:
    """A fleet host whose upstream file differs from the journal or from the others, named ("" when none)."""
    if not cfg.nginx_hosts:
        return ""
    from console.core.state import drifted_hosts, router_truth
    from console.wiring import build_router

    weights = {h.name: h.weight for h in build_router(cfg).host_states()}
    drifted = drifted_hosts(weights, router_truth(read_records(cfg.journal_path)))
    return ("DRIFTED: " + ", ".join(f"{n} (canary {weights[n]}%)" if weights[n] is not None else f"{n} (no readable file)"
                                    for n in drifted)) if drifted else ""


def run_watch(args: argparse.Namespace, cfg: Any) -> int:
    """`canary-console watch`: the read-only console following the journal (the driver's engine
    writes every event there, fsynced, before acting on it).  Nothing here can move traffic.

    ``--mirror``: the console `serve` runs for each browser (docs/serve.md): role "observer", no
    traffic key bound at all; it speaks to textual-serve over pipes (TEXTUAL_DRIVER), not a tty."""
    import os

    from console.core.lock import describe_holder, is_held, lock_path_for, read_holder
    from console.remote.links import JournalFollowLink, MirrorLink

    mirror = bool(getattr(args, "mirror", False))
    if mirror:  # `serve` started this console for one browser: it ends with serve, even a SIGKILLed one
        import signal

        from console.sandbox.procs import die_with_parent

        # SIGKILL: textual's web driver takes SIGTERM as "quit", which hangs with nobody left to
        # read the screen; this console holds nothing (no lock, writes no journal) to tidy up
        die_with_parent(signal.SIGKILL)
    link = (MirrorLink if mirror else JournalFollowLink)(cfg.journal_path)
    lp = lock_path_for(cfg.journal_path)
    driver = describe_holder(read_holder(lp)) if is_held(lp) else "nobody holds the lock"
    drift = _drift(cfg)
    if drift:
        err(drift)  # before the console takes the screen (and in its note)
    if not sys.stdout.isatty() and not (mirror and os.environ.get("TEXTUAL_DRIVER")):
        err(f"watch needs a terminal; for a one-off view use `canary-console status` ({driver})")
        return ExitCode.USAGE
    from console.ui.run import run_console
    from console.ui.sources import specs_from_config

    note = (f"browser mirror of {cfg.journal_path} (read-only)" if mirror else f"watching {cfg.journal_path} (read-only)")
    note += f"; driver: {driver}" + (f"; {drift}" if drift else "")
    run_console(link, log_sources=specs_from_config(cfg), metrics_note=note,
                log_max_lines=int(cfg["console"]["log_max_lines"]))
    return ExitCode.OK


def main(argv: list[str] | None = None) -> int:
    """The attach command on its own: `python -m console.commands.attach [--config P] [--take-over] [--headless] [--json]`."""
    from console.core.config import ConfigError, load_config

    p = argparse.ArgumentParser(prog="python -m console.commands.attach", description="attach a console to the running engine")
    p.add_argument("--config", metavar="PATH")
    p.add_argument("--env-file", metavar="PATH")
    p.add_argument("--take-over", action="store_true", help="ask the current driver to hand over")
    p.add_argument("--headless", action="store_true", help="no console: one line per event")
    p.add_argument("--json", action="store_true", help="with --headless: JSON lines")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.env_file)
    except ConfigError as e:
        print(f"canary-console: config error: {e}", file=sys.stderr)
        return ExitCode.USAGE
    return run(args, cfg)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
