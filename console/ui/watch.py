"""`canary-console watch`: a read-only console for a second on-call engineer.

It follows the journal (the driver's engine writes every event there, fsynced, before acting
on it), so the watcher sees the same timeline, gate values and decisions as the driver, while
someone else holds the lock.  Nothing here can move traffic: the link's role is "watcher",
``submit`` refuses, and the console hides the traffic keys (``check_action``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from console.core import events as ev
from console.core.journal import read_records, tail_records
from console.core.state import deployments, events_of


class JournalFollowLink:
    """Events of one deployment, from the journal, as they are appended."""

    role = "watcher"

    def __init__(self, path: str | Path, deployment_id: str | None = None, poll: float = 0.5) -> None:
        self.path = Path(path)
        self.poll = poll
        records = list(read_records(self.path))
        deps = deployments(records)
        if deployment_id is None:
            live = [d for d in deps.values() if d.live]
            chosen = (live or list(deps.values()) or [None])[-1]
            deployment_id = chosen.deployment_id if chosen else None
        self.deployment_id = deployment_id
        self._history = events_of(records, deployment_id) if deployment_id else []
        self._offset = self.path.stat().st_size if self.path.exists() else 0
        self._closed = asyncio.Event()
        self._others: set[str] = set()

    def history(self) -> list[ev.Event]:
        return list(self._history)

    async def events(self) -> AsyncIterator[ev.Event]:
        while not self._closed.is_set():
            records, self._offset = await asyncio.to_thread(tail_records, self.path, self._offset)
            for rec in records:
                e = ev.event_from_record(rec)
                if e is None:
                    continue
                if self.deployment_id is None and isinstance(e, ev.DeploymentStarted):
                    self.deployment_id = e.deployment_id
                if e.deployment_id == self.deployment_id:
                    yield e
                elif isinstance(e, ev.DeploymentStarted) and e.deployment_id not in self._others:
                    self._others.add(e.deployment_id)
                    yield ev.Note(level="warning", deployment_id=self.deployment_id or "", ts=e.ts,
                                  message=f"another deployment started: {e.deployment_id}; run watch again to follow it")
            try:
                await asyncio.wait_for(self._closed.wait(), self.poll)
            except TimeoutError:
                pass

    async def submit(self, intent: Any) -> None:
        raise PermissionError("watch is read-only: the driver holds the lock "
                              "(take over with `canary-console attach --take-over`)")

    async def close(self) -> None:
        self._closed.set()


def run(args: argparse.Namespace, cfg: Any) -> int:
    from console.core.lock import describe_holder, is_held, lock_path_for, read_holder

    link = JournalFollowLink(cfg.journal_path)
    lp = lock_path_for(cfg.journal_path)
    driver = describe_holder(read_holder(lp)) if is_held(lp) else "nobody holds the lock"
    if not sys.stdout.isatty():
        print(f"canary-console: watch needs a terminal; for a one-off view use `canary-console status` ({driver})",
              file=sys.stderr)
        return 2
    from console.ui.app import run_console
    from console.ui.sources import specs_from_config

    note = f"watching {cfg.journal_path} (read-only); driver: {driver}"
    run_console(link, log_sources=specs_from_config(cfg), metrics_note=note,
                log_max_lines=int(cfg["console"]["log_max_lines"]))
    return 0
