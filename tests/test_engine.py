"""The rollout state machine, on virtual time (FakeClock) with a fake router and scripted gates."""

from __future__ import annotations

import asyncio

import pytest

from console.core import events as ev
from console.core.clock import FakeClock
from console.core.engine import Engine, Settings
from console.core.events import ERROR, FAIL, INCONCLUSIVE, PASS, GateResult, Intent, Operator
from console.core.fakes import FakeHealth, FakeRouter, ScriptedChecker
from console.core.journal import Journal, read_records
from console.core.routing import RouterError
from console.core.state import last_applied_weight, router_truth

OP = Operator("alice", "10.0.0.7")


def gate(verdict: str, name: str = "error_rate", critical: bool = False, value: float = 0.0) -> GateResult:
    return GateResult(name, verdict, value=value, threshold=0.005, window="5m", samples=100, critical=critical)


def make(tmp_path, fn=None, router=None, health=None, clock=None, **settings):
    s = Settings(stages=settings.pop("stages", [1, 5, 25, 100]), observation_period=settings.pop("observation_period", 900),
                 check_interval=settings.pop("check_interval", 15), canary_health_url="http://canary/health", **settings)
    clock = clock or FakeClock()
    checker = ScriptedChecker(fn)
    eng = Engine(s, version="v0.2.0", router=router or FakeRouter(), journal=Journal(tmp_path / "j.jsonl"), clock=clock,
                 checkers=[checker], health=health or FakeHealth(), operator=OP)
    seen: list[ev.Event] = []
    eng.add_listener(seen.append)
    return eng, seen, clock, checker


def kinds(seen, cls):
    return [e for e in seen if isinstance(e, cls)]


async def test_healthy_rollout_reaches_100_through_every_stage(tmp_path):
    eng, seen, clock, _ = make(tmp_path)
    assert await eng.run() == 0
    assert eng.router.applied == [1, 5, 25, 100]
    assert [e.index for e in kinds(seen, ev.StagePassed)] == [0, 1, 2]
    assert clock.t == pytest.approx(3 * 900)  # each stage observed its full period
    assert eng.state.state == "at 100%"


async def test_every_router_change_is_journaled_as_intent_then_outcome(tmp_path):
    eng, _, _, _ = make(tmp_path)
    await eng.run()
    recs = [r for r in read_records(tmp_path / "j.jsonl") if r["event"].startswith("router")]
    assert [r["event"] for r in recs] == ["router_intent", "router_applied"] * 5  # the preflight, then 4 stages
    assert recs[0]["reason"].startswith("preflight") and recs[0]["weight"] == 0 and recs[1]["weight"] == 0
    assert all(a["generation"] == b["generation"] for a, b in zip(recs[::2], recs[1::2], strict=True))
    assert all(r["ts"].endswith("Z") and r["deployment_id"] and r["version"] == "v0.2.0" for r in recs)


async def test_critical_breach_rolls_back_at_once_traffic_first(tmp_path):
    fn = lambda ctx: [gate(FAIL, "schema_failures", critical=True, value=1)] if ctx.weight == 5 else [gate(PASS)]  # noqa: E731
    eng, seen, clock, _ = make(tmp_path, fn)
    assert await eng.run() == 3
    assert eng.router.applied == [1, 5, 0]
    assert clock.t == pytest.approx(900 + 15)  # first check of stage 2
    rb = kinds(seen, ev.RolledBack)[0]
    assert rb.automatic and "schema_failures" in rb.reason and rb.from_weight == 5
    assert {g.gate for g in rb.snapshot} >= {"schema_failures", "health"}
    # the 0% intent comes before the rolled_back record, and the applied outcome before it too
    names = [e.kind for e in seen]
    assert names.index("router_intent", names.index("check")) < names.index("router_applied", names.index("check")) < names.index(
        "rolled_back")


async def test_non_critical_breach_rolls_back_after_consecutive_failures(tmp_path):
    fn = lambda ctx: [gate(FAIL, value=0.007)] if ctx.weight == 25 else [gate(PASS)]  # noqa: E731
    eng, seen, clock, _ = make(tmp_path, fn)
    assert await eng.run() == 3
    checks = [c for c in kinds(seen, ev.CheckCompleted) if c.weight == 25]
    assert [c.breaches.get("error_rate") for c in checks] == [1, 2, 3]
    assert checks[-1].decision == "rollback"
    assert clock.t == pytest.approx(2 * 900 + 3 * 15)
    assert "for 3 checks in a row" in kinds(seen, ev.RolledBack)[0].reason


