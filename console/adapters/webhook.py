"""Webhook alerts, as the seed's rollback actions ("Alert: Canary validation failed").

``WebhookNotifier`` consumes engine events and POSTs one JSON document per alert-worthy
event: the event's journal record plus a Slack-compatible ``text`` line.  Why it looks the
way it does:

* ``submit(event)`` is synchronous and only appends the (frozen) event to a bounded
  in-memory queue (the JSON is built later, by the delivery task), so the
  engine can call it from ``_emit`` on the rollback path: a slow, failing or hanging webhook
  never delays or blocks a rollback.  The HTTP work happens in ``run()``, a background task,
  with a per-attempt timeout and retries with exponential backoff.
* When the queue is full the *oldest* alert is dropped (the newest, typically the rollback,
  matters most) and the drop is journaled.
* Every outcome (sent, failed after N attempts, dropped, undelivered at exit) goes to
  ``journal_note(level, message, data)``.
* The URL is a secret (a Slack webhook URL is a bearer token): it is held in a ``_Secret``
  whose ``repr`` is redacted, and no message, note, ``repr`` or exception ever contains it;
  errors are reported by class name and HTTP status only.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from console.core import events as ev

NoteFn = Callable[[str, str, dict[str, Any]], object]

ALERT_EVENTS: tuple[type[ev.Event], ...] = (ev.StagePassed, ev.Holding, ev.RolledBack, ev.Completed, ev.Promoted, ev.Failed)
QUEUE_SIZE = 100
BACKOFF_BASE = 0.5
BACKOFF_MAX = 8.0


class _Secret:
    """A string that never shows itself in repr, str, f-strings or tracebacks."""

    __slots__ = ("_v",)

    def __init__(self, v: str) -> None:
        self._v = v

    def reveal(self) -> str:
        return self._v

    def __repr__(self) -> str:
        return "<redacted>"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return "<redacted>"

    def __reduce__(self) -> Any:  # never pickled into a log or a subprocess
        raise TypeError("a secret is not picklable")


def check_url(url: str) -> None:
    """ValueError (without the URL) unless ``url`` is an absolute http(s) URL."""
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("[notify] webhook_url is not valid; allowed: an absolute http:// or https:// URL (value not shown)")


def _pct(v: Any) -> str:
    return f"{v}%" if v is not None else "?"


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def alert_text(e: ev.Event) -> str:
    """The Slack ``text`` line for one event."""
    who = f"{e.version} ({e.deployment_id})" if e.deployment_id else e.version
    dry = " [dry run]" if e.dry_run else ""
    if isinstance(e, ev.RolledBack):
        failing = [r for r in e.snapshot if r.verdict in (ev.FAIL, ev.ERROR)]
        shown = failing or list(e.snapshot)
        snap = "; ".join(f"{r.gate} {_fmt(r.value)} (threshold {_fmt(r.threshold)}, {r.verdict})" for r in shown[:6])
        how = "automatic" if e.automatic else "manual"
        text = (f":rotating_light: Alert: Canary validation failed{dry}. {who} rolled back from "
                f"{_pct(e.from_weight)} to 0% ({how}): {e.reason or 'no reason given'}")
        return text + (f". Metrics: {snap}" if snap else "")
    if isinstance(e, ev.StagePassed):
        return f":white_check_mark: Canary {who}: stage {e.index + 1} at {_pct(e.weight)} passed{dry}" + (
            f" ({e.reason})" if e.reason else "")
    if isinstance(e, ev.Holding):
        return f":pause_button: Canary {who} is holding at {_pct(e.weight)}{dry}: {e.reason or 'waiting for the operator'}"
    if isinstance(e, ev.Completed):
        return f":rocket: Canary {who} reached 100% of the traffic{dry}; promote after the extended monitoring period"
    if isinstance(e, ev.Promoted):
        by = e.operator.label() if e.operator else "?"
        extra = f", approved by {', '.join(e.approvals)}" if e.approvals else ""
        forced = f", forced: {e.reason}" if e.forced else ""
        return f":tada: {who} promoted to production by {by}{extra}{forced}{dry}"
    if isinstance(e, ev.Failed):
        return f":x: Canary {who} failed{dry}: {e.reason}"
    return f"Canary {who}: {e.kind}{dry}"


def payload(e: ev.Event) -> dict[str, Any]:
    """The event's journal record, plus ``text`` for Slack-compatible receivers."""
    body = e.to_record()
    body["text"] = alert_text(e)
    return body


@dataclass
class _Item:
    kind: str
    event: ev.Event  # frozen: the JSON body is built by the delivery task, off the caller's path
    queued: float


