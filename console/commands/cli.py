"""canary-console command line.

Heavy modules (textual, docker, prometheus-api-client, httpx) are imported only by the
commands that need them, so `canary-console rollback` starts fast.

Exit codes: 0 ok / reached 100%; 1 checks failed (check); 2 usage or config error;
3 rolled back; 4 precondition failed; 5 lock held by another driver; 6 the router could not
apply a change (the old file is kept); 130 interrupted (traffic stays where it is).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from typing import Any

from console.core.config import ConfigError, load_config

EXIT_OK, EXIT_USAGE, EXIT_ROLLED_BACK, EXIT_PRECONDITION, EXIT_LOCKED, EXIT_ROUTER, EXIT_INTERRUPTED = 0, 2, 3, 4, 5, 6, 130
VERSION_RE = re.compile(r"^v\d+\.\d+\.\d+$")

EPILOG = """exit codes: 0 ok (reached 100%); 1 checks failed; 2 usage or config error; 3 rolled back;
4 precondition failed; 5 lock held by another driver; 6 router change failed (old file kept); 130 interrupted"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _percent(v: str) -> int:
    if not re.fullmatch(r"\d{1,3}", v) or not 0 <= int(v) <= 100:
        raise argparse.ArgumentTypeError(f"canary weight {v!r} is not valid; allowed: an integer 0..100 (no % sign)")
    return int(v)


def _seconds(v: str) -> float:
    try:
        f = float(v)
    except ValueError:
        f = -1
    if not f > 0 or f == float("inf"):
        raise argparse.ArgumentTypeError(f"{v!r} is not valid; allowed: a number of seconds > 0")
    return f


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="canary-console", description="Progressive canary rollouts behind NGINX, judged by live metrics.",
                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="PATH", help="canary.toml (default: ./canary.toml, or $CANARY_CONFIG)")
    p.add_argument("--env-file", metavar="PATH", help=".env file (default: .env beside the config)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    d = sub.add_parser("deploy", help="roll a version out stage by stage", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--version", required=True, help="version to deploy, vMAJOR.MINOR.PATCH")
    d.add_argument("--observation-period", type=_seconds, metavar="S", help="seconds to observe each stage")
    d.add_argument("--check-interval", type=_seconds, metavar="S", help="seconds between checks")
    d.add_argument("--start-stage", type=_percent, metavar="P", help="start at stage P (one of the stages)")
    d.add_argument("--dry-run", action="store_true", help="compute, print and journal every action; change nothing")
    d.add_argument("--resume", action="store_true", help="continue the unfinished deployment of this version")
    d.add_argument("--headless", action="store_true", help="no console: one line per event")
    d.add_argument("--json", action="store_true", help="with --headless: JSON lines")
    d.add_argument("--foreground", action="store_true", help="run the engine in this process")
    d.add_argument("--yes", action="store_true", help="answer yes to confirmations (resume reconciliation)")
    d.add_argument("--skip-checks", action="store_true", help="do not run the pre-deployment checks first")

    w = sub.add_parser("weights", help="set the canary weight (the seed's update_nginx_weights.sh)")
    w.add_argument("percent", type=_percent, metavar="PCT", help="canary weight, an integer 0..100")

    r = sub.add_parser("rollback", help="send all traffic to production now")
    r.add_argument("--reason", default="", help="why (journaled)")

    s = sub.add_parser("status", help="weights, deployment state and health (needs no lock)")
    s.add_argument("--json", action="store_true", help="JSON output")

    c = sub.add_parser("check", help="pre-deployment checks")
    c.add_argument("--version", required=True, help="version to deploy, vMAJOR.MINOR.PATCH")
    c.add_argument("--strict", action="store_true", help="warnings count as failures")

    pr = sub.add_parser("promote", help="promote the canary at 100%% to production")
    pr.add_argument("--approved-by", action="append", default=[], metavar="NAME", help="an approval (repeatable)")
    pr.add_argument("--force", action="store_true", help="promote before promote_after (needs --reason)")
    pr.add_argument("--reason", default="", help="why (journaled)")
    pr.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    h = sub.add_parser("history", help="past deployments from the journal")
    h.add_argument("--json", action="store_true", help="JSON output")

    rp = sub.add_parser("replay", help="open the console read-only on a finished deployment")
    rp.add_argument("deployment_id", metavar="DEPLOYMENT_ID")

    sub.add_parser("watch", help="read-only console following the journal and the metrics")

    a = sub.add_parser("attach", help="attach a console to the running engine")
    a.add_argument("--take-over", action="store_true", help="ask the current driver to hand over")
    a.add_argument("--headless", action="store_true", help="no console: one line per event")
    a.add_argument("--json", action="store_true", help="with --headless: JSON lines")

    dm = sub.add_parser("demo", help="a local canary sandbox with real nginx, Prometheus and traffic")
    dm.add_argument("--rps", type=float, default=20.0, help="requests per second through nginx (default 20)")
    dm.add_argument("--observation-period", type=_seconds, default=30.0, metavar="S", help="seconds per stage (30)")
    dm.add_argument("--check-interval", type=_seconds, default=2.0, metavar="S", help="seconds between checks (2)")
    dm.add_argument("--fault", action="append", default=[], metavar="NAME=VALUE",
                    help="schedule a fault, e.g. error_rate=0.05, latency=fast:3, schema_failure_rate=1, unhealthy=1")
    dm.add_argument("--fault-at-stage", type=_percent, metavar="P", help="inject the faults when stage P starts")
    dm.add_argument("--headless", action="store_true", help="no console; exit with the deploy exit code")
    dm.add_argument("--json", action="store_true", help="with --headless: JSON lines")
    dm.add_argument("--keep", action="store_true", help="keep the temporary directory")
    dm.add_argument("--source", choices=("auto", "prometheus", "scrape"), default="auto", help="metric source")
    dm.add_argument("--port", type=int, metavar="PORT", help="nginx listen port on 127.0.0.1 (default: a free port)")
    return p


