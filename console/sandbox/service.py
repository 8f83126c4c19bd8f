"""A stand-in for the Fragrance AI app: the seed's endpoints and metric contract, with faults.

The tests and the demo sandbox run it as a real process on a real ASGI server, so the console
is exercised against real HTTP, real Prometheus scrapes and real process lifecycles:

    python -m console.sandbox.service --port 8001 --version 0.2.0 --deployment canary \
        [--error-rate 0.05] [--latency fast=3.0] [--schema-failure-rate 0.1] [--rl-loss 0.4] [--unhealthy]

Every flag also reads an environment variable (DEMO_PORT, DEMO_VERSION, DEMO_DEPLOYMENT,
DEMO_ERROR_RATE, DEMO_LATENCY, DEMO_BASE_LATENCY, DEMO_SCHEMA_FAILURE_RATE, DEMO_RL_LOSS,
DEMO_UNHEALTHY, DEMO_SEED, DEMO_HOST); a flag wins over its variable.

Faults are deterministic so that a test asserts exact figures: an error rate of 0.05 fails
exactly one request in twenty (an accumulator, not a coin), and so does a schema-failure rate.
``POST /admin/faults`` (loopback clients only) changes them at run time.

uvicorn and starlette (the ``demo`` extra) are imported only here, never by the console itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

MODES = ("fast", "balanced", "creative")
DEPLOYMENTS = ("production", "canary")
DEFAULT_BASE_LATENCY = {"fast": 0.01, "balanced": 0.02, "creative": 0.03}
DEFAULT_MODELS = "gpt-3.5-turbo,claude-3-haiku,gemini-pro"
# le edges bracket every seed threshold (2.5 / 3.2 / 4.5 s) and the demo's tens-of-ms base latency
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.2, 4.0, 4.5, 5.0, 7.5, 10.0, math.inf)
FAULT_KEYS = ("error_rate", "latency", "schema_failure_rate", "schema_failures", "rl_loss", "unhealthy", "metrics_down")
LOOPBACK = ("127.0.0.1", "::1", "localhost")
FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")

FAMILIES = {
    "citrus": ["bergamot", "lemon", "grapefruit", "yuzu", "mandarin"],
    "floral": ["rose", "jasmine", "iris", "neroli", "tuberose"],
    "woody": ["cedar", "sandalwood", "vetiver", "oud", "patchouli"],
    "amber": ["vanilla", "benzoin", "labdanum", "tonka", "myrrh"],
    "fresh": ["mint", "sea salt", "green tea", "cucumber", "basil"],
}


class BadInput(ValueError):
    """One line: what, where, what is allowed."""


# --------------------------------------------------------------------------- faults


@dataclass
class Faults:
    """What is wrong with this process right now.  Rates are deterministic (accumulators)."""

    error_rate: float = 0.0
    latency: dict[str, float] = field(default_factory=dict)  # seconds added per mode
    schema_failure_rate: float = 0.0
    schema_failures: int = 0  # one-shot: the next N briefs fail schema validation
    rl_loss: float | None = None
    unhealthy: bool = False
    metrics_down: bool = False  # /metrics answers 503 (an exporter that broke)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rate(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= float(v) <= 1.0:
        raise BadInput(f"{where} = {v!r} is not valid; allowed: a number within 0..1")
    return float(v)


def _seconds(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0 or v > 600:
        raise BadInput(f"{where} = {v!r} is not valid; allowed: seconds within 0..600")
    return float(v)


def parse_mode_seconds(text: str, where: str) -> dict[str, float]:
    """``fast=3.0,balanced=0.5`` -> {mode: seconds}; a bare number applies to every mode."""
    text = text.strip()
    if not text:
        return {}
    allowed = f"MODE=SECONDS[,MODE=SECONDS...] with MODE in {', '.join(MODES)}, or one number for all modes"
    try:
        return {m: _seconds(float(text), where) for m in MODES}
    except ValueError:
        pass
    out: dict[str, float] = {}
    for part in text.split(","):
        mode, sep, value = part.partition("=")
        mode = mode.strip()
        if not sep or mode not in MODES:
            raise BadInput(f"{where} = {text!r} is not valid; allowed: {allowed}")
        try:
            out[mode] = _seconds(float(value), where)
        except ValueError:
            raise BadInput(f"{where} = {text!r} is not valid; allowed: {allowed}") from None
    return out


def apply_fault_update(faults: Faults, body: Any) -> Faults:
    """Merge a ``POST /admin/faults`` body into ``faults`` (validated first: all or nothing).

    ``{"clear": true}`` first resets every fault to healthy (RL loss back to its start-up value
    is the caller's job); other keys are then applied on top."""
    if not isinstance(body, dict):
        raise BadInput(f"body = {body!r} is not valid; allowed: a JSON object with keys clear, {', '.join(FAULT_KEYS)}")
    unknown = sorted(set(body) - set(FAULT_KEYS) - {"clear"})
    if unknown:
        raise BadInput(f"unknown fault {unknown[0]!r}; allowed: clear, {', '.join(FAULT_KEYS)}")
    new = Faults(**faults.to_dict()) if not body.get("clear") else Faults(rl_loss=faults.rl_loss)
    if "error_rate" in body:
        new.error_rate = _rate(body["error_rate"], "error_rate")
    if "schema_failure_rate" in body:
        new.schema_failure_rate = _rate(body["schema_failure_rate"], "schema_failure_rate")
    if "schema_failures" in body:
        v = body["schema_failures"]
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise BadInput(f"schema_failures = {v!r} is not valid; allowed: an integer >= 0 (the next N briefs fail)")
        new.schema_failures = v
    if "latency" in body:
        v = body["latency"]
        if isinstance(v, int | float) and not isinstance(v, bool):
            new.latency = {m: _seconds(v, "latency") for m in MODES}
        elif isinstance(v, str):
            new.latency = parse_mode_seconds(v, "latency")
        elif isinstance(v, dict) and all(k in MODES for k in v):
            new.latency = {k: _seconds(x, f"latency.{k}") for k, x in v.items() if x}
        else:
            raise BadInput(f"latency = {v!r} is not valid; allowed: {{mode: seconds}} with mode in {', '.join(MODES)}")
    if "rl_loss" in body:
        v = body["rl_loss"]
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or v < 0):
            raise BadInput(f"rl_loss = {v!r} is not valid; allowed: a number >= 0, or null to stop reporting it")
        new.rl_loss = None if v is None else float(v)
    for key in ("unhealthy", "metrics_down"):
        if key in body:
            if not isinstance(body[key], bool):
                raise BadInput(f"{key} = {body[key]!r} is not valid; allowed: true or false")
            setattr(new, key, body[key])
    return new


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    version: str = "0.1.0"
    deployment: str = "production"
    base_latency: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_BASE_LATENCY))
    faults: Faults = field(default_factory=Faults)
    seed: int | None = None
    ensemble_enabled: bool = False
    ensemble_models: tuple[str, ...] = ()
    ensemble_voting: str = "weighted"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + error
        self.exit(2, f"demo_service: {message}; see --help\n")


