"""`canary-console replay DEPLOYMENT_ID`: a finished deployment, read back from the journal,
in the read-only console (timeline, gate values over time, events).  Without a terminal it
prints the event log instead, one line per event.

Textual is imported only when the console opens (console/ must import without it)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

from console.core.eventfmt import format_event
from console.core.journal import read_records
from console.core.state import deployments, events_of


class JournalReplayLink:
    """A finished deployment, read-only (console.remote.links.ReplayLink without importing the engine:
    replay starts faster)."""

    role = "replay"

    def __init__(self, events: list[Any]) -> None:
        self._events = list(events)

    def history(self) -> list[Any]:
        return list(self._events)

    async def events(self) -> AsyncIterator[Any]:
        await asyncio.Event().wait()  # nothing new ever happens
        yield  # pragma: no cover

    async def submit(self, intent: Any) -> None:
        raise PermissionError("replay is read-only")

    async def close(self) -> None:
        return None


def resolve_id(ids: list[str], wanted: str) -> str | None:
    """An exact id, or a prefix / suffix that names exactly one deployment."""
    if wanted in ids:
        return wanted
    hits = [i for i in ids if i.startswith(wanted) or i.endswith(wanted)]
    return hits[0] if len(hits) == 1 else None


def run(args: argparse.Namespace, cfg: Any) -> int:
    records = list(read_records(cfg.journal_path))
    deps = deployments(records)
    dep = resolve_id(list(deps), args.deployment_id)
    if dep is None:
        latest = ", ".join(list(deps)[-3:]) or "none"
        print(f"canary-console: replay: no single deployment matches {args.deployment_id!r} in {cfg.journal_path}; "
              f"allowed: an id from `canary-console history` (latest: {latest})", file=sys.stderr)
        return 2
    events = events_of(records, dep)
    if not sys.stdout.isatty():
        for e in events:
            print(format_event(e))
        return 0
    from console.ui.app import run_console

    st = deps[dep]
    run_console(JournalReplayLink(events), title_version=st.version,
                metrics_note=f"replay of {dep} from {cfg.journal_path} (read-only, {st.outcome})")
    return 0
