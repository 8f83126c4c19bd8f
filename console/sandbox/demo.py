"""`canary-console demo`: a complete local canary sandbox.

One command starts, as supervised child processes (console/sandbox/supervisor.py): the production demo
service (v0.1.0) and the canary (v0.2.0) on free loopback ports, nginx in its own prefix
directory in front of them, Prometheus scraping both every second (or, without Prometheus,
the console's own scrape source), and a traffic generator through nginx.  It writes a
canary.toml for all of this in the sandbox directory, loads it like any other config, and
rolls v0.2.0 out, under the console or (``--headless``) one line per event.  Every child
stops on every exit path and the directory goes (unless ``--keep``).

Why the demo's timings look the way they do: at 20 requests/s a 1% stage sends the canary a
request every 5 s, so within a 30 s observation a mode can see no canary request at all, and
"no data" never passes a gate.  The demo therefore (1) warms the canary up with a few direct
requests per mode as the rollout starts (the guide's "Warm up canary"), (2) judges a rate
window of twice the observation period, so the warm-up and the previous stage stay in view,
and (3) sizes ``min_requests`` from the expected canary traffic.  A fault still shows within
seconds: the critical gates (5xx ratio above 1%, any schema failure, health) need one bad
check, not a full window.

Exit codes: the deploy's (0 at 100%, 3 rolled back, 4 precondition, 6 router, 130
interrupted); 2 for bad flags; 4 when the sandbox cannot start (the line says what to do).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import select
import shutil
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from console.core import events as ev
from console.sandbox.supervisor import (
    Child,
    PortTaken,
    Sandbox,
    SandboxInterrupted,
    StartFailed,
    free_port,
    port_free,
    port_taken_line,
)

EXIT_OK, EXIT_USAGE, EXIT_PRECONDITION, EXIT_INTERRUPTED = 0, 2, 4, 130

PRODUCTION_VERSION = "0.1.0"
CANARY_VERSION = "0.2.0"
DEPLOY_VERSION = "v0.2.0"
STAGES = (1, 5, 25, 100)
UPSTREAM_NAME = "fragrance_app"
MODES = ("fast", "balanced", "creative")
RL_LOSS = {"production": 0.42, "canary": 0.40}  # both report it, so the RL-loss gate is live
WARMUP_PER_MODE = 10
SCRAPE_JOB = "canary-demo"
START_TIMEOUT = 30.0

# the console's F menu: what each entry POSTs to the canary's /admin/faults
FAULT_MENU: dict[str, dict[str, Any]] = {
    "error burst: half of the canary's requests answer 500": {"error_rate": 0.5},
    "latency: +3 s on fast mode (p95 limit 2.5 s)": {"latency": {"fast": 3.0}},
    "schema failures: every brief misses its description": {"schema_failure_rate": 1.0},
    "unhealthy: the canary's /health answers 503": {"unhealthy": True},
    "recover: clear every fault": {"clear": True},
}

_BOOL = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
FAULT_NAMES = ("error_rate", "latency", "schema_failure_rate", "schema_failures", "unhealthy", "rl_loss", "metrics_down")


class UsageError(ValueError):
    """A bad flag: one line, exit 2."""


def _say(line: str) -> None:
    print(f"canary-console demo: {line}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the plan


def parse_fault(spec: str) -> dict[str, Any]:
    """``--fault NAME=VALUE`` -> the /admin/faults body for it (validated like the service does)."""
    from console.sandbox.service import BadInput, Faults, apply_fault_update

    allowed = "NAME=VALUE with NAME one of " + ", ".join(FAULT_NAMES)
    name, sep, value = spec.partition("=")
    name, value = name.strip().replace("-", "_"), value.strip()
    if not sep or name not in FAULT_NAMES or not value:
        raise UsageError(f"--fault {spec!r} is not valid; allowed: {allowed} (e.g. error_rate=0.05, latency=fast:3)")
    body: dict[str, Any]
    try:
        if name in ("error_rate", "schema_failure_rate"):
            body = {name: float(value)}
        elif name == "schema_failures":
            body = {name: int(value)}
        elif name == "latency":
            body = {name: value.replace(":", "=")}
        elif name in ("unhealthy", "metrics_down"):
            if value.lower() not in _BOOL:
                raise ValueError
            body = {name: _BOOL[value.lower()]}
        else:  # rl_loss
            body = {name: None if value.lower() in ("none", "null") else float(value)}
        apply_fault_update(Faults(), body)
    except BadInput as e:
        raise UsageError(f"--fault {spec!r}: {e}") from None
    except ValueError:
        raise UsageError(f"--fault {spec!r}: {value!r} is not a valid value for {name}; allowed: {allowed}") from None
    return body


def describe_faults(body: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in body.items())


def demo_window(observation: float) -> float:
    """The rate window: twice the observation, so at the end of a stage the window still holds
    the whole stage and what came just before it (the warm-up at stage 1)."""
    return max(10.0, 2.0 * observation)


def demo_min_requests(rps: float, window: float) -> int:
    """Canary requests a gate needs in the window: a quarter of what the rarest mode (20% of
    the mix) is expected to get in the window at the second stage, within 3..20."""
    expected = rps * STAGES[1] / 100 * window * 0.2
    return int(min(20, max(3, math.floor(expected / 4))))


@dataclass(frozen=True)
class Plan:
    rps: float
    observation: float
    check_interval: float
    faults: dict[str, Any] = field(default_factory=dict)
    fault_at: int | None = None
    headless: bool = False
    json: bool = False
    keep: bool = False
    source: str = "auto"
    port: int | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Plan:
        rps = float(args.rps)
        if not (rps > 0 and math.isfinite(rps)):
            raise UsageError(f"--rps {args.rps!r} is not valid; allowed: a number of requests per second > 0")
        faults: dict[str, Any] = {}
        for spec in args.fault:
            faults.update(parse_fault(spec))
        fault_at = args.fault_at_stage
        if fault_at is not None and not faults:
            raise UsageError("--fault-at-stage needs at least one --fault NAME=VALUE (e.g. --fault error_rate=0.05)")
        if fault_at is not None and fault_at not in STAGES:
            raise UsageError(f"--fault-at-stage {fault_at} is not valid; allowed: one of the stages "
                             f"{', '.join(map(str, STAGES))}")
        port = getattr(args, "port", None)
        if port is not None and not 1 <= int(port) <= 65535:
            raise UsageError(f"--port {port} is not valid; allowed: a TCP port 1..65535")
        return cls(
            rps=rps, observation=float(args.observation_period), check_interval=float(args.check_interval),
            faults=faults, fault_at=(STAGES[0] if faults and fault_at is None else fault_at),
            headless=bool(args.headless or args.json), json=bool(args.json), keep=bool(args.keep),
            source=args.source, port=None if port is None else int(port),
        )


# --------------------------------------------------------------------------- the sandbox


@dataclass
class Running:
    """What the sandbox started, and how to reach it."""

    sandbox: Sandbox
    production_url: str
    canary_url: str
    nginx_url: str
    verify_url: str
    test_command: list[str]
    reload_command: list[str]
    upstream_file: Path
    access_log: Path
    source: str  # "prometheus" | "scrape"
    prometheus_url: str = ""
    metrics_note: str = ""
    logs: dict[str, Path] = field(default_factory=dict)


def _service_env() -> dict[str, str]:
    """Our environment without the service's own DEMO_* knobs (a stray DEMO_ERROR_RATE in the
    shell must not break the demo), with this package importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEMO_")}
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def _free_ports(n: int, avoid: set[int]) -> list[int]:
    out: list[int] = []
    while len(out) < n:
        p = free_port()
        if p not in avoid and p not in out:
            out.append(p)
    return out


