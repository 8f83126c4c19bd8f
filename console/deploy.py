"""`canary-console deploy`: preconditions, lock, resume/reconcile, then the engine, headless
or under the console."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import Any

from . import events as ev
from .cli import (
    EXIT_LOCKED,
    EXIT_PRECONDITION,
    EXIT_USAGE,
    VERSION_RE,
    _err,
    _lock,
    _records,
    _router_change,
    _router_failed,
)
from .eventfmt import format_event
from .journal import Journal
from .protocols import RouterError
from .state import events_of, fold, last_applied_weight, unfinished


def _confirm(question: str, yes: bool) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty():
        _err(f"{question} needs confirmation: run again with --yes")
        return False
    try:
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


def deploy(args: argparse.Namespace, cfg: Any) -> int:
    version = args.version
    if not VERSION_RE.match(version):
        _err(f"--version {version!r} is not valid; allowed: vMAJOR.MINOR.PATCH, e.g. v0.2.0")
        return EXIT_USAGE
    stages = cfg.stages
    start_index = 0
    if args.start_stage is not None:
        if args.start_stage not in stages:
            _err(f"--start-stage {args.start_stage} is not valid; allowed: one of the stages {stages}")
            return EXIT_USAGE
        start_index = stages.index(args.start_stage)
    if args.json and not args.headless:
        args.headless = True

    lk = _lock(cfg, f"deploy --version {version}")
    if lk is None:
        return EXIT_LOCKED
    try:
        return _deploy_locked(args, cfg, version, start_index)
    finally:
        lk.release()


def _deploy_locked(args: argparse.Namespace, cfg: Any, version: str, start_index: int) -> int:
    from .wiring import build_engine, build_router

    records = _records(cfg)
    open_dep = unfinished(records, version)
    resumed, deployment_id = False, None
    router = build_router(cfg)
    journal = Journal(cfg.journal_path)
    try:
        if open_dep is not None and not args.resume:
            _err(
                f"deployment {open_dep.deployment_id} of {version} is unfinished ({open_dep.state}, stage "
                f"{open_dep.stage_label()}, nginx last served canary {open_dep.weight}%). "
                f"Resume: canary-console deploy --version {version} --resume   "
                f"Roll back: canary-console rollback --reason \"...\""
            )
            return EXIT_PRECONDITION
        if args.resume:
            if open_dep is None:
                _err(f"nothing to resume: no unfinished deployment of {version} in {cfg.journal_path}")
                return EXIT_PRECONDITION
            dep_events = events_of(records, open_dep.deployment_id)
            st = fold(dep_events)
            journaled = last_applied_weight(r for r in records if r.get("deployment_id") == open_dep.deployment_id)
            if journaled is None:
                journaled = 0
            on_disk = router.current_weight()
            if on_disk != journaled and not args.dry_run:
                q = (f"upstream file says canary {on_disk}% but the journal says nginx last served {journaled}%: "
                     f"rewrite the file to {journaled}%?")
                if not _confirm(q, args.yes):
                    _err("not resumed: the upstream file and the journal disagree; nothing was changed")
                    return EXIT_PRECONDITION
                try:
                    asyncio.run(_router_change(cfg, journal, journaled, "resume: reconcile with journal",
                                               open_dep.deployment_id, version, router=router))
                except RouterError as e:
                    return _router_failed(e)
                print(f"reconciled: upstream file rewritten to canary {journaled}%", file=sys.stderr)
            stages = cfg.stages
            if journaled in stages:
                start_index = stages.index(journaled)
            else:
                start_index = max(st.index, 0)
            resumed, deployment_id = True, open_dep.deployment_id
        elif not args.skip_checks and not args.dry_run:
            code = _prechecks(cfg, version)
            if code:
                return code

        use_console = not args.headless and sys.stdout.isatty()
        engine = build_engine(
            cfg, version, journal=journal, router=router, dry_run=args.dry_run, start_index=start_index,
            deployment_id=deployment_id, resumed=resumed, stay_at_100=use_console,
        )
        if use_console:
            return _run_console(engine, cfg, version, records)
        return _run_headless(engine, json_lines=args.json)
    finally:
        journal.close()


def _prechecks(cfg: Any, version: str) -> int:
    """The pre-deployment checks (`canary-console check`), when that module is present."""
    try:
        from .precheck import print_table, run_checks
    except ImportError:
        return 0
    rows = run_checks(cfg, version, strict=False, for_deploy=True)
    failed = [r for r in rows if r.result == "fail"]
    if failed:
        print_table(rows, file=sys.stderr)
        _err(f"{len(failed)} pre-deployment check(s) failed; nothing was changed. Fix them, or --skip-checks.")
        return EXIT_PRECONDITION
    return 0


def _run_headless(engine: Any, json_lines: bool) -> int:
    def printer(e: ev.Event) -> None:
        line = json.dumps(e.to_record()) if json_lines else format_event(e)
        print(line, flush=True)

    engine.add_listener(printer)

    async def main() -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, engine.interrupt, sig.name)
        try:
            return await engine.run()
        finally:
            await _close(engine)

    code = asyncio.run(main())
    if code == 130:
        print(f"interrupted: traffic stays where it is. Resume: canary-console deploy --version {engine.version} --resume",
              file=sys.stderr)
    return code


async def _close(engine: Any) -> None:
    for obj in [engine.health, *engine.checkers]:
        closer = getattr(obj, "aclose", None)
        if closer is not None:
            try:
                await closer()
            except Exception:  # closing is best effort
                pass


def _run_console(engine: Any, cfg: Any, version: str, records: list[dict[str, Any]]) -> int:
    try:
        from .ui.app import run_console_with_engine
    except ImportError:
        return _run_headless(engine, json_lines=False)
    return run_console_with_engine(engine, cfg, version)
