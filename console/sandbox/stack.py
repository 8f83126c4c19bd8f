"""Starting the sandbox's processes, in dependency order: the production and canary demo
services, nginx in front of them, Prometheus scraping both (when installed), the traffic
through nginx, and the probe traffic straight to the canary (``Probes``: see the package docstring).

Every process is a child of the supervisor (console/sandbox/supervisor.py), so it stops on
every exit path; a piece that cannot start is a ``StartFailed`` (one line: what, and what to do).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from console.core import events as ev
from console.sandbox.plan import CANARY_VERSION, PRODUCTION_VERSION, UPSTREAM_NAME, Plan
from console.sandbox.supervisor import Child, PortTaken, Sandbox, StartFailed, free_port, port_free, port_taken_line

MODES = ("fast", "balanced", "creative")
RL_LOSS = {"production": 0.42, "canary": 0.40}  # both report it, so the RL-loss gate is live
WARMUP_PER_MODE = 10  # [rollout] warmup_requests = this many per mode (config_writer.py)
PROBES_PER_MODE = 4  # per mode per observation period, straight to the canary from stage 1 on
SCRAPE_JOB = "canary-demo"
START_TIMEOUT = 30.0


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
    root = str(Path(__file__).resolve().parents[2])  # the directory that holds the console package
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


class Probes:
    """Engine listener: when stage 1 starts, requests straight to the canary, every mode in turn,
    ``PROBES_PER_MODE`` per mode per observation period, until the sandbox stops (a QA probe on
    the canary).  The demo's rates are low: at 20 requests/s a 1% stage sends the canary one
    request every 5 s, and a mode can see none within a 30 s observation (see the package
    docstring); the warm-up ([rollout] warmup_requests) cannot fill that gap, because the gates
    leave it out of their samples like any deploy's."""

    def __init__(self, sb: Sandbox, canary_url: str, observation: float) -> None:
        self.sb = sb
        self.canary_url = canary_url
        self.rps = PROBES_PER_MODE * len(MODES) / observation
        self.started = False

    def __call__(self, e: ev.Event) -> None:
        if self.started or not isinstance(e, ev.StageStarted) or e.shadow:
            return
        self.started = True
        from console.sandbox.traffic import BackgroundTraffic

        bg = BackgroundTraffic(self.canary_url, rps=self.rps, mix=dict.fromkeys(MODES, 1.0), max_seconds=7 * 24 * 3600,
                               drain=1.0, timeout=10.0, paced=True)
        self.sb.on_close(bg.stop)
        bg.start()
