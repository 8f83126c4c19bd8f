"""`canary-console init`: adopting a hand-written upstream file.

Unit tests of console/adapters/nginx/adopt.py (pure), then the real CLI against a real nginx
whose nginx.conf includes a hand-written file, with the real backends counting the split.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from console.adapters.nginx import adopt
from console.adapters.nginx.render import GENERATION_LOCATION, HEADER, render_upstream
from console.core.journal import read_records
from console.core.state import router_truth
from console.sandbox.nginx_local import LocalNginx
from tests.fixtures.backends import Backends
from tests.fixtures.nginx import UPSTREAM_NAME, NginxEnv, render_plain_conf, write_canary_toml
from tests.fixtures.real import children, free_port, need_binary, port_listening, wait_for

ROOT = Path(__file__).resolve().parents[1]
P, C = "app:8000", "app-canary:8000"
WHERE = "/etc/nginx/conf.d/upstream.conf"

# the guide's hand-written file: production only
GUIDE = "upstream fragrance_app { server app:8000; }\n"

WEIGHTED = """# hand-written during the last release
upstream fragrance_app {
    zone fragrance_app 64k;
    server app:8000 weight=95 max_fails=3 fail_timeout=30s;   # production
    server app-canary:8000 weight=5;                          # canary
}
"""


def adopt_(text: str, production: str = P, canary: str = C) -> adopt.Adoption:
    return adopt.adopt(text, WHERE, UPSTREAM_NAME, production, canary, "canary.toml")


# --------------------------------------------------------------------------- adopt.py: accepted


def test_the_guides_file_is_canary_0() -> None:
    found = adopt_(GUIDE)
    assert found.weight == 0 and found.dropped == ()
    assert [(s.address, s.weight) for s in found.servers] == [(P, 1)]


def test_weights_95_5_are_canary_5_and_what_is_not_kept_is_listed() -> None:
    found = adopt_(WEIGHTED)
    assert found.weight == 5
    assert [(s.address, s.weight, s.line) for s in found.servers] == [(P, 95, 4), (C, 5, 5)]
    assert found.dropped == ("app:8000 max_fails=3 fail_timeout=30s",)  # the zone is ours already


@pytest.mark.parametrize(
    "body, weight",
    [
        ("server app:8000 weight=99; server app-canary:8000 weight=1;", 1),
        ("server app-canary:8000 weight=25; server app:8000 weight=75;", 25),  # order does not matter
        ("server app:8000; server app-canary:8000;", 50),  # weight 1 each
        ("server app:8000 weight=3; server app-canary:8000 weight=1;", 25),  # scaled: 1/4 exactly
        ("server 'app-canary:8000';", 100),  # the canary alone; quotes as nginx reads them
    ],
)
def test_exact_weights_map_to_their_percent(body: str, weight: int) -> None:
    assert adopt_(f"upstream fragrance_app {{ {body} }}").weight == weight


def test_comments_may_hold_braces_and_semicolons() -> None:
    text = "# upstream old { server x:1; }\nupstream fragrance_app { # a } ;\n server app:8000; # {\n}\n"
    assert adopt_(text).weight == 0


def test_another_zone_is_replaced_and_listed() -> None:
    found = adopt_("upstream fragrance_app { zone backends 32k; server app:8000; }")
    assert found.dropped == ("zone backends 32k (the managed file has zone fragrance_app 64k)",)


@pytest.mark.parametrize("wp, wc, pct", [(1, 0, 0), (0, 1, 100), (95, 5, 5), (1, 1, 50), (999, 1, None), (2, 1, None),
                                         (0, 0, None)])
def test_canary_percent_is_exact_or_none(wp: int, wc: int, pct: int | None) -> None:
    assert adopt.canary_percent(wp, wc) == pct


def test_a_managed_file_is_recognised() -> None:
    assert adopt.is_managed(render_upstream(UPSTREAM_NAME, P, C, 25, "g1"))
    assert not adopt.is_managed(GUIDE) and not adopt.is_managed("# " + HEADER)


# --------------------------------------------------------------------------- adopt.py: refused


REFUSED = {
    "several upstreams, none named": ("upstream a { server app:8000; }\nupstream b { server app:8000; }\n",
                                      "none named fragrance_app"),
    "a second upstream": (GUIDE + "upstream other { server x:1; }\n", ":2: a second upstream block `other`"),
    "another upstream name": ("upstream backend { server app:8000; }", 'set [nginx] upstream_name = "backend"'),
    "ip_hash": ("upstream fragrance_app { ip_hash; server app:8000; }", "`ip_hash` changes how nginx balances"),
    "hash": ("upstream fragrance_app {\n hash $remote_addr consistent;\n server app:8000;\n}",
             ":2: `hash` changes how nginx balances"),
    "least_conn": ("upstream fragrance_app { least_conn; server app:8000; }", "`least_conn` changes"),
    "keepalive": ("upstream fragrance_app { server app:8000; keepalive 16; }",
                  "`keepalive` in upstream fragrance_app would be dropped"),
    "three servers": ("upstream fragrance_app {\n server app:8000;\n server app-canary:8000;\n server app2:8000;\n}",
                      "has 3 servers (lines 2, 3, 4)"),
    "backup": ("upstream fragrance_app { server app:8000; server app-canary:8000 backup; }", "`backup` on app-canary:8000"),
    "down": ("upstream fragrance_app { server app:8000; server app-canary:8000 down; }", "remove the server line instead"),
    "max_conns": ("upstream fragrance_app { server app:8000 max_conns=10; }", "`max_conns=10`"),
    "weight=0": ("upstream fragrance_app { server app:8000 weight=0; }", "allowed: weight=1 or more"),
    "inexact weights": ("upstream fragrance_app { server app:8000 weight=2; server app-canary:8000 weight=1; }",
                        "33.33%, not a whole percent"),
    "listed twice": ("upstream fragrance_app { server app:8000; server app:8000; }", "listed twice"),
    "no server": ("upstream fragrance_app { zone fragrance_app 64k; }", "has no server"),
    "a map besides": ('map $host $x { default "1"; }\n' + GUIDE, "`map` outside the upstream block would be dropped"),
    "a server block": (GUIDE + "server { listen 80; }\n", "`server` outside the upstream block"),
    "empty": ("# nothing here\n", "has no upstream block"),
    "unclosed": ("upstream fragrance_app {\n server app:8000;\n", ":1: a `{` that is never closed"),
    "no semicolon": ("upstream fragrance_app { server app:8000 }", "`server` has no `;`"),
    "stray brace": (GUIDE + "}\n", ":2: a `}` that closes nothing"),
    "unclosed quote": ('upstream fragrance_app { server "app:8000; }', "a quote that is never closed"),
    "foreign addresses": ("upstream fragrance_app { server 10.0.0.5:80 weight=9; server 10.0.0.6:80 weight=1; }",
                          'has 10.0.0.5:80 (weight 9) and 10.0.0.6:80 (weight 1), but canary.toml has [nginx] '
                          'production = "app:8000", canary = "app-canary:8000"'),
    "foreign canary": ("upstream fragrance_app { server app:8000 weight=9; server app-v2:8000 weight=1; }",
                       'set [nginx] canary = "app-v2:8000"'),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_what_init_does_not_understand_is_refused_in_one_line(case: str) -> None:
    text, needle = REFUSED[case]
    with pytest.raises(adopt.Refused) as e:
        adopt_(text)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(WHERE) and "allowed" in msg, msg
    assert needle in msg, msg


def test_the_guides_file_against_the_default_addresses_names_both_and_the_fix() -> None:
    with pytest.raises(adopt.Refused) as e:
        adopt_(GUIDE, "127.0.0.1:8000", "127.0.0.1:8001")
    assert str(e.value) == (
        f'{WHERE}: upstream fragrance_app has app:8000 (weight 1), but canary.toml has [nginx] production = '
        '"127.0.0.1:8000", canary = "127.0.0.1:8001"; allowed: the file\'s addresses in the config '
        '(set [nginx] production = "app:8000")'
    )


@pytest.mark.parametrize("data, needle", [
    (b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)), "not a text file"),
    (b"upstream fragrance_app { server app:8000; }\xff\xfe\n", "byte 0xff at offset 43 is not UTF-8"),
    (b"upstream fragrance_app {\x00 server app:8000; }", "control character 0x00 at offset 24"),
    (b"#" * (adopt.MAX_BYTES + 1), "larger than 1024 KiB"),
])
def test_binary_garbage_is_refused(data: bytes, needle: str) -> None:
    with pytest.raises(adopt.Refused) as e:
        adopt.decode(data, WHERE)
    assert needle in str(e.value) and "\n" not in str(e.value) and "allowed" in str(e.value)


# --------------------------------------------------------------------------- adopt.py: nginx.conf


@pytest.mark.parametrize("argv, dump", [
    (["nginx", "-t"], ["nginx", "-T"]),
    (["/usr/sbin/nginx", "-p", "/x/", "-t", "-q"], ["/usr/sbin/nginx", "-p", "/x/", "-T", "-q"]),
    (["docker", "exec", "-t", "fragrance-ai-nginx", "nginx", "-t"],
     ["docker", "exec", "-t", "fragrance-ai-nginx", "nginx", "-T"]),  # docker's own -t stays
    (["sh", "-c", "nginx -t"], None),
    (["/usr/bin/true"], None),
])
def test_dump_command_is_the_test_command_with_capital_t(argv: list[str], dump: list[str] | None) -> None:
    assert adopt.dump_command(argv) == dump


def test_included_as_finds_the_file_by_path_or_by_content() -> None:
    dump = (f"# configuration file /etc/nginx/nginx.conf:\nhttp {{ include {WHERE}; }}\n\n"
            f"# configuration file {WHERE}:\n{GUIDE}\n")
    assert adopt.included_as(dump, WHERE, GUIDE) == WHERE
    assert adopt.included_as(dump, "/srv/nginx/conf.d/upstream.conf", GUIDE) == WHERE  # a container's mount
    assert adopt.included_as(dump, "/srv/other.conf", WEIGHTED) is None


def test_only_verify_listen_can_confirm_the_first_file() -> None:
    listen = "127.0.0.1:8089"
    assert adopt.confirmation(f"http://{listen}/__canary/generation", listen, True) == ""
    assert adopt.confirmation(f"http://{listen}/__canary/generation", listen, None) == ""  # the probe will tell
    assert "does not include" in adopt.confirmation(f"http://{listen}/__canary/generation", listen, False)
    assert "generation location" in adopt.confirmation("http://127.0.0.1/__canary/generation", "", True)
    assert "verification is off" in adopt.confirmation("", "", True)


def test_next_steps_name_the_include_and_the_location_or_verify_listen() -> None:
    url = "http://127.0.0.1/__canary/generation"
    steps = adopt.next_steps(WHERE, False, None, url, "", False, 5, "canary.toml", "127.0.0.1:8089")
    assert steps == [
        f"add to nginx.conf, at http level: include {WHERE};",
        f"add to the server that {url} reaches: {GENERATION_LOCATION}",
        'or instead set in canary.toml: [nginx] verify_listen = "127.0.0.1:8089" (the file then serves the generation '
        "itself, and nginx.conf needs only the include)",
        "then reload nginx and run `canary-console weights 5`: the same split, confirmed once nginx verifiably serves it",
    ]
    included = adopt.next_steps(WHERE, True, WHERE, url, "", False, 5, "canary.toml", "127.0.0.1:8089")
    assert not any("include " in s for s in included) and len(included) == 3
    assert adopt.next_steps(WHERE, True, WHERE, "http://127.0.0.1:8089/__canary/generation", "127.0.0.1:8089", True,
                            0, "canary.toml", "127.0.0.1:8089") == []


# --------------------------------------------------------------------------- real nginx, the real CLI


def _addresses(backends: Backends) -> tuple[str, str]:
    return backends.production.address, backends.canary.address


def hand_written(production: str, canary: str, weights: tuple[int, int] | None = None) -> str:
    """The guide's file for these backends (weights: with a canary server too)."""
    if weights is None:
        return f"upstream fragrance_app {{ server {production}; }}\n"
    wp, wc = weights
    return (f"# written by hand\nupstream fragrance_app {{\n    server {production} weight={wp} max_fails=3 fail_timeout=30s;\n"
            f"    server {canary} weight={wc};\n}}\n")