async def test_a_breach_that_recovers_resets_its_count(tmp_path):
    seq = iter([FAIL, FAIL, PASS, FAIL, FAIL, PASS] + [PASS] * 1000)
    eng, seen, _, _ = make(tmp_path, lambda ctx: [gate(next(seq))])
    assert await eng.run() == 0
    assert max(max(c.breaches.values(), default=0) for c in kinds(seen, ev.CheckCompleted)) == 2


async def test_failed_health_check_during_rollout_rolls_back(tmp_path):
    health = FakeHealth()
    eng, seen, clock, _ = make(tmp_path, health=health)
    clock.at(1000, lambda: setattr(health, "ok", False))
    assert await eng.run() == 3
    assert kinds(seen, ev.RolledBack)[0].reason.startswith("health")
    assert eng.router.weight == 0


async def test_unhealthy_canary_before_first_stage_exits_4_and_changes_nothing(tmp_path):
    eng, seen, _, _ = make(tmp_path, health=FakeHealth(ok=False))
    assert await eng.run() == 4
    assert eng.router.applied == []
    assert "not healthy" in kinds(seen, ev.Failed)[0].reason


async def test_inconclusive_extends_to_twice_the_period_then_holds(tmp_path):
    fn = lambda ctx: [gate(INCONCLUSIVE)] if ctx.weight == 1 else [gate(PASS)]  # noqa: E731
    eng, seen, clock, _ = make(tmp_path, fn, on_inconclusive="hold")
    task = asyncio.ensure_future(eng.run())
    for _ in range(2000):
        await asyncio.sleep(0)
        if kinds(seen, ev.Holding):
            break
    assert kinds(seen, ev.StageExtended)[0].until == 1800
    assert kinds(seen, ev.Holding)[0].reason.startswith("inconclusive after 1800s")
    assert eng.router.applied == [1]  # never advanced on missing data
    t_hold = clock.t
    eng.submit(Intent("advance", OP))
    assert await task == 0
    assert t_hold >= 1800 and eng.router.applied == [1, 5, 25, 100]


async def test_inconclusive_rollback_policy(tmp_path):
    eng, seen, _, _ = make(tmp_path, lambda ctx: [gate(INCONCLUSIVE)], on_inconclusive="rollback")
    assert await eng.run() == 3
    assert "inconclusive" in kinds(seen, ev.RolledBack)[0].reason


async def test_metrics_unavailable_holds_then_continues_when_they_return(tmp_path):
    state = {"down": False}
    fn = lambda ctx: [gate(ERROR)] if state["down"] else [gate(PASS)]  # noqa: E731
    eng, seen, clock, _ = make(tmp_path, fn, unavailable_after=3)
    clock.at(300, lambda: state.update(down=True))
    clock.at(2000, lambda: state.update(down=False))
    assert await eng.run() == 0
    hold = kinds(seen, ev.Holding)[0]
    assert hold.reason.startswith("metrics unavailable for 3 checks")
    # the stage held (its clock stopped) while metrics were missing: it ended well after 900 s
    passed0 = next(e for e in seen if isinstance(e, ev.StagePassed) and e.index == 0)
    assert passed0.ts > "2026-01-01T00:33:00"


async def test_metrics_unavailable_rollback_policy(tmp_path):
    eng, seen, _, _ = make(tmp_path, lambda ctx: [gate(ERROR)], on_metrics_unavailable="rollback", unavailable_after=2)
    assert await eng.run() == 3
    assert "metrics unavailable for 2 checks" in kinds(seen, ev.RolledBack)[0].reason


async def test_advisory_inconclusive_does_not_hold_a_stage(tmp_path):
    fn = lambda ctx: [gate(PASS), GateResult("seq.errors", INCONCLUSIVE, blocking=False)]  # noqa: E731
    eng, _, _, _ = make(tmp_path, fn)
    assert await eng.run() == 0


