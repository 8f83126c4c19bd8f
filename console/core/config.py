"""Configuration: canary.toml + .env + process env + CLI flags, validated against one schema.

Precedence: CLI flag > process env > .env > canary.toml > defaults.

A bad value raises ConfigError with one line that names the key, the file and what is
allowed; the CLI turns it into exit code 2 before anything is changed.
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    """One line: what, where, what is allowed."""


# type tags: "int", "float", "str", "bool", "list[int]", "list[str]", "list[float]", "duration",
# "list[weight]" (numbers as written, whole ones stay ints; validate_stages checks and normalises them)
# (a duration is seconds as a number, or a Prometheus-style string such as "5m")
SCHEMA: dict[str, dict[str, tuple[str, Any]]] = {
    "rollout": {
        "stages": ("list[weight]", [1, 5, 25, 100]),
        "observation_period": ("float", 900.0),
        "check_interval": ("float", 15.0),
        "min_stage_time": ("float", 0.0),  # a PASS of the analysis needs at least this much
        # seconds of a first stage in which nginx mirrors every request to the canary (no user
        # is served by it) while the gates judge it; 0 = no shadow stage (docs/router.md)
        "shadow_period": ("float", 0.0),
        "promote_after": ("float", 1800.0),
        "required_approvals": ("int", 0),
        "health_timeout": ("float", 5.0),
        # the guide's "warm up canary": this many requests straight to the canary ([health] canary_url's
        # host) before stage 1, kept out of the gates' samples; 0 = off.  The bodies are cycled (POST)
        "warmup_requests": ("int", 0),
        "warmup_method": ("str", "POST"),
        "warmup_path": ("str", "/api/generate"),
        "warmup_bodies": ("list[str]", ['{"mode": "fast", "notes": ["citrus", "floral"]}']),
    },
    "nginx": {
        "upstream_file": ("str", "nginx/conf.d/upstream.conf"),
        "upstream_name": ("str", "fragrance_app"),
        "production": ("str", "127.0.0.1:8000"),
        "canary": ("str", "127.0.0.1:8001"),
        "test_command": ("list[str]", ["nginx", "-t"]),
        "reload_command": ("list[str]", ["nginx", "-s", "reload"]),
        # the location that echoes the generation id written with each upstream file;
        # empty: no verification (the change counts as applied once the reload returns)
        "verify_url": ("str", "http://127.0.0.1/__canary/generation"),
        "verify_timeout": ("float", 10.0),
        # "host:port" on loopback: the managed include then defines its own server with the
        # generation location there, and verify_url (left at its default) points at it; "" = off
        "verify_listen": ("str", ""),
        # "reload": every change is an nginx reload; "dynamic": a weight change is set in a shared dict
        # that a Lua balancer reads (no reload; needs nginx's Lua module, docs/router.md "Dynamic mode")
        "mode": ("str", "reload"),
        # dynamic mode: the loopback "host:port" of the endpoint the include defines, and where
        # canary-console reaches it ("" = http://<dynamic_listen>/__canary/dynamic)
        "dynamic_listen": ("str", "127.0.0.1:8090"),
        "dynamic_url": ("str", ""),
        "access_log": ("str", "/var/log/nginx/canary.log"),
    },
    "health": {
        "production_url": ("str", "http://localhost:8000/health"),
        "canary_url": ("str", "http://localhost:8001/health"),
        "timeout": ("float", 5.0),
    },
    "journal": {
        "path": ("str", ".canary/journal.jsonl"),
    },
    "metrics": {
        "source": ("str", "prometheus"),
        "rate_window": ("duration", "5m"),
        "min_requests": ("int", 20),
        "request_duration": ("str", "http_request_duration_seconds"),
        "requests_total": ("str", "http_requests_total"),
        "schema_failures": ("str", "llm_brief_schema_failures_total"),
        "rl_loss": ("str", "rl_training_loss"),
        "version_label": ("str", "version"),
        "mode_label": ("str", "mode"),
        "status_label": ("str", "status"),
        "production_value": ("str", "production"),
        "canary_value": ("str", "canary"),
        "modes": ("list[str]", ["fast", "balanced", "creative"]),
        "query_timeout": ("float", 5.0),
    },
    "prometheus": {
        "url": ("str", "http://localhost:9090"),
        "verify_tls": ("bool", True),
    },
    "scrape": {
        "production": ("str", "http://localhost:8000/metrics"),
        "canary": ("str", "http://localhost:8001/metrics"),
        "timeout": ("float", 5.0),
    },
    "gates": {
        "error_rate": ("float", 0.005),
        "critical_error_rate": ("float", 0.01),
        "schema_failures": ("int", 0),
        "rl_loss_spike_ratio": ("float", 2.0),
        "consecutive_failures": ("int", 3),
        "on_inconclusive": ("str", "hold"),
        "on_metrics_unavailable": ("str", "hold"),
        "unavailable_after": ("int", 3),
        # the split nginx served, measured from [nginx] access_log (docs/gates.md "The split, measured")
        "split": ("bool", True),
        "split_tolerance": ("float", 2.0),  # points of percentage the measured share may be off the target
        "split_min_requests": ("int", 200),  # fewer requests at this generation: INCONCLUSIVE (advisory)
        "split_window": ("int", 1000),  # judged over the last this many requests of the generation
        "builtin": ("bool", True),  # false: the guide's own gates off ([[gates.custom]] and health judge)
    },
    "gates.p95_latency": {
        "fast": ("float", 2.5),
        "balanced": ("float", 3.2),
        "creative": ("float", 4.5),
    },
    "analysis": {
        "enabled": ("bool", True),
        "require_pass": ("bool", False),
        "alpha": ("float", 0.01),
        "error_tolerance": ("float", 1.0),
        "latency_tolerance": ("float", 1.2),
        "pass_bound_errors": ("float", 2.0),
        "pass_bound_latency": ("float", 1.5),
        "grid": ("list[float]", [1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0]),
    },
    "docker": {
        "enabled": ("bool", False),
        "required": ("bool", False),
        "host": ("str", ""),
        "canary_container": ("str", ""),
        "production_container": ("str", ""),
        "canary_service": ("str", "app-canary"),
        "production_service": ("str", "app"),
        "stop_canary_on_rollback": ("bool", False),
        "image": ("str", "fragrance-ai-app"),
        "log_lines": ("int", 500),
    },
    "notify": {
        "webhook_url": ("str", ""),
        "timeout": ("float", 5.0),
        "retries": ("int", 3),
        "format": ("str", "generic"),  # the body: generic JSON, or Slack's or Teams' webhook payload
    },
    "exporter": {
        # host:port where the engine serves its own /metrics (any IP: Prometheus often scrapes from
        # another host); "" = off.  linger: seconds it keeps serving after the rollout ends, until
        # one scrape has read the final state (0: stop at once)
        "listen": ("str", ""),
        "linger": ("float", 15.0),
    },
    "routing": {
        # beyond plain weights (docs/router.md): a sticky split on an nginx variable, and a
        # tester's override by header or cookie ("always" = canary, "never" = production); "" = off
        "sticky_key": ("str", ""),
        "override_header": ("str", ""),
        "override_cookie": ("str", ""),
    },
    "console": {
        "log_max_lines": ("int", 5000),
        "metrics_poll": ("float", 2.0),
    },
    "paths": {
        "compose_file": ("str", "docker-compose.canary.yml"),
        "changelog": ("str", "CHANGELOG.md"),
        "deployments_log": ("str", "deployments.log"),
    },
}

CHOICES = {
    ("nginx", "mode"): ("reload", "dynamic"),  # console.adapters.nginx.router.MODES
    ("metrics", "source"): ("prometheus", "scrape", "none"),
    ("gates", "on_inconclusive"): ("hold", "rollback"),
    ("gates", "on_metrics_unavailable"): ("hold", "rollback"),
    ("rollout", "warmup_method"): ("POST", "GET"),
    ("notify", "format"): ("generic", "slack", "teams"),  # console.adapters.webhook reads them from here
}

# env variable -> (section, key).  The seed's .env names first.
ENV_MAP: dict[str, tuple[str, str]] = {
    "PROMETHEUS_URL": ("prometheus", "url"),
    "CANARY_WEBHOOK_URL": ("notify", "webhook_url"),
    "CANARY_JOURNAL": ("journal", "path"),
    "CANARY_OBSERVATION_PERIOD": ("rollout", "observation_period"),
    "CANARY_CHECK_INTERVAL": ("rollout", "check_interval"),
    "CANARY_METRICS_SOURCE": ("metrics", "source"),
    "DOCKER_HOST": ("docker", "host"),
}

# vMAJOR.MINOR.PATCH, the versions deploy and check take: ASCII digits only (\d takes any script's), at most 64
# characters, and nothing after (\Z, not $: "$" also matches before a trailing newline)
VERSION_RE = re.compile(r"\A(?=.{1,64}\Z)v([0-9]+)\.([0-9]+)\.([0-9]+)\Z")
VERSION_ALLOWED = "vMAJOR.MINOR.PATCH in ASCII digits, at most 64 characters, e.g. v0.2.0"
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
# numbers written as text (.env, the environment): ASCII only; int()/float() also take "٥", "1_000", "nan"
INT_TEXT = re.compile(r"[+-]?[0-9]+")
FLOAT_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")

# The one range rule for numbers (int, float, duration and the items of number lists), wherever they come
# from: every number is >= 0 unless listed here; (bound, strict): > bound when strict, else >= bound.
NUMBER_MIN: dict[tuple[str, str], tuple[float, bool]] = {
    ("rollout", "observation_period"): (0, True),
    ("rollout", "check_interval"): (0, True),
    ("rollout", "health_timeout"): (0, True),
    ("nginx", "verify_timeout"): (0, True),
    ("health", "timeout"): (0, True),
    ("metrics", "rate_window"): (0, True),
    ("metrics", "min_requests"): (1, False),
    ("metrics", "query_timeout"): (0, True),
    ("scrape", "timeout"): (0, True),
    ("gates", "rl_loss_spike_ratio"): (0, True),
    ("gates", "consecutive_failures"): (1, False),
    ("gates", "unavailable_after"): (1, False),
    ("gates", "split_tolerance"): (0, True),
    ("gates", "split_min_requests"): (1, False),
    ("gates", "split_window"): (1, False),
    ("gates.p95_latency", "*"): (0, True),
    ("analysis", "error_tolerance"): (0, True),
    ("analysis", "latency_tolerance"): (0, True),
    ("analysis", "pass_bound_errors"): (0, True),
    ("analysis", "pass_bound_latency"): (0, True),
    ("analysis", "alpha"): (0, True),
    ("analysis", "grid"): (0, True),
    ("docker", "log_lines"): (1, False),
    ("notify", "timeout"): (0, True),
    ("console", "log_max_lines"): (1, False),
    ("console", "metrics_poll"): (0, True),
}


def number_min(section: str, key: str) -> tuple[float, bool]:
    return NUMBER_MIN.get((section, key)) or NUMBER_MIN.get((section, "*")) or (0, False)
_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError
    if isinstance(v, int | float):
        if not math.isfinite(v):
            raise ValueError
        return float(v)
    m = _DURATION.fullmatch(str(v).strip())
    if not m:
        raise ValueError
    x = float(m.group(1)) * _UNIT[m.group(2)]
    if not math.isfinite(x):
        raise ValueError
    return x


def format_duration(seconds: float) -> str:
    """Seconds as a PromQL range ("300s")."""
    return f"{max(1, round(seconds))}s"


@dataclass
class Config:
    values: dict[str, dict[str, Any]]
    path: Path | None = None  # the canary.toml read, if any
    env: dict[str, str] = field(default_factory=dict)  # .env + process env, merged
    base_dir: Path = field(default_factory=Path.cwd)
    custom_gates: tuple[Any, ...] = ()  # [[gates.custom]], as console.core.custom_gates.CustomGate
    # [[nginx.hosts]]: one dict per host, [nginx] with the host's keys on top, plus its "name"; () = one host, [nginx]
    nginx_hosts: tuple[dict[str, Any], ...] = ()
    origins: dict[tuple[str, str], str] = field(default_factory=dict)  # values from the env or a flag: from where

    def origin(self, section: str, key: str) -> str:
        """Where ``[section] key`` came from, for a one-line error: the file, .env, the environment, a flag."""
        return self.origins.get((section, key)) or (str(self.path) if self.path else "defaults")

    def __getitem__(self, section: str) -> dict[str, Any]:
        return self.values[section]

    def get(self, section: str, key: str) -> Any:
        return self.values[section][key]

    def resolve(self, p: str) -> Path:
        """A path from the config, relative to the config file's directory."""
        q = Path(p).expanduser()
        return q if q.is_absolute() else (self.base_dir / q)

    @property
    def stages(self) -> list[int | float]:
        return list(self.values["rollout"]["stages"])

    @property
    def journal_path(self) -> Path:
        return self.resolve(self.values["journal"]["path"])

    @property
    def upstream_file(self) -> Path:
        return self.resolve(self.values["nginx"]["upstream_file"])

    @property
    def rate_window_s(self) -> float:
        return parse_duration(self.values["metrics"]["rate_window"])

    @property
    def p95_thresholds(self) -> dict[str, float]:
        return dict(self.values["gates.p95_latency"])


