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
* ``[notify] format`` picks the body: ``generic`` (the journal record plus ``text``, above),
  ``slack`` (an incoming-webhook message: ``text`` plus Block Kit ``blocks``) or ``teams`` (the
  Adaptive Card message that Teams incoming webhooks and Workflows accept).  Every format says
  the same facts, each computed once in ``alert_facts``; docs/lifecycle.md shows the shapes and
  the documentation they follow.
* A rollback's alert names its incident report (``report``, a row in Slack and Teams, a sentence
  in ``text``): ``<journal dir>/reports/<deployment id>.html``, which ``core/report.py``
  ``IncidentReporter`` writes once nginx serves 0% (docs/report.md).
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
from console.core.config import CHOICES
from console.core.report import deciding_gate, report_path
from console.core.report import failing as _failing

NoteFn = Callable[[str, str, dict[str, Any]], object]

ALERT_EVENTS: tuple[type[ev.Event], ...] = (ev.StagePassed, ev.Holding, ev.RolledBack, ev.Completed, ev.Promoted, ev.Failed)
QUEUE_SIZE = 100
BACKOFF_BASE = 0.5
BACKOFF_MAX = 8.0

FORMATS: tuple[str, ...] = CHOICES[("notify", "format")]  # generic, slack, teams
# Slack's Block Kit limits (docs.slack.dev/reference/block-kit/blocks/header-block, .../section-block)
SLACK_HEADER_MAX = 150  # a header's plain_text
SLACK_TEXT_MAX = 3000  # a section's text; also our bound for the message's fallback ``text``
SLACK_FIELD_MAX = 2000  # each of a section's fields (at most 10 of them)
# Teams: our own bounds, so that a whole message stays far below the 28 KB a Teams webhook takes
TEAMS_TITLE_MAX = 150
TEAMS_TEXT_MAX = 3000  # the reason
TEAMS_FACT_MAX = 500  # each fact's value
ADAPTIVE_CARD = "application/vnd.microsoft.card.adaptive"
ADAPTIVE_CARD_VERSION = "1.2"  # the version of Microsoft's incoming-webhook sample; TextBlock and FactSet are 1.0


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
    return f"{v}%" if v is not None else "unknown"


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def _reason(e: ev.Event) -> str:
    """Why the event happened, as every format says it ("" when there is nothing to say)."""
    if isinstance(e, ev.RolledBack):
        return e.reason or "no reason given"
    if isinstance(e, ev.Holding):
        return e.reason or "waiting for the operator"
    if isinstance(e, ev.Promoted):
        return f"forced: {e.reason}" if e.forced else ""
    return str(getattr(e, "reason", "") or "")


def alert_text(e: ev.Event, report: str = "") -> str:
    """The Slack ``text`` line for one event; ``report``: a rollback's incident report (its path)."""
    who = f"{e.version} ({e.deployment_id})" if e.deployment_id else e.version
    dry = " [dry run]" if e.dry_run else ""
    if isinstance(e, ev.RolledBack):
        shown = _failing(e) or list(e.snapshot)
        snap = "; ".join(f"{r.gate} {_fmt(r.value)} (threshold {_fmt(r.threshold)}, {r.verdict})" for r in shown[:6])
        how = "automatic" if e.automatic else "manual"
        text = (f":rotating_light: Alert: Canary validation failed{dry}. {who} rolled back from "
                f"{_pct(e.from_weight)} to 0% ({how}): {_reason(e)}")
        return text + (f". Metrics: {snap}" if snap else "") + (f". Incident report: {report}" if report else "")
    if isinstance(e, ev.StagePassed):
        return f":white_check_mark: Canary {who}: stage {e.index + 1} at {_pct(e.weight)} passed{dry}" + (
            f" ({e.reason})" if e.reason else "")
    if isinstance(e, ev.Holding):
        return f":pause_button: Canary {who} is holding at {_pct(e.weight)}{dry}: {_reason(e)}"
    if isinstance(e, ev.Completed):
        return f":rocket: Canary {who} reached 100% of the traffic{dry}; promote after the extended monitoring period"
    if isinstance(e, ev.Promoted):
        by = e.operator.label() if e.operator else "an unnamed operator"
        extra = f", approved by {', '.join(e.approvals)}" if e.approvals else ""
        forced = f", forced: {e.reason}" if e.forced else ""
        return f":tada: {who} promoted to production by {by}{extra}{forced}{dry}"
    if isinstance(e, ev.Failed):
        return f":x: Canary {who} failed{dry}: {e.reason}"
    return f"Canary {who}: {e.kind}{dry}"