@pytest.fixture
def handwritten_nginx(tmp_path: Path, backends: Backends) -> Iterator[Callable[[str], NginxEnv]]:
    """Start a real nginx (2 workers) whose nginx.conf is an operator's (only the include, no
    generation location) and whose included upstream file is the given hand-written text; every
    nginx started is stopped afterwards."""
    started: list[NginxEnv] = []

    def start(text: str) -> NginxEnv:
        need_binary("nginx")
        prefix = tmp_path / "nginx"
        (prefix / "conf.d").mkdir(parents=True, exist_ok=True)
        upstream = prefix / "conf.d" / "upstream.conf"
        upstream.write_text(text)
        port = free_port()
        nginx = LocalNginx(prefix, port, upstream, upstream_name=UPSTREAM_NAME, worker_processes=2,
                           conf_text=render_plain_conf(prefix, port, upstream), die_with_parent=True)
        nginx.start()
        env = NginxEnv(nginx, backends, upstream, UPSTREAM_NAME, tmp_path)
        started.append(env)
        return env

    try:
        yield start
    finally:
        for env in started:
            env.nginx.stop()
        assert not any(port_listening(env.nginx.listen_port) for env in started)


def cli(toml: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "console.commands.cli", "--config", str(toml), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def journal_path(toml: Path) -> Path:
    return toml.parent / ".canary" / "journal.jsonl"


def router_records(toml: Path) -> list[dict]:
    return [r for r in read_records(journal_path(toml)) if r["event"] != "note"]


def workers(env: NginxEnv) -> set[int]:
    """The nginx master's children now (its workers, and old ones still shutting down after a reload)."""
    return set(children(env.nginx.pid))


def reloaded(env: NginxEnv, old: set[int]) -> set[int]:
    """Wait until only new workers are left: a keep-alive connection then reaches the new file."""
    return wait_for(lambda: (now := workers(env)) and now.isdisjoint(old) and len(now) == 2 and now,
                    10, "the old nginx workers to exit")


def touch_command(marker: Path) -> list[str]:
    return [sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"]


def fail_command(message: str) -> list[str]:
    return [sys.executable, "-c", f"import sys; sys.stderr.write({message!r} + '\\n'); sys.exit(1)"]


@pytest.mark.real
def test_init_adopts_the_guides_file_and_confirms_it_through_verify_listen(
        handwritten_nginx, backends: Backends, tmp_path: Path) -> None:
    env = handwritten_nginx(hand_written(*_addresses(backends)))
    listen = f"127.0.0.1:{free_port()}"
    toml = write_canary_toml(tmp_path / "cfg" / "canary.toml", env, nginx={"verify_url": None, "verify_listen": listen})
    before = env.send(200)
    assert (before.production, before.canary, before.other) == (200, 0, 0)

    r = cli(toml, "init")

    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    path = env.upstream_file.resolve()
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"adopted {path}: canary 0% / production 100%, as the hand-written file routed; "
                               "nginx serves it (verified in ")
    assert lines[1:] == [f"nothing else to add: nginx reads {path} and serves its generation on [nginx] verify_listen"]
    recs = router_records(toml)
    assert [(x["event"], x.get("weight"), x["deployment_id"]) for x in recs] == [
        ("operator_action", None, "manual"), ("router_intent", 0, "manual"), ("router_applied", 0, "manual")]
    assert recs[0]["action"] == "init" and recs[1]["previous_weight"] == 0
    gen = recs[1]["generation"]
    assert env.upstream_file.read_text() == render_upstream(UPSTREAM_NAME, env.production, env.canary, 0, gen, listen)
    after = env.send(200, fresh=True)
    assert (after.production, after.canary, after.other) == (200, 0, 0)
    assert not journal_path(toml).with_name("journal.jsonl.lock").read_text()  # released

    again = cli(toml, "init")  # now it is ours: nothing to do
    assert again.returncode == 0 and "already managed by canary-console: nothing changed" in again.stdout
    assert env.upstream_file.read_text() == render_upstream(UPSTREAM_NAME, env.production, env.canary, 0, gen, listen)
    assert len(router_records(toml)) == 3


@pytest.mark.real
def test_init_keeps_a_95_5_split_and_prints_the_lines_that_finish_the_setup(
        handwritten_nginx, backends: Backends, tmp_path: Path) -> None:
    """No verify_listen, verify_url at the main port (the operator's nginx.conf has no location
    yet): nginx reloads the managed file, the split is the same 10 of 200 before and after, and
    following the printed lines (here: verify_listen) confirms it."""
    p, c = _addresses(backends)
    env = handwritten_nginx(hand_written(p, c, (95, 5)))
    toml = write_canary_toml(tmp_path / "cfg" / "canary.toml", env)
    # one keep-alive connection stays on one worker: its own smooth round-robin, 5 in every 100 exactly
    before = env.send(200)
    assert (before.production, before.canary, before.other) == (190, 10, 0)
    old = workers(env)

    r = cli(toml, "init")

    assert r.returncode == 0, r.stderr
    path = env.upstream_file.resolve()
    assert r.stdout.splitlines() == [
        f"adopted {path}: canary 5% / production 95%, as the hand-written file routed; nginx -t passed and nginx "
        f"reloaded it (not verified: {env.verify_url} needs the generation location in nginx.conf, which can only be "
        "added now that this file defines $canary_generation)",
        "not kept by the managed file (it writes only the servers, weight= and its own zone; nginx's defaults "
        f"max_fails=1 fail_timeout=10s apply): {p} max_fails=3 fail_timeout=30s",
        "to finish:",
        f"  add to the server that {env.verify_url} reaches: {GENERATION_LOCATION}",
        f'  or instead set in {toml}: [nginx] verify_listen = "127.0.0.1:8089" (the file then serves the generation '
        "itself, and nginx.conf needs only the include)",
        "  then reload nginx and run `canary-console weights 5`: the same split, confirmed once nginx verifiably serves it",
    ]  # no include line: nginx -T shows nginx reads the file
    recs = router_records(toml)
    # nginx did not confirm it, so the journal never says it did: unconfirmed until `weights 5`
    assert [(x["event"], x.get("weight")) for x in recs] == [("operator_action", None), ("router_intent", 5),
                                                             ("router_failed", 5)]
    assert recs[1]["previous_weight"] == 5 and "not verified" in recs[1]["reason"]
    assert recs[2]["outcome"] == "unconfirmed" and recs[2]["file_weight"] == 5 and "not verified" in recs[2]["error"]
    assert router_truth(read_records(journal_path(toml))).state == "unconfirmed"
    assert env.upstream_file.read_text() == render_upstream(UPSTREAM_NAME, p, c, 5, recs[1]["generation"])
    reloaded(env, old)  # not verified, so the old workers may still answer: wait until they are gone
    after = env.send(200)  # the new workers share one round-robin (zone): 5 of every 100 exactly
    assert (after.production, after.canary, after.other) == (190, 10, 0)

    listen = f"127.0.0.1:{free_port()}"
    write_canary_toml(toml, env, nginx={"verify_url": None, "verify_listen": listen})
    w = cli(toml, "weights", "5")
    assert w.returncode == 0 and "nginx serves it (verified in" in w.stdout, w.stderr
    assert router_truth(read_records(journal_path(toml))).state == "applied"
    fresh = env.send(200, fresh=True)
    assert (fresh.production, fresh.canary, fresh.other) == (190, 10, 0)


@pytest.mark.real
def test_init_on_a_file_nginx_does_not_include_prints_the_include_line(
        handwritten_nginx, backends: Backends, tmp_path: Path) -> None:
    p, c = _addresses(backends)
    env = handwritten_nginx(hand_written(p, c))
    copy = env.upstream_file.parent / "copy.conf"
    copy.write_text(hand_written(p, c, (3, 1)))
    listen = f"127.0.0.1:{free_port()}"
    toml = write_canary_toml(tmp_path / "cfg" / "canary.toml", env,
                             nginx={"upstream_file": str(copy), "verify_url": None, "verify_listen": listen})
    old = workers(env)

    r = cli(toml, "init")

    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "canary 25% / production 75%" in lines[0] and "not verified: nginx.conf does not include the file yet" in lines[0]
    assert lines[2:] == ["to finish:", f"  add to nginx.conf, at http level: include {copy.resolve()};",
                         "  then reload nginx and run `canary-console weights 25`: the same split, confirmed once nginx "
                         "verifiably serves it"]
    assert adopt.is_managed(copy.read_text()) and not adopt.is_managed(env.upstream_file.read_text())
    reloaded(env, old)
    split = env.send(100)
    assert (split.production, split.canary) == (100, 0)  # nginx still serves its own file


@pytest.mark.real
def test_dry_run_prints_the_file_and_changes_nothing(
        handwritten_nginx, backends: Backends, tmp_path: Path) -> None:
    p, c = _addresses(backends)
    env = handwritten_nginx(hand_written(p, c, (95, 5)))
    toml = write_canary_toml(tmp_path / "cfg" / "canary.toml", env)
    before, mtime = env.upstream_file.read_bytes(), env.upstream_file.stat().st_mtime_ns

    r = cli(toml, "init", "--dry-run")

    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"would adopt {env.upstream_file.resolve()}: canary 5% / production 95%")
    assert render_upstream(UPSTREAM_NAME, p, c, 5, "manual:dry-run") in r.stdout
    assert GENERATION_LOCATION in r.stdout
    assert env.upstream_file.read_bytes() == before and env.upstream_file.stat().st_mtime_ns == mtime
    assert not journal_path(toml).parent.exists()  # no journal, no lock


