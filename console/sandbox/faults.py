"""Faults into the running canary: POST /admin/faults, on a schedule (``--fault`` with
``--fault-at-stage``) or from the console's F menu.  The flags themselves are parsed in
console/sandbox/plan.py."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

from console.core import events as ev
from console.sandbox.plan import describe_faults

# the console's F menu: what each entry POSTs to the canary's /admin/faults
FAULT_MENU: dict[str, dict[str, Any]] = {
    "error burst: half of the canary's requests answer 500": {"error_rate": 0.5},
    "latency: +3 s on fast mode (p95 limit 2.5 s)": {"latency": {"fast": 3.0}},
    "schema failures: every brief misses its description": {"schema_failure_rate": 1.0},
    "unhealthy: the canary's /health answers 503": {"unhealthy": True},
    "recover: clear every fault": {"clear": True},
}


def post_faults(canary_url: str, body: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """POST /admin/faults to the canary; the faults now in force (RuntimeError: one line)."""
    req = urllib.request.Request(f"{canary_url}/admin/faults", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return dict(json.loads(r.read()))
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"the canary refused the fault {describe_faults(body)}: HTTP {e.code} "
                           f"{e.read().decode(errors='replace')[:200]}") from None
    except (OSError, ValueError) as e:
        raise RuntimeError(f"could not reach the canary at {canary_url}: {e}") from None


class FaultScheduler:
    """Engine listener: when the stage with weight ``at`` starts, inject ``body`` into the canary.

    ``report(line, data)`` tells the operator (headless output, or the engine's journal).  The
    engine's warm-up ([rollout] warmup_requests) is over before any stage starts."""

    def __init__(self, canary_url: str, body: dict[str, Any], at: int, report: Callable[[str, dict[str, Any]], None]) -> None:
        self.canary_url = canary_url
        self.body = dict(body)
        self.at = at
        self.report = report
        self.injected = False

    def __call__(self, e: ev.Event) -> Awaitable[None] | None:
        if self.injected or not isinstance(e, ev.StageStarted) or e.weight != self.at:
            return None
        self.injected = True
        return self._inject()

    async def _inject(self) -> None:
        what = describe_faults(self.body)
        try:
            await asyncio.to_thread(post_faults, self.canary_url, self.body)
        except RuntimeError as e:
            self.report(f"fault NOT injected at stage {self.at}%: {e}", {"fault": self.body, "ok": False})
            return
        self.report(f"fault injected into the canary at stage {self.at}%: {what}", {"fault": self.body, "ok": True})


def fault_actions(canary_url: str, report: Callable[[str, dict[str, Any]], None]) -> dict[str, Callable[[], Awaitable[None]]]:
    """The console's F menu: name -> async action (a failure raises: the console shows it)."""

    def action(name: str, body: dict[str, Any]) -> Callable[[], Awaitable[None]]:
        async def go() -> None:
            await asyncio.to_thread(post_faults, canary_url, body)
            report(f"fault injected into the canary from the console: {name}", {"fault": body, "ok": True})

        return go

    return {name: action(name, body) for name, body in FAULT_MENU.items()}
