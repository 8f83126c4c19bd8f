"""The stage timeline: every stage with its state (done / current / pending / failed), the
current stage's observation progress, why it is waiting, and the latest operator actions and
milestones (each action is acknowledged here as well as in a notification)."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from rich.text import Text
from textual.reactive import reactive

from widgets.lines import LinesWidget

DONE, CURRENT, PENDING, FAILED = "done", "current", "pending", "failed"
MARK = {DONE: "✓", CURRENT: "▶", PENDING: "·", FAILED: "✗"}


@dataclass(frozen=True)
class TimelineView:
    stages: tuple[float, ...] = ()
    marks: tuple[str, ...] = ()  # one of DONE/CURRENT/PENDING/FAILED per stage
    progress: float | None = None  # the current stage's observation done, 0..1
    status: str = ""  # "observing 5%: 04:12 left" / "HOLDING: why" / "ROLLED BACK: why"
    level: str = "info"  # info | warning | error: how the status line is styled
    entries: tuple[tuple[str, str, str], ...] = ()  # (time, text, level), newest last
    shadow: str = ""  # the shadow stage's mark (DONE/CURRENT/PENDING/FAILED), shown first; "" = none


def stage_marks(stages: tuple[float, ...], index: int, passed: tuple[int, ...], failed_index: int | None,
                finished_ok: bool) -> tuple[str, ...]:
    out = []
    for i in range(len(stages)):
        if failed_index is not None and i == failed_index:
            out.append(FAILED)
        elif i in passed or (finished_ok and i <= index):
            out.append(DONE)
        elif i == index and failed_index is None:
            out.append(CURRENT)
        else:
            out.append(PENDING)
    return tuple(out)


class StageTimeline(LinesWidget):
    DEFAULT_CSS = """
    StageTimeline {
        height: auto;
        min-height: 2;
        padding: 0 1;
        text-wrap: nowrap;
    }
    StageTimeline > .timeline--done { color: $success; }
    StageTimeline > .timeline--current { color: $accent; text-style: bold reverse; }
    StageTimeline > .timeline--pending { color: $foreground-muted; }
    StageTimeline > .timeline--failed { color: $error; text-style: bold reverse; }
    StageTimeline > .timeline--bar { color: $accent; }
    StageTimeline > .timeline--warning { color: $warning; text-style: bold; }
    StageTimeline > .timeline--error { color: $error; text-style: bold; }
    StageTimeline > .timeline--muted { color: $foreground-muted; }
    """
    COMPONENT_CLASSES = {
        "timeline--done", "timeline--current", "timeline--pending", "timeline--failed", "timeline--bar",
        "timeline--warning", "timeline--error", "timeline--muted",
    }

    view: reactive[TimelineView] = reactive(TimelineView, repaint=False)
    entry_rows: reactive[int] = reactive(1, repaint=False)  # how many recent entries to show

    def watch_view(self) -> None:
        self.redraw()

    def watch_entry_rows(self) -> None:
        self.redraw()

    def _status_lines(self, width: int) -> list[str]:
        """The status wraps to at most two rows (a hold's reason matters), then ends with "…"."""
        words = textwrap.wrap(self.view.status, width) or [""]
        if len(words) > 2:
            words = [words[0], words[1][: max(0, width - 1)] + "…"]
        return words

    def build(self, width: int, height: int) -> list[Text]:
        v = self.view
        width = max(20, width)
        bar_w = 10 if width >= 70 else 6
        first = Text(no_wrap=True, overflow="ellipsis")
        cells = [("shadow", v.shadow)] if v.shadow and v.stages else []
        cells += [(f"{pct}%", mark) for pct, mark in zip(v.stages, v.marks, strict=False)]
        for i, (label, mark) in enumerate(cells):
            if i:
                first.append(" ─ ", self.get_component_rich_style("timeline--muted"))
            first.append(f"{MARK[mark]} {label}", self.get_component_rich_style(f"timeline--{mark}"))
            if mark == CURRENT and v.progress is not None:
                filled = round(v.progress * bar_w)
                first.append(" " + "█" * filled + "░" * (bar_w - filled), self.get_component_rich_style("timeline--bar"))
                first.append(f" {v.progress * 100:3.0f}%")
        if not v.stages:
            first.append("waiting for the engine…", self.get_component_rich_style("timeline--muted"))
        lines = [first]
        style = {"warning": "timeline--warning", "error": "timeline--error"}.get(v.level)
        for part in self._status_lines(width):
            lines.append(Text(part, style=self.get_component_rich_style(style) if style else "", no_wrap=True))
        for t, text, level in v.entries[-self.entry_rows:] if self.entry_rows > 0 else ():
            line = Text(no_wrap=True, overflow="ellipsis")
            line.append(f"{t} ", self.get_component_rich_style("timeline--muted"))
            lstyle = {"warning": "timeline--warning", "error": "timeline--error"}.get(level)
            line.append(text, self.get_component_rich_style(lstyle) if lstyle else "")
            lines.append(line)
        for line in lines:
            line.truncate(width, overflow="ellipsis")
        return lines

    def get_content_height(self, container, viewport, width: int) -> int:  # type: ignore[no-untyped-def]
        return 1 + len(self._status_lines(max(20, width))) + min(self.entry_rows, len(self.view.entries))