class WebhookNotifier:
    """See the module docstring.  ``submit`` may be called from any thread."""

    def __init__(
        self,
        url: str,
        timeout: float = 5.0,
        retries: int = 3,
        journal_note: NoteFn | None = None,
        queue_size: int = QUEUE_SIZE,
        backoff: float = BACKOFF_BASE,
        transport: Any = None,
    ) -> None:
        check_url(url)
        self._url = _Secret(url)
        self.timeout = float(timeout)
        self.retries = max(0, int(retries))
        self.journal_note = journal_note
        self.backoff = float(backoff)
        self._transport = transport  # httpx transport (tests of edge cases only)
        self._queue: deque[_Item] = deque()
        self._queue_size = max(1, int(queue_size))
        self._mutex = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._closing = False
        self._last_holding: tuple[str, int, str] | None = None
        self._close_evt: asyncio.Event | None = None
        self._task: asyncio.Task[Any] | None = None
        self._inflight: str | None = None
        self.sent = 0
        self.failed = 0
        self.dropped = 0

    @classmethod
    def from_config(cls, cfg: Any, journal_note: NoteFn | None = None) -> WebhookNotifier | None:
        """None when no URL is configured ([notify] webhook_url or CANARY_WEBHOOK_URL)."""
        n = cfg["notify"]
        if not n["webhook_url"]:
            return None
        return cls(n["webhook_url"], n["timeout"], n["retries"], journal_note)

    def __repr__(self) -> str:
        return f"WebhookNotifier(url=<redacted>, timeout={self.timeout:g}, retries={self.retries})"

    __str__ = __repr__

    # ------------------------------------------------------------------ producer side
    def wants(self, e: ev.Event) -> bool:
        return isinstance(e, ALERT_EVENTS)

    def submit(self, e: ev.Event) -> bool:
        """Queue an alert for ``e`` if it is one; never blocks, never raises.  True if queued."""
        if not self.wants(e) or self._closing:
            return False
        if isinstance(e, ev.Holding):  # one alert per hold, not one per check
            key = (e.deployment_id, e.index, e.reason)
            if key == self._last_holding:
                return False
            self._last_holding = key
        elif not isinstance(e, ev.Failed):
            self._last_holding = None
        item = _Item(e.kind, e, time.monotonic())
        dropped = None
        with self._mutex:
            if len(self._queue) >= self._queue_size:
                dropped = self._queue.popleft()
                self.dropped += 1
            self._queue.append(item)
        if dropped is not None:
            self._note("warning", f"alert queue full ({self._queue_size}): dropped the oldest alert ({dropped.kind})",
                       {"event": dropped.kind})
        self._poke()
        return True

    __call__ = submit  # an engine listener: engine.add_listener(notifier)

    def _poke(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            wake.set()
        else:
            with contextlib.suppress(RuntimeError):  # loop closed
                loop.call_soon_threadsafe(wake.set)

    def pending(self) -> int:
        with self._mutex:
            return len(self._queue)

    # ------------------------------------------------------------------ consumer side
    def start(self) -> asyncio.Task[None]:
        """Start ``run()`` as a background task of the running loop (the usual way in)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(), name="webhook-notifier")
        return self._task

    async def run(self) -> None:
        """Deliver queued alerts until ``aclose``, then return once the queue is empty."""
        import httpx

        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._close_evt = asyncio.Event()
        if self._closing:
            self._close_evt.set()
        if self._task is None:
            self._task = asyncio.current_task()
        kw: dict[str, Any] = {"timeout": self.timeout, "trust_env": False, "follow_redirects": False}
        if self._transport is not None:
            kw["transport"] = self._transport
        async with httpx.AsyncClient(**kw) as client:
            while True:
                item = self._pop()
                if item is None:
                    if self._closing:
                        return
                    self._wake.clear()
                    if self.pending() == 0 and not self._closing:
                        await self._wake.wait()
                    continue
                self._inflight = item.kind
                await self._deliver(client, item)
                self._inflight = None

    def _pop(self) -> _Item | None:
        with self._mutex:
            return self._queue.popleft() if self._queue else None

    async def _deliver(self, client: Any, item: _Item) -> None:
        import httpx

        last = ""
        attempts = 0
        try:
            body = payload(item.event)
        except Exception as e:  # an alert never breaks the engine
            self.failed += 1
            why = f"alert failed: {item.kind}: cannot build the payload ({type(e).__name__})"
            self._note("warning", why, {"event": item.kind})
            return
        for attempt in range(self.retries + 1):
            attempts = attempt + 1
            try:
                r = await client.post(self._url.reveal(), json=body)
                if 200 <= r.status_code < 300:
                    self.sent += 1
                    self._note("info", f"alert sent: {item.kind}", {"event": item.kind, "attempts": attempts,
                                                                   "status": r.status_code})
                    return
                last = f"HTTP {r.status_code}"
                if 400 <= r.status_code < 500 and r.status_code not in (408, 429):
                    break  # the receiver refuses this payload: retrying will not help
            except httpx.TimeoutException:
                last = f"timed out after {self.timeout:g}s"
            except httpx.HTTPError as e:
                last = type(e).__name__  # never str(e): it may carry the URL
            except Exception as e:  # an alert never breaks the engine
                last = type(e).__name__
            if self._closing or attempt >= self.retries:
                break
            await self._backoff(min(BACKOFF_MAX, self.backoff * (2**attempt)))
        self.failed += 1
        self._note("warning", f"alert failed: {item.kind} after {attempts} attempt(s): {last}",
                   {"event": item.kind, "attempts": attempts, "error": last})

    async def _backoff(self, seconds: float) -> None:
        """Sleep between attempts, cut short by ``aclose``."""
        assert self._close_evt is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._close_evt.wait(), seconds)

    async def aclose(self, timeout: float = 5.0) -> None:
        """Stop taking alerts and give the queue up to ``timeout`` seconds; then cancel the
        delivery task and journal what was not delivered.  Never waits longer."""
        self._closing = True
        if self._close_evt is not None:
            self._close_evt.set()
        self._poke()
        task = self._task
        if task is not None and not task.done():
            done, _ = await asyncio.wait({task}, timeout=max(0.0, timeout))
            if not done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        with self._mutex:
            kinds = [i.kind for i in self._queue]
            self._queue.clear()
        if self._inflight is not None:
            kinds.insert(0, self._inflight)
            self._inflight = None
        if kinds:
            self._note("warning", f"{len(kinds)} alert(s) not delivered before exit: {', '.join(kinds)}", {"events": kinds})

    def _note(self, level: str, message: str, data: dict[str, Any]) -> None:
        if self.journal_note is not None:
            with contextlib.suppress(Exception):
                self.journal_note(level, message, data)
