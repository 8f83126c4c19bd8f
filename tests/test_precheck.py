"""`canary-console check`: the seed's pre-deployment checks against real components (nginx,
HTTP backends, Prometheus, dockerd), and the compose file's structural validation."""

from __future__ import annotations

import argparse
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from console.adapters.nginx import generation_of
from console.commands import check as precheck
from console.commands.check import FAIL, PASS, SKIP, WARN, CheckRow
from console.core.config import Config, load_config
from tests.fixtures.nginx import NginxEnv, write_canary_toml

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.canary.yml"


def cfg_for(tmp_path: Path, env: NginxEnv, **overrides: Any) -> Config:
    overrides.setdefault("paths", {"compose_file": str(COMPOSE)})
    return load_config(write_canary_toml(tmp_path / "canary.toml", env, **overrides), environ={})


def check(cfg: Config, version: str = "v0.2.0", strict: bool = False) -> tuple[int, dict[str, CheckRow], str]:
    out: list[str] = []
    code = precheck.run(argparse.Namespace(version=version, strict=strict), cfg, out=out.append)
    rows = {r.check: r for r in precheck.run_checks(cfg, version, strict)}
    return code, rows, "\n".join(out)


def results(rows: dict[str, CheckRow]) -> dict[str, str]:
    return {k: r.result for k, r in rows.items()}


def test_every_check_passes_against_healthy_real_components(tmp_path: Path, nginx_env: NginxEnv) -> None:
    code, rows, out = check(cfg_for(tmp_path, nginx_env))
    assert code == 0, out
    assert results(rows) == {
        "version format": PASS, "production health": PASS, "canary health": PASS, "canary version": PASS,
        "prometheus": SKIP, "metrics production": PASS, "metrics canary": PASS, "nginx test": PASS,
        "nginx confirms": PASS, "docker": SKIP, "canary container": SKIP, "compose file": PASS,
    }, out
    assert rows["canary version"].detail == "the canary reports 0.2.0"
    assert "routes canary 0% / production 100%" in rows["nginx test"].detail
    assert rows["nginx confirms"].detail.startswith("nginx served a fresh generation of upstream.conf")
    on_disk = generation_of(nginx_env.upstream_file.read_text())
    assert on_disk.startswith("preflight-") and nginx_env.served_generation() == on_disk  # the fresh one, really served
    lines = out.splitlines()
    assert lines[0].split() == ["check", "result", "detail"]
    assert any(ln.split()[:3] == ["canary", "version", "PASS"] for ln in lines)
    assert lines[-1] == "pre-deployment checks for v0.2.0: ok (9 pass, 0 warn, 0 fail, 3 skip)"


