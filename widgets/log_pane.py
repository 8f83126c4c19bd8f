"""A log tail pane: a bounded ring buffer of raw lines, follow / pause, a ``/`` regex filter
with highlighted matches, a wrap toggle and a "+N new lines" marker.

Why not RichLog: it keeps a pre-rendered Strip per line and grows without bound.  ``LogView``
keeps only the raw strings (``deque(maxlen=max_lines)``), renders just the rows on screen
(the Line API), and caches a screenful of strips.  Lines arrive through a ``PendingLines``
buffer that a reader thread fills; the pane drains it at most ``drain_interval`` times a second,
so a flood of 5,000 lines/s costs a few redraws a second, not 5,000.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable, Iterable

from rich.cells import cell_len, get_character_cell_size
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.cache import LRUCache
from textual.containers import Vertical
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import Input

from console.adapters.logtail import PendingLines
from console.core.eventfmt import FoldLine

MAX_LINE = 4096  # characters kept per line: bounded memory and bounded wrap rows
_CONTROL = re.compile("[\u0000-\u0008\u000b-\u001f\u007f]")


def clean(line: str) -> str:
    line = line.expandtabs(4) if "\t" in line else line
    line = _CONTROL.sub("�", line) if not line.isprintable() else line
    return line[:MAX_LINE]


def wrap_offsets(text: str, width: int) -> list[tuple[int, int]]:
    """Character spans of the rows ``text`` takes at ``width`` cells."""
    if width <= 0 or not text:
        return [(0, len(text))]
    if text.isascii():
        return [(i, min(len(text), i + width)) for i in range(0, len(text), width)]
    out, start, cells = [], 0, 0
    for i, ch in enumerate(text):
        w = get_character_cell_size(ch)
        if cells + w > width:
            out.append((start, i))
            start, cells = i, 0
        cells += w
    out.append((start, len(text)))
    return out


class LogView(ScrollView, can_focus=True):
    """The scrolling body of a pane (the focus target)."""

    DEFAULT_CSS = """
    LogView {
        height: 1fr;
        background: $surface;
        scrollbar-size-vertical: 0;
        scrollbar-size-horizontal: 0;
    }
    LogView:focus { background-tint: $foreground 4%; }
    LogView > .log--match { text-style: bold reverse; }
    LogView > .log--note { color: $warning; text-style: italic; }
    """
    COMPONENT_CLASSES = {"log--match", "log--note"}
    BINDINGS = [
        Binding("G", "follow_end", "End", show=False),
    ]

    class FollowChanged(Message):
        def __init__(self, view: LogView, follow: bool) -> None:
            super().__init__()
            self.view, self.follow = view, follow

    def __init__(self, max_lines: int = 5000, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.max_lines = max(10, max_lines)
        self._lines: deque[str] = deque(maxlen=self.max_lines)
        self._notes: set[int] = set()  # seqs of lines that are the pane's own notes (styled)
        self._next_seq = 0  # seq of the next line appended; seq of _lines[0] is _next_seq - len
        self._rows: deque[tuple[int, int, int]] = deque()  # (seq, start, end) rows on the virtual screen
        self._max_width = 0
        self._cache: LRUCache[tuple[int, int], Strip] = LRUCache(256)
        self.pattern: re.Pattern[str] | None = None
        self.wrap = False
        self.follow = True
        self.new_lines = 0  # lines that arrived while not following
        self._fold_seq: int | None = None  # seq of the last line when it is a FoldLine
        self._replaced = False

    # ------------------------------------------------------------------ data
    @property
    def first_seq(self) -> int:
        return self._next_seq - len(self._lines)

    @property
    def lines(self) -> list[str]:
        return list(self._lines)

    @property
    def row_count(self) -> int:
        return len(self._rows)

    def _line(self, seq: int) -> str:
        return self._lines[seq - self.first_seq]

    def _rows_for(self, seq: int, text: str) -> list[tuple[int, int, int]]:
        if self.pattern is not None and self.pattern.search(text) is None:
            return []
        if self.wrap:
            return [(seq, a, b) for a, b in wrap_offsets(text, self._wrap_width())]
        return [(seq, 0, len(text))]

    def _wrap_width(self) -> int:
        return max(10, self.scrollable_content_region.width or self.size.width or 80)

    def append(self, lines: Iterable[str], note: bool = False) -> int:
        """Add lines (newest last); returns how many were added.  A ``FoldLine`` right after
        another one replaces it (the events pane's one updating line for quiet checks)."""
        added = 0
        rows = self._rows
        for raw in lines:
            fold = isinstance(raw, FoldLine)
            if fold and self._fold_seq is not None and self._fold_seq == self._next_seq - 1 and self._lines:
                self._replace_last(clean(raw))
                continue
            self._fold_seq = self._next_seq if fold else None
            text = clean(raw)
            if len(self._lines) == self.max_lines:
                self._notes.discard(self.first_seq)
            seq = self._next_seq
            self._lines.append(text)
            self._next_seq += 1
            if note:
                self._notes.add(seq)
            new = self._rows_for(seq, text)
            rows.extend(new)
            if new and not self.wrap:
                self._max_width = max(self._max_width, len(text) if text.isascii() else cell_len(text))
            added += 1
        # rows of evicted lines leave from the front; keep a paused view where it was
        first, dropped = self.first_seq, 0
        while rows and rows[0][0] < first:
            rows.popleft()
            dropped += 1
        if added or self._replaced:
            replaced, self._replaced = self._replaced, False
            # rows are cached by (line, offset): new lines leave the cached ones valid, a replaced line does not
            self._after_change(dropped, keep_cache=not replaced)
        return added

    def _replace_last(self, text: str) -> None:
        seq = self._next_seq - 1
        self._lines[-1] = text
        while self._rows and self._rows[-1][0] == seq:
            self._rows.pop()
        new = self._rows_for(seq, text)
        self._rows.extend(new)
        if new and not self.wrap:
            self._max_width = max(self._max_width, len(text) if text.isascii() else cell_len(text))
        self._replaced = True

    def _after_change(self, dropped_rows: int = 0, keep_cache: bool = False) -> None:
        if not keep_cache:
            self._cache.clear()
        width = self._wrap_width() if self.wrap else self._max_width
        self.virtual_size = Size(width, len(self._rows))
        if self.follow:
            self.scroll_to(y=self.max_scroll_y, animate=False, immediate=True, force=True)
            # a scrollbar that appears with these lines shrinks the view: stay at the end after layout
            self.call_after_refresh(self._stay_at_end)
        else:
            if dropped_rows:
                self.scroll_to(y=max(0, self.scroll_y - dropped_rows), animate=False, immediate=True, force=True)
        self.refresh()

    def _stay_at_end(self) -> None:
        if self.follow and self.scroll_y != self.max_scroll_y:
            self.scroll_to(y=self.max_scroll_y, animate=False, immediate=True, force=True)

    def note_new(self, n: int) -> None:
        if not self.follow:
            self.new_lines += n

    def rebuild(self) -> None:
        """Recompute the rows after the filter, the wrap mode or the width changed."""
        rows: deque[tuple[int, int, int]] = deque()
        self._max_width = 0
        first = self.first_seq
        for i, text in enumerate(self._lines):
            new = self._rows_for(first + i, text)
            if new:
                rows.extend(new)
                if not self.wrap:
                    self._max_width = max(self._max_width, cell_len(text))
        self._rows = rows
        self._after_change()

    def clear(self) -> None:
        self._lines.clear()
        self._rows.clear()
        self._notes.clear()
        self._fold_seq = None
        self._max_width = 0
        self.new_lines = 0
        self._after_change()

    # ------------------------------------------------------------------ modes
    def set_pattern(self, pattern: re.Pattern[str] | None) -> None:
        self.pattern = pattern
        self.rebuild()

    def set_wrap(self, wrap: bool) -> None:
        self.wrap = wrap
        if wrap:
            self.scroll_to(x=0, animate=False, immediate=True, force=True)
        self.rebuild()

    def set_follow(self, follow: bool) -> None:
        if follow == self.follow:
            return
        self.follow = follow
        if follow:
            self.new_lines = 0
            self.scroll_to(y=self.max_scroll_y, animate=False, immediate=True, force=True)
        self.post_message(self.FollowChanged(self, follow))

    def action_follow_end(self) -> None:
        self.set_follow(True)

    # scrolling up is the operator reading back: stop following (the marker counts what arrives)
    def action_scroll_up(self) -> None:
        self.set_follow(False)
        super().action_scroll_up()

    def action_page_up(self) -> None:
        self.set_follow(False)
        super().action_page_up()

    def action_scroll_home(self) -> None:
        self.set_follow(False)
        super().action_scroll_home()

    def action_scroll_end(self) -> None:
        self.set_follow(True)

    def _on_mouse_scroll_up(self, event) -> None:  # type: ignore[no-untyped-def]
        self.set_follow(False)
        super()._on_mouse_scroll_up(event)

    def on_resize(self) -> None:
        if self.wrap:
            self.rebuild()
        elif self.follow:
            self._stay_at_end()

    # ------------------------------------------------------------------ rendering
    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        idx = scroll_y + y
        width = self.scrollable_content_region.width
        base = self.rich_style
        if idx >= len(self._rows):
            return Strip.blank(width, base)
        seq, a, b = self._rows[idx]
        key = (seq, a)
        strip = self._cache.get(key)
        if strip is None:
            strip = self._render_row(seq, a, b, base)
            self._cache[key] = strip
        return strip.crop_extend(scroll_x, scroll_x + width, base)

    def _render_row(self, seq: int, a: int, b: int, base: Style) -> Strip:
        line = self._line(seq)
        text = Text(line[a:b], no_wrap=True, end="")
        if seq in self._notes:
            text.stylize(self.get_component_rich_style("log--note"))
        if self.pattern is not None:
            style = self.get_component_rich_style("log--match")
            for m in self.pattern.finditer(line):
                s, e = max(m.start(), a), min(m.end(), b)
                if s < e:
                    text.stylize(style, s - a, e - a)
        # the pane's own colours under every segment (and never a style-less one: NO_COLOR's filter needs a style)
        segments = list(Segment.apply_style(text.render(self.app.console, end=""), base))
        return Strip(segments, text.cell_len)

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._cache.clear()


class LogPane(Vertical):
    """A titled pane: a LogView, a hidden filter input, and a status in the border title.

    Data down: a reader fills ``pending`` and posts a wake-up; the App calls ``schedule_drain``.
    """

    DEFAULT_CSS = """
    LogPane {
        height: 1fr;
        border-top: solid $primary-muted;
        border-title-align: left;
    }
    LogPane:focus-within { border-top: solid $accent; }
    LogPane.-stale { border-top: solid $warning; }
    LogPane > Input { display: none; height: 1; border: none; padding: 0 1; }
    LogPane.-filtering > Input { display: block; }
    """

    source_title: reactive[str] = reactive("")
    status: reactive[str] = reactive("")  # "following" / "waiting for file" / "docker unreachable: ..."
    stale_for: reactive[float | None] = reactive(None)

    class FilterError(Message):
        def __init__(self, pane: LogPane, text: str) -> None:
            super().__init__()
            self.pane, self.text = pane, text

    def __init__(self, source: str, title: str, *, max_lines: int = 5000, poll_interval: float | None = None,
                 drain_interval: float = 0.5, clock: Callable[[], float] = time.monotonic,
                 id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.source = source
        self.view = LogView(max_lines)
        self.pending = PendingLines(max_lines)
        self.poll_interval = poll_interval
        self.drain_interval = drain_interval
        self.clock = clock
        self.last_fresh = clock()
        self.dropped = 0
        self.filter_text = ""
        self._drain_scheduled = False
        self.set_reactive(LogPane.source_title, title)

    def compose(self):  # type: ignore[no-untyped-def]
        yield self.view  # the filter Input is mounted on the first "/": a faster first frame

    def on_mount(self) -> None:
        self._update_title()

    # ------------------------------------------------------------------ data in
    def schedule_drain(self) -> None:
        """Coalesce wake-ups: drain at most once per ``drain_interval``."""
        if not self._drain_scheduled:
            self._drain_scheduled = True
            self.set_timer(self.drain_interval, self.drain, name="drain")

    def drain(self) -> int:
        self._drain_scheduled = False
        if not self.screen.is_current and len(self.pending) < self.pending.maxlen:
            # a dialog or the detail chart covers the pane: no redraws under it (the buffer is bounded)
            self.schedule_drain()
            return 0
        lines, dropped = self.pending.drain()
        self.last_fresh = self.clock()
        if dropped:
            self.dropped += dropped
        if lines:
            self.view.note_new(self.view.append(lines))  # a fold line that replaced its previous one is not new
        self._update_title()
        return len(lines)

    def write_note(self, text: str) -> None:
        """A line from the console itself (file rotated, docker unreachable), styled apart."""
        self.view.note_new(1)
        self.view.append([f"— {text}"], note=True)
        self._update_title()

    def heartbeat(self) -> None:
        self.last_fresh = self.clock()

    def check_stale(self, now: float) -> None:
        """Stale when the reader has not reported for twice its poll interval."""
        if self.poll_interval is None:
            self.stale_for = None
            return
        age = now - self.last_fresh
        self.stale_for = age if age > 2 * self.poll_interval else None

    # ------------------------------------------------------------------ operator
    def toggle_follow(self) -> bool:
        self.view.set_follow(not self.view.follow)
        self._update_title()
        return self.view.follow

    def toggle_wrap(self) -> bool:
        self.view.set_wrap(not self.view.wrap)
        self._update_title()
        return self.view.wrap

    def open_filter(self) -> None:
        self.add_class("-filtering")
        found = self.query(Input)
        if found:
            inp = found.first()
        else:
            inp = Input(placeholder="regex filter; enter applies, empty clears, escape cancels", compact=True)
            inp.cursor_blink = False  # nothing blinks: snapshots are stable and SSH stays quiet
            self.mount(inp)
        inp.value = self.filter_text
        inp.focus()

    def close_filter(self) -> None:
        self.remove_class("-filtering")
        self.view.focus()

    def apply_filter(self, text: str) -> bool:
        if not text:
            self.filter_text = ""
            self.view.set_pattern(None)
            self._update_title()
            return True
        try:
            pat = re.compile(text, re.IGNORECASE if text.islower() else 0)
        except re.error as e:
            self.post_message(self.FilterError(self, f"filter /{text}/ is not a valid regular expression: {e}; "
                                                     "allowed: a Python regex such as 5\\d\\d|timeout"))
            return False
        self.filter_text = text
        self.view.set_pattern(pat)
        self._update_title()
        return True

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if self.apply_filter(event.value.strip()):
            self.close_filter()

    def on_key(self, event) -> None:  # type: ignore[no-untyped-def]
        if event.key == "escape" and self.has_class("-filtering"):
            event.stop()
            event.prevent_default()
            self.close_filter()

    def on_log_view_follow_changed(self, event: LogView.FollowChanged) -> None:
        event.stop()
        self._update_title()

    # ------------------------------------------------------------------ title
    def watch_stale_for(self) -> None:
        self.set_class(self.stale_for is not None, "-stale")
        self._update_title()

    def watch_status(self) -> None:
        self._update_title()

    def _update_title(self) -> None:
        v = self.view
        bits = [self.source_title]
        if self.status:
            bits.append(self.status)
        bits.append("following" if v.follow else f"PAUSED +{v.new_lines} new lines")
        if self.filter_text:
            bits.append(f"/{self.filter_text}/")
        if v.wrap:
            bits.append("wrap")
        if self.dropped:
            bits.append(f"{self.dropped} skipped")
        if self.stale_for is not None:
            bits.append(f"STALE {self.stale_for:.0f}s")
        title = " · ".join(bits)
        if title != self.border_title:  # setting it repaints the border: only when it changed
            self.border_title = title
