"""The engine's own /metrics: the rollout as Prometheus series (``[exporter] listen``).

``Exporter`` is an engine listener and an engine service, like the webhook notifier:

* ``observe(event)`` (the listener, on the engine's loop) folds the event with the same
  ``console.core.state.apply`` every other view uses and sets the series from the result, so
  the exporter says what the journal says.  It never blocks and never raises into the engine.
* ``start()`` binds the listen address and serves /metrics from a thread of its own
  (``wsgiref``, one request at a time, a 5 s socket timeout per connection); a port that is
  taken is a warning in the journal, never a reason to stop a rollout.
* ``aclose(timeout)`` marks the engine down (``canary_console_engine_up`` 0), then keeps serving
  until one scrape that began after that has been answered, at most ``[exporter] linger``
  seconds, so that Prometheus sees how the rollout ended (the rollback, 0%) before the series
  go stale; then it stops the server and joins its thread, off the event loop.
* ``timed(checker)`` wraps a Checker to observe how long each ``check`` takes: the engine's
  events say when a check ended, not how long it ran.

The registry is the exporter's own (never prometheus_client's global one): only these series.
Names follow Prometheus conventions: the ``canary_console_`` prefix, base units (seconds, a
ratio 0..1 for the weight), ``_total`` counters, ``_timestamp_seconds`` for Unix times.
docs/monitoring.md lists every series.  Label values are bounded: gates are the configured
gates, a rollback's ``reason`` is the deciding gate or one of ``ROLLBACK_REASONS``.

This module imports prometheus_client; ``console.wiring`` imports it only when
``[exporter] listen`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily

from console.core import events as ev
from console.core import state as st

NoteFn = Callable[[str, str, dict[str, Any]], object]

PREFIX = "canary_console_"
# every state a deployment can be in, as label values (identifiers: "at 100%" is at_100)
STATES = (st.STARTING, st.OBSERVING, st.PAUSED, st.HOLDING, st.ROLLING_BACK, st.ROLLED_BACK, st.AT_100, st.PROMOTED,
          st.INTERRUPTED, st.FAILED)
# a rollback's reason when no gate decided it: the operator, the router, missing metrics, no verdict
ROLLBACK_REASONS = ("manual", "router", "metrics_unavailable", "inconclusive", "other")
ROUTER_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CHECK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# the series without labels, each absent until the rollout has said its value (a weight of 0
# before nginx confirmed anything, or a last check at 1970, would be a lie the alerts act on)
SCALARS = {
    "engine_up": "1 while an engine drives this rollout, 0 once it has ended (served a little longer, see "
                 "[exporter] linger); absent when no engine runs",
    "rollout_start_timestamp_seconds": "When the rollout started (Unix time)",
    "canary_weight_ratio": "Share of the traffic nginx verifiably sends to the canary (0..1; 0.05 is 5%); not in a dry run",
    "stage_index": "The current stage, counted from 0",
    "stages": "How many stages the rollout has",
    "state_entered_timestamp_seconds": "When the current state began (Unix time)",
    "check_interval_seconds": "Seconds between two checks",
    "last_check_timestamp_seconds": "When the last check completed (Unix time)",
    "router_last_apply_duration_seconds": "The last weight change's duration (write, nginx -t, reload, verify)",
}
POLL = 0.05  # how often the serving thread looks for a shutdown request
REQUEST_TIMEOUT = 5.0  # a client that connects and says nothing holds the server this long at most


def state_label(state: str) -> str:
    """A DeploymentState.state as a label value: "rolled back" -> rolled_back, "at 100%" -> at_100."""
    return state.replace("%", "").replace(" ", "_")


def rollback_reason(e: ev.RolledBack, gates: Sequence[str] | set[str]) -> str:
    """A bounded label for why: the deciding gate (the engine's reason starts with its name),
    else manual, router, metrics_unavailable, inconclusive or other."""
    if not e.automatic:
        return "manual"
    r = e.reason.strip()
    first = r.split(" ", 1)[0] if r else ""
    if first in gates:
        return first
    if r.startswith("router"):
        return "router"
    if r.startswith("metrics unavailable"):
        return "metrics_unavailable"
    if r.startswith("inconclusive"):
        return "inconclusive"
    return "other"


def epoch(ts: str) -> float:
    """An event's ISO timestamp ("...Z") as Unix seconds; now when it does not parse."""
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except (ValueError, AttributeError):
        return time.time()


class _QuietHandler(WSGIRequestHandler):
    timeout = REQUEST_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:  # no line on stderr per scrape
        pass


class _Server(WSGIServer):
    allow_reuse_address = True

    def server_bind(self) -> None:  # HTTPServer's would resolve the host's FQDN: a DNS lookup on the loop
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), port
        self.setup_environ()


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Scalars:
    """A collector of the label-less series: only those with a value, read at scrape time."""

    def __init__(self, owner: Exporter) -> None:
        self._owner = owner

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Any:
        values, info = self._owner._snapshot()
        for name, doc in SCALARS.items():
            if name in values:
                yield GaugeMetricFamily(PREFIX + name, doc, value=values[name])
        if info:
            m = InfoMetricFamily(PREFIX + "rollout", "The rollout this engine drives: deployment id, version, dry run")
            m.add_metric([], info)
            yield m


