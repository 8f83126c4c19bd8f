"""A widget drawn from a list of Rich Text lines that repaints only the lines that changed.

A panel whose data changes every second (gate values, sparklines, the timeline) would
otherwise repaint every row it has, every second: over a slow SSH link that is most of the
bytes.  Here ``redraw()`` rebuilds the lines, compares them with the last ones, and marks just
the changed rows dirty, so Textual writes only those.
"""

from __future__ import annotations

from rich.segment import Segment
from rich.text import Text
from textual.geometry import Region
from textual.strip import Strip
from textual.widget import Widget


class LinesWidget(Widget):
    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._lines: list[Text] = []
        self._strips: dict[int, Strip] = {}
        self._width = -1

    def build(self, width: int, height: int) -> list[Text]:
        """The lines to show at this size (subclasses)."""
        raise NotImplementedError

    def redraw(self) -> None:
        """Rebuild from the data; repaint only the rows that differ from what is on screen."""
        if not self.is_mounted:
            return
        width, height = self.size.width, self.size.height
        new = self.build(max(1, width), max(1, height))
        old = self._lines
        self._lines = new
        if width != self._width or len(new) != len(old):
            self._width = width
            self._strips.clear()
            self.refresh(layout=self.styles.height is not None and self.styles.height.is_auto)
            return
        for y, (a, b) in enumerate(zip(old, new, strict=True)):
            if a != b:
                self._strips.pop(y, None)
                self.refresh(Region(0, y, width, 1))

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        if self._width != width:  # first paint or resized: build for this width
            self._width = width
            self._lines = self.build(max(1, width), max(1, self.size.height))
            self._strips.clear()
        if y >= len(self._lines):
            return Strip.blank(width, self.rich_style)
        strip = self._strips.get(y)
        if strip is None:
            segments = self._lines[y].render(self.app.console, end="")
            strip = Strip(list(Segment.apply_style(segments, self.rich_style))).crop_extend(0, width, self.rich_style)
            self._strips[y] = strip
        return strip

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._strips.clear()
        self._width = -1

    def on_resize(self) -> None:
        self._width = -1
        self._strips.clear()
