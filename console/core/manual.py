"""Router changes made without an engine: `weights`, `rollback`, the resume reconciliation and
the break-glass rollback of a console whose engine is gone.

Each is journaled like the engine's own changes: the intent before (with the operator's action,
in the same write), the outcome after.  The router is passed in (core builds no adapter), so
this module stays as cheap to import as the rollback path needs: with ``inline`` (a router
whose ``apply`` never waits on an event loop, adapters.nginx.quick.QuickRouter) the change is
driven by ``run_inline`` and asyncio is never loaded.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from console.core import events as ev
from console.core.checkpoint import deployments_in
from console.core.journal import Journal
from console.core.lock import DriverLock, LockHeld, describe_holder, lock_path_for
from console.core.routing import RouterError, file_weight, router_hosts
from console.core.state import DeploymentState, unfinished_of

if TYPE_CHECKING:  # for annotations only: `rollback` need not build every Protocol
    from console.core.protocols import TrafficRouter

T = TypeVar("T")

def run_inline(coro: Coroutine[object, object, T]) -> T:
    """Run ``coro`` to its end in this thread, without an event loop: for a coroutine whose
    every ``await`` completes at once (a router built for it does its I/O blocking).  If it
    does wait on a loop, it is closed (its ``finally`` clauses run) and RuntimeError raised."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("run_inline: the coroutine waited on an event loop; drive it with asyncio.run instead")


def _drive(coro: Coroutine[object, object, T], inline: bool) -> T:
    if inline:
        return run_inline(coro)
    import asyncio

    return asyncio.run(coro)


async def router_change(journal: Journal, router: TrafficRouter, weight: float, reason: str, deployment_id: str,
                        version: str, before: tuple[ev.Event, ...] = (), after: tuple[ev.Event, ...] = (),
                        unverified: str = "") -> float:
    """One journaled router change: ``before`` and the intent in one write, the outcome (and
    ``after``) in the next.  Returns the seconds nginx took to verifiably serve ``weight``;
    raises RouterError (journaled as RouterFailed) when it did not.

    ``unverified``: the router cannot confirm this change (why, in a few words): it is journaled
    as unconfirmed, never as applied, however the reload went."""
    gen = f"{deployment_id}:{os.urandom(3).hex()}"
    common = {"deployment_id": deployment_id, "version": version}
    journal.append(*before, ev.RouterIntent(weight=weight, previous_weight=router.current_weight(), generation=gen,
                                            reason=reason, **common))
    try:
        took = await router.apply(weight, gen)
    except RouterError as e:
        journal.append(ev.RouterFailed(weight=weight, generation=gen, error=f"{e}: {e.detail}".rstrip(": "),
                                       restored_weight=e.restored_weight, file_weight=file_weight(router),
                                       outcome="unconfirmed" if e.reloaded else "restored", hosts=router_hosts(router),
                                       **common))
        raise
    except Exception as e:  # not a router failure it knows (a bug, a bad argument): never leave the intent open
        journal.append(ev.RouterFailed(weight=weight, generation=gen, error=" ".join(f"{type(e).__name__}: {e}".split()),
                                       file_weight=file_weight(router), outcome="unconfirmed", **common))
        raise
    if unverified:
        journal.append(ev.RouterFailed(weight=weight, generation=gen, error=f"not verified: {unverified}",
                                       file_weight=weight, outcome="unconfirmed", **common), *after)
        return took
    journal.append(ev.RouterApplied(weight=weight, generation=gen, duration_ms=round(took * 1000, 2), hosts=router_hosts(router),
                                    **common), *after)
    return took


@dataclass(frozen=True)
class ManualResult:
    deployment_id: str  # "manual" when no deployment is open
    from_weight: float | None  # what the upstream file said before
    took_s: float


