"""The rollout engine: an async state machine fed by ticks, check results and operator intents.

It owns no UI.  Every step is an event (console.core.events), journaled before anyone sees it;
side effects go through the router, health and checker adapters.  Time comes from a Clock,
so tests run a 15-minute stage in milliseconds with a FakeClock.

Exit codes returned by ``run``: 0 canary at 100% (or promoted), 3 rolled back,
4 precondition failed, 6 the router could not apply a change, 130 interrupted.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from console.core import events as ev
from console.core.clock import Clock, RealClock
from console.core.events import ERROR, FAIL, PASS, SHADOW_INDEX, GateResult, Intent, Operator
from console.core.exits import ExitCode
from console.core.journal import Journal
from console.core.protocols import CheckContext, Checker, HealthProbe, HealthResult, TrafficRouter, Warmer, WarmupResult
from console.core.routing import RouterError, file_weight, router_hosts
from console.core.state import DeploymentState, apply

ROLLBACK_ATTEMPTS = 3
WARMUP_PROGRESS_S = 5.0  # a warm-up progress note at least this often (and every tenth of it)
_T = TypeVar("_T")


@dataclass
class Settings:
    stages: list[int]
    observation_period: float
    check_interval: float
    consecutive_failures: int = 3
    on_inconclusive: str = "hold"
    on_metrics_unavailable: str = "hold"
    unavailable_after: int = 3
    min_stage_time: float = 0.0
    check_timeout: float = 0.0  # 0: max(5 s, 2 x check_interval)
    canary_health_url: str = ""
    health_timeout: float = 5.0
    dry_run: bool = False
    stay_at_100: bool = False  # keep checking at 100% until promote / rollback / stop
    shadow_period: float = 0.0  # a shadow stage before stage 1 (nginx mirrors every request to the canary); 0 = none
    warmup_requests: int = 0  # sent straight to the canary before stage 1, kept out of the gates' samples; 0 = none

    @classmethod
    def from_config(cls, cfg: Any, **over: Any) -> Settings:
        r, g = cfg["rollout"], cfg["gates"]
        s = cls(
            stages=list(r["stages"]),
            observation_period=r["observation_period"],
            check_interval=r["check_interval"],
            consecutive_failures=g["consecutive_failures"],
            on_inconclusive=g["on_inconclusive"],
            on_metrics_unavailable=g["on_metrics_unavailable"],
            unavailable_after=g["unavailable_after"],
            min_stage_time=r["min_stage_time"],
            shadow_period=r.get("shadow_period", 0.0),
            warmup_requests=r.get("warmup_requests", 0),
            canary_health_url=cfg["health"]["canary_url"],
            health_timeout=cfg["health"]["timeout"],
        )
        for k, v in over.items():
            if v is not None:
                setattr(s, k, v)
        return s


class _Rollback(Exception):
    def __init__(self, reason: str, automatic: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.automatic = automatic


class _Interrupted(Exception):
    def __init__(self, signal: str) -> None:
        super().__init__(signal)
        self.signal = signal


class _Stop(Exception):
    pass


@dataclass
class _Stage:
    """Book-keeping for the observation of one stage."""

    index: int
    weight: float
    period: float
    limit: float
    started: float  # clock time the weight was applied
    elapsed: float = 0.0
    paused: bool = False
    hold: str = ""  # why we wait for the operator ("" = not holding)
    hold_kind: str = ""  # "unavailable" | "inconclusive"
    extended: bool = False
    breaches: dict[str, int] = field(default_factory=dict)
    unavailable: int = 0
    last: tuple[GateResult, ...] = ()
    checks: int = 0


def new_deployment_id(version: str, clock: Clock) -> str:
    return f"{version}-{clock.utcnow().strftime('%Y%m%dT%H%M%SZ')}-{os.urandom(2).hex()}"


def resume_command(version: str) -> str:
    return f"canary-console deploy --version {version} --resume"


class Engine:
    def __init__(
        self,
        settings: Settings,
        *,
        version: str,
        router: TrafficRouter,
        journal: Journal,
        clock: Clock | None = None,
        checkers: Sequence[Checker] = (),
        health: HealthProbe | None = None,
        operator: Operator | None = None,
        deployment_id: str | None = None,
        start_index: int = 0,
        resumed: bool = False,
        listeners: Sequence[Callable[[ev.Event], object]] = (),
        on_promote: Callable[[Intent], Awaitable[ev.Event | None]] | None = None,
        startup_notes: Sequence[tuple[str, str]] = (),
        services: Sequence[Any] = (),
        warmer: Warmer | None = None,
    ) -> None:
        if not 0 <= start_index < len(settings.stages):
            raise ValueError(f"start_index {start_index} is not a stage index")
        self.s = settings
        self.version = version
        self.router = router
        self.journal = journal
        self.clock = clock or RealClock()
        self.checkers = list(checkers)
        self.health = health
        self.warmer = warmer
        self.operator = operator or Operator.current()
        self.deployment_id = deployment_id or new_deployment_id(version, self.clock)
        self.start_index = start_index
        self.resumed = resumed
        self.on_promote = on_promote
        self.startup_notes = list(startup_notes)
        self.services = list(services)  # started when run() starts, closed when it ends (notifier)
        self.state = DeploymentState()
        self._listeners: list[Callable[[ev.Event], object]] = list(listeners)
        self._queues: list[ev.EventQueue] = []
        self._intents: list[Intent | tuple[str, str]] = []
        self._wake = asyncio.Event()
        self._last_by_gate: dict[str, GateResult] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._weight: float | None = None
        self._generations: dict[str, float] = {}  # every generation this engine wrote -> its canary weight
        self._generation = ""  # the one nginx last confirmed (the split gate counts only its requests)
        self._samples_since = 0.0  # clock.monotonic() after the warm-up: no sample from before it counts
        self.exit_code: int | None = None

    # ------------------------------------------------------------------ plumbing
    def subscribe(self, maxsize: int = ev.SUBSCRIBER_MAX) -> ev.EventQueue:
        """A bounded queue of every event from now on (a lagging consumer loses old checks, told how many)."""
        q = ev.EventQueue(maxsize)
        self._queues.append(q)
        return q

    def unsubscribe(self, q: ev.EventQueue) -> None:
        if q in self._queues:
            self._queues.remove(q)

    def add_listener(self, fn: Callable[[ev.Event], object]) -> None:
        self._listeners.append(fn)

    def emit(self, cls: type[ev.Event], **kw: Any) -> ev.Event:
        """Stamp, journal, fold and deliver a new event of this deployment."""
        return self.publish(cls(
            ts=self.clock.utcnow().isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            deployment_id=self.deployment_id,
            version=self.version,
            dry_run=self.s.dry_run,
            **kw,
        ))

    def publish(self, e: ev.Event) -> ev.Event:
        """Journal a ready-made event, fold it, and hand it to every consumer."""
        self.journal.append(e)  # durable before anyone acts on it
        self.state = apply(self.state, e)
        for q in list(self._queues):
            q.put_nowait(e)  # bounded: a slow consumer loses old checks, never the engine
        for fn in self._listeners:
            try:
                r = fn(e)
                if asyncio.iscoroutine(r):
                    t = asyncio.ensure_future(r)
                    self._tasks.add(t)
                    t.add_done_callback(self._tasks.discard)
            except Exception as exc:  # a listener never breaks the rollout
                self.note("warning", f"listener failed: {type(exc).__name__}: {exc}")
        return e

    def note(self, level: str, message: str, **data: Any) -> None:
        self.emit(ev.Note, level=level, message=message, data=data)

    async def aclose(self) -> None:
        """Close the adapters the engine was given (HTTP clients, metric sources), best effort."""
        for obj in [self.health, self.warmer, *self.checkers]:
            closer = getattr(obj, "aclose", None)  # optional in the Checker Protocol
            if closer is not None:
                try:
                    await closer()
                except Exception:  # closing is best effort
                    pass

    def submit(self, intent: Intent) -> None:
        """Queue an operator intent (from the console, the socket, a test)."""
        self._intents.append(intent)
        self._wake.set()

    def interrupt(self, signal: str = "SIGINT") -> None:
        """Stop at the next safe point; the traffic stays where it is."""
        self._intents.append(("interrupt", signal))
        self._wake.set()

    def stop(self) -> None:
        """End monitoring at 100% (stay_at_100) without changing anything."""
        self._intents.append(("stop", ""))
        self._wake.set()

    # ------------------------------------------------------------------ run
    async def run(self) -> int:
        for svc in self.services:
            svc.start()
        try:
            return await self._run_outer()
        finally:
            for svc in self.services:
                try:
                    await svc.aclose(5.0)
                except Exception as exc:  # closing a service never changes the outcome
                    self.note("warning", f"{type(svc).__name__} did not close cleanly: {exc}")

    async def _run_outer(self) -> int:
        s = self.s
        self.emit(
            ev.DeploymentStarted,
            stages=tuple(s.stages),
            start_stage=s.stages[self.start_index],
            observation_period=s.observation_period,
            check_interval=s.check_interval,
            operator=self.operator,
            resumed=self.resumed,
            engine_pid=os.getpid(),
            engine_host=socket.gethostname(),
            shadow_period=s.shadow_period,
        )
        for level, message in self.startup_notes:
            self.note(level, message)
        try:
            code = await self._run()
        except _Rollback as rb:
            code = await self._rollback(rb.reason, rb.automatic)
        except _Interrupted as it:
            idx = max(self.state.index, 0)
            w = self._weight if self._weight is not None else (self.state.weight or 0)
            self.emit(ev.Interrupted, index=idx, weight=w, signal=it.signal, resume_command=resume_command(self.version))
            code = ExitCode.INTERRUPTED
        except RouterError as e:
            self.emit(ev.Failed, reason=f"router: {e}", index=max(self.state.index, 0), weight=self._weight or 0)
            code = ExitCode.ROUTER
        self.exit_code = code
        await self._drain_tasks()
        return code

    async def _drain_tasks(self, timeout: float = 5.0) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    async def _run(self) -> int:
        s = self.s
        if not await self._precheck() or not await self._warm_up():
            return ExitCode.PRECONDITION
        idx = self.start_index
        if self._shadow_first():
            await self._shadow_stage()
        while True:
            await self._begin_stage(idx)  # before the traffic moves: latency edges, the stage's MDE
            self._take_urgent()  # a rollback or interrupt queued meanwhile wins over raising the traffic
            try:
                await self._set_weight(s.stages[idx], f"stage {idx + 1}/{len(s.stages)}")
            except RouterError as e:
                # fail safe: a stage nginx did not confirm may still be served; canary 0% first, then why
                what = "was not confirmed" if e.reloaded else "failed"
                raise _Rollback(f"router: the change to canary {s.stages[idx]}% {what}: {e}", automatic=True) from None
            self.emit(
                ev.StageStarted, index=idx, weight=s.stages[idx], total=len(s.stages),
                observation_period=s.observation_period, min_period=s.min_stage_time,
            )
            if idx == len(s.stages) - 1:
                self.emit(ev.Completed, index=idx)
                if not s.stay_at_100:
                    return ExitCode.OK
                return await self._monitor_at_100(idx)
            step = await self._observe(idx)
            if step == "next":
                idx += 1
            else:  # "back"
                idx -= 1

    async def _warm_up(self) -> bool:
        """``warmup_requests`` straight to the canary, after the prechecks and before any traffic
        moves; progress and the outcome in notes.  Afterwards every window starts after it
        (``samples_since``).  Most of them failing stops the deployment (exit 4, nothing changed).
        Skipped where the shadow stage is: a resumed deployment that serves users from the canary."""
        n = self.s.warmup_requests
        if n <= 0 or self.warmer is None or self.start_index != 0 or (self.resumed and file_weight(self.router)):
            return True
        what = self.warmer.describe(n)
        if self.s.dry_run:
            self.note("info", f"dry run: the warm-up would send {what}; nothing was sent",
                      warmup={"requested": n, "sent": 0})
            return True
        self.note("info", f"warm-up: sending {what} before stage 1 (kept out of the gates' samples)",
                  warmup={"requested": n, "sent": 0})
        step, shown = max(1, n // 10), {"sent": 0, "t": self.clock.monotonic()}

        def progress(sent: int, ok: int, failed: int) -> None:
            now = self.clock.monotonic()
            if sent < n and sent - shown["sent"] < step and now - shown["t"] < WARMUP_PROGRESS_S:
                return
            shown["sent"], shown["t"] = sent, now
            self.note("info", f"warm-up: {sent} of {n} sent, {ok} ok, {failed} failed",
                      warmup={"requested": n, "sent": sent, "ok": ok, "failed": failed})

        res: WarmupResult = await self._preemptible(self.warmer.warm(n, progress))
        if not res.passed:
            self.emit(ev.Failed, index=self.start_index, reason=(
                f"warm-up failed: {res.failed} of {res.sent} requests straight to the canary failed "
                f"({res.first_error or 'no answer'}) after {res.seconds:.1f}s; nothing was changed. Next: check that the "
                "canary is up and answers the warm-up request ([rollout] warmup_path, warmup_method, warmup_bodies), "
                "or set [rollout] warmup_requests = 0"))
            return False
        self._samples_since = self.clock.monotonic()
        settled = f"; {res.settled}" if res.settled else ""
        self.note("info", f"warm-up done: {res.ok} of {res.sent} ok, {res.failed} failed, in {res.seconds:.1f}s{settled}; "
                  "the gates and the analysis count only what comes after it", warmup=res.as_data())
        return True

    def _shadow_first(self) -> bool:
        """A shadow stage runs before stage 1 when configured, unless a resumed deployment already
        serves users from the canary (it got past the shadow stage)."""
        if self.s.shadow_period <= 0 or self.start_index != 0:
            return False
        return not self.resumed or not file_weight(self.router)

    async def _shadow_stage(self) -> None:
        """Weight 0 with nginx mirroring every request to the canary (answers discarded), observed
        for ``shadow_period`` with every check; a rollback from here writes 0% without the mirror
        before any user was served by the canary.  Returns when the stage passed."""
        s = self.s
        self._take_urgent()
        try:
            await self._set_weight(0, "shadow stage: mirror every request to the canary", shadow=True)
        except RouterError as e:
            what = "was not confirmed" if e.reloaded else "failed"
            raise _Rollback(f"router: the change to the shadow stage {what}: {e}", automatic=True) from None
        self.emit(ev.StageStarted, index=SHADOW_INDEX, weight=0, total=len(s.stages), observation_period=s.shadow_period,
                  min_period=s.min_stage_time, shadow=True)
        await self._observe(SHADOW_INDEX)  # "next" ("back" is refused at the shadow stage)

    async def _begin_stage(self, idx: int) -> None:
        """Checkers that prepare per stage (the analysis' MDE, the scrape sampler) say so in notes."""
        ctx = CheckContext(deployment_id=self.deployment_id, version=self.version, index=idx, weight=self.s.stages[idx],
                           stage_elapsed=0.0, stage_wall_start=self.clock.monotonic(), min_period=self.s.min_stage_time,
                           samples_since=self._samples_since)
        for c in self.checkers:
            begin = getattr(c, "begin_stage", None)
            if begin is None:
                continue
            try:
                notes = await asyncio.wait_for(begin(ctx), max(5.0, self.s.check_interval))
            except Exception as e:  # preparing is best effort; the checks still judge
                notes = [{"level": "warning", "message": f"{type(c).__name__} could not prepare stage {idx + 1}: {e}"}]
            for n in notes or ():
                self.note(n.get("level", "info"), n.get("message", ""), **(n.get("data") or {}))

    async def _precheck(self) -> bool:
        return await self._health_precheck() and await self._checkers_preflight() and await self._router_preflight()

    async def _checkers_preflight(self) -> bool:
        """Checkers that can tell up front that they could never judge (the optional
        ``Checker.preflight``: a custom gate's query Prometheus rejects) stop the deployment."""
        problems: list[str] = []
        for c in self.checkers:
            preflight = getattr(c, "preflight", None)  # optional in the Checker Protocol, like begin_stage
            if preflight is None:
                continue
            try:
                problems += await asyncio.wait_for(preflight(), max(5.0, 2 * self.s.check_interval))
            except Exception as e:  # a preflight that cannot run is not a finding; the checks judge ERROR
                self.note("warning", f"{getattr(c, 'name', type(c).__name__)} preflight did not run: {type(e).__name__}: {e}")
        if problems:
            self.emit(ev.Failed, reason=f"preflight: {'; '.join(problems)}; nothing was changed", index=self.start_index)
            return False
        return True

    async def _health_precheck(self) -> bool:
        if self.health is None or not self.s.canary_health_url:
            self.note("warning", "no canary health URL configured: pre-start health check skipped")
            return True
        res: HealthResult = await self.health.check(self.s.canary_health_url, self.s.health_timeout)
        if not res.ok:
            self.emit(ev.Failed, reason=f"canary is not healthy before the first stage: {res.detail}", index=self.start_index)
            return False
        self.note("info", f"canary healthy: {res.detail}")
        return True

    async def _router_preflight(self) -> bool:
        """Before anything moves, prove the router sees what nginx serves: the current weights under
        a fresh generation, confirmed (journaled as a change of generation, not of weight).  A
        router that cannot see nginx could never confirm a stage: exit 4, nothing changed."""
        if self.s.dry_run:
            return True
        weight = file_weight(self.router)
        gen = f"{self.deployment_id}:preflight-{os.urandom(3).hex()}"
        self._generations[gen] = weight or 0
        self.emit(ev.RouterIntent, weight=weight or 0, previous_weight=weight, generation=gen,
                  reason="preflight: prove nginx serves the upstream file on disk")
        try:
            took = await asyncio.shield(self.router.preflight(gen))
        except RouterError as e:
            held = file_weight(self.router)
            self.emit(ev.RouterFailed, weight=weight or 0, generation=gen, error=str(e), file_weight=held,
                      outcome="restored")
            msg = str(e) if str(e).startswith("preflight") else f"preflight: {e}"
            self.emit(ev.Failed, reason=f"{msg}; nothing was changed", index=self.start_index)
            return False
        self._weight, self._generation = weight or 0, gen
        self.emit(ev.RouterApplied, weight=weight or 0, generation=gen, duration_ms=round(took * 1000, 2))
        return True

    async def _set_weight(self, weight: float, reason: str, accept_late: bool = False, shadow: bool = False) -> None:
        """Move the traffic and journal it: the intent, then applied or failed (with what the file
        holds and whether nginx confirmed it).  RouterError when nginx did not confirm in time,
        unless ``accept_late`` and a last probe sees the change after all (the rollback's 0%).
        ``shadow``: the shadow stage's mirror on; every other change (a rollback too) turns it off."""
        previous = self._weight if self._weight is not None else self.router.current_weight()
        gen = f"{self.deployment_id}:{os.urandom(3).hex()}"
        self.emit(ev.RouterIntent, weight=weight, previous_weight=previous, generation=gen, reason=reason, shadow=shadow)
        if self.s.dry_run:
            self.emit(ev.RouterApplied, weight=weight, generation=gen, duration_ms=0.0, shadow=shadow)
            self._weight = weight
            return
        self._generations[gen] = weight
        try:
            # only the shadow stage passes ``shadow``: a router without a mirror never sees it
            took = await asyncio.shield(self.router.apply(weight, gen, shadow=True) if shadow else self.router.apply(weight, gen))
        except RouterError as e:
            detail = f"{e}: {e.detail}".strip(": ") if e.detail else str(e)
            outcome = "unconfirmed" if e.reloaded else "restored"
            self.emit(ev.RouterFailed, weight=weight, generation=gen, error=detail, restored_weight=e.restored_weight,
                      file_weight=file_weight(self.router), outcome=outcome, hosts=router_hosts(self.router))
            # nginx may yet serve it: one more look, journaled if it does (a late confirmation)
            if e.reloaded and await self._confirmed_late(gen) and accept_late:
                return
            raise
        self._weight, self._generation = weight, gen
        self.emit(ev.RouterApplied, weight=weight, generation=gen, duration_ms=round(took * 1000, 2), shadow=shadow,
                  hosts=router_hosts(self.router))  # a fleet: each host's outcome

    async def _served(self) -> tuple[str | None, str]:
        """The generation nginx answers now (one probe) and a description of what that means."""
        try:
            gen, answer = await self.router.served_generation()
        except Exception as e:  # the probe is a best effort on the way to a safe state
            return None, f"the probe failed ({type(e).__name__}: {e})"
        if gen is None:
            return None, f"the verify endpoint answers {answer}"
        w = self._generations.get(gen)
        if w is None:
            return gen, f"nginx serves generation {gen}, which this engine did not write"
        return gen, f"nginx serves canary {w}% (generation {gen})"

    async def _confirmed_late(self, gen: str) -> bool:
        """After an unconfirmed change: if nginx answers its generation now, journal that."""
        served, _ = await self._served()
        if served != gen:
            return False
        self._weight, self._generation = self._generations[gen], gen
        self.emit(ev.RouterApplied, weight=self._weight, generation=gen, duration_ms=0.0, late=True)
        return True

    # ------------------------------------------------------------------ observation
    async def _wait(self, seconds: float) -> None:
        """Sleep on the clock, waking early for an intent."""
        if self._intents:
            return
        self._wake.clear()
        sleeper = asyncio.ensure_future(self.clock.sleep(max(0.0, seconds)))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (sleeper, waker):
                if not t.done():
                    t.cancel()

    async def _observe(self, idx: int) -> str:
        s = self.s
        now = self.clock.monotonic()
        weight, period = (0, s.shadow_period) if idx == SHADOW_INDEX else (s.stages[idx], s.observation_period)
        st = _Stage(index=idx, weight=weight, period=period, limit=period, started=now)
        last_tick = now
        next_check = now + s.check_interval
        while True:
            now = self.clock.monotonic()
            if not st.paused and not st.hold:
                st.elapsed += now - last_tick
            last_tick = now
            step = self._handle_intents(st)
            if step:
                return step
            if now >= next_check - 1e-9:
                await self._check(st)
                next_check = max(next_check + s.check_interval, self.clock.monotonic() + s.check_interval * 0.5)
                continue
            if not st.paused and not st.hold and st.elapsed >= st.limit - 1e-9:
                if st.checks == 0:
                    await self._check(st)
                step = self._end_of_observation(st)
                if step:
                    return step
                continue
            wait = next_check - now
            if not st.paused and not st.hold:
                wait = min(wait, st.limit - st.elapsed)
            await self._wait(wait)

    def _handle_intents(self, st: _Stage | None) -> str | Intent | None:
        while self._intents:
            it = self._intents.pop(0)
            if isinstance(it, tuple):
                if it[0] == "interrupt":
                    raise _Interrupted(it[1])
                if it[0] == "stop" and st is None:
                    raise _Stop()
                continue
            step = self._apply_intent(it, st)
            if step:
                return step
        return None

    def _act(self, it: Intent, accepted: bool = True, detail: str = "") -> None:
        self.emit(ev.OperatorAction, action=it.action, operator=it.operator, detail=detail or it.reason, accepted=accepted)

    def _apply_intent(self, it: Intent, st: _Stage | None) -> str | Intent | None:
        a = it.action
        if a == "rollback":
            self._act(it)
            raise _Rollback(it.reason or f"manual rollback by {it.operator.label()}", automatic=False)
        if st is None:  # at 100%
            if a == "promote":
                return it
            self._act(it, False, f"{a} does nothing at 100%: promote or roll back")
            return None
        if a == "advance":
            self._act(it, detail=it.reason or "skip the rest of the observation")
            self.emit(ev.StagePassed, index=st.index, weight=st.weight, reason=f"advanced by {it.operator.label()}")
            return "next"
        if a == "step_back":
            if st.index == SHADOW_INDEX:
                self._act(it, False, "the shadow stage is the first: use rollback to stop mirroring")
                return None
            if st.index == 0:
                self._act(it, False, "already at the first stage: use rollback to go to 0%")
                return None
            self._act(it, detail=f"back to {self.s.stages[st.index - 1]}%")
            return "back"
        if a == "pause":
            if st.paused:
                self._act(it, False, "already paused")
                return None
            self._act(it)
            st.paused = True
            self.emit(ev.Paused, index=st.index, weight=st.weight, remaining=max(0.0, st.limit - st.elapsed))
            return None
        if a == "resume":
            if not st.paused and not st.hold:
                self._act(it, False, "not paused")
                return None
            self._act(it)
            if st.hold and st.hold_kind == "inconclusive":
                st.limit = st.elapsed + st.period  # observe one more period
            st.paused, st.hold, st.hold_kind = False, "", ""
            self.emit(ev.Resumed, index=st.index, weight=st.weight, remaining=max(0.0, st.limit - st.elapsed))
            return None
        if a == "promote":
            self._act(it, False, "promote is only possible at 100%")
            return None
        self._act(it, False, f"unknown action {a}")
        return None

    async def _run_checks(self, ctx: CheckContext) -> list[GateResult]:
        timeout = self.s.check_timeout or max(5.0, 2 * self.s.check_interval)
        results: list[GateResult] = []

        async def health() -> list[GateResult]:
            if self.health is None or not self.s.canary_health_url:
                return []
            r: HealthResult = await self.health.check(self.s.canary_health_url, self.s.health_timeout)
            return [GateResult("health", PASS if r.ok else FAIL, critical=True, detail=r.detail,
                               value=r.elapsed_ms, window="now")]

        async def one(name: str, coro: Awaitable[Sequence[GateResult]]) -> list[GateResult]:
            try:
                return list(await asyncio.wait_for(coro, timeout))
            except TimeoutError:
                return [GateResult(name, ERROR, detail=f"{name} did not answer within {timeout:g}s")]
            except Exception as e:  # a checker bug is a failed check, never a pass
                return [GateResult(name, ERROR, detail=f"{type(e).__name__}: {e}")]

        jobs = [one("health", health())]
        for c in self.checkers:
            jobs.append(one(getattr(c, "name", type(c).__name__), c.check(ctx)))
        for part in await asyncio.gather(*jobs):
            results.extend(part)
        return results

    def _take_urgent(self) -> None:
        """Act on a queued rollback or interrupt now (raises); other intents wait their turn."""
        for it in self._intents:
            if isinstance(it, tuple) and it[0] == "interrupt":
                self._intents.remove(it)
                raise _Interrupted(it[1])
            if isinstance(it, Intent) and it.action == "rollback":
                self._intents.remove(it)
                self._apply_intent(it, None)  # raises _Rollback

    async def _preemptible(self, coro: Awaitable[_T]) -> _T:
        """Run a check (or the warm-up), but let a rollback (or an interrupt) in at once: a slow
        Prometheus must never delay the operator's rollback by a check timeout."""
        task = asyncio.ensure_future(coro)
        try:
            while True:
                self._take_urgent()
                self._wake.clear()
                waker = asyncio.ensure_future(self._wake.wait())
                try:
                    await asyncio.wait({task, waker}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waker.cancel()
                if task.done():
                    return task.result()
        finally:
            if not task.done():
                task.cancel()

    async def _check(self, st: _Stage) -> None:
        s = self.s
        ctx = CheckContext(
            deployment_id=self.deployment_id, version=self.version, index=st.index, weight=st.weight,
            stage_elapsed=st.elapsed, stage_wall_start=st.started, min_period=s.min_stage_time,
            generation=self._generation, shadow=st.index == SHADOW_INDEX, samples_since=self._samples_since,
        )
        results = await self._preemptible(self._run_checks(ctx))
        st.checks += 1
        st.last = tuple(results)
        for r in results:
            if r.verdict != ERROR or r.gate not in self._last_by_gate:
                self._last_by_gate[r.gate] = r

        decision, reason = "continue", ""
        crit = [r for r in results if r.verdict == FAIL and r.critical]
        for r in results:
            if r.verdict == FAIL and not r.critical:
                st.breaches[r.gate] = st.breaches.get(r.gate, 0) + 1
            else:
                st.breaches.pop(r.gate, None)
        held = [g for g, n in st.breaches.items() if n >= s.consecutive_failures]
        errors = [r for r in results if r.verdict == ERROR and r.blocking]
        st.unavailable = st.unavailable + 1 if errors else 0

        if crit:
            decision, reason = "rollback", describe(crit[0])
        elif held:
            r = next(x for x in results if x.gate == held[0])
            decision, reason = "rollback", f"{describe(r)} for {st.breaches[held[0]]} checks in a row"
        elif st.unavailable >= s.unavailable_after:
            why = f"metrics unavailable for {st.unavailable} checks: {errors[0].detail}"
            if s.on_metrics_unavailable == "rollback":
                decision, reason = "rollback", why
            else:
                decision, reason = "hold", why
        elif st.hold_kind == "unavailable":
            decision = "continue"

        self.emit(
            ev.CheckCompleted, index=st.index, weight=st.weight, elapsed=round(st.elapsed, 3),
            remaining=round(max(0.0, st.limit - st.elapsed), 3), results=tuple(results), breaches=dict(st.breaches),
            consecutive_failures=s.consecutive_failures, unavailable=st.unavailable, decision=decision,
        )
        if decision == "rollback":
            raise _Rollback(reason, automatic=True)
        if decision == "hold" and not st.hold:
            st.hold, st.hold_kind = reason, "unavailable"
            self.emit(ev.Holding, index=st.index, weight=st.weight, reason=reason)
        elif st.hold_kind == "unavailable" and not errors:
            st.hold, st.hold_kind = "", ""
            self.note("info", "metrics are back: observation continues")
            self.emit(ev.Resumed, index=st.index, weight=st.weight, remaining=max(0.0, st.limit - st.elapsed))

    def _end_of_observation(self, st: _Stage) -> str | None:
        s = self.s
        blocking = [r for r in st.last if r.blocking and r.verdict != PASS]
        if not blocking and st.last:
            self.emit(ev.StagePassed, index=st.index, weight=st.weight, reason="every gate passed on data")
            return "next"
        failing = [r for r in blocking if r.verdict == FAIL]
        names = ", ".join(f"{r.gate} {r.verdict}" for r in blocking) or "no gate reported"
        if not st.extended:
            st.extended = True
            st.limit = 2 * st.period
            self.emit(ev.StageExtended, index=st.index, weight=st.weight, reason=f"not every gate passed: {names}",
                       until=st.limit)
            return None
        if failing:
            raise _Rollback(f"{describe(failing[0])} at the end of the extended observation", automatic=True)
        why = f"inconclusive after {st.limit:g}s of observation: {names}"
        if s.on_inconclusive == "rollback":
            raise _Rollback(why, automatic=True)
        st.hold, st.hold_kind = why, "inconclusive"
        self.emit(ev.Holding, index=st.index, weight=st.weight, reason=why)
        return None

    async def _monitor_at_100(self, idx: int) -> int:
        """At 100%: keep the gates running until promote, rollback or stop."""
        s = self.s
        st = _Stage(index=idx, weight=100, period=s.observation_period, limit=float("inf"),
                    started=self.clock.monotonic())
        while True:
            try:
                step = self._handle_intents(None)
            except _Stop:
                return ExitCode.OK
            if isinstance(step, Intent):
                return await self._promote(step)
            await self._wait(s.check_interval)
            if not self._intents:
                await self._check(st)

    async def _promote(self, it: Intent) -> int:
        """Promote at 100%.  With an ``on_promote`` hook (console.commands.promote), the hook decides
        and journals; a refusal keeps the engine monitoring at 100%."""
        if self.on_promote is None:
            self._act(it)
            self.emit(ev.Promoted, operator=it.operator, approvals=it.approvals, reason=it.reason)
            return ExitCode.OK
        self._act(it)
        done = await self.on_promote(it)
        if done is not None:
            return ExitCode.OK
        return await self._monitor_at_100(max(self.state.index, 0))

    # ------------------------------------------------------------------ rollback
    async def _rollback(self, reason: str, automatic: bool) -> int:
        """0% canary first; then the reason and the snapshot."""
        idx = SHADOW_INDEX if self.state.shadow else max(self.state.index, 0)
        from_weight = self._weight if self._weight is not None else (self.state.weight or 0)
        last_error = ""
        for attempt in range(ROLLBACK_ATTEMPTS):
            try:
                await self._set_weight(0, f"rollback: {reason}", accept_late=True)
                break
            except RouterError as e:
                last_error = str(e)
                await self.clock.sleep(0.5 * (attempt + 1))
        else:
            _, served = await self._served()
            held = file_weight(self.router)
            file_says = "unreadable" if held is None else f"canary {held}%"
            self.emit(ev.Failed, reason=f"rollback to 0% failed {ROLLBACK_ATTEMPTS} times: {last_error}; as far as anyone "
                      f"can tell {served}, the upstream file holds {file_says} and nginx last confirmed canary "
                      f"{from_weight}%; traffic may still reach the canary. Next: fix nginx (its error log, nginx -t), then "
                      'run `canary-console rollback --reason "nginx did not confirm 0%"`', index=idx, weight=from_weight)
            return ExitCode.ROUTER
        self.emit(ev.RolledBack, reason=reason, automatic=automatic, index=idx, from_weight=from_weight,
                   snapshot=tuple(self._last_by_gate.values()))
        return ExitCode.ROLLED_BACK


def describe(r: GateResult) -> str:
    """"error_rate 0.052 >= 0.005 (5m, n=412)"."""
    parts = [r.gate]
    if r.value is not None:
        parts.append(f"{r.value:.4g}")
        if r.threshold is not None:
            parts.append(f"vs threshold {r.threshold:.4g}")
    extra = ", ".join(x for x in (r.window, f"n={r.samples}" if r.samples is not None else "") if x)
    out = " ".join(parts) + (f" ({extra})" if extra else "")
    if r.verdict == FAIL and r.detail:
        out += f": {r.detail}"
    return out
