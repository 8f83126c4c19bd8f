"""canary-console command line: the parser and the dispatch, nothing else.

Each command lives in its own module under console/commands/ and is imported only when it
runs, so heavy modules (textual, docker, prometheus-api-client, httpx) load only for the
commands that need them and `canary-console rollback` starts fast.  Exit codes:
console/core/exits.py.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from typing import Any

from console.core.config import FLOAT_TEXT, WEIGHT_ALLOWED, ConfigError, load_config, normalize_weight
from console.core.exits import EPILOG, ExitCode


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message}\n")


def _percent(v: str) -> int | float:
    if not re.fullmatch(r"[0-9]{1,3}(\.[0-9])?", v) or not 0 <= float(v) <= 100:  # ASCII: \d takes "٥"
        raise argparse.ArgumentTypeError(f"canary weight {v!r} is not valid; allowed: {WEIGHT_ALLOWED} (no % sign)")
    return normalize_weight(float(v))


def _seconds(v: str) -> float:
    f = float(v) if FLOAT_TEXT.fullmatch(v) else -1.0  # ASCII digits only: float() takes "٥", "1_0", "nan"
    if not 0 < f < float("inf"):
        raise argparse.ArgumentTypeError(f"{v!r} is not valid; allowed: a number of seconds > 0")
    return f


def _number(v: str) -> float:
    if not FLOAT_TEXT.fullmatch(v) or not 0 < float(v) < float("inf"):
        raise argparse.ArgumentTypeError(f"{v!r} is not valid; allowed: a number > 0 in ASCII digits")
    return float(v)


def _port(v: str) -> int:
    if not re.fullmatch(r"[0-9]{1,5}", v) or not 1 <= int(v) <= 65535:
        raise argparse.ArgumentTypeError(f"{v!r} is not valid; allowed: a port 1..65535 in ASCII digits")
    return int(v)


def _listen(v: str) -> tuple[str, int]:
    from console.commands.serve import parse_listen  # stdlib only until it serves

    try:
        return parse_listen(v)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


class _Only:
    """``add_subparsers()`` for one command (``only``): the others are left out.  A command's
    arguments are parsed by its own subparser alone, so the result, and any error, is the same."""

    def __init__(self, sub: Any, only: str | None) -> None:
        self.sub, self.only = sub, only

    def add_parser(self, name: str, **kw: Any) -> Any:
        return self.sub.add_parser(name, **kw) if self.only in (None, name) else _Ignored()


class _Ignored:
    def add_argument(self, *args: Any, **kw: Any) -> None:
        pass


def fast_command(argv: list[str]) -> str | None:
    """The FAST_EXIT command argv runs, when that is certain without the parser (no -h): so
    `rollback` does not build the other commands' parsers (argparse takes ~1 ms a parser)."""
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-h", "--help") or a == "--":
            return None
        if a.startswith("-"):
            # --config PATH, --env-file PATH, or an abbreviation of them (argparse takes those)
            takes_value = "=" not in a and len(a) > 2 and any(o.startswith(a) for o in ("--config", "--env-file"))
            i += 2 if takes_value else 1
            continue
        return a if a in FAST_EXIT and not any(x in ("-h", "--help") for x in argv[i + 1:]) else None
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; ``only`` (``fast_command``): with that command's subparser alone."""
    p = _Parser(prog="canary-console", description="Progressive canary rollouts behind NGINX, judged by live metrics.",
                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="PATH", help="canary.toml (default: ./canary.toml, or $CANARY_CONFIG)")
    p.add_argument("--env-file", metavar="PATH", help=".env file (default: .env beside the config)")
    subparsers = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    sub = _Only(subparsers, only)

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
    w.add_argument("percent", type=_percent, metavar="PCT", help="canary weight, 0..100 with at most one decimal (0.1)")

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

    rr = sub.add_parser("report", help="write a deployment's incident report (timeline, deciding gate, charts)")
    rr.add_argument("deployment_id", metavar="DEPLOYMENT_ID", help="an id from `canary-console history`, or latest")
    rr.add_argument("--format", choices=("md", "html"), default="html", help="html (one self-contained file, default) or md")
    rr.add_argument("--output", metavar="PATH", help="where to write it (default: <journal dir>/reports/<id>.html or .md)")

    wa = sub.add_parser("watch", help="read-only console following the journal and the metrics")
    wa.add_argument("--mirror", action="store_true",
                    help="the browser mirror's console (what `serve` runs): no key that moves traffic is bound")

    sv = sub.add_parser("serve", help="the live console, read-only, in a browser (textual-serve; loopback by default)")
    sv.add_argument("--listen", type=_listen, default="127.0.0.1:8566", metavar="ADDR",
                    help="HOST:PORT to listen on (default 127.0.0.1:8566); any other than loopback is said on start")

    a = sub.add_parser("attach", help="attach a console to the running engine")
    a.add_argument("--take-over", action="store_true", help="ask the current driver to hand over")
    a.add_argument("--headless", action="store_true", help="no console: one line per event")
    a.add_argument("--json", action="store_true", help="with --headless: JSON lines")

    it = sub.add_parser("init", help="adopt a hand-written nginx upstream file: the same split, managed from now on")
    it.add_argument("--dry-run", "--print", dest="dry_run", action="store_true",
                    help="show the file it would write and what nginx.conf still needs; change nothing")

    dm = sub.add_parser("demo", help="a local canary sandbox with real nginx, Prometheus and traffic")
    dm.add_argument("--rps", type=_number, default=20.0, help="requests per second through nginx (default 20)")
    dm.add_argument("--observation-period", type=_seconds, default=30.0, metavar="S", help="seconds per stage (30)")
    dm.add_argument("--check-interval", type=_seconds, default=2.0, metavar="S", help="seconds between checks (2)")
    dm.add_argument("--fault", action="append", default=[], metavar="NAME=VALUE",
                    help="schedule a fault, e.g. error_rate=0.05, latency=fast:3, schema_failure_rate=1, unhealthy=1")
    dm.add_argument("--fault-at-stage", type=_percent, metavar="P", help="inject the faults when stage P starts")
    dm.add_argument("--headless", action="store_true", help="no console; exit with the deploy exit code")
    dm.add_argument("--json", action="store_true", help="with --headless: JSON lines")
    dm.add_argument("--keep", action="store_true", help="keep the temporary directory")
    dm.add_argument("--source", choices=("auto", "prometheus", "scrape"), default="auto", help="metric source")
    dm.add_argument("--port", type=_port, metavar="PORT", help="nginx listen port on 127.0.0.1 (default: a free port)")
    return p