@pytest.mark.real
@pytest.mark.parametrize("which", ["test", "reload"])
def test_a_failing_nginx_test_or_reload_puts_the_hand_written_file_back_exit_6(
        handwritten_nginx, backends: Backends, tmp_path: Path, which: str) -> None:
    p, c = _addresses(backends)
    env = handwritten_nginx(hand_written(p, c, (95, 5)))
    bad = fail_command("nginx: [emerg] invented failure in /etc/nginx/conf.d/upstream.conf:5")
    toml = write_canary_toml(tmp_path / "cfg" / "canary.toml", env, nginx={f"{which}_command": bad})
    before = env.upstream_file.read_bytes()

    r = cli(toml, "init")

    assert r.returncode == 6, r.stdout + r.stderr
    first, *rest = r.stderr.splitlines()
    assert first.startswith("canary-console: router change failed, the previous upstream file is kept")
    assert "invented failure" in first and rest == ["nginx: [emerg] invented failure in /etc/nginx/conf.d/upstream.conf:5"]
    assert r.stdout == ""
    assert env.upstream_file.read_bytes() == before
    assert sorted(x.name for x in env.upstream_file.parent.iterdir()) == ["upstream.conf"]  # no temp file left
    assert [x["event"] for x in router_records(toml)] == ["operator_action", "router_intent", "router_failed"]
    split = env.send(200)
    assert (split.production, split.canary) == (190, 10)