def target(journal_path: Path, *, or_last: bool = False) -> DeploymentState:
    """The deployment a manual change is journaled under: the unfinished one; with ``or_last``
    the latest one; else "manual".  Folded from the checkpoint (``checkpoint.deployments_in``):
    a long journal does not delay a rollback."""
    deps = deployments_in(journal_path)
    dep = unfinished_of(deps)
    if dep is None and or_last:
        dep = list(deps.values())[-1] if deps else None
    return dep or DeploymentState(deployment_id="manual")


def set_weight(journal_path: Path, router: TrafficRouter, weight: float, operator: ev.Operator, *,
               inline: bool = False) -> ManualResult:
    """`canary-console weights N`; the caller holds the driver lock.  ``inline``: the router's
    ``apply`` never waits on an event loop (``run_inline``)."""
    dep = target(journal_path)
    common = {"deployment_id": dep.deployment_id, "version": dep.version}
    before = router.current_weight()
    action = ev.OperatorAction(action="weights", operator=operator, detail=f"{weight}%", **common)
    with Journal(journal_path) as j:
        took = _drive(router_change(j, router, weight, f"manual: weights {weight}", dep.deployment_id, dep.version,
                                    before=(action,)), inline)
    return ManualResult(dep.deployment_id, before, took)


def rollback(journal_path: Path, router: TrafficRouter, reason: str, operator: ev.Operator, *,
             or_last: bool = False, inline: bool = False) -> ManualResult:
    """Canary 0% through the router, journaled with the operator's action and, for a deployment,
    its RolledBack.  The caller holds the driver lock (or was forced to go without).
    ``inline``: the router's ``apply`` never waits on an event loop (``run_inline``)."""
    dep = target(journal_path, or_last=or_last)
    common = {"deployment_id": dep.deployment_id, "version": dep.version}
    before = router.current_weight()
    action = ev.OperatorAction(action="rollback", operator=operator, detail=reason, **common)
    after: tuple[ev.Event, ...] = ()
    if dep.deployment_id != "manual":
        after = (ev.RolledBack(reason=reason, automatic=False, index=max(dep.index, 0), from_weight=dep.weight or 0,
                               snapshot=dep.results, **common),)
    with Journal(journal_path) as j:
        took = _drive(router_change(j, router, 0, f"rollback: {reason}", dep.deployment_id, dep.version,
                                    before=(action,), after=after), inline)
    return ManualResult(dep.deployment_id, before, took)


class BreakGlassRefused(Exception):
    """The break-glass rollback would race a live driver: one line why."""


def break_glass_rollback(journal_path: Path, router: Callable[[], TrafficRouter], reason: str,
                         operator: ev.Operator | None = None, *, force: bool = False,
                         engine_answers: Callable[[], bool] = lambda: False) -> ManualResult:
    """Roll back to 0% straight through the router, without the engine (it is lost), journaled.

    Takes the driver lock first.  If a live process holds it: when its engine answers
    (``engine_answers``), roll back through the engine instead (BreakGlassRefused); when nothing
    answers (a hung engine), only ``force`` goes ahead without the lock.  Raises RouterError if
    nginx cannot be changed (the previous file is kept).  Blocking: call it from a thread in a UI.
    """
    op = operator or ev.Operator.current()
    lk: DriverLock | None = DriverLock(lock_path_for(journal_path))
    try:
        lk.acquire(f"break-glass rollback by {op.label()}", op)
    except LockHeld as e:
        if engine_answers():
            raise BreakGlassRefused(f"the engine answers ({describe_holder(e.holder)}): roll back through it") from None
        if not force:
            raise BreakGlassRefused(f"the lock is held by {describe_holder(e.holder)} and its engine does not answer: "
                                    "force the break-glass rollback to go ahead without the lock") from None
        lk = None
    try:
        why = f"break-glass: {reason}" + ("" if lk is not None else " (forced: the lock holder does not answer)")
        res = rollback(journal_path, router(), why, op, or_last=True)
    finally:
        if lk is not None:
            lk.release()
    from console.core.report import after_rollback

    after_rollback(journal_path, res.deployment_id)  # nginx serves 0% by now: reports/<id>.html; never raises
    return res
