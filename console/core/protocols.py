"""The small Protocols the engine drives.  Real adapters and fakes both satisfy them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from console.core.events import GateResult


class RouterError(Exception):
    """A router change failed.  ``detail`` is the tool's own text (nginx -t output);
    ``restored_weight`` is what the file was put back to, if anything."""

    def __init__(self, message: str, detail: str = "", restored_weight: int | None = None) -> None:
        super().__init__(message)
        self.detail = detail
        self.restored_weight = restored_weight


class TrafficRouter(Protocol):
    def current_weight(self) -> int | None:
        """The canary weight the managed file says now (None: no file / not ours)."""

    async def apply(self, weight: int, generation: str) -> float:
        """Write, test, reload, and return once the proxy verifiably serves ``weight``.
        Returns the seconds it took.  Raises RouterError and leaves the old file in place."""


@dataclass(frozen=True)
class CheckContext:
    deployment_id: str
    version: str
    index: int  # stage index
    weight: int  # canary % now
    stage_elapsed: float  # observation seconds so far (the clock stops when paused)
    stage_wall_start: float  # clock.monotonic() when the stage's traffic was applied
    min_period: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class Checker(Protocol):
    """A set of gates judged on every check (metrics gates, health, the sequential analysis).

    Optional: ``async def begin_stage(ctx) -> Sequence[dict]`` returns notes to journal before a
    stage starts (for example the analysis' minimum detectable effect), and
    ``async def aclose()``."""

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


class MetricSource(Protocol):
    """Prometheus or direct scrape.  ``snapshot`` may be called by several checkers in one
    check: a source answers calls within a short interval from one read."""

    async def snapshot(self) -> CounterSnapshot: ...


class EngineLink(Protocol):
    """What a console holds on to: engine events in, operator intents out.

    The in-process link wraps an Engine; the socket link (detached engine) speaks the same
    records over a unix socket; the replay link serves a finished deployment's journal.
    ``role`` is "driver", "watcher" or "replay"; only a driver may submit."""

    role: str

    def history(self) -> list[Any]:
        """Events that happened before this console attached (from the journal)."""

    def events(self) -> Any:
        """An async iterator of new events."""

    async def submit(self, intent: Any) -> None:
        """Send an intent; raises PermissionError when this link may not drive."""

    async def close(self) -> None: ...