def _where(path: Path | None, origin: str) -> str:
    if origin == "toml":
        return str(path) if path else "canary.toml"
    return origin


def _coerce(section: str, key: str, typ: str, v: Any, where: str, env: bool = False) -> Any:
    """``v`` as ``typ`` (text from .env or the environment parsed, ASCII numbers only), within the
    one range rule (``number_min``); ConfigError with one line otherwise."""
    name = f"[{section}] {key}" if where.endswith((".toml", "canary.toml")) or "/" in where else key
    allowed = {
        "int": "an integer",
        "float": "a number",
        "str": "a string",
        "bool": "true or false",
        "list[int]": "a list of integers",
        "list[str]": "a list of strings",
        "list[float]": "a list of numbers",
        "list[weight]": "a list of integers (or numbers with at most one decimal, such as 0.1)",
        "duration": 'a duration such as 300, "30s" or "5m"',
    }[typ]
    numeric = typ in ("int", "float", "duration", "list[int]", "list[float]")
    if numeric:
        bound, strict = number_min(section, key)
        allowed += f" {'>' if strict else '>='} {bound:g}" + (" each" if typ.startswith("list") else "")
    bad = ConfigError(f"{where}: {name} = {v!r} is not valid; allowed: {allowed}")
    from_env = env and isinstance(v, str) and typ not in ("str", "duration")

    def num(x: Any, integer: bool) -> int | float:
        if from_env:
            text = str(x).strip()
            if not (INT_TEXT if integer else FLOAT_TEXT).fullmatch(text):
                raise bad
            x = int(text) if integer else float(text)
        if isinstance(x, bool) or not isinstance(x, int if integer else int | float):
            raise bad
        if not math.isfinite(x):
            raise bad
        return x

    def in_range(x: float) -> None:
        if numeric and not (x > bound if strict else x >= bound):
            raise bad

    try:
        if typ == "int":
            n = num(v, True)
            in_range(n)
            return n
        if typ == "float":
            n = num(v, False)
            in_range(n)
            return float(n)
        if typ == "bool":
            if from_env:
                lv = v.strip().lower()
                if lv not in ("1", "0", "true", "false", "yes", "no"):
                    raise bad
                return lv in ("1", "true", "yes")
            if not isinstance(v, bool):
                raise bad
            return v
        if typ == "str":
            if not isinstance(v, str):
                raise bad
            return v
        if typ == "duration":
            in_range(parse_duration(v))
            return v
        if typ.startswith("list["):
            inner = typ[5:-1]
            if from_env:
                v = [x.strip() for x in v.split(",") if x.strip()]
                if inner in ("int", "float"):
                    v = [num(x, inner == "int") for x in v]
                elif inner == "weight":
                    v = [num(x, True) if x.isascii() and x.isdigit() else num(x, False) for x in v]
            if not isinstance(v, list):
                raise bad
            for x in v:
                if inner == "int" and (isinstance(x, bool) or not isinstance(x, int)):
                    raise bad
                if inner in ("float", "weight") and (isinstance(x, bool) or not isinstance(x, int | float)
                                                     or not math.isfinite(x)):
                    raise bad
                if inner == "str" and not isinstance(x, str):
                    raise bad
                if inner in ("int", "float"):
                    in_range(x)
            return [float(x) for x in v] if inner == "float" else list(v)
    except (ValueError, TypeError, OverflowError):
        raise bad from None
    raise bad


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long, an embedded NUL: not a file we can read
        return False


