"""The ``split`` gate's Checker: tails nginx's canary access log and judges the split it served.

``SplitChecker`` follows ``[nginx] access_log`` with ``console.adapters.logtail.FileTail``
(64 KB reads, survives rotation and truncation) and hands the lines to
``console.core.split.SplitCounter``.  Memory is bounded: one poll holds at most
``max_lines_per_poll`` lines, one check reads for at most ``READ_BUDGET`` seconds (the rest
stays in the file for the next check), and the counter keeps a fixed window per generation for
the last few generations.

The generation judged is the one the router last applied: ``CheckContext.generation`` when the
engine passes it, otherwise the ``$canary_generation`` of the managed upstream file (the router
writes it on every confirmed change and restores the old file when a change fails).  The
addresses nginx logs are matched as written in ``[nginx] production`` / ``canary`` and as they
resolve (``$upstream_addr`` shows ``172.18.0.5:8000`` for ``app-canary:8000``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from console.adapters.logtail import FileTail
from console.adapters.nginx.render import generation_of
from console.core.events import INCONCLUSIVE, GateResult
from console.core.protocols import CheckContext
from console.core.split import GATE, SplitCounter, SplitPolicy, judge_split, split_error

READ_BUDGET = 1.0  # seconds of reading per check at most; the file keeps the rest
INITIAL_LINES = 5000  # read back on first open: lines of this generation written before the first poll
INLINE_BYTES = 64 * 1024  # at most this much new log (a few hundred lines) is read on the loop; more in a thread


def is_literal(address: str) -> bool:
    """An address nginx logs as written: ``unix:/path`` or an IP literal with its port (no DNS)."""
    if address.startswith("unix:"):
        return True
    host = address.rpartition(":")[0].strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def addresses_of(address: str) -> set[str]:
    """``address`` as written, plus ``ip:port`` for every address its host resolves to."""
    out = {address}
    if address.startswith("unix:"):
        return out
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return out
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return out
    for family, _, _, _, sockaddr in infos:
        ip = str(sockaddr[0])
        out.add(f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}")
    return out


class SplitChecker:
    """A Checker (console.core.protocols) returning one ``split`` GateResult per check."""

    name = GATE

    def __init__(
        self,
        access_log: str | Path,
        production: str,
        canary: str,
        policy: SplitPolicy | None = None,
        *,
        upstream_file: str | Path | None = None,
        resolve: Callable[[str], set[str]] = addresses_of,
        tail: FileTail | None = None,
    ) -> None:
        self.path = Path(access_log)
        self.production, self.canary = production, canary
        self.policy = policy or SplitPolicy()
        self.upstream_file = Path(upstream_file) if upstream_file is not None else None
        self._resolve = resolve
        self.tail = tail or FileTail(self.path, initial_lines=INITIAL_LINES)
        self.counter = SplitCounter({production}, {canary}, window=self.policy.window)
        self._lock = threading.Lock()  # a check that timed out may still be reading in its thread
        self._problem = ""  # why the log cannot be read now ("" = it can)
        self._told = False
        self._dns = not (is_literal(production) and is_literal(canary))  # names: resolved on every read

    @classmethod
    def from_config(cls, cfg: Any) -> SplitChecker:
        policy = SplitPolicy.from_cfg(cfg)
        sticky = cfg["routing"]["sticky_key"]
        if sticky:
            policy = SplitPolicy(policy.tolerance, policy.min_requests, policy.window,
                                 advisory=f"[routing] sticky_key = {sticky!r} splits users, not requests")
        n = cfg["nginx"]
        return cls(cfg.resolve(n["access_log"]), n["production"], n["canary"], policy, upstream_file=cfg.upstream_file)

    # ------------------------------------------------------------------ reading (on the loop or in a thread)
    def read(self, budget: float = READ_BUDGET) -> int:
        """Feed the counter every new line (for at most ``budget`` seconds); the lines read."""
        with self._lock:
            if self._dns:
                self.counter.set_addresses(self._resolve(self.production), self._resolve(self.canary))
            deadline, total = time.monotonic() + budget, 0
            while True:
                lines, events = self.tail.poll()
                for e in events:
                    if e.kind in ("missing", "error"):
                        self._problem = f"access log {e.detail}"
                    elif e.kind == "opened":
                        self._problem = ""
                self.counter.feed(lines)
                total += len(lines)
                if len(lines) < self.tail.max_lines_per_poll or time.monotonic() > deadline:
                    return total

    def file_generation(self) -> str:
        """The generation the managed upstream file maps ``$canary_generation`` to ("" = none)."""
        if self.upstream_file is None:
            return ""
        try:
            return generation_of(self.upstream_file.read_text(errors="replace")) or ""
        except OSError:
            return ""

    async def _read(self) -> None:
        """A few new lines are read on the loop (a thread hop costs more); a backlog, a first
        open, a name to resolve, or a read still running from a check that timed out, in a
        worker thread."""
        try:
            backlog = os.stat(self.path).st_size - self.tail.offset
        except OSError:
            backlog = 0
        if self._dns or backlog > INLINE_BYTES or self._lock.locked():
            await asyncio.to_thread(self.read)
        else:
            self.read()

    # ------------------------------------------------------------------ the Checker
    async def begin_stage(self, ctx: CheckContext) -> Sequence[dict[str, Any]]:
        """Before the traffic moves: read up to the end, so the stage's lines are all new."""
        await self._read()
        if self._problem and not self._told:
            self._told = True
            return [{"level": "warning",
                     "message": f"split gate: {self._problem}; it judges once nginx writes the file"}]
        return []

    async def check(self, ctx: CheckContext) -> Sequence[GateResult]:
        generation = ctx.generation or self.file_generation()  # one small local file, like current_weight()
        await self._read()
        if ctx.shadow:  # the mirror's copies are subrequests: the access log has no served canary share to judge
            return [GateResult(GATE, INCONCLUSIVE, threshold=0.0, window="gen", samples=0, blocking=False,
                               detail="shadow stage: the canary serves no user", extra={"generation": generation})]
        if self._problem:
            return [split_error(self._problem, ctx.weight)]
        if not generation:
            return [split_error(f"no generation in {self.upstream_file}: cannot tell which lines are this stage's",
                                ctx.weight)]
        return [judge_split(self.counter.tally(generation), generation, ctx.weight, self.policy,
                            self.counter.unattributed)]

    async def aclose(self) -> None:
        with self._lock:
            self.tail.close()
