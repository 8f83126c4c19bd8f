"""NginxRouter against a real nginx (2 workers) in front of real backends on loopback."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

from console.adapters.nginx import NginxRouter, PreflightFailed, RouterNotVerified, render_upstream, weight_of
from console.adapters.nginx.render import GENERATION_LOCATION, listen_url
from console.core.config import ConfigError, load_config
from console.core.routing import RouterError
from console.sandbox.nginx_local import LocalNginx
from tests.fixtures.backends import Backends
from tests.fixtures.nginx import (
    INITIAL_GENERATION,
    UPSTREAM_NAME,
    NginxEnv,
    fail_command,
    get_text,
    late_reload_command,
    start_nginx_env,
    start_plain_nginx_env,
    touch_command,
    write_canary_toml,
)
from tests.fixtures.real import children, free_port, need, need_binary, port_listening

pytestmark = pytest.mark.real

PY = sys.executable


@pytest.mark.parametrize("weight", [1, 5, 25])
async def test_split_over_2000_requests_is_within_1_5_points(nginx_env: NginxEnv, weight: int) -> None:
    router = nginx_env.router()
    await router.apply(weight, f"split-{weight}")

    split = await asyncio.to_thread(nginx_env.send, 2000)

    assert split.other == 0, split
    assert abs(split.canary_pct - weight) <= 1.5, split


@pytest.mark.parametrize("workers", [1, 2])
async def test_ends_are_exact_right_after_apply_returns(tmp_path: Path, backends: Backends, workers: int) -> None:
    """No waiting after apply(): old workers may still be alive, but must no longer take requests.

    With one worker the kernel alternates new connections between the old and the new
    worker during a reload, so a router that trusted the first new answer fails here."""
    env = start_nginx_env(tmp_path, backends, worker_processes=workers)
    try:
        await _flip_ends(env)
    finally:
        env.nginx.stop()


async def _flip_ends(nginx_env: NginxEnv) -> None:
    router = nginx_env.router()
    for i, weight in enumerate([25, 100, 0, 100, 0, 100]):
        await router.apply(weight, f"ends-{i}")
        split = await asyncio.to_thread(nginx_env.send, 100, "/", True)
        assert split.other == 0, split
        if weight == 0:
            assert split.canary == 0, f"0% sent {split.canary} requests to the canary right after apply()"
        elif weight == 100:
            assert split.production == 0, f"100% sent {split.production} requests to production right after apply()"
        assert nginx_env.served_generation() == f"ends-{i}"


async def test_invalid_canary_address_keeps_old_file_and_traffic(nginx_env: NginxEnv) -> None:
    await nginx_env.router().apply(25, "good")
    before = nginx_env.upstream_file.read_bytes()
    broken = nginx_env.router(canary="127.0.0.1:99999")

    with pytest.raises(RouterError) as err:
        await broken.apply(50, "bad")

    assert "invalid port" in err.value.detail  # nginx's own words
    assert "99999" in err.value.detail
    assert err.value.restored_weight == 25
    assert nginx_env.upstream_file.read_bytes() == before
    assert nginx_env.served_generation() == "good"
    split = await asyncio.to_thread(nginx_env.send, 400)
    assert split.canary == 100 and split.production == 300, split


async def test_failed_test_command_restores_file_exactly_and_does_not_reload(nginx_env: NginxEnv) -> None:
    await nginx_env.router().apply(5, "before")
    os.chmod(nginx_env.upstream_file, 0o640)
    before = nginx_env.upstream_file.read_bytes()
    reloaded = nginx_env.dir / "reloaded"
    router = nginx_env.router(
        test_command=fail_command("nginx: [emerg] unexpected end of file in upstream.conf:9"),
        reload_command=touch_command(reloaded),
    )

    with pytest.raises(RouterError) as err:
        await router.apply(100, "after")

    assert "unexpected end of file in upstream.conf:9" in err.value.detail
    assert "unexpected end of file" in str(err.value)
    assert nginx_env.upstream_file.read_bytes() == before
    assert nginx_env.upstream_file.stat().st_mode & 0o777 == 0o640
    assert not reloaded.exists(), "reload_command ran although the test failed"
    assert [p.name for p in nginx_env.upstream_file.parent.iterdir()] == ["upstream.conf"]  # no temp file left
    assert nginx_env.served_generation() == "before"
    assert router.current_weight() == 5


async def test_failed_test_without_previous_file_removes_the_new_one(tmp_path: Path) -> None:
    upstream = tmp_path / "conf.d" / "upstream.conf"
    upstream.parent.mkdir()
    reloaded = tmp_path / "reloaded"
    router = NginxRouter(
        upstream, "fragrance_app", "127.0.0.1:8000", "127.0.0.1:8001",
        fail_command("nginx: [emerg] no such upstream"), touch_command(reloaded), "",
    )

    with pytest.raises(RouterError) as err:
        await router.apply(25, "g1")

    assert "no such upstream" in err.value.detail
    assert err.value.restored_weight is None
    assert list(upstream.parent.iterdir()) == []
    assert not reloaded.exists()
    assert router.current_weight() is None


async def test_failed_reload_puts_the_old_file_back(nginx_env: NginxEnv) -> None:
    await nginx_env.router().apply(1, "one")
    before = nginx_env.upstream_file.read_bytes()
    router = nginx_env.router(reload_command=fail_command('nginx: [error] invalid PID number "" in "/run/nginx.pid"'))

    with pytest.raises(RouterError) as err:
        await router.apply(0, "zero")

    assert "invalid PID number" in err.value.detail
    assert nginx_env.upstream_file.read_bytes() == before
    assert router.current_weight() == 1


async def test_apply_waits_until_nginx_serves_the_new_generation(nginx_env: NginxEnv) -> None:
    """A reload that only takes effect later: apply() must not return before nginx serves it."""
    delay = 0.4
    late_reload = late_reload_command(nginx_env.nginx.pid_file, delay)
    router = nginx_env.router(reload_command=late_reload)

    started = time.monotonic()
    await router.apply(100, "late")
    took = time.monotonic() - started

    assert router.last_timings["reload"] < delay / 2  # the reload command returned early ...
    assert took >= delay  # ... but apply() waited for nginx
    assert nginx_env.served_generation() == "late"
    split = await asyncio.to_thread(nginx_env.send, 100)
    assert split.production == 0 and split.canary == 100, split


async def test_verification_times_out_when_nginx_never_serves_it(nginx_env: NginxEnv) -> None:
    router = nginx_env.router(reload_command=[PY, "-c", "pass"], verify_timeout=0.3)

    with pytest.raises(RouterNotVerified) as err:
        await router.apply(25, "never")

    assert INITIAL_GENERATION in err.value.detail  # what nginx kept answering
    assert "never" in str(err.value)
    assert err.value.restored_weight is None and router.current_weight() == 25  # the new file stays
    assert nginx_env.served_generation() == INITIAL_GENERATION


async def test_verification_fails_when_nothing_listens(tmp_path: Path) -> None:
    upstream = tmp_path / "upstream.conf"
    port = free_port()
    router = NginxRouter(
        upstream, "fragrance_app", "127.0.0.1:8000", "127.0.0.1:8001", [PY, "-c", "pass"], [PY, "-c", "pass"],
        f"http://127.0.0.1:{port}/__canary/generation", verify_timeout=0.2,
    )
    with pytest.raises(RouterError) as err:
        await router.apply(0, "g")
    assert "ConnectionRefusedError" in err.value.detail


async def test_current_weight_reads_the_file(nginx_env: NginxEnv) -> None:
    router = nginx_env.router()
    assert router.current_weight() == 0  # the fixture's initial file
    for weight in (1, 5, 25, 100, 0):
        await router.apply(weight, f"w{weight}")
        assert router.current_weight() == weight
        assert router.current_generation() == f"w{weight}"


def test_current_weight_of_missing_foreign_and_hand_written_files(tmp_path: Path) -> None:
    f = tmp_path / "upstream.conf"
    router = NginxRouter(f, "fragrance_app", "app:8000", "app-canary:8001", ["nginx", "-t"], ["nginx", "-s", "reload"], "")
    assert router.current_weight() is None
    # the seed's hand-written style: both servers, plain weights, comments
    f.write_text("upstream fragrance_app {\n  server app:8000 weight=95;  # prod\n  server app-canary:8001 weight=5;\n}\n")
    assert router.current_weight() == 5
    f.write_text("upstream fragrance_app {\n  server app:8000;\n  server app-canary:8001 down;\n}\n")
    assert router.current_weight() == 0
    f.write_text("upstream other {\n  server app:8000;\n}\n")
    assert router.current_weight() is None
    f.write_text("upstream fragrance_app {\n  server 10.0.0.9:8000;\n}\n")
    assert router.current_weight() is None
    f.write_text("not nginx at all {{{")
    assert router.current_weight() is None
    assert weight_of(render_upstream("u", "a:1", "b:2", 37, "g"), "u", "a:1", "b:2") == 37


@pytest.mark.parametrize("weight", [-1, 101, 5.0, True, "25", None])
async def test_weight_must_be_an_int_0_to_100(tmp_path: Path, weight: object) -> None:
    f = tmp_path / "upstream.conf"
    router = NginxRouter(f, "fragrance_app", "a:1", "b:2", fail_command("must not run"), fail_command("must not run"), "")
    with pytest.raises(ValueError, match="0..100"):
        await router.apply(weight, "g")  # type: ignore[arg-type]
    assert not f.exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"canary": "b:2; include /etc/passwd"}, r"\[nginx\] canary"),
        ({"production": ""}, r"\[nginx\] production"),
        ({"upstream_name": "a b"}, r"\[nginx\] upstream_name"),
        ({"verify_url": "https://x/__canary/generation"}, r"\[nginx\] verify_url"),
        ({"test_command": []}, r"\[nginx\] test_command"),
    ],
)
def test_bad_settings_get_one_clear_line(tmp_path: Path, kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {
        "upstream_file": tmp_path / "u.conf", "upstream_name": "fragrance_app", "production": "a:1", "canary": "b:2",
        "test_command": ["nginx", "-t"], "reload_command": ["nginx", "-s", "reload"], "verify_url": "",
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        NginxRouter(**args)  # type: ignore[arg-type]


async def test_generation_is_validated(tmp_path: Path) -> None:
    router = NginxRouter(tmp_path / "u.conf", "u", "a:1", "b:2", ["true"], ["true"], "")
    with pytest.raises(ValueError, match="generation"):
        await router.apply(5, 'x";\n}')


async def test_from_config_drives_the_real_nginx(nginx_env: NginxEnv, tmp_path: Path) -> None:
    toml = write_canary_toml(tmp_path / "cfg" / "canary.toml", nginx_env, rollout={"stages": [5, 100]})
    cfg = load_config(toml, environ={})
    router = NginxRouter.from_config(cfg)

    seconds = await router.apply(100, "from-config")

    assert seconds > 0
    assert cfg.stages == [5, 100]
    assert router.upstream_file == nginx_env.upstream_file
    assert nginx_env.served_generation() == "from-config"
    split = await asyncio.to_thread(nginx_env.send, 50)
    assert split.canary == 50, split


def test_access_log_records_upstream_status_and_time(nginx_env: NginxEnv) -> None:
    nginx_env.send(3)
    lines = nginx_env.access_log_lines(3)
    assert len(lines) == 3
    assert all(f"upstream={nginx_env.production}" in ln for ln in lines), lines
    assert all('"GET / HTTP/1.1" 200 ' in ln and " rt=" in ln and f"gen={INITIAL_GENERATION}" in ln for ln in lines), lines


def test_generation_location_is_loopback_only(nginx_env: NginxEnv) -> None:
    conf = nginx_env.nginx.conf_path.read_text()
    block = conf[conf.index("location = /__canary/generation"):]
    block = block[: block.index("}")]
    assert "allow 127.0.0.1;" in block and "deny all;" in block


def test_stop_leaves_no_nginx_process(tmp_path: Path, backends: Backends) -> None:
    env = start_nginx_env(tmp_path, backends)
    master = env.nginx.pid
    assert master is not None
    workers = children(master)
    assert len(workers) == 2, workers
    port = env.nginx.listen_port

    env.nginx.stop()

    for pid in [master, *workers]:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie_of_init(pid), f"nginx process {pid} outlived stop()"
    assert not port_listening(port)
    env.nginx.stop()  # idempotent


def test_stop_kills_a_master_that_ignores_quit(tmp_path: Path, backends: Backends) -> None:
    """A wedged master (SIGSTOP: QUIT is never handled) is killed with its workers and reaped."""
    import signal

    env = start_nginx_env(tmp_path, backends)
    master = env.nginx.pid
    assert master is not None
    workers = children(master)
    os.kill(master, signal.SIGSTOP)

    env.nginx.stop(timeout=0.3)

    for pid in [master, *workers]:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie_of_init(pid), f"nginx process {pid} outlived stop()"


def test_start_reports_nginx_error(tmp_path: Path) -> None:
    need_binary("nginx")
    bad = tmp_path / "upstream.conf"
    bad.write_text("upstream fragrance_app { server 127.0.0.1:99999; }\n")
    nginx = LocalNginx(tmp_path / "prefix", free_port(), bad)
    with pytest.raises(RuntimeError, match="invalid port"):
        nginx.start()
    assert nginx.pid is None


def test_a_port_another_server_answers_on_is_a_start_error_not_a_start(tmp_path: Path, backends: Backends) -> None:
    """The port was free when picked, then taken: this nginx cannot bind it.  The other server's
    answers must not pass for nginx's (its pid file never names it): start says why instead."""
    need_binary("nginx")
    taken = int(backends.production.address.rpartition(":")[2])  # an HTTP server answers there
    up = tmp_path / "upstream.conf"
    up.write_text(render_upstream(UPSTREAM_NAME, backends.production.address, backends.canary.address, 0, "g"))
    nginx = LocalNginx(tmp_path / "prefix", taken, up, upstream_name=UPSTREAM_NAME)
    try:
        with pytest.raises(RuntimeError, match="Address already in use"):
            nginx.start()
        assert nginx.pid is None
    finally:
        nginx.stop()  # had start() returned, its nginx would bind the port once the backend lets go