def start_services(sb: Sandbox, ports: dict[str, int]) -> dict[str, str]:
    urls = {}
    for role, version in (("production", PRODUCTION_VERSION), ("canary", CANARY_VERSION)):
        port = ports[role]
        url = f"http://127.0.0.1:{port}"
        argv = [sys.executable, "-m", "console.sandbox.service", "--host", "127.0.0.1", "--port", str(port),
                "--version", version, "--deployment", role, "--rl-loss", str(RL_LOSS[role])]
        sb.spawn(role, argv, port=port, url=url, env=_service_env())
        urls[role] = url
    for role, version in (("production", PRODUCTION_VERSION), ("canary", CANARY_VERSION)):
        child = next(c for c in sb.children if c.name == role)
        sb.wait_http(child, f"{urls[role]}/health", START_TIMEOUT, f"the {role} demo service (v{version})")
    return urls


def start_nginx(sb: Sandbox, nginx_bin: str, port: int, urls: dict[str, str]) -> tuple[Any, Path, Path]:
    from console.adapters.nginx.router import render_upstream
    from console.sandbox.nginx_local import LocalNginx, NginxStartError

    prefix = sb.root / "nginx"
    upstream = prefix / "conf.d" / "upstream.conf"
    upstream.parent.mkdir(parents=True, exist_ok=True)
    addr = {role: u.removeprefix("http://") for role, u in urls.items()}
    upstream.write_text(render_upstream(UPSTREAM_NAME, addr["production"], addr["canary"], 0, "demo-start"))
    access_log = sb.root / "logs" / "nginx-canary-access.log"
    ngx = LocalNginx(prefix, port, upstream, access_log, UPSTREAM_NAME, worker_processes=1, nginx_bin=nginx_bin,
                     die_with_parent=True)
    try:
        sb.started(ngx.start)
    except NginxStartError as e:
        if "address already in use" in str(e).lower():
            raise PortTaken(port_taken_line(port, "nginx")) from None
        raise StartFailed(f"nginx failed to start: {e}") from None
    sb.adopt("nginx", int(ngx.pid or 0), ngx.stop, port=port, url=ngx.url, log_path=ngx.error_log)
    return ngx, upstream, access_log


