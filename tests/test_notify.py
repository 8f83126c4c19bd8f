"""Webhook alerts against a real HTTP receiver on loopback: the rollback alert arrives with its
reason and metrics snapshot; failures are retried and journaled; a hanging receiver never
holds up the caller; the URL (a secret) is never shown."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from console.adapters.health import HttpHealth
from console.adapters.webhook import WebhookNotifier
from console.core import events as ev
from console.core.clock import FakeClock
from console.core.config import load_config
from console.core.engine import Engine, Settings
from console.core.events import GateResult
from console.core.journal import Journal
from console.core.protocols import CheckContext
from tests.fixtures.nginx import NginxEnv

SECRET = "T0SECRET/B0SECRET/xoxb-very-secret-token"


class Receiver:
    """A loopback webhook receiver: records bodies; can fail N times or hang until released."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.attempts = 0
        self.fail_first = 0
        self.fail_status = 500
        self.hang = False
        self.entered = threading.Event()  # a request reached the handler
        self.release = threading.Event()
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                n = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(n))
                rec.attempts += 1
                rec.entered.set()
                if rec.hang and not rec.release.is_set():
                    rec.release.wait(30)  # hold the request until the test releases it, then answer
                if rec.attempts <= rec.fail_first:
                    self.send_response(rec.fail_status)
                    self.end_headers()
                    return
                rec.bodies.append(body)
                rec.paths.append(self.path)
                try:
                    self.send_response(200)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:  # the client gave up on a held request
                    pass

            def log_message(self, *a: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/services/{SECRET}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


def rolled_back() -> ev.RolledBack:
    snap = (
        GateResult("error_rate", ev.FAIL, value=0.052, threshold=0.005, window="5m", samples=412, critical=True),
        GateResult("p95_latency.fast", ev.PASS, value=1.9, threshold=2.5, window="5m"),
    )
    return ev.RolledBack(deployment_id="d-1", version="v0.2.0", reason="error_rate 0.052 > critical 0.01",
                         automatic=True, index=1, from_weight=5, snapshot=snap)


async def until(pred: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class Notes(list[tuple[str, str, dict[str, Any]]]):
    def __call__(self, level: str, message: str, data: dict[str, Any]) -> None:
        self.append((level, message, data))


async def test_rollback_alert_reaches_a_loopback_receiver(receiver: Receiver) -> None:
    notes = Notes()
    n = WebhookNotifier(receiver.url, timeout=5, retries=2, journal_note=notes)
    task = n.start()
    try:
        assert n.submit(ev.CheckCompleted(index=0, weight=1)) is False  # not alert-worthy
        assert n.submit(ev.Note(message="x")) is False
        assert n.submit(rolled_back()) is True
        await until(lambda: receiver.bodies, what="the alert")
    finally:
        await n.aclose(5)
    assert task.done()
    body = receiver.bodies[0]
    assert receiver.paths == [f"/services/{SECRET}"]
    assert body["event"] == "rolled_back" and body["reason"] == "error_rate 0.052 > critical 0.01"
    assert body["from_weight"] == 5 and body["deployment_id"] == "d-1" and body["version"] == "v0.2.0"
    assert [g["gate"] for g in body["snapshot"]] == ["error_rate", "p95_latency.fast"]
    assert body["text"].startswith(":rotating_light: Alert: Canary validation failed. v0.2.0 (d-1) rolled back from 5% to 0%")
    assert "error_rate 0.052 (threshold 0.005, fail)" in body["text"]
    assert "p95_latency" not in body["text"]  # the failing gates are named, not every gate
    assert notes == [("info", "alert sent: rolled_back", {"event": "rolled_back", "attempts": 1, "status": 200})]


async def test_every_lifecycle_alert_is_posted_once(receiver: Receiver) -> None:
    n = WebhookNotifier(receiver.url, retries=0)
    task = n.start()
    op = ev.Operator(user="alice", ssh_client="10.0.0.7")
    events = [
        ev.StagePassed(index=0, weight=1, version="v0.2.0"),
        ev.Holding(index=1, weight=5, reason="too few requests", version="v0.2.0"),
        ev.Holding(index=1, weight=5, reason="too few requests", version="v0.2.0"),  # the same hold: no second alert
        ev.Completed(index=3, version="v0.2.0"),
        ev.Promoted(operator=op, approvals=("bob", "carol"), version="v0.2.0"),
    ]
    for e in events:
        n.submit(e)
    try:
        await until(lambda: len(receiver.bodies) >= 4, what="four alerts")
    finally:
        await n.aclose(5)
    assert task.done()
    assert [b["event"] for b in receiver.bodies] == ["stage_passed", "holding", "completed", "promoted"]
    texts = [b["text"] for b in receiver.bodies]
    assert "stage 1 at 1% passed" in texts[0]
    assert "holding at 5%: too few requests" in texts[1]
    assert "reached 100%" in texts[2]
    assert "promoted to production by alice@10.0.0.7, approved by bob, carol" in texts[3]


async def test_failures_are_retried_with_backoff_and_journaled(receiver: Receiver) -> None:
    receiver.fail_first = 2
    notes = Notes()
    n = WebhookNotifier(receiver.url, timeout=5, retries=3, journal_note=notes, backoff=0.01)
    n.start()
    n.submit(rolled_back())
    try:
        await until(lambda: receiver.bodies, what="the alert after two failures")
    finally:
        await n.aclose(5)
    assert receiver.attempts == 3
    assert notes[-1][:2] == ("info", "alert sent: rolled_back") and notes[-1][2]["attempts"] == 3

    receiver.attempts, receiver.fail_first, receiver.bodies = 0, 99, []
    notes2 = Notes()
    n2 = WebhookNotifier(receiver.url, timeout=5, retries=2, journal_note=notes2, backoff=0.01)
    n2.start()
    n2.submit(rolled_back())
    try:
        await until(lambda: notes2, what="the failure note")
    finally:
        await n2.aclose(5)
    assert receiver.attempts == 3
    assert notes2 == [("warning", "alert failed: rolled_back after 3 attempt(s): HTTP 500",
                       {"event": "rolled_back", "attempts": 3, "error": "HTTP 500"})]


async def test_a_real_rollback_through_nginx_while_the_webhook_hangs(receiver: Receiver, nginx_env: NginxEnv) -> None:
    """The engine rolls back through a real nginx while the webhook holds the previous alert's
    request open; the rollback alert is delivered once the receiver answers again."""
    receiver.hang = True
    notes = Notes()
    n = WebhookNotifier(receiver.url, timeout=60, retries=1, journal_note=notes)
    n.start()

    class FailsOnceTheWebhookHangs:
        """At 5% the canary fails a critical gate, but only once the webhook is provably hanging."""

        async def check(self, ctx: CheckContext) -> list[GateResult]:
            if ctx.weight < 5:
                return [GateResult("error_rate", ev.PASS, value=0.0, threshold=0.005, samples=100)]
            await until(receiver.entered.is_set, what="the webhook to hang")
            return [GateResult("error_rate", ev.FAIL, value=0.052, threshold=0.005, samples=400, critical=True)]

    s = Settings(stages=[1, 5, 25, 100], observation_period=60, check_interval=15,
                 canary_health_url=f"{nginx_env.backends.canary.url}/health", health_timeout=2)
    engine = Engine(s, version="v0.2.0", router=nginx_env.router(), journal=Journal(nginx_env.dir / "j.jsonl"),
                    clock=FakeClock(), checkers=[FailsOnceTheWebhookHangs()], health=HttpHealth(),
                    operator=ev.Operator("alice"), listeners=[n.submit])
    marks: list[tuple[ev.Event, float]] = []
    engine.add_listener(lambda e: marks.append((e, time.perf_counter())))
    try:
        assert await asyncio.wait_for(engine.run(), 60) == 3
    finally:
        await engine.health.aclose()
    # rolled back while the receiver still holds the stage-passed alert's request
    assert not receiver.release.is_set() and receiver.attempts == 1 and receiver.bodies == []
    assert nginx_env.send(20).production == 20  # nginx serves 0% canary
    t_intent = next(t for e, t in marks if isinstance(e, ev.RouterIntent) and e.reason.startswith("rollback"))
    t_done = next(t for e, t in marks if isinstance(e, ev.RolledBack))
    print(f"rollback intent -> rolled_back through nginx with a hanging webhook: {(t_done - t_intent) * 1000:.0f} ms")

    receiver.release.set()  # the receiver answers again: the queued alerts go out, rollback included
    await until(lambda: [b["event"] for b in receiver.bodies] == ["stage_passed", "rolled_back"], what="both alerts")
    assert receiver.bodies[1]["snapshot"][0]["gate"] in ("error_rate", "health")
    await n.aclose(5)
    assert [m for _, m, _ in notes] == ["alert sent: stage_passed", "alert sent: rolled_back"]


async def test_a_hanging_webhook_never_holds_up_the_rollback(receiver: Receiver) -> None:
    """submit() returns while the receiver is provably still holding the previous request, and
    aclose() gives up after its own timeout, journaling what was not delivered."""
    receiver.hang = True
    notes = Notes()
    n = WebhookNotifier(receiver.url, timeout=60, retries=3, journal_note=notes)
    task = n.start()
    n.submit(ev.StagePassed(index=0, weight=1))
    await until(receiver.entered.is_set, what="the receiver to take the first request")

    costs = []
    for _ in range(50):  # the rollback path: the engine emits RolledBack and calls submit
        t0 = time.perf_counter()
        assert n.submit(rolled_back()) is True
        costs.append(time.perf_counter() - t0)
    assert not receiver.release.is_set() and receiver.attempts == 1  # still hanging on the first one
    assert n.pending() == 50
    costs.sort()
    print(f"submit() with a hanging receiver: median {costs[25] * 1e6:.0f} us, max {costs[-1] * 1e6:.0f} us over 50 calls")

    await asyncio.wait_for(n.aclose(0.2), 10)  # a deadline for the test, not a sleep
    assert task.done()
    assert notes[-1][0] == "warning"
    assert notes[-1][1].startswith("51 alert(s) not delivered before exit: stage_passed, rolled_back")
    assert n.submit(rolled_back()) is False  # closed


def test_the_queue_is_bounded_and_drops_the_oldest() -> None:
    notes = Notes()
    n = WebhookNotifier("http://127.0.0.1:9/hook", queue_size=2, journal_note=notes)
    n.submit(ev.StagePassed(index=0, weight=1))
    n.submit(ev.StagePassed(index=1, weight=5))
    n.submit(rolled_back())
    assert n.pending() == 2 and n.dropped == 1
    assert notes == [("warning", "alert queue full (2): dropped the oldest alert (stage_passed)", {"event": "stage_passed"})]


async def test_the_url_is_never_shown(receiver: Receiver) -> None:
    receiver.close()  # nothing listens there now: every attempt fails to connect
    notes = Notes()
    n = WebhookNotifier(receiver.url, timeout=2, retries=1, journal_note=notes, backoff=0.01)
    assert SECRET not in repr(n) and SECRET not in str(n) and SECRET not in repr(vars(n)) and SECRET not in f"{n}"
    n.start()
    n.submit(rolled_back())
    try:
        await until(lambda: notes, what="the failure note")
    finally:
        await n.aclose(2)
    assert notes[0][1] == "alert failed: rolled_back after 2 attempt(s): ConnectError"
    assert SECRET not in json.dumps(notes) and "services" not in json.dumps(notes)

    with pytest.raises(ValueError) as ei:
        WebhookNotifier(f"ftp://hooks.example/{SECRET}")
    assert SECRET not in str(ei.value) and "webhook_url is not valid" in str(ei.value)
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(n._url)


def test_configured_from_canary_webhook_url(tmp_path: Any, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./canary.toml or ./.env of the repo
    assert WebhookNotifier.from_config(load_config(environ={}, check_upstream_dir=False)) is None
    cfg = load_config(environ={"CANARY_WEBHOOK_URL": receiver.url}, check_upstream_dir=False)
    n = WebhookNotifier.from_config(cfg)
    assert n is not None and n._url.reveal() == receiver.url and SECRET not in repr(n)


# --------------------------------------------------------------------------- [notify] format: slack and teams
# The documented shapes, checked without a new dependency.  Slack: an incoming-webhook message is
# {"text": str, "blocks": [block...]} (docs.slack.dev "Sending messages using incoming webhooks");
# a block has a Block Kit "type"; a header's text is plain_text of at most 150 characters; a
# section has a text object (at most 3000) and/or at most 10 fields (at most 2000 each); a text
# object is {"type": "mrkdwn" | "plain_text", "text": str}.  Teams: {"type": "message",
# "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "content": card}]}
# with card {"type": "AdaptiveCard", "version": str, "body": [element...]}, each element with a
# "type"; a TextBlock has a "text" str; a FactSet has "facts": [{"title": str, "value": str}]
# (learn.microsoft.com, "Send Adaptive Cards using an incoming webhook"; the Adaptive Cards schema).

SLACK_BLOCK_TYPES = {"actions", "context", "divider", "file", "header", "image", "input", "markdown", "rich_text",
                     "section", "video"}
CARD_ELEMENT_TYPES = {"TextBlock", "FactSet", "Container", "ColumnSet", "Image", "ImageSet", "RichTextBlock", "ActionSet",
                      "Table"}


def _text_object(t: Any, where: str, limit: int, kinds: tuple[str, ...] = ("mrkdwn", "plain_text")) -> list[str]:
    if not isinstance(t, dict):
        return [f"{where}: not a text object"]
    errs = []
    if t.get("type") not in kinds:
        errs.append(f"{where}.type = {t.get('type')!r}, not one of {kinds}")
    if not isinstance(t.get("text"), str) or not 1 <= len(t["text"]) <= limit:
        errs.append(f"{where}.text: not a string of 1..{limit} characters")
    return errs


def slack_shape_errors(body: Any) -> list[str]:
    """What is wrong with ``body`` as a Slack incoming-webhook message ([] when nothing)."""
    if not isinstance(body, dict):
        return ["not a JSON object"]
    errs = []
    if not isinstance(body.get("text"), str) or not body["text"]:
        errs.append("text: missing or not a non-empty string (the required fallback)")
    blocks = body.get("blocks")
    if not isinstance(blocks, list) or not blocks or len(blocks) > 50:
        return [*errs, "blocks: not a list of 1..50 blocks"]
    for i, b in enumerate(blocks):
        where = f"blocks[{i}]"
        if not isinstance(b, dict) or b.get("type") not in SLACK_BLOCK_TYPES:
            errs.append(f"{where}: not a block with a Block Kit type")
            continue
        if b["type"] == "header":
            errs += _text_object(b.get("text"), f"{where}.text", 150, ("plain_text",))
        elif b["type"] == "section":
            if "text" not in b and "fields" not in b:
                errs.append(f"{where}: a section needs text or fields")
            if "text" in b:
                errs += _text_object(b["text"], f"{where}.text", 3000)
            if "fields" in b:
                fields = b["fields"]
                if not isinstance(fields, list) or not 1 <= len(fields) <= 10:
                    errs.append(f"{where}.fields: not a list of 1..10 text objects")
                else:
                    for j, f in enumerate(fields):
                        errs += _text_object(f, f"{where}.fields[{j}]", 2000)
    return errs


def teams_shape_errors(body: Any) -> list[str]:
    """What is wrong with ``body`` as a Teams Adaptive Card message ([] when nothing)."""
    if not isinstance(body, dict):
        return ["not a JSON object"]
    errs = []
    if body.get("type") != "message":
        errs.append(f"type = {body.get('type')!r}, not 'message'")
    atts = body.get("attachments")
    if not isinstance(atts, list) or not atts:
        return [*errs, "attachments: not a non-empty list"]
    for i, a in enumerate(atts):
        where = f"attachments[{i}]"
        if not isinstance(a, dict) or a.get("contentType") != "application/vnd.microsoft.card.adaptive":
            errs.append(f"{where}.contentType: not application/vnd.microsoft.card.adaptive")
            continue
        card = a.get("content")
        if not isinstance(card, dict) or card.get("type") != "AdaptiveCard":
            errs.append(f"{where}.content: not an AdaptiveCard")
            continue
        if card.get("version") not in ("1.0", "1.1", "1.2", "1.3", "1.4", "1.5"):
            errs.append(f"{where}.content.version = {card.get('version')!r}, not a version Teams renders")
        if not isinstance(card.get("$schema", ""), str):
            errs.append(f"{where}.content.$schema: not a string")
        elements = card.get("body")
        if not isinstance(elements, list) or not elements:
            errs.append(f"{where}.content.body: not a non-empty list")
            continue
        for j, el in enumerate(elements):
            w = f"{where}.content.body[{j}]"
            if not isinstance(el, dict) or el.get("type") not in CARD_ELEMENT_TYPES:
                errs.append(f"{w}: not an element with an Adaptive Card type")
            elif el["type"] == "TextBlock" and (not isinstance(el.get("text"), str) or not el["text"]):
                errs.append(f"{w}.text: a TextBlock needs a non-empty string")
            elif el["type"] == "FactSet":
                facts = el.get("facts")
                if not isinstance(facts, list) or not all(
                        isinstance(f, dict) and isinstance(f.get("title"), str) and isinstance(f.get("value"), str)
                        for f in facts):
                    errs.append(f"{w}.facts: not a list of {{title: str, value: str}}")
    return errs


def slack_fields(body: dict[str, Any]) -> dict[str, str]:
    """The section fields ("*Label*\\nvalue") as {label: value}."""
    out = {}
    for b in body["blocks"]:
        for f in b.get("fields", []):
            label, _, value = f["text"].partition("\n")
            out[label.strip("*")] = value
    return out


def slack_texts(body: dict[str, Any]) -> list[str]:
    """Every mrkdwn string in the message: the fallback text, section texts and fields."""
    out = [body["text"]]
    for b in body["blocks"]:
        if b["type"] == "section":
            out += [t["text"] for t in [b.get("text"), *b.get("fields", [])] if t]
    return out


def teams_card(body: dict[str, Any]) -> dict[str, Any]:
    return body["attachments"][0]["content"]


def teams_facts(body: dict[str, Any]) -> dict[str, str]:
    return {f["title"]: f["value"] for el in teams_card(body)["body"] if el["type"] == "FactSet" for f in el["facts"]}


def teams_texts(body: dict[str, Any]) -> list[str]:
    return [el["text"] for el in teams_card(body)["body"] if el["type"] == "TextBlock"]


def good_slack() -> dict[str, Any]:
    from console.adapters.webhook import slack_payload

    return slack_payload(rolled_back(), total=4)


def good_teams() -> dict[str, Any]:
    from console.adapters.webhook import teams_payload

    return teams_payload(rolled_back(), total=4)


def _break(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``body`` with the value at ``path`` ("a.0.b") replaced (deleted when ``value`` is ...)."""
    b = json.loads(json.dumps(body))
    *parents, last = path.split(".")
    node: Any = b
    for k in parents:
        node = node[int(k)] if isinstance(node, list) else node[k]
    key: Any = int(last) if isinstance(node, list) else last
    if value is ...:
        del node[key]
    else:
        node[key] = value
    return b


@pytest.mark.parametrize("path, value, needle", [
    ("text", ..., "text"),
    ("text", 42, "text"),
    ("blocks", {"type": "section"}, "blocks"),
    ("blocks", [], "blocks"),
    ("blocks.0.type", "banner", "Block Kit type"),
    ("blocks.0", "header", "Block Kit type"),
    ("blocks.0.text.type", "mrkdwn", "plain_text"),
    ("blocks.0.text.text", "x" * 151, "1..150"),
    ("blocks.1.text.type", "markdown", "type"),
    ("blocks.1.text", ..., "text or fields"),
    ("blocks.2.fields", [{"type": "mrkdwn", "text": "x"}] * 11, "1..10"),
    ("blocks.2.fields.0.text", "", "1..2000"),
])
def test_the_slack_shape_check_fails_on_a_wrong_shape(path: str, value: Any, needle: str) -> None:
    assert slack_shape_errors(good_slack()) == []
    errs = slack_shape_errors(_break(good_slack(), path, value))
    assert errs and any(needle in e for e in errs), errs
    assert slack_shape_errors([]) == ["not a JSON object"]


@pytest.mark.parametrize("path, value, needle", [
    ("type", "messages", "'message'"),
    ("attachments", {}, "attachments"),
    ("attachments.0.contentType", "application/vnd.microsoft.card.hero", "contentType"),
    ("attachments.0.content.type", "MessageCard", "AdaptiveCard"),
    ("attachments.0.content.version", ..., "version"),
    ("attachments.0.content.version", 1.2, "version"),
    ("attachments.0.content.body", [], "body"),
    ("attachments.0.content.body.0.type", "Paragraph", "Adaptive Card type"),
    ("attachments.0.content.body.0.text", ..., "TextBlock"),
    ("attachments.0.content.body.2.facts", [{"title": "Value", "value": 0.052}], "facts"),
])
def test_the_teams_shape_check_fails_on_a_wrong_shape(path: str, value: Any, needle: str) -> None:
    assert teams_shape_errors(good_teams()) == []
    errs = teams_shape_errors(_break(good_teams(), path, value))
    assert errs and any(needle in e for e in errs), errs
    assert teams_shape_errors(good_slack()) != [] and slack_shape_errors(good_teams()) != []


async def deliver(receiver: Receiver, fmt: str, events: list[ev.Event], count: int) -> list[dict[str, Any]]:
    """Post ``events`` through a notifier in ``fmt`` to the loopback receiver; the bodies received."""
    notes = Notes()
    n = WebhookNotifier(receiver.url, retries=0, journal_note=notes, body_format=fmt)
    n.start()
    for e in events:
        n.submit(e)
    try:
        await until(lambda: len(receiver.bodies) >= count, what=f"{count} {fmt} alert(s)")
    finally:
        await n.aclose(5)
    assert [m for _, m, _ in notes if not m.startswith("alert sent")] == []
    return list(receiver.bodies)


def started(stages: tuple[int, ...] = (1, 5, 25, 100)) -> ev.DeploymentStarted:
    return ev.DeploymentStarted(deployment_id="d-1", version="v0.2.0", stages=stages)


async def test_the_slack_rollback_alert_has_the_documented_shape_and_the_facts(receiver: Receiver) -> None:
    (body,) = await deliver(receiver, "slack", [started(), rolled_back()], 1)
    assert slack_shape_errors(body) == []
    assert [b["type"] for b in body["blocks"]] == ["header", "section", "section"]
    assert body["blocks"][0]["text"]["text"] == ":rotating_light: Canary v0.2.0 rolled back"
    assert body["blocks"][1]["text"] == {"type": "mrkdwn", "text": "*Reason:* error_rate 0.052 &gt; critical 0.01"}
    assert slack_fields(body) == {"Deployment": "d-1", "Version": "v0.2.0", "Stage": "stage 2/4, 5%",
                                  "Deciding gate": "error_rate (fail)", "Value": "0.052", "Threshold": "0.005"}
    # the fallback is the generic body's text, escaped: one source for the line
    assert body["text"].startswith(":rotating_light: Alert: Canary validation failed. v0.2.0 (d-1) rolled back from 5% to 0%")
    assert "error_rate 0.052 &gt; critical 0.01" in body["text"] and ">" not in body["text"]
    assert "snapshot" not in body and "event" not in body  # Slack's shape, not the journal record


async def test_the_teams_rollback_alert_is_an_adaptive_card_with_the_facts(receiver: Receiver) -> None:
    (body,) = await deliver(receiver, "teams", [started(), rolled_back()], 1)
    assert teams_shape_errors(body) == []
    card = teams_card(body)
    assert card["$schema"] == "http://adaptivecards.io/schemas/adaptive-card.json" and card["version"] == "1.2"
    assert [el["type"] for el in card["body"]] == ["TextBlock", "TextBlock", "FactSet"]
    assert teams_texts(body) == ["Canary v0.2.0 rolled back", "Reason: error_rate 0.052 > critical 0.01"]
    assert teams_facts(body) == {"Deployment": "d-1", "Version": "v0.2.0", "Stage": "stage 2/4, 5%",
                                 "Deciding gate": "error_rate (fail)", "Value": "0.052", "Threshold": "0.005"}


@pytest.mark.parametrize("fmt", ["slack", "teams"])
async def test_every_lifecycle_alert_has_the_documented_shape(receiver: Receiver, fmt: str) -> None:
    op = ev.Operator(user="alice", ssh_client="10.0.0.7")
    base = {"deployment_id": "d-1", "version": "v0.2.0"}
    events = [
        started(),
        ev.StagePassed(index=0, weight=1, reason="every gate passed on data", **base),
        ev.Holding(index=1, weight=5, reason="too few requests", **base),
        ev.Completed(index=3, **base),
        ev.Promoted(operator=op, approvals=("bob", "carol"), **base),
        ev.Failed(reason="router: nginx -t failed", index=2, weight=25, **base),
        ev.RolledBack(reason="manual rollback by alice", automatic=False, index=1, from_weight=5,
                      snapshot=rolled_back().snapshot, **base),
    ]
    bodies = await deliver(receiver, fmt, events, 6)
    check, facts, texts = ((slack_shape_errors, slack_fields, slack_texts) if fmt == "slack"
                           else (teams_shape_errors, teams_facts, teams_texts))
    assert [check(b) for b in bodies] == [[]] * 6
    stages = [facts(b)["Stage"] for b in bodies]
    assert stages == ["stage 1/4, 1%", "stage 2/4, 5%", "stage 4/4, 100%", "stage 4/4, 100%", "stage 3/4, 25%",
                      "stage 2/4, 5%"]
    assert all(facts(b)["Deployment"] == "d-1" and facts(b)["Version"] == "v0.2.0" for b in bodies)
    assert any("too few requests" in t for t in texts(bodies[1]))
    assert facts(bodies[3])["Promoted by"] == "alice@10.0.0.7" and facts(bodies[3])["Approved by"] == "bob, carol"
    assert any("router: nginx -t failed" in t for t in texts(bodies[4]))
    assert "Deciding gate" not in facts(bodies[5])  # a manual rollback: no gate decided it


def test_the_deciding_gate_is_the_one_the_reason_names() -> None:
    from console.adapters.webhook import deciding_gate

    snap = (GateResult("error_rate", ev.FAIL, value=0.009, threshold=0.005),
            GateResult("critical_error_rate", ev.FAIL, value=0.052, threshold=0.01, critical=True),
            GateResult("metrics", ev.ERROR, detail="prometheus: connection refused"))
    rb = rolled_back()
    assert deciding_gate(rb) == rb.snapshot[0]
    pick = {r: deciding_gate(ev.RolledBack(reason=r, snapshot=snap)) for r in (
        "critical_error_rate 0.052 vs threshold 0.01 (5m, n=412)",
        "error_rate 0.009 vs threshold 0.005 for 3 checks in a row",
        "metrics unavailable for 3 checks: prometheus: connection refused",
        "manual rollback by alice")}
    assert [g.gate if g else None for g in pick.values()] == ["critical_error_rate", "error_rate", "metrics", None]
    assert deciding_gate(ev.Failed(reason="error_rate")) is None


def test_slack_escapes_control_characters_and_teams_keeps_them() -> None:
    from console.adapters.webhook import slack_payload, teams_payload

    reason = "p95 <b> & <!channel> <http://evil.example|click> > 2.5s"
    e = ev.RolledBack(deployment_id="d-<1>", version="v0.2.0", reason=reason, index=0, from_weight=1)
    body = slack_payload(e, total=4)
    assert slack_shape_errors(body) == []
    for t in slack_texts(body):
        assert "<" not in t and ">" not in t, t
        assert "&amp;amp;" not in t and "&amp;lt;" not in t  # escaped once, not twice
    assert body["blocks"][1]["text"]["text"] == (
        "*Reason:* p95 &lt;b&gt; &amp; &lt;!channel&gt; &lt;http://evil.example|click&gt; &gt; 2.5s")
    assert slack_fields(body)["Deployment"] == "d-&lt;1&gt;"
    teams = teams_payload(e, total=4)
    assert teams_texts(teams)[1] == f"Reason: {reason}" and teams_facts(teams)["Deployment"] == "d-<1>"


def test_long_texts_are_truncated_within_the_documented_limits() -> None:
    import re

    from console.adapters.webhook import slack_payload, teams_payload

    reason = "error_rate " + "x&y<z>" * 2000  # 12 000 characters, 36 000 once escaped
    e = ev.RolledBack(deployment_id="d-1", version="v" + "9" * 300, reason=reason, index=1, from_weight=5,
                      snapshot=(GateResult("error_rate", ev.FAIL, value=0.05, threshold=0.005),))
    body = slack_payload(e, total=4)
    assert slack_shape_errors(body) == []
    header, section = body["blocks"][0]["text"]["text"], body["blocks"][1]["text"]["text"]
    assert len(header) == 150 and header.endswith("\u2026")
    assert len(section) <= 3000 and section.endswith("\u2026") and section.startswith("*Reason:* error_rate x&amp;y&lt;z&gt;")
    assert len(body["text"]) <= 3000 and body["text"].endswith("\u2026")
    for t in (section, body["text"]):
        assert not re.search(r"&[a-z]*\u2026$", t), t[-12:]  # never half an entity
    assert all(len(f["text"]) <= 2000 for f in body["blocks"][2]["fields"])
    assert slack_fields(body)["Value"] == "0.05" and slack_fields(body)["Threshold"] == "0.005"
    teams = teams_payload(e, total=4)
    assert teams_shape_errors(teams) == []
    title, why = teams_texts(teams)
    assert len(title) == 150 and len(why) == 3000 and why.endswith("\u2026")
    assert all(len(v) <= 500 for v in teams_facts(teams).values())
    assert len(json.dumps(teams).encode("utf-16-le")) < 28_000  # under Teams' limit even counted as UTF-16


def test_the_generic_format_is_the_default_and_unchanged(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from console.adapters.webhook import payload, render

    monkeypatch.chdir(tmp_path)
    cfg = load_config(environ={"CANARY_WEBHOOK_URL": "http://127.0.0.1:9/hook"}, check_upstream_dir=False)
    assert cfg["notify"]["format"] == "generic"
    n = WebhookNotifier.from_config(cfg)
    assert n is not None and n.body_format == "generic"
    e = rolled_back()
    assert render(e, "generic", 4) == payload(e) == {**e.to_record(), "text": payload(e)["text"]}


def test_format_comes_from_canary_toml_and_a_bad_one_is_one_line_exit_2(tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from console.commands.cli import main
    from console.core.config import ConfigError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "nginx" / "conf.d").mkdir(parents=True)
    good = tmp_path / "canary.toml"
    good.write_text('[notify]\nwebhook_url = "http://127.0.0.1:9/hook"\nformat = "teams"\n')
    n = WebhookNotifier.from_config(load_config(good, environ={}))
    assert n is not None and n.body_format == "teams" and "format=teams" in repr(n)

    bad = tmp_path / "bad.toml"
    bad.write_text('[notify]\nformat = "discord"\n')
    with pytest.raises(ConfigError) as ei:
        load_config(bad, environ={})
    msg = str(ei.value)
    assert msg == f"{bad}: [notify] format = 'discord' is not valid; allowed: generic or slack or teams"
    assert main(["--config", str(bad), "deploy", "--version", "v0.2.0", "--headless"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "[notify] format = 'discord'" in err and str(bad) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml", "canary.toml", "nginx"]  # nothing changed
    assert list((tmp_path / "nginx" / "conf.d").iterdir()) == []
    with pytest.raises(ValueError, match="allowed: generic or slack or teams"):
        WebhookNotifier("http://127.0.0.1:9/hook", body_format="xml")
