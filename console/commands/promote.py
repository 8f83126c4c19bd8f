"""``canary-console promote``: the seed's "Promotion to Production", behind its preconditions.

    canary-console promote [--approved-by NAME ...] [--force --reason TEXT] [--yes]

Preconditions, read from the journal (the source of truth), in this order:

1. the latest (non dry-run) deployment reached 100% (a ``completed`` record), was neither
   rolled back nor promoted since, and the journal's last applied weight is still 100;
2. it has held 100% for ``[rollout] promote_after`` seconds (default 1800, the seed's
   "extended monitoring"); ``--force --reason TEXT`` overrides this one, journaled;
3. ``[rollout] required_approvals`` distinct ``--approved-by`` names.

Then, holding the driver lock: journal the operator's action; tag the canary image as the
production version and as ``latest`` (``[docker] enabled``); write the production routing
(100% to the promoted version) through the router's safe path, with the intent journaled
before and the outcome after; append to ``CHANGELOG.md`` and ``deployments.log`` exactly as
the seed's promotion step (``echo ... >>``: appended, never rewritten); journal ``Promoted``;
post the webhook alert.

Exit codes: 0 promoted; 1 cancelled at the question; 2 usage; 4 precondition failed (one line
says which and what to do; also ``[docker] required = true`` and the tagging failed, before
anything was routed); 5 the driver lock is held (one line names the holder); 6 the router
could not apply 100% (nothing else was done after the tags).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

from console.commands.term import ask, err
from console.core import events as ev
from console.core.config import Config
from console.core.exits import ExitCode
from console.core.journal import Journal, read_records
from console.core.lock import DriverLock, LockHeld, lock_path_for
from console.core.promotion import Decision, Outcome, clean_approvals, evaluate, execute
from console.core.protocols import TrafficRouter
from console.wiring import build_router, build_tagger


async def _notify(cfg: Config, promoted: ev.Promoted, note: Callable[[str, str, dict[str, Any]], Any]) -> None:
    from console.adapters.webhook import WebhookNotifier

    try:
        n = WebhookNotifier.from_config(cfg, note)
    except ValueError as e:
        note("warning", str(e), {})
        return
    if n is None:
        return
    n.start()
    n.submit(promoted)
    # the promotion is done; the alert gets one attempt's timeout and a quick retry, not more
    await n.aclose(float(cfg["notify"]["timeout"]) + 2.0)


def _promote_through_engine(cfg: Config, operator: ev.Operator, approvals: tuple[str, ...], reason: str,
                            yes: bool) -> int | None:
    """While a detached engine holds the lock, ask it to promote (it checks the same rules and
    journals the same records).  None when no engine answers."""
    from console.remote.client import ask_engine, socket_answers
    from console.remote.wire import socket_path_for

    if not socket_answers(socket_path_for(cfg.journal_path), 0.5):
        return None
    if not yes:
        answer = ask("the running engine will promote: tag, route 100% and append CHANGELOG.md and deployments.log?")
        if answer is None:
            err("promote: not a terminal; pass --yes to promote without a question")
            return ExitCode.USAGE
        if not answer:
            return ExitCode.FAILED

    def judge(e: ev.Event, link: Any) -> int | None:
        if isinstance(e, ev.Promoted):
            print(f"promoted by the engine (pid {link.engine_pid})")
            return ExitCode.OK
        if isinstance(e, ev.OperatorAction) and e.action == "promote" and not e.accepted:
            err(f"promote refused by the engine: {e.detail}")
            return ExitCode.PRECONDITION
        if isinstance(e, ev.Note) and e.message.startswith(("promote refused", "promote failed")):
            err(e.message)
            return ExitCode.PRECONDITION if e.message.startswith("promote refused") else ExitCode.ROUTER
        return None

    return ask_engine(cfg.journal_path, ev.Intent("promote", operator, reason=reason, approvals=approvals), judge, say=err)


def run(args: argparse.Namespace, cfg: Config, *, router: TrafficRouter | None = None, now: datetime | None = None) -> int:
    """``canary-console promote``; ``router``/``now`` are for tests of edge cases only."""
    force = bool(getattr(args, "force", False))
    reason = (getattr(args, "reason", "") or "").strip()
    if force and not reason:
        err("promote: --force needs --reason TEXT (the reason is journaled)")
        return ExitCode.USAGE
    approvals = clean_approvals(list(getattr(args, "approved_by", None) or []))
    operator = ev.Operator.current()
    lock = DriverLock(lock_path_for(cfg.journal_path))
    try:
        lock.acquire("promote", operator)
    except LockHeld as e:
        code = _promote_through_engine(cfg, operator, approvals, reason if force else "", bool(getattr(args, "yes", False)))
        if code is not None:
            return code
        err(f"promote: another driver holds the lock: {e}")
        return ExitCode.LOCKED
    try:
        records = list(read_records(cfg.journal_path))
        decision = evaluate(cfg, records, approvals, force, now)
        if not decision.ok or decision.deployment is None:
            err(f"promote refused: {decision.message}")
            return ExitCode.PRECONDITION
        if not getattr(args, "yes", False):
            answer = ask(f"{decision.message}: tag, route 100% and append CHANGELOG.md and deployments.log?")
            if answer is None:
                err("promote: not a terminal; pass --yes to promote without a question")
                return ExitCode.USAGE
            if not answer:
                print("promotion cancelled; nothing changed")
                return ExitCode.FAILED
        with Journal(cfg.journal_path) as journal:
            outcome = asyncio.run(_promote(cfg, decision, operator, approvals, reason, journal, router))
        if outcome.code != ExitCode.OK:
            err(f"promote failed: {outcome.message}")
            return outcome.code
        print(outcome.message)
        if outcome.tagged:
            print(f"tagged: {', '.join(outcome.tagged)}")
        print(f"appended: {cfg['paths']['changelog']}, {cfg['paths']['deployments_log']}")
        return ExitCode.OK
    finally:
        lock.release()


async def _promote(cfg: Config, decision: Decision, operator: ev.Operator, approvals: tuple[str, ...], reason: str,
                   journal: Journal, router: TrafficRouter | None) -> Outcome:
    assert decision.deployment is not None
    dep = decision.deployment
    tagger = build_tagger(cfg)
    try:
        outcome = await execute(cfg, dep, operator=operator, approvals=approvals, forced=decision.forced,
                                reason=reason, emit=journal.append, router=router or build_router(cfg), tagger=tagger)
    finally:
        if tagger is not None:
            tagger.close()
    if outcome.promoted is not None:
        def note(level: str, message: str, data: dict[str, Any]) -> None:
            journal.append(ev.Note(level=level, message=message, data=data, deployment_id=dep.deployment_id,
                                   version=dep.version))

        await _notify(cfg, outcome.promoted, note)
    return outcome