def prometheus_config(targets: list[str]) -> str:
    return "\n".join([
        "# Rendered by canary-console demo: 1 s scrape of both demo services.",
        "global:",
        "  scrape_interval: 1s",
        "  scrape_timeout: 1s",
        "  evaluation_interval: 1s",
        "scrape_configs:",
        f"  - job_name: {SCRAPE_JOB}",
        "    metrics_path: /metrics",
        "    static_configs:",
        "      - targets: [" + ", ".join(json.dumps(t) for t in targets) + "]",
        "",
    ])


def start_prometheus(sb: Sandbox, binary: str, port: int, urls: dict[str, str], say: Callable[[str], None]) -> Child:
    d = sb.root / "prometheus"
    d.mkdir(parents=True, exist_ok=True)
    conf = d / "prometheus.yml"
    targets = [u.removeprefix("http://") for u in urls.values()]
    conf.write_text(prometheus_config(targets))
    url = f"http://127.0.0.1:{port}"
    argv = [binary, f"--config.file={conf}", f"--storage.tsdb.path={d / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h", "--log.level=warn"]
    say(f"starting Prometheus on {url} (scrapes every 1 s, storage in {d / 'data'})...")
    return sb.spawn("prometheus", argv, port=port, url=url)


def wait_prometheus(sb: Sandbox, child: Child, n_targets: int, say: Callable[[str], None]) -> None:
    """Ready, then scraping every target (its discovery applies targets up to 5 s after start)."""
    url = child.url
    sb.wait_http(child, f"{url}/-/ready", 60.0, "Prometheus")
    say("waiting for Prometheus to scrape both services...")
    query = urllib.request.quote(f'up{{job="{SCRAPE_JOB}"}} == 1')

    def both_up(status: int, body: bytes) -> bool:
        try:
            return status == 200 and len(json.loads(body)["data"]["result"]) == n_targets
        except (ValueError, KeyError, TypeError):
            return False

    try:
        sb.wait_http(child, f"{url}/api/v1/query?query={query}", START_TIMEOUT, "Prometheus (scraping both services)",
                     ok=both_up, interval=0.2)
    except StartFailed as e:
        raise StartFailed(f"{e}; the targets page says why: {url}/targets") from None


def warm_up(canary_url: str, per_mode: int = WARMUP_PER_MODE) -> int:
    """A few requests per mode straight to the canary; the number that answered 2xx."""
    ok = 0
    for i in range(per_mode):
        for mode in MODES:
            body = json.dumps({"mode": mode, "notes": ["bergamot", "cedar"][: 1 + i % 2]}).encode()
            req = urllib.request.Request(f"{canary_url}/api/generate", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=10.0) as r:
                    ok += 200 <= r.status < 300
            except (OSError, urllib.error.HTTPError):
                pass
    return ok


