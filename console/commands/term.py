"""The terminal helpers every command shares: the one-line error, the question, the event lines.

The event printer shows decisions (core/eventfmt.py ``HeadlessLines``): on a terminal the one
line for checks that change nothing is rewritten in place, and ``out`` / ``err`` end it first so
no other line lands on it; into a file or a pipe every line is written once.  ``--json`` prints
every event as its journal record, as before.
"""

from __future__ import annotations

import contextlib
import sys
from typing import TYPE_CHECKING

from console.core.exits import ExitCode

if TYPE_CHECKING:  # the rollback path prints no event: it need not load them
    from console.core import events as ev
    from console.core.eventfmt import HeadlessLines

_open: list[HeadlessLines] = []  # printers whose fold line is on the terminal without its newline


def _end_open_line() -> None:
    """A fold line is being rewritten in place: finish it before another line is written."""
    while _open:
        text = _open.pop().end_fold()
        if text:
            with contextlib.suppress(OSError, ValueError):
                sys.stdout.write(text)
                sys.stdout.flush()


def err(msg: str) -> None:
    """One line on stderr, prefixed with the program name.  Never raises (the terminal may be gone)."""
    _end_open_line()
    with contextlib.suppress(OSError, ValueError):
        print(f"canary-console: {msg}", file=sys.stderr, flush=True)


def out(line: str) -> bool:
    """Print one line on stdout; False when the terminal is gone (EIO, EPIPE)."""
    _end_open_line()
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
    """One event alone: one human line, or one JSON record."""
    import json

    from console.core.eventfmt import format_event

    return json.dumps(e.to_record()) if json_lines else format_event(e)


class EventPrinter:
    """A listener that prints the decision feed on stdout (``--json``: every record); returns
    False once the terminal is gone.  ``close()`` ends a fold line still open."""

    def __init__(self, json_lines: bool = False, tty: bool | None = None) -> None:
        import shutil

        from console.core.eventfmt import HeadlessLines

        self.json_lines = json_lines
        self.tty = sys.stdout.isatty() if tty is None else tty
        self.lines = HeadlessLines(self.tty, shutil.get_terminal_size().columns if self.tty else 80)

    def __call__(self, e: ev.Event) -> bool:
        if self.json_lines:
            return out(event_line(e, True))
        return self._write(self.lines.feed(e))

    def _write(self, text: str) -> bool:
        if not text:
            return True
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except (OSError, ValueError):
            return False
        if self.lines.open and self.lines not in _open:
            _open.append(self.lines)  # err() / out() end it before their line
        elif not self.lines.open and self.lines in _open:
            _open.remove(self.lines)
        return True

    def close(self) -> bool:
        if self.lines in _open:
            _open.remove(self.lines)
        return self._write(self.lines.close())


def event_printer(json_lines: bool = False, tty: bool | None = None) -> EventPrinter:
    """The headless listener: decisions, and one line for the checks that change nothing."""
    return EventPrinter(json_lines, tty)


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