def _env_bool(v: str, where: str) -> bool:
    lv = v.strip().lower()
    if lv not in ("1", "0", "true", "false", "yes", "no", ""):
        raise BadInput(f"{where} = {v!r} is not valid; allowed: true or false")
    return lv in ("1", "true", "yes")


def parse_args(argv: list[str] | None, environ: dict[str, str] | None = None) -> Settings:
    """Flags over env over defaults; raises BadInput with one line on a bad value."""
    env = dict(os.environ if environ is None else environ)
    p = _Parser(prog="python -m console.sandbox.service", description="Fragrance AI stand-in for canary-console demos and tests")
    p.add_argument("--host", default=env.get("DEMO_HOST", "127.0.0.1"))
    p.add_argument("--port", default=env.get("DEMO_PORT", "8000"))
    p.add_argument("--version", default=env.get("DEMO_VERSION", "0.1.0"))
    p.add_argument("--deployment", default=env.get("DEMO_DEPLOYMENT", "production"), help="production or canary")
    p.add_argument("--error-rate", default=env.get("DEMO_ERROR_RATE", "0"), help="share of requests answered 500 (0..1)")
    p.add_argument("--latency", default=env.get("DEMO_LATENCY", ""), help="added seconds per mode: fast=3.0,balanced=0.5")
    p.add_argument("--base-latency", default=env.get("DEMO_BASE_LATENCY", ""), help="base seconds per mode (default tens of ms)")
    p.add_argument("--schema-failure-rate", default=env.get("DEMO_SCHEMA_FAILURE_RATE", "0"), help="share of invalid briefs")
    p.add_argument("--rl-loss", default=env.get("DEMO_RL_LOSS", ""), help="report rl_training_loss with this value")
    p.add_argument("--unhealthy", action="store_true", default=None, help="/health answers 503")
    p.add_argument("--seed", default=env.get("DEMO_SEED", ""), help="seed of the latency jitter")
    a = p.parse_args(argv)

    def num(v: str, where: str) -> float:
        try:
            return float(v)
        except ValueError:
            raise BadInput(f"{where} = {v!r} is not valid; allowed: a number") from None

    try:
        port = int(a.port)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise BadInput(f"--port = {a.port!r} is not valid; allowed: an integer within 0..65535")
    if a.deployment not in DEPLOYMENTS:
        raise BadInput(f"--deployment = {a.deployment!r} is not valid; allowed: {' or '.join(DEPLOYMENTS)}")
    base = dict(DEFAULT_BASE_LATENCY)
    base.update(parse_mode_seconds(a.base_latency, "--base-latency"))
    rl = None
    if str(a.rl_loss).strip():
        rl = num(a.rl_loss, "--rl-loss")
        if rl < 0 or not math.isfinite(rl):
            raise BadInput(f"--rl-loss = {a.rl_loss!r} is not valid; allowed: a number >= 0")
    unhealthy = a.unhealthy if a.unhealthy is not None else _env_bool(env.get("DEMO_UNHEALTHY", ""), "DEMO_UNHEALTHY")
    faults = Faults(
        error_rate=_rate(num(a.error_rate, "--error-rate"), "--error-rate"),
        latency=parse_mode_seconds(a.latency, "--latency"),
        schema_failure_rate=_rate(num(a.schema_failure_rate, "--schema-failure-rate"), "--schema-failure-rate"),
        rl_loss=rl,
        unhealthy=unhealthy,
    )
    seed = None
    if str(a.seed).strip():
        try:
            seed = int(a.seed)
        except ValueError:
            raise BadInput(f"--seed = {a.seed!r} is not valid; allowed: an integer") from None
    ens_default = "true" if a.deployment == "canary" else "false"
    enabled = _env_bool(env.get("USE_LLM_ENSEMBLE", ens_default), "USE_LLM_ENSEMBLE")
    models = tuple(m.strip() for m in env.get("LLM_ENSEMBLE_MODELS", DEFAULT_MODELS).split(",") if m.strip())
    return Settings(
        host=a.host, port=port, version=a.version, deployment=a.deployment, base_latency=base, faults=faults, seed=seed,
        ensemble_enabled=enabled, ensemble_models=models if enabled else (),
        ensemble_voting=env.get("LLM_ENSEMBLE_VOTING", "weighted"),
    )


