"""``canary-console history [--json]`` and ``replay DEPLOYMENT_ID``: past deployments, from the journal.

``replay`` opens a finished deployment in the read-only console (timeline, gate values over
time, events); without a terminal it prints the event log instead, one line per event.
Textual is imported only when the console opens.

``history``:

One row per deployment, in journal order: id, version, start, end, outcome, who, reason.
Built on ``state.deployments`` (the same fold the live console, ``status`` and ``replay``
use), so it agrees with them by construction.  Router changes made outside any deployment
(``weights`` with nothing deployed: id "manual") are not deployments and are left out.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from console.core import events as ev
from console.core.exits import ExitCode
from console.core.journal import read_records
from console.core.state import INTERRUPTED, deployments

if TYPE_CHECKING:
    from console.core.config import Config

REASON_WIDTH = 70


_VERB = {"promote": "promoted", "rollback": "rolled back"}


def _enders(records: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """deployment id -> (verb, who) for a deployment ended by hand (promote, manual rollback)."""
    out: dict[str, tuple[str, str]] = {}
    for rec in records:
        e = ev.event_from_record(rec)
        if isinstance(e, ev.Promoted) and e.operator:
            out[e.deployment_id] = ("promoted", e.operator.label())
        elif isinstance(e, ev.OperatorAction) and e.action in _VERB and e.accepted and e.operator:
            out[e.deployment_id] = (_VERB[e.action], e.operator.label())
    return out


def history(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows, as plain dicts (the ``--json`` form)."""
    recs = list(records)
    enders = _enders(recs)
    rows = []
    for d in deployments(recs).values():
        if not d.started:  # no deployment_started: manual router changes, not a deployment
            continue
        outcome = INTERRUPTED if d.state == INTERRUPTED else d.outcome
        rows.append({
            "id": d.deployment_id,
            "version": d.version,
            "start": d.started,
            "end": d.ended,
            "outcome": outcome,
            "who": d.driver,
            "ended_by": enders.get(d.deployment_id, ("", ""))[1],  # who promoted or rolled back by hand
            "ended_how": enders.get(d.deployment_id, ("", ""))[0],
            "reason": d.reason,
            "stage": d.stage_label(),
            "weight": d.weight,
            "completed_at": d.completed_at,
            "approvals": list(d.approvals),
            "automatic": d.automatic,
            "dry_run": d.dry_run,
        })
    return rows


def _when(ts: str) -> str:
    """"2026-11-26T08:33:26.123Z" -> "2026-11-26 08:33:26"."""
    return ts[:19].replace("T", " ") if ts else "-"


def format_table(rows: list[dict[str, Any]]) -> str:
    table = [("id", "version", "start (UTC)", "end (UTC)", "outcome", "who", "reason")]
    for r in rows:
        who = r["who"] or "-"
        if r["ended_by"] and r["ended_by"] != r["who"]:
            who += f", {r['ended_how'] or 'ended'} by {r['ended_by']}"
        outcome = r["outcome"] + (" (dry run)" if r["dry_run"] else "")
        if r["outcome"] in ("rolled back", "failed", "interrupted") and r["stage"] != "-":
            outcome += f" at {r['stage']}"
        reason = r["reason"] or "-"
        if len(reason) > REASON_WIDTH:
            reason = reason[: REASON_WIDTH - 3] + "..."
        table.append((r["id"], r["version"], _when(r["start"]), _when(r["end"]), outcome, who, reason))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1] for row in table)


def run(args: argparse.Namespace, cfg: Config, out: Callable[[str], None] | None = None) -> int:
    """``canary-console history [--json]``; never needs the lock."""
    write = out or (lambda s: print(s, file=sys.stdout))
    rows = history(read_records(cfg.journal_path))
    if getattr(args, "json", False):
        write(json.dumps(rows, indent=2))
        return ExitCode.OK
    if not rows:
        write(f"no deployments in {cfg.journal_path}")
        return ExitCode.OK
    write(format_table(rows))
    return ExitCode.OK


def resolve_id(ids: list[str], wanted: str) -> str | None:
    """An exact id, or a prefix / suffix that names exactly one deployment."""
    if wanted in ids:
        return wanted
    hits = [i for i in ids if i.startswith(wanted) or i.endswith(wanted)]
    return hits[0] if len(hits) == 1 else None


def run_replay(args: argparse.Namespace, cfg: Config) -> int:
    """``canary-console replay DEPLOYMENT_ID``."""
    from console.commands.term import err
    from console.core.eventfmt import format_event
    from console.core.state import events_of

    records = list(read_records(cfg.journal_path))
    deps = deployments(records)
    dep = resolve_id(list(deps), args.deployment_id)
    if dep is None:
        latest = ", ".join(list(deps)[-3:]) or "none"
        err(f"replay: no single deployment matches {args.deployment_id!r} in {cfg.journal_path}; "
            f"allowed: an id from `canary-console history` (latest: {latest})")
        return ExitCode.USAGE
    events = events_of(records, dep)
    if not sys.stdout.isatty():
        for e in events:
            print(format_event(e))
        return ExitCode.OK
    from console.remote.links import ReplayLink
    from console.ui.run import run_console

    st = deps[dep]
    run_console(ReplayLink(events), title_version=st.version,
                metrics_note=f"replay of {dep} from {cfg.journal_path} (read-only, {st.outcome})")
    return ExitCode.OK
