"""The journal survives a torn last line, and state folds back from it."""

from __future__ import annotations

from console.core import events as ev
from console.core.journal import Journal, read_records
from console.core.state import deployments, last_applied_weight, unfinished


def test_torn_last_line_does_not_hide_the_rest(tmp_path):
    p = tmp_path / "j.jsonl"
    with Journal(p) as j:
        j.append(ev.RouterIntent(weight=5, deployment_id="d1", version="v1.0.0"))
        j.append(ev.RouterApplied(weight=5, deployment_id="d1", version="v1.0.0"))
    with open(p, "ab") as f:
        f.write(b'{"event":"router_intent","weight":25,"deploym')  # crash mid-write
    assert [r["event"] for r in read_records(p)] == ["router_intent", "router_applied"]
    with Journal(p) as j:  # the next start appends on a fresh line
        j.append(ev.Note(message="after crash", deployment_id="d1"))
    assert [r["event"] for r in read_records(p)] == ["router_intent", "router_applied", "note"]
    assert last_applied_weight(read_records(p)) == 5


def test_records_round_trip_through_the_fold(tmp_path):
    p = tmp_path / "j.jsonl"
    res = (ev.GateResult("error_rate", ev.FAIL, value=float("nan"), threshold=0.005),)
    with Journal(p) as j:
        j.append(ev.DeploymentStarted(stages=(1, 100), deployment_id="d1", version="v1.0.0", operator=ev.Operator("bob")))
        j.append(ev.StageStarted(index=0, weight=1, total=2, deployment_id="d1", version="v1.0.0"))
        j.append(ev.CheckCompleted(index=0, weight=1, results=res, deployment_id="d1", version="v1.0.0"))
    d = deployments(read_records(p))["d1"]
    assert d.driver == "bob" and d.stages == (1, 100) and d.results[0].value is None  # NaN is stored as null
    assert unfinished(read_records(p), "v1.0.0").deployment_id == "d1"
    assert unfinished(read_records(p), "v9.9.9") is None
