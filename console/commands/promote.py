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
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from console.core import events as ev
from console.core.journal import Journal, read_records
from console.core.lock import DriverLock, LockHeld, lock_path_for
from console.core.state import AT_100, PROMOTED, DeploymentState, deployments, last_applied_weight

if TYPE_CHECKING:
    from console.core.config import Config
    from console.core.protocols import TrafficRouter

EXIT_OK, EXIT_CANCELLED, EXIT_USAGE, EXIT_PRECONDITION, EXIT_LOCKED, EXIT_ROUTER = 0, 1, 2, 4, 5, 6

Emit = Callable[[ev.Event], Any]


def fmt_duration(seconds: float) -> str:
    s = max(0, int(round(seconds)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{sec:02d}s"
    return f"{sec}s"


def parse_ts(ts: str) -> datetime | None:
    try:
        d = datetime.fromisoformat(ts)
    except (TypeError, ValueError):
        return None
    return d if d.tzinfo else d.replace(tzinfo=UTC)


def clean_approvals(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Distinct, non-empty names, first spelling kept (case-insensitive)."""
    seen: dict[str, str] = {}
    for n in names:
        n = n.strip()
        if n and n.lower() not in seen:
            seen[n.lower()] = n
    return tuple(seen.values())


@dataclass(frozen=True)
class Decision:
    ok: bool
    message: str  # why not (one line), or what will happen
    deployment: DeploymentState | None = None
    forced: bool = False
    held: float = 0.0


def evaluate(
    cfg: Config, records: list[dict[str, Any]], approvals: tuple[str, ...], force: bool, now: datetime | None = None
) -> Decision:
    """May the latest deployment be promoted now?  Pure: reads the journal records only."""
    # a dry run changed nothing; "manual" router changes (no deployment_started) are no deployment
    deps = [d for d in deployments(records).values() if not d.dry_run and d.started]
    if not deps:
        return Decision(False, f"no deployment in the journal {cfg.journal_path}; deploy and reach 100% first")
    d = deps[-1]
    name = f"deployment {d.deployment_id} ({d.version})"
    if d.state == PROMOTED:
        return Decision(False, f"{name} is already promoted (at {d.ended})", d)
    if d.state != AT_100:
        where = f" at stage {d.stage_label()}" if d.index >= 0 else ""
        why = f": {d.reason}" if d.reason else ""
        return Decision(False, f"{name} is {d.state}{where}{why}; promote needs a deployment that reached 100% "
                               "and was not rolled back", d)
    weight = last_applied_weight(records)
    if weight != 100:
        return Decision(False, f"{name} reached 100%, but the journal's last applied weight is {weight}% canary; "
                               "set `canary-console weights 100` or deploy again", d)
    reached = parse_ts(d.completed_at)
    now = now or datetime.now(UTC)
    held = (now - reached).total_seconds() if reached else 0.0
    need = float(cfg["rollout"]["promote_after"])
    forced = False
    if held < need:
        if not force:
            return Decision(False, f"{name} reached 100% at {d.completed_at}, {fmt_duration(held)} ago; "
                                   f"[rollout] promote_after is {fmt_duration(need)}: wait {fmt_duration(need - held)} more, "
                                   "or use --force --reason TEXT", d, held=held)
        forced = True
    required = int(cfg["rollout"]["required_approvals"])
    if len(approvals) < required:
        given = f" ({', '.join(approvals)})" if approvals else ""
        return Decision(False, f"{required} approval(s) required ([rollout] required_approvals), {len(approvals)} given{given}; "
                               "add --approved-by NAME (repeatable)", d, forced, held)
    return Decision(True, f"promote {d.version} ({d.deployment_id}), at 100% for {fmt_duration(held)}", d, forced, held)


# ---------------------------------------------------------------------- the seed's files
def append_lines(path: Path, lines: list[str]) -> None:
    """``echo line >> path`` for each line: O_APPEND, never a rewrite; a file that does not end
    with a newline gets one first so two entries never share a line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        prefix = b""
        if size:
            with open(path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    prefix = b"\n"
        os.write(fd, prefix + "".join(f"{ln}\n" for ln in lines).encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def seed_date(now: float | None = None) -> str:
    """`date` with no arguments, as the seed's deployments.log line uses: "Thu Nov 26 08:33:26 UTC 2026"."""
    return time.strftime("%a %b %e %H:%M:%S %Z %Y", time.localtime(now))


def changelog_lines(version: str, now: float | None = None) -> list[str]:
    return [f"## [{version}] - {time.strftime('%Y-%m-%d', time.localtime(now))}", "### Changed",
            f"- Promoted canary {version} to production"]


def deployments_log_line(version: str, now: float | None = None) -> str:
    return f"{seed_date(now)}: Promoted {version} to production after successful canary deployment"


# ---------------------------------------------------------------------- doing it
@dataclass(frozen=True)
class Outcome:
    code: int
    message: str
    tagged: tuple[str, ...] = ()
    promoted: ev.Promoted | None = None


async def execute(
    cfg: Config,
    dep: DeploymentState,
    *,
    operator: ev.Operator,
    approvals: tuple[str, ...],
    forced: bool,
    reason: str,
    emit: Emit,
    router: TrafficRouter | None = None,
    adapter: Any = None,
) -> Outcome:
    """Tag, route, append, journal.  ``emit`` journals one event (the CLI: Journal.append; the
    engine: its own emit, so a console sees the events live).  The caller holds the lock."""
    common = {"deployment_id": dep.deployment_id, "version": dep.version}

    def note(level: str, message: str, data: dict[str, Any] | None = None) -> None:
        emit(ev.Note(level=level, message=message, data=data or {}, **common))

    detail = f"approved by {', '.join(approvals)}" if approvals else "no approvals"
    if forced:
        detail += f"; forced before promote_after: {reason}"
    emit(ev.OperatorAction(action="promote", operator=operator, detail=detail, **common))
    if forced:
        note("warning", f"promotion forced before [rollout] promote_after by {operator.label()}: {reason}", {"reason": reason})

    tagged: tuple[str, ...] = ()
    if cfg["docker"]["enabled"]:
        from console.adapters.docker import DockerAdapter, DockerUnavailable

        ad = adapter or DockerAdapter(cfg)
        src = f"{cfg['docker']['image']}:{dep.version}"
        try:
            # the seed: docker tag app:${CANARY_VERSION} app:${VERSION} (VERSION=CANARY_VERSION) and app:latest
            tagged = tuple(await asyncio.to_thread(ad.tag_image, src, [src, f"{cfg['docker']['image']}:latest"]))
            note("info", f"tagged {src} as {', '.join(tagged)}", {"tags": list(tagged)})
        except DockerUnavailable as e:
            if ad.required:
                note("error", f"promotion stopped, nothing routed: {e}")
                return Outcome(EXIT_PRECONDITION, f"[docker] required = true and Docker failed: {e}; nothing was routed")
            note("warning", f"image not tagged: {e}")
        finally:
            if adapter is None:
                ad.close()

    from console.core.protocols import RouterError

    if router is None:
        from console.adapters.nginx.router import NginxRouter

        router = NginxRouter.from_config(cfg)
    gen = f"{dep.deployment_id}:promote-{os.urandom(3).hex()}"
    emit(ev.RouterIntent(weight=100, previous_weight=router.current_weight(), generation=gen,
                         reason="promote: production routing, 100% to the promoted version", **common))
    try:
        took = await router.apply(100, gen)
    except RouterError as e:
        emit(ev.RouterFailed(weight=100, generation=gen, error=f"{e}: {e.detail}".rstrip(": "),
                             restored_weight=e.restored_weight, **common))
        return Outcome(EXIT_ROUTER, f"the production routing could not be applied: {e}; not promoted", tagged)
    emit(ev.RouterApplied(weight=100, generation=gen, duration_ms=round(took * 1000, 2), **common))

    now = time.time()
    append_lines(cfg.resolve(cfg["paths"]["changelog"]), changelog_lines(dep.version, now))
    append_lines(cfg.resolve(cfg["paths"]["deployments_log"]), [deployments_log_line(dep.version, now)])
    promoted = ev.Promoted(operator=operator, approvals=approvals, forced=forced, reason=reason, **common)
    emit(promoted)
    msg = (f"promoted {dep.version} ({dep.deployment_id}) to production: nginx serves 100% {dep.version} "
           f"(verified in {took * 1000:.0f} ms)")
    return Outcome(EXIT_OK, msg, tagged, promoted)


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


def _err(msg: str) -> None:
    print(f"canary-console: {msg}", file=sys.stderr)


def _confirm(question: str) -> bool | None:
    """True/False from the operator; None when there is nobody to ask (no terminal)."""
    if not sys.stdin or not sys.stdin.isatty():
        return None
    try:
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


def _promote_through_engine(cfg: Config, operator: ev.Operator, approvals: tuple[str, ...], reason: str,
                            yes: bool) -> int | None:
    """While a detached engine holds the lock, ask it to promote (it checks the same rules and
    journals the same records).  None when no engine answers."""
    from console.commands.attach import ask_engine
    from console.remote.daemon import socket_answers
    from console.remote.wire import socket_path_for

    if not socket_answers(socket_path_for(cfg.journal_path), 0.5):
        return None
    if not yes:
        answer = _confirm("the running engine will promote: tag, route 100% and append CHANGELOG.md and deployments.log?")
        if answer is None:
            _err("promote: not a terminal; pass --yes to promote without a question")
            return EXIT_USAGE
        if not answer:
            return EXIT_CANCELLED

    def judge(e: ev.Event, link: Any) -> int | None:
        if isinstance(e, ev.Promoted):
            print(f"promoted by the engine (pid {link.engine_pid})")
            return EXIT_OK
        if isinstance(e, ev.OperatorAction) and e.action == "promote" and not e.accepted:
            _err(f"promote refused by the engine: {e.detail}")
            return EXIT_PRECONDITION
        if isinstance(e, ev.Note) and e.message.startswith(("promote refused", "promote failed")):
            _err(e.message)
            return EXIT_PRECONDITION if e.message.startswith("promote refused") else EXIT_ROUTER
        return None

    return ask_engine(cfg, ev.Intent("promote", operator, reason=reason, approvals=approvals), judge)


def run(args: argparse.Namespace, cfg: Config, *, router: TrafficRouter | None = None, now: datetime | None = None) -> int:
    """``canary-console promote``; ``router``/``now`` are for tests of edge cases only."""
    force = bool(getattr(args, "force", False))
    reason = (getattr(args, "reason", "") or "").strip()
    if force and not reason:
        _err("promote: --force needs --reason TEXT (the reason is journaled)")
        return EXIT_USAGE
    approvals = clean_approvals(list(getattr(args, "approved_by", None) or []))
    operator = ev.Operator.current()
    lock = DriverLock(lock_path_for(cfg.journal_path))
    try:
        lock.acquire("promote", operator)
    except LockHeld as e:
        code = _promote_through_engine(cfg, operator, approvals, reason if force else "", bool(getattr(args, "yes", False)))
        if code is not None:
            return code
        _err(f"promote: another driver holds the lock: {e}")
        return EXIT_LOCKED
    try:
        records = list(read_records(cfg.journal_path))
        decision = evaluate(cfg, records, approvals, force, now)
        if not decision.ok or decision.deployment is None:
            _err(f"promote refused: {decision.message}")
            return EXIT_PRECONDITION
        if not getattr(args, "yes", False):
            answer = _confirm(f"{decision.message}: tag, route 100% and append CHANGELOG.md and deployments.log?")
            if answer is None:
                _err("promote: not a terminal; pass --yes to promote without a question")
                return EXIT_USAGE
            if not answer:
                print("promotion cancelled; nothing changed")
                return EXIT_CANCELLED
        with Journal(cfg.journal_path) as journal:
            outcome = asyncio.run(_promote(cfg, decision, operator, approvals, reason, journal, router))
        if outcome.code != EXIT_OK:
            _err(f"promote failed: {outcome.message}")
            return outcome.code
        print(outcome.message)
        if outcome.tagged:
            print(f"tagged: {', '.join(outcome.tagged)}")
        print(f"appended: {cfg['paths']['changelog']}, {cfg['paths']['deployments_log']}")
        return EXIT_OK
    finally:
        lock.release()


async def _promote(cfg: Config, decision: Decision, operator: ev.Operator, approvals: tuple[str, ...], reason: str,
                   journal: Journal, router: TrafficRouter | None) -> Outcome:
    assert decision.deployment is not None
    dep = decision.deployment
    outcome = await execute(cfg, dep, operator=operator, approvals=approvals, forced=decision.forced,
                            reason=reason, emit=journal.append, router=router)
    if outcome.promoted is not None:
        def note(level: str, message: str, data: dict[str, Any]) -> None:
            journal.append(ev.Note(level=level, message=message, data=data, deployment_id=dep.deployment_id,
                                   version=dep.version))

        await _notify(cfg, outcome.promoted, note)
    return outcome
