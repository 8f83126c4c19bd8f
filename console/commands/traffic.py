"""`canary-console weights N`, `rollback` and `status`: the traffic, by hand.

These are the break-glass path, so they start fast: no engine, no textual, httpx or docker
(`status` loads httpx for its health line only).  `weights` and `rollback` take the driver
lock; while a detached engine holds it, `rollback` asks that engine instead.  With one nginx in
reload mode they load no asyncio either (``_router``: wiring.build_quick_router).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from console.commands.term import err, report_router_error
from console.core import events as ev
from console.core import manual
from console.core.config import normalize_weight
from console.core.exits import ExitCode
from console.core.lock import DriverLock, LockHeld, lock_path_for
from console.core.routing import RouterError
from console.core.state import NO_CHANGE, UNCONFIRMED, RouterTruth
from console.wiring import build_quick_router, build_router


def _router(cfg: Any) -> tuple[Any, bool]:
    """(the router, whether ``manual`` drives it inline): the quick one when it can be had."""
    quick = build_quick_router(cfg)
    return (quick, True) if quick is not None else (build_router(cfg), False)


def _held(e: LockHeld) -> ExitCode:
    err(f"another driver holds the lock: {e}. Watch with `canary-console status` or `canary-console watch`.")
    return ExitCode.LOCKED


def run_weights(args: argparse.Namespace, cfg: Any) -> int:
    lk = DriverLock(lock_path_for(cfg.journal_path))
    try:
        lk.acquire(f"weights {args.percent}")
    except LockHeld as e:
        return _held(e)
    try:
        router, inline = _router(cfg)
        res = manual.set_weight(cfg.journal_path, router, args.percent, ev.Operator.current(), inline=inline)
    except RouterError as e:
        return report_router_error(e)
    finally:
        lk.release()
    prod = normalize_weight(100 - args.percent)
    print(f"canary {args.percent}% / production {prod}%: nginx serves it (verified in {res.took_s * 1000:.0f} ms)")
    return ExitCode.OK


def _rollback_through_engine(cfg: Any, reason: str) -> int | None:
    """While a detached engine drives, `rollback` asks it instead of failing on its lock."""
    from console.core.report import report_path
    from console.remote.client import ask_engine

    def judge(e: ev.Event, link: Any) -> int | None:
        if isinstance(e, ev.RolledBack):
            print(f"rolled back by the engine (pid {link.engine_pid}): canary 0% / production 100%: {e.reason}")
            print(f"incident report (the engine writes it): {report_path(cfg.journal_path, e.deployment_id)}")
            return ExitCode.OK
        if isinstance(e, ev.Failed):
            err(f"the engine could not roll back: {e.reason}")
            return ExitCode.ROUTER
        return None

    return ask_engine(cfg.journal_path, ev.Intent("rollback", ev.Operator.current(), reason=reason), judge, say=err)


def run_rollback(args: argparse.Namespace, cfg: Any) -> int:
    op = ev.Operator.current()
    reason = args.reason or f"manual rollback by {op.label()}"
    lk = DriverLock(lock_path_for(cfg.journal_path))
    try:
        lk.acquire("rollback")
    except LockHeld as e:
        code = _rollback_through_engine(cfg, reason)
        return code if code is not None else _held(e)
    try:
        router, inline = _router(cfg)
        res = manual.rollback(cfg.journal_path, router, reason, op, inline=inline)
    except RouterError as e:
        return report_router_error(e)
    finally:
        lk.release()
    print(f"rolled back: canary 0% / production 100%, nginx serves it (verified in {res.took_s * 1000:.0f} ms)")
    _incident_report(cfg, res.deployment_id)  # after nginx serves 0%: the report never delays the rollback
    return ExitCode.OK


def _incident_report(cfg: Any, deployment_id: str) -> None:
    """The rolled-back deployment's report beside the journal (docs/report.md), and where it is."""
    sys.stdout.flush()  # the confirmation is out before the report's imports and work
    from console.core.report import after_rollback

    line = after_rollback(cfg.journal_path, deployment_id, cfg.path)
    if line:
        print(line)


