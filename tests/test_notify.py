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