def test_check_through_the_cli(tmp_path: Path, nginx_env: NginxEnv) -> None:
    import sys

    cfg = cfg_for(tmp_path, nginx_env)
    cmd = [sys.executable, "-m", "console.commands.cli", "--config", str(cfg.path), "check", "--strict", "--version"]
    p = subprocess.run([*cmd, "v0.2.0"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.splitlines()[-1] == "pre-deployment checks for v0.2.0: ok (9 pass, 0 warn, 0 fail, 3 skip)"
    p = subprocess.run([*cmd, "v0.3.0"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert p.returncode == 1
    assert "canary version      FAIL    the canary reports 0.2.0, but v0.3.0 is being deployed" in p.stdout


def test_bad_version_and_a_canary_reporting_another_version_fail(tmp_path: Path, nginx_env: NginxEnv) -> None:
    cfg = cfg_for(tmp_path, nginx_env)
    code, rows, out = check(cfg, "v0.3.0")
    assert code == 1
    assert rows["canary version"].result == FAIL
    assert rows["canary version"].detail == "the canary reports 0.2.0, but v0.3.0 is being deployed"
    assert out.splitlines()[-1].startswith("pre-deployment checks for v0.3.0: FAILED")

    code, rows, _ = check(cfg, "0.2")
    assert code == 1 and rows["version format"].result == FAIL
    assert rows["version format"].detail == "'0.2' is not valid; allowed: vMAJOR.MINOR.PATCH, for example v0.2.0"


def test_an_unhealthy_canary_fails(tmp_path: Path, nginx_env: NginxEnv) -> None:
    nginx_env.backends.canary.healthy = False
    code, rows, _ = check(cfg_for(tmp_path, nginx_env))
    assert code == 1
    assert rows["canary health"].result == FAIL and "HTTP 503" in rows["canary health"].detail
    assert rows["production health"].result == PASS


def test_the_nginx_test_fails_with_nginx_own_words(tmp_path: Path, nginx_env: NginxEnv) -> None:
    cfg = cfg_for(tmp_path, nginx_env)
    nginx_env.upstream_file.write_text("upstream fragrance_app { server 127.0.0.1:1 weight=0; }\n")
    code, rows, _ = check(cfg)
    assert code == 1
    assert rows["nginx test"].result == FAIL
    assert "[emerg]" in rows["nginx test"].detail and "weight" in rows["nginx test"].detail


def test_check_fails_clearly_when_dockerd_is_stopped(tmp_path: Path, nginx_env: NginxEnv, short_lived_dockerd: Any) -> None:
    d = short_lived_dockerd
    d.import_busybox_image("fragrance-ai-app:v0.2.0")
    d.run_app(service="app-canary")
    cfg = cfg_for(tmp_path, nginx_env, docker={"enabled": True, "host": d.host})
    code, rows, out = check(cfg, strict=True)
    assert code == 0, out
    assert rows["docker"].result == PASS and rows["docker"].detail.startswith("dockerd 20.")
    assert rows["canary container"].result == PASS and "running, healthy" in rows["canary container"].detail

    d.stop()
    assert not d.running()
    code, rows, out = check(cfg)  # not required: a warning, not a crash
    assert code == 0
    assert rows["docker"].result == WARN
    assert rows["docker"].detail.startswith(f"Docker unreachable at {d.host}: ")
    assert rows["docker"].detail.endswith("(is dockerd running?)")
    assert rows["canary container"] == CheckRow("canary container", SKIP, "Docker unreachable")

    code, rows, out = check(cfg, strict=True)  # the seed always runs the checks with --strict
    assert code == 1
    assert rows["docker"].result == FAIL and rows["docker"].detail.endswith("(is dockerd running?) (--strict)")
    failing = [ln for ln in out.splitlines() if " FAIL " in ln]
    assert len(failing) == 1 and failing[0].startswith("docker ") and f"Docker unreachable at {d.host}" in failing[0]

    required = cfg_for(tmp_path, nginx_env, docker={"enabled": True, "host": d.host, "required": True})
    code, rows, _ = check(required)
    assert code == 1 and rows["docker"].result == FAIL


def test_a_canary_container_of_another_version_fails(tmp_path: Path, nginx_env: NginxEnv, docker_sandbox: Any) -> None:
    docker_sandbox.run_app(service="app-canary")  # runs fragrance-ai-app:v0.2.0
    nginx_env.backends.canary.version = "0.3.0"
    cfg = cfg_for(tmp_path, nginx_env, docker={"enabled": True, "host": docker_sandbox.host})
    code, rows, _ = check(cfg, "v0.3.0")
    assert code == 1
    assert rows["canary version"].result == PASS
    assert rows["canary container"] == CheckRow("canary container", FAIL,
                                               "runs fragrance-ai-app:v0.2.0, expected fragrance-ai-app:v0.3.0")


# --------------------------------------------------------------------------- Prometheus


def _get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.read()
    except OSError:
        return None


def test_prometheus_reachable_and_contract_metrics_for_both_versions(tmp_path: Path, nginx_env: NginxEnv,
                                                                      prometheus_factory: Any) -> None:
    b = nginx_env.backends
    prom = prometheus_factory([b.production.address, b.canary.address])
    url = prom.url
    cfg = cfg_for(tmp_path, nginx_env, metrics={"source": "prometheus"}, prometheus={"url": url})
    nginx_env.send(20)  # production serves traffic; the canary (0%) has none yet
    prom.wait_for('http_requests_total{version="production"}', bool, 20)

    _, rows, _ = check(cfg)
    assert rows["prometheus"] == CheckRow("prometheus", PASS, f"{url} answers queries")
    assert rows["metrics production"].result == PASS
    assert rows["metrics canary"].result == WARN  # in Prometheus a counter appears with the first request
    assert rows["metrics canary"].detail == (
        'Prometheus: no http_requests_total, http_request_duration_seconds_bucket{version="canary"} '
        "(no traffic served yet? warm the canary up first)"
    )
    code, rows, _ = check(cfg, strict=True)
    assert code == 1 and rows["metrics canary"].result == FAIL

    for _ in range(5):  # the seed's warm-up: requests straight to the canary
        _get(f"{b.canary.url}/api/generate?mode=fast")
    prom.wait_for('http_request_duration_seconds_bucket{version="canary"}', bool, 10)
    code, rows, out = check(cfg, strict=True)
    assert code == 0, out
    assert rows["metrics canary"].result == PASS

    prom.stop()
    code, rows, _ = check(cfg)
    assert code == 1
    assert rows["prometheus"].result == FAIL and rows["prometheus"].detail == f"{url}: unreachable (ConnectError)"
    assert rows["metrics canary"] == CheckRow("metrics canary", SKIP, "Prometheus unreachable")


def test_a_scrape_endpoint_without_the_contract_metrics_fails(tmp_path: Path, nginx_env: NginxEnv) -> None:
    b = nginx_env.backends
    cfg = cfg_for(tmp_path, nginx_env, scrape={"canary": f"{b.canary.url}/health"})  # JSON, not an exposition
    code, rows, _ = check(cfg)
    assert code == 1
    assert rows["metrics canary"].result == FAIL
    assert rows["metrics canary"].detail.startswith(f"{b.canary.url}/health: no http_requests_total")
    assert rows["metrics production"].result == PASS


# --------------------------------------------------------------------------- compose file


def compose_cfg(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Config:
    (tmp_path / "docker-compose.canary.yml").write_text(text)
    toml = tmp_path / "canary.toml"
    toml.write_text("")
    return load_config(toml, environ=environ or {}, check_upstream_dir=False)


def compose_row(tmp_path: Path, text: str, version: str = "v0.2.0", environ: dict[str, str] | None = None) -> CheckRow:
    cfg = compose_cfg(tmp_path, text, environ)
    return precheck.validate_compose(tmp_path / "docker-compose.canary.yml", version, cfg)


def test_the_shipped_compose_file_is_valid(tmp_path: Path) -> None:
    row = compose_row(tmp_path, COMPOSE.read_text(), "v1.4.2", environ={"LLM_WORKER_CANARY_REPLICAS": "2"})
    assert row == CheckRow("compose file", PASS, "docker-compose.canary.yml: 3 services; app-canary "
                           "fragrance-ai-app:v1.4.2 port 8001:8000; worker-llm-canary x2, worker-rl-canary x0")


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda t: t.replace("services:\n", "services: [\n", 1), "docker-compose.canary.yml: not valid YAML at line"),
        (lambda t: t.replace("  app-canary:", "  app-canary-v2:"), "services.app-canary: missing (the canary service)"),
        (lambda t: t.replace("fragrance-ai-app:${CANARY_VERSION:?", "other-app:${CANARY_VERSION:?", 1),
         "services.app-canary.image resolves to other-app:v0.2.0, expected fragrance-ai-app:v0.2.0"),
        (lambda t: t.replace("${RL_WORKER_CANARY_REPLICAS:-0}", "${RL_WORKER_CANARY_REPLICAS:-none}"),
         "services.worker-rl-canary.deploy.replicas = 'none' is not valid; allowed: an integer >= 0"),
        (lambda t: t.replace('"${CANARY_API_PORT:-8001}:8000"', '"${CANARY_API_PORT:-eighty}:8000"'),
         "services.app-canary.ports: 'eighty:8000' is not a port mapping"),
        (lambda t: t.replace("${CANARY_API_PORT:-8001}", "${CANARY_API_PORT:-8001"), "unterminated ${"),
    ],
    ids=["yaml", "no-app-canary", "image", "replicas", "port", "interpolation"],
)
def test_a_broken_compose_file_fails_with_where(tmp_path: Path, edit: Any, expected: str) -> None:
    row = compose_row(tmp_path, edit(COMPOSE.read_text()))
    assert row.result == FAIL
    assert expected in row.detail, row.detail


def test_compose_warnings(tmp_path: Path) -> None:
    text = COMPOSE.read_text().replace('      - "version=canary"\n      - "deployment=canary"\n', '      - "deployment=canary"\n')
    text = text.replace("      LLM_ENSEMBLE_VOTING: ${LLM_ENSEMBLE_VOTING:-weighted}\n", "", 1)
    text = text.replace("APP_VERSION: ${CANARY_VERSION}", "APP_VERSION: ${APP_BUILD}", 1)
    row = compose_row(tmp_path, text)
    assert row.result == WARN
    assert row.detail == ("docker-compose.canary.yml: services.app-canary.labels: no version=canary; "
                          "services.app-canary.environment: no LLM_ENSEMBLE_VOTING; "
                          "unset variables without a default: APP_BUILD")
    missing = precheck.validate_compose(tmp_path / "nope.yml", "v0.2.0", compose_cfg(tmp_path, ""))
    assert missing.result == WARN and "not found" in missing.detail


def test_a_different_canary_version_in_the_environment_warns(tmp_path: Path) -> None:
    cfg = compose_cfg(tmp_path, COMPOSE.read_text(), environ={"CANARY_VERSION": "v0.1.9"})
    rows = precheck.check_compose(cfg, "v0.2.0")
    assert rows[1] == CheckRow("CANARY_VERSION", WARN, "is v0.1.9 in the environment or .env, but v0.2.0 is checked")


def test_a_missing_upstream_file_fails_check_but_only_warns_before_a_first_deploy(tmp_path: Path, nginx_env: NginxEnv) -> None:
    cfg = cfg_for(tmp_path, nginx_env)
    nginx_env.upstream_file.unlink()
    rows = {r.check: r for r in precheck.run_checks(cfg, "v0.2.0")}
    assert rows["nginx test"].result == FAIL
    assert rows["nginx test"].detail == f"{nginx_env.upstream_file} does not exist; run `canary-console weights 0` to write it"
    rows = {r.check: r for r in precheck.run_checks(cfg, "v0.2.0", for_deploy=True)}
    assert rows["nginx test"].result == WARN
    assert rows["nginx test"].detail == f"{nginx_env.upstream_file} does not exist yet; the first stage writes it"