def run_status(args: argparse.Namespace, cfg: Any) -> int:
    from console.core.checkpoint import fold_in
    from console.core.lock import describe_holder, is_held, read_holder

    router = build_router(cfg)
    weight = router.current_weight()
    folded = fold_in(cfg.journal_path)  # the journal's checkpoint and what came after it
    truth = folded.truth
    hosts = _fleet_hosts(router, truth)  # [] for one nginx
    deps = folded.deployments
    last = list(deps.values())[-1] if deps else None
    lp = lock_path_for(cfg.journal_path)
    holder = read_holder(lp) if is_held(lp) else None
    import asyncio

    health = asyncio.run(_health_both(cfg))
    if args.json:
        out = {
            "canary_weight": weight,  # what the upstream file holds
            "production_weight": None if weight is None else normalize_weight(100 - weight),
            "confirmed": truth.agrees_with(weight),  # nginx confirmed exactly this, nothing pending since
            "router": {"state": truth.state, "confirmed_weight": truth.confirmed_weight,
                       "pending_weight": truth.pending_weight, "detail": truth.detail},
            "upstream_file": str(cfg.upstream_file),
            "hosts": hosts,  # a fleet ([[nginx.hosts]]): each host's file, and whether it drifted
            "deployment": None if last is None else {
                "id": last.deployment_id, "version": last.version, "state": last.state, "stage": last.stage_label(),
                "weight": last.weight, "reason": last.reason, "started": last.started, "ended": last.ended,
            },
            "driver": holder,
            "health": health,
        }
        print(json.dumps(out, indent=2))
        return ExitCode.OK
    if hosts:
        _print_hosts(hosts, weight)
    else:
        w = ("unknown (no managed upstream file)" if weight is None
             else f"canary {weight}% / production {normalize_weight(100 - weight)}%")
        print(f"traffic:    {w}  ({cfg.upstream_file})")
    line = _confirmation(truth, weight) if weight is not None or not hosts else _fleet_disagrees(truth, hosts)
    if line:
        print(f"nginx:      {line}")
    if last is None:
        print("deployment: none in the journal")
    else:
        print(f"deployment: {last.deployment_id} {last.version}: {last.state}, stage {last.stage_label()}"
              + (f" ({last.reason})" if last.reason else ""))
    if holder:
        print(f"driver:     {describe_holder(holder)}")
    for name, h in health.items():
        print(f"{name + ':':11} {'healthy' if h['ok'] else 'UNHEALTHY'}: {h['detail']}")
    return ExitCode.OK


def _fleet_hosts(router: Any, truth: RouterTruth) -> list[dict[str, Any]]:
    """A fleet's hosts for status: name, canary_weight and generation (what its file holds) and
    whether it drifted (``state.drifted_hosts``); [] for one nginx."""
    from console.adapters.nginx.fleet import FleetRouter
    from console.core.state import drifted_hosts

    if not isinstance(router, FleetRouter):
        return []
    states = router.host_states()
    drifted = set(drifted_hosts({h.name: h.weight for h in states}, truth))
    files = {name: str(r.upstream_file) for name, r in router.hosts}
    return [{"name": h.name, "canary_weight": h.weight, "generation": h.generation, "drifted": h.name in drifted,
             "upstream_file": files[h.name]} for h in states]


def _print_hosts(hosts: list[dict[str, Any]], weight: float | None) -> None:
    drifted = [h["name"] for h in hosts if h["drifted"]]
    if weight is not None:
        w = f"canary {weight}% / production {normalize_weight(100 - weight)}% on all {len(hosts)} hosts"
    else:
        w = f"the {len(hosts)} hosts' upstream files disagree"
    print(f"traffic:    {w}" + (f"; DRIFTED: {', '.join(drifted)}" if drifted else ""))
    for h in hosts:
        cw = "no managed upstream file" if h["canary_weight"] is None else f"canary {h['canary_weight']}%"
        mark = "  DRIFTED: its file differs from the journal or the other hosts" if h["drifted"] else ""
        print(f"  {h['name'] + ':':14} {cw}, generation {h['generation'] or '-'}{mark}")


def _fleet_disagrees(truth: RouterTruth, hosts: list[dict[str, Any]]) -> str:
    last = "nothing" if truth.confirmed_weight is None else f"canary {truth.confirmed_weight}%"
    drifted = ", ".join(h["name"] for h in hosts if h["drifted"]) or "none named"
    return (f"the hosts' upstream files disagree (drifted: {drifted}); nginx last confirmed {last} (journal). "
            "Set every host with canary-console weights N")


def _confirmation(truth: RouterTruth, weight: float | None) -> str:
    """One line on whether nginx confirmed what the file holds, from the journal."""
    if truth.state == NO_CHANGE:
        return "no router change in the journal yet"
    if truth.agrees_with(weight):
        return f"confirmed: nginx serves canary {weight}% (journal)"
    if truth.state == UNCONFIRMED:
        last = "nothing" if truth.confirmed_weight is None else f"canary {truth.confirmed_weight}%"
        return (f"UNCONFIRMED: a change to canary {truth.pending_weight}% was not confirmed ({truth.detail}); nginx "
                f"last confirmed {last}. Reconcile: canary-console deploy --version V --resume, or "
                'canary-console rollback --reason "..."')
    return (f"the file holds canary {weight}% but nginx last confirmed canary {truth.confirmed_weight}%: "
            "it was changed outside canary-console; set it with canary-console weights N")


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
