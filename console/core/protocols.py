"""The small Protocols the engine drives.  Real adapters and fakes both satisfy them."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from console.core.events import GateResult


class DockerUnavailable(Exception):
    """One line: what failed and where.  ``required`` says whether the config makes it fatal."""

    def __init__(self, message: str, required: bool = False) -> None:
        super().__init__(message)
        self.required = required


class ImageTagger(Protocol):
    """Tags images for a promotion (console/adapters/docker.DockerAdapter)."""

    required: bool  # [docker] required: a failure stops the promotion before anything is routed

    def tag_image(self, source: str, tags: list[str]) -> list[str]:
        """Tag ``source`` as each of ``tags``; returns the tags made.  Raises DockerUnavailable."""

    def close(self) -> None: ...


class TrafficRouter(Protocol):
    def current_weight(self) -> int | None:
        """The canary weight the managed file says now (None: no file / not ours)."""

    async def apply(self, weight: float, generation: str, shadow: bool = False) -> float:
        """Write, test, reload, and return once the proxy verifiably serves ``weight``.
        ``shadow``: the shadow stage, in which the proxy also mirrors every request to the canary
        (its answers discarded); False turns the mirror off.
        Returns the seconds it took.  Raises RouterError: with ``reloaded`` the new file stays
        and nginx may serve it (not confirmed in time); otherwise the old file is back."""

    async def preflight(self, generation: str | None = None) -> float:
        """Prove the router sees what the proxy serves: rewrite the current weights under
        ``generation``, reload, confirm.  Traffic does not move.  Raises RouterError with the
        file as it was (one line: what came back and the fix)."""

    async def served_generation(self, timeout: float = 2.0) -> tuple[str | None, str]:
        """The generation the proxy answers now, or (None, what came back instead)."""


@dataclass(frozen=True)
class CheckContext:
    deployment_id: str
    version: str
    index: int  # stage index
    weight: float  # canary % now (whole percents are ints; stages below 1% have one decimal)
    stage_elapsed: float  # observation seconds so far (the clock stops when paused)
    stage_wall_start: float  # clock.monotonic() when the stage's traffic was applied
    min_period: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    generation: str = ""  # the router generation the stage's traffic was applied under ("" = not told)
    shadow: bool = False  # the shadow stage: the canary gets a mirrored copy of every request, serves no user
    # clock.monotonic() after the warm-up (and after the metric source showed it): no sample from
    # before it may count, so a window never reaches back past it (0.0 = no warm-up, no limit)
    samples_since: float = 0.0


def window_after(window_s: float, elapsed: float) -> int | None:
    """A rate window of ``window_s`` seconds cut so that it reaches back no more than ``elapsed``
    seconds (the time since ``CheckContext.samples_since``): whole milliseconds, rounded down;
    None while the whole window fits."""
    ms = math.floor(max(0.0, min(window_s, elapsed)) * 1000)
    return ms if ms < window_s * 1000 else None


class Checker(Protocol):
    """A set of gates judged on every check (metrics gates, health, the sequential analysis).

    Optional: ``async def begin_stage(ctx) -> Sequence[dict]`` returns notes to journal before a
    stage starts (for example the analysis' minimum detectable effect),
    ``async def preflight() -> list[str]`` returns what makes this checker unable to judge at all
    (one line each, such as a query Prometheus rejects), asked once before anything moves: any
    line stops the deployment (exit 4, nothing changed), and ``async def aclose()``."""

    async def check(self, ctx: CheckContext) -> Sequence[GateResult]: ...


@dataclass(frozen=True)
class HealthResult:
    ok: bool
    status_code: int | None
    detail: str
    body: dict[str, Any] | None = None
    elapsed_ms: float = 0.0


class MetricsUnavailable(Exception):
    """A metric source could not answer: unreachable, timeout, HTTP error, malformed
    JSON, NaN/Inf, an empty vector.  The message says which, in one line."""


@dataclass(frozen=True)
class VersionCounters:
    """Cumulative counters of one version, as last read (not rates).

    ``requests``/``errors`` (5xx) are per mode; ``buckets`` is the cumulative histogram of
    ``http_request_duration_seconds`` per mode, {le: count}, with ``float('inf')`` included.
    ``rl_loss`` is the gauge (None when the version does not report it)."""

    requests: dict[str, float] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)
    schema_failures: float = 0.0
    buckets: dict[str, dict[float, float]] = field(default_factory=dict)
    rl_loss: float | None = None


@dataclass(frozen=True)
class CounterSnapshot:
    t: float  # clock.monotonic() when read
    production: VersionCounters | None
    canary: VersionCounters | None


FRESH_FOR = 0.5  # seconds: metric-source calls closer together than this share one read


@dataclass(frozen=True)
class VersionStats:
    """One version over the window.  ``requests``/``by_mode`` are increases (Prometheus'
    extrapolated ``increase()``, so not necessarily integers)."""

    requests: float = 0.0
    by_mode: dict[str, float] = field(default_factory=dict)
    error_ratio: float | None = None  # 5xx / all; None: no requests in W (0/0)
    p95: dict[str, float | None] = field(default_factory=dict)  # None: no requests of that mode in W
    schema_failures: float = 0.0  # increase in W (a version with no such series counts 0)
    schema_series: bool = False  # whether the schema-failure counter exists at all
    rl_loss: float | None = None  # the gauge; None: not reported


@dataclass(frozen=True)
class WindowStats:
    t: float  # clock.monotonic() of the read
    window_s: float
    source: str  # "prometheus" | "scrape"
    canary: VersionStats
    production: VersionStats | None = None
    notes: tuple[str, ...] = ()  # things worth showing that are not failures
    queries: dict[str, str] = field(default_factory=dict)  # gate -> the PromQL behind it (prometheus)


class MetricSource(Protocol):
    """Prometheus or a direct scrape (console/adapters/metrics).  Calls within a short interval
    are answered from one read, so several checkers in one check cost one set of queries.  A
    source that cannot answer raises MetricsUnavailable with one line (never a credential)."""

    kind: str

    async def stats(self, since: float = 0.0) -> WindowStats:
        """Per version, over the rate window: what the gates judge.  ``since`` (a clock.monotonic()
        time, 0.0 = none): the window starts no earlier than it (``window_s`` says how long it is)."""

    async def snapshot(self) -> CounterSnapshot:
        """The cumulative counters, for the sequential analysis."""

    def start(self) -> None:
        """Begin sampling before the first check (a scrape source; Prometheus samples on its own)."""

    async def aclose(self) -> None: ...

    def describe(self) -> str:
        """One line for operators: where the numbers come from (never a credential)."""


@dataclass(frozen=True)
class WarmupResult:
    """What a warm-up sent straight to the canary.  ``settled``: one line on how the metric
    source caught up with it ("" when there is no source to ask)."""

    requested: int
    sent: int
    ok: int  # 2xx
    failed: int  # another status, a timeout, no connection
    seconds: float
    first_error: str = ""  # the first failure, one line ("HTTP 503", "connection refused")
    settled: str = ""

    @property
    def passed(self) -> bool:
        """Every request was sent and at most half of them failed."""
        return self.sent == self.requested and self.failed * 2 <= self.requested

    def as_data(self) -> dict[str, Any]:
        return {"requested": self.requested, "sent": self.sent, "ok": self.ok, "failed": self.failed,
                "seconds": round(self.seconds, 3), "first_error": self.first_error, "settled": self.settled}


class Warmer(Protocol):
    """Sends ``[rollout] warmup_requests`` straight to the canary, not through nginx, before stage 1
    (console/adapters/warmup.HttpWarmer).  It stops early once more than half failed (the warm-up
    cannot pass any more), and returns once the metric source counts what it sent (bounded), so
    that windows starting after it hold none of it."""

    def describe(self, count: int) -> str:
        """What ``warm(count)`` would send, one line ("50 POST http://canary:8001/api/generate ...")."""

    async def warm(self, count: int, progress: Callable[[int, int, int], object]) -> WarmupResult:
        """Send ``count`` requests; ``progress(sent, ok, failed)`` after each one."""

    async def aclose(self) -> None: ...


class HealthProbe(Protocol):
    """GET a health endpoint (console/adapters/health.HttpHealth)."""

    async def check(self, url: str, timeout: float) -> HealthResult: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class LinkStatus:
    """What the console shows about its link: attached or not, to which engine, how fast."""

    attached: bool
    role: str  # driver | watcher | replay | observer
    engine_pid: int = 0
    engine_host: str = ""
    deployment_id: str = ""
    version: str = ""
    latency_ms: float | None = None  # last ping round trip
    driver: str | None = None  # who drives, as the engine last said
    note: str = ""  # why this console does not drive, or the engine's last error
    lost: str = ""  # "" while attached; why the link ended
    exit_code: int | None = None  # the engine's exit code, once it said bye


class EngineLink(Protocol):
    """What a console holds on to: engine events in, operator intents out.

    The in-process link wraps an Engine; the socket link (detached engine) speaks the same
    records over a unix socket; the replay and journal-follow links read the journal
    (console/remote/links.py, console/remote/client.py).  ``role`` is "driver", "watcher",
    "replay" or "observer" (the browser mirror: no traffic key is even bound); only a driver
    may submit.  What a link cannot do it refuses with PermissionError, and says so up front
    in its capabilities, so a console never has to probe it."""

    role: str
    detached: bool  # the engine runs in another process: it goes on when this console leaves
    can_take_over: bool  # a watcher may ask for the driver's seat
    on_status: Callable[[LinkStatus], object] | None  # called when the status changes

    def history(self) -> list[Any]:
        """Events that happened before this console attached (from the journal)."""

    def events(self) -> Any:
        """An async iterator of new events."""

    async def submit(self, intent: Any) -> None:
        """Send an intent; raises PermissionError when this link may not drive."""

    def status(self) -> LinkStatus:
        """Attached or not, to which engine, with what role and latency."""

    async def stop(self) -> None:
        """End the engine, leaving the traffic where it is; PermissionError when not allowed."""

    async def take_over(self) -> None:
        """Become the driver; PermissionError when this link cannot."""

    async def close(self) -> None: ...