def _is_zombie_of_init(pid: int) -> bool:
    """A killed worker re-parented to init is gone for every purpose but init's bookkeeping."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return True
    return fields[0] == "Z"


_NON_ROOT_CHILD = r"""
import json, os, subprocess, sys, time, urllib.request
sys.path.insert(0, sys.argv[1])
from console.sandbox.nginx_local import LocalNginx
base, port = sys.argv[2], int(sys.argv[3])
up = os.path.join(base, "upstream.conf")
def write(gen):
    with open(up, "w") as f:
        f.write('upstream fragrance_app { server 127.0.0.1:9; }\nmap $host $canary_generation { default "%s"; }\n' % gen)
write("one")
n = LocalNginx(os.path.join(base, "prefix"), port, up)
n.start()
try:
    first = urllib.request.urlopen(n.verify_url, timeout=5).read().decode().strip()
    write("two")
    test = subprocess.run(n.test_command, capture_output=True, text=True)
    reload = subprocess.run(n.reload_command, capture_output=True, text=True)
    deadline, second = time.monotonic() + 5, ""
    while second != "two" and time.monotonic() < deadline:
        second = urllib.request.urlopen(n.verify_url, timeout=5).read().decode().strip()
    print(json.dumps({"second": second, "euid": os.geteuid(), "master": n.pid, "first": first, "test_rc": test.returncode,
                      "test_out": test.stdout + test.stderr, "reload_rc": reload.returncode}))
