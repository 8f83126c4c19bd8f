"""How fast is a rollback, from the moment it is asked for until nginx verifiably serves 0%?

Starts a real nginx (2 workers, console.sandbox.nginx_local) in front of two loopback backends in a
temporary directory, writes a canary.toml for it, sets 25% canary, then measures N runs of:

  (a) cli     `canary-console --config X rollback --reason bench` as a subprocess, from
              process start until it says nginx verifiably serves 0% (its "rolled back:"
              line; until it exits is shown too: an incident report may follow the line);
  (b) bare    the floor: atomic write + `nginx -t` + `nginx -s reload` + the same verification;
  (c) engine  in process: an Engine with the real NginxRouter observing at 25%,
              `engine.submit(Intent("rollback", ...))` until the RouterApplied(0%) event.

(a) runs again on the journal of a long-lived install (40 deployments of 240 checks), with and
without the fold checkpoint beside it (console/core/checkpoint.py).

(a) and (b) run interleaved, run by run, so a load that comes and goes weighs on both alike.
Between runs 25% is restored with the router directly (not timed).  Targets: (a) median
<= 1.5x (b) (issue 15: a synchronous rollback path, no asyncio), (c) median <= 3x (b).

In the same run, the same three against nginx in Docker, the guide's way
(docs/nginx-docker.md): a dockerd of its own (tests/fixtures/dockerd.py), the Debian nginx
imported as an image and run as ``fragrance-ai-nginx-<random>`` with ``--network host``, conf.d
bind-mounted, changed through ``docker exec <name> nginx -t`` / ``nginx -s reload`` and
confirmed through ``[nginx] verify_listen``.  Without dockerd (or root, or the docker CLI) one
line says the Docker path was skipped and why; ``--no-docker`` skips it on purpose.

And a fleet ([[nginx.hosts]], docs/router.md "Fleet"): three real nginx, each in its own network
namespace (tests/fixtures/netns.py), rolled back from 25% to 0% by a FleetRouter until every
host confirms, against one of those hosts alone (an NginxRouter), interleaved run by run in the
same process; the ratio of the medians has a target of <= 1.5.  Without root or `ip` one line
says it was skipped; ``--no-fleet`` skips it on purpose.

Everything started here is stopped on every exit path: nginx, backends, the container,
dockerd, the temp dirs.

    .venv/bin/python bench/rollback.py [--runs 20] [--json] [--no-docker] [--no-fleet]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from console.adapters.nginx.router import (  # noqa: E402
    NginxRouter,
    render_upstream,
    run_command,
    verify_generation,
    write_atomic,
)
from console.sandbox.nginx_local import LocalNginx  # noqa: E402
from tests.fixtures.backends import Backends, start_backends  # noqa: E402
from tests.fixtures.nginx import UPSTREAM_NAME, NginxEnv, get_text, write_canary_toml  # noqa: E402
from tests.fixtures.real import free_port  # noqa: E402

TARGET_CLI_RATIO = 1.5  # (a) / (b)
TARGET_ENGINE_RATIO = 3.0
TARGET_FLEET_RATIO = 1.5


def _cli() -> str:
    found = Path(sys.executable).parent / "canary-console"
    if found.exists():
        return str(found)
    which = shutil.which("canary-console")
    if not which:
        raise SystemExit("bench/rollback.py: canary-console is not installed; run scripts/setup test")
    return which


def _stats(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples)
    p95 = ms[min(len(ms) - 1, max(0, round(0.95 * len(ms)) - 1))]
    return {"median_ms": round(statistics.median(ms), 1), "p95_ms": round(p95, 1), "min_ms": round(ms[0], 1),
            "max_ms": round(ms[-1], 1), "runs": len(ms)}


class Bench:
    def __init__(self, env: NginxEnv, toml: Path, runs: int, router: NginxRouter | None = None) -> None:
        self.env = env
        self.toml = toml
        self.runs = runs
        self.router = router or env.router(verify_timeout=10.0)
        self.n = 0
        self.steps: dict[str, list[float]] = {"test": [], "reload": [], "verify": []}  # of (b), per step
        self.cli_apply: list[float] = []  # of (a): router.apply, as the CLI reports it
        self.cli_exit: list[float] = []  # of (a): until the process exited

    def gen(self, tag: str) -> str:
        self.n += 1
        return f"bench-{tag}-{self.n}"

    async def at_25(self) -> None:
        await self.router.apply(25, self.gen("reset"))

    def check_zero(self, what: str) -> None:
        """Outside the timing: the file says 0% and nginx serves exactly that file."""
        served = get_text(self.router.verify_url)[1]
        if self.router.current_weight() != 0 or served != self.router.current_generation():
            weight = self.router.current_weight()
            raise SystemExit(f"bench/rollback.py: after {what} nginx serves {served!r}, file weight {weight}")

    async def cli(self, runs: int | None = None) -> list[float]:
        argv = [_cli(), "--config", str(self.toml), "rollback", "--reason", "bench"]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # as an operator's shell has it
        if not self.cli_apply and not self.cli_exit:
            subprocess.run(argv, capture_output=True, env=env, timeout=60)  # warm-up: byte-compile, page cache
        out: list[float] = []
        for _ in range(self.runs if runs is None else runs):
            await self.at_25()
            took, took_exit, code, stdout, stderr = await asyncio.to_thread(_until_line, argv, env, "rolled back:")
            if code != 0:
                raise SystemExit(f"bench/rollback.py: canary-console rollback exited {code}: {stderr.strip()}")
            out.append(took)
            self.cli_exit.append(took_exit)
            m = re.search(r"verified in (\d+(?:\.\d+)?) ms", stdout)
            if m:
                self.cli_apply.append(float(m.group(1)) / 1000)
            self.check_zero("the CLI rollback")
        return out

    async def bare(self, runs: int | None = None) -> list[float]:
        r = self.router
        out = []
        for _ in range(self.runs if runs is None else runs):
            await self.at_25()
            gen = self.gen("bare")
            t0 = time.perf_counter()
            write_atomic(r.upstream_file, r.render(0, gen).encode())  # with the verify_listen server, if any
            for step, argv in (("test", r.test_command), ("reload", r.reload_command)):
                t1 = time.perf_counter()
                rc, text = await run_command(argv, 15.0)
                self.steps[step].append(time.perf_counter() - t1)
                if rc != 0:
                    raise SystemExit(f"bench/rollback.py: {' '.join(argv)} failed: {text}")
            t1 = time.perf_counter()
            await verify_generation(r.verify_url, gen, 10.0)
            self.steps["verify"].append(time.perf_counter() - t1)
            out.append(time.perf_counter() - t0)
            self.check_zero("the bare write/test/reload")
        return out

    async def engine(self) -> list[float]:
        from console.core import events as ev
        from console.core.engine import Engine, Settings
        from console.core.journal import Journal

        journal = Journal(self.toml.parent / ".canary" / "bench-engine.jsonl")
        out = []
        try:
            for _ in range(self.runs):
                settings = Settings(stages=[25, 100], observation_period=3600.0, check_interval=3600.0)
                engine = Engine(settings, version="v0.0.0-bench", router=self.router, journal=journal)
                q = engine.subscribe()
                task = asyncio.ensure_future(engine.run())
                try:
                    await _until(q, lambda e: isinstance(e, ev.StageStarted) and e.weight == 25, task)
                    t0 = time.perf_counter()
                    engine.submit(ev.Intent("rollback", ev.Operator.current(), reason="bench"))
                    await _until(q, lambda e: isinstance(e, ev.RouterApplied) and e.weight == 0, task)
                    out.append(time.perf_counter() - t0)
                    code = await asyncio.wait_for(task, 30)
                    if code != 3:
                        raise SystemExit(f"bench/rollback.py: the engine ended with {code}, expected 3 (rolled back)")
                finally:
                    if not task.done():
                        task.cancel()
                        await asyncio.gather(task, return_exceptions=True)
                self.check_zero("the engine rollback")
        finally:
            journal.close()
        return out


def _until_line(argv: list[str], env: dict[str, str], line: str) -> tuple[float, float, int, str, str]:
    """Run argv; (seconds until a stdout line starts with ``line``, seconds until it exited, its
    exit code, stdout, stderr).  Without that line the first figure is the exit's."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen: float | None = None
    lines = []
    try:
        assert proc.stdout is not None and proc.stderr is not None
        for text in proc.stdout:
            if seen is None and text.startswith(line):
                seen = time.perf_counter() - t0
            lines.append(text)
        proc.wait(60)
        ended = time.perf_counter() - t0
        return seen if seen is not None else ended, ended, proc.returncode, "".join(lines), proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()


