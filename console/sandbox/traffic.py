"""An async traffic generator: Poisson arrivals of ``POST /api/generate`` in a mode mix.

Used by the tests and the demo sandbox to put real load through nginx:

    gen = TrafficGenerator("http://127.0.0.1:8080", rps=20, mix={"fast": .5, "balanced": .3, "creative": .2}, seed=1)
    stats = await gen.run(duration=10)            # or stop_event=..., or max_requests=...

It is bounded in count and in time: ``run`` needs at least one of ``duration``,
``stop_event`` or ``max_requests``; at most ``max_in_flight`` requests are open at once (an
arrival that finds them all busy is dropped and counted, so a slow backend never makes the
generator queue without bound); on the way out, open requests get ``drain`` seconds, then
are cancelled.  ``BackgroundTraffic`` runs one in a thread for synchronous tests.

    python -m console.sandbox.traffic --url http://127.0.0.1:8080 --rps 20 --duration 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import random
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MIX = {"fast": 0.5, "balanced": 0.3, "creative": 0.2}
NOTES = ["bergamot", "rose", "cedar", "vanilla", "mint", "jasmine", "vetiver", "yuzu", "tonka", "iris"]


@dataclass
class TrafficStats:
    sent: int = 0
    ok: int = 0  # 2xx
    errors_4xx: int = 0
    errors_5xx: int = 0
    failed: int = 0  # no HTTP answer (refused, timeout, reset)
    dropped: int = 0  # arrivals skipped because max_in_flight requests were open
    by_mode: Counter[str] = field(default_factory=Counter)
    by_deployment: Counter[str] = field(default_factory=Counter)  # from the answer's "deployment"
    started: float = 0.0
    elapsed: float = 0.0

    @property
    def answered(self) -> int:
        return self.ok + self.errors_4xx + self.errors_5xx

    def to_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent, "ok": self.ok, "errors_4xx": self.errors_4xx, "errors_5xx": self.errors_5xx,
            "failed": self.failed, "dropped": self.dropped, "by_mode": dict(self.by_mode),
            "by_deployment": dict(self.by_deployment), "elapsed": round(self.elapsed, 3),
        }


def _check_mix(mix: dict[str, float]) -> dict[str, float]:
    if not mix or any((not isinstance(w, int | float)) or w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError(f"mix {mix!r} is not valid; allowed: {{mode: weight >= 0}} with a positive total")
    total = float(sum(mix.values()))
    return {m: w / total for m, w in mix.items()}


class TrafficGenerator:
    def __init__(
        self,
        base_url: str,
        rps: float = 20.0,
        mix: dict[str, float] | None = None,
        seed: int | None = None,
        *,
        max_in_flight: int = 64,
        timeout: float = 15.0,
        path: str = "/api/generate",
        drain: float = 5.0,
        paced: bool = False,
    ) -> None:
        """``paced``: one request every 1/rps seconds, the modes in turn (a probe), instead of
        Poisson arrivals with a mode drawn from ``mix`` (users)."""
        if not rps > 0:
            raise ValueError(f"rps {rps!r} is not valid; allowed: a number > 0")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight {max_in_flight!r} is not valid; allowed: an integer >= 1")
        self.url = base_url.rstrip("/") + path
        self.rps = float(rps)
        self.mix = _check_mix(mix or DEFAULT_MIX)
        self.rng = random.Random(seed)
        self.max_in_flight = max_in_flight
        self.timeout = timeout
        self.drain = drain
        self.stats = TrafficStats()
        self._modes = list(self.mix)
        self._weights = [self.mix[m] for m in self._modes]
        self._turns = itertools.cycle(self._modes) if paced else None

    def set_rps(self, rps: float) -> None:
        """Change the rate while running (the demo's traffic knob)."""
        if not rps > 0:
            raise ValueError(f"rps {rps!r} is not valid; allowed: a number > 0")
        self.rps = float(rps)

    def _body(self) -> dict[str, Any]:
        mode = next(self._turns) if self._turns is not None else self.rng.choices(self._modes, self._weights)[0]
        return {"mode": mode, "notes": self.rng.sample(NOTES, self.rng.randint(1, 3))}

    async def _one(self, client: Any, body: dict[str, Any]) -> None:
        import httpx

        st = self.stats
        st.by_mode[body["mode"]] += 1
        try:
            r = await client.post(self.url, json=body)
        except (httpx.HTTPError, OSError):
            st.failed += 1
            return
        if 200 <= r.status_code < 300:
            st.ok += 1
        elif 500 <= r.status_code < 600:
            st.errors_5xx += 1
        else:
            st.errors_4xx += 1
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            dep = r.json().get("deployment")
            if isinstance(dep, str):
                st.by_deployment[dep] += 1

    async def run(self, duration: float | None = None, stop_event: asyncio.Event | None = None,
                  max_requests: int | None = None) -> TrafficStats:
        """Send until ``duration`` seconds passed, ``stop_event`` is set or ``max_requests`` were sent."""
        if duration is None and stop_event is None and max_requests is None:
            raise ValueError("run() needs a bound: duration, stop_event or max_requests")
        import httpx

        st = self.stats
        st.started = time.monotonic()
        end = st.started + duration if duration is not None else float("inf")
        in_flight: set[asyncio.Task[None]] = set()
        limits = httpx.Limits(max_connections=self.max_in_flight, max_keepalive_connections=self.max_in_flight)
        async with httpx.AsyncClient(timeout=self.timeout, limits=limits, trust_env=False) as client:
            next_at = time.monotonic()
            while True:
                if stop_event is not None and stop_event.is_set():
                    break
                if max_requests is not None and st.sent >= max_requests:
                    break
                now = time.monotonic()
                if now >= end:
                    break
                if now < next_at:
                    wait = min(next_at, end) - now
                    if stop_event is not None:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop_event.wait(), wait)
                    else:
                        await asyncio.sleep(wait)
                    continue
                next_at += 1 / self.rps if self._turns is not None else self.rng.expovariate(self.rps)
                if len(in_flight) >= self.max_in_flight:
                    st.dropped += 1
                    continue
                st.sent += 1
                task = asyncio.ensure_future(self._one(client, self._body()))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            if in_flight:
                _, pending = await asyncio.wait(set(in_flight), timeout=self.drain)
                for t in pending:
                    t.cancel()
                if pending:
                    await asyncio.gather(*pending, return_exceptions=True)
                    st.failed += len(pending)
        st.elapsed = time.monotonic() - st.started
        return st


