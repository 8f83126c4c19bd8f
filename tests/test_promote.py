"""`canary-console promote` against a real nginx (the production routing goes through the
router's safe path) and, for image tagging, a real dockerd."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from console.commands import promote
from console.core import events as ev
from console.core.config import Config, load_config
from console.core.journal import Journal, read_records
from console.core.lock import DriverLock, lock_path_for
from tests.fixtures.nginx import NginxEnv, write_canary_toml
from tests.test_history import record_deployment, rollback
from tests.test_notify import Receiver

STAGE = 900.0


def setup(tmp_path: Path, env: NginxEnv, completed_ago: float | None = 3600.0, version: str = "v0.2.0",
          dep: str = "d-1", **toml: Any) -> Config:
    """A canary.toml for this nginx and a journal whose deployment reached 100% ``completed_ago``
    seconds ago; nginx serves 100% canary, as the deployment left it."""
    cfg = load_config(write_canary_toml(tmp_path / "canary.toml", env, **toml), environ={})
    asyncio.run(env.router().apply(100, "setup-100"))
    if completed_ago is not None:
        start = datetime.now(UTC) - timedelta(seconds=completed_ago + 3 * STAGE)
        with Journal(cfg.journal_path) as j:
            record_deployment(j, dep, version, start, stage_seconds=STAGE)
    return cfg


def args(*approved: str, force: bool = False, reason: str = "", yes: bool = True) -> argparse.Namespace:
    return argparse.Namespace(approved_by=list(approved), force=force, reason=reason, yes=yes)


def journal_kinds(cfg: Config, since: int = 0) -> list[str]:
    return [r["event"] for r in list(read_records(cfg.journal_path))[since:]]


def snapshot(cfg: Config, env: NginxEnv) -> tuple[bytes | None, bytes, bool, bool]:
    journal = cfg.journal_path.read_bytes() if cfg.journal_path.exists() else None
    return (journal, env.upstream_file.read_bytes(),
            cfg.resolve("CHANGELOG.md").exists(), cfg.resolve("deployments.log").exists())


def refused(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one clear line
    assert err[0].startswith("canary-console: promote refused: ")
    return err[0].removeprefix("canary-console: promote refused: ")


def test_refused_before_promote_after_and_nothing_changes(tmp_path: Path, nginx_env: NginxEnv,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    cfg = setup(tmp_path, nginx_env, completed_ago=600)
    before = snapshot(cfg, nginx_env)
    assert promote.run(args(), cfg) == 4
    line = refused(capsys)
    assert re.fullmatch(r"deployment d-1 \(v0\.2\.0\) reached 100% at \S+Z, 10m0\ds ago; \[rollout\] promote_after is "
                        r"30m00s: wait (19m5\ds|20m00s) more, or use --force --reason TEXT", line), line
    assert snapshot(cfg, nginx_env) == before


def test_refused_without_the_required_approvals(tmp_path: Path, nginx_env: NginxEnv,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    cfg = setup(tmp_path, nginx_env, rollout={"required_approvals": 2})
    before = snapshot(cfg, nginx_env)
    assert promote.run(args("alice", "Alice "), cfg) == 4  # the same person twice is one approval
    assert refused(capsys) == ("2 approval(s) required ([rollout] required_approvals), 1 given (alice); "
                               "add --approved-by NAME (repeatable)")
    assert promote.run(args(), cfg) == 4
    assert refused(capsys).startswith("2 approval(s) required ([rollout] required_approvals), 0 given;")
    assert snapshot(cfg, nginx_env) == before


@pytest.mark.parametrize("case", ["empty", "at 25%", "rolled back", "weights changed", "dry run", "promoted"])
def test_refused_unless_the_deployment_holds_100(tmp_path: Path, nginx_env: NginxEnv, capsys: pytest.CaptureFixture[str],
                                                 case: str) -> None:
    cfg = setup(tmp_path, nginx_env, completed_ago=None)
    start = datetime.now(UTC) - timedelta(hours=3)
    with Journal(cfg.journal_path) as j:
        if case == "at 25%":
            record_deployment(j, "d-1", "v0.2.0", start, upto=2)
        elif case == "rolled back":
            t = record_deployment(j, "d-1", "v0.2.0", start)
            rollback(j, "d-1", "v0.2.0", t + timedelta(minutes=5), 3, 100, "p95_latency.fast 3.1 > 2.5")
        elif case == "weights changed":  # `canary-console weights 25` after 100%, journaled outside the deployment
            record_deployment(j, "d-1", "v0.2.0", start)
            j.append(ev.RouterIntent(weight=25, generation="m:1", reason="manual: weights 25", deployment_id="manual"))
            j.append(ev.RouterApplied(weight=25, generation="m:1", deployment_id="manual"))
        elif case == "dry run":
            record_deployment(j, "d-1", "v0.2.0", start, dry_run=True)
        elif case == "promoted":
            t = record_deployment(j, "d-1", "v0.2.0", start)
            j.append(ev.Promoted(ts=(t + timedelta(hours=1)).isoformat(), deployment_id="d-1", version="v0.2.0"))
    before = snapshot(cfg, nginx_env)
    assert promote.run(args(force=True, reason="we are sure"), cfg) == 4  # --force overrides only the wait
    line = refused(capsys)
    expected = {
        "empty": f"no deployment in the journal {cfg.journal_path}; deploy and reach 100% first",
        "at 25%": "deployment d-1 (v0.2.0) is observing at stage 3/4 (25%); promote needs a deployment that reached 100% "
                  "and was not rolled back",
        "rolled back": "deployment d-1 (v0.2.0) is rolled back at stage 4/4 (100%): p95_latency.fast 3.1 > 2.5; promote needs",
        "weights changed": "deployment d-1 (v0.2.0) reached 100%, but the journal's last applied weight is 25% canary",
        "dry run": f"no deployment in the journal {cfg.journal_path}",
        "promoted": "deployment d-1 (v0.2.0) is already promoted",
    }[case]
    assert line.startswith(expected), line
    assert snapshot(cfg, nginx_env) == before


def test_promote_routes_appends_and_journals(tmp_path: Path, nginx_env: NginxEnv, capsys: pytest.CaptureFixture[str]) -> None:
    receiver = Receiver()
    try:
        cfg = setup(tmp_path, nginx_env, rollout={"required_approvals": 2}, notify={"webhook_url": receiver.url})
        changelog, dlog = cfg.resolve("CHANGELOG.md"), cfg.resolve("deployments.log")
        changelog.write_text("# Changelog\n\n## [v0.1.0] - 2026-01-05\n### Added\n- First release\n")
        dlog.write_text("Mon Jan  5 10:00:00 UTC 2026: Promoted v0.1.0 to production after successful canary deployment")
        old_changelog, old_dlog, ino = changelog.read_bytes(), dlog.read_bytes(), changelog.stat().st_ino
        nginx_env.upstream_file.write_text(nginx_env.upstream_file.read_text())  # still 100%
        n_before = len(list(read_records(cfg.journal_path)))

        t0 = time.time()
        assert promote.run(args("carol", "dave"), cfg) == 0
        out = capsys.readouterr().out
        assert out.startswith("promoted v0.2.0 (d-1) to production: nginx serves 100% v0.2.0 (verified in ")

        # the journal: the action, intent before / outcome after the router change, Promoted, the alert
        recs = list(read_records(cfg.journal_path))[n_before:]
        assert [r["event"] for r in recs] == ["operator_action", "router_intent", "router_applied", "promoted", "note"]
        action, intent, applied, promoted, note = recs
        assert action["action"] == "promote" and action["detail"] == "approved by carol, dave"
        assert intent["weight"] == 100 and intent["previous_weight"] == 100 and intent["reason"].startswith("promote:")
        assert applied["generation"] == intent["generation"] and applied["weight"] == 100
        assert promoted["approvals"] == ["carol", "dave"] and promoted["forced"] is False
        assert promoted["operator"]["user"] == ev.Operator.current().user
        assert note["message"] == "alert sent: promoted"
        assert receiver.bodies[0]["event"] == "promoted" and "approved by carol, dave" in receiver.bodies[0]["text"]

        # nginx verifiably serves the promotion's routing: 100% to the promoted version
        assert nginx_env.served_generation() == intent["generation"]
        split = nginx_env.send(50)
        assert (split.canary, split.production) == (50, 0)

        # CHANGELOG.md and deployments.log: appended exactly as the seed does, never rewritten
        day = time.strftime("%Y-%m-%d", time.localtime(t0))
        assert changelog.read_bytes() == old_changelog + (
            f"## [v0.2.0] - {day}\n### Changed\n- Promoted canary v0.2.0 to production\n").encode()
        new_dlog = dlog.read_bytes()
        assert new_dlog.startswith(old_dlog + b"\n")
        last = new_dlog.decode().splitlines()[-1]
        assert re.fullmatch(r"\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \w+ \d{4}: Promoted v0\.2\.0 to production after "
                            r"successful canary deployment", last), last
        assert changelog.stat().st_ino == ino  # the same file, appended to

        # a second deployment promoted later appends again; the first entries stay byte for byte
        first_changelog = changelog.read_bytes()
        with Journal(cfg.journal_path) as j:
            record_deployment(j, "d-2", "v0.3.0", datetime.now(UTC) - timedelta(hours=2), stage_seconds=STAGE)
        assert promote.run(args("carol", "erin"), cfg) == 0
        text = changelog.read_bytes()
        assert text.startswith(first_changelog) and text.endswith(b"- Promoted canary v0.3.0 to production\n")
        assert dlog.read_bytes().startswith(new_dlog) and dlog.read_text().count("Promoted v0.3.0") == 1
    finally:
        receiver.close()


def test_force_needs_a_reason_and_is_journaled(tmp_path: Path, nginx_env: NginxEnv, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = setup(tmp_path, nginx_env, completed_ago=60)
    assert promote.run(args(force=True), cfg) == 2
    assert capsys.readouterr().err.strip() == "canary-console: promote: --force needs --reason TEXT (the reason is journaled)"
    n = len(list(read_records(cfg.journal_path)))
    assert promote.run(args(force=True, reason="security fix, on-call approved"), cfg) == 0
    recs = list(read_records(cfg.journal_path))[n:]
    assert recs[0]["event"] == "operator_action" and "forced before promote_after: security fix" in recs[0]["detail"]
    assert recs[1]["event"] == "note" and recs[1]["level"] == "warning"
    assert recs[1]["message"].endswith("security fix, on-call approved")
    promoted = next(r for r in recs if r["event"] == "promoted")
    assert promoted["forced"] is True and promoted["reason"] == "security fix, on-call approved"


def test_a_second_driver_gets_exit_5_naming_the_holder(tmp_path: Path, nginx_env: NginxEnv,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = setup(tmp_path, nginx_env)
    holder = DriverLock(lock_path_for(cfg.journal_path))
    holder.acquire("deploy --version v0.2.0", ev.Operator(user="mallory", ssh_client="10.1.1.1"))
    try:
        before = snapshot(cfg, nginx_env)
        assert promote.run(args(), cfg) == 5
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1
        assert re.fullmatch(rf"canary-console: promote: another driver holds the lock: mallory \(ssh from 10\.1\.1\.1\) on "
                            rf"\S+, pid {os.getpid()}, since \S+ \(deploy --version v0\.2\.0\)", err[0]), err[0]
        assert snapshot(cfg, nginx_env) == before
    finally:
        holder.release()


def test_promote_through_the_cli(tmp_path: Path, nginx_env: NginxEnv) -> None:
    import subprocess
    import sys

    cfg = setup(tmp_path, nginx_env, completed_ago=120)
    cmd = [sys.executable, "-m", "console.commands.cli", "--config", str(cfg.path), "promote", "--yes"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert p.returncode == 4 and len(p.stderr.splitlines()) == 1 and "wait 28m" in p.stderr
    p = subprocess.run([*cmd, "--force", "--reason", "hotfix", "--approved-by", "carol"], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("promoted v0.2.0 (d-1) to production")
    assert journal_kinds(cfg)[-1] == "promoted"


def test_without_a_terminal_it_needs_yes(tmp_path: Path, nginx_env: NginxEnv, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = setup(tmp_path, nginx_env)
    before = snapshot(cfg, nginx_env)
    assert promote.run(args(yes=False), cfg) == 2
    assert "pass --yes" in capsys.readouterr().err
    assert snapshot(cfg, nginx_env) == before


# --------------------------------------------------------------------------- docker


def test_image_tagging_on_promote(tmp_path: Path, nginx_env: NginxEnv, docker_sandbox: Any) -> None:
    client = docker_sandbox.client()
    with pytest.raises(Exception, match="latest"):
        client.images.get("fragrance-ai-app:latest")
    cfg = setup(tmp_path, nginx_env, docker={"enabled": True, "host": docker_sandbox.host})
    n = len(list(read_records(cfg.journal_path)))
    assert promote.run(args(), cfg) == 0
    canary_id = client.images.get("fragrance-ai-app:v0.2.0").id
    assert client.images.get("fragrance-ai-app:latest").id == canary_id
    notes = [r for r in list(read_records(cfg.journal_path))[n:] if r["event"] == "note"]
    assert notes[0]["message"] == "tagged fragrance-ai-app:v0.2.0 as fragrance-ai-app:v0.2.0, fragrance-ai-app:latest"


def test_a_missing_image_warns_unless_docker_is_required(tmp_path: Path, nginx_env: NginxEnv, docker_sandbox: Any,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    host = docker_sandbox.host
    cfg = setup(tmp_path / "a", nginx_env, version="v0.9.0", docker={"enabled": True, "host": host})
    n = len(list(read_records(cfg.journal_path)))
    assert promote.run(args(), cfg) == 0  # not required: promoted, with a warning in the journal
    recs = list(read_records(cfg.journal_path))[n:]
    warn = next(r for r in recs if r["event"] == "note")
    assert warn["level"] == "warning"
    assert warn["message"] == f"image not tagged: image fragrance-ai-app:v0.9.0 not found at {host}"
    assert recs[-1]["event"] == "promoted"

    cfg = setup(tmp_path / "b", nginx_env, version="v0.9.0", docker={"enabled": True, "host": host, "required": True})
    n = len(list(read_records(cfg.journal_path)))
    assert promote.run(args(), cfg) == 4
    assert capsys.readouterr().err.strip().endswith("image fragrance-ai-app:v0.9.0 not found at " + host + "; nothing was routed")
    assert journal_kinds(cfg, n) == ["operator_action", "note"]  # no router change, no promoted
    assert not cfg.resolve("CHANGELOG.md").exists()
    assert json.loads(cfg.journal_path.read_text().splitlines()[-1])["level"] == "error"
