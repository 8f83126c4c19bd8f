"""Sparklines of the whole deployment so far: canary vs production p95 per mode, and the
error rate.  Each row prints its latest values as text beside the bars, so nothing depends on
colour.  Focusable: up/down pick a row, enter asks for its detail chart."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.text import Text
from textual.binding import Binding
from textual.reactive import reactive

from widgets.decision import DetailRequested
from widgets.lines import LinesWidget
from widgets.verdicts import fmt_value

BARS = "▁▂▃▄▅▆▇█"


@dataclass(frozen=True)
class SeriesRow:
    gate: str  # the gate the detail view charts
    label: str  # "fast", "errors"
    canary: tuple[float | None, ...] = ()
    production: tuple[float | None, ...] = ()
    threshold: float | None = None
    breached: bool = False  # the latest canary value is over its threshold


def downsample(values: Sequence[float | None], width: int) -> list[float | None]:
    """At most ``width`` points: the max of each bucket (a spike must stay visible)."""
    n = len(values)
    if n <= width or width <= 0:
        return list(values)
    out: list[float | None] = []
    for b in range(width):
        lo, hi = b * n // width, (b + 1) * n // width
        chunk = [v for v in values[lo:hi] if v is not None]
        out.append(max(chunk) if chunk else None)
    return out


def spark(values: Sequence[float | None], width: int, lo: float, hi: float) -> str:
    pts = downsample(values, width)
    span = hi - lo
    chars = []
    for v in pts:
        if v is None:
            chars.append(" ")
        elif span <= 0:
            chars.append(BARS[0])
        else:
            chars.append(BARS[max(0, min(7, int((v - lo) / span * 7.999)))])
    return "".join(chars).rjust(width)


class Sparklines(LinesWidget, can_focus=True):
    DEFAULT_CSS = """
    Sparklines {
        height: 1fr;
        padding: 0 1;
    }
    Sparklines > .spark--canary { color: $accent; }
    Sparklines > .spark--production { color: $foreground-muted; }
    Sparklines > .spark--breach { color: $error; text-style: bold; }
    Sparklines > .spark--label { text-style: bold; }
    Sparklines > .spark--cursor { background: $boost; }
    Sparklines:focus > .spark--cursor { background: $accent 30%; }
    """
    COMPONENT_CLASSES = {"spark--canary", "spark--production", "spark--breach", "spark--label", "spark--cursor"}
    BINDINGS = [
        Binding("up,k", "move(-1)", "Up", show=False),
        Binding("down,j", "move(1)", "Down", show=False),
        Binding("enter", "select", "Detail", show=False, tooltip="Full-size chart of this metric over time, with its threshold"),
    ]

    rows: reactive[tuple[SeriesRow, ...]] = reactive(tuple, repaint=False)
    cursor: reactive[int] = reactive(0, repaint=False)

    def watch_rows(self) -> None:
        self.redraw()

    def watch_cursor(self) -> None:
        self.redraw()

    @property
    def selected_gate(self) -> str | None:
        return self.rows[min(self.cursor, len(self.rows) - 1)].gate if self.rows else None

    def action_move(self, delta: int) -> None:
        if self.rows:
            self.cursor = max(0, min(len(self.rows) - 1, self.cursor + delta))

    def action_select(self) -> None:
        if self.selected_gate:
            self.post_message(DetailRequested(self.selected_gate))

    def on_focus(self) -> None:
        self.redraw()

    def on_blur(self) -> None:
        self.redraw()

    def build(self, width: int, height: int) -> list[Text]:
        if not self.rows:
            return [Text("no metric yet", style=self.get_component_rich_style("spark--production"))]
        two_rows = height >= 2 * len(self.rows)
        label_w = max(len(r.label) for r in self.rows)
        out: list[Text] = []
        for i, row in enumerate(self.rows):
            out += [self._cursor(t, i) for t in self._row(row, width, label_w, two_rows)]
        for t in out:
            t.truncate(width, overflow="ellipsis")
        return out

    def _row(self, row: SeriesRow, width: int, label_w: int, two_rows: bool) -> list[Text]:
        """Canary and production on one scale (with the threshold), values as text beside."""
        vals = [v for v in row.canary + row.production if v is not None]
        if row.threshold is not None:
            vals.append(row.threshold)
        lo, hi = 0.0, (max(vals) if vals else 1.0)
        cv = fmt_value(row.gate, next((v for v in reversed(row.canary) if v is not None), None))
        pv = fmt_value(row.gate, next((v for v in reversed(row.production) if v is not None), None))
        cstyle = self.get_component_rich_style("spark--breach" if row.breached else "spark--canary")
        pstyle = self.get_component_rich_style("spark--production")
        lstyle = self.get_component_rich_style("spark--label")
        mark = "✗" if row.breached else " "
        val_w = 6
        if two_rows:
            sw = max(4, width - label_w - val_w - 7)
            a = Text(no_wrap=True)
            a.append(f"{row.label:<{label_w}}", lstyle)
            a.append(f" can {spark(row.canary, sw, lo, hi)} {cv:>{val_w}}{mark}", cstyle)
            b = Text(no_wrap=True)
            b.append(" " * label_w + f" prd {spark(row.production, sw, lo, hi)} {pv:>{val_w}}", pstyle)
            return [a, b]
        sw = max(3, (width - label_w - 2 * val_w - 4) // 2)
        line = Text(no_wrap=True)
        line.append(f"{row.label:<{label_w}}", lstyle)
        line.append(f" {spark(row.canary, sw, lo, hi)}{cv:>{val_w}}{mark}", cstyle)
        line.append(f"│{spark(row.production, sw, lo, hi)}{pv:>{val_w}}", pstyle)
        return [line]

    def _cursor(self, line: Text, i: int) -> Text:
        if i == min(self.cursor, len(self.rows) - 1) and self.has_focus:
            line.stylize(self.get_component_rich_style("spark--cursor"))
        return line