class BackgroundTraffic:
    """A TrafficGenerator on its own event loop in a thread, for synchronous code:

        with BackgroundTraffic(url, rps=40, seed=1) as bg:
            ...
        bg.stats  # after the block: stopped and drained
    """

    def __init__(self, base_url: str, rps: float = 20.0, mix: dict[str, float] | None = None, seed: int | None = None,
                 max_seconds: float = 600.0, **kw: Any) -> None:
        self.gen = TrafficGenerator(base_url, rps, mix, seed, **kw)
        self.max_seconds = max_seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="traffic", daemon=True)
        self.error: BaseException | None = None

    @property
    def stats(self) -> TrafficStats:
        return self.gen.stats

    def _main(self) -> None:
        async def go() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._ready.set()
            await self.gen.run(duration=self.max_seconds, stop_event=self._stop)

        try:
            asyncio.run(go())
        except BaseException as e:  # reported to the caller by stop()
            self.error = e
        finally:
            self._ready.set()

    def start(self) -> BackgroundTraffic:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self, timeout: float = 20.0) -> TrafficStats:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError("traffic thread did not stop")
        if self.error is not None:
            raise RuntimeError(f"traffic generator failed: {self.error!r}")
        return self.stats

    def __enter__(self) -> BackgroundTraffic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m console.sandbox.traffic", description="Poisson traffic to /api/generate")
    p.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8080 (nginx)")
    p.add_argument("--rps", type=float, default=20.0)
    p.add_argument("--duration", type=float, default=None, help="seconds (default: until SIGINT/SIGTERM)")
    p.add_argument("--mix", default="fast=0.5,balanced=0.3,creative=0.2")
    p.add_argument("--seed", type=int, default=None)
    a = p.parse_args(argv)
    try:
        mix = {k.strip(): float(v) for k, v in (part.split("=", 1) for part in a.mix.split(","))}
        gen = TrafficGenerator(a.url, a.rps, mix, a.seed)
    except ValueError as e:
        print(f"traffic: {e}", file=sys.stderr)
        return 2

    async def go() -> TrafficStats:
        import signal

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await gen.run(duration=a.duration, stop_event=stop)

    stats = asyncio.run(go())
    print(json.dumps(stats.to_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
