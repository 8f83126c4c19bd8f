"""Docker integration against a real dockerd (tests/fixtures/dockerd.py): containers found by
compose label or name, their log tail, logs saved on rollback, stop-on-rollback, and a dead
daemon reported as one warning line instead of a crash."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from console.adapters.docker import DockerAdapter, DockerRollbackHook, DockerUnavailable
from console.core import events as ev
from console.core.config import Config, load_config
from tests.fixtures.real import wait_for

pytestmark = pytest.mark.real


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str | list):
        return json.dumps(v)
    return repr(v)


def make_cfg(tmp_path: Path, **sections: dict[str, Any]) -> Config:
    sections.setdefault("journal", {}).setdefault("path", str(tmp_path / "journal" / "journal.jsonl"))
    sections.setdefault("nginx", {}).setdefault("upstream_file", str(tmp_path / "upstream.conf"))
    body = "".join(f"[{s}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in kv.items()) for s, kv in sections.items())
    path = tmp_path / "canary.toml"
    path.write_text(body)
    return load_config(path, environ={})


def docker_cfg(tmp_path: Path, host: str, **docker: Any) -> Config:
    return make_cfg(tmp_path, docker={"enabled": True, "host": host, **docker})



def rolled_back(dry_run: bool = False) -> ev.RolledBack:
    return ev.RolledBack(deployment_id="d-test", version="v0.2.0", reason="error_rate 0.05 > 0.005", from_weight=5,
                         index=1, dry_run=dry_run)


def test_log_tail_from_a_labelled_container(tmp_path: Path, docker_sandbox: Any) -> None:
    canary = docker_sandbox.run_app(service="app-canary", message="canary")
    prod = docker_sandbox.run_app(service="app", message="production")
    ad = DockerAdapter(docker_cfg(tmp_path, docker_sandbox.host))

    found = ad.containers("canary")
    assert [c.name for c in found] == [canary.name]  # by label: the production container is not a canary
    st = ad.state()
    assert st.available and st.server_version.startswith("20.")
    assert [(c.name, c.status, c.health) for c in st.canary] == [(canary.name, "running", "healthy")]
    assert [c.name for c in st.production] == [prod.name]

    seen: list[str] = []
    with ad.follow_logs(found[0], tail=3) as lines:
        for ln in lines:
            seen.append(ln)
            if len(seen) >= 12:
                break
    nums = [int(m.group(1)) for s in seen if (m := re.fullmatch(r"canary line (\d+)", s))]
    assert len(nums) == 12, seen  # every line decoded whole, none from production
    assert nums == sorted(nums) and len(set(nums)) == 12  # a live tail: consecutive, increasing
    assert nums[-1] - nums[0] == 11


def test_follow_logs_ends_when_closed_from_another_thread(tmp_path: Path, docker_sandbox: Any) -> None:
    """The UI runs the tail in a thread worker and must be able to stop it."""
    docker_sandbox.run_app(service="app-canary", interval=5)  # quiet: the iterator blocks in a read
    ad = DockerAdapter(docker_cfg(tmp_path, docker_sandbox.host))
    follower = ad.follow_logs(ad.containers("canary")[0], tail=1)
    got: list[str] = []
    done = threading.Event()

    def worker() -> None:
        for ln in follower:
            got.append(ln)
        done.set()

    t = threading.Thread(target=worker, daemon=True)
    t.start()
    wait_for(lambda: got, what="the first line")
    assert not done.is_set()  # blocked, waiting for more
    follower.close()
    assert done.wait(10), "the log iterator did not end after close()"
    t.join(5)


def test_found_by_name_without_labels(tmp_path: Path, docker_sandbox: Any) -> None:
    ctr = docker_sandbox.run_app(service="something-else", name="fragrance-ai-app-canary")
    ad = DockerAdapter(docker_cfg(tmp_path, docker_sandbox.host, canary_container="fragrance-ai-app-canary"))
    assert [c.name for c in ad.containers("canary")] == [ctr.name]
    assert ad.last_logs(2)[0][1][-1].startswith("canary line ")


async def test_logs_saved_on_rollback_and_the_canary_keeps_running(tmp_path: Path, docker_sandbox: Any) -> None:
    canary = docker_sandbox.run_app(service="app-canary", message="canary")
    wait_for(lambda: b"canary line 5" in canary.logs(), what="five log lines")
    cfg = docker_cfg(tmp_path, docker_sandbox.host, log_lines=50)
    notes: list[tuple[str, str]] = []
    hook = DockerRollbackHook(cfg, cfg.journal_path.parent, note=lambda lvl, msg, data: notes.append((lvl, msg)))

    assert hook(ev.StagePassed(index=0, weight=1)) is None  # only RolledBack triggers it
    result = await hook(rolled_back())

    assert result is not None and result.warnings == ()
    files = list(cfg.journal_path.parent.glob("canary_failure_*.log"))
    assert files == [result.log_file]
    assert re.fullmatch(r"canary_failure_\d{8}_\d{6}\.log", files[0].name)
    text = files[0].read_text().splitlines()
    body = [ln for ln in text if not ln.startswith("#")]
    assert 5 <= len(body) <= 50
    assert all(re.fullmatch(rf"{canary.name} \| \d{{4}}-\d\d-\d\dT\S+Z canary line \d+", ln) for ln in body), body[:3]
    assert ("info", f"canary logs saved to {files[0]}") in notes
    canary.reload()
    assert canary.status == "running"  # stop_canary_on_rollback defaults to false

    second = await hook(rolled_back())  # a second rollback in the same second never overwrites
    assert second is not None and second.log_file != result.log_file and result.log_file.read_text().splitlines() == text


async def test_stop_on_rollback(tmp_path: Path, docker_sandbox: Any) -> None:
    canary = docker_sandbox.run_app(service="app-canary")
    prod = docker_sandbox.run_app(service="app", message="production")
    cfg = docker_cfg(tmp_path, docker_sandbox.host, stop_canary_on_rollback=True)
    notes: list[tuple[str, str]] = []
    hook = DockerRollbackHook(cfg, cfg.journal_path.parent, note=lambda lvl, msg, data: notes.append((lvl, msg)))

    dry = await hook(rolled_back(dry_run=True))  # a dry run saves logs but changes nothing
    assert dry is not None and dry.stopped == ()
    canary.reload()
    assert canary.status == "running"

    result = await hook(rolled_back())
    assert result is not None and result.stopped == (canary.name,) and result.log_file is not None
    canary.reload()
    prod.reload()
    assert canary.status == "exited"
    assert prod.status == "running"
    assert ("info", f"canary containers stopped: {canary.name}") in notes
    assert "stopping" in canary.logs().decode()  # it got SIGTERM, as `docker-compose stop` sends


async def test_dead_daemon_is_one_warning_line_not_a_crash(tmp_path: Path) -> None:
    sock = tmp_path / "no-dockerd.sock"
    cfg = docker_cfg(tmp_path, f"unix://{sock}")
    ad = DockerAdapter(cfg)
    st = ad.state()
    assert not st.available and st.severity == "warning"
    assert st.warning == f"Docker unreachable at unix://{sock}: socket not found (is dockerd running?)"
    with pytest.raises(DockerUnavailable) as ei:
        ad.save_failure_logs(tmp_path)
    assert "\n" not in str(ei.value) and not ei.value.required

    notes: list[tuple[str, str]] = []
    hook = DockerRollbackHook(cfg, tmp_path, note=lambda lvl, msg, data: notes.append((lvl, msg)))
    result = await hook(rolled_back())
    assert result is not None and result.log_file is None
    why = f"Docker unreachable at unix://{sock}: socket not found (is dockerd running?)"
    assert notes == [("warning", f"canary logs not saved: {why}")]

    required = docker_cfg(tmp_path, f"unix://{sock}", required=True)
    assert DockerAdapter(required).state().severity == "error"


async def test_hook_does_nothing_when_docker_is_disabled(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    hook = DockerRollbackHook(cfg, tmp_path)
    assert hook(rolled_back()) is None
    assert await hook.on_rolled_back(rolled_back()) is None
    assert list(tmp_path.glob("canary_failure_*")) == []
