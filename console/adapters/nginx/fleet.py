"""A fleet of nginx hosts moved as one (``[[nginx.hosts]]``): one TrafficRouter over several NginxRouters.

A change is two-phase, so the canary is never at 25% on one edge and 1% on another:

1. **write and test** (``NginxRouter.stage``) on every host at once.  If any host's ``nginx -t``
   refuses (or its test cannot run), every file is put back byte for byte and no host is reloaded.
2. **reload and confirm** (``NginxRouter.reload`` / ``confirm``) on every host at once.  If any
   host's reload fails or it does not serve the new generation within its ``verify_timeout``:

   * a change that raises the canary's share on some host is undone on *every* host: the
     previous file, reloaded and confirmed (``put_back``), then RouterError, so the engine's
     fail-safe rolls back.  ``reloaded`` is set only when some host did not confirm its
     previous file either (nobody knows what it serves);
   * a change toward production (a rollback, a step back, the same weight) is never undone, as
     with one nginx (``RouterNotVerified``): the hosts that confirmed keep it, RouterError with
     ``reloaded`` says which host did not.

Every host's outcome of the last change is ``last_hosts()`` (the engine journals it as
``hosts`` on router_applied / router_failed): ``name``, ``weight`` and ``generation`` (what its
file holds afterwards) and ``outcome``, one of ``HOST_OUTCOMES``.

Light stdlib only, like the router: this is on the CLI's rollback path.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from console.adapters.nginx.render import check_generation, check_weight
from console.adapters.nginx.router import NginxRouter, PreflightFailed, Staged
from console.core.routing import RouterError

if TYPE_CHECKING:
    from console.core.config import Config

__all__ = ["HOST_OUTCOMES", "FleetRouter", "HostState"]

CONFIRMED = "confirmed"  # serves the change's generation
REFUSED = "refused"  # nginx -t refused the change (or could not run): the file is back, not reloaded
NOT_RELOADED = "not reloaded"  # another host refused: the file is back, not reloaded
RELOAD_FAILED = "reload failed"  # the reload command failed: the file is back
UNCONFIRMED = "unconfirmed"  # reloaded, not confirmed in time: the file holds the change
RESTORED = "restored"  # put back to the previous file, reloaded, and nginx confirmed it
RESTORE_UNCONFIRMED = "restore unconfirmed"  # put back and reloaded, but nginx did not confirm the previous file
KEPT = "kept"  # confirmed a change toward production that another host did not: not undone
HOST_OUTCOMES = (CONFIRMED, REFUSED, NOT_RELOADED, RELOAD_FAILED, UNCONFIRMED, RESTORED, RESTORE_UNCONFIRMED, KEPT)


@dataclass(frozen=True)
class HostState:
    """One host as its upstream file says now: for ``status`` and resume."""

    name: str
    weight: float | None  # None: no file, or not one canary-console can read
    generation: str | None


class FleetRouter:
    """``console.core.protocols.TrafficRouter`` over several nginx hosts (``[[nginx.hosts]]``)."""

    def __init__(self, hosts: Sequence[tuple[str, NginxRouter]]) -> None:
        if not hosts:
            raise ValueError("a fleet needs at least one host")
        names = [n for n, _ in hosts]
        if len(set(names)) != len(names):
            raise ValueError(f"host names must be unique: {names}")
        self.hosts: tuple[tuple[str, NginxRouter], ...] = tuple(hosts)
        self._lock = asyncio.Lock()
        self._last: tuple[dict[str, Any], ...] = ()
        # per host: the seconds at each step of the last change (NginxRouter.last_timings' keys), and "total"
        self.last_timings: dict[str, Any] = {}

    @classmethod
    def from_config(cls, cfg: Config) -> FleetRouter:
        return cls([(h["name"], NginxRouter.from_config(cfg, h)) for h in cfg.nginx_hosts])

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.hosts)

    # ---- reading

    def host_states(self) -> list[HostState]:
        """Each host's weight and generation, as its upstream file says now."""
        out = []
        for name, r in self.hosts:
            try:
                gen = r.current_generation()
            except OSError:
                gen = None
            out.append(HostState(name, r.current_weight(), gen))
        return out

    def current_weight(self) -> float | None:
        """The canary % every host's file routes; None when a host has none or they disagree."""
        weights = {h.weight for h in self.host_states()}
        return weights.pop() if len(weights) == 1 else None

    def last_hosts(self) -> tuple[dict[str, Any], ...]:
        """Each host's outcome of the last change: {name, weight, generation, outcome}."""
        return self._last

    async def served_generation(self, timeout: float = 2.0) -> tuple[str | None, str]:
        """The generation every host answers, or (None, what each host answers)."""
        answers = await asyncio.gather(*(r.served_generation(timeout) for _, r in self.hosts))
        gens = {g for g, _ in answers}
        if len(gens) == 1 and None not in gens:
            return gens.pop(), ""
        return None, "; ".join(f"{name}: {g or why}" for (name, _), (g, why) in zip(self.hosts, answers, strict=True))

    # ---- changing

    async def apply(self, weight: float, generation: str, shadow: bool = False) -> float:
        """Both phases on every host (see the module docstring); the seconds it took.  ``shadow``:
        the shadow stage, on every host (a change of the mirror alone is a change like any other)."""
        check_weight(weight)
        check_generation(generation)
        t0 = time.perf_counter()
        timings: dict[str, Any] = {name: {} for name in self.names}
        self.last_timings = timings
        async with self._lock:
            outcome: dict[str, str] = {}
            try:
                staged = await self._stage_all(weight, generation, timings, outcome, shadow)
                await self._reload_and_confirm(weight, generation, staged, timings, outcome)
            finally:
                self._record(outcome)
        timings["total"] = time.perf_counter() - t0
        return timings["total"]

    async def _stage_all(self, weight: float, generation: str, timings: dict[str, Any],
                         outcome: dict[str, str], shadow: bool = False) -> dict[str, Staged]:
        """Phase 1 on every host; on any refusal every written file goes back and nothing reloads."""
        staged: dict[str, Staged] = {}

        async def one(name: str, r: NginxRouter) -> None:
            staged[name] = await r.stage(weight, generation, timings[name], shadow=shadow)

        try:
            failed = await self._each(one)
        except BaseException:  # cancelled, or a bug: put back what was written, reload nothing
            for name, r in self.hosts:
                if name in staged:
                    await r.put_back(staged[name], reload=False)
            raise
        if not failed:
            return staged
        for name, r in self.hosts:
            if name in staged:
                await r.put_back(staged[name], reload=False)
                outcome[name] = NOT_RELOADED
            else:
                outcome[name] = REFUSED
        name, e = next(iter(failed.items()))
        raise _error(f"host {name}: {e}; every host's upstream file is as it was and no host was reloaded",
                     failed, restored_weight=self.current_weight())

    async def _reload_and_confirm(self, weight: float, generation: str, staged: dict[str, Staged],
                                  timings: dict[str, Any], outcome: dict[str, str]) -> None:
        """Phase 2: reload every host at once, and confirm each as soon as it reloaded."""

        async def one(name: str, r: NginxRouter) -> None:
            try:
                await r.reload(staged[name], timings[name])
            except RouterError:
                outcome[name] = RELOAD_FAILED  # its file is back; it still serves the previous one
                raise
            try:
                await r.confirm(generation, timings[name])
            except RouterError:
                outcome[name] = UNCONFIRMED
                raise
            outcome[name] = CONFIRMED

        failed = await self._each(one)
        if not failed:
            return
        name, e = next(iter(failed.items()))
        what = f"host {name} {'reload failed' if outcome[name] == RELOAD_FAILED else 'did not confirm'} for canary {weight}%: {e}"
        if not any(s.old_weight is None or weight > s.old_weight for s in staged.values()):
            # toward production (or the same weight): never undone; the hosts that confirmed keep it
            for n in self.names:
                if outcome[n] == CONFIRMED:
                    outcome[n] = KEPT
            raise _error(f"{what}; the hosts that confirmed it keep it (a change toward production is not undone)",
                         failed, reloaded=True)
        unconfirmed = await self._put_back_all(staged, outcome)
        if unconfirmed:
            raise _error(f"{what}; every host was put back to its previous upstream file, but {', '.join(unconfirmed)} "
                         "did not confirm that either: what it serves is unknown", failed, reloaded=True)
        raise _error(f"{what}; every host was put back to its previous upstream file and nginx confirmed it",
                     failed, restored_weight=self.current_weight())

    async def _put_back_all(self, staged: dict[str, Staged], outcome: dict[str, str]) -> list[str]:
        """Every host back to its previous file, reloaded (unless its reload failed: it still
        serves that file) and confirmed by that file's generation; the hosts that did not confirm."""

        async def one(name: str, r: NginxRouter) -> None:
            if outcome.get(name) == RELOAD_FAILED:
                return  # its file is already back and nginx never loaded the change
            s = staged[name]
            outcome[name] = RESTORE_UNCONFIRMED
            await r.put_back(s, reload=True)
            if s.old_generation is not None:
                await r.confirm(s.old_generation)
                outcome[name] = RESTORED

        await self._each(one)
        return [n for n in self.names if outcome.get(n) == RESTORE_UNCONFIRMED]

    async def preflight(self, generation: str | None = None) -> float:
        """Every host's preflight at once (``NginxRouter.preflight``), under one generation.  On a
        failure the hosts that passed are put back as they were and reloaded, so every file is byte
        for byte what it was.  Refuses, changing nothing, while the hosts' files disagree."""
        t0 = time.perf_counter()
        async with self._lock:
            states = self.host_states()
            if len({h.weight for h in states}) != 1:
                says = ", ".join(f"{h.name} {'no file' if h.weight is None else f'{h.weight}%'}" for h in states)
                raise PreflightFailed(
                    f"preflight: the hosts' upstream files disagree ({says}), so there is no one weight to rewrite; "
                    "fix: `canary-console weights N` sets every host, then run the preflight again"
                )
            generation = generation or f"preflight-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.urandom(3).hex()}"
            before = {name: r.snapshot() for name, r in self.hosts}

            async def one(name: str, r: NginxRouter) -> None:
                await r.preflight(generation)

            failed = await self._each(one)
            if failed:
                for name, r in self.hosts:  # the failed ones put themselves back
                    if name not in failed:
                        await r.put_back(before[name], reload=True)
                name, e = next(iter(failed.items()))
                raise PreflightFailed(
                    f"preflight: host {name}: {str(e).removeprefix('preflight: ')}; every host's upstream file is as it was",
                    detail=_details(failed),
                    restored_weight=states[0].weight,
                    answer=getattr(e, "answer", ""),
                ) from None
        return time.perf_counter() - t0

    # ---- helpers

    async def _each(self, fn: Callable[[str, NginxRouter], Awaitable[None]]) -> dict[str, BaseException]:
        """``fn`` on every host at once; the hosts that failed, with their error.  Anything but a
        router failure (a bug, a cancellation) is raised once every host has finished."""
        results = await asyncio.gather(*(fn(name, r) for name, r in self.hosts), return_exceptions=True)
        for res in results:
            if isinstance(res, BaseException) and not isinstance(res, RouterError | ValueError | OSError):
                raise res
        return {name: res for (name, _), res in zip(self.hosts, results, strict=True) if isinstance(res, BaseException)}

    def _record(self, outcome: dict[str, str]) -> None:
        self._last = tuple(
            {"name": h.name, "weight": h.weight, "generation": h.generation, "outcome": outcome.get(h.name, "")}
            for h in self.host_states()
        )


def _error(message: str, failed: dict[str, BaseException], *, reloaded: bool = False,
           restored_weight: float | None = None) -> RouterError:
    err = RouterError(message, detail=_details(failed), restored_weight=restored_weight)
    err.reloaded = reloaded  # some host may serve what nobody confirmed
    return err


def _details(failed: dict[str, BaseException]) -> str:
    return "\n".join(f"{name}: {getattr(e, 'detail', '') or e}" for name, e in failed.items())