async def test_pause_stops_the_observation_clock(tmp_path):
    eng, seen, clock, _ = make(tmp_path, observation_period=300, check_interval=10)
    clock.at(100, lambda: eng.submit(Intent("pause", OP)))
    clock.at(700, lambda: eng.submit(Intent("resume", OP)))
    assert await eng.run() == 0
    passed0 = next(e for e in seen if isinstance(e, ev.StagePassed) and e.index == 0)
    assert passed0.ts == "2026-01-01T00:15:00.000Z"  # 300 s of observation + 600 s paused
    acts = [(a.action, a.operator.user, a.accepted) for a in kinds(seen, ev.OperatorAction)]
    assert acts == [("pause", "alice", True), ("resume", "alice", True)]


async def test_advance_skips_the_rest_of_the_observation(tmp_path):
    eng, seen, clock, _ = make(tmp_path)
    clock.at(30, lambda: eng.submit(Intent("advance", OP)))
    assert await eng.run() == 0
    assert clock.t < 3 * 900
    assert "advanced by alice@10.0.0.7" in kinds(seen, ev.StagePassed)[0].reason


async def test_step_back_returns_to_the_previous_stage(tmp_path):
    eng, _, clock, _ = make(tmp_path)
    clock.at(1000, lambda: eng.submit(Intent("step_back", OP)))
    assert await eng.run() == 0
    assert eng.router.applied == [1, 5, 1, 5, 25, 100]


async def test_step_back_at_first_stage_is_refused(tmp_path):
    eng, seen, clock, _ = make(tmp_path)
    clock.at(10, lambda: eng.submit(Intent("step_back", OP)))
    assert await eng.run() == 0
    refused = [a for a in kinds(seen, ev.OperatorAction) if not a.accepted]
    assert refused and "first stage" in refused[0].detail


async def test_manual_rollback_is_journaled_with_who(tmp_path):
    eng, seen, clock, _ = make(tmp_path)
    clock.at(950, lambda: eng.submit(Intent("rollback", OP, reason="customer reports")))
    assert await eng.run() == 3
    rb = kinds(seen, ev.RolledBack)[0]
    assert (rb.reason, rb.automatic, rb.from_weight) == ("customer reports", False, 5)
    rec = [r for r in read_records(tmp_path / "j.jsonl") if r["event"] == "operator_action"][0]
    assert rec["operator"] == {"user": "alice", "ssh_client": "10.0.0.7", "host": ""}


async def test_promote_before_100_is_refused(tmp_path):
    eng, seen, clock, _ = make(tmp_path)
    clock.at(10, lambda: eng.submit(Intent("promote", OP)))
    assert await eng.run() == 0
    assert any(not a.accepted and a.action == "promote" for a in kinds(seen, ev.OperatorAction))


async def test_promote_at_100_when_monitoring(tmp_path):
    eng, seen, clock, _ = make(tmp_path, stay_at_100=True)
    clock.at(3 * 900 + 100, lambda: eng.submit(Intent("promote", OP)))
    assert await eng.run() == 0
    assert kinds(seen, ev.Promoted)


async def test_interrupt_keeps_traffic_and_names_the_resume_command(tmp_path):
    eng, seen, clock, _ = make(tmp_path)
    clock.at(1000, lambda: eng.interrupt("SIGTERM"))
    assert await eng.run() == 130
    assert eng.router.weight == 5
    it = kinds(seen, ev.Interrupted)[0]
    assert it.weight == 5 and it.resume_command == "canary-console deploy --version v0.2.0 --resume"


async def test_dry_run_never_touches_the_router(tmp_path):
    router = FakeRouter(weight=0)
    eng, seen, _, _ = make(tmp_path, router=router, dry_run=True)
    assert await eng.run() == 0
    assert router.applied == [] and router.weight == 0
    assert all(e.dry_run for e in seen)
    assert [e.weight for e in kinds(seen, ev.RouterApplied)] == [1, 5, 25, 100]


async def test_a_failed_nginx_t_at_a_raised_stage_rolls_back_to_0_first(tmp_path):
    eng, seen, _, _ = make(tmp_path, router=FakeRouter(fail_on=[25]))
    assert await eng.run() == 3
    failed = kinds(seen, ev.RouterFailed)[0]
    assert "host not found" in failed.error and failed.outcome == "restored" and failed.file_weight == 5
    assert eng.router.applied == [1, 5, 0] and eng.router.weight == 0
    rb = kinds(seen, ev.RolledBack)[0]
    assert rb.automatic and rb.reason.startswith("router: the change to canary 25% failed")
    # canary 0% first, then the reason
    assert seen.index(kinds(seen, ev.RouterApplied)[-1]) < seen.index(rb)
    assert last_applied_weight(read_records(tmp_path / "j.jsonl")) == 0