# --------------------------------------------------------------------------- real nginx: refusals


def _foreign(env: NginxEnv, tmp: Path) -> Path:
    env.upstream_file.write_text("upstream fragrance_app { server 10.9.9.9:80; }\n")  # not what nginx serves: never loaded
    return env.upstream_file


def _ip_hash(env: NginxEnv, tmp: Path) -> Path:
    env.upstream_file.write_text(f"upstream fragrance_app {{ ip_hash; server {env.production}; }}\n")
    return env.upstream_file


def _three(env: NginxEnv, tmp: Path) -> Path:
    env.upstream_file.write_text(f"upstream fragrance_app {{ server {env.production}; server {env.canary}; "
                                 "server 127.0.0.1:9; }\n")
    return env.upstream_file


def _backup(env: NginxEnv, tmp: Path) -> Path:
    env.upstream_file.write_text(f"upstream fragrance_app {{ server {env.production}; server {env.canary} backup; }}\n")
    return env.upstream_file


def _other_names(env: NginxEnv, tmp: Path) -> Path:
    env.upstream_file.write_text(f"upstream a {{ server {env.production}; }}\nupstream b {{ server {env.canary}; }}\n")
    return env.upstream_file


def _garbage(env: NginxEnv, tmp: Path) -> Path:
    env.upstream_file.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    return env.upstream_file


