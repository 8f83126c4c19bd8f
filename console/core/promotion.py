"""The promotion rules (the guide's "Promotion to Production") and the promotion itself.

``evaluate`` decides from the journal alone whether the latest deployment may be promoted now;
``execute`` tags the image, routes 100% to the promoted version, appends CHANGELOG.md and
deployments.log exactly as the guide's promotion step does, and journals it.  The `promote`
command and the engine's promote intent both call these, so the rules are the same from a
terminal and from the console.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from console.core import events as ev
from console.core.exits import ExitCode
from console.core.protocols import DockerUnavailable, ImageTagger, TrafficRouter
from console.core.routing import RouterError, file_weight
from console.core.state import AT_100, PROMOTED, DeploymentState, deployments, last_applied_weight

if TYPE_CHECKING:
    from console.core.config import Config

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
    router: TrafficRouter,
    tagger: ImageTagger | None = None,
) -> Outcome:
    """Tag (when ``tagger`` is given: ``[docker] enabled``), route, append, journal.  ``emit``
    journals one event (the CLI: Journal.append; the engine: its own publish, so a console sees
    the events live).  The caller holds the lock and closes the tagger."""
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
    if tagger is not None:
        src = f"{cfg['docker']['image']}:{dep.version}"
        try:
            # the seed: docker tag app:${CANARY_VERSION} app:${VERSION} (VERSION=CANARY_VERSION) and app:latest
            tagged = tuple(await asyncio.to_thread(tagger.tag_image, src, [src, f"{cfg['docker']['image']}:latest"]))
            note("info", f"tagged {src} as {', '.join(tagged)}", {"tags": list(tagged)})
        except DockerUnavailable as e:
            if tagger.required:
                note("error", f"promotion stopped, nothing routed: {e}")
                return Outcome(ExitCode.PRECONDITION, f"[docker] required = true and Docker failed: {e}; nothing was routed")
            note("warning", f"image not tagged: {e}")

    gen = f"{dep.deployment_id}:promote-{os.urandom(3).hex()}"
    emit(ev.RouterIntent(weight=100, previous_weight=router.current_weight(), generation=gen,
                         reason="promote: production routing, 100% to the promoted version", **common))
    try:
        took = await router.apply(100, gen)
    except RouterError as e:
        emit(ev.RouterFailed(weight=100, generation=gen, error=f"{e}: {e.detail}".rstrip(": "),
                             restored_weight=e.restored_weight, file_weight=file_weight(router),
                             outcome="unconfirmed" if e.reloaded else "restored", **common))
        return Outcome(ExitCode.ROUTER, f"the production routing could not be applied: {e}; not promoted", tagged)
    emit(ev.RouterApplied(weight=100, generation=gen, duration_ms=round(took * 1000, 2), **common))

    now = time.time()
    append_lines(cfg.resolve(cfg["paths"]["changelog"]), changelog_lines(dep.version, now))
    append_lines(cfg.resolve(cfg["paths"]["deployments_log"]), [deployments_log_line(dep.version, now)])
    promoted = ev.Promoted(operator=operator, approvals=approvals, forced=forced, reason=reason, **common)
    emit(promoted)
    msg = (f"promoted {dep.version} ({dep.deployment_id}) to production: nginx serves 100% {dep.version} "
           f"(verified in {took * 1000:.0f} ms)")
    return Outcome(ExitCode.OK, msg, tagged, promoted)