async def test_a_change_nginx_does_not_confirm_in_time_is_unconfirmed_and_rolled_back(tmp_path):
    eng, seen, _, _ = make(tmp_path, router=FakeRouter(unconfirmed_on=[5]))
    assert await eng.run() == 3
    failed = kinds(seen, ev.RouterFailed)[0]
    assert failed.weight == 5 and failed.outcome == "unconfirmed" and failed.file_weight == 5
    assert failed.restored_weight is None  # the previous weight is never claimed as live
    recs = list(read_records(tmp_path / "j.jsonl"))
    truth_before = router_truth(recs[: next(i for i, r in enumerate(recs) if r["event"] == "router_failed") + 1])
    assert truth_before.state == "unconfirmed" and truth_before.pending_weight == 5 and truth_before.confirmed_weight == 1
    assert eng.router.weight == 0 and router_truth(recs).state == "applied" and router_truth(recs).confirmed_weight == 0


async def test_a_late_confirmation_is_journaled_and_still_rolls_back(tmp_path):
    eng, seen, _, _ = make(tmp_path, router=FakeRouter(late_on=[5]))
    assert await eng.run() == 3
    late = [e for e in kinds(seen, ev.RouterApplied) if e.late]
    assert [e.weight for e in late] == [5]
    assert kinds(seen, ev.RolledBack)[0].reason.startswith("router: the change to canary 5% was not confirmed")
    assert eng.router.weight == 0


async def test_when_even_0_cannot_be_confirmed_exit_6_says_what_nginx_serves_and_what_to_run(tmp_path):
    eng, seen, _, _ = make(tmp_path, router=FakeRouter(unconfirmed_on=[5, 0]))
    assert await eng.run() == 6
    reason = kinds(seen, ev.Failed)[0].reason
    assert "rollback to 0% failed 3 times" in reason and "as far as anyone can tell" in reason
    assert "the upstream file holds canary 0%" in reason and "nginx last confirmed canary 1%" in reason
    assert 'canary-console rollback --reason' in reason and "\n" not in reason
    assert router_truth(read_records(tmp_path / "j.jsonl")).state == "unconfirmed"


async def test_a_failed_preflight_changes_nothing_and_exits_4(tmp_path):
    err = RouterError("preflight: http://127.0.0.1/__canary/generation did not answer the new generation (got HTTP 404)")
    eng, seen, _, _ = make(tmp_path, router=FakeRouter(weight=0, preflight_error=err))
    assert await eng.run() == 4
    assert eng.router.applied == [] and not kinds(seen, ev.StageStarted)
    assert kinds(seen, ev.Failed)[0].reason.startswith("preflight: http://127.0.0.1/__canary/generation")


async def test_start_index_and_resume_flag(tmp_path):
    s = Settings(stages=[1, 5, 25, 100], observation_period=60, check_interval=10, canary_health_url="http://c/health")
    eng = Engine(s, version="v1.0.0", router=FakeRouter(), journal=Journal(tmp_path / "j.jsonl"), clock=FakeClock(),
                 start_index=2, health=FakeHealth())
    assert await eng.run() == 0
    assert eng.router.applied == [25, 100]


async def test_no_gate_at_all_never_passes_a_stage(tmp_path):
    s = Settings(stages=[1, 100], observation_period=60, check_interval=10)
    eng = Engine(s, version="v1.0.0", router=FakeRouter(), journal=Journal(tmp_path / "j.jsonl"), clock=FakeClock(),
                 on_promote=None)
    seen: list[ev.Event] = []
    eng.add_listener(seen.append)
    task = asyncio.ensure_future(eng.run())
    for _ in range(5000):
        await asyncio.sleep(0)
        if kinds(seen, ev.Holding):
            break
    assert "no gate reported" in kinds(seen, ev.Holding)[0].reason
    assert eng.router.applied == [1]
    eng.submit(Intent("rollback", OP))
    assert await task == 3


async def test_a_checker_that_raises_is_an_error_never_a_pass(tmp_path):
    def boom(ctx):
        raise RuntimeError("bug")

    eng, seen, _, _ = make(tmp_path, boom, unavailable_after=2, on_metrics_unavailable="rollback")
    assert await eng.run() == 3
    c = kinds(seen, ev.CheckCompleted)[0]
    assert any(r.verdict == ERROR and "RuntimeError: bug" in r.detail for r in c.results)