def start_sandbox(sb: Sandbox, plan: Plan, say: Callable[[str], None]) -> Running:
    """Everything the demo runs, in dependency order; StartFailed (one line) if a piece cannot."""
    from console.sandbox.nginx_local import find_nginx

    nginx_bin = find_nginx()
    if not nginx_bin:
        raise StartFailed("nginx is not installed; install it with: apt-get install -y nginx-light "
                          "(as root, or with sudo), or run scripts/setup demo")
    prom_bin = shutil.which("prometheus") if plan.source in ("auto", "prometheus") else None
    if plan.source == "prometheus" and not prom_bin:
        raise StartFailed("prometheus is not installed (not on PATH); install it with: apt-get install -y prometheus "
                          "(as root, or with sudo), or run the demo with --source scrape")
    if plan.port is not None and not port_free(plan.port):
        raise PortTaken(port_taken_line(plan.port, "nginx"))
    p_prod, p_canary, p_nginx, p_prom = _free_ports(4, {plan.port} if plan.port else set())
    nginx_port = plan.port or p_nginx

    say(f"sandbox directory {sb.root}" + (" (kept after exit: --keep)" if plan.keep else " (removed on exit)"))
    say(f"starting production v{PRODUCTION_VERSION} on 127.0.0.1:{p_prod} and canary v{CANARY_VERSION} "
        f"on 127.0.0.1:{p_canary}...")
    urls = start_services(sb, {"production": p_prod, "canary": p_canary})
    prometheus = start_prometheus(sb, prom_bin, p_prom, urls, say) if prom_bin else None
    say(f"starting nginx on http://127.0.0.1:{nginx_port} (prefix {sb.root / 'nginx'}, canary 0%)...")
    ngx, upstream, access_log = start_nginx(sb, nginx_bin, nginx_port, urls)
    running = Running(
        sandbox=sb, production_url=urls["production"], canary_url=urls["canary"], nginx_url=ngx.url,
        verify_url=ngx.verify_url, test_command=ngx.test_command, reload_command=ngx.reload_command,
        upstream_file=upstream, access_log=access_log, source="scrape",
        logs={"nginx canary access log": access_log, "canary service": sb.root / "logs" / "canary.log",
              "production service": sb.root / "logs" / "production.log"},
    )
    from console.sandbox.traffic import DEFAULT_MIX, BackgroundTraffic

    mix = ", ".join(f"{m} {w:.0%}" for m, w in DEFAULT_MIX.items())
    say(f"sending {plan.rps:g} requests/s through nginx ({mix})...")
    bg = BackgroundTraffic(ngx.url, rps=plan.rps, max_seconds=7 * 24 * 3600, drain=1.0, timeout=10.0)
    sb.on_close(bg.stop)
    bg.start()
    if prometheus is not None:
        wait_prometheus(sb, prometheus, len(urls), say)
        running.source, running.prometheus_url = "prometheus", prometheus.url
    elif plan.source == "auto":
        running.metrics_note = ("Prometheus is not installed: the console scrapes both services' /metrics itself "
                                "(apt-get install -y prometheus for the full set-up)")
        say(running.metrics_note)
    else:
        running.metrics_note = "metrics scraped from both services directly (--source scrape)"
    return running


# --------------------------------------------------------------------------- the config


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def render_config(r: Running, plan: Plan, analysis: bool) -> str:
    """The sandbox's canary.toml: an ordinary config, loaded with load_config."""
    window = demo_window(plan.observation)
    prod_addr, canary_addr = r.production_url.removeprefix("http://"), r.canary_url.removeprefix("http://")
    sections: dict[str, dict[str, Any]] = {
        "rollout": {"stages": list(STAGES), "observation_period": plan.observation, "check_interval": plan.check_interval,
                    "health_timeout": 2.0},
        "nginx": {"upstream_file": str(r.upstream_file), "upstream_name": UPSTREAM_NAME, "production": prod_addr,
                  "canary": canary_addr, "test_command": r.test_command, "reload_command": r.reload_command,
                  "verify_url": r.verify_url, "verify_timeout": 10.0, "access_log": str(r.access_log)},
        "health": {"production_url": f"{r.production_url}/health", "canary_url": f"{r.canary_url}/health", "timeout": 2.0},
        "journal": {"path": ".canary/journal.jsonl"},
        "metrics": {"source": r.source, "rate_window": f"{window:g}s",
                    "min_requests": demo_min_requests(plan.rps, window), "query_timeout": 3.0},
        "prometheus": {"url": r.prometheus_url or "http://127.0.0.1:9090"},
        "scrape": {"production": f"{r.production_url}/metrics", "canary": f"{r.canary_url}/metrics", "timeout": 2.0},
        "analysis": {"enabled": analysis},
    }
    lines = [f"# canary-console demo sandbox: generated for {plan.rps:g} requests/s; removed on exit unless --keep."]
    for name, body in sections.items():
        lines.append(f"\n[{name}]")
        lines += [f"{k} = {_toml(v)}" for k, v in body.items()]
    return "\n".join(lines) + "\n"


