"""The one place engine events become Textual Messages.

The link reader folds each event into the ConsoleModel, then posts what ``translate`` returns.
``StateChanged`` and ``LinesPending`` are high-rate: they carry no payload (the receiver reads
the model or drains the pending buffer) and ``can_replace`` a queued twin, so a burst of
events or log lines costs one redraw.  Everything an operator must notice (an action
acknowledged, an automatic rollback) is its own message and is never collapsed.
"""

from __future__ import annotations

from textual.message import Message

from console.core import events as ev
from console.core.eventfmt import format_event


class StateChanged(Message):
    """The model changed: redraw from it."""

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, StateChanged)


class LinesPending(Message):
    """A log source has lines waiting in its PendingLines buffer."""

    def __init__(self, source: str) -> None:
        super().__init__()
        self.source = source

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, LinesPending) and message.source == self.source


class SourceHeartbeat(Message):
    """A log reader finished one poll: its pane is fresh (for the stale badge)."""

    def __init__(self, source: str) -> None:
        super().__init__()
        self.source = source

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, SourceHeartbeat) and message.source == self.source


class SourceStatus(Message):
    """Something about a log source itself: opened, rotated, truncated, unavailable."""

    def __init__(self, source: str, kind: str, detail: str) -> None:
        super().__init__()
        self.source, self.kind, self.detail = source, kind, detail


class ActionAcknowledged(Message):
    """The engine accepted (or refused) an operator intent: notify within the second."""

    def __init__(self, action: str, who: str, accepted: bool, detail: str) -> None:
        super().__init__()
        self.action, self.who, self.accepted, self.detail = action, who, accepted, detail


class RolledBackNotice(Message):
    """Traffic is back at 0%; an automatic rollback also rings the bell."""

    def __init__(self, automatic: bool, reason: str, from_weight: int) -> None:
        super().__init__()
        self.automatic, self.reason, self.from_weight = automatic, reason, from_weight


class Milestone(Message):
    """A one-off worth a notification: stage passed, holding, 100%, failures."""

    def __init__(self, text: str, severity: str = "information", bell: bool = False) -> None:
        super().__init__()
        self.text, self.severity, self.bell = text, severity, bell


class LinkStatusChanged(Message):
    """A detached engine's link changed: latency, role (taken over), lost, ended."""

    def __init__(self, status: object) -> None:
        super().__init__()
        self.status = status

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, LinkStatusChanged)


class LinkEnded(Message):
    """The engine link has no more events (engine finished, journal gone, socket closed)."""

    def __init__(self, reason: str = "") -> None:
        super().__init__()
        self.reason = reason


def translate(e: ev.Event) -> list[Message]:
    """Messages for one event, after the model has folded it."""
    out: list[Message] = [StateChanged()]
    match e:
        case ev.OperatorAction():
            who = e.operator.label() if e.operator else "an unknown operator"
            out.append(ActionAcknowledged(e.action, who, e.accepted, e.detail))
        case ev.RolledBack():
            out.append(RolledBackNotice(e.automatic, e.reason, e.from_weight))
        case ev.RollbackStarted() if e.automatic:
            out.append(Milestone(f"automatic rollback from {e.weight}%: {e.reason}", "error"))
        case ev.Holding():
            out.append(Milestone(f"holding at {e.weight}%: {e.reason}. Press p to resume, r to roll back.", "warning"))
        case ev.StagePassed():
            shadow = e.index == ev.SHADOW_INDEX
            out.append(Milestone("shadow stage passed" if shadow else f"stage {e.index + 1} ({e.weight}%) passed"))
        case ev.Completed():
            out.append(Milestone("canary at 100%: press P to promote, r to roll back"))
        case ev.Promoted():
            out.append(Milestone("promoted to production"))
        case ev.RouterFailed() | ev.Failed():
            out.append(Milestone(format_event(e)[9:], "error", bell=True))
        case ev.Interrupted():
            out.append(Milestone(f"engine stopped at {e.weight}%; traffic stays there. Resume: {e.resume_command}",
                                 "warning"))
        case ev.Note() if e.level in ("warning", "error"):
            out.append(Milestone(e.message, "warning" if e.level == "warning" else "error"))
    return out