def payload(e: ev.Event, report: str = "") -> dict[str, Any]:
    """The event's journal record, plus ``text`` for Slack-compatible receivers (and, for a
    rollback, ``report``: the incident report's path)."""
    body = e.to_record()
    body["text"] = alert_text(e, report)
    if report:
        body["report"] = report
    return body


# ---------------------------------------------------------------------- slack and teams
_HEADLINE: dict[type[ev.Event], tuple[str, str]] = {  # event -> (Slack emoji, what happened)
    ev.RolledBack: (":rotating_light:", "rolled back"),
    ev.StagePassed: (":white_check_mark:", "passed a stage"),
    ev.Holding: (":pause_button:", "is holding"),
    ev.Completed: (":rocket:", "reached 100%"),
    ev.Promoted: (":tada:", "promoted to production"),
    ev.Failed: (":x:", "failed"),
}


@dataclass(frozen=True)
class AlertFacts:
    """What the Slack and Teams formats say about one alert; each fact is computed once."""

    emoji: str  # a Slack emoji code (Teams shows none)
    headline: str  # "Canary v0.2.0 rolled back"
    reason: str  # "" when there is nothing to say
    rows: tuple[tuple[str, str], ...]  # (label, value): deployment, version, stage, deciding gate ...
    text: str  # alert_text(e): the generic body's ``text`` and Slack's fallback


def stage_label(e: ev.Event, total: int | None) -> str:
    """"stage 2/4, 5%": the stage the event happened at (a rollback: the one it left)."""
    if isinstance(e, ev.RolledBack):
        pct = _pct(e.from_weight)
    elif isinstance(e, ev.Completed | ev.Promoted):
        pct = "100%"
    else:
        pct = _pct(getattr(e, "weight", None))
    index = getattr(e, "index", None)
    if index is None and total:  # promoted: at the last stage
        index = total - 1
    if index is None:
        return pct
    return f"stage {index + 1}/{total}, {pct}" if total else f"stage {index + 1}, {pct}"


def alert_facts(e: ev.Event, total: int | None = None, report: str = "") -> AlertFacts:
    """``total`` is the number of stages (from the deployment's events), when known; ``report``
    the rollback's incident report (core/report.py deciding_gate picks the deciding gate)."""
    emoji, what = _HEADLINE.get(type(e), ("", e.kind))
    dry = " [dry run]" if e.dry_run else ""
    rows = [("Deployment", e.deployment_id or "-"), ("Version", e.version or "-"), ("Stage", stage_label(e, total))]
    gate = deciding_gate(e)
    if gate is not None:
        rows += [("Deciding gate", f"{gate.gate} ({gate.verdict})"), ("Value", _fmt(gate.value)),
                 ("Threshold", _fmt(gate.threshold))]
    if report:
        rows.append(("Incident report", report))
    if isinstance(e, ev.Promoted):
        rows.append(("Promoted by", e.operator.label() if e.operator else "an unnamed operator"))
        if e.approvals:
            rows.append(("Approved by", ", ".join(e.approvals)))
    return AlertFacts(emoji=emoji, headline=f"Canary {e.version or '(version unknown)'} {what}{dry}", reason=_reason(e),
                      rows=tuple(rows), text=alert_text(e, report))


def _clip(s: str, limit: int) -> str:
    return s if len(s) <= limit else s[: limit - 1] + "\u2026"


def mrkdwn(s: str, limit: int) -> str:
    """``s`` as Slack mrkdwn text: &, < and > as HTML entities (Slack's formatting reference: they
    are control characters), at most ``limit`` characters, never cutting an entity in half."""
    esc = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if len(esc) <= limit:
        return esc
    cut = esc[: limit - 1]
    amp = cut.rfind("&")
    if amp != -1 and ";" not in cut[amp:]:
        cut = cut[:amp]
    return cut + "\u2026"