def _directory(env: NginxEnv, tmp: Path) -> Path:
    d = tmp / "conf.d-as-file"
    d.mkdir()
    return d


def _fifo(env: NginxEnv, tmp: Path) -> Path:
    """Stands in for an unreadable file (tests run as root, and root reads a chmod 000 file):
    reading a FIFO naively would block forever, so it also proves init never opens one."""
    f = tmp / "upstream.fifo"
    os.mkfifo(f)
    return f


def _broken_symlink(env: NginxEnv, tmp: Path) -> Path:
    link = tmp / "upstream-link.conf"
    link.symlink_to(tmp / "gone.conf")
    return link


def _missing(env: NginxEnv, tmp: Path) -> Path:
    return tmp / "never-written.conf"


REAL_REFUSALS: dict[str, tuple[Callable[[NginxEnv, Path], Path], str]] = {
    "foreign addresses": (_foreign, "has 10.9.9.9:80 (weight 1), but"),
    "ip_hash": (_ip_hash, "`ip_hash` changes how nginx balances"),
    "three servers": (_three, "has 3 servers"),
    "backup": (_backup, "`backup`"),
    "several upstreams, none named": (_other_names, "none named fragrance_app"),
    "binary garbage": (_garbage, "is not a text file"),
    "a directory": (_directory, "is a directory"),
    "a FIFO": (_fifo, "is not a regular file (a FIFO)"),
    "a broken symlink": (_broken_symlink, "which does not exist"),
    "a missing file": (_missing, "does not exist"),
}


