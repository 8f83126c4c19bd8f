"""`canary-console deploy`: preconditions, lock, resume/reconcile, then the engine.

By default the engine runs as its own background process (console.remote.daemon, one per journal)
and this process attaches a console to it (console.commands.attach), so a dropped SSH session or a
closed terminal leaves the rollout, its gates and its automatic rollback running.
``--foreground`` and ``--headless`` keep the engine in this process (CI, scripts)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

from console.commands.term import confirm, err, event_printer, report_router_error
from console.core.checkpoint import deployments_in
from console.core.config import VERSION_ALLOWED, VERSION_RE
from console.core.exits import ExitCode
from console.core.journal import Journal, read_records
from console.core.lock import DriverLock, LockHeld, lock_path_for
from console.core.manual import router_change
from console.core.routing import RouterError
from console.core.state import last_applied_weight, unfinished_of


def run(args: argparse.Namespace, cfg: Any) -> int:
    """`canary-console deploy`."""
    version = args.version
    if not VERSION_RE.match(version):
        err(f"--version {version!r} is not valid; allowed: {VERSION_ALLOWED}")
        return ExitCode.USAGE
    stages = cfg.stages
    start_index = 0
    if args.start_stage is not None:
        if args.start_stage not in stages:
            err(f"--start-stage {args.start_stage} is not valid; allowed: one of the stages {stages}")
            return ExitCode.USAGE
        start_index = stages.index(args.start_stage)
    if args.json and not args.headless:
        args.headless = True

    if _engine_answers(cfg):
        return ExitCode.LOCKED
    lk = DriverLock(lock_path_for(cfg.journal_path))
    try:
        lk.acquire(f"deploy --version {version}")
    except LockHeld as e:
        err(f"another driver holds the lock: {e}. Watch with `canary-console status` or `canary-console watch`.")
        return ExitCode.LOCKED
    try:
        return _deploy_locked(args, cfg, version, start_index, lk)
    finally:
        lk.release()  # a no-op once the lock went to the engine process


def resume(cfg: Any, version: str) -> int:
    """`deploy --version V --resume`, as `attach` offers it when the engine died."""
    args = argparse.Namespace(version=version, resume=True, observation_period=None, check_interval=None, start_stage=None,
                              dry_run=False, headless=False, json=False, foreground=False, yes=False, skip_checks=False,
                              env_file=None)
    return run(args, cfg)


def _engine_answers(cfg: Any) -> bool:
    """A detached engine already drives this journal: say so, with the attach command."""
    from console.core.lock import describe_holder, is_held, read_holder
    from console.remote.client import socket_answers
    from console.remote.wire import socket_path_for

    lp = lock_path_for(cfg.journal_path)
    if not is_held(lp) or not socket_answers(socket_path_for(cfg.journal_path)):
        return False
    err(f"another driver holds the lock: {describe_holder(read_holder(lp))}. "
         "An engine runs there: watch or drive it with `canary-console attach` (`--take-over` to drive).")
    return True


def _deploy_locked(args: argparse.Namespace, cfg: Any, version: str, start_index: int, lk: Any) -> int:
    from console.wiring import build_engine, build_router

    open_dep = unfinished_of(deployments_in(cfg.journal_path), version)  # refreshes the journal's fold checkpoint
    resumed, deployment_id = False, None
    router = build_router(cfg)
    journal = Journal(cfg.journal_path)
    try:
        if open_dep is not None and not args.resume:
            err(
                f"deployment {open_dep.deployment_id} of {version} is unfinished ({open_dep.state}, stage "
                f"{open_dep.stage_label()}, nginx last served canary {open_dep.weight}%). "
                f"Resume: canary-console deploy --version {version} --resume   "
                f"Roll back: canary-console rollback --reason \"...\""
            )
            return ExitCode.PRECONDITION
        if args.resume:
            if open_dep is None:
                err(f"nothing to resume: no unfinished deployment of {version} in {cfg.journal_path}")
                return ExitCode.PRECONDITION
            _say_engine_lost(open_dep)
            records = read_records(cfg.journal_path)
            journaled = last_applied_weight(r for r in records if r.get("deployment_id") == open_dep.deployment_id)
            if journaled is None:
                journaled = 0
            on_disk = router.current_weight()
            drifted = _drifted_hosts(router, journaled)  # a fleet: the hosts whose file differs, named
            if (on_disk != journaled or drifted) and not args.dry_run:
                q = (f"upstream file says canary {on_disk}% but the journal says nginx last served {journaled}%: "
                     f"rewrite the file to {journaled}%?")
                if drifted:
                    q = (f"drifted: {drifted}, but the journal says nginx last served {journaled}%: rewrite every "
                         f"host's file to {journaled}%?")
                if not confirm(q, args.yes):
                    err("not resumed: the upstream file and the journal disagree"
                        + (f" (drifted: {drifted})" if drifted else "") + "; nothing was changed")
                    return ExitCode.PRECONDITION
                try:
                    asyncio.run(router_change(journal, router, journaled, "resume: reconcile with journal",
                                              open_dep.deployment_id, version))
                except RouterError as e:
                    return report_router_error(e)
                print(f"reconciled: upstream file rewritten to canary {journaled}%", file=sys.stderr)
            stages = cfg.stages
            if journaled in stages:
                start_index = stages.index(journaled)
            else:
                start_index = max(open_dep.index, 0)
            resumed, deployment_id = True, open_dep.deployment_id
        elif not args.skip_checks and not args.dry_run:
            code = _prechecks(cfg, version)
            if code:
                return code

        if not (args.foreground or args.headless):
            journal.close()
            return _run_detached(args, cfg, version, start_index, deployment_id, resumed, lk)
        use_console = not args.headless and sys.stdout.isatty()
        engine = build_engine(
            cfg, version, journal=journal, router=router, dry_run=args.dry_run, start_index=start_index,
            deployment_id=deployment_id, resumed=resumed, stay_at_100=use_console,
        )
        if use_console:
            return _run_console(engine, cfg, version)
        return _run_headless(engine, json_lines=args.json)
    finally:
        journal.close()


def _drifted_hosts(router: Any, journaled: int) -> str:
    """A fleet's hosts whose upstream file is not at the journal's weight: "edge-2 (canary 25%)"; "" when none
    (or one nginx)."""
    from console.adapters.nginx.fleet import FleetRouter
    from console.core.state import APPLIED, RouterTruth, drifted_hosts

    if not isinstance(router, FleetRouter):
        return ""
    states = router.host_states()
    names = set(drifted_hosts({h.name: h.weight for h in states}, RouterTruth(journaled, APPLIED)))
    return ", ".join(f"{h.name} ({'no file' if h.weight is None else f'canary {h.weight}%'})" for h in states if h.name in names)


def _say_engine_lost(st: Any) -> None:
    """Resuming after the engine died (kill -9, OOM, reboot): say which engine is gone."""
    import socket

    from console.remote.client import pid_alive

    if st.engine_pid and st.engine_host == socket.gethostname() and not pid_alive(st.engine_pid):
        print(f"engine pid {st.engine_pid} of {st.deployment_id} is gone (state {st.state}, stage {st.stage_label()}): "
              "resuming from the journal", file=sys.stderr)


def _run_detached(args: argparse.Namespace, cfg: Any, version: str, start_index: int, deployment_id: str | None,
                  resumed: bool, lk: Any) -> int:
    """Start the engine process with the lock, then attach this terminal to it."""
    import os

    from console.commands.session import attach_spawned, ui_available, ui_runner
    from console.core.clock import RealClock
    from console.core.engine import new_deployment_id
    from console.remote.daemon import spawn_engine, wait_ready
    from console.remote.wire import socket_path_for

    deployment_id = deployment_id or new_deployment_id(version, RealClock())
    console = sys.stdout.isatty() and sys.stdin.isatty() and ui_available()
    proc = spawn_engine(
        cfg, version, deployment_id, lock_fd=lk.fd, start_index=start_index, resumed=resumed, dry_run=args.dry_run,
        stay_at_100=console and not args.dry_run, env_file=getattr(args, "env_file", None),
        observation_period=args.observation_period, check_interval=args.check_interval,
    )
    # the engine holds the same flock through its inherited descriptor from its first instant (and
    # rewrites the holder): closing ours without truncating leaves the lock with the engine alone
    os.close(lk.fd)
    lk.fd = None
    ui = ui_runner() if console else None  # Textual loads while the engine starts (two processes, two cores)
    ready = wait_ready(proc, socket_path_for(cfg.journal_path))
    return attach_spawned(cfg, proc, deployment_id, ready=ready, ui=ui, json_lines=False)


def _prechecks(cfg: Any, version: str) -> int:
    """The pre-deployment checks (`canary-console check`), when that module is present."""
    try:
        from console.commands.check import print_table, run_checks
    except ImportError:
        return 0
    rows = run_checks(cfg, version, strict=False, for_deploy=True)
    failed = [r for r in rows if r.result == "fail"]
    if failed:
        print_table(rows, file=sys.stderr)
        err(f"{len(failed)} pre-deployment check(s) failed; nothing was changed. Fix them, or --skip-checks.")
        return ExitCode.PRECONDITION
    return 0


def _run_headless(engine: Any, json_lines: bool) -> int:
    printer = event_printer(json_lines)  # decisions; the checks that change nothing in one line
    engine.add_listener(printer)

    async def main() -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, engine.interrupt, sig.name)
        try:
            return await engine.run()
        finally:
            await engine.aclose()

    try:
        code = asyncio.run(main())
    finally:
        printer.close()
    if code == ExitCode.INTERRUPTED:
        print(f"interrupted: traffic stays where it is. Resume: canary-console deploy --version {engine.version} --resume",
              file=sys.stderr)
    return code


def _run_console(engine: Any, cfg: Any, version: str) -> int:
    try:
        from console.ui.run import run_console_with_engine
    except ImportError:
        return _run_headless(engine, json_lines=False)
    return run_console_with_engine(engine, cfg, version)