def _analysis_available() -> bool:
    try:
        from console.core.analysis import SequentialChecker  # noqa: F401
    except ImportError:
        return False
    return True


def _config_environ() -> dict[str, str]:
    """Our environment without what load_config maps onto keys (PROMETHEUS_URL, CANARY_*):
    the sandbox's config must describe the sandbox, not the operator's real setup."""
    from console.core.config import ENV_MAP

    return {k: v for k, v in os.environ.items() if k not in ENV_MAP and not k.startswith("CANARY_")}


def write_config(r: Running, plan: Plan) -> Any:
    from console.core.config import load_config

    path = r.sandbox.root / "canary.toml"
    path.write_text(render_config(r, plan, analysis=_analysis_available()))
    return load_config(path, None, {}, environ=_config_environ(), check_upstream_dir=True)


# --------------------------------------------------------------------------- faults


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

    ``report(line, data)`` tells the operator (headless output, or the engine's journal);
    ``after`` is awaited first: the warm-up, which must reach the canary before the fault does."""

    def __init__(self, canary_url: str, body: dict[str, Any], at: int, report: Callable[[str, dict[str, Any]], None],
                 after: Callable[[], Awaitable[None]] | None = None) -> None:
        self.canary_url = canary_url
        self.body = dict(body)
        self.at = at
        self.report = report
        self.after = after
        self.injected = False

    def __call__(self, e: ev.Event) -> Awaitable[None] | None:
        if self.injected or not isinstance(e, ev.StageStarted) or e.weight != self.at:
            return None
        self.injected = True
        return self._inject()

    async def _inject(self) -> None:
        what = describe_faults(self.body)
        if self.after is not None:
            await self.after()
        try:
            await asyncio.to_thread(post_faults, self.canary_url, self.body)
        except RuntimeError as e:
            self.report(f"fault NOT injected at stage {self.at}%: {e}", {"fault": self.body, "ok": False})
            return
        self.report(f"fault injected into the canary at stage {self.at}%: {what}", {"fault": self.body, "ok": True})


class WarmUp:
    """Engine listener: when the deployment starts, warm the canary up (see the module
    docstring: without it the 1% stage has no data for some modes at demo rates).

    The metric source reads once first: a scrape source counts only what happens after its
    first scrape, so a warm-up before that would be invisible to it (Prometheus has already
    scraped both services: the sandbox waited for that)."""

    def __init__(self, canary_url: str, source: Any, report: Callable[[str, dict[str, Any]], None]) -> None:
        self.canary_url = canary_url
        self.source = source
        self.report = report
        self._done: asyncio.Event | None = None

    def __call__(self, e: ev.Event) -> Awaitable[None] | None:
        if self._done is not None or not isinstance(e, ev.DeploymentStarted):
            return None
        self._done = asyncio.Event()
        return self._go(self._done)

    async def _go(self, done: asyncio.Event) -> None:
        try:
            if self.source is not None:
                try:
                    await self.source.snapshot()
                except Exception:  # the gates report an unreachable source; the warm-up goes ahead
                    pass
            ok = await asyncio.to_thread(warm_up, self.canary_url)
        finally:
            done.set()
        total = WARMUP_PER_MODE * len(MODES)
        self.report(f"warmed up the canary: {ok} of {total} requests ({WARMUP_PER_MODE} per mode) straight to it, "
                    "so that the 1% stage has data for every mode", {"warm_up": ok, "ok": ok == total})

    async def wait(self) -> None:
        """Until the warm-up is over (at once if it never started)."""
        if self._done is not None:
            await self._done.wait()


def fault_actions(canary_url: str, report: Callable[[str, dict[str, Any]], None]) -> dict[str, Callable[[], Awaitable[None]]]:
    """The console's F menu: name -> async action (a failure raises: the console shows it)."""

    def action(name: str, body: dict[str, Any]) -> Callable[[], Awaitable[None]]:
        async def go() -> None:
            await asyncio.to_thread(post_faults, canary_url, body)
            report(f"fault injected into the canary from the console: {name}", {"fault": body, "ok": True})

        return go

    return {name: action(name, body) for name, body in FAULT_MENU.items()}


# --------------------------------------------------------------------------- running the rollout


def _engine_note(engine: Any, json_lines: bool, interactive: bool) -> Callable[[str, dict[str, Any]], None]:
    """How a demo line reaches the operator: the engine's public ``note`` (journaled, shown by
    the console) when it has one; otherwise a line of headless output."""
    note = getattr(engine, "note", None)

    def report(line: str, data: dict[str, Any]) -> None:
        if callable(note):
            note("info" if data.get("ok", True) else "warning", line, **data)
            return
        if interactive:
            return  # stdout belongs to the console
        if json_lines:
            print(json.dumps({"event": "demo_note", "message": line, **data}), flush=True)
        else:
            print(f"demo: {line}", flush=True)

    return report


def _headless(engine: Any, sb: Sandbox, json_lines: bool) -> int:
    from console.core.eventfmt import format_event

    def printer(e: ev.Event) -> None:
        print(json.dumps(e.to_record()) if json_lines else format_event(e), flush=True)

    engine.add_listener(printer)
    held = None

    async def main() -> int:
        nonlocal held
        try:
            return await _run_engine(engine)
        finally:
            held = sb.hold_signals()  # until our handlers are back after the loop closes

    try:
        return asyncio.run(main())
    finally:
        sb.install_handlers(release=held)


async def _run_engine(engine: Any) -> int:
    import signal

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, engine.interrupt, sig.name)
    try:
        return int(await engine.run())
    finally:
        await _close_adapters(engine)