@pytest.mark.real
@pytest.mark.parametrize("case", sorted(REAL_REFUSALS))
def test_init_refuses_what_it_does_not_understand_and_changes_nothing(
        handwritten_nginx, backends: Backends, tmp_path: Path, case: str) -> None:
    p, c = _addresses(backends)
    env = handwritten_nginx(hand_written(p, c, (95, 5)))
    make, needle = REAL_REFUSALS[case]
    target = make(env, tmp_path)
    marker = tmp_path / "reloaded"
    toml = write_canary_toml(tmp_path / "cfg" / "canary.toml", env,
                             nginx={"upstream_file": str(target), "reload_command": touch_command(marker)})
    snapshot = sorted((x.name, x.read_bytes()) for x in env.upstream_file.parent.iterdir())

    r = cli(toml, "init", timeout=20)

    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stdout == ""
    [line] = r.stderr.splitlines()
    if line.startswith("canary-console: config error: "):  # a directory or a FIFO as upstream_file: refused at load
        assert case in ("a directory", "a FIFO") and "[nginx] upstream_file" in line and "is not a regular file" in line
        assert str(Path(os.path.abspath(target))) in line and "allowed" in line, line
    else:
        assert line.startswith(f"canary-console: init: {Path(os.path.abspath(target))}")
        assert line.endswith("; nothing was changed")
        assert needle in line and "allowed" in line, line
    assert sorted((x.name, x.read_bytes()) for x in env.upstream_file.parent.iterdir()) == snapshot  # byte for byte
    assert not marker.exists()  # never reloaded
    assert not journal_path(toml).parent.exists()  # nothing journaled, no lock taken
    split = env.send(200)
    assert (split.production, split.canary, split.other) == (190, 10, 0)  # nginx serves what it served
