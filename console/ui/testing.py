"""Helpers for Pilot and snapshot tests (and the bench): scripted deployments, a pinned clock,
the screen as text.  The scripted link itself is console.core.fakes.ScriptedLink."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from console.core import events as ev
from console.core.events import FAIL, INCONCLUSIVE, PASS, GateResult

# ---------------------------------------------------------------------------- scripted deployments
DEP = "v0.2.0-20260101T000000Z-ab12"
VERSION = "v0.2.0"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
MODES = (("fast", 2.5), ("balanced", 3.2), ("creative", 4.5))


def ts(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def gates(t: float, *, error_rate: float = 0.001, creative: float = 1.2, verdicts: dict[str, str] | None = None,
          seq: bool = True) -> tuple[GateResult, ...]:
    """A plausible set of gate results at time ``t``; ``verdicts`` overrides per gate."""
    v = dict(verdicts or {})
    out = [GateResult("error_rate", v.get("error_rate", PASS if error_rate <= 0.005 else FAIL), value=error_rate,
                      threshold=0.005, window="5m", samples=400 + int(t), production_value=0.0012),
           GateResult("critical_error_rate", v.get("critical_error_rate", PASS), value=error_rate, threshold=0.01,
                      window="1m", samples=80 + int(t) // 4, critical=True)]
    for mode, thr in MODES:
        val = creative if mode == "creative" else {"fast": 0.41, "balanced": 0.83}[mode] + (t % 60) / 600
        out.append(GateResult(f"p95_latency.{mode}", v.get(f"p95_latency.{mode}", PASS if val <= thr else FAIL), value=val,
                              threshold=thr, window="5m", samples=120 + int(t) // 3, production_value=val * 0.9))
    out.append(GateResult("health", v.get("health", PASS), value=11.0, window="now", critical=True, detail="healthy"))
    if seq:
        out.append(GateResult("seq.errors", v.get("seq.errors", INCONCLUSIVE), blocking=False,
                              extra={"e_value": 2.4, "threshold": 100.0, "bound": 2.0, "mde": 1.8}))
    return tuple(out)


class Script:
    """Events of one deployment at fixed timestamps (so snapshots are stable)."""

    def __init__(self, stages: tuple[int, ...] = (1, 5, 25, 100), observation: float = 900, interval: float = 15) -> None:
        self.stages, self.observation, self.interval = stages, observation, interval
        self.t = 0.0
        self.index = -1
        self.elapsed = 0.0
        self.breaches: dict[str, int] = {}
        self.events: list[ev.Event] = []

    def _e(self, cls: type[ev.Event], **kw: Any) -> ev.Event:
        e = cls(ts=ts(self.t), deployment_id=DEP, version=VERSION, **kw)
        self.events.append(e)
        return e

    def start(self, user: str = "alice") -> Script:
        self._e(ev.DeploymentStarted, stages=self.stages, observation_period=self.observation,
                check_interval=self.interval, operator=ev.Operator(user, "10.0.0.7"), engine_pid=4242, engine_host="ops1")
        return self

    def stage(self, index: int) -> Script:
        prev = self.stages[self.index] if self.index >= 0 else 0
        w = self.stages[index]
        self._e(ev.RouterIntent, weight=w, previous_weight=prev, generation="g", reason=f"stage {index + 1}/{len(self.stages)}")
        self.t += 1
        self._e(ev.RouterApplied, weight=w, generation="g", duration_ms=41.0)
        self._e(ev.StageStarted, index=index, weight=w, total=len(self.stages), observation_period=self.observation)
        if index == len(self.stages) - 1:
            self._e(ev.Completed, index=index)
        self.index, self.elapsed, self.breaches = index, 0.0, {}
        return self

    def check(self, n: int = 1, decision: str = "continue", **gate_kw: Any) -> Script:
        for _ in range(n):
            self.t += self.interval
            self.elapsed += self.interval
            res = gates(self.t, **gate_kw)
            for r in res:
                if r.verdict == FAIL and not r.critical:
                    self.breaches[r.gate] = self.breaches.get(r.gate, 0) + 1
                else:
                    self.breaches.pop(r.gate, None)
            self._e(ev.CheckCompleted, index=self.index, weight=self.stages[self.index], elapsed=self.elapsed,
                    remaining=max(0.0, self.observation - self.elapsed), results=res, breaches=dict(self.breaches),
                    consecutive_failures=3, decision=decision)
        return self

    def passed(self) -> Script:
        self._e(ev.StagePassed, index=self.index, weight=self.stages[self.index], reason="every gate passed on data")
        return self

    def hold(self, reason: str) -> Script:
        self._e(ev.Holding, index=self.index, weight=self.stages[self.index], reason=reason)
        return self

    def action(self, action: str, user: str = "alice", accepted: bool = True, detail: str = "") -> Script:
        self._e(ev.OperatorAction, action=action, operator=ev.Operator(user, "10.0.0.7"), accepted=accepted, detail=detail)
        return self

    def rollback(self, reason: str, automatic: bool = True) -> Script:
        w = self.stages[self.index]
        self._e(ev.RollbackStarted, reason=reason, automatic=automatic, index=self.index, weight=w)
        self._e(ev.RouterIntent, weight=0, previous_weight=w, generation="g0", reason=f"rollback: {reason}")
        self.t += 1
        self._e(ev.RouterApplied, weight=0, generation="g0", duration_ms=38.0)
        last = next((e for e in reversed(self.events) if isinstance(e, ev.CheckCompleted)), None)
        self._e(ev.RolledBack, reason=reason, automatic=automatic, index=self.index, from_weight=w,
                snapshot=last.results if last else ())
        return self

    def at(self, seconds: float) -> datetime:
        """The wall time ``seconds`` after the last event (for a pinned console clock)."""
        return T0 + timedelta(seconds=self.t + seconds)


def observing() -> Script:
    return Script().start().stage(0).check(60).passed().stage(1).check(20)


def failing_gate() -> Script:
    s = observing()
    return s.check(2, error_rate=0.0071)


def holding() -> Script:
    s = Script().start().stage(0).check(60).passed().stage(1).check(5)
    s.check(3, decision="hold", verdicts={"error_rate": "error", "p95_latency.fast": "error"})
    return s.hold("metrics unavailable for 3 checks: Prometheus at http://127.0.0.1:9090 timed out after 5s")


def rolled_back() -> Script:
    s = observing().check(3, error_rate=0.0082)
    return s.rollback("error_rate 0.0082 vs threshold 0.005 (5m, n=...) for 3 checks in a row")


def pinned_clock(script: Script, after: float = 5.0) -> Any:
    """A console clock standing ``after`` seconds past the script's last event."""
    from console.core.clock import FakeClock

    return FakeClock(start=1000.0, wall=script.at(after))


def screen_text(app: Any) -> str:
    """What the terminal shows now, as plain text (one line per row)."""
    strips = app.screen._compositor.render_strips()
    return "\n".join("".join(seg.text for seg in strip) for strip in strips)


async def wait_for(pilot: Any, predicate: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``predicate`` between frames until it holds; fail with ``what`` after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}\n{screen_text(pilot.app)}")
        await pilot.pause(0.01)