async def _close_adapters(engine: Any) -> None:
    for obj in [engine.health, *engine.checkers]:
        closer = getattr(obj, "aclose", None)
        if closer is not None:
            try:
                await closer()
            except Exception:  # closing is best effort; the processes stop anyway
                pass


class ConsoleWatchdog:
    """The console's last line of defence for "nothing left behind".

    A stop signal makes the console interrupt the engine and exit; but a terminal that went
    away (SIGHUP) can wedge Textual's shutdown for ever (its output thread waits on a
    terminal that is gone), and the children would outlive us.  So: once a stop signal
    reached the engine (an ``Interrupted`` event for SIGTERM / SIGHUP) or the terminal hung
    up, give the console ``grace`` seconds to hand back; after that, stop the sandbox from
    this thread and end the process (exit 130).  Nobody is left to see the console anyway."""

    def __init__(self, sb: Sandbox, grace: float = 10.0, fd: int = 0) -> None:
        self.sb = sb
        self.grace = grace
        self.fd = fd
        self.returned = threading.Event()  # set when the console handed back
        self._armed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-console-watchdog", daemon=True)

    def __call__(self, e: ev.Event) -> None:
        if isinstance(e, ev.Interrupted) and e.signal in ("SIGTERM", "SIGHUP"):
            self._armed.set()

    def start(self) -> ConsoleWatchdog:
        self._thread.start()
        return self

    def _hung_up(self) -> bool:
        p = select.poll()
        p.register(self.fd, 0)  # POLLHUP / POLLERR / POLLNVAL are always reported
        try:
            return any(ev_ & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, ev_ in p.poll(0))
        except OSError:
            return True

    def _run(self) -> None:
        while not self.returned.is_set():
            if self._armed.wait(0.5) or self._hung_up():
                break
        if self.returned.wait(self.grace):
            return
        self.sb.close()
        os._exit(EXIT_INTERRUPTED)


