"""nginx in Docker, the guide's way (tests/fixtures/nginx_docker.py): the real CLI on the host
changes a containerised nginx through ``docker exec <name> nginx -t`` / ``nginx -s reload``, its
conf.d bind-mounted as a directory, and confirms each change through ``[nginx] verify_listen``
(host networking: the include's loopback server is the host's loopback).  nginx.conf has only
the include.  The backends count where every request went."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from console.adapters.nginx.render import GENERATION_PATH
from console.adapters.nginx.router import NginxRouter
from console.core.config import load_config
from console.core.journal import read_records
from tests.fixtures.nginx import NginxEnv, get_text
from tests.fixtures.nginx_docker import DockerNginx, write_docker_canary_toml

pytestmark = pytest.mark.real

CLI = str(Path(sys.executable).parent / "canary-console")


def run(cfg: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, "--config", str(cfg), *args], capture_output=True, text=True, timeout=timeout)


def journal(cfg: Path) -> list[dict]:
    return list(read_records(cfg.parent / ".canary" / "journal.jsonl"))


def the_guides_layout(env: NginxEnv, cfg: Path) -> DockerNginx:
    """What the config and the container say: the guide's commands, verify_listen, only the include."""
    nginx = env.nginx
    assert isinstance(nginx, DockerNginx)
    c = load_config(cfg, environ={})
    assert c["nginx"]["test_command"] == ["docker", "exec", nginx.name, "nginx", "-t"]
    assert c["nginx"]["reload_command"] == ["docker", "exec", nginx.name, "nginx", "-s", "reload"]
    assert nginx.name.startswith("fragrance-ai-nginx-")
    # verify_url left at its default: it points at verify_listen
    assert NginxRouter.from_config(c).verify_url == f"http://{nginx.verify_listen}{GENERATION_PATH}"
    conf = nginx.conf_path.read_text()
    assert "include /etc/nginx/conf.d/upstream.conf;" in conf and GENERATION_PATH not in conf
    mounts = {m["Destination"]: m for m in nginx.dockerd.client().containers.get(nginx.name).attrs["Mounts"]}
    assert mounts["/etc/nginx/conf.d"]["Source"] == str(nginx.conf_d) and mounts["/etc/nginx/conf.d"]["Type"] == "bind"
    return nginx


def served(nginx: DockerNginx) -> str:
    status, body = get_text(nginx.verify_url)
    assert status == 200, (status, body)
    return body


def test_headless_rollout_through_docker_exec(docker_nginx_env: NginxEnv, tmp_path: Path) -> None:
    env = docker_nginx_env
    cfg = write_docker_canary_toml(tmp_path / "canary.toml", env, metrics={"source": "none"},
                                   rollout={"observation_period": 1.0, "check_interval": 0.25})
    nginx = the_guides_layout(env, cfg)
    before = env.send(200, "/", True)
    assert (before.production, before.canary, before.other) == (200, 0, 0)

    r = run(cfg, "deploy", "--version", "v0.2.0", "--headless", "--json")  # the pre-deployment checks too

    assert r.returncode == 0, r.stdout + r.stderr
    events = [json.loads(line)["event"] for line in r.stdout.splitlines()]
    assert events.count("stage_passed") == 3 and events[-1] == "completed"
    recs = journal(cfg)
    assert [x["weight"] for x in recs if x["event"] == "stage_started"] == [1, 5, 25, 100]
    routed = [(x["event"], x["weight"]) for x in recs if x["event"] in ("router_intent", "router_applied")]
    # the engine's preflight first (the same 0% under a fresh generation), then every stage, each confirmed
    assert routed == [(e, w) for w in (0, 1, 5, 25, 100) for e in ("router_intent", "router_applied")]
    assert next(x for x in recs if x["event"] == "router_intent")["reason"].startswith("preflight")
    applied = [x for x in recs if x["event"] == "router_applied"]
    assert len({x["generation"] for x in applied}) == 5 and not any(x.get("late") for x in applied)
    # the last confirmed generation is the one the container serves, from the bind-mounted file
    router = NginxRouter.from_config(load_config(cfg, environ={}))
    assert served(nginx) == applied[-1]["generation"] == router.current_generation()

    after = env.send(200, "/", True)
    assert (after.production, after.canary, after.other) == (0, 200, 0)
    assert env.send(200).canary == 200  # and on one keep-alive connection


def test_weights_then_rollback_through_docker_exec(docker_nginx_env: NginxEnv, tmp_path: Path) -> None:
    env = docker_nginx_env
    cfg = write_docker_canary_toml(tmp_path / "canary.toml", env, metrics={"source": "none"})
    nginx = the_guides_layout(env, cfg)
    first = env.send(200, "/", True)  # 0% before anything: the shipped file, no verify server yet
    assert (first.production, first.canary, first.other) == (200, 0, 0)

    r = run(cfg, "weights", "25")  # the first change adds the verify server: nginx opens its port on this reload

    assert r.returncode == 0, r.stderr
    assert "canary 25% / production 75%: nginx serves it (verified in " in r.stdout
    split = env.send(400)
    assert (split.production, split.canary, split.other) == (300, 100, 0)

    r = run(cfg, "rollback", "--reason", "docker test")

    assert r.returncode == 0, r.stderr
    split = env.send(400, "/", True)
    assert (split.production, split.canary, split.other) == (400, 0, 0)
    assert env.send(200).canary == 0
    recs = journal(cfg)
    assert [x["weight"] for x in recs if x["event"] == "router_applied"] == [25, 0]
    router = NginxRouter.from_config(load_config(cfg, environ={}))
    assert router.current_weight() == 0 and served(nginx) == router.current_generation()
    status = json.loads(run(cfg, "status", "--json").stdout)
    assert status["canary_weight"] == 0
    # the guide's canary.log, read on the host through the /var/log/nginx mount: every request, the last at gen 0%
    lines = env.access_log_lines(1200)
    assert len(lines) == 1200 and f"gen={router.current_generation()}" in lines[-1], lines[-1:]