# --------------------------------------------------------------------------- the app


def utc_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class DemoState:
    """Metrics, faults and the deterministic fault accumulators of one process."""

    def __init__(self, settings: Settings) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.settings = settings
        self.startup_rl_loss = settings.faults.rl_loss
        self.faults = Faults(**settings.faults.to_dict())
        self.rng = random.Random(settings.seed)
        self._err_acc = 0.0
        self._schema_acc = 0.0
        self.registry = CollectorRegistry()
        self.duration = Histogram(
            "http_request_duration_seconds", "Request latency of /api/generate", ["version", "mode"],
            buckets=BUCKETS, registry=self.registry,
        )
        self.requests = Counter(
            "http_requests_total", "Requests to /api/generate", ["version", "status", "mode"], registry=self.registry
        )
        self.schema_failures = Counter(
            "llm_brief_schema_failures_total", "llm_brief outputs that failed schema validation", ["version"],
            registry=self.registry,
        )
        self.rl_loss = Gauge("rl_training_loss", "Current RL training loss", ["version"], registry=self.registry)
        self.in_flight = Gauge("demo_requests_in_flight", "Requests to /api/generate being answered", registry=self.registry)
        v = settings.deployment
        # pre-initialise every series at 0, so that rate()/increase() see the first event
        for mode in MODES:
            self.duration.labels(v, mode)
            for status in ("200", "500"):
                self.requests.labels(v, status, mode)
        self.schema_failures.labels(v)
        self.set_rl_loss(self.faults.rl_loss)

    def set_rl_loss(self, value: float | None) -> None:
        v = self.settings.deployment
        if value is None:
            try:
                self.rl_loss.remove(v)
            except KeyError:
                pass
        else:
            self.rl_loss.labels(v).set(value)

    def update_faults(self, body: Any) -> Faults:
        if isinstance(body, dict) and body.get("clear") and "rl_loss" not in body:
            body = {**body, "rl_loss": self.startup_rl_loss}
        self.faults = apply_fault_update(self.faults, body)
        self.set_rl_loss(self.faults.rl_loss)
        return self.faults

    def inject_error(self) -> bool:
        self._err_acc += self.faults.error_rate
        if self._err_acc >= 1.0 - 1e-9:
            self._err_acc -= 1.0
            return True
        return False

    def inject_schema_failure(self) -> bool:
        if self.faults.schema_failures > 0:
            self.faults.schema_failures -= 1
            return True
        self._schema_acc += self.faults.schema_failure_rate
        if self._schema_acc >= 1.0 - 1e-9:
            self._schema_acc -= 1.0
            return True
        return False

    def delay(self, mode: str) -> float:
        base = self.settings.base_latency.get(mode, 0.0) * self.rng.uniform(0.8, 1.2)
        return base + self.faults.latency.get(mode, 0.0)

    def brief(self, mode: str, notes: list[str]) -> dict[str, Any]:
        picked = notes[:8] or self.rng.sample(sum(FAMILIES.values(), []), 3)
        families = sorted({f for f, members in FAMILIES.items() for n in picked if n.lower() in members}) or ["fresh"]
        adjective = {"fast": "bright", "balanced": "rounded", "creative": "unexpected"}[mode]
        return {
            "description": f"A {adjective} {' and '.join(families)} composition around {', '.join(picked)}.",
            "notes": picked,
            "families": families,
        }


