"""Configuration: canary.toml + .env + process env + CLI flags, validated against one schema.

Precedence: CLI flag > process env > .env > canary.toml > defaults.

A bad value raises ConfigError with one line that names the key, the file and what is
allowed; the CLI turns it into exit code 2 before anything is changed.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    """One line: what, where, what is allowed."""


# type tags: "int", "float", "str", "bool", "list[int]", "list[str]", "list[float]", "duration"
# (a duration is seconds as a number, or a Prometheus-style string such as "5m")
SCHEMA: dict[str, dict[str, tuple[str, Any]]] = {
    "rollout": {
        "stages": ("list[int]", [1, 5, 25, 100]),
        "observation_period": ("float", 900.0),
        "check_interval": ("float", 15.0),
        "min_stage_time": ("float", 0.0),  # a PASS of the analysis needs at least this much
        "promote_after": ("float", 1800.0),
        "required_approvals": ("int", 0),
        "health_timeout": ("float", 5.0),
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
    ("metrics", "source"): ("prometheus", "scrape", "none"),
    ("gates", "on_inconclusive"): ("hold", "rollback"),
    ("gates", "on_metrics_unavailable"): ("hold", "rollback"),
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

VERSION_RE = re.compile(r"^v(\d+)\.(\d+)\.(\d+)$")  # vMAJOR.MINOR.PATCH, the versions deploy and check take
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError
    if isinstance(v, int | float):
        return float(v)
    m = _DURATION.match(str(v).strip())
    if not m:
        raise ValueError
    return float(m.group(1)) * _UNIT[m.group(2)]


def format_duration(seconds: float) -> str:
    """Seconds as a PromQL range ("300s")."""
    return f"{max(1, round(seconds))}s"


@dataclass
class Config:
    values: dict[str, dict[str, Any]]
    path: Path | None = None  # the canary.toml read, if any
    env: dict[str, str] = field(default_factory=dict)  # .env + process env, merged
    base_dir: Path = field(default_factory=Path.cwd)

    def __getitem__(self, section: str) -> dict[str, Any]:
        return self.values[section]

    def get(self, section: str, key: str) -> Any:
        return self.values[section][key]

    def resolve(self, p: str) -> Path:
        """A path from the config, relative to the config file's directory."""
        q = Path(p).expanduser()
        return q if q.is_absolute() else (self.base_dir / q)

    @property
    def stages(self) -> list[int]:
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
    name = f"[{section}] {key}" if where.endswith((".toml", "canary.toml")) or "/" in where else key
    allowed = {
        "int": "an integer",
        "float": "a number",
        "str": "a string",
        "bool": "true or false",
        "list[int]": "a list of integers",
        "list[str]": "a list of strings",
        "list[float]": "a list of numbers",
        "duration": 'a duration such as 300, "30s" or "5m"',
    }[typ]
    bad = ConfigError(f"{where}: {name} = {v!r} is not valid; allowed: {allowed}")
    from_env = env and isinstance(v, str) and typ not in ("str", "duration")
    try:
        if typ == "int":
            if from_env:
                v = int(v)
            if isinstance(v, bool) or not isinstance(v, int):
                raise bad
            return v
        if typ == "float":
            if from_env:
                v = float(v)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise bad
            return float(v)
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
            parse_duration(v)
            return v
        if typ.startswith("list["):
            if from_env:
                v = [x.strip() for x in v.split(",") if x.strip()]
                if typ == "list[int]":
                    v = [int(x) for x in v]
                elif typ == "list[float]":
                    v = [float(x) for x in v]
            if not isinstance(v, list):
                raise bad
            inner = typ[5:-1]
            for x in v:
                if inner == "int" and (isinstance(x, bool) or not isinstance(x, int)):
                    raise bad
                if inner == "float" and (isinstance(x, bool) or not isinstance(x, int | float)):
                    raise bad
                if inner == "str" and not isinstance(x, str):
                    raise bad
            return [float(x) for x in v] if inner == "float" else list(v)
    except (ValueError, TypeError):
        raise bad from None
    raise bad


