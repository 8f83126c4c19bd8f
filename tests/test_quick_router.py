"""The CLI's rollback without an event loop (issue 15, item 6): ``QuickRouter`` (the NginxRouter
whose waits block) driven by ``manual.run_inline``, against a real nginx (2 workers).

It must keep every safety property of the async router: the same messages, the old bytes back
when ``nginx -t`` refuses, the change counted only once nginx verifiably serves it; and
`canary-console rollback` must load no asyncio on the way."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from console.adapters.nginx import NginxRouter, RouterNotVerified
from console.adapters.nginx.quick import QuickRouter
from console.core.config import load_config
from console.core.manual import run_inline
from console.core.routing import RouterError
from console.wiring import build_quick_router
from tests.fixtures.nginx import (
    INITIAL_GENERATION,
    NginxEnv,
    fail_command,
    late_reload_command,
    touch_command,
    write_canary_toml,
)
from tests.fixtures.real import free_port

PY = sys.executable


def test_run_inline_refuses_a_coroutine_that_waits_on_a_loop() -> None:
    import asyncio

    cleaned = []

    async def waits() -> None:
        try:
            await asyncio.sleep(0)  # yields to a loop there is none of
        finally:
            cleaned.append(True)

    async def done_at_once() -> int:
        return 7

    assert run_inline(done_at_once()) == 7
    with pytest.raises(RuntimeError, match="waited on an event loop"):
        run_inline(waits())
    assert cleaned == [True]  # closed: its finally ran


@pytest.mark.real
def test_a_quick_change_is_served_by_every_worker_when_it_returns(nginx_env: NginxEnv) -> None:
    router = nginx_env.router(QuickRouter)
    took = run_inline(router.apply(100, "quick-100"))
    assert took > 0 and router.last_timings["probes"] >= 8
    assert nginx_env.served_generation() == "quick-100"
    split = nginx_env.send(100, fresh=True)
    assert (split.production, split.canary) == (0, 100), split

    run_inline(router.apply(0, "quick-0"))
    split = nginx_env.send(100, fresh=True)
    assert (split.production, split.canary) == (100, 0), split


@pytest.mark.real
def test_nginx_t_refusal_puts_the_old_bytes_back_with_the_async_routers_message(nginx_env: NginxEnv) -> None:
    run_inline(nginx_env.router(QuickRouter).apply(5, "before"))
    before = nginx_env.upstream_file.read_bytes()
    reloaded = nginx_env.dir / "reloaded"
    bad = {"test_command": fail_command("nginx: [emerg] unexpected end of file in upstream.conf:9"),
           "reload_command": touch_command(reloaded)}

    with pytest.raises(RouterError) as quick:
        run_inline(nginx_env.router(QuickRouter, **bad).apply(100, "after"))
    with pytest.raises(RouterError) as slow:
        import asyncio

        asyncio.run(nginx_env.router(NginxRouter, **bad).apply(100, "after"))

    assert str(quick.value) == str(slow.value) and quick.value.detail == slow.value.detail
    assert "unexpected end of file" in str(quick.value) and quick.value.restored_weight == 5
    assert nginx_env.upstream_file.read_bytes() == before
    assert not reloaded.exists(), "reload_command ran although the test failed"
    assert [p.name for p in nginx_env.upstream_file.parent.iterdir()] == ["upstream.conf"]
    assert nginx_env.served_generation() == "before"


@pytest.mark.real
def test_a_failed_reload_puts_the_old_file_back(nginx_env: NginxEnv) -> None:
    run_inline(nginx_env.router(QuickRouter).apply(1, "one"))
    before = nginx_env.upstream_file.read_bytes()
    router = nginx_env.router(QuickRouter, reload_command=fail_command('nginx: [error] invalid PID number ""'))
    with pytest.raises(RouterError) as err:
        run_inline(router.apply(0, "zero"))
    assert "invalid PID number" in err.value.detail and "put back as it was" in str(err.value)
    assert nginx_env.upstream_file.read_bytes() == before and router.current_weight() == 1


@pytest.mark.real
def test_it_waits_for_a_reload_that_takes_effect_late(nginx_env: NginxEnv) -> None:
    delay = 0.4
    late_reload = late_reload_command(nginx_env.nginx.pid_file, delay)
    router = nginx_env.router(QuickRouter, reload_command=late_reload)
    started = time.monotonic()
    run_inline(router.apply(100, "late"))
    assert router.last_timings["reload"] < delay / 2  # the command returned early ...
    assert time.monotonic() - started >= delay  # ... the change counted only once nginx served it
    assert nginx_env.served_generation() == "late"


@pytest.mark.real
def test_a_change_nginx_never_serves_is_not_verified_and_the_new_file_stays(nginx_env: NginxEnv) -> None:
    router = nginx_env.router(QuickRouter, reload_command=[PY, "-c", "pass"], verify_timeout=0.3)
    with pytest.raises(RouterNotVerified) as err:
        run_inline(router.apply(25, "never"))
    assert INITIAL_GENERATION in err.value.detail and "never" in str(err.value)
    assert err.value.answer.startswith("another body")
    assert err.value.restored_weight is None and router.current_weight() == 25
    assert nginx_env.served_generation() == INITIAL_GENERATION


def test_nothing_listening_is_a_refused_connection(tmp_path: Path) -> None:
    port = free_port()
    router = QuickRouter(tmp_path / "upstream.conf", "fragrance_app", "127.0.0.1:8000", "127.0.0.1:8001",
                         [PY, "-c", "pass"], [PY, "-c", "pass"], f"http://127.0.0.1:{port}/__canary/generation",
                         verify_timeout=0.2)
    with pytest.raises(RouterNotVerified) as err:
        run_inline(router.apply(0, "g"))
    assert "ConnectionRefusedError" in err.value.detail and err.value.answer == "connection refused"


def test_a_fleet_or_dynamic_mode_keeps_the_async_router(tmp_path: Path) -> None:
    base = f'[nginx]\nupstream_file = "{tmp_path / "upstream.conf"}"\n'
    (tmp_path / "one.toml").write_text(base)
    (tmp_path / "dyn.toml").write_text(base + 'mode = "dynamic"\ndynamic_listen = "127.0.0.1:8090"\n')
    assert isinstance(build_quick_router(load_config(tmp_path / "one.toml", environ={})), QuickRouter)
    assert build_quick_router(load_config(tmp_path / "dyn.toml", environ={})) is None


@pytest.mark.real
def test_cli_rollback_loads_no_asyncio_and_journals_intent_then_outcome(tmp_path: Path, nginx_env: NginxEnv) -> None:
    toml = write_canary_toml(tmp_path / "canary.toml", nginx_env)
    run_inline(nginx_env.router(QuickRouter).apply(25, "at-25"))
    code = ("import runpy, sys, os\n"
            "sys.argv = ['canary-console', '--config', sys.argv[1], 'rollback', '--reason', 'quick test']\n"
            "real_exit = os._exit\n"
            "def report(code):\n"
            "    sys.stderr.write('LOADED ' + ','.join(m for m in ('asyncio', 'textual', 'httpx') if m in sys.modules) + '\\n')\n"
            "    sys.stderr.flush()\n"
            "    real_exit(code)\n"
            "os._exit = report\n"
            "runpy.run_module('console.commands.cli', run_name='__main__')\n")
    r = subprocess.run([PY, "-c", code, str(toml)], capture_output=True, text=True, timeout=60)

    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("rolled back: canary 0% / production 100%, nginx serves it (verified in ")
    assert "LOADED \n" in r.stderr, r.stderr  # no asyncio (nor textual, httpx) on the way
    split = nginx_env.send(100, fresh=True)
    assert (split.production, split.canary) == (100, 0), split
    cfg = load_config(toml, environ={})
    events = [json.loads(line) for line in cfg.journal_path.read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[-3:] == ["operator_action", "router_intent", "router_applied"], kinds
    intent, applied = events[-2], events[-1]
    assert intent["weight"] == 0 and intent["previous_weight"] == 25 and intent["reason"] == "rollback: quick test"
    assert applied["generation"] == intent["generation"] == nginx_env.served_generation()


@pytest.mark.parametrize("argv", [
    ["rollback"], ["--config", "x.toml", "rollback", "--reason", "why"], ["--config=rollback", "weights", "5"],
    ["--conf", "weights", "rollback"], ["--env-file", "e", "weights", "0.5"], ["weights", "5.55"], ["weights"],
    ["rollback", "--bogus"], ["--bogus", "rollback"], ["weights", "101"], ["rollback", "--reason"],
])
def test_the_rollback_parser_alone_parses_and_refuses_as_the_whole_parser(argv: list[str], capsys) -> None:
    from console.commands.cli import build_parser, fast_command

    def parse(only: str | None) -> tuple[object, str]:
        try:
            return vars(build_parser(only).parse_args(argv)), ""
        except SystemExit as e:
            return e.code, capsys.readouterr().err

    assert fast_command(argv) in ("rollback", "weights")
    assert parse(fast_command(argv)) == parse(None)


@pytest.mark.parametrize("argv", [["--help", "rollback"], ["rollback", "-h"], ["status"], ["--config", "rollback"], []])
def test_help_and_other_commands_take_the_whole_parser(argv: list[str]) -> None:
    from console.commands.cli import fast_command

    assert fast_command(argv) is None


def test_a_rollback_on_a_long_journal_is_journaled_under_the_open_deployment(tmp_path: Path, nginx_env: NginxEnv) -> None:
    """A year of deployments in the journal: the first rollback folds it all and leaves a
    checkpoint; the next folds only what came after it, and both find the open deployment."""
    from console.core import checkpoint
    from tests.fixtures.journal import long_journal

    toml = write_canary_toml(tmp_path / "canary.toml", nginx_env)
    jp = load_config(toml, environ={}).journal_path
    long_journal(jp, 30, 12)
    for n, dep in enumerate(("d30", "d31")):
        long_journal(jp, 1, 3, start=30 + n, open_last=True)
        run_inline(nginx_env.router(QuickRouter).apply(5, f"at-5-{n}"))
        r = subprocess.run([PY, "-m", "console", "--config", str(toml), "rollback", "--reason", f"by hand {n}"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("rolled back: canary 0% / production 100%, nginx serves it"), r.stdout
        last = [json.loads(line) for line in jp.read_text().splitlines()][-1]
        assert (last["event"], last["deployment_id"], last["reason"]) == ("rolled_back", dep, f"by hand {n}")
        assert checkpoint.path_for(jp).exists()  # written by the first fold
    split = nginx_env.send(100, fresh=True)
    assert (split.production, split.canary) == (100, 0), split
