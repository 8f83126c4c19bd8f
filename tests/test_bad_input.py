"""Every bad input gets one clear line and changes nothing (issue 16).

A property-based test over the command line, canary.toml values, .env and the environment: for
every generated bad input the exit code is a documented one (usage errors are 2), stderr is one
line naming the key or argument, where it came from and what is allowed, with no traceback, and
neither the upstream file nor the journal changes.  The classes an adversarial pass found are
seeded with ``@example``.  The CLI runs in process (``cli.main``) for speed, with ``os._exit``
patched so that an input wrongly accepted by ``weights`` fails the test instead of ending pytest;
a few subprocess checks cover the real entry point.  Derandomized: CI sees the same inputs.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from console.commands import cli
from console.core.exits import ExitCode

DOCUMENTED = {int(c) for c in ExitCode}
SETTINGS = settings(max_examples=100, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
UPSTREAM = "# hand-written upstream, must not change\nupstream fragrance_app { server 127.0.0.1:8000; }\n"
JOURNAL = '{"type": "Note", "message": "before"}\n'
ENV_VARS = ("PROMETHEUS_URL", "CANARY_WEBHOOK_URL", "CANARY_JOURNAL", "CANARY_OBSERVATION_PERIOD",
            "CANARY_CHECK_INTERVAL", "CANARY_METRICS_SOURCE", "DOCKER_HOST", "CANARY_CONFIG",
            "CANARY_PROMETHEUS_TOKEN", "CANARY_PROMETHEUS_USER", "CANARY_PROMETHEUS_PASSWORD")


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a TOML basic string (JSON escapes are TOML's)
    return "[" + ", ".join(toml_value(x) for x in v) + "]"


@contextlib.contextmanager
def workspace(toml: dict[str, dict[str, Any]] | None = None, raw: bytes | None = None) -> Iterator[Path]:
    """A temp dir with canary.toml (valid, apart from ``toml`` / ``raw``), an upstream file and a journal."""
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "nginx").mkdir()
        (root / "nginx" / "upstream.conf").write_text(UPSTREAM)
        (root / ".canary").mkdir()
        (root / ".canary" / "journal.jsonl").write_text(JOURNAL)
        values: dict[str, dict[str, Any]] = {
            "nginx": {"upstream_file": "nginx/upstream.conf", "test_command": ["true"], "reload_command": ["true"],
                      "verify_url": ""},
            "metrics": {"source": "none"},
            "docker": {"enabled": False},
        }
        for section, body in (toml or {}).items():
            values.setdefault(section, {}).update(body)
        lines = []
        for section, body in values.items():
            lines.append(f"[{section}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in body.items()]
        (root / "canary.toml").write_bytes(raw if raw is not None else ("\n".join(lines) + "\n").encode())
        yield root


def unchanged(root: Path) -> None:
    assert (root / "nginx" / "upstream.conf").read_text() == UPSTREAM, "the upstream file changed"
    assert (root / ".canary" / "journal.jsonl").read_text() == JOURNAL, "the journal changed"
    assert not (root / "nginx" / "upstream.conf.tmp").exists()


def run_cli(argv: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    """``cli.main(argv)`` in process: (exit code, stderr).  ``env`` replaces the variables the config reads."""
    err = io.StringIO()
    clean = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    with mock.patch.dict(os.environ, {**clean, **(env or {})}, clear=True), \
            mock.patch("os._exit", side_effect=AssertionError("a bad input was accepted (os._exit)")), \
            contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(argv)
        except SystemExit as e:  # argparse
            code = e.code if isinstance(e.code, int) else ExitCode.USAGE
    return int(code), err.getvalue()


def one_line(code: int, stderr: str, *names: str) -> None:
    assert code in DOCUMENTED and code == ExitCode.USAGE, (code, stderr)
    assert "Traceback" not in stderr, stderr
    assert stderr.endswith("\n") and stderr.count("\n") == 1, f"not one line: {stderr!r}"
    assert "allowed" in stderr or "invalid choice" in stderr, stderr
    for name in names:
        assert name in stderr, f"{name!r} not named in {stderr!r}"


# --------------------------------------------------------------------------- bad values, by class

NON_ASCII_DIGITS = st.sampled_from(["٥", "５", "५", "٣٠", "1٥", "²"])
NOT_A_WEIGHT = st.one_of(
    NON_ASCII_DIGITS,
    st.sampled_from(["-1", "101", "5%", "5.55", "nan", "inf", "1e1", " 5", "5\n", "0x5", "1_0", "", "five"]),
    st.text(min_size=1, max_size=8).filter(lambda s: not (s.isascii() and s.replace(".", "", 1).isdigit())),
)
NOT_SECONDS = st.one_of(
    NON_ASCII_DIGITS,
    st.sampled_from(["0", "-5", "nan", "inf", "-inf", "1e999", "1_0", "", "5m", "abc"]),
)
BAD_VERSIONS = st.one_of(
    st.sampled_from(["v1.0.0\n", "v١.0.0", "v1.0", "1.0.0", "v1.0.0-rc1", "V1.0.0", " v1.0.0", "v" + "1" * 5000 + ".0.0",
                     "v1.0.0\x00", "v1..0"]),
    st.text(max_size=12).filter(lambda s: not (s.startswith("v") and s[1:].replace(".", "").isascii()
                                               and s[1:].replace(".", "").isdigit() and s.count(".") == 2)),
)
BAD_NUMBER = st.sampled_from([-1, -5, -0.5, math.nan, math.inf, -math.inf, "5", True])
BAD_POSITIVE = st.sampled_from([0, 0.0, -1, math.nan, math.inf])
# (section, key) whose values must be > 0 (or >= 1); zero is as bad as a negative there
POSITIVE_KEYS = [("metrics", "min_requests"), ("health", "timeout"), ("nginx", "verify_timeout"),
                 ("rollout", "health_timeout"), ("metrics", "query_timeout"), ("scrape", "timeout"),
                 ("notify", "timeout"), ("gates", "consecutive_failures"), ("rollout", "observation_period"),
                 ("console", "log_max_lines")]
NUMBER_KEYS = POSITIVE_KEYS + [("notify", "retries"), ("rollout", "promote_after"), ("gates", "error_rate"),
                               ("rollout", "required_approvals"), ("docker", "log_lines"), ("exporter", "linger")]
BAD_ADDRESS = st.one_of(
    st.sampled_from(["127.0.0.1:8000; include /etc/passwd", "a b", "x{", "#x", "127.0.0.1:8000\n", "'q'", ""]),
    st.text(min_size=1, max_size=10).filter(lambda s: any(c in s for c in ";{}# \"'\n")),
)


@SETTINGS
@given(pct=NOT_A_WEIGHT)
@example(pct="٥")
@example(pct="5\n")
def test_a_bad_weight_argument_is_one_line(pct: str) -> None:
    with workspace() as root:
        code, stderr = run_cli(["--config", str(root / "canary.toml"), "weights", pct])
        one_line(code, stderr, "PCT")
        unchanged(root)


@SETTINGS
@given(flag=st.sampled_from(["--start-stage", "--observation-period", "--check-interval"]), value=NOT_SECONDS)
@example(flag="--start-stage", value="٥")
@example(flag="--observation-period", value="٣٠")
def test_a_bad_deploy_flag_is_one_line(flag: str, value: str) -> None:
    with workspace() as root:
        code, stderr = run_cli(["--config", str(root / "canary.toml"), "deploy", "--version", "v1.0.0", "--dry-run",
                                "--headless", f"{flag}={value}"])  # "=": a leading "-" is not an option
        one_line(code, stderr, flag)
        unchanged(root)


@SETTINGS
@given(version=BAD_VERSIONS)
@example(version="v1.0.0\n")
@example(version="v٥.0.0")
@example(version="v1.0." + "0" * 5000)
def test_a_bad_version_is_one_line(version: str) -> None:
    with workspace() as root:
        code, stderr = run_cli(["--config", str(root / "canary.toml"), "deploy", f"--version={version}", "--dry-run",
                                "--headless"])
        one_line(code, stderr, "--version")
        unchanged(root)


@SETTINGS
@given(key=st.sampled_from(NUMBER_KEYS), value=BAD_NUMBER)
@example(key=("metrics", "min_requests"), value=-5)
@example(key=("health", "timeout"), value=-1)
@example(key=("gates", "error_rate"), value=math.nan)
def test_a_bad_number_in_the_file_is_one_line(key: tuple[str, str], value: Any) -> None:
    section, name = key
    with workspace({section: {name: value}}) as root:
        code, stderr = run_cli(["--config", str(root / "canary.toml"), "weights", "5"])
        one_line(code, stderr, f"[{section}] {name}", str(root / "canary.toml"))
        unchanged(root)


@SETTINGS
@given(key=st.sampled_from(POSITIVE_KEYS), value=BAD_POSITIVE)
@example(key=("metrics", "min_requests"), value=0)
@example(key=("nginx", "verify_timeout"), value=0)
def test_zero_where_it_makes_no_sense_is_one_line(key: tuple[str, str], value: Any) -> None:
    section, name = key
    if isinstance(value, float) and value.is_integer() and section in ("metrics", "gates", "console"):
        value = int(value)  # an integer key: the zero as an integer (a float is refused for its type anyway)
    with workspace({section: {name: value}}) as root:
        code, stderr = run_cli(["--config", str(root / "canary.toml"), "weights", "5"])
        one_line(code, stderr, f"[{section}] {name}")
        unchanged(root)


@SETTINGS
@given(key=st.sampled_from(["production", "canary", "upstream_name"]), value=BAD_ADDRESS)
@example(key="canary", value="127.0.0.1:8001; include /etc/passwd")
@example(key="production", value="127.0.0.1:8000\n")
def test_a_bad_nginx_address_is_one_line(key: str, value: str) -> None:
    with workspace({"nginx": {key: value}}) as root:
        code, stderr = run_cli(["--config", str(root / "canary.toml"), "weights", "5"])
        one_line(code, stderr, f"[nginx] {key}", str(root / "canary.toml"))
        unchanged(root)


ENV_BAD = st.one_of(
    st.tuples(st.sampled_from(["CANARY_OBSERVATION_PERIOD", "CANARY_CHECK_INTERVAL"]),
              st.one_of(NON_ASCII_DIGITS, st.sampled_from(["0", "-1", "nan", "inf", "1_0", "abc", "", "1e999"]))),
    st.tuples(st.just("PROMETHEUS_URL"), st.sampled_from(["localhost:9090", "not a url", "ftp://x", "http://",
                                                          "http://x:99999", "http://ü.example"])),
    st.tuples(st.just("CANARY_METRICS_SOURCE"), st.sampled_from(["prom", "", "PROMETHEUS"])),
)


@SETTINGS
@given(var_value=ENV_BAD, via_dotenv=st.booleans())
@example(var_value=("PROMETHEUS_URL", "localhost:9090"), via_dotenv=False)
@example(var_value=("CANARY_CHECK_INTERVAL", "٥"), via_dotenv=True)
def test_a_bad_environment_value_is_one_line(var_value: tuple[str, str], via_dotenv: bool) -> None:
    var, value = var_value
    with workspace() as root:
        env = {}
        if via_dotenv:
            (root / ".env").write_text(f"{var}={json.dumps(value, ensure_ascii=False)}\n")
        else:
            env[var] = value
        code, stderr = run_cli(["--config", str(root / "canary.toml"), "weights", "5"], env)
        one_line(code, stderr, var, str(root / ".env") if via_dotenv else "environment")
        unchanged(root)


# --------------------------------------------------------------------------- the classes, one by one


def test_a_config_that_is_not_utf8_is_one_line() -> None:
    with workspace(raw=b"[rollout]\nstages = [1, 100] # \xff\xfe\n") as root:
        code, stderr = run_cli(["--config", str(root / "canary.toml"), "weights", "5"])
        one_line(code, stderr, str(root / "canary.toml"), "UTF-8")
        unchanged(root)


def test_a_dotenv_that_is_not_utf8_is_one_line() -> None:
    with workspace() as root:
        (root / ".env").write_bytes(b"PROMETHEUS_URL=http://\xff\n")
        code, stderr = run_cli(["--config", str(root / "canary.toml"), "weights", "5"])
        one_line(code, stderr, str(root / ".env"), "UTF-8")
        unchanged(root)


def test_a_directory_as_config_is_one_line() -> None:
    with workspace() as root:
        code, stderr = run_cli(["--config", str(root / "nginx"), "weights", "5"])
        one_line(code, stderr, "--config", "directory")
        code, stderr = run_cli(["weights", "5"], {"CANARY_CONFIG": str(root / "nginx")})
        one_line(code, stderr, "CANARY_CONFIG", "directory")
        unchanged(root)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_an_unreadable_config_is_one_line() -> None:
    with workspace() as root:
        (root / "canary.toml").chmod(0)
        code, stderr = run_cli(["--config", str(root / "canary.toml"), "weights", "5"])
        one_line(code, stderr, str(root / "canary.toml"), "cannot read")
        unchanged(root)


def test_a_journal_path_naming_a_directory_is_one_line() -> None:
    with workspace({"journal": {"path": "nginx"}}) as root:
        code, stderr = run_cli(["--config", str(root / "canary.toml"), "weights", "5"])
        one_line(code, stderr, "[journal] path", str(root / "canary.toml"))
        code, stderr = run_cli(["--config", str(root / "canary.toml"), "status"], {"CANARY_JOURNAL": str(root)})
        one_line(code, stderr, "[journal] path", "CANARY_JOURNAL")
        unchanged(root)


def test_a_bearer_token_with_basic_auth_is_one_line_at_load() -> None:
    env = {"CANARY_PROMETHEUS_TOKEN": "s3cr3t-token", "CANARY_PROMETHEUS_USER": "u", "CANARY_PROMETHEUS_PASSWORD": "pw"}
    with workspace({"metrics": {"source": "prometheus"}}) as root:
        code, stderr = run_cli(["--config", str(root / "canary.toml"), "weights", "5"], env)
        one_line(code, stderr, "CANARY_PROMETHEUS_TOKEN")
        assert "s3cr3t-token" not in stderr and "pw" not in stderr.replace("PASSWORD", "")
        unchanged(root)


# --------------------------------------------------------------------------- the real entry point


@pytest.mark.parametrize(
    ("args", "toml", "name"),
    [
        (["weights", "٥"], None, "PCT"),
        (["deploy", "--version", "v1.0.0\n", "--dry-run", "--headless"], None, "--version"),
        (["weights", "5"], {"nginx": {"canary": "127.0.0.1:8001; x"}}, "[nginx] canary"),
        (["weights", "5"], {"metrics": {"min_requests": -5}}, "[metrics] min_requests"),
    ],
)
def test_the_real_entry_point_prints_one_line(args: list[str], toml: dict | None, name: str) -> None:
    with workspace(toml) as root:
        env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
        p = subprocess.run([sys.executable, "-m", "console.commands.cli", "--config", str(root / "canary.toml"), *args],
                           capture_output=True, text=True, timeout=60, env=env, cwd=root)
        one_line(p.returncode, p.stderr, name)
        unchanged(root)


def test_a_router_that_raises_leaves_no_open_operator_action(tmp_path: Path) -> None:
    """An operator action is journaled only with its outcome: a router that fails in a way it does not
    know (a ValueError, not a RouterError) still gets its RouterFailed after the intent."""

    from console.core import events as ev
    from console.core import manual
    from console.core.fakes import FakeRouter
    from console.core.journal import read_records

    class Raising(FakeRouter):
        async def apply(self, weight: float, generation: str, shadow: bool = False) -> float:
            raise ValueError("[nginx] canary = 'x;' is not valid")

    path = tmp_path / "journal.jsonl"
    with pytest.raises(ValueError):
        manual.set_weight(path, Raising(), 5, ev.Operator.current())
    types = [r["event"] for r in read_records(path)]
    assert types[-1] == "router_failed" and "operator_action" in types, types
    # and a router that cannot even be built journals nothing at all
    from console.adapters.nginx.router import NginxRouter

    with pytest.raises(ValueError):
        router = NginxRouter(tmp_path / "u.conf", "app", "127.0.0.1:1", "x;", ["true"], ["true"], "")
        manual.set_weight(tmp_path / "j2.jsonl", router, 5, ev.Operator.current())
    assert not (tmp_path / "j2.jsonl").exists() or not list(read_records(tmp_path / "j2.jsonl"))
