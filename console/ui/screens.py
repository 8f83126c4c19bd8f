"""Dialogs and secondary screens: confirmations, help, the detail chart, the fault menu.

Each screen gets its data when it is pushed (data down) and answers through ``dismiss``
(intent up); none of them talks to the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, OptionList, Static
from textual.widgets.option_list import Option

from console.ui.asks import Confirm, KeyHelp
from console.ui.model import Point
from widgets.keybar import KeyBar
from widgets.verdicts import fmt_value, is_percent, is_seconds


class ConfirmScreen(ModalScreen[str]):
    """Answers "yes", "alt" or "" (cancel).  y confirms, n / escape cancel, enter presses the
    focused button, left / right / tab move between the buttons."""

    BINDINGS = [
        Binding("y", "answer('yes')", "Yes", show=True),
        Binding("n,escape", "answer('')", "No", show=True),
        Binding("left,shift+tab", "move(-1)", "Previous", show=False),
        Binding("right,tab", "move(1)", "Next", show=False),
    ]

    def __init__(self, ask: Confirm) -> None:
        super().__init__(classes="-danger" if ask.danger else "")
        self.ask = ask

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(Text(self.ask.title, style="bold"), id="dialog-title")
            yield Static(self.ask.body, id="dialog-body", markup=False)
            with Horizontal(id="dialog-buttons"):
                yield Button(f"{self.ask.yes} (y)", id="yes", variant="error" if self.ask.danger else "primary",
                             compact=True)
                if self.ask.alt:
                    yield Button(f"{self.ask.alt} ({self.ask.alt_key})", id="alt", variant="warning", compact=True)
                yield Button(f"{self.ask.no} (n)", id="no", variant="default", compact=True)

    def on_mount(self) -> None:
        self.query_one("#yes" if self.ask.default_yes else "#no", Button).focus()

    def on_key(self, event) -> None:  # type: ignore[no-untyped-def]
        if self.ask.alt and event.key == self.ask.alt_key:
            event.stop()
            self.dismiss("alt")

    def action_move(self, step: int) -> None:
        buttons = list(self.query(Button))
        cur = next((i for i, b in enumerate(buttons) if b.has_focus), 0)
        buttons[(cur + step) % len(buttons)].focus()

    def action_answer(self, answer: str) -> None:
        self.dismiss(answer)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss({"yes": "yes", "alt": "alt"}.get(event.button.id or "", ""))


class HelpScreen(ModalScreen[None]):
    """Every key, and why the ones that are off are off.  Built once (installed) and refilled
    from ``source()`` each time it is shown: opening it is one repaint, not a compose."""

    BINDINGS = [Binding("escape,question_mark,q,enter", "dismiss_help", "Close")]

    def __init__(self, source: Callable[[], tuple[Sequence[KeyHelp], Iterable[str]]]) -> None:
        super().__init__()
        self.source = source
        self._shown = Text()

    def compose(self) -> ComposeResult:
        self._shown = self._text()
        yield Static(self._shown, id="help")  # one widget: opening it costs one small layout

    def _text(self) -> Text:
        keys, notes = self.source()
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append("Keys", style="bold")
        t.append("  (dim: not available now, and why; escape or q closes)\n", style="dim")
        for k in keys:
            t.append(f"{k.key:>7}  ", style="bold" if k.enabled else "dim")
            t.append(k.description, style="" if k.enabled else "dim")
            if not k.enabled and k.why:
                t.append(f" (off: {k.why})", style="dim")
            t.append("\n")
        for n in notes:
            t.append(f"{n}\n", style="italic")
        return t

    def on_screen_resume(self) -> None:
        text = self._text()
        if text != self._shown:  # same keys as last time: no relayout, one frame
            self._shown = text
            self.query_one("#help", Static).update(text)

    def action_dismiss_help(self) -> None:
        self.dismiss(None)


def axis_label(gate: str) -> str:
    if is_percent(gate):
        return "error rate (%)"
    if is_seconds(gate):
        return "p95 latency (s)"
    return gate


class DetailScreen(Screen[None]):
    """One metric over the whole deployment, full size, with its threshold line.

    Not modal: the traffic keys (r, p, a...) keep working from here."""

    BINDINGS = [Binding("escape,q,enter", "close", "Back")]

    def __init__(self, gate: str, points: Sequence[Point]) -> None:
        super().__init__()
        self.gate = gate
        self.points = list(points)

    def compose(self) -> ComposeResult:
        from textual_plotext import PlotextPlot  # heavy: only when the operator opens a chart

        yield Static(self._summary(), id="detail-summary")
        yield PlotextPlot(id="detail-plot")
        yield KeyBar()

    def on_mount(self) -> None:
        self.replot()

    def update_points(self, points: Sequence[Point]) -> None:
        self.points = list(points)
        self.query_one("#detail-summary", Static).update(self._summary())
        self.replot()

    def _summary(self) -> str:
        last = self.points[-1] if self.points else None
        if last is None:
            return f"{self.gate}: no value yet"
        s = f"{self.gate}: canary {fmt_value(self.gate, last.value)}"
        if last.production is not None:
            s += f", production {fmt_value(self.gate, last.production)}"
        if last.threshold is not None:
            s += f", threshold {fmt_value(self.gate, last.threshold)}"
        return s + f"  ({len(self.points)} checks; escape goes back)"

    def replot(self) -> None:
        from textual_plotext import PlotextPlot

        plot = self.query_one(PlotextPlot)
        plt = plot.plt
        plt.clear_data()
        plt.clear_figure()
        scale = 100.0 if is_percent(self.gate) else 1.0
        xs = [p.x for p in self.points if p.value is not None]
        ys = [p.value * scale for p in self.points if p.value is not None]
        if xs:
            plt.plot(xs, ys, label="canary", marker="braille")
        px = [p.x for p in self.points if p.production is not None]
        py = [p.production * scale for p in self.points if p.production is not None]  # type: ignore[operator]
        if px:
            plt.plot(px, py, label="production", marker="dot")
        thr = next((p.threshold for p in reversed(self.points) if p.threshold is not None), None)
        if thr is not None:
            plt.hline(thr * scale)
            plt.text(f"threshold {fmt_value(self.gate, thr)}", x=xs[0] if xs else 0, y=thr * scale)
        plt.title(self.gate)
        plt.xlabel("seconds since the deployment started")
        plt.ylabel(axis_label(self.gate))
        plot.refresh()

    def action_close(self) -> None:
        self.dismiss(None)


class FaultMenu(ModalScreen[str | None]):
    """The demo sandbox's fault injection: pick one, enter applies it."""

    BINDINGS = [Binding("escape,q", "cancel", "Cancel")]

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__()
        self.names = list(names)

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(Text("Inject a fault into the canary (demo sandbox)", style="bold"), id="dialog-title")
            yield OptionList(*[Option(n, id=n) for n in self.names], id="fault-list")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(event.option.id)

    def action_cancel(self) -> None:
        self.dismiss(None)