def _json(body: Any, status: int = 200) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse(body, status_code=status)


def is_local_client(client_host: str | None, headers: Any) -> bool:
    """Loopback peer and no proxy in between (a proxied request shows a forwarding header)."""
    if client_host not in LOOPBACK:
        return False
    return not any(h in headers for h in FORWARDING_HEADERS)


def build_app(settings: Settings) -> Any:
    """The Starlette app; ``app.state.demo`` is the DemoState (tests poke it in-process)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    state = DemoState(settings)
    s = settings

    async def health(_: Request) -> Any:
        healthy = not state.faults.unhealthy
        body = {
            "status": "healthy" if healthy else "unhealthy",
            "version": s.version,
            "deployment": s.deployment,
            "llm_ensemble": {"enabled": s.ensemble_enabled, "models": list(s.ensemble_models)},
            "timestamp": utc_iso(),
        }
        return _json(body, 200 if healthy else 503)

    async def config(_: Request) -> Any:
        return _json({
            "version": s.version,
            "deployment": s.deployment,
            "modes": list(MODES),
            "base_latency": s.base_latency,
            "llm_ensemble": {"enabled": s.ensemble_enabled, "models": list(s.ensemble_models), "voting": s.ensemble_voting},
        })

    async def metrics(_: Request) -> Any:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        if state.faults.metrics_down:
            return Response("metrics exporter unavailable (injected fault)\n", status_code=503, media_type="text/plain")
        return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)

    async def generate(request: Request) -> Any:
        t0 = time.perf_counter()
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return _json({"error": "body is not valid JSON; allowed: {\"mode\": ..., \"notes\": [...]}"}, 400)
        mode = body.get("mode") if isinstance(body, dict) else None
        if mode not in MODES:
            return _json({"error": f"mode {mode!r} is not valid; allowed: {', '.join(MODES)}"}, 400)
        notes = body.get("notes", [])
        if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes) or len(notes) > 50:
            status, payload = 400, {"error": "notes is not valid; allowed: a list of at most 50 strings"}
        else:
            with state.in_flight.track_inprogress():
                await asyncio.sleep(state.delay(mode))
            if state.inject_error():
                status, payload = 500, {"error": "internal error (injected fault)"}
            else:
                brief = state.brief(mode, notes)
                if state.inject_schema_failure():
                    del brief["description"]  # the seed's typical failure: a missing required field
                    state.schema_failures.labels(s.deployment).inc()
                status = 200
                payload = {"llm_brief": brief, "mode": mode, "version": s.version, "deployment": s.deployment}
        state.duration.labels(s.deployment, mode).observe(time.perf_counter() - t0)
        state.requests.labels(s.deployment, str(status), mode).inc()
        request.scope["demo_mode"] = mode
        return _json(payload, status)

    async def faults(request: Request) -> Any:
        client = request.client.host if request.client else None
        if not is_local_client(client, request.headers):
            return _json({"error": "faults can only be changed from loopback, not through a proxy"}, 403)
        if request.method == "GET":
            return _json(state.faults.to_dict())
        try:
            body = json.loads(await request.body() or b"{}")
            updated = state.update_faults(body)
        except ValueError as e:  # BadInput is a ValueError; so is bad JSON
            msg = str(e) if isinstance(e, BadInput) else "body is not valid JSON"
            return _json({"error": msg}, 400)
        print(f"{utc_iso()} {s.deployment} {s.version} faults {json.dumps(updated.to_dict(), sort_keys=True)}", flush=True)
        return _json(updated.to_dict())

    routes = [
        Route("/health", health),
        Route("/api/config", config),
        Route("/metrics", metrics),
        Route("/api/generate", generate, methods=["POST"]),
        Route("/admin/faults", faults, methods=["GET", "POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.demo = state
    return RequestLog(app, settings)


class RequestLog:
    """ASGI wrapper: one stdout line per request (not for /metrics scrapes), for the log panes."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.state = app.state

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") == "/metrics":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = [0]

        async def _send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, _send)
        finally:
            ms = (time.perf_counter() - t0) * 1000
            mode = scope.get("demo_mode")
            extra = f" mode={mode}" if mode else ""
            s = self.settings
            print(f"{utc_iso()} {s.deployment} {s.version} {scope['method']} {scope['path']} {status[0]} {ms:.1f}ms{extra}",
                  flush=True)


def main(argv: list[str] | None = None) -> int:
    try:
        settings = parse_args(argv)
    except BadInput as e:
        print(f"demo_service: {e}", file=sys.stderr)
        return 2
    try:
        import uvicorn
    except ImportError:
        print("demo_service: uvicorn is not installed; allowed: pip install 'canary-console[demo]'", file=sys.stderr)
        return 2
    app = build_app(settings)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level="warning", access_log=False,
        proxy_headers=False, lifespan="off", timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    print(f"{utc_iso()} {settings.deployment} {settings.version} listening on http://{settings.host}:{settings.port} "
          f"faults {json.dumps(settings.faults.to_dict(), sort_keys=True)}", flush=True)
    # uvicorn turns SIGTERM/SIGINT into a graceful stop, then re-raises the signal to the handler
    # that was installed before it: make that one a no-op, so a stop on request exits 0
    stops: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stops.append(signum))
    server.run()
    print(f"{utc_iso()} {settings.deployment} {settings.version} stopped", flush=True)
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