NEEDS_UPSTREAM_DIR = ("deploy", "weights", "rollback", "promote", "check")

LAZY = {
    "check": "console.commands.check",
    "promote": "console.commands.promote",
    "history": "console.commands.history",
    "replay": "console.commands.replay",
    "watch": "console.ui.watch",
    "attach": "console.commands.attach",
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":  # the sandbox writes its own config; never the operator's
        from console.sandbox.demo import run as run_demo

        return int(run_demo(args, None))
    overrides: dict[tuple[str, str], Any] = {}
    if args.command == "deploy":
        overrides[("rollout", "observation_period")] = args.observation_period
        overrides[("rollout", "check_interval")] = args.check_interval
    try:
        cfg = load_config(args.config, args.env_file, overrides, check_upstream_dir=args.command in NEEDS_UPSTREAM_DIR)
    except ConfigError as e:
        print(f"canary-console: config error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.command in LAZY:
        import importlib

        mod = importlib.import_module(LAZY[args.command])
        return int(mod.run(args, cfg))
    code = int(COMMANDS[args.command](args, cfg))
    if args.command in ("weights", "rollback"):
        # these run no atexit work: skip the interpreter's teardown (tens of ms on a rollback)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


# ---------------------------------------------------------------------------- helpers
def _err(msg: str) -> None:
    print(f"canary-console: {msg}", file=sys.stderr)


def _lock(cfg: Any, command: str) -> Any:
    from console.core.lock import DriverLock, LockHeld, lock_path_for

    lk = DriverLock(lock_path_for(cfg.journal_path))
    try:
        lk.acquire(command)
    except LockHeld as e:
        _err(f"another driver holds the lock: {e}. Watch with `canary-console status` or `canary-console watch`.")
        return None
    return lk


def _records(cfg: Any) -> list[dict[str, Any]]:
    from console.core.journal import read_records

    return list(read_records(cfg.journal_path))


def _open_deployment(records: list[dict[str, Any]]) -> Any:
    """The unfinished deployment manual router changes are journaled under (None: "manual")."""
    from console.core.state import unfinished

    return unfinished(records)


async def _router_change(cfg: Any, journal: Any, weight: int, reason: str, deployment_id: str, version: str,
                         router: Any = None, after: tuple[Any, ...] = ()) -> float:
    """A manual router change with its intent before and its outcome after (``after``: more
    records to journal with the outcome, in the same write)."""
    from console.adapters.nginx.router import NginxRouter  # not wiring: the rollback path must not load the engine
    from console.core import events as ev
    from console.core.protocols import RouterError

    router = router or NginxRouter.from_config(cfg)
    gen = f"{deployment_id}:{os.urandom(3).hex()}"
    common = {"deployment_id": deployment_id, "version": version}
    journal.append(ev.RouterIntent(weight=weight, previous_weight=router.current_weight(), generation=gen,
                                   reason=reason, **common))
    try:
        took = await router.apply(weight, gen)
    except RouterError as e:
        journal.append(ev.RouterFailed(weight=weight, generation=gen, error=f"{e}: {e.detail}",
                                       restored_weight=e.restored_weight, **common))
        raise
    journal.append(ev.RouterApplied(weight=weight, generation=gen, duration_ms=round(took * 1000, 2), **common), *after)
    return took


def _router_failed(e: Any) -> int:
    if getattr(e, "reloaded", False):  # RouterNotVerified: the new file stays, nginx may serve it
        _err(f"nginx was reloaded with the new upstream file but did not verifiably serve it: {e}. "
             "Check `canary-console status` and nginx's error log.")
    else:
        _err(f"router change failed, the previous upstream file is kept and nginx was not reloaded: {e}")
    if getattr(e, "detail", ""):
        print(e.detail.rstrip(), file=sys.stderr)
    return EXIT_ROUTER


# ---------------------------------------------------------------------------- weights / rollback
def cmd_weights(args: argparse.Namespace, cfg: Any) -> int:
    from console.core.journal import Journal
    from console.core.protocols import RouterError

    lk = _lock(cfg, f"weights {args.percent}")
    if lk is None:
        return EXIT_LOCKED
    try:
        d = _open_deployment(_records(cfg))
        dep, ver = (d.deployment_id, d.version) if d else ("manual", "")
        from console.core import events as ev

        with Journal(cfg.journal_path) as j:
            j.append(ev.OperatorAction(action="weights", operator=ev.Operator.current(), detail=f"{args.percent}%",
                                       deployment_id=dep, version=ver))
            try:
                took = asyncio.run(_router_change(cfg, j, args.percent, f"manual: weights {args.percent}", dep, ver))
            except RouterError as e:
                return _router_failed(e)
        print(f"canary {args.percent}% / production {100 - args.percent}%: nginx serves it (verified in {took * 1000:.0f} ms)")
        return EXIT_OK
    finally:
        lk.release()


def _rollback_through_engine(cfg: Any, reason: str) -> int | None:
    """While a detached engine drives, `rollback` asks it instead of failing on its lock."""
    from console.commands.attach import ask_engine
    from console.core import events as ev

    def judge(e: ev.Event, link: Any) -> int | None:
        if isinstance(e, ev.RolledBack):
            print(f"rolled back by the engine (pid {link.engine_pid}): canary 0% / production 100%: {e.reason}")
            return EXIT_OK
        if isinstance(e, ev.Failed):
            _err(f"the engine could not roll back: {e.reason}")
            return EXIT_ROUTER
        return None

    return ask_engine(cfg, ev.Intent("rollback", ev.Operator.current(), reason=reason), judge)


def cmd_rollback(args: argparse.Namespace, cfg: Any) -> int:
    from console.core import events as ev
    from console.core.journal import Journal
    from console.core.lock import DriverLock, LockHeld, lock_path_for
    from console.core.protocols import RouterError

    op = ev.Operator.current()
    reason = args.reason or f"manual rollback by {op.label()}"
    lk = DriverLock(lock_path_for(cfg.journal_path))
    try:
        lk.acquire("rollback")
    except LockHeld as e:
        code = _rollback_through_engine(cfg, reason)
        if code is not None:
            return code
        _err(f"another driver holds the lock: {e}. Watch with `canary-console status` or `canary-console watch`.")
        return EXIT_LOCKED
    try:
        st = _open_deployment(_records(cfg))
        dep, ver = (st.deployment_id, st.version) if st else ("manual", "")
        after: tuple[ev.Event, ...] = (ev.OperatorAction(action="rollback", operator=op, detail=reason,
                                                         deployment_id=dep, version=ver),)
        if st is not None:
            after += (ev.RolledBack(reason=reason, automatic=False, index=max(st.index, 0), from_weight=st.weight or 0,
                                    snapshot=st.results, deployment_id=dep, version=ver),)
        with Journal(cfg.journal_path) as j:
            try:
                took = asyncio.run(_router_change(cfg, j, 0, f"rollback: {reason}", dep, ver, after=after))
            except RouterError as e:
                return _router_failed(e)
        print(f"rolled back: canary 0% / production 100%, nginx serves it (verified in {took * 1000:.0f} ms)")
        return EXIT_OK
    finally:
        lk.release()


# ---------------------------------------------------------------------------- status
def cmd_status(args: argparse.Namespace, cfg: Any) -> int:
    import json

    from console.adapters.nginx.router import NginxRouter
    from console.core.lock import is_held, lock_path_for, read_holder
    from console.core.state import deployments

    weight = NginxRouter.from_config(cfg).current_weight()
    deps = deployments(_records(cfg))
    last = list(deps.values())[-1] if deps else None
    lp = lock_path_for(cfg.journal_path)
    holder = read_holder(lp) if is_held(lp) else None
    health = asyncio.run(_health_both(cfg))
    if args.json:
        out = {
            "canary_weight": weight,
            "production_weight": None if weight is None else 100 - weight,
            "upstream_file": str(cfg.upstream_file),
            "deployment": None if last is None else {
                "id": last.deployment_id, "version": last.version, "state": last.state, "stage": last.stage_label(),
                "weight": last.weight, "reason": last.reason, "started": last.started, "ended": last.ended,
            },
            "driver": holder,
            "health": health,
        }
        print(json.dumps(out, indent=2))
        return EXIT_OK
    w = "unknown (no managed upstream file)" if weight is None else f"canary {weight}% / production {100 - weight}%"
    print(f"traffic:    {w}  ({cfg.upstream_file})")
    if last is None:
        print("deployment: none in the journal")
    else:
        print(f"deployment: {last.deployment_id} {last.version}: {last.state}, stage {last.stage_label()}"
              + (f" ({last.reason})" if last.reason else ""))
    if holder:
        from console.core.lock import describe_holder

        print(f"driver:     {describe_holder(holder)}")
    for name, h in health.items():
        print(f"{name + ':':11} {'healthy' if h['ok'] else 'UNHEALTHY'}: {h['detail']}")
    return EXIT_OK


async def _health_both(cfg: Any) -> dict[str, dict[str, Any]]:
    from console.adapters.health import HttpHealth

    hh = HttpHealth()
    try:
        out = {}
        for name in ("production", "canary"):
            r = await hh.check(cfg["health"][f"{name}_url"], min(cfg["health"]["timeout"], 3.0))
            out[name] = {"ok": r.ok, "status_code": r.status_code, "detail": r.detail}
        return out
    finally:
        await hh.aclose()


# ---------------------------------------------------------------------------- deploy
def cmd_deploy(args: argparse.Namespace, cfg: Any) -> int:
    from console.commands.deploy import deploy

    return deploy(args, cfg)


COMMANDS = {
    "weights": cmd_weights,
    "rollback": cmd_rollback,
    "status": cmd_status,
    "deploy": cmd_deploy,
}



if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
