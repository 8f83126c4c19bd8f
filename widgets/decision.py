"""The decision panel: every gate of the last check with its value, threshold, window, sample
size and verdict, plus "breach 2 of 3" for a non-critical gate that is failing, and the
sequential analysis (``seq.*``) with its e-value, bound and minimum detectable effect.

Focusable; up/down move a cursor, enter asks for the gate's detail chart (intent up: the
panel posts ``DetailRequested`` and never opens a screen itself)."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.reactive import reactive

from console.core.events import FAIL, GateResult
from widgets.lines import LinesWidget
from widgets.verdicts import VERDICT_VAR, fmt_value, short_gate, verdict_label


@dataclass(frozen=True)
class GateRow:
    result: GateResult
    breach: int = 0  # consecutive failing checks of a non-critical gate
    of: int = 0  # consecutive failures that roll back


class DetailRequested(Message):
    """The operator wants the full chart of one metric."""

    def __init__(self, gate: str) -> None:
        super().__init__()
        self.gate = gate


def threshold_text(r: GateResult) -> str:
    if r.gate.startswith("seq.") and r.extra:
        th = r.extra.get("threshold")
        return f"≥{th:.3g}" if isinstance(th, int | float) else ""
    if r.threshold is None:
        return ""
    # the condition that passes: "<=" for the guide's gates; a custom gate says its own
    sign = {"<": "<", "<=": "≤", ">": ">", ">=": "≥"}.get(str((r.extra or {}).get("compare", "<=")), "≤")
    return sign + fmt_value(r.gate, r.threshold)


def seq_text(r: GateResult) -> str:
    """e-value against its threshold, the bound and the minimum detectable effect."""
    x = r.extra or {}
    bits = []
    if isinstance(x.get("e_value"), int | float):
        th = x.get("threshold")
        bits.append(f"e={x['e_value']:.3g}" + (f"/{th:.3g}" if isinstance(th, int | float) else ""))
    if isinstance(x.get("bound"), int | float):
        bits.append(f"bound {x['bound']:.3g}")
    if isinstance(x.get("mde"), int | float):
        bits.append(f"mde {x['mde']:.3g}x")
    return " ".join(bits)


class DecisionPanel(LinesWidget, can_focus=True):
    DEFAULT_CSS = """
    DecisionPanel {
        height: 1fr;
        padding: 0 1;
    }
    DecisionPanel > .decision--pass { color: $success; text-style: bold; }
    DecisionPanel > .decision--fail { color: $error; text-style: bold reverse; }
    DecisionPanel > .decision--warn { color: $warning; text-style: bold; }
    DecisionPanel > .decision--muted { color: $foreground-muted; }
    DecisionPanel > .decision--cursor { background: $boost; text-style: bold; }
    DecisionPanel:focus > .decision--cursor { background: $accent 30%; text-style: bold; }
    """
    COMPONENT_CLASSES = {"decision--pass", "decision--fail", "decision--warn", "decision--muted", "decision--cursor"}
    BINDINGS = [
        Binding("up,k", "move(-1)", "Up", show=False),
        Binding("down,j", "move(1)", "Down", show=False),
        Binding("enter", "select", "Detail", show=False, tooltip="Full-size chart of this gate over time, with its threshold"),
    ]

    rows: reactive[tuple[GateRow, ...]] = reactive(tuple, repaint=False)
    cursor: reactive[int] = reactive(0, repaint=False)
    empty_text: reactive[str] = reactive("no check yet", repaint=False)

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._top = 0

    @property
    def selected_gate(self) -> str | None:
        if not self.rows:
            return None
        return self.rows[min(self.cursor, len(self.rows) - 1)].result.gate

    def action_move(self, delta: int) -> None:
        if self.rows:
            self.cursor = max(0, min(len(self.rows) - 1, self.cursor + delta))

    def action_select(self) -> None:
        gate = self.selected_gate
        if gate is not None:
            self.post_message(DetailRequested(gate))

    def _style(self, verdict: str):  # type: ignore[no-untyped-def]
        var = VERDICT_VAR.get(verdict, "warning")
        return self.get_component_rich_style({"success": "decision--pass", "error": "decision--fail"}.get(var, "decision--warn"))

    def _line(self, row: GateRow, width: int) -> Text:
        """verdict, gate, value, threshold, breach count; then window, samples, production, detail."""
        r = row.result
        wide = width >= 70
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(f"{verdict_label(r.verdict):6}", self._style(r.verdict))
        name = r.gate if wide else short_gate(r.gate)
        name_w = 22 if wide else 12
        t.append(f" {name[:name_w]:<{name_w}}")
        if r.gate.startswith("seq."):
            t.append(f" {seq_text(r)}")
        else:
            t.append(f" {fmt_value(r.gate, r.value):>6} {threshold_text(r):<6}")
        muted = self.get_component_rich_style("decision--muted")
        if row.breach and r.verdict == FAIL and not r.critical:
            t.append(f" breach {row.breach} of {row.of}", self._style(FAIL))
        elif r.critical and r.verdict == FAIL:
            t.append(" CRITICAL", self._style(FAIL))
        optional = [r.window, f"n={r.samples}" if r.samples is not None else ""]
        if wide and r.production_value is not None:
            optional.append(f"prod {fmt_value(r.gate, r.production_value)}")
        for part in optional:  # only whole parts: a cut "breach 2 of …" would hide the count
            if part and t.cell_len + 1 + len(part) <= width:
                t.append(f" {part}", muted)
        if wide and r.detail and r.verdict != "pass":
            t.append(f" {r.detail}", muted)
        return t

    def build(self, width: int, height: int) -> list[Text]:
        muted = self.get_component_rich_style("decision--muted")
        if not self.rows:
            return [Text(self.empty_text, style=muted)]
        n = len(self.rows)
        cur = min(self.cursor, n - 1)
        visible = height if n <= height else max(1, height - 1)  # keep a row for "N more"
        self._top = max(0, min(self._top, n - visible))
        if cur < self._top:
            self._top = cur
        elif cur >= self._top + visible:
            self._top = cur - visible + 1
        lines = []
        for i in range(self._top, min(n, self._top + visible)):
            line = self._line(self.rows[i], width)
            line.truncate(width, overflow="ellipsis")
            if i == cur and self.has_focus:
                line.stylize(self.get_component_rich_style("decision--cursor"))
            lines.append(line)
        below, above = n - (self._top + visible), self._top
        if n > height:
            lines.append(Text(f"  {above} above, {max(0, below)} below (↑/↓)", style=muted))
        return lines

    def watch_rows(self, rows: tuple[GateRow, ...]) -> None:
        if self.cursor >= len(rows):
            self.cursor = max(0, len(rows) - 1)
        self.redraw()

    def watch_cursor(self) -> None:
        self.redraw()

    def watch_empty_text(self) -> None:
        self.redraw()

    def on_focus(self) -> None:
        self.redraw()

    def on_blur(self) -> None:
        self.redraw()
