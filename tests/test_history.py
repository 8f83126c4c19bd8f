"""`canary-console history [--json]` on a journal written with console.core.events records."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from console.commands import history
from console.core import events as ev
from console.core.config import Config, load_config
from console.core.events import GateResult, Operator
from console.core.journal import Journal

ALICE = Operator(user="alice", ssh_client="10.0.0.7", host="deploy-1")
BOB = Operator(user="bob", host="deploy-1")
T0 = datetime(2026, 3, 2, 9, 0, 0, tzinfo=UTC)


def iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record_deployment(
    j: Journal,
    dep: str,
    version: str,
    start: datetime,
    upto: int = 3,
    stages: tuple[int, ...] = (1, 5, 25, 100),
    operator: Operator = ALICE,
    dry_run: bool = False,
    stage_seconds: float = 900.0,
) -> datetime:
    """What the engine journals for a deployment that reaches stage index ``upto``: the start,
    an intent before and an outcome after every router change, stage starts and passes, and
    ``completed`` at 100%.  Returns the time of the last record."""
    c = {"deployment_id": dep, "version": version, "dry_run": dry_run}
    t = start
    j.append(ev.DeploymentStarted(ts=iso(t), stages=stages, observation_period=stage_seconds, check_interval=15,
                                  operator=operator, engine_pid=4242, engine_host="deploy-1", **c))
    prev = 0
    for i, w in enumerate(stages[: upto + 1]):
        gen = f"{dep}:g{i}"
        j.append(ev.RouterIntent(ts=iso(t), weight=w, previous_weight=prev, generation=gen, reason=f"stage {i + 1}/4", **c))
        j.append(ev.RouterApplied(ts=iso(t), weight=w, generation=gen, duration_ms=40.0, **c))
        j.append(ev.StageStarted(ts=iso(t), index=i, weight=w, total=len(stages), observation_period=stage_seconds, **c))
        if w == 100:
            j.append(ev.Completed(ts=iso(t), index=i, **c))
            break
        t += timedelta(seconds=stage_seconds)
        j.append(ev.CheckCompleted(ts=iso(t), index=i, weight=w, elapsed=stage_seconds,
                                   results=(GateResult("error_rate", ev.PASS, value=0.001, threshold=0.005),), **c))
        if i < upto:
            j.append(ev.StagePassed(ts=iso(t), index=i, weight=w, reason="all gates passed", **c))
        prev = w
    return t


def rollback(j: Journal, dep: str, version: str, t: datetime, index: int, weight: int, reason: str) -> None:
    c = {"deployment_id": dep, "version": version}
    j.append(ev.RollbackStarted(ts=iso(t), reason=reason, automatic=True, index=index, weight=weight, **c))
    j.append(ev.RouterIntent(ts=iso(t), weight=0, previous_weight=weight, generation=f"{dep}:rb",
                             reason=f"rollback: {reason}", **c))
    j.append(ev.RouterApplied(ts=iso(t), weight=0, generation=f"{dep}:rb", duration_ms=35.0, **c))
    snap = (GateResult("error_rate", ev.FAIL, value=0.052, threshold=0.005, critical=True),)
    j.append(ev.RolledBack(ts=iso(t), reason=reason, automatic=True, index=index, from_weight=weight, snapshot=snap, **c))


def make_cfg(tmp_path: Path) -> Config:
    toml = tmp_path / "canary.toml"
    toml.write_text(f'[journal]\npath = "{tmp_path / "journal.jsonl"}"\n')
    return load_config(toml, environ={}, check_upstream_dir=False)


def build_journal(cfg: Config) -> None:
    with Journal(cfg.journal_path) as j:
        # 1: rolled back at 5%
        t = record_deployment(j, "d-1", "v0.2.0", T0, upto=1)
        rollback(j, "d-1", "v0.2.0", t + timedelta(seconds=30), 1, 5, "error_rate 0.052 > critical 0.01")
        # 2: a dry run that reached 100%
        record_deployment(j, "d-2", "v0.2.1", T0 + timedelta(hours=2), dry_run=True, stage_seconds=60)
        # 3: reached 100% and promoted by bob with approvals
        t = record_deployment(j, "d-3", "v0.2.1", T0 + timedelta(hours=3))
        j.append(ev.Promoted(ts=iso(t + timedelta(hours=1)), operator=BOB, approvals=("carol", "dave"),
                             deployment_id="d-3", version="v0.2.1"))
        # a manual router change outside any deployment: not a deployment
        j.append(ev.RouterIntent(weight=0, generation="manual:1", reason="manual: weights 0", deployment_id="manual"))
        j.append(ev.RouterApplied(weight=0, generation="manual:1", deployment_id="manual"))
        # 4: interrupted at 25%
        t = record_deployment(j, "d-4", "v0.3.0", T0 + timedelta(days=1), upto=2)
        j.append(ev.Interrupted(ts=iso(t), index=2, weight=25, signal="SIGTERM", resume_command="canary-console deploy "
                                "--version v0.3.0 --resume", deployment_id="d-4", version="v0.3.0"))
        # 5: failed before the first stage
        j.append(ev.DeploymentStarted(ts=iso(T0 + timedelta(days=2)), stages=(1, 5, 25, 100), operator=BOB,
                                      deployment_id="d-5", version="v0.3.1"))
        j.append(ev.Failed(ts=iso(T0 + timedelta(days=2, seconds=1)), reason="canary is not healthy before the first "
                           "stage: GET http://localhost:8001/health: HTTP 503", deployment_id="d-5", version="v0.3.1"))
        # 6: at 100% now, not promoted yet
        record_deployment(j, "d-6", "v0.4.0", T0 + timedelta(days=3))


def test_history_lists_every_deployment_with_its_outcome(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    build_journal(cfg)
    out: list[str] = []
    assert history.run(argparse.Namespace(json=False), cfg, out=out.append) == 0
    lines = out[0].splitlines()
    assert lines[0].split() == ["id", "version", "start", "(UTC)", "end", "(UTC)", "outcome", "who", "reason"]
    body = {ln.split()[0]: ln for ln in lines[1:]}
    assert list(body) == ["d-1", "d-2", "d-3", "d-4", "d-5", "d-6"]  # journal order, no "manual"
    assert "rolled back at 2/4 (5%)" in body["d-1"] and "error_rate 0.052 > critical 0.01" in body["d-1"]
    assert "2026-03-02 09:00:00" in body["d-1"] and "2026-03-02 09:30:30" in body["d-1"]
    assert "at 100% (dry run)" in body["d-2"]
    assert "promoted" in body["d-3"] and "alice@10.0.0.7, promoted by bob" in body["d-3"]
    assert "interrupted at 3/4 (25%)" in body["d-4"] and "SIGTERM" in body["d-4"]
    assert "failed" in body["d-5"] and "HTTP 503" not in body["d-5"] and body["d-5"].endswith("...")  # long reason cut
    assert "at 100%" in body["d-6"] and " - " in body["d-6"]  # not ended


def test_history_json_is_the_same_rows(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    build_journal(cfg)
    out: list[str] = []
    assert history.run(argparse.Namespace(json=True), cfg, out=out.append) == 0
    rows: list[dict[str, Any]] = json.loads(out[0])
    assert [(r["id"], r["version"], r["outcome"]) for r in rows] == [
        ("d-1", "v0.2.0", "rolled back"), ("d-2", "v0.2.1", "at 100%"), ("d-3", "v0.2.1", "promoted"),
        ("d-4", "v0.3.0", "interrupted"), ("d-5", "v0.3.1", "failed"), ("d-6", "v0.4.0", "at 100%"),
    ]
    d1, d2, d3, d4, d5, _ = rows
    assert d1["start"] == "2026-03-02T09:00:00.000Z" and d1["end"] == "2026-03-02T09:30:30.000Z"
    assert d1["who"] == "alice@10.0.0.7" and d1["reason"] == "error_rate 0.052 > critical 0.01" and d1["automatic"] is True
    assert d1["weight"] == 0 and d1["stage"] == "2/4 (5%)"
    assert d2["dry_run"] is True
    assert d3["ended_by"] == "bob" and d3["ended_how"] == "promoted" and d3["approvals"] == ["carol", "dave"]
    assert d3["end"] == "2026-03-02T13:45:00.000Z"
    assert d3["completed_at"] == "2026-03-02T12:45:00.000Z"
    assert d4["reason"] == "interrupted at stage 25% (SIGTERM)" and d4["end"] == ""
    assert d5["reason"].endswith("HTTP 503") and d5["who"] == "bob"


def test_history_of_an_empty_journal(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    out: list[str] = []
    assert history.run(argparse.Namespace(json=False), cfg, out=out.append) == 0
    assert out == [f"no deployments in {cfg.journal_path}"]
    out.clear()
    assert history.run(argparse.Namespace(json=True), cfg, out=out.append) == 0
    assert json.loads(out[0]) == []


def test_history_survives_a_torn_last_line(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    build_journal(cfg)
    with open(cfg.journal_path, "ab") as f:
        f.write(b'{"event":"rolled_back","deployment_id":"d-6","rea')  # a crash mid-write
    rows = history.history(__import__("console.core.journal").core.journal.read_records(cfg.journal_path))
    assert rows[-1]["id"] == "d-6" and rows[-1]["outcome"] == "at 100%"


def test_history_through_the_cli(tmp_path: Path) -> None:
    import subprocess
    import sys

    cfg = make_cfg(tmp_path)
    build_journal(cfg)
    (tmp_path / "nginx" / "conf.d").mkdir(parents=True)  # the CLI validates the whole config first
    cmd = [sys.executable, "-m", "console.commands.cli", "--config", str(cfg.path), "history"]
    p = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    from console.core.journal import read_records

    assert json.loads(p.stdout) == history.history(read_records(cfg.journal_path))
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert p.returncode == 0 and p.stdout.splitlines()[1].startswith("d-1  v0.2.0")
