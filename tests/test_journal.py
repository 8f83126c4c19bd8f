"""The journal survives a torn last line, and state folds back from it."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from console.core import events as ev
from console.core.journal import Journal, read_records
from console.core.state import UNCONFIRMED, deployments, last_applied_weight, router_truth, unfinished
from tests.fixtures.journal import long_journal


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


def test_every_event_is_frozen_keyword_only_and_equal_by_value(tmp_path):
    """Events are Event's own methods, not generated ones (core/events.py ``_event``): what the
    journal wrote cannot change under it, and a record read back is the event written."""
    kinds = [cls for cls in ev._EVENT_TYPES.values() if cls is not ev.Event]
    assert len(kinds) >= 19
    p = tmp_path / "j.jsonl"
    written = [cls(deployment_id="d1", version="v1.0.0", ts="2026-12-03T00:00:00.000Z") for cls in kinds]
    with Journal(p) as j:
        j.append(*written)
    read = [ev.event_from_record(r) for r in read_records(p)]
    assert read == written and [type(e) for e in read] == kinds
    e = ev.RouterApplied(weight=5, generation="g", deployment_id="d1", ts="t")
    assert e == dataclasses.replace(e) and e != dataclasses.replace(e, weight=25) and e != ev.RouterIntent(weight=5, ts="t")
    assert hash(ev.Paused(index=1, ts="t")) == hash(ev.Paused(index=1, ts="t"))
    assert repr(ev.Holding(index=2, weight=5, reason="r", ts="t")) == (
        "Holding(ts='t', deployment_id='', version='', dry_run=False, index=2, weight=5, reason='r')")
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.weight = 0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del e.generation
    with pytest.raises(TypeError, match="unexpected keyword argument 'wieght'"):
        ev.RouterApplied(wieght=5)
    with pytest.raises(TypeError):
        ev.RouterApplied(5)  # keyword-only
    assert ev.CheckCompleted().breaches is not ev.CheckCompleted().breaches  # a fresh default each
    assert ev.Note().ts != "" and dataclasses.asdict(ev.Note(message="m", ts="t"))["message"] == "m"


def test_the_fold_checkpoint_gives_the_whole_journals_answer_and_only_reads_past_it(tmp_path):
    from console.core import checkpoint

    p = tmp_path / "journal.jsonl"
    long_journal(p, 7, 20)
    assert checkpoint.deployments_in(p, refresh=10**9) == deployments(read_records(p))
    assert not checkpoint.path_for(p).exists()  # a short tail writes none
    first = checkpoint.deployments_in(p, refresh=100)
    assert first == deployments(read_records(p)) and checkpoint.path_for(p).exists()
    long_journal(p, 2, 5, start=7)  # two more deployments after the checkpoint
    with Journal(p) as j:  # and one from before it goes on (resumed)
        j.append(ev.DeploymentStarted(resumed=True, stages=(1, 5, 25, 100), deployment_id="d2", version="v1.2.0"),
                 ev.StageStarted(index=2, weight=25, total=4, deployment_id="d2", version="v1.2.0"))
    whole = deployments(read_records(p))
    assert checkpoint.deployments_in(p) == whole and list(checkpoint.deployments_in(p)) == list(whole)
    with Journal(p) as j:  # a change nobody confirmed, after the checkpoint: status must say so
        j.append(ev.RouterIntent(weight=25, deployment_id="d2", version="v1.2.0"))
    truth = router_truth(read_records(p))
    assert truth.state == UNCONFIRMED and truth.pending_weight == 25 and truth.confirmed_weight == 0
    folded = checkpoint.fold_in(p)
    assert folded.truth == truth and folded.deployments == deployments(read_records(p))
    whole = folded.deployments
    assert whole["d2"].index == 2 and whole["d2"].state == "observing"
    # the records before the checkpoint are not read again: spoil them, the answer stays
    with open(p, "r+b") as f:
        f.write(b"X" * 200)
    assert checkpoint.deployments_in(p) == whole != deployments(read_records(p))
    # and so it is in the next process (a rollback is one): d0's start is only in the checkpoint now
    code = "import sys; from console.core.checkpoint import deployments_in; print(deployments_in(sys.argv[1])['d0'].stages)"
    out = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "(1, 5, 25, 100)" != str(deployments(read_records(p))["d0"].stages), out.stderr


def test_a_checkpoint_that_no_longer_describes_the_journal_is_not_used(tmp_path):
    from console.core import checkpoint

    p = tmp_path / "journal.jsonl"
    long_journal(p, 6, 20)
    checkpoint.deployments_in(p, refresh=1)
    saved, journal = checkpoint.path_for(p).read_bytes(), p.read_bytes()

    def fresh(write_journal) -> None:
        p.unlink()
        write_journal()
        checkpoint.path_for(p).write_bytes(saved)
        folded = checkpoint.fold_in(p, refresh=10**9)
        assert folded.deployments == deployments(read_records(p)) and folded.truth == router_truth(read_records(p))

    fresh(lambda: long_journal(p, 8, 20, start=10))  # another journal, longer than the checkpoint's offset
    fresh(lambda: long_journal(p, 1, 2, start=20))  # a journal cut shorter
    other_fold = json.loads(saved)
    other_fold["fold"] += 1  # written by another version's fold: its states may differ
    other_fold["deployments"][0]["state"] = "bogus"
    for spoiled in (b"{", b"[]", b'{"offset": "x"}', json.dumps(other_fold).encode()):
        p.write_bytes(journal)  # the very journal it was written for
        checkpoint.path_for(p).write_bytes(spoiled)
        folded = checkpoint.fold_in(p, refresh=10**9)
        assert folded.deployments == deployments(read_records(p)) and folded.truth == router_truth(read_records(p))