async def _until(q: asyncio.Queue[Any], pred: Any, task: asyncio.Future[Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        if task.done() and q.empty():
            raise SystemExit(f"bench/rollback.py: the engine ended early with {task.result()!r}")
        try:
            e = await asyncio.wait_for(q.get(), max(0.01, deadline - time.monotonic()))
        except TimeoutError:
            raise SystemExit("bench/rollback.py: timed out waiting for an engine event") from None
        if pred(e):
            return e


async def measure_variants(b: Bench) -> dict[str, Any]:
    cli: list[float] = []
    bare: list[float] = []
    for _ in range(b.runs):  # interleaved, run by run
        cli += await b.cli(1)
        bare += await b.bare(1)
    results: dict[str, Any] = {"cli": _stats(cli), "cli_exit": _stats(b.cli_exit)}
    if b.cli_apply:
        results["cli_apply"] = _stats(b.cli_apply)
    results["bare"] = _stats(bare)
    results["cli_over_bare"] = round(results["cli"]["median_ms"] / results["bare"]["median_ms"], 2)
    for step, samples in b.steps.items():
        results[f"bare_{step}"] = _stats(samples)
    results["engine"] = _stats(await b.engine())
    results["engine_over_bare"] = round(results["engine"]["median_ms"] / results["bare"]["median_ms"], 2)
    return results


async def measure(env: NginxEnv, toml: Path, runs: int) -> dict[str, Any]:
    results = await measure_variants(Bench(env, toml, runs))
    results["targets"] = {
        "cli/bare<=1.5": results["cli_over_bare"] <= TARGET_CLI_RATIO,
        "engine/bare<=3": results["engine_over_bare"] <= TARGET_ENGINE_RATIO,
    }
    results["setup"] = {
        "nginx_workers": env.nginx.worker_processes,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    return results


async def measure_long_journal(b: Bench, deployments_n: int = 40, checks: int = 120) -> dict[str, Any]:
    """(a) again with the journal of a long-lived install: ``deployments_n`` deployments of
    2 x ``checks`` checks (240 a deployment: four 15-minute stages at the default 15 s interval,
    three gates each) before an open one.  Interleaved, run by run: with no fold checkpoint
    (the first rollback after it is deleted, which folds all and writes one) and with the
    checkpoint the one before wrote (console/core/checkpoint.py)."""
    from console.core import checkpoint
    from console.core.config import load_config
    from tests.fixtures.journal import long_journal

    jp = load_config(b.toml, environ={}).journal_path
    jp.unlink(missing_ok=True)
    long_journal(jp, deployments_n, checks)
    long_journal(jp, 1, checks, start=deployments_n, open_last=True)
    size, records = jp.stat().st_size, sum(1 for _ in jp.open("rb"))
    cold: list[float] = []
    warm: list[float] = []
    for _ in range(b.runs):
        checkpoint.path_for(jp).unlink(missing_ok=True)
        cold += await b.cli(1)
        warm += await b.cli(1)
    return {"records": records, "bytes": size, "no_checkpoint": _stats(cold), "checkpoint": _stats(warm)}


# --------------------------------------------------------------------------- nginx in Docker


def docker_missing() -> str:
    """Why the Docker path cannot run here, in a few words ("" = it can)."""
    from tests.fixtures.nginx_docker import MIME_TYPES, NGINX_BIN

    for name in ("dockerd", "containerd", "runc", "docker", "ldd"):
        if not (shutil.which(name) or any(os.path.exists(f"{d}/{name}") for d in ("/usr/sbin", "/usr/bin", "/sbin"))):
            return f"`{name}` is not installed"
    if os.geteuid() != 0:
        return "dockerd needs root"
    if not (os.path.isfile(NGINX_BIN) and os.path.isfile(MIME_TYPES)):
        return f"{NGINX_BIN} or {MIME_TYPES} is missing (apt-get install nginx-light)"
    return ""


def _binary(name: str) -> str:
    return shutil.which(name) or next(p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}", f"/sbin/{name}")
                                      if os.path.exists(p))


def measure_docker(backends: Backends, runs: int) -> dict[str, Any]:
    """The same variants against nginx in a container; {"skipped": why} when it cannot run."""
    why = docker_missing()
    if why:
        return {"skipped": why}
    from tests.fixtures.dockerd import DockerdStartError, start_dockerd
    from tests.fixtures.nginx_docker import cleanup_docker_nginx_env, start_docker_nginx_env, write_docker_canary_toml

    try:
        d = start_dockerd(_binary("dockerd"))
    except DockerdStartError as e:
        return {"skipped": f"dockerd did not start ({str(e).splitlines()[0]})"}
    saved_host = os.environ.get("DOCKER_HOST")
    env: NginxEnv | None = None
    try:
        os.environ["DOCKER_HOST"] = d.host  # for `docker exec` in run_command and in the CLI's subprocess
        env = start_docker_nginx_env(d, backends)
        toml = write_docker_canary_toml(env.dir / "canary.toml", env, metrics={"source": "scrape"})
        from console.core.config import load_config

        router = NginxRouter.from_config(load_config(toml, environ={}))  # verify_url: the verify_listen server
        b = Bench(env, toml, runs, router)
        results = asyncio.run(measure_variants(b))
        exec_alone = []
        for _ in range(runs):
            t0 = time.perf_counter()
            rc, text = asyncio.run(run_command(["docker", "exec", env.nginx.name, "true"], 15.0))
            exec_alone.append(time.perf_counter() - t0)
            if rc != 0:
                raise SystemExit(f"bench/rollback.py: docker exec true failed: {text}")
        results["docker_exec_true"] = _stats(exec_alone)
        results["setup"] = {"container": env.nginx.name, "network": "host", "nginx_workers": env.nginx.worker_processes,
                            "test_command": router.test_command, "reload_command": router.reload_command,
                            "verify_url": router.verify_url}
        return results
    finally:
        if env is not None:
            cleanup_docker_nginx_env(env)
        if saved_host is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = saved_host
        d.cleanup()


# --------------------------------------------------------------------------- a fleet of three


def measure_fleet(runs: int, hosts: int = 3) -> dict[str, Any]:
    """The confirmed rollback 25% -> 0% of ``hosts`` nginx (FleetRouter, each host in its own network
    namespace) against one of them alone (NginxRouter), interleaved; {"skipped": why} when it cannot run."""
    if os.geteuid() != 0:
        return {"skipped": "network namespaces need root"}
    for name in ("ip", "nginx"):
        if not (shutil.which(name) or any(os.path.exists(f"{d}/{name}") for d in ("/usr/sbin", "/sbin"))):
            return {"skipped": f"`{name}` is not installed"}
    from tests.fixtures.netns import start_fleet

    tmp = Path(tempfile.mkdtemp(prefix="canary-bench-fleet-"))
    try:
        with start_fleet(tmp, hosts) as fleet:
            fleet_router = fleet.router(**{h.name: {"verify_timeout": 10.0} for h in fleet.hosts})
            one = fleet_router.hosts[0][1]  # edge-1 alone: the same nginx, the same namespace
            one_s: list[float] = []
            all_s: list[float] = []

            async def go() -> None:
                for i in range(runs):
                    for router, out, tag in ((one, one_s, "one"), (fleet_router, all_s, "all")):
                        await fleet_router.apply(25, f"bench-fleet-reset-{tag}-{i}")
                        t0 = time.perf_counter()
                        await router.apply(0, f"bench-fleet-{tag}-{i}")
                        out.append(time.perf_counter() - t0)
                        if router.current_weight() != 0:
                            raise SystemExit(f"bench/rollback.py: after the {tag} rollback a file is not at 0%")

            asyncio.run(go())
            one_stats, all_stats = _stats(one_s), _stats(all_s)
            return {"one_host": one_stats, "fleet": all_stats, "hosts": hosts,
                    "fleet_over_one": round(all_stats["median_ms"] / one_stats["median_ms"], 2),
                    "target": {f"fleet/one<={TARGET_FLEET_RATIO:g}":
                               all_stats["median_ms"] / one_stats["median_ms"] <= TARGET_FLEET_RATIO},
                    "setup": {"nginx_workers": fleet.hosts[0].nginx.worker_processes,
                              "addresses": [h.ip for h in fleet.hosts], "load_average_1m": round(os.getloadavg()[0], 2)}}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- dynamic mode (issue 17)

TARGET_DYNAMIC_MS = 20.0


class DynamicBench(Bench):
    """Bench in ``[nginx] mode = "dynamic"``: 0% is confirmed on the endpoint, not verify_url."""

    def check_zero(self, what: str) -> None:
        status, body = get_text(self.router.dynamic_url)  # blocking: it runs inside the engine's loop
        if self.router.current_weight() != 0 or status != 200 or body.split()[1:2] != ["0"]:
            raise SystemExit(f"bench/rollback.py: after {what} the dynamic endpoint answers {status} {body!r}")


def _dropped_per_change(env: Any, mode: str, changes: int = 10, clients: int = 50) -> dict[str, Any]:
    """50 keep-alive clients while the router makes ``changes`` weight changes (the last one to
    0%): the failed requests per change."""
    from tests.fixtures.dynamic import Load

    r = env.router(mode=mode, verify_timeout=10.0)
    asyncio.run(r.apply(0, f"bench-load-{mode}-start"))
    weights = [(1, 5, 10, 25, 50)[i % 5] for i in range(changes - 1)] + [0]
    with Load(env.nginx.listen_host, env.nginx.listen_port, clients=clients) as load:

        async def go() -> None:
            for i, w in enumerate(weights):
                await asyncio.sleep(0.5)  # pacing between changes, under load
                await r.apply(w, f"bench-load-{mode}-{i}")

        asyncio.run(go())
    failed = sum(load.failures.values())
    return {"requests": load.total, "failed": failed, "changes": changes, "failed_per_change": round(failed / changes, 2),
            "failures": dict(load.failures)}


def measure_dynamic(backends: Backends, runs: int, reload_engine_ms: float | None) -> dict[str, Any]:
    """The in-process Engine rollback in dynamic mode (target: median <= 20 ms) and its ratio to
    the reload-mode figure, and the requests dropped per weight change under keep-alive load in
    each mode, on one nginx with the Lua module."""
    from tests.fixtures.dynamic import LUA_MODULE, start_dynamic_env

    if not LUA_MODULE.exists():
        return {"skipped": f"{LUA_MODULE} is missing (apt-get install libnginx-mod-http-lua lua-resty-core)"}
    tmp = Path(tempfile.mkdtemp(prefix="canary-bench-dynamic-"))
    env = None
    try:
        env = start_dynamic_env(tmp, backends)
        toml = write_canary_toml(tmp / "canary.toml", env, metrics={"source": "scrape"},
                                 nginx={"mode": "dynamic", "dynamic_listen": env.dynamic_listen})
        b = DynamicBench(env, toml, runs, env.router(verify_timeout=10.0))
        asyncio.run(b.router.apply(25, "bench-dynamic-first"))  # the file is a dynamic one, nginx loaded it
        engine = _stats(asyncio.run(b.engine()))
        out: dict[str, Any] = {"engine": engine, "target": {f"engine<={TARGET_DYNAMIC_MS:g}ms":
                                                              engine["median_ms"] <= TARGET_DYNAMIC_MS}}
        if reload_engine_ms:
            out["engine_over_reload_engine"] = round(engine["median_ms"] / reload_engine_ms, 3)
        out["load"] = {mode: _dropped_per_change(env, mode) for mode in ("dynamic", "reload")}
        out["load_average_1m"] = round(os.getloadavg()[0], 2)
        return out
    finally:
        if env is not None:
            env.nginx.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def print_dynamic(d: dict[str, Any], reload_engine: dict[str, Any] | None) -> None:
    print("dynamic mode ([nginx] mode = \"dynamic\", no reload):")
    if "skipped" in d:
        print(f"  skipped: {d['skipped']}")
        return
    e = d["engine"]
    ratio = d.get("engine_over_reload_engine")
    vs = f"; {ratio:.3f}x the reload-mode (c) median of {reload_engine['median_ms']:.1f} ms" if ratio and reload_engine else ""
    ok = "met" if e["median_ms"] <= TARGET_DYNAMIC_MS else "MISSED"
    print(f"  (c) in-process Engine rollback: median {e['median_ms']:.1f} ms  p95 {e['p95_ms']:.1f} ms "
          f"(target <= {TARGET_DYNAMIC_MS:g} ms: {ok}){vs}")
    for mode, x in d["load"].items():
        print(f"  50 keep-alive clients, {x['changes']} changes, {mode:>7} mode: {x['failed']} of {x['requests']} requests "
              f"failed = {x['failed_per_change']} per change {x['failures'] or ''}".rstrip())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="time a rollback to 0% against a real nginx, on loopback and in Docker")
    ap.add_argument("--runs", type=int, default=20, help="runs per variant (default 20)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument("--no-docker", action="store_true", help="skip the nginx-in-Docker path")
    ap.add_argument("--no-fleet", action="store_true", help="skip the fleet of three (network namespaces)")
    ap.add_argument("--no-dynamic", action="store_true", help="skip dynamic mode (nginx with the Lua module)")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error(f"--runs {args.runs} is not valid; allowed: an integer >= 1")

    def on_term(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally below

    signal.signal(signal.SIGTERM, on_term)
    tmp = Path(tempfile.mkdtemp(prefix="canary-bench-"))
    backends: Backends | None = None
    nginx: LocalNginx | None = None
    try:
        backends = start_backends()
        prefix = tmp / "nginx"
        (prefix / "conf.d").mkdir(parents=True)
        upstream = prefix / "conf.d" / "upstream.conf"
        upstream.write_text(render_upstream(UPSTREAM_NAME, backends.production.address, backends.canary.address, 0, "initial"))
        nginx = LocalNginx(prefix, free_port(), upstream, prefix / "logs" / "canary.log", UPSTREAM_NAME, 2)
        nginx.start()
        env = NginxEnv(nginx, backends, upstream, UPSTREAM_NAME, tmp)
        toml = write_canary_toml(tmp / "canary.toml", env, metrics={"source": "scrape"})
        results = asyncio.run(measure(env, toml, args.runs))
        results["long_journal"] = asyncio.run(measure_long_journal(Bench(env, toml, args.runs)))
        nginx.stop()  # before the container takes the stage: one nginx at a time on this machine
        results["docker"] = {"skipped": "--no-docker"} if args.no_docker else measure_docker(backends, args.runs)
        results["fleet"] = {"skipped": "--no-fleet"} if args.no_fleet else measure_fleet(args.runs)
        results["dynamic"] = ({"skipped": "--no-dynamic"} if args.no_dynamic else
                              measure_dynamic(backends, args.runs, results["engine"]["median_ms"]))
    finally:
        if nginx is not None:
            nginx.stop()
        if backends is not None:
            backends.canary.stop()
            backends.production.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_table(results, args.runs)
        print_dynamic(results["dynamic"], results.get("engine"))
    return 0


def print_table(results: dict[str, Any], runs: int) -> None:
    docker = results.get("docker", {})
    skipped = docker.get("skipped")
    print(f"rollback to 0% until nginx verifiably serves it; {runs} runs each, nginx with 2 workers")
    head = f"  {'':<46} {'loopback nginx':<34}"
    if not skipped:
        head += f"   {'nginx in Docker (docker exec)':<34}"
    print(head.rstrip())
    labels = {
        "cli": "(a) canary-console rollback (subprocess)",
        "cli_apply": "    of which router.apply, as the CLI reports",
        "cli_exit": "    until the process exited",
        "bare": "(b) write + nginx -t + reload + verify",
        "bare_test": "    of which the test command",
        "bare_reload": "    of which the reload command",
        "bare_verify": "    of which the verification",
        "engine": "(c) in-process Engine rollback",
        "docker_exec_true": "    `docker exec <name> true` alone",
    }

    def cell(r: dict[str, Any] | None) -> str:
        if r is None:
            return f"{'-':<34}"
        return f"median {r['median_ms']:7.1f} ms  p95 {r['p95_ms']:7.1f} ms"

    for key, label in labels.items():
        if key not in results and (skipped or key not in docker):
            continue
        line = f"  {label:<46} {cell(results.get(key))}"
        if not skipped:
            line += f"   {cell(docker.get(key))}"
        print(line.rstrip())
    print(f"  (a)/(b) = {results['cli_over_bare']:.2f}   (c)/(b) = {results['engine_over_bare']:.2f}   targets (loopback): "
          f"(a) <= {TARGET_CLI_RATIO:g}x (b): {'met' if results['targets']['cli/bare<=1.5'] else 'MISSED'}; "
          f"(c) <= {TARGET_ENGINE_RATIO:g}x (b): "
          f"{'met' if results['targets']['engine/bare<=3'] else 'MISSED'}")
    lj = results.get("long_journal")
    if lj:
        bare = results["bare"]["median_ms"]
        print(f"  (a) with a long journal ({lj['records']:,} records, {lj['bytes'] / 1e6:.1f} MB; the last deployment open):")
        for key, label in (("no_checkpoint", "no fold checkpoint yet"), ("checkpoint", "past the fold checkpoint")):
            x = lj[key]
            print(f"      {label:<42} median {x['median_ms']:7.1f} ms  p95 {x['p95_ms']:7.1f} ms  "
                  f"= {x['median_ms'] / bare:.2f}x (b)")
    if skipped:
        print(f"  nginx in Docker: skipped ({skipped})")
    else:
        s = docker["setup"]
        print(f"  nginx in Docker: container {s['container']} (--network host), (a)/(b) = {docker['cli_over_bare']:.2f}, "
              f"(c)/(b) = {docker['engine_over_bare']:.2f};")
        print(f"    {' '.join(s['test_command'])} / {' '.join(s['reload_command'][-2:])}; verified at {s['verify_url']}")
    fleet = results.get("fleet", {})
    if fleet.get("skipped"):
        print(f"  fleet: skipped ({fleet['skipped']})")
    elif fleet:
        met = "met" if all(fleet["target"].values()) else "MISSED"
        print("  fleet, confirmed rollback 25% -> 0% (each nginx in its own network namespace, interleaved):")
        for key, label in (("one_host", "one host (NginxRouter)"), ("fleet", f"{fleet['hosts']} hosts (FleetRouter)")):
            print(f"    {label:<28} median {fleet[key]['median_ms']:7.1f} ms  p95 {fleet[key]['p95_ms']:7.1f} ms")
        print(f"    {fleet['hosts']} hosts / one host = {fleet['fleet_over_one']:.2f}   target <= {TARGET_FLEET_RATIO:g}x: {met}")


if __name__ == "__main__":
    sys.exit(main())
