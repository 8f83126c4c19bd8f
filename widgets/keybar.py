"""The key bar: the keys that apply now, on one line, as one widget.

Textual's Footer builds a widget per key and rebuilds them all whenever bindings refresh;
that is a fifth of the console's widgets at start and a relayout under every dialog.  This
draws the same "a Advance  r Rollback ..." from ``screen.active_bindings`` as text, and redraws
only when what it would show changed.  Disabled keys are dim and keep their place.
"""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive

from widgets.lines import LinesWidget


class KeyBar(LinesWidget):
    DEFAULT_CSS = """
    KeyBar {
        dock: bottom;
        height: 1;
        background: $footer-background;
        color: $footer-foreground;
    }
    KeyBar > .keybar--key { color: $footer-key-foreground; text-style: bold; }
    KeyBar > .keybar--description { color: $footer-description-foreground; }
    KeyBar > .keybar--disabled { text-style: dim; }
    """
    COMPONENT_CLASSES = {"keybar--key", "keybar--description", "keybar--disabled"}

    show_command_palette: reactive[bool] = reactive(False, repaint=False)

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._keys: tuple[tuple[str, str, bool], ...] = ()

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self._bindings_changed)
        self._bindings_changed(self.screen)

    def watch_show_command_palette(self) -> None:
        self._bindings_changed(self.screen)

    def _bindings_changed(self, screen: object) -> None:
        if not self.is_attached or screen is not self.screen:
            return
        keys: list[tuple[str, str, bool]] = []
        seen: set[str] = set()
        for _, binding, enabled, _ in self.screen.active_bindings.values():
            if not binding.show or binding.action in seen:
                continue
            seen.add(binding.action)
            keys.append((self.app.get_key_display(binding), binding.description, enabled))
        if self.show_command_palette and self.app.ENABLE_COMMAND_PALETTE:
            keys.append((self.app.COMMAND_PALETTE_BINDING.replace("ctrl+", "^"), "palette", True))
        if tuple(keys) != self._keys:
            self._keys = tuple(keys)
            self.redraw()

    def build(self, width: int, height: int) -> list[Text]:
        key_style = self.get_component_rich_style("keybar--key")
        desc_style = self.get_component_rich_style("keybar--description")
        dim = self.get_component_rich_style("keybar--disabled")
        line = Text(no_wrap=True, overflow="ellipsis")
        for i, (key, description, enabled) in enumerate(self._keys):
            if i:
                line.append(" ")
            line.append(key, key_style if enabled else key_style + dim)
            line.append(f" {description}", desc_style if enabled else desc_style + dim)
        line.truncate(width, overflow="ellipsis")
        return [line]
