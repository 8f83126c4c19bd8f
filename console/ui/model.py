"""What the console knows, folded from engine events: no Textual here.

The App feeds every event to ``ConsoleModel.apply`` and pushes the result down into widgets.
Keeping the fold out of the App keeps the App thin, and lets unit tests check the countdown,
the staleness rule and the series bounds without a terminal.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from console.core import events as ev
from console.core import state as st
from console.core.eventfmt import DecisionFeed, action_words, feed_lines, format_event, who
from console.core.state import DeploymentState

SERIES_MAX = 3600  # points per gate: one hour of 1 s checks, or 15 h of 15 s checks
TIMELINE_MAX = 50  # operator actions and milestones kept for the timeline


@dataclass(frozen=True)
class Point:
    """One gate value at one check; ``x`` is seconds since the deployment started."""

    x: float
    value: float | None
    production: float | None
    threshold: float | None


@dataclass(frozen=True)
class Entry:
    """A timeline entry: an operator action or a milestone, with its time."""

    ts: str
    text: str
    level: str = "info"  # info | warning | error


def parse_ts(ts: str) -> datetime | None:
    try:
        d = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return None
    return d if d.tzinfo else d.replace(tzinfo=UTC)


class ConsoleModel:
    """The folded state plus the bounded history the panels draw.

    ``monotonic`` is the console's clock (injected so tests and snapshots pin time); an event
    is anchored at the moment it arrived, which is what the countdown and the "stale" badge
    count from.  History events (from the journal, at attach) are anchored at their own
    timestamp, so a console attached late shows stale data as stale.
    """

    def __init__(self, monotonic: Callable[[], float], utcnow: Callable[[], datetime], series_max: int = SERIES_MAX) -> None:
        self.monotonic = monotonic
        self.utcnow = utcnow
        self.state = DeploymentState()
        self.series: dict[str, deque[Point]] = {}
        self.series_max = series_max
        self.timeline: deque[Entry] = deque(maxlen=TIMELINE_MAX)
        self.anchor = 0.0  # monotonic time the last countdown anchor arrived
        self.check_at: float | None = None  # monotonic time of the last check
        self.checks = 0
        self.feed = DecisionFeed()  # the events pane's lines: decisions, and one updating line for quiet checks
        self._t0: datetime | None = None

    # ------------------------------------------------------------------ folding
    def arrival_for(self, e: ev.Event) -> float:
        """Monotonic time an old event would have arrived at, from its timestamp."""
        when = parse_ts(e.ts)
        now = self.monotonic()
        if when is None:
            return now
        age = (self.utcnow() - when).total_seconds()
        return now - max(0.0, age)

    def apply(self, e: ev.Event, arrived: float | None = None) -> DeploymentState:
        at = self.monotonic() if arrived is None else arrived
        self.state = st.apply(self.state, e)
        if isinstance(e, ev.DeploymentStarted) and self._t0 is None:
            self._t0 = parse_ts(e.ts)
        if isinstance(e, ev.StageStarted | ev.CheckCompleted | ev.Paused | ev.Resumed | ev.StageExtended | ev.Holding):
            self.anchor = at
        if isinstance(e, ev.CheckCompleted):
            self.check_at = at
            self.checks += 1
            self._add_points(e)
        entry = timeline_entry(e)
        if entry is not None:
            self.timeline.append(entry)
        return self.state

    def _add_points(self, e: ev.CheckCompleted) -> None:
        x = self.seconds_since_start(e.ts)
        for r in e.results:
            if r.value is None and r.production_value is None:
                continue
            d = self.series.get(r.gate)
            if d is None:
                d = self.series[r.gate] = deque(maxlen=self.series_max)
            d.append(Point(x, r.value, r.production_value, r.threshold))

    def seconds_since_start(self, ts: str) -> float:
        t = parse_ts(ts)
        if t is None or self._t0 is None:
            return float(self.checks)
        return max(0.0, (t - self._t0).total_seconds())

    # ------------------------------------------------------------------ derived
    def remaining(self) -> float | None:
        """Seconds of observation left now; counts down only while observing."""
        s = self.state
        if s.index < 0 or s.finished or s.state in (st.AT_100, st.INTERRUPTED, st.STARTING):
            return None
        if s.state == st.OBSERVING:
            return max(0.0, s.remaining - (self.monotonic() - self.anchor))
        return max(0.0, s.remaining)

    def progress(self) -> float | None:
        """Fraction of the current stage's observation done (0..1)."""
        left = self.remaining()
        period = self.state.observation_period
        if left is None or period <= 0:
            return None
        done = self.state.elapsed + (self.monotonic() - self.anchor if self.state.state == st.OBSERVING else 0.0)
        total = done + left
        return min(1.0, max(0.0, done / total)) if total > 0 else None

    def data_age(self) -> float | None:
        """Seconds since the last check result arrived (None before the first)."""
        return None if self.check_at is None else self.monotonic() - self.check_at

    def stale(self) -> bool:
        """Gate data older than twice the check interval, while the rollout is live."""
        s = self.state
        age = self.data_age()
        if not s.live or s.check_interval <= 0:
            return False
        if age is None:  # no check yet: stale once two intervals passed since the stage began
            return s.index >= 0 and self.monotonic() - self.anchor > 2 * s.check_interval
        return age > 2 * s.check_interval

    def points(self, gate: str) -> list[Point]:
        return list(self.series.get(gate, ()))


def timeline_entry(e: ev.Event) -> Entry | None:
    """The events an operator wants in the timeline: actions and milestones."""
    t = e.ts[11:19] if len(e.ts) >= 19 else e.ts
    match e:
        case ev.OperatorAction():
            by = e.operator.label() if e.operator else who(None)
            verdict = "" if e.accepted else " REFUSED"
            return Entry(t, f"{by}: {action_words(e.action)}{verdict}" + (f" ({e.detail})" if e.detail else ""),
                         "info" if e.accepted else "warning")
        case ev.StagePassed():
            return Entry(t, "shadow stage passed" if e.index == ev.SHADOW_INDEX else f"stage {e.index + 1} ({e.weight}%) passed")
        case ev.Holding():
            return Entry(t, f"holding at {e.weight}%: {e.reason}", "warning")
        case ev.RolledBack():
            return Entry(t, f"rolled back from {e.from_weight}% ({'automatic' if e.automatic else 'manual'}): {e.reason}",
                         "error")
        case ev.Completed():
            return Entry(t, "canary at 100%")
        case ev.Promoted():
            return Entry(t, "promoted")
        case ev.RouterFailed() | ev.Failed():
            return Entry(t, format_event(e)[9:], "error")
        case ev.Interrupted():
            return Entry(t, f"interrupted at {e.weight}%", "warning")
    return None


def event_lines(events: Iterable[ev.Event]) -> list[str]:
    """What the events pane shows for ``events``: decision lines, quiet checks folded into one."""
    return feed_lines(events)
