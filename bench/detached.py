"""The detached engine, in figures: how long until a console is attached, how fast the link is.

Starts a real nginx (console.sandbox.nginx_local) in front of two loopback backends in a temporary
directory, pads the journal with old records (a long-lived journal), then measures:

  (a) ready    `canary-console deploy` (no terminal, dry run) from process start until the
               engine process answers on its socket;
  (b) attach   SocketLink.connect: connect, hello, and the history read from the journal;
  (c) ping     round trips console -> engine -> console over the socket;
  (d) events   engine event -> console: the event's timestamp to its arrival (ms resolution);
  (e) lost     kill -9 of the engine until the attached console knows (its link ends).

Everything started here is stopped on every exit path.

    .venv/bin/python bench/detached.py [--runs 5] [--pad 20000] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from console.core.journal import Journal, read_records  # noqa: E402
from console.remote import wire  # noqa: E402
from console.remote.client import (  # noqa: E402
    SocketLink,  # noqa: E402
    pid_alive,
    socket_answers,
)
from tests.fixtures.backends import start_backends  # noqa: E402
from tests.fixtures.nginx import start_nginx_env, write_canary_toml  # noqa: E402

CLI = str(Path(sys.executable).parent / "canary-console")


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def summary(xs: list[float]) -> dict[str, float]:
    return {"n": len(xs), "median": round(statistics.median(xs), 3), "p95": round(pct(xs, 95), 3),
            "max": round(max(xs), 3)}


def pad_journal(jp: Path, n: int) -> None:
    with Journal(jp) as j:
        for i in range(n):
            j.append({"event": "note", "ts": "2026-01-01T00:00:00.000Z", "deployment_id": f"old-{i // 50}",
                      "version": "v0.1.0", "dry_run": False, "level": "info", "message": f"padding {i}", "data": {}})


def wait(pred: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.001)
    raise TimeoutError("condition not met")


async def measure_link(sock: Path, jp: Path, pings: int, events: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    link = await asyncio.to_thread(SocketLink.connect, sock, journal_path=jp, ping_interval=0)
    attach_ms = (time.perf_counter() - t0) * 1000
    rtts = [await link.ping() for _ in range(pings)]
    lags: list[float] = []
    it = link.events().__aiter__()
    while len(lags) < events:
        e = await asyncio.wait_for(it.__anext__(), 10)
        sent = datetime.fromisoformat(e.ts.replace("Z", "+00:00"))
        lags.append((datetime.now(UTC) - sent).total_seconds() * 1000)
    history = len(link.history())
    return {"link": link, "it": it, "attach_ms": attach_ms, "rtts": rtts, "lags": lags, "history": history}


async def lost_after_kill(link: SocketLink, it: Any, pid: int) -> float:
    t0 = time.perf_counter()
    os.kill(pid, signal.SIGKILL)
    try:
        while True:
            await asyncio.wait_for(it.__anext__(), 10)
    except StopAsyncIteration:
        pass
    took = (time.perf_counter() - t0) * 1000
    await link.close()
    return took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--pad", type=int, default=20000, help="old journal records before the deployments")
    ap.add_argument("--pings", type=int, default=200)
    ap.add_argument("--events", type=int, default=50)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-detached-"))
    backends = start_backends()
    env = start_nginx_env(tmp, backends)
    procs: list[subprocess.Popen[Any]] = []
    engines: list[int] = []
    res: dict[str, list[float]] = {"ready_ms": [], "attach_ms": [], "ping_ms": [], "event_lag_ms": [], "lost_ms": []}
    history = 0
    try:
        cfg = write_canary_toml(tmp / "canary.toml", env, metrics={"source": "none"},
                                rollout={"observation_period": 600.0, "check_interval": 0.05})
        jp = tmp / ".canary" / "journal.jsonl"
        pad_journal(jp, a.pad)
        sock = wire.socket_path_for(jp)
        for run in range(a.runs):
            t0 = time.perf_counter()
            p = subprocess.Popen([CLI, "--config", str(cfg), "deploy", "--version", f"v0.3.{run}", "--dry-run"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
            procs.append(p)
            wait(lambda: socket_answers(sock, timeout=0.05))
            res["ready_ms"].append((time.perf_counter() - t0) * 1000)
            pid = [r for r in read_records(jp) if r["event"] == "deployment_started"][-1]["engine_pid"]
            engines.append(pid)
            m = asyncio.run(_one(sock, jp, a.pings, a.events, pid))
            res["attach_ms"].append(m["attach_ms"])
            res["ping_ms"] += m["rtts"]
            res["event_lag_ms"] += m["lags"]
            res["lost_ms"].append(m["lost_ms"])
            history = m["history"]
            p.wait(timeout=30)
            wait(lambda pid=pid: not pid_alive(pid))
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        for pid in engines:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        env.nginx.stop()
        backends.canary.stop()
        backends.production.stop()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    out = {k: summary(v) for k, v in res.items()}
    out["journal_records_before"] = a.pad
    out["history_events_at_attach"] = history
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"journal padded with {a.pad} old records; {a.runs} engine runs; history at attach: {history} events")
        for k, v in res.items():
            s = summary(v)
            print(f"  {k:13} n={s['n']:<5} median {s['median']:8.3f}  p95 {s['p95']:8.3f}  max {s['max']:8.3f}")
    return 0


async def _one(sock: Path, jp: Path, pings: int, events: int, pid: int) -> dict[str, Any]:
    m = await measure_link(sock, jp, pings, events)
    m["lost_ms"] = await lost_after_kill(m["link"], m["it"], pid)
    return m


if __name__ == "__main__":
    sys.exit(main())