async def test_a_hanging_check_never_delays_a_manual_rollback(tmp_path):
    """Prometheus hangs mid-check; the operator's rollback goes through at once, not after the timeout."""
    hang = asyncio.Event()

    class Hanging:
        async def check(self, ctx):
            await hang.wait()  # never set: a source that hangs
            return []

    s = Settings(stages=[1, 5, 25, 100], observation_period=900, check_interval=15, canary_health_url="http://c/health",
                 check_timeout=3600)
    eng = Engine(s, version="v0.2.0", router=FakeRouter(), journal=Journal(tmp_path / "j.jsonl"), clock=FakeClock(),
                 checkers=[Hanging()], health=FakeHealth(), operator=OP)
    task = asyncio.ensure_future(eng.run())
    for _ in range(200):
        await asyncio.sleep(0)
    assert eng.router.applied == [1] and not task.done()  # stuck inside the first check
    eng.submit(Intent("pause", OP))
    eng.submit(Intent("rollback", OP, reason="pager"))
    assert await asyncio.wait_for(task, 2) == 3
    assert eng.router.weight == 0 and eng.state.reason == "pager"


async def test_a_rollback_queued_between_stages_wins_over_raising_the_traffic(tmp_path):
    """The operator presses r while the next stage is being prepared: the canary never gets 5%."""
    eng, seen, _, checker = make(tmp_path)

    async def begin_stage(ctx):
        if ctx.index == 1:
            eng.submit(Intent("rollback", OP, reason="not today"))
        return []

    checker.begin_stage = begin_stage
    assert await eng.run() == 3
    assert eng.router.applied == [1, 0]
    assert kinds(seen, ev.RolledBack)[0].from_weight == 1


# ---------------------------------------------------------------------------- bounded delivery
async def test_a_lagging_subscriber_loses_old_checks_never_a_weight_and_is_told_how_many(tmp_path):
    eng, seen, _, _ = make(tmp_path)
    q = eng.subscribe(maxsize=5)  # a console that never reads while the whole rollout runs
    assert await eng.run() == 0
    checks = len(kinds(seen, ev.CheckCompleted))
    assert checks > 5
    got = [q.get_nowait() for _ in range(len(q) + 1)]  # + the note about what it lost
    note, rest = got[0], got[1:]
    assert isinstance(note, ev.Note) and note.level == "warning" and note.data["dropped"] == q.dropped_total > 0
    assert f"{q.dropped_total} check/note event(s) were dropped" in note.message
    # every event that moves or explains the traffic is still there, in order
    critical = [e for e in seen if not isinstance(e, ev.DROPPABLE)]
    assert [e for e in rest if not isinstance(e, ev.DROPPABLE)] == critical
    assert [e.weight for e in rest if isinstance(e, ev.RouterApplied)] == [0, 1, 5, 25, 100]  # preflight, stages
    assert len(rest) + q.dropped_total == len(seen)


async def test_the_default_subscription_is_bounded(tmp_path):
    eng, _, _, _ = make(tmp_path)
    assert eng.subscribe().maxsize == ev.SUBSCRIBER_MAX


async def test_an_event_queue_waits_for_the_next_event_and_reports_drops_first():
    q = ev.EventQueue(2)
    waiter = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)  # let the waiter block on the empty queue (a scheduling step, not a delay)
    assert not waiter.done()
    q.put_nowait(ev.CheckCompleted(index=0))
    assert isinstance(await waiter, ev.CheckCompleted)
    for i in range(3):
        q.put_nowait(ev.CheckCompleted(index=i))
    q.put_nowait(ev.StageStarted(index=1, weight=5))
    first = await q.get()
    assert isinstance(first, ev.Note) and first.data == {"dropped": 2}
    assert [type(e).__name__ for e in (await q.get(), await q.get())] == ["CheckCompleted", "StageStarted"]


async def test_checks_know_the_generation_nginx_confirmed_for_their_stage(tmp_path):
    eng, seen, _, checker = make(tmp_path)
    assert await eng.run() == 0
    applied = {e.weight: e.generation for e in kinds(seen, ev.RouterApplied) if ":preflight-" not in e.generation}
    assert checker.contexts and all(c.generation == applied[c.weight] for c in checker.contexts)