def _check_file(path: Path, where: str, allowed: str) -> None:
    if not _is_file(path):
        what = "is a directory" if _is_dir(path) else "no such file"
        raise ConfigError(f"{where}: {what}; allowed: {allowed}")


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def read_text(path: Path, allowed: str) -> str:
    """A config file's text; every OS or decode error as one ConfigError line."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or type(e).__name__}); allowed: {allowed}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}); allowed: {allowed}") from None


def read_env_file(path: Path) -> dict[str, str]:
    import io

    from dotenv import dotenv_values  # python-dotenv; small, fine on the CLI path

    text = read_text(path, "a readable .env file in UTF-8")
    return {k: v for k, v in dotenv_values(stream=io.StringIO(text)).items() if v is not None}


def load_config(
    config_path: str | os.PathLike[str] | None = None,
    env_file: str | os.PathLike[str] | None = None,
    overrides: dict[tuple[str, str], Any] | None = None,
    environ: dict[str, str] | None = None,
    check_upstream_dir: bool = True,
) -> Config:
    """Load and validate.  ``overrides`` are CLI flags, keyed (section, key)."""
    environ = dict(os.environ if environ is None else environ)
    values = {s: {k: (list(d) if isinstance(d, list) else d) for k, (_, d) in keys.items()} for s, keys in SCHEMA.items()}

    path: Path | None = None
    origins: dict[tuple[str, str], str] = {}  # (section, key) -> where a value not from the file came from
    if config_path is not None:
        path = Path(config_path)
        _check_file(path, f"--config {path}", "a readable canary.toml")
    elif environ.get("CANARY_CONFIG"):
        path = Path(environ["CANARY_CONFIG"])
        _check_file(path, f"CANARY_CONFIG={path}", "a readable canary.toml")
    elif _is_file(Path("canary.toml")):
        path = Path("canary.toml")
    base_dir = (path.resolve().parent if path else Path.cwd())

    custom: Any = None  # [[gates.custom]]: validated below, once [metrics] is known
    hosts: Any = None  # [[nginx.hosts]]: validated below, on top of [nginx]
    if path is not None:
        try:
            data = tomllib.loads(read_text(path, "a readable canary.toml in UTF-8"))
        except (tomllib.TOMLDecodeError, RecursionError) as e:
            why = " ".join(str(e).split()) or type(e).__name__
            raise ConfigError(f"{path}: not valid TOML ({why}); allowed: TOML as in canary.toml.example") from None
        custom = data["gates"].pop("custom", None) if isinstance(data.get("gates"), dict) else None
        hosts = data["nginx"].pop("hosts", None) if isinstance(data.get("nginx"), dict) else None
        _apply_toml(values, data, path)

    # .env, then process env on top
    env: dict[str, str] = {}
    ef = Path(env_file) if env_file is not None else base_dir / ".env"
    if env_file is not None:
        _check_file(ef, f"--env-file {ef}", "a readable .env file")
    if _is_file(ef):
        env.update(read_env_file(ef))
    dotenv_keys = set(env)
    env.update({k: v for k, v in environ.items()})
    for var, (section, key) in ENV_MAP.items():
        if var in env:
            origin = str(ef) if (var in dotenv_keys and var not in environ) else "environment"
            values[section][key] = _coerce(section, key, SCHEMA[section][key][0], env[var], f"{origin}: {var}", env=True)
            origins[(section, key)] = f"{origin}: {var}"

    for (section, key), v in (overrides or {}).items():
        if v is None:
            continue
        values[section][key] = _coerce(section, key, SCHEMA[section][key][0], v, "command line")
        origins[(section, key)] = "command line"

    cfg = Config(values=values, path=path, env=env, base_dir=base_dir, origins=origins)
    _validate(cfg, check_upstream_dir and hosts is None)  # with hosts, [nginx] upstream_file is only a default
    if hosts is not None:
        cfg.nginx_hosts = parse_nginx_hosts(hosts, cfg, str(path), check_upstream_dir)
    if custom is not None:
        from console.core.custom_gates import CustomGateError, parse_custom_gates

        try:
            cfg.custom_gates = parse_custom_gates(custom, where=str(path), source=cfg["metrics"]["source"],
                                                  min_requests=cfg["metrics"]["min_requests"])
        except CustomGateError as e:
            raise ConfigError(str(e)) from None
    return cfg


def _apply_toml(values: dict[str, dict[str, Any]], data: dict[str, Any], path: Path) -> None:
    sections = ", ".join(s for s in SCHEMA if "." not in s)
    for section, body in data.items():
        if section not in SCHEMA:
            raise ConfigError(f"{path}: unknown section [{section}]; allowed: {sections}")
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: {section} must be a table [{section}]")
        for key, v in body.items():
            sub = f"{section}.{key}"
            if isinstance(v, dict) and sub in SCHEMA:
                for k2, v2 in v.items():
                    if k2 not in SCHEMA[sub]:
                        raise ConfigError(f"{path}: unknown key [{sub}] {k2}; allowed: {', '.join(SCHEMA[sub])}")
                    values[sub][k2] = _coerce(sub, k2, SCHEMA[sub][k2][0], v2, str(path))
                continue
            if key not in SCHEMA[section]:
                allowed = ", ".join(list(SCHEMA[section]) + [s.split(".", 1)[1] for s in SCHEMA if s.startswith(section + ".")])
                raise ConfigError(f"{path}: unknown key [{section}] {key}; allowed: {allowed}")
            values[section][key] = _coerce(section, key, SCHEMA[section][key][0], v, str(path))


LOOPBACK_LISTEN_ALLOWED = (
    'host:port with a loopback host only (127.0.0.1 or another 127.x.x.x, [::1], localhost) and a port 1..65535, '
    'such as "127.0.0.1:8089", so the generation endpoint is never reachable from outside; "" = off'
)


def window_label(cfg: Any) -> str:
    """The rate window as the operator wrote it ("5m"), or as seconds ("300s")."""
    raw = cfg["metrics"]["rate_window"]
    return raw if isinstance(raw, str) else format_duration(float(raw))


def parse_loopback_listen(value: str) -> tuple[str, int]:
    """``[nginx] verify_listen``: (loopback IP, port); ``localhost`` is 127.0.0.1.  ValueError
    (the reason, a few words) otherwise.  The nginx adapter renders ``listen`` from it."""
    import ipaddress

    host, port = parse_listen(value, example_port=8089)
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"{host} is not a loopback address")
    return host, port


LISTEN_ALLOWED = ('host:port with an IP address (any: 127.0.0.1, 0.0.0.0, 10.1.2.3, [::1], [::]) or localhost and a '
                  'port 1..65535, such as "127.0.0.1:9464"; "" = off')


def parse_listen(value: str, example_port: int = 9464) -> tuple[str, int]:
    """``[exporter] listen``: (IP, port), any IP (Prometheus may scrape from another host);
    ``localhost`` is 127.0.0.1.  ValueError (the reason, a few words) otherwise."""
    import ipaddress

    if not isinstance(value, str) or value.count(":") < 1 or any(c.isspace() for c in value):
        raise ValueError("not host:port")
    host, _, port_text = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"an IPv6 host goes in brackets, as [::1]:{example_port}")
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} is not 1..65535")
    if host == "localhost":
        return "127.0.0.1", int(port_text)
    try:
        return str(ipaddress.ip_address(host)), int(port_text)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address or localhost") from None


def _validate_exporter(cfg: Config, where: str) -> None:
    x = cfg["exporter"]
    if x["listen"]:
        try:
            parse_listen(x["listen"])
        except ValueError as e:
            raise ConfigError(
                f"{where}: [exporter] listen = {x['listen']!r} is not valid ({e}); allowed: {LISTEN_ALLOWED}"
            ) from None
    if x["linger"] < 0:
        raise ConfigError(f"{where}: [exporter] linger = {x['linger']:g} is not valid; allowed: a number of seconds >= 0")


_ROUTING = {
    "sticky_key": (re.compile(r"^\$[A-Za-z_][A-Za-z0-9_]{0,63}$"),
                   'one nginx variable such as "$cookie_session" or "$remote_addr" ($, then letters, digits, _)'),
    "override_header": (re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$"), "a header name of letters, digits and - (at most 64)"),
    "override_cookie": (re.compile(r"^[A-Za-z0-9_]{1,64}$"), "a cookie name of letters, digits and _ (at most 64)"),
}


def routing_problem(key: str, value: object) -> str:
    """What ``[routing] key`` allows, when ``value`` is not that ("" when it is; "" = off is allowed)."""
    pattern, allowed = _ROUTING[key]
    if value == "" or (isinstance(value, str) and pattern.fullmatch(value)):
        return ""
    return f'{allowed}, or "" for off'


HOST_REQUIRED = ("upstream_file", "test_command", "reload_command")
_HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def parse_nginx_hosts(raw: Any, cfg: Config, where: str, check_upstream_dir: bool = True) -> tuple[dict[str, Any], ...]:
    """``[[nginx.hosts]]``: every host is ``[nginx]`` with its own keys on top.  Each names itself
    (unique), its ``upstream_file``, ``test_command``, ``reload_command`` and ``verify_url`` or
    ``verify_listen``; any other ``[nginx]`` key may override.  ConfigError (one line) otherwise."""
    if raw == []:
        return ()
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise ConfigError(f"{where}: [nginx] hosts must be [[nginx.hosts]] tables, one per nginx; allowed: "
                          'name = "edge-1", upstream_file, test_command, reload_command, verify_url or verify_listen')
    hosts: list[dict[str, Any]] = []
    names: set[str] = set()
    files: dict[Path, str] = {}
    for i, table in enumerate(raw, 1):
        name = table.get("name")
        if not isinstance(name, str) or not _HOST_NAME.fullmatch(name):
            what = "has no name" if name is None else f"has name = {name!r}, which is not valid"
            raise ConfigError(f"{where}: [[nginx.hosts]] number {i} {what}; allowed: a unique name such as "
                              '"edge-1" (letters, digits, _ . -, at most 63)')
        if name in names:
            raise ConfigError(f"{where}: [[nginx.hosts]] name = {name!r} is used by two hosts; allowed: one name per host")
        names.add(name)
        label = f"[[nginx.hosts]] {name!r}"
        for key in table:
            if key != "name" and key not in SCHEMA["nginx"]:
                raise ConfigError(f"{where}: unknown key {key} in {label}; allowed: name, {', '.join(SCHEMA['nginx'])}")
        missing = [k for k in HOST_REQUIRED if k not in table]
        if "verify_url" not in table and "verify_listen" not in table:
            missing.append("verify_url (or verify_listen)")
        if missing:
            raise ConfigError(f"{where}: {label} has no {', '.join(missing)}; allowed: every host names its own "
                              "upstream_file, test_command, reload_command and verify_url or verify_listen")
        host = {k: (list(v) if isinstance(v, list) else v) for k, v in cfg["nginx"].items()}
        if "verify_url" not in table:  # verify_listen alone: verification goes there (NginxRouter.from_config)
            host["verify_url"] = SCHEMA["nginx"]["verify_url"][1]
        for key, v in table.items():
            if key == "name":
                continue
            try:
                host[key] = _coerce("nginx", key, SCHEMA["nginx"][key][0], v, where)
            except ConfigError as e:
                raise ConfigError(str(e).replace("[nginx] ", f"{label} ", 1)) from None
        for key in ("test_command", "reload_command"):
            if not host[key]:
                raise ConfigError(f'{where}: {label} {key} is empty; allowed: an argv list such as ["nginx", "-t"]')
        for key in ("production", "canary"):
            if address_problem(host[key]):
                raise ConfigError(f"{where}: {label} {key} = {host[key]!r} is not valid; allowed: {ADDRESS_ALLOWED}")
        if host["verify_listen"]:
            try:
                parse_loopback_listen(host["verify_listen"])
            except ValueError as e:
                raise ConfigError(f"{where}: {label} verify_listen = {host['verify_listen']!r} is not valid ({e}); "
                                  f"allowed: {LOOPBACK_LISTEN_ALLOWED}") from None
        if host["mode"] not in CHOICES[("nginx", "mode")]:
            raise ConfigError(f"{where}: {label} mode = {host['mode']!r} is not valid; allowed: reload or dynamic")
        _check_dynamic_listen(host, f"{where}: {label}")
        f = cfg.resolve(host["upstream_file"])
        if f in files:
            raise ConfigError(f"{where}: {label} upstream_file = {host['upstream_file']!r} is also the file of "
                              f"{files[f]!r}; allowed: one upstream file per host")
        files[f] = name
        if check_upstream_dir and not f.parent.is_dir():
            raise ConfigError(f"{where}: {label} upstream_file = {host['upstream_file']!r}: directory {f.parent} does "
                              "not exist; allowed: a file in an existing directory")
        hosts.append({"name": name, **host})
    return tuple(hosts)


# Written into nginx syntax (console/adapters/nginx/render.py checks them again with these rules):
# nothing that could end a directive.  Whole-string matches (fullmatch: no trailing newline).
NGINX_ADDRESS = re.compile(r"unix:/[A-Za-z0-9_./-]+|[A-Za-z0-9_.:\[\]-]+")
ADDRESS_ALLOWED = "host:port or unix:/path (no spaces, quotes, ';', '{', '}' or '#')"
NGINX_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
NAME_ALLOWED = "letters, digits, _ . - (at most 64)"


def _check_dynamic_listen(n: dict[str, Any], where: str) -> None:
    """``dynamic_listen`` in dynamic mode: a loopback "host:port" (the endpoint sets the weights)."""
    if n["mode"] != "dynamic":
        return
    try:
        dynamic = parse_loopback_listen(n["dynamic_listen"])
    except ValueError as e:
        raise ConfigError(f"{where} dynamic_listen = {n['dynamic_listen']!r} is not valid ({e}); "
                          f"allowed: {LOOPBACK_LISTEN_ALLOWED} (mode = \"dynamic\" needs it)") from None
    try:
        same = bool(n.get("verify_listen")) and parse_loopback_listen(n["verify_listen"]) == dynamic
    except ValueError:
        same = False  # verify_listen's own check names it
    if same:  # two server blocks on one address: nginx answers both from the first
        raise ConfigError(f"{where} dynamic_listen = {n['dynamic_listen']!r} is verify_listen's address too; "
                          "allowed: two different loopback ports")
    import ipaddress

    for key in ("production", "canary"):
        host = str(n[key]).rpartition(":")[0].strip("[]")
        if str(n[key]).startswith("unix:"):
            continue
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(f"{where} {key} = {n[key]!r} is not valid with mode = \"dynamic\"; allowed: an IP address "
                              'and port such as "127.0.0.1:8000" (the Lua balancer cannot resolve names), or '
                              'mode = "reload"') from None


def address_problem(value: object) -> str:
    """What an nginx server address allows, when ``value`` is not that ("" when it is)."""
    return "" if isinstance(value, str) and NGINX_ADDRESS.fullmatch(value) else ADDRESS_ALLOWED


# URLs the console requests: (section, key) -> "" allowed (= off), secret (never echoed)
URL_KEYS: dict[tuple[str, str], tuple[bool, bool]] = {
    ("prometheus", "url"): (False, False),
    ("health", "production_url"): (True, False),
    ("health", "canary_url"): (True, False),
    ("scrape", "production"): (True, False),
    ("scrape", "canary"): (True, False),
    ("nginx", "verify_url"): (True, False),
    ("nginx", "dynamic_url"): (True, False),
    ("notify", "webhook_url"): (True, True),
}
URL_ALLOWED = "an absolute http:// or https:// URL with a host, in ASCII, no spaces"


def url_problem(value: object, empty_ok: bool = False) -> str:
    """What a URL the console requests allows, when ``value`` is not that ("" when it is)."""
    if empty_ok and value == "":
        return ""
    if not isinstance(value, str) or not value.isascii() or any(c.isspace() or ord(c) < 32 or ord(c) == 127
                                                                 for c in value):
        return URL_ALLOWED
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - a bad port raises here
    except ValueError:
        return URL_ALLOWED
    if parts.scheme not in ("http", "https") or not re.fullmatch(r"[A-Za-z0-9_.:-]+", parts.hostname or ""):
        return URL_ALLOWED
    return ""


# Prometheus credentials, from the environment or .env (console/adapters/metrics/prometheus.py sends them)
PROMETHEUS_TOKEN_ENV = "CANARY_PROMETHEUS_TOKEN"
PROMETHEUS_USER_ENV = "CANARY_PROMETHEUS_USER"
PROMETHEUS_PASSWORD_ENV = "CANARY_PROMETHEUS_PASSWORD"


def prometheus_auth_problem(env: dict[str, str]) -> str:
    """One line when the Prometheus credentials contradict each other ("" when they do not)."""
    token, user, password = (env.get(k, "") for k in (PROMETHEUS_TOKEN_ENV, PROMETHEUS_USER_ENV, PROMETHEUS_PASSWORD_ENV))
    if token and (user or password):
        return (f"{PROMETHEUS_TOKEN_ENV} and {PROMETHEUS_USER_ENV}/{PROMETHEUS_PASSWORD_ENV} are both set; "
                "allowed: a bearer token or basic auth")
    if bool(user) != bool(password):
        return (f"{PROMETHEUS_USER_ENV} and {PROMETHEUS_PASSWORD_ENV} must be set together; "
                "allowed: both (basic auth to Prometheus), or neither")
    return ""


def _path_problem(p: Path) -> str:
    """A file the console writes or reads: "" unless it (or a directory above it) is the wrong kind."""
    try:
        if p.exists() and not p.is_file():
            return f"{p} is not a regular file"
        for d in p.parents:
            if d.exists():
                return "" if d.is_dir() else f"{d} is not a directory"
    except (OSError, ValueError) as e:
        return f"{p}: {getattr(e, 'strerror', None) or type(e).__name__}"
    return ""


def _validate_inputs(cfg: Config) -> None:
    """Addresses, names, URLs, credentials and file paths: one line each, at load, never a traceback later."""
    n = cfg["nginx"]
    for key in ("production", "canary"):
        if address_problem(n[key]):
            raise ConfigError(f"{cfg.origin('nginx', key)}: [nginx] {key} = {n[key]!r} is not valid; "
                              f"allowed: {ADDRESS_ALLOWED}")
    if not NGINX_NAME.fullmatch(n["upstream_name"]):
        raise ConfigError(f"{cfg.origin('nginx', 'upstream_name')}: [nginx] upstream_name = {n['upstream_name']!r} "
                          f"is not valid; allowed: {NAME_ALLOWED}")
    for (section, key), (empty_ok, secret) in URL_KEYS.items():
        value = cfg[section][key]
        if url_problem(value, empty_ok):
            shown = "(value not shown)" if secret or "@" in str(value) else f"= {value!r}"
            off = '; "" = off' if empty_ok else ""
            raise ConfigError(f"{cfg.origin(section, key)}: [{section}] {key} {shown} is not valid; "
                              f"allowed: {URL_ALLOWED}{off}")
    if cfg["metrics"]["source"] == "prometheus":
        problem = prometheus_auth_problem(cfg.env)
        if problem:
            raise ConfigError(f"environment or .env: {problem}")
    for section, key, p in (("journal", "path", cfg.journal_path), ("nginx", "upstream_file", cfg.upstream_file)):
        problem = _path_problem(p)
        if problem:
            raise ConfigError(f"{cfg.origin(section, key)}: [{section}] {key} = {cfg[section][key]!r}: {problem}; "
                              "allowed: a file path (in a directory that is not a file)")


def _validate_split(cfg: Config, where: str) -> None:
    g = cfg["gates"]
    if not 0 < g["split_tolerance"] <= 100:
        raise ConfigError(f"{where}: [gates] split_tolerance = {g['split_tolerance']:g} is not valid; "
                          "allowed: points of percentage, 0 < tolerance <= 100")
    if g["split_min_requests"] < 1:
        raise ConfigError(f"{where}: [gates] split_min_requests = {g['split_min_requests']} is not valid; "
                          "allowed: an integer >= 1")
    if not g["split_min_requests"] <= g["split_window"] <= 1_000_000:
        raise ConfigError(f"{where}: [gates] split_window = {g['split_window']} is not valid; allowed: an integer "
                          f"from split_min_requests ({g['split_min_requests']}) to 1000000")


WEIGHT_ALLOWED = "a percentage 0..100 with at most one decimal, such as 5 or 0.1"


def normalize_weight(x: float) -> int | float:
    """A canary weight (a percentage) the way the console keeps it everywhere: rounded to one
    decimal, an ``int`` when whole (5, never 5.0: "5%" in text, 5 in JSON), else a float (0.1).
    Use it at the edges (config, the command line, a file read back, ``100 - w``)."""
    tenths = round(x * 10)
    return tenths // 10 if tenths % 10 == 0 else tenths / 10


def is_weight(x: object) -> bool:
    """A number 0..100 with at most one decimal (bool is not a number here): what
    ``normalize_weight`` keeps without moving it."""
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x) or not 0 <= x <= 100:
        return False
    return isinstance(x, int) or abs(x * 10 - round(x * 10)) < 1e-7


def validate_stages(stages: list[Any], where: str) -> list[int | float]:
    """The stages, normalised (``normalize_weight``); ConfigError with one line unless they are
    strictly increasing percentages 0.1..100 with at most one decimal, ending at 100."""
    ok = bool(stages) and all(is_weight(s) and s > 0 for s in stages)
    norm = [normalize_weight(s) for s in stages] if ok else []
    if not ok or not all(a < b for a, b in zip(norm, norm[1:], strict=False)) or norm[-1] != 100:
        raise ConfigError(
            f"{where}: [rollout] stages = {stages} is not valid; allowed: strictly increasing percentages within "
            "0.1..100 with at most one decimal, ending at 100, such as [1, 5, 25, 100] or [0.1, 1, 5, 25, 100]"
        )
    return norm


WARMUP_MAX = 100_000
_WARMUP_PATH = re.compile(r"/[!-~]{0,1023}")  # ASCII, no spaces: an absolute path (and query)


def _validate_warmup(cfg: Config) -> None:
    """``[rollout] warmup_*``: one line each (console/adapters/warmup.py sends them)."""
    r = cfg["rollout"]
    n = r["warmup_requests"]
    if n > WARMUP_MAX:
        raise ConfigError(f"{cfg.origin('rollout', 'warmup_requests')}: [rollout] warmup_requests = {n} is not valid; "
                          f"allowed: an integer from 0 (off) to {WARMUP_MAX}")
    if not _WARMUP_PATH.fullmatch(r["warmup_path"]):
        raise ConfigError(f"{cfg.origin('rollout', 'warmup_path')}: [rollout] warmup_path = {r['warmup_path']!r} is "
                          'not valid; allowed: an absolute path such as "/api/generate" (ASCII, no spaces)')
    for i, body in enumerate(r["warmup_bodies"], 1):
        try:
            json.loads(body)
        except ValueError:
            raise ConfigError(f"{cfg.origin('rollout', 'warmup_bodies')}: [rollout] warmup_bodies number {i} = "
                              f"{body[:60]!r} is not JSON; allowed: JSON texts such as "
                              "'{\"mode\": \"fast\", \"notes\": [\"citrus\"]}', sent in turn") from None
    if n > 0 and not cfg["health"]["canary_url"]:
        raise ConfigError(f"{cfg.origin('rollout', 'warmup_requests')}: [rollout] warmup_requests = {n} needs "
                          "[health] canary_url (the warm-up goes to that host, straight to the canary); "
                          "allowed: set canary_url, or warmup_requests = 0")


def _validate(cfg: Config, check_upstream_dir: bool) -> None:
    where = str(cfg.path) if cfg.path else "defaults"
    cfg.values["rollout"]["stages"] = validate_stages(cfg.stages, where)
    r = cfg["rollout"]
    for key in ("observation_period", "check_interval"):
        if r[key] <= 0:
            raise ConfigError(f"{where}: [rollout] {key} = {r[key]} is not valid; allowed: a number of seconds > 0")
    if not r["shadow_period"] >= 0:
        raise ConfigError(f"{where}: [rollout] shadow_period = {r['shadow_period']} is not valid; "
                          "allowed: a number of seconds >= 0 (0 = no shadow stage)")
    _validate_warmup(cfg)
    for (section, key), allowed in CHOICES.items():
        if cfg[section][key] not in allowed:
            raise ConfigError(f"{cfg.origin(section, key)}: [{section}] {key} = {cfg[section][key]!r} is not valid; "
                              f"allowed: {' or '.join(allowed)}")
    for key in ("test_command", "reload_command"):
        if not cfg["nginx"][key]:
            raise ConfigError(f"{where}: [nginx] {key} is empty; allowed: an argv list such as [\"nginx\", \"-t\"]")
    _check_dynamic_listen(cfg["nginx"], f"{cfg.origin('nginx', 'dynamic_listen')}: [nginx]")
    if cfg["nginx"]["verify_listen"]:
        try:
            parse_loopback_listen(cfg["nginx"]["verify_listen"])
        except ValueError as e:
            raise ConfigError(
                f"{where}: [nginx] verify_listen = {cfg['nginx']['verify_listen']!r} is not valid ({e}); "
                f"allowed: {LOOPBACK_LISTEN_ALLOWED}"
            ) from None
    _validate_exporter(cfg, where)
    for key, value in cfg["routing"].items():
        problem = routing_problem(key, value)
        if problem:
            raise ConfigError(f"{where}: [routing] {key} = {value!r} is not valid; allowed: {problem}")
    if cfg["gates"]["consecutive_failures"] < 1 or cfg["gates"]["unavailable_after"] < 1:
        raise ConfigError(f"{where}: [gates] consecutive_failures and unavailable_after must be >= 1")
    _validate_split(cfg, where)
    _validate_inputs(cfg)
    if not 0 < cfg["analysis"]["alpha"] < 1:
        raise ConfigError(f"{where}: [analysis] alpha = {cfg['analysis']['alpha']} is not valid; allowed: 0 < alpha < 1")
    if check_upstream_dir:
        d = cfg.upstream_file.parent
        if not d.is_dir():
            raise ConfigError(
                f"{where}: [nginx] upstream_file = {cfg['nginx']['upstream_file']!r}: directory {d} does not exist; "
                "allowed: a file in an existing directory"
            )