class _TimedChecker:
    """A Checker whose ``check`` durations go to a histogram; everything else is the inner one's."""

    def __init__(self, inner: Any, histogram: Histogram) -> None:
        self._inner = inner
        self.name = getattr(inner, "name", type(inner).__name__)  # the engine names a failed checker by it
        self._observe = histogram.labels(self.name).observe

    async def check(self, ctx: Any) -> Any:
        t0 = time.perf_counter()
        out = await self._inner.check(ctx)  # a cancelled (pre-empted) or failed check is not a duration
        self._observe(time.perf_counter() - t0)
        return out

    def __getattr__(self, name: str) -> Any:  # begin_stage, aclose, describe ... when the inner has them
        if name == "_inner":
            raise AttributeError(name)
        return getattr(self._inner, name)


class Exporter:
    """See the module docstring."""

    def __init__(self, host: str, port: int, *, linger: float = 15.0, note: NoteFn | None = None) -> None:
        self.host = host
        self.port = port  # 0: any free port (tests); ``bound_port`` says which once started
        self.linger = max(0.0, float(linger))
        self.note = note
        self.registry = CollectorRegistry(auto_describe=True)
        self._state = st.DeploymentState()
        self._values: dict[str, float] = {}  # SCALARS that have a value
        self._info: dict[str, str] = {}
        self._gates: set[str] = set()
        self._lock = threading.Lock()
        self._serial = 0  # bumped after each change of the series
        self._scraped = -1  # the serial of the newest state a finished scrape began after
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Event, int] | None = None
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.error = ""  # why start() could not listen, if it could not
        self._build()

    @classmethod
    def from_config(cls, cfg: Any, note: NoteFn | None = None) -> Exporter | None:
        """None when ``[exporter] listen`` is empty (the default)."""
        from console.core.config import parse_listen

        x = cfg["exporter"]
        if not x["listen"]:
            return None
        host, port = parse_listen(x["listen"])  # validated at load: a ConfigError already named a bad value
        return cls(host, port, linger=x["linger"], note=note)

    def __repr__(self) -> str:
        return f"Exporter({self.host}:{self.port}, linger={self.linger:g})"

    # ------------------------------------------------------------------ series
    def _build(self) -> None:
        r, p = self.registry, PREFIX
        r.register(_Scalars(self))
        self.state = Gauge(p + "state", "The rollout's state: 1 for the current one, 0 for the others", ["state"], registry=r)
        self.check_duration = Histogram(p + "check_duration_seconds", "How long one checker's check took",
                                        ["checker"], buckets=CHECK_BUCKETS, registry=r)
        self.gate_value = Gauge(p + "gate_value", "A gate's last value, in the gate's own unit (ratio, seconds, "
                                "count, e-value)", ["gate"], registry=r)
        self.gate_threshold = Gauge(p + "gate_threshold", "A gate's threshold, in the unit of its value", ["gate"],
                                    registry=r)
        self.gate_production = Gauge(p + "gate_production_value", "Production's value of the gate's metric, when "
                                     "the gate compares with it", ["gate"], registry=r)
        self.gate_verdict = Gauge(p + "gate_verdict", "A gate's last verdict: 1 for it, 0 for the others",
                                  ["gate", "verdict"], registry=r)
        self.gate_breaches = Gauge(p + "gate_breaches", "Consecutive failed checks of a non-critical gate", ["gate"],
                                   registry=r)
        self.e_value = Gauge(p + "analysis_e_value", "The sequential analysis' e-value (evidence against the canary)",
                             ["gate"], registry=r)
        self.e_threshold = Gauge(p + "analysis_threshold", "The e-value at which the analysis fails the canary "
                                 "(1/alpha)", ["gate"], registry=r)
        self.e_bound = Gauge(p + "analysis_bound", "The ratio to production the analysis has proven the canary "
                             "below (absent while nothing is proven)", ["gate"], registry=r)
        self.rollbacks = Counter(p + "rollbacks", "Rollbacks to 0% by this engine", ["reason", "kind"], registry=r)
        self.rollback_ts = Gauge(p + "last_rollback_timestamp_seconds", "When this engine last rolled back "
                                 "(Unix time), with why", ["reason", "kind"], registry=r)
        self.router_duration = Histogram(p + "router_apply_duration_seconds", "Write, test, reload and verify of one "
                                         "weight change", buckets=ROUTER_BUCKETS, registry=r)
        self.router_failures = Counter(p + "router_failures", "Weight changes nginx did not confirm, by what the "
                                       "file holds after (restored or unconfirmed)", ["outcome"], registry=r)
        for s in STATES:
            self.state.labels(state_label(s)).set(0)
        for outcome in ("restored", "unconfirmed"):
            self.router_failures.labels(outcome)
        for reason in ROLLBACK_REASONS:  # present at 0 before the first rollback: increase() sees it
            self.rollbacks.labels(reason, "manual" if reason == "manual" else "automatic")

    def _set_scalar(self, name: str, v: float) -> None:
        with self._lock:
            self._values[name] = float(v)

    def _snapshot(self) -> tuple[dict[str, float], dict[str, str]]:
        with self._lock:
            return dict(self._values), dict(self._info)

    def timed(self, checker: Any) -> Any:
        return _TimedChecker(checker, self.check_duration)

    def __call__(self, e: ev.Event) -> None:  # an engine listener: engine.add_listener(exporter)
        self.observe(e)

    def observe(self, e: ev.Event) -> None:
        """Fold one event into the series; never raises."""
        try:
            self._observe(e)
        except Exception as exc:  # the exporter never breaks the rollout
            self._note("warning", f"exporter: {type(exc).__name__}: {exc}", {})
        with self._lock:
            self._serial += 1

    def _observe(self, e: ev.Event) -> None:
        before = self._state
        s = self._state = st.apply(before, e)
        ts = epoch(e.ts)
        if isinstance(e, ev.DeploymentStarted):
            with self._lock:
                self._info = {"deployment_id": e.deployment_id, "version": e.version, "dry_run": str(e.dry_run).lower()}
            self._set_scalar("rollout_start_timestamp_seconds", epoch(s.started))
            self._set_scalar("check_interval_seconds", e.check_interval)
            self._set_scalar("stages", len(e.stages))
        if s.weight is not None and not s.dry_run:  # what nginx confirmed (router_applied), as the journal says
            self._set_scalar("canary_weight_ratio", s.weight / 100.0)
        if s.index >= 0:
            self._set_scalar("stage_index", s.index)
        if s.state != before.state or isinstance(e, ev.DeploymentStarted):
            for name in STATES:
                self.state.labels(state_label(name)).set(1 if name == s.state else 0)
            self._set_scalar("state_entered_timestamp_seconds", ts)
        if isinstance(e, ev.CheckCompleted):
            self._set_scalar("last_check_timestamp_seconds", ts)
            self._gate_results(e)
        elif isinstance(e, ev.RouterApplied) and not e.late and not e.dry_run:
            self.router_duration.observe(e.duration_ms / 1000.0)
            self._set_scalar("router_last_apply_duration_seconds", e.duration_ms / 1000.0)
        elif isinstance(e, ev.RouterFailed):
            self.router_failures.labels(e.outcome or "restored").inc()
        elif isinstance(e, ev.RolledBack):
            reason = rollback_reason(e, self._gates | {r.gate for r in e.snapshot})
            kind = "automatic" if e.automatic else "manual"
            self.rollbacks.labels(reason, kind).inc()
            self.rollback_ts.clear()
            self.rollback_ts.labels(reason, kind).set(ts)

    def _gate_results(self, e: ev.CheckCompleted) -> None:
        for r in e.results:
            g = r.gate
            if g not in self._gates:
                self._gates.add(g)
                self.rollbacks.labels(g, "automatic")  # at 0 before this gate can roll back
            self._set(self.gate_value, g, r.value)
            self._set(self.gate_threshold, g, r.threshold)
            self._set(self.gate_production, g, r.production_value)
            for v in ev.VERDICTS:
                self.gate_verdict.labels(g, v).set(1 if r.verdict == v else 0)
            self.gate_breaches.labels(g).set(e.breaches.get(g, 0))
            if g.startswith("seq.") and r.extra:
                self._set(self.e_value, g, r.extra.get("e_value"))
                self._set(self.e_threshold, g, r.extra.get("threshold"))
                self._set(self.e_bound, g, r.extra.get("bound"))

    @staticmethod
    def _set(gauge: Gauge, gate: str, value: Any) -> None:
        if isinstance(value, int | float) and not isinstance(value, bool):
            gauge.labels(gate).set(float(value))
        else:  # no value this check: no sample, rather than a stale one
            with contextlib.suppress(KeyError):
                gauge.remove(gate)

    # ------------------------------------------------------------------ serving
    def _app(self) -> Callable[..., Any]:
        inner = make_wsgi_app(self.registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            with self._lock:
                serial = self._serial
            body = inner(environ, start_response)
            if environ.get("PATH_INFO", "/") in ("/", "/metrics"):
                self._answered(serial)
            return body

        return app

    def _answered(self, serial: int) -> None:
        with self._lock:
            self._scraped = max(self._scraped, serial)
            waiter = self._waiter
        if waiter is not None and serial >= waiter[2]:
            loop, evt, _ = waiter
            with contextlib.suppress(RuntimeError):  # the loop is gone
                loop.call_soon_threadsafe(evt.set)

    @property
    def bound_port(self) -> int | None:
        return self._server.server_address[1] if self._server is not None else None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Listen and serve from a thread; on failure, say so in the journal and go on without."""
        if self._server is not None:
            return
        cls = _Server6 if ":" in self.host else _Server
        try:
            server = cls((self.host, self.port), _QuietHandler, bind_and_activate=True)
        except OSError as e:
            self.error = f"cannot listen on {self._where()}: {e.strerror or e}"
            self._note_soon("warning", f"exporter: {self.error}; the rollout goes on without /metrics",
                            {"listen": self._where()})
            return
        server.set_app(self._app())
        self._server = server
        self._set_scalar("engine_up", 1)
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": POLL},
                                        name=f"canary-exporter-{self.bound_port}", daemon=True)
        self._thread.start()
        self._note_soon("info", f"exporter: serving /metrics on {self._where(self.bound_port)}",
                        {"listen": self._where(self.bound_port)})

    async def aclose(self, timeout: float = 5.0) -> None:
        """Mark the engine down, wait for one scrape of that (at most ``linger`` s), then stop.
        ``timeout`` (the engine's bound for a service) is not used: ``linger`` is the bound."""
        if self._server is None:
            return
        self._set_scalar("engine_up", 0)
        with self._lock:
            self._serial += 1
            target = self._serial
            seen = self._scraped >= target
            evt = asyncio.Event()
            self._waiter = (asyncio.get_running_loop(), evt, target)
        try:
            if not seen and self.linger > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(evt.wait(), self.linger)
            await asyncio.to_thread(self.close)
        finally:
            self.close()  # cancelled meanwhile: stop anyway (returns at once when already stopped)

    def close(self) -> None:
        """Stop serving and join the thread (blocks up to one poll, ~50 ms, plus a request in flight)."""
        with self._lock:
            server, thread, self._server, self._thread, self._waiter = self._server, self._thread, None, None, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join()

    # ------------------------------------------------------------------ notes
    def _where(self, port: int | None = None) -> str:
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"{h}:{self.port if port is None else port}"

    def _note(self, level: str, message: str, data: dict[str, Any]) -> None:
        if self.note is not None:
            with contextlib.suppress(Exception):
                self.note(level, message, data)

    def _note_soon(self, level: str, message: str, data: dict[str, Any]) -> None:
        """From ``start()`` (the engine starts services before it journals DeploymentStarted): the
        note goes out once the loop runs again, after the start; at once without a loop."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._note(level, message, data)
            return
        loop.call_soon(self._note, level, message, data)