def read_env_file(path: Path) -> dict[str, str]:
    from dotenv import dotenv_values  # python-dotenv; small, fine on the CLI path

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


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
    if config_path is not None:
        path = Path(config_path)
        if not path.is_file():
            raise ConfigError(f"--config {path}: no such file; allowed: a readable canary.toml")
    elif environ.get("CANARY_CONFIG"):
        path = Path(environ["CANARY_CONFIG"])
        if not path.is_file():
            raise ConfigError(f"CANARY_CONFIG={path}: no such file; allowed: a readable canary.toml")
    elif Path("canary.toml").is_file():
        path = Path("canary.toml")
    base_dir = (path.resolve().parent if path else Path.cwd())

    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML ({e}); allowed: TOML as in canary.toml.example") from None
        except OSError as e:
            raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
        _apply_toml(values, data, path)

    # .env, then process env on top
    env: dict[str, str] = {}
    ef = Path(env_file) if env_file is not None else base_dir / ".env"
    if env_file is not None and not ef.is_file():
        raise ConfigError(f"--env-file {ef}: no such file; allowed: a readable .env file")
    if ef.is_file():
        env.update(read_env_file(ef))
    dotenv_keys = set(env)
    env.update({k: v for k, v in environ.items()})
    for var, (section, key) in ENV_MAP.items():
        if var in env:
            origin = str(ef) if (var in dotenv_keys and var not in environ) else "environment"
            values[section][key] = _coerce(section, key, SCHEMA[section][key][0], env[var], f"{origin}: {var}", env=True)

    for (section, key), v in (overrides or {}).items():
        if v is None:
            continue
        values[section][key] = _coerce(section, key, SCHEMA[section][key][0], v, "command line")

    cfg = Config(values=values, path=path, env=env, base_dir=base_dir)
    _validate(cfg, check_upstream_dir)
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


def parse_loopback_listen(value: str) -> tuple[str, int]:
    """``[nginx] verify_listen``: (loopback IP, port); ``localhost`` is 127.0.0.1.  ValueError
    (the reason, a few words) otherwise.  The nginx adapter renders ``listen`` from it."""
    import ipaddress

    if not isinstance(value, str) or value.count(":") < 1 or any(c.isspace() for c in value):
        raise ValueError("not host:port")
    host, _, port_text = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError("an IPv6 host goes in brackets, as [::1]:8089")
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} is not 1..65535")
    if host == "localhost":
        return "127.0.0.1", int(port_text)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address or localhost") from None
    if not ip.is_loopback:
        raise ValueError(f"{host} is not a loopback address")
    return str(ip), int(port_text)


def validate_stages(stages: list[int], where: str) -> None:
    ok = bool(stages) and all(1 <= s <= 100 for s in stages) and all(a < b for a, b in zip(stages, stages[1:], strict=False))
    if not ok or stages[-1] != 100:
        raise ConfigError(
            f"{where}: [rollout] stages = {stages} is not valid; "
            "allowed: strictly increasing integers within 1..100 ending at 100"
        )


def _validate(cfg: Config, check_upstream_dir: bool) -> None:
    where = str(cfg.path) if cfg.path else "defaults"
    validate_stages(cfg.stages, where)
    r = cfg["rollout"]
    for key in ("observation_period", "check_interval"):
        if r[key] <= 0:
            raise ConfigError(f"{where}: [rollout] {key} = {r[key]} is not valid; allowed: a number of seconds > 0")
    for (section, key), allowed in CHOICES.items():
        if cfg[section][key] not in allowed:
            raise ConfigError(f"{where}: [{section}] {key} = {cfg[section][key]!r} is not valid; allowed: {' or '.join(allowed)}")
    for key in ("test_command", "reload_command"):
        if not cfg["nginx"][key]:
            raise ConfigError(f"{where}: [nginx] {key} is empty; allowed: an argv list such as [\"nginx\", \"-t\"]")
    if cfg["nginx"]["verify_listen"]:
        try:
            parse_loopback_listen(cfg["nginx"]["verify_listen"])
        except ValueError as e:
            raise ConfigError(
                f"{where}: [nginx] verify_listen = {cfg['nginx']['verify_listen']!r} is not valid ({e}); "
                f"allowed: {LOOPBACK_LISTEN_ALLOWED}"
            ) from None
    if cfg["gates"]["consecutive_failures"] < 1 or cfg["gates"]["unavailable_after"] < 1:
        raise ConfigError(f"{where}: [gates] consecutive_failures and unavailable_after must be >= 1")
    if not 0 < cfg["analysis"]["alpha"] < 1:
        raise ConfigError(f"{where}: [analysis] alpha = {cfg['analysis']['alpha']} is not valid; allowed: 0 < alpha < 1")
    if check_upstream_dir:
        d = cfg.upstream_file.parent
        if not d.is_dir():
            raise ConfigError(
                f"{where}: [nginx] upstream_file = {cfg['nginx']['upstream_file']!r}: directory {d} does not exist; "
                "allowed: a file in an existing directory"
            )
