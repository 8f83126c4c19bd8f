"""What a dialog asks and what the help lists: plain data, so the App builds them without
importing the screens (they load on the first dialog, not at start)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from console.core.config import normalize_weight


@dataclass(frozen=True)
class Confirm:
    """What a confirmation asks: ``default_yes`` puts focus on the confirm button (the safe
    direction, rollback), otherwise on Cancel (promote).  ``alt`` adds a second way to say yes
    (quit: detach or stop the engine) on the key ``alt_key``."""

    title: str
    body: str
    yes: str
    no: str = "Cancel"
    default_yes: bool = False
    danger: bool = False
    alt: str = ""
    alt_key: str = "s"


@dataclass(frozen=True)
class KeyHelp:
    key: str
    description: str
    enabled: bool
    why: str = ""  # why it is disabled now


# ---------------------------------------------------------------------------- the questions
def weights(s: Any) -> str:
    w = s.weight
    return "canary ?% (nothing applied yet)" if w is None else f"canary {w}% / production {normalize_weight(100 - w)}%"


def advance(s: Any, left: float | None) -> Confirm:
    nxt = s.stages[s.index + 1]
    skip = f", skipping {left:.0f}s of observation at {s.stages[s.index]}%" if left else ""
    return Confirm(f"Advance to {nxt}%?", f"{weights(s)}  →  canary {nxt}% / production {normalize_weight(100 - nxt)}%{skip}.",
                   "Advance")


def step_back(s: Any) -> Confirm:
    prev = s.stages[s.index - 1]
    return Confirm(f"Step back to {prev}%?", f"{weights(s)}  →  canary {prev}% / production {normalize_weight(100 - prev)}%.",
                   "Step back", default_yes=True)


def rollback(s: Any, who: str) -> Confirm:
    """Rollback is the safe direction: the focus starts on "Roll back" (r, enter)."""
    return Confirm("Roll back now?", f"{weights(s)}  →  canary 0% / production 100%.\n"
                   f"Every request goes to production. Journaled as: manual rollback by {who}.",
                   "Roll back", default_yes=True, danger=True)


def break_glass(s: Any) -> Confirm:
    return Confirm("The engine is gone: roll back through the router?",
                   f"{weights(s)}  →  canary 0% / production 100%.\nNo engine answers; this console rewrites the "
                   "upstream file and reloads nginx itself (break-glass), and journals it.", "Roll back",
                   default_yes=True, danger=True)


def promote(s: Any) -> Confirm:
    """Defaults to Cancel and names the exact change."""
    return Confirm(f"Promote {s.version} to production?",
                   f"{s.version} already serves canary 100% / production 0%. Promoting records it as the "
                   f"production version and ends deployment {s.deployment_id}: this console will no longer "
                   "offer to roll it back.", "Promote")


def take_over(s: Any) -> Confirm:
    who = s.driver or "The current driver"
    return Confirm("Take over the rollout?", f"{who} drives now; the engine journals the hand-over and tells them.",
                   "Take over")


def quit_live(s: Any, detached: bool) -> Confirm:
    """The traffic stays where it is, and how to come back."""
    resume = f"canary-console deploy --version {s.version} --resume"
    if detached:
        return Confirm("Quit the console while the rollout is live?",
                       "Detach (y): the engine keeps running the rollout, its gates and automatic rollback; "
                       f"reattach with canary-console attach.\nStop the engine (s): the traffic stays where it is "
                       f"({weights(s)}); resume with {resume}.", "Detach", alt="Stop the engine")
    return Confirm("Quit while the rollout is live?",
                   f"The engine stops and the traffic stays where it is: {weights(s)}.\n"
                   f"Resume with: {resume} (or canary-console attach to a detached engine)", "Quit")