finally:
    n.stop()
"""


def test_local_nginx_runs_as_non_root(tmp_path: Path) -> None:
    """As root, run the sandbox as `nobody` (stdlib only: nginx_local.py copied next to it, as a package)."""
    import json
    import pwd
    import shutil
    import subprocess
    import tempfile

    need_binary("nginx")
    user = None
    base = Path(tempfile.mkdtemp(prefix="canary-nonroot-"))
    try:
        if os.geteuid() == 0:
            user = "nobody"
            pw = pwd.getpwnam(user)
            os.chown(base, pw.pw_uid, pw.pw_gid)
        pkg = base / "console"  # stdlib only: console.sandbox.nginx_local and the helpers it imports
        sandbox = pkg / "sandbox"
        sandbox.mkdir(parents=True)
        src = Path(__file__).resolve().parent.parent / "console" / "sandbox"
        for target, text in (
            (pkg / "__init__.py", ""),
            (sandbox / "__init__.py", ""),
            (sandbox / "nginx_local.py", (src / "nginx_local.py").read_text()),
            (sandbox / "procs.py", (src / "procs.py").read_text()),  # procs: stdlib + ctypes only
        ):
            target.write_text(text)
            target.chmod(0o644)
        for d in (pkg, sandbox):
            d.chmod(0o755)
            if user:
                pw = pwd.getpwnam(user)
                os.chown(d, pw.pw_uid, pw.pw_gid)
        python = _python_for(user)
        r = subprocess.run(
            [python, "-c", _NON_ROOT_CHILD, str(base), str(base), str(free_port())],
            capture_output=True, text=True, timeout=60, user=user, cwd=str(base),
        )
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["euid"] != 0
        assert out["first"] == "one" and out["second"] == "two"
        assert out["test_rc"] == 0 and out["reload_rc"] == 0, out["test_out"]
        assert "Permission denied" not in out["test_out"]
        assert not Path(f"/proc/{out['master']}").exists() or _is_zombie_of_init(out["master"])
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _python_for(user: str | None) -> str:
    """A Python that ``user`` may execute (the venv's may live under /root); stdlib is enough."""
    import subprocess

    for candidate in (os.path.realpath(sys.executable), "/usr/bin/python3"):
        try:
            if subprocess.run([candidate, "-c", "pass"], user=user, capture_output=True, timeout=30).returncode == 0:
                return candidate
        except OSError:
            continue
    need("a Python runnable as a non-root user", False, "neither the venv's Python nor /usr/bin/python3 is executable")
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- the package's names


def test_router_module_still_offers_the_names_callers_import() -> None:
    """bench/rollback.py, commands/check.py and others import these from the router module."""
    import console.adapters.nginx as pkg
    import console.adapters.nginx.router as router_module

    for name in ("NginxRouter", "RouterNotVerified", "PreflightFailed", "render_upstream", "weight_of", "generation_of",
                 "write_atomic", "run_command", "verify_generation"):
        assert getattr(router_module, name) is getattr(pkg, name), name
    assert issubclass(PreflightFailed, RouterError) and issubclass(RouterNotVerified, RouterError)


# --------------------------------------------------------------------------- [nginx] verify_listen


def _toml(tmp_path: Path, **nginx: str) -> Path:
    lines = ["[nginx]", f'upstream_file = "{tmp_path / "u.conf"}"', *(f'{k} = "{v}"' for k, v in nginx.items())]
    path = tmp_path / "canary.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("127.0.0.1", "not host:port"),
        ("0.0.0.0:8089", "0.0.0.0 is not a loopback address"),
        ("10.1.2.3:8089", "10.1.2.3 is not a loopback address"),
        ("[::]:8089", ":: is not a loopback address"),
        ("example.com:8089", "'example.com' is not an IP address or localhost"),
        ("127.0.0.1:0", "port '0' is not 1..65535"),
        ("127.0.0.1:65536", "port '65536' is not 1..65535"),
        ("127.0.0.1:http", "port 'http' is not 1..65535"),
        ("::1:8089", "an IPv6 host goes in brackets"),
        ("127.0.0.1:80; include /etc/passwd", "not host:port"),
    ],
)
def test_verify_listen_must_be_loopback_host_port(tmp_path: Path, value: str, why: str) -> None:
    toml = _toml(tmp_path, verify_listen=value)

    with pytest.raises(ConfigError) as err:
        load_config(toml, environ={})

    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{toml}: [nginx] verify_listen = {value!r} is not valid ({why}")
    assert "allowed: host:port with a loopback host only" in msg and "1..65535" in msg
    with pytest.raises(ValueError, match=r"\[nginx\] verify_listen"):  # the router refuses it as well
        NginxRouter(tmp_path / "u.conf", "u", "a:1", "b:2", ["true"], ["true"], "", verify_listen=value)


@pytest.mark.parametrize(
    ("value", "listen"),
    [("127.0.0.1:8089", "127.0.0.1:8089"), ("localhost:8089", "127.0.0.1:8089"), ("[::1]:8089", "[::1]:8089"),
     ("127.0.0.2:1", "127.0.0.2:1")],
)
def test_verify_listen_points_the_default_verify_url_at_the_include(tmp_path: Path, value: str, listen: str) -> None:
    router = NginxRouter.from_config(load_config(_toml(tmp_path, verify_listen=value), environ={}))

    assert router.verify_listen == listen
    assert router.verify_url == f"http://{listen}/__canary/generation"
    assert f"    listen {listen};" in router.render(5, "g").splitlines()


def test_an_explicit_verify_url_wins_over_verify_listen(tmp_path: Path) -> None:
    cfg = load_config(_toml(tmp_path, verify_listen="127.0.0.1:8089", verify_url="http://127.0.0.1:81/gen"), environ={})
    assert NginxRouter.from_config(cfg).verify_url == "http://127.0.0.1:81/gen"
    cfg = load_config(_toml(tmp_path, verify_listen="127.0.0.1:8089", verify_url=""), environ={})
    assert NginxRouter.from_config(cfg).verify_url == ""  # explicitly off stays off
    cfg = load_config(_toml(tmp_path), environ={})
    assert NginxRouter.from_config(cfg).verify_url == "http://127.0.0.1/__canary/generation"  # off: as before
    assert "server {" not in NginxRouter.from_config(cfg).render(5, "g")


async def test_verify_listen_confirms_changes_with_only_the_include(tmp_path: Path, backends: Backends) -> None:
    """nginx.conf has no generation location, only the include: the include's own loopback
    server confirms every change, and the backends count the split."""
    env = start_plain_nginx_env(tmp_path, backends)
    listen_port = free_port()
    try:
        assert "/__canary/generation" not in env.nginx.conf_path.read_text()
        toml = write_canary_toml(tmp_path / "cfg" / "canary.toml", env,
                                 nginx={"verify_url": None, "verify_listen": f"127.0.0.1:{listen_port}"})
        router = NginxRouter.from_config(load_config(toml, environ={}))
        assert router.verify_url == f"http://127.0.0.1:{listen_port}/__canary/generation"

        await router.apply(25, "listen-25")  # the first file with the server: nginx opens the port on reload

        assert get_text(router.verify_url) == (200, "listen-25")
        split = await asyncio.to_thread(env.send, 400)
        assert (split.production, split.canary, split.other) == (300, 100, 0)
        assert "first_new" in router.last_timings  # confirmed by the probe, not by the reload returning

        await router.apply(0, "listen-0")  # old and new workers share the port now: still exact
        split = await asyncio.to_thread(env.send, 100, "/", True)
        assert (split.production, split.canary, split.other) == (100, 0, 0)
        assert get_text(router.verify_url) == (200, "listen-0")
        assert get_text(f"http://127.0.0.1:{listen_port}/")[0] == 404  # nothing else answers there
    finally:
        env.nginx.stop()
    assert not port_listening(listen_port) and not port_listening(env.nginx.listen_port)


# --------------------------------------------------------------------------- preflight


async def test_preflight_passes_when_nginx_conf_has_the_location(nginx_env: NginxEnv) -> None:
    router = nginx_env.router()
    await router.apply(25, "before-preflight")

    seconds = await router.preflight()

    assert seconds > 0 and "first_new" in router.last_timings
    generation = router.current_generation()
    assert generation and generation.startswith("preflight-") and generation != "before-preflight"
    assert nginx_env.served_generation() == generation
    assert router.current_weight() == 25  # the same weights under a fresh generation
    split = await asyncio.to_thread(nginx_env.send, 400)
    assert (split.production, split.canary, split.other) == (300, 100, 0)


@pytest.mark.parametrize("backend_status", [None, 404])
async def test_preflight_fails_without_the_location_and_leaves_the_file_as_it_was(
    tmp_path: Path, backends: Backends, backend_status: int | None
) -> None:
    """nginx.conf proxies /__canary/generation to the app like any path: the app's own answer
    (a JSON body, or its 404) comes back, never the generation."""
    env = start_plain_nginx_env(tmp_path, backends)
    try:
        router = env.router(verify_timeout=0.5)  # verify_url: the main port's /__canary/generation
        before = env.upstream_file.read_bytes()
        backends.production.error_status = backend_status

        with pytest.raises(PreflightFailed) as err:
            await router.preflight()

        backends.production.error_status = None
        msg = str(err.value)
        assert "\n" not in msg
        assert router.verify_url in msg
        got = "HTTP 404" if backend_status else "another body: '{\"deployment\": \"production\""
        assert f"(got {got}" in msg and err.value.answer.startswith(got)
        assert f"add `{GENERATION_LOCATION}`" in msg
        assert 'or set [nginx] verify_listen = "127.0.0.1:8089"' in msg
        assert "put back as it was and nginx reloaded" in msg
        assert err.value.restored_weight == 0
        assert env.upstream_file.read_bytes() == before
        assert [p.name for p in env.upstream_file.parent.iterdir()] == ["upstream.conf"]
        split = await asyncio.to_thread(env.send, 300, "/", True)
        assert (split.production, split.canary, split.other) == (300, 0, 0)
    finally:
        env.nginx.stop()


async def test_preflight_through_verify_listen_passes_with_only_the_include(tmp_path: Path, backends: Backends) -> None:
    env = start_plain_nginx_env(tmp_path, backends)
    listen = f"127.0.0.1:{free_port()}"
    try:
        router = env.router(verify_listen=listen, verify_url=listen_url(listen))

        await router.preflight()

        assert get_text(router.verify_url) == (200, router.current_generation())
        assert router.current_weight() == 0
        split = await asyncio.to_thread(env.send, 300, "/", True)
        assert (split.production, split.canary, split.other) == (300, 0, 0)
    finally:
        env.nginx.stop()
    assert not port_listening(int(listen.rsplit(":", 1)[1]))


async def test_preflight_failure_puts_the_file_back_and_reloads_it(tmp_path: Path) -> None:
    """Nothing listens at verify_url: the rewrite was reloaded, so the original is put back
    (same bytes, same mode) and reloaded again."""
    upstream = tmp_path / "upstream.conf"
    upstream.write_text(render_upstream("fragrance_app", "127.0.0.1:8000", "127.0.0.1:8001", 5, "original"))
    os.chmod(upstream, 0o640)
    before = upstream.read_bytes()
    reloads = tmp_path / "reloads"
    url = f"http://127.0.0.1:{free_port()}/__canary/generation"
    router = NginxRouter(upstream, "fragrance_app", "127.0.0.1:8000", "127.0.0.1:8001", [PY, "-c", "pass"],
                         [PY, "-c", f"open({str(reloads)!r}, 'a').write('reload\\n')"], url, verify_timeout=0.2)

    with pytest.raises(PreflightFailed) as err:
        await router.preflight()

    assert f"preflight: {url} did not answer the new generation within 0.2s (got connection refused)" in str(err.value)
    assert "ConnectionRefusedError" in err.value.detail
    assert reloads.read_text() == "reload\nreload\n"  # the rewrite, then the original
    assert upstream.read_bytes() == before and upstream.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reloads", "upstream.conf"]


async def test_preflight_rejected_by_nginx_t_restores_without_reload(nginx_env: NginxEnv) -> None:
    before = nginx_env.upstream_file.read_bytes()
    reloaded = nginx_env.dir / "reloaded"
    router = nginx_env.router(test_command=fail_command("nginx: [emerg] unknown directive \"zone\""),
                              reload_command=touch_command(reloaded))

    with pytest.raises(PreflightFailed) as err:
        await router.preflight()

    assert "unknown directive" in str(err.value) and "nginx not reloaded" in str(err.value)
    assert nginx_env.upstream_file.read_bytes() == before
    assert not reloaded.exists()
    assert [p.name for p in nginx_env.upstream_file.parent.iterdir()] == ["upstream.conf"]
    assert nginx_env.served_generation() == INITIAL_GENERATION


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("upstream fragrance_app {\n  server 10.0.0.9:8000;\n}\n", "hand-written file"),
        (render_upstream("fragrance_app", "10.0.0.9:1", "10.0.0.9:2", 5, "g"), "routes addresses other than"),
    ],
)
async def test_preflight_refuses_without_a_managed_file(tmp_path: Path, content: str | None, why: str) -> None:
    upstream = tmp_path / "upstream.conf"
    if content is not None:
        upstream.write_text(content)
    router = NginxRouter(upstream, "fragrance_app", "a:1", "b:2", fail_command("must not run"),
                         fail_command("must not run"), "http://127.0.0.1:9/__canary/generation")

    with pytest.raises(PreflightFailed, match=why) as err:
        await router.preflight()

    assert ("canary-console init" if "hand-written" in why else "canary-console weights 0") in str(err.value)
    assert upstream.read_text() == content


async def test_preflight_without_a_file_writes_the_first_at_0_and_removes_it_when_nginx_refuses(tmp_path: Path) -> None:
    upstream = tmp_path / "upstream.conf"
    router = NginxRouter(upstream, "fragrance_app", "a:1", "b:2", fail_command("nginx: [emerg] refused"),
                         fail_command("must not run"), "http://127.0.0.1:9/__canary/generation")

    with pytest.raises(PreflightFailed, match="refused"):
        await router.preflight()

    assert not upstream.exists() and list(tmp_path.iterdir()) == []  # as it was: no file, no temp file


async def test_preflight_refuses_when_verification_is_off(tmp_path: Path) -> None:
    upstream = tmp_path / "upstream.conf"
    upstream.write_text(render_upstream("fragrance_app", "a:1", "b:2", 0, "g"))
    router = NginxRouter(upstream, "fragrance_app", "a:1", "b:2", fail_command("must not run"),
                         fail_command("must not run"), "")

    with pytest.raises(PreflightFailed, match="verify_url is empty") as err:
        await router.preflight()

    assert GENERATION_LOCATION in str(err.value) and "verify_listen" in str(err.value)
    assert upstream.read_text() == render_upstream("fragrance_app", "a:1", "b:2", 0, "g")
