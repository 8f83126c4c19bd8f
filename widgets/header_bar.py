"""One line that answers "where is the traffic, is it healthy, who drives": version, deployment,
state, stage i/N with its %, the countdown and the driver.  Parts drop from the right by
priority when the terminal is narrow, never the state."""

from __future__ import annotations

from dataclasses import dataclass

from rich.style import Style
from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

# state -> symbol; the state word itself is always shown (colour is never the only signal)
STATE_SYMBOL = {
    "starting": "…",
    "observing": "●",
    "paused": "‖",
    "holding": "◆",
    "rolling back": "↺",
    "rolled back": "✗",
    "at 100%": "✓",
    "promoted": "★",
    "interrupted": "‖",
    "failed": "✗",
}
STATE_CLASS = {
    "observing": "ok", "at 100%": "ok", "promoted": "ok", "starting": "ok",
    "paused": "warn", "holding": "warn", "interrupted": "warn",
    "rolling back": "bad", "rolled back": "bad", "failed": "bad",
}


@dataclass(frozen=True)
class HeaderInfo:
    version: str = ""
    deployment_id: str = ""
    state: str = "starting"
    stage: str = "-"  # "2/4 5%"
    countdown: str = ""  # "04:12 left"
    driver: str = ""
    role: str = "driver"  # driver | watcher | replay
    dry_run: bool = False
    weight: str = ""  # "canary 5% / prod 95%"
    link: str = ""  # a detached engine's link: "engine pid 4242 3ms" / "ENGINE LOST: ..."
    hosts: str = ""  # a fleet: "hosts 3/3 confirmed", or "hosts 2/3 confirmed (edge-3: unconfirmed)"
    hosts_ok: bool = True  # False: some host did not confirm (shown as a warning, with its name)


def fmt_countdown(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = max(0, int(seconds + 0.999))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return (f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}") + " left"


class HeaderBar(Widget):
    DEFAULT_CSS = """
    HeaderBar {
        height: 1;
        width: 1fr;
        background: $panel;
        color: $foreground;
    }
    HeaderBar > .header--ok { color: $success; text-style: bold; }
    HeaderBar > .header--warn { color: $warning; text-style: bold; }
    HeaderBar > .header--bad { color: $error; text-style: bold reverse; }
    HeaderBar > .header--dim { color: $foreground-muted; }
    HeaderBar > .header--role { color: $accent; text-style: bold; }
    """
    COMPONENT_CLASSES = {"header--ok", "header--warn", "header--bad", "header--dim", "header--role"}

    info: reactive[HeaderInfo] = reactive(HeaderInfo, layout=False)

    def render(self) -> Text:
        i = self.info
        cls = STATE_CLASS.get(i.state, "warn")
        state = f" {STATE_SYMBOL.get(i.state, '·')} {i.state.upper()} "
        parts: list[tuple[int, str, Style | None]] = [  # (priority: lower drops last, text, style)
            (0, state, self.get_component_rich_style(f"header--{cls}")),
            (1, f" {i.link} " if i.link.startswith(("ENGINE LOST", "now watching")) else "",
             self.get_component_rich_style("header--bad")),
            (2, f" {i.stage}" if i.stage != "-" else "", None),
            (3, f"  {i.countdown}" if i.countdown else "", None),
            (4, f"  {i.weight}" if i.weight else "", None),
            (5, f"  {i.hosts}" if i.hosts else "", None if i.hosts_ok else self.get_component_rich_style("header--warn")),
            (6, f"  {i.version}" + (" (dry run)" if i.dry_run else ""), None),
            (7, ("  READ-ONLY " + i.role) if i.role != "driver" else "", self.get_component_rich_style("header--role")),
            (8, f"  driver {i.driver}" if i.driver else "", self.get_component_rich_style("header--dim")),
            (9, f"  {i.link}" if i.link and not i.link.startswith(("ENGINE LOST", "now watching")) else "",
             self.get_component_rich_style("header--dim")),
            (10, f"  {i.deployment_id}" if i.deployment_id else "", self.get_component_rich_style("header--dim")),
        ]
        width = self.size.width or 80
        keep = sorted(parts, key=lambda p: p[0])
        total, chosen = 0, set()
        for prio, text, _ in keep:
            if text and total + len(text) <= width:
                chosen.add(prio)
                total += len(text)
        out = Text(no_wrap=True, overflow="ellipsis")
        for prio, text, style in parts:
            if prio in chosen:
                out.append(text, style or "")
        return out