def slack_payload(e: ev.Event, total: int | None = None, report: str = "") -> dict[str, Any]:
    """A Slack incoming-webhook message: ``text`` (the notification fallback) and Block Kit
    ``blocks``: a header, the reason, and the facts as section fields."""
    f = alert_facts(e, total, report)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _clip(f"{f.emoji} {f.headline}".strip(), SLACK_HEADER_MAX),
                                    "emoji": True}},
    ]
    if f.reason:
        lead = "*Reason:* "
        reason = lead + mrkdwn(f.reason, SLACK_TEXT_MAX - len(lead))
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": reason}})
    fields = [{"type": "mrkdwn", "text": f"*{label}*\n" + mrkdwn(value, SLACK_FIELD_MAX - len(label) - 3)}
              for label, value in f.rows[:10]]
    blocks.append({"type": "section", "fields": fields})
    return {"text": mrkdwn(f.text, SLACK_TEXT_MAX), "blocks": blocks}


def teams_payload(e: ev.Event, total: int | None = None, report: str = "") -> dict[str, Any]:
    """A Teams message with one Adaptive Card (what Teams incoming webhooks and Workflows' "when a
    Teams webhook request is received" accept): the headline, the reason, the facts as a FactSet."""
    f = alert_facts(e, total, report)
    body: list[dict[str, Any]] = [
        {"type": "TextBlock", "text": _clip(f.headline, TEAMS_TITLE_MAX), "weight": "Bolder", "size": "Medium", "wrap": True},
    ]
    if f.reason:
        body.append({"type": "TextBlock", "text": _clip(f"Reason: {f.reason}", TEAMS_TEXT_MAX), "wrap": True})
    facts = [{"title": label, "value": _clip(value, TEAMS_FACT_MAX)} for label, value in f.rows]
    body.append({"type": "FactSet", "facts": facts})
    card = {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "type": "AdaptiveCard",
            "version": ADAPTIVE_CARD_VERSION, "body": body}
    return {"type": "message", "attachments": [{"contentType": ADAPTIVE_CARD, "contentUrl": None, "content": card}]}


def render(e: ev.Event, fmt: str = "generic", total: int | None = None, report: str = "") -> dict[str, Any]:
    """The body to POST for ``e`` in the configured ``[notify] format``."""
    if fmt == "slack":
        return slack_payload(e, total, report)
    if fmt == "teams":
        return teams_payload(e, total, report)
    return payload(e, report)


@dataclass
class _Item:
    kind: str
    event: ev.Event  # frozen: the JSON body is built by the delivery task, off the caller's path
    queued: float
    total: int | None = None  # the deployment's number of stages, when seen
    report: str = ""  # a rollback's incident report (core/report.py report_path)


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
        body_format: str = "generic",
        journal_path: Any = None,
    ) -> None:
        check_url(url)
        if body_format not in FORMATS:
            raise ValueError(f"[notify] format = {body_format!r} is not valid; allowed: {' or '.join(FORMATS)}")
        self.body_format = body_format
        self.journal_path = journal_path  # a rollback's alert names <journal dir>/reports/<id>.html
        self._stages: int | None = None  # from DeploymentStarted / StageStarted, for "stage 2/4"
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
        return cls(n["webhook_url"], n["timeout"], n["retries"], journal_note, body_format=n["format"],
                   journal_path=cfg.journal_path)

    def __repr__(self) -> str:
        return (f"WebhookNotifier(url=<redacted>, timeout={self.timeout:g}, retries={self.retries}, "
                f"format={self.body_format})")

    __str__ = __repr__

    # ------------------------------------------------------------------ producer side
    def wants(self, e: ev.Event) -> bool:
        return isinstance(e, ALERT_EVENTS)

    def submit(self, e: ev.Event) -> bool:
        """Queue an alert for ``e`` if it is one; never blocks, never raises.  True if queued."""
        if isinstance(e, ev.DeploymentStarted) and e.stages:
            self._stages = len(e.stages)
        elif isinstance(e, ev.StageStarted) and e.total:
            self._stages = e.total
        if not self.wants(e) or self._closing:
            return False
        if isinstance(e, ev.Holding):  # one alert per hold, not one per check
            key = (e.deployment_id, e.index, e.reason)
            if key == self._last_holding:
                return False
            self._last_holding = key
        elif not isinstance(e, ev.Failed):
            self._last_holding = None
        report = ""
        if isinstance(e, ev.RolledBack) and e.deployment_id and self.journal_path is not None:
            report = str(report_path(self.journal_path, e.deployment_id))  # IncidentReporter writes it
        item = _Item(e.kind, e, time.monotonic(), self._stages, report)
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
            body = render(item.event, self.body_format, item.total, item.report)
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
