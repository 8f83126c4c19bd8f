"""The terminal helpers every command shares: the one-line error, the question, the event line."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from console.core.exits import ExitCode

if TYPE_CHECKING:  # the rollback path prints no event: it need not load them
    from console.core import events as ev


def err(msg: str) -> None:
    """One line on stderr, prefixed with the program name.  Never raises (the terminal may be gone)."""
    with contextlib.suppress(OSError, ValueError):
        print(f"canary-console: {msg}", file=sys.stderr, flush=True)


def out(line: str) -> bool:
    """Print one line on stdout; False when the terminal is gone (EIO, EPIPE)."""
    try:
        print(line, flush=True)
        return True
    except (OSError, ValueError):
        return False


def ask(question: str) -> bool | None:
    """The operator's yes/no; None when there is nobody to ask (stdin is not a terminal)."""
    if not sys.stdin or not sys.stdin.isatty():
        return None
    try:
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


def confirm(question: str, yes: bool) -> bool:
    """``--yes``, or the operator's answer; without a terminal, says to pass --yes and answers no."""
    if yes:
        return True
    answer = ask(question)
    if answer is None:
        err(f"{question} needs confirmation: run again with --yes")
        return False
    return answer


def event_line(e: ev.Event, json_lines: bool = False) -> str:
    """The headless form of an event: one human line, or one JSON record."""
    import json

    from console.core.eventfmt import format_event

    return json.dumps(e.to_record()) if json_lines else format_event(e)


def event_printer(json_lines: bool = False) -> Callable[[ev.Event], bool]:
    """A listener that prints each event as one line; returns False once the terminal is gone."""
    return lambda e: out(event_line(e, json_lines))


def report_router_error(e: Exception) -> ExitCode:
    """A router change failed: say what nginx serves now and what to do; exit 6."""
    if getattr(e, "reloaded", False):  # RouterNotVerified: the new file stays, nginx may serve it
        err(f"nginx was reloaded with the new upstream file but did not verifiably serve it: {e}. "
            "Check `canary-console status` and nginx's error log.")
    else:
        err(f"router change failed, the previous upstream file is kept and nginx was not reloaded: {e}")
    detail = getattr(e, "detail", "")
    if detail:
        with contextlib.suppress(OSError, ValueError):
            print(detail.rstrip(), file=sys.stderr)
    return ExitCode.ROUTER