# command -> "module:function"; the module is imported only when its command runs
COMMANDS = {
    "deploy": "console.commands.deploy:run",
    "weights": "console.commands.traffic:run_weights",
    "rollback": "console.commands.traffic:run_rollback",
    "status": "console.commands.traffic:run_status",
    "check": "console.commands.check:run",
    "promote": "console.commands.promote:run",
    "history": "console.commands.history:run",
    "replay": "console.commands.history:run_replay",
    "report": "console.commands.report:run",
    "watch": "console.commands.attach:run_watch",
    "attach": "console.commands.attach:run",
    "demo": "console.commands.demo:run",
    "init": "console.commands.init:run",
    "serve": "console.commands.serve:run",
}
NEEDS_UPSTREAM_DIR = ("deploy", "weights", "rollback", "promote", "check", "init")
FAST_EXIT = ("weights", "rollback")  # no atexit work: skip the interpreter's teardown (tens of ms on a rollback)


def command(name: str) -> Any:
    module, _, func = COMMANDS[name].partition(":")
    return getattr(importlib.import_module(module), func)


def main(argv: list[str] | None = None) -> int:
    args = build_parser(fast_command(sys.argv[1:] if argv is None else argv)).parse_args(argv)
    if args.command == "demo":  # the sandbox writes its own config; never the operator's
        return int(command("demo")(args, None))
    overrides: dict[tuple[str, str], Any] = {}
    if args.command == "deploy":
        overrides[("rollout", "observation_period")] = args.observation_period
        overrides[("rollout", "check_interval")] = args.check_interval
    try:
        cfg = load_config(args.config, args.env_file, overrides, check_upstream_dir=args.command in NEEDS_UPSTREAM_DIR)
    except ConfigError as e:
        print(f"canary-console: config error: {e}", file=sys.stderr)
        return ExitCode.USAGE
    code = int(command(args.command)(args, cfg))
    if args.command in FAST_EXIT:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