def _interactive(engine: Any, cfg: Any, r: Running, report: Callable[[str, dict[str, Any]], None]) -> int:
    """The console on the in-process engine (``run_console_with_engine``: SIGTERM / SIGHUP
    quit it like a confirmed ``q``), with the demo's log panes and the F fault menu."""
    from console.ui.app import run_console_with_engine
    from console.ui.sources import LogSourceSpec

    sources = [LogSourceSpec("file", title, path=str(path)) for title, path in r.logs.items()]
    extra = {"metrics_note": r.metrics_note} if r.metrics_note else {}
    watchdog = ConsoleWatchdog(r.sandbox)
    engine.add_listener(watchdog)
    watchdog.start()
    try:
        return int(run_console_with_engine(engine, cfg, DEPLOY_VERSION, log_sources=sources,
                                           fault_actions=fault_actions(r.canary_url, report), **extra))
    finally:
        watchdog.returned.set()


def _announce(r: Running, plan: Plan) -> None:
    info = {"event": "demo_sandbox", **r.sandbox.describe(), "nginx_url": r.nginx_url, "metrics_source": r.source,
            "prometheus_url": r.prometheus_url, "metrics_note": r.metrics_note}
    if plan.json:
        print(json.dumps(info), flush=True)
        return
    for c in r.sandbox.children:
        _say(f"  {c.name:<11} pid {c.pid:<7} {c.url}")


def drive(r: Running, plan: Plan) -> int:
    """Load the sandbox's config, build the engine, run the rollout; the deploy exit code."""
    from console.core.clock import RealClock
    from console.core.journal import Journal
    from console.wiring import build_checkers, build_engine

    cfg = write_config(r, plan)
    interactive = not plan.headless and sys.stdin.isatty() and sys.stdout.isatty()
    with Journal(cfg.journal_path) as journal:
        clock = RealClock()
        checkers, source = build_checkers(cfg, clock)
        engine = build_engine(cfg, DEPLOY_VERSION, journal=journal, clock=clock, checkers=checkers, stay_at_100=interactive)
        report = _engine_note(engine, plan.json, interactive)
        warm = WarmUp(r.canary_url, source, report)
        engine.add_listener(warm)
        if plan.faults and plan.fault_at is not None:
            engine.add_listener(FaultScheduler(r.canary_url, plan.faults, plan.fault_at, report, after=warm.wait))
        _announce(r, plan)
        _say(f"rolling out {DEPLOY_VERSION}: stages {', '.join(f'{s}%' for s in STAGES)}, "
             f"observation {plan.observation:g}s, checks every {plan.check_interval:g}s, "
             f"metrics from {r.source} over {cfg['metrics']['rate_window']}"
             + (f"; fault {describe_faults(plan.faults)} at stage {plan.fault_at}%" if plan.faults else ""))
        if interactive:
            try:
                code = _interactive(engine, cfg, r, report)
            finally:
                r.sandbox.install_handlers()  # the UI's event loop put back SIG_DFL
            return code
        if not plan.headless:
            _say("no terminal: running headless")
        return _headless(engine, r.sandbox, plan.json)


def run(args: argparse.Namespace, cfg: Any = None) -> int:
    """`canary-console demo`; ``cfg`` (the operator's own config) is not used: the demo
    writes and loads its own."""
    try:
        plan = Plan.from_args(args)
    except UsageError as e:
        print(f"canary-console demo: {e}", file=sys.stderr)
        return EXIT_USAGE
    sb = Sandbox(keep=plan.keep, progress=_say)
    try:
        with sb:
            try:
                running = start_sandbox(sb, plan, _say)
            except StartFailed as e:
                print(f"canary-console demo: {e}", file=sys.stderr, flush=True)
                return EXIT_PRECONDITION
            code = drive(running, plan)
            _say("stopping the sandbox...")
            return code
    except SandboxInterrupted as e:
        _say(f"{e.signame}: the sandbox is stopped")
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        _say("interrupted: the sandbox is stopped")
        return EXIT_INTERRUPTED
    finally:
        n = len(sb.children)
        where = f"kept {sb.root}" if plan.keep else f"removed {sb.root}"
        if plan.keep and n:
            where += f" (journal: canary-console --config {sb.root / 'canary.toml'} history)"
        if n or plan.keep:
            _say(f"stopped {n} process{'es' if n != 1 else ''}; {where}")
