"""``canary-console check --version V [--strict]``: the seed's pre-deployment checks.

    python scripts/pre_deployment_check.py --version v0.2.0 --strict

becomes a table (check, result, detail).  Results are PASS, WARN, FAIL or SKIP (not
applicable with this configuration); ``--strict`` turns every WARN into a FAIL.  Exit 0 when
nothing failed, 1 otherwise, and 4 when the router's preflight fails (it cannot see what
nginx serves, so no stage of a deploy could be confirmed).  ``deploy`` calls ``run_checks(..., for_deploy=True)`` (or
``arun_checks`` from a running event loop) first and stops on a failure; ``for_deploy``
only relaxes a missing upstream file to a warning (the first stage writes it).

The checks run concurrently (health, Prometheus, ``nginx -t``, Docker), each with its own
timeout, so a dead component costs one timeout, not the sum of them.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urlsplit, urlunsplit

from console.core.config import VERSION_RE
from console.core.exits import ExitCode

if TYPE_CHECKING:
    from console.core.config import Config

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"  # shown upper-case in the table
NGINX_TIMEOUT = 30.0


@dataclass(frozen=True)
class CheckRow:
    check: str
    result: str  # pass | warn | fail | skip
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"check": self.check, "result": self.result, "detail": self.detail}


def failed(rows: list[CheckRow]) -> bool:
    return any(r.result == FAIL for r in rows)


def public_url(url: str) -> str:
    """A URL without user:password, for printing."""
    try:
        p = urlsplit(url)
    except ValueError:
        return url
    if p.username or p.password:
        host = p.hostname or ""
        netloc = f"{host}:{p.port}" if p.port else host
        return urlunsplit((p.scheme, netloc, p.path, p.query, p.fragment))
    return url


# ---------------------------------------------------------------------- version
def check_version(version: str) -> CheckRow:
    if VERSION_RE.match(version):
        return CheckRow("version format", PASS, version)
    return CheckRow("version format", FAIL, f"{version!r} is not valid; allowed: vMAJOR.MINOR.PATCH, for example v0.2.0")


def bare(version: str) -> str:
    return version[1:] if version.startswith("v") else version


# ---------------------------------------------------------------------- health
async def check_health(cfg: Config, version: str) -> list[CheckRow]:
    from console.adapters.health import HttpHealth

    hh = HttpHealth()
    timeout = float(cfg["health"]["timeout"])
    try:
        prod, can = await asyncio.gather(
            hh.check(cfg["health"]["production_url"], timeout), hh.check(cfg["health"]["canary_url"], timeout)
        )
    finally:
        await hh.aclose()
    rows = [
        CheckRow("production health", PASS if prod.ok else FAIL, prod.detail),
        CheckRow("canary health", PASS if can.ok else FAIL, can.detail),
    ]
    if not can.ok:
        rows.append(CheckRow("canary version", SKIP, "the canary is not healthy"))
        return rows
    reported = (can.body or {}).get("version")
    if reported is None:
        rows.append(CheckRow("canary version", WARN, f"{cfg['health']['canary_url']} does not report a version"))
    elif bare(str(reported)) == bare(version):
        rows.append(CheckRow("canary version", PASS, f"the canary reports {reported}"))
    else:
        rows.append(CheckRow("canary version", FAIL, f"the canary reports {reported}, but {version} is being deployed"))
    return rows


# ---------------------------------------------------------------------- metrics
def contract_metrics(cfg: Config) -> list[tuple[str, bool]]:
    """(series name, required): the metrics the gates read."""
    m = cfg["metrics"]
    return [
        (m["requests_total"], True),
        (m["request_duration"] + "_bucket", True),
        (m["schema_failures"], False),
    ]


def _metric_rows(cfg: Config, present: dict[str, set[str]], where: str, canary_missing: str) -> list[CheckRow]:
    """present: version label value -> series names seen.  A missing required series is a FAIL
    for production; for the canary it is ``canary_missing`` (in Prometheus a labelled counter
    has no series until the canary has served a request, hence WARN there)."""
    m = cfg["metrics"]
    rows = []
    for role in ("production", "canary"):
        value = m[f"{role}_value"]
        have = present.get(value, set())
        missing_req = [n for n, req in contract_metrics(cfg) if req and n not in have]
        missing_opt = [n for n, req in contract_metrics(cfg) if not req and n not in have]
        label = f'{m["version_label"]}="{value}"'
        if missing_req:
            result = canary_missing if role == "canary" else FAIL
            hint = " (no traffic served yet? warm the canary up first)" if result == WARN else ""
            rows.append(CheckRow(f"metrics {role}", result, f"{where}: no {', '.join(missing_req)}{{{label}}}{hint}"))
        elif missing_opt:
            detail = f"{where}: no {', '.join(missing_opt)}{{{label}}} (its gate has no data)"
            rows.append(CheckRow(f"metrics {role}", WARN, detail))
        else:
            detail = f"{where}: the {len(contract_metrics(cfg))} contract metrics with {{{label}}}"
            rows.append(CheckRow(f"metrics {role}", PASS, detail))
    return rows


async def check_prometheus(cfg: Config) -> list[CheckRow]:
    import httpx

    m = cfg["metrics"]
    url = cfg["prometheus"]["url"].rstrip("/")
    shown = public_url(url)
    names = "|".join(re.escape(n) for n, _ in contract_metrics(cfg))
    values = "|".join(re.escape(m[f"{r}_value"]) for r in ("production", "canary"))
    vl = m["version_label"]
    query = f'count by (__name__, {vl}) ({{__name__=~"{names}", {vl}=~"{values}"}})'
    try:
        async with httpx.AsyncClient(timeout=m["query_timeout"], verify=cfg["prometheus"]["verify_tls"], trust_env=False) as c:
            r = await c.get(f"{url}/api/v1/query", params={"query": query})
        body = r.json() if r.status_code == 200 else None
    except httpx.TimeoutException:
        return [CheckRow("prometheus", FAIL, f"{shown}: timed out after {m['query_timeout']:g}s"),
                *_skipped_metrics("Prometheus unreachable")]
    except httpx.HTTPError as e:
        return [CheckRow("prometheus", FAIL, f"{shown}: unreachable ({type(e).__name__})"),
                *_skipped_metrics("Prometheus unreachable")]
    except ValueError:
        body = None
    if not isinstance(body, dict) or body.get("status") != "success":
        code = r.status_code
        return [CheckRow("prometheus", FAIL, f"{shown}: /api/v1/query answered HTTP {code} without a success result"),
                *_skipped_metrics("Prometheus did not answer the query")]
    present: dict[str, set[str]] = {}
    for s in body.get("data", {}).get("result", []):
        metric = s.get("metric", {})
        present.setdefault(metric.get(vl, ""), set()).add(metric.get("__name__", ""))
    return [CheckRow("prometheus", PASS, f"{shown} answers queries"), *_metric_rows(cfg, present, "Prometheus", WARN)]


def _skipped_metrics(why: str) -> list[CheckRow]:
    return [CheckRow("metrics production", SKIP, why), CheckRow("metrics canary", SKIP, why)]


_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s")
_TYPE = re.compile(r"^#\s*TYPE\s+([A-Za-z_:][A-Za-z0-9_:]*)\s+(\w+)")


def exposed_series(text: str) -> set[str]:
    """Series names in a Prometheus exposition, including families declared by ``# TYPE``
    without samples yet (a labelled counter that has not been incremented)."""
    out: set[str] = set()
    for line in text.splitlines():
        t = _TYPE.match(line)
        if t:
            name, kind = t.groups()
            out.add(name)
            if kind == "histogram":
                out.update({f"{name}_bucket", f"{name}_count", f"{name}_sum"})
            if kind == "counter" and not name.endswith("_total"):
                out.add(f"{name}_total")
            continue
        s = _SAMPLE.match(line)
        if s:
            out.add(s.group(1))
    return out


async def check_scrape(cfg: Config) -> list[CheckRow]:
    import httpx

    rows = [CheckRow("prometheus", SKIP, "[metrics] source = \"scrape\": the console scrapes the apps directly")]
    timeout = float(cfg["scrape"]["timeout"])
    async with httpx.AsyncClient(timeout=timeout, trust_env=False) as c:
        for role in ("production", "canary"):
            url = cfg["scrape"][role]
            shown = public_url(url)
            try:
                r = await c.get(url)
            except httpx.TimeoutException:
                rows.append(CheckRow(f"metrics {role}", FAIL, f"{shown}: timed out after {timeout:g}s"))
                continue
            except httpx.HTTPError as e:
                rows.append(CheckRow(f"metrics {role}", FAIL, f"{shown}: unreachable ({type(e).__name__})"))
                continue
            if r.status_code != 200:
                rows.append(CheckRow(f"metrics {role}", FAIL, f"{shown}: HTTP {r.status_code}"))
                continue
            have = exposed_series(r.text)
            value = cfg["metrics"][f"{role}_value"]
            # an exposition declares its families (# TYPE) before any sample: missing means not exposed
            rows.extend(row for row in _metric_rows(cfg, {value: have}, shown, FAIL) if row.check == f"metrics {role}")
    return rows


def contract_read(cfg: Config) -> bool:
    """Whether anything reads the guide's metrics: the built-in gates or the sequential analysis."""
    return bool(cfg["gates"]["builtin"] or cfg["analysis"]["enabled"])


def _contract_rows(cfg: Config, rows: list[CheckRow]) -> list[CheckRow]:
    """With ``[gates] builtin = false`` and ``[analysis] enabled = false`` a service without the
    guide's metrics is fine: their rows are SKIP."""
    if contract_read(cfg):
        return rows
    why = "[gates] builtin = false and [analysis] enabled = false: the guide's metrics are not read"
    return [replace(r, result=SKIP, detail=why) if r.check.startswith("metrics ") else r for r in rows]


CUSTOM_RESULT = {"pass": PASS, "no data": WARN, "invalid": FAIL, "unavailable": SKIP}


async def check_custom_gates(cfg: Config) -> list[CheckRow]:
    """One row per ``[[gates.custom]]``: Prometheus accepts its queries and they answer one number
    (FAIL with Prometheus' own error otherwise); WARN while the canary has no data yet."""
    if not cfg.custom_gates:
        return []
    from console.adapters.metrics import build_source
    from console.wiring import build_custom_gates

    gates = build_custom_gates(cfg, build_source(cfg), owns_source=True)
    try:
        probed = await gates.probe()
    finally:
        await gates.aclose()
    return [CheckRow(f"custom gate {g.name}", CUSTOM_RESULT[status], detail) for g, status, detail in probed]


async def check_metrics(cfg: Config) -> list[CheckRow]:
    source = cfg["metrics"]["source"]
    if source == "prometheus":
        rows, custom = await asyncio.gather(check_prometheus(cfg), check_custom_gates(cfg))
        return _contract_rows(cfg, rows) + custom
    if source == "scrape":
        return _contract_rows(cfg, await check_scrape(cfg))
    why = f"[metrics] source = {source!r}: stages are judged on health only"
    return [CheckRow("prometheus", SKIP, why), *_skipped_metrics(why)]


# ---------------------------------------------------------------------- nginx
def short_argv(argv: list[str]) -> str:
    """``nginx -t`` for a long argv full of paths (the detail column stays readable)."""
    text = " ".join(argv)
    if len(text) <= 50:
        return text
    return " ".join([Path(argv[0]).name, *(a for a in argv[1:] if a in ("-t", "-T", "exec") or not a.startswith(("/", "-")))])


async def check_nginx(cfg: Config, for_deploy: bool = False) -> CheckRow:
    from console.adapters.nginx.router import NginxRouter, run_command

    argv = list(cfg["nginx"]["test_command"])
    upstream = cfg.upstream_file
    if not upstream.exists():
        if for_deploy:
            return CheckRow("nginx test", WARN, f"{upstream} does not exist yet; the first stage writes it")
        return CheckRow("nginx test", FAIL, f"{upstream} does not exist; run `canary-console weights 0` to write it")
    rc, out = await run_command(argv, NGINX_TIMEOUT)
    if rc != 0:
        lines = [ln for ln in out.splitlines() if ln.strip()]
        first = next((ln for ln in lines if "[emerg]" in ln or "error" in ln.lower()), lines[0] if lines else f"exit {rc}")
        return CheckRow("nginx test", FAIL, f"{short_argv(argv)}: {first.strip()}")
    try:
        w = NginxRouter.from_config(cfg).current_weight()
    except ValueError as e:
        return CheckRow("nginx test", WARN, f"nginx -t ok, but {e}")
    if w is None:
        return CheckRow("nginx test", WARN, f"nginx -t ok, but {upstream} is not an upstream file canary-console manages")
    return CheckRow("nginx test", PASS, f"{short_argv(argv)} ok; {upstream.name} routes canary {w}% / production {100 - w}%")


PREFLIGHT = "nginx confirms"


async def check_preflight(cfg: Config) -> CheckRow:
    """The router's preflight: the same weights under a fresh generation, reloaded, and seen
    served through verify_url (traffic does not move; on failure the file is put back)."""
    from console.core.routing import RouterError
    from console.wiring import build_router

    router = build_router(cfg)
    if router.current_weight() is None:
        return CheckRow(PREFLIGHT, SKIP, "no managed upstream file to rewrite (see nginx test)")
    try:
        took = await router.preflight()
    except RouterError as e:
        return CheckRow(PREFLIGHT, FAIL, str(e))
    return CheckRow(PREFLIGHT, PASS, f"nginx served a fresh generation of {cfg.upstream_file.name} in {took * 1000:.0f} ms")


# ---------------------------------------------------------------------- docker
def check_docker(cfg: Config, version: str) -> list[CheckRow]:
    if not cfg["docker"]["enabled"]:
        why = "[docker] enabled = false"
        return [CheckRow("docker", SKIP, why), CheckRow("canary container", SKIP, why)]
    from console.adapters.docker import DockerAdapter, DockerUnavailable

    ad = DockerAdapter(cfg)
    soft = FAIL if ad.required else WARN
    try:
        try:
            server = ad.ping()
        except DockerUnavailable as e:
            return [CheckRow("docker", soft, str(e)), CheckRow("canary container", SKIP, "Docker unreachable")]
        rows = [CheckRow("docker", PASS, f"dockerd {server} at {ad.host}")]
        try:
            found = ad.containers("canary")
        except DockerUnavailable as e:
            return [*rows, CheckRow("canary container", soft, str(e))]
        if not found:
            return [*rows, CheckRow("canary container", soft, f"no canary container ({ad.selector('canary')})")]
        return [*rows, _container_row(found, f"{cfg['docker']['image']}:{version}")]
    finally:
        ad.close()


def _container_row(found: list[Any], expected_image: str) -> CheckRow:
    desc = "; ".join(c.describe() for c in found)
    if any(c.status != "running" for c in found):
        return CheckRow("canary container", FAIL, f"not running: {desc}")
    if any(c.health == "unhealthy" for c in found):
        return CheckRow("canary container", FAIL, f"unhealthy: {desc}")
    wrong = [c for c in found if c.image != expected_image]
    if wrong:
        images = ", ".join(sorted({c.image for c in wrong}))
        return CheckRow("canary container", FAIL, f"runs {images}, expected {expected_image}")
    if any(c.health == "starting" for c in found):
        return CheckRow("canary container", WARN, f"health check still starting: {desc}")
    if any(c.health is None for c in found):
        return CheckRow("canary container", WARN, f"running without a healthcheck: {desc}")
    return CheckRow("canary container", PASS, desc)


# ---------------------------------------------------------------------- compose file
_INTERP = re.compile(r"\$(?:\$|\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?$", re.S)


class ComposeError(Exception):
    pass


def interpolate(text: str, env: dict[str, str], where: str, unset: set[str]) -> str:
    """docker compose variable substitution: $VAR, ${VAR}, ${VAR:-d}, ${VAR-d}, ${VAR:?e},
    ${VAR?e}, ${VAR:+r}, ${VAR+r}, $$."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        if m.group(2):
            name, op, arg = m.group(2), None, ""
        else:
            b = _BRACED.match(m.group(1))
            if not b:
                raise ComposeError(f"{where}: invalid interpolation {m.group(0)!r}")
            name, op, arg = b.group(1), b.group(2), b.group(3) or ""
        val = env.get(name)
        if op is None:
            if val is None:
                unset.add(name)
            return val or ""
        empty_counts = op.startswith(":")
        missing = val is None or (empty_counts and val == "")
        kind = op[-1]
        if kind == "-":
            return arg if missing else str(val)
        if kind == "?":
            if missing:
                raise ComposeError(f"{where}: {name} is not set ({arg or 'required'})")
            return str(val)
        return "" if missing else arg  # "+"

    if "${" in text and text.count("${") != len(re.findall(r"\$\{[^}]*\}", text)):
        raise ComposeError(f"{where}: unterminated ${{ in {text!r}")
    return _INTERP.sub(sub, text)


def _labels(v: Any) -> dict[str, str]:
    if isinstance(v, dict):
        return {str(k): "" if x is None else str(x) for k, x in v.items()}
    if isinstance(v, list):
        return dict((str(x).split("=", 1) + [""])[:2] for x in v)  # type: ignore[misc]
    return {}


def _walk_interpolate(node: Any, env: dict[str, str], where: str, unset: set[str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env, where, unset)
    if isinstance(node, dict):
        return {k: _walk_interpolate(v, env, f"{where}.{k}", unset) for k, v in node.items()}
    if isinstance(node, list):
        return [_walk_interpolate(v, env, f"{where}[{i}]", unset) for i, v in enumerate(node)]
    return node


def validate_compose(path: Path, version: str, cfg: Config) -> CheckRow:
    """A structural check of the services and keys the seed relies on, after docker compose's
    variable substitution with CANARY_VERSION = the version being checked."""
    name = "compose file"
    if not path.is_file():
        return CheckRow(name, WARN, f"{path} not found ([paths] compose_file)")
    try:
        import yaml
    except ImportError:
        return CheckRow(name, FAIL, "cannot validate: PyYAML is not installed (pip install pyyaml)")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        return CheckRow(name, FAIL, f"{path.name}: not valid YAML{at}: {getattr(e, 'problem', None) or e}")
    except OSError as e:
        return CheckRow(name, FAIL, f"{path}: cannot read ({e.strerror})")
    env = {k: v for k, v in cfg.env.items() if isinstance(v, str)}
    env["CANARY_VERSION"] = version
    unset: set[str] = set()
    try:
        if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict):
            raise ComposeError(f"{path.name}: no services: mapping at the top level")
        doc = _walk_interpolate(doc, env, "", unset)
        summary, warnings = _check_services(doc["services"], version, cfg)
    except ComposeError as e:
        return CheckRow(name, FAIL, str(e).lstrip("."))
    if unset:
        warnings.append(f"unset variables without a default: {', '.join(sorted(unset))}")
    if warnings:
        return CheckRow(name, WARN, f"{path.name}: " + "; ".join(warnings))
    return CheckRow(name, PASS, f"{path.name}: {summary}")


def _check_services(services: dict[str, Any], version: str, cfg: Config) -> tuple[str, list[str]]:
    warnings: list[str] = []
    app = cfg["docker"]["canary_service"]
    if app not in services or not isinstance(services[app], dict):
        raise ComposeError(f"services.{app}: missing (the canary service)")
    svc = services[app]
    expected = f"{cfg['docker']['image']}:{version}"
    image = svc.get("image")
    if not image:
        raise ComposeError(f"services.{app}.image: missing")
    if image != expected:
        raise ComposeError(f"services.{app}.image resolves to {image}, expected {expected}")
    ports = svc.get("ports") or []
    if not isinstance(ports, list) or not ports:
        warnings.append(f"services.{app}.ports: none published")
    for p in ports if isinstance(ports, list) else []:
        spec = str(p.get("published", "")) if isinstance(p, dict) else str(p)
        if isinstance(p, str) and not re.fullmatch(r"(?:[\d.]+:)?\d+(?:-\d+)?(?::\d+(?:-\d+)?)?(?:/(?:tcp|udp))?", spec):
            raise ComposeError(f"services.{app}.ports: {spec!r} is not a port mapping")
    hc = svc.get("healthcheck")
    if not isinstance(hc, dict) or not hc.get("test"):
        warnings.append(f"services.{app}.healthcheck: missing (the console cannot show the canary's health)")
    else:
        test = hc["test"]
        probe = " ".join(map(str, test)) if isinstance(test, list) else str(test)
        if "/health" not in probe:
            warnings.append(f"services.{app}.healthcheck does not probe /health")
    if _labels(svc.get("labels")).get("version") != "canary":
        warnings.append(f"services.{app}.labels: no version=canary")
    env = svc.get("environment")
    keys = set(env) if isinstance(env, dict) else {str(x).split("=", 1)[0] for x in env or []}
    missing_env = [k for k in ("USE_LLM_ENSEMBLE", "LLM_ENSEMBLE_MODELS", "LLM_ENSEMBLE_VOTING") if k not in keys]
    if missing_env:
        warnings.append(f"services.{app}.environment: no {', '.join(missing_env)}")
    replicas = []
    for worker in ("worker-llm-canary", "worker-rl-canary"):
        w = services.get(worker)
        if not isinstance(w, dict):
            warnings.append(f"services.{worker}: missing")
            continue
        n = (w.get("deploy") or {}).get("replicas", w.get("replicas", 1))
        if isinstance(n, bool) or not re.fullmatch(r"\d+", str(n)):
            raise ComposeError(f"services.{worker}.deploy.replicas = {n!r} is not valid; allowed: an integer >= 0")
        replicas.append(f"{worker} x{n}")
    port = ports[0] if isinstance(ports, list) and ports else "-"
    return f"{len(services)} services; {app} {image} port {port}; {', '.join(replicas)}", warnings


def check_compose(cfg: Config, version: str) -> list[CheckRow]:
    rows = [validate_compose(cfg.resolve(cfg["paths"]["compose_file"]), version, cfg)]
    env_version = cfg.env.get("CANARY_VERSION")
    if env_version and env_version != version:
        rows.append(CheckRow("CANARY_VERSION", WARN, f"is {env_version} in the environment or .env, but {version} is checked"))
    return rows


# ---------------------------------------------------------------------- all
async def _nginx_rows(cfg: Config, for_deploy: bool) -> list[CheckRow]:
    """``nginx -t``, then (for `check`; `deploy`'s engine runs its own before the first stage)
    the preflight, once nginx accepts the file."""
    row = await check_nginx(cfg, for_deploy)
    if for_deploy:
        return [row]
    if row.result == FAIL:
        return [row, CheckRow(PREFLIGHT, SKIP, "nginx -t failed")]
    return [row, await check_preflight(cfg)]


async def arun_checks(cfg: Config, version: str, strict: bool = False, for_deploy: bool = False) -> list[CheckRow]:
    """Every check, concurrently; in a stable order."""
    rows: list[CheckRow] = [check_version(version)]
    health_t = asyncio.ensure_future(check_health(cfg, version))
    metrics_t = asyncio.ensure_future(check_metrics(cfg))
    nginx_t = asyncio.ensure_future(_nginx_rows(cfg, for_deploy))
    docker_t = asyncio.ensure_future(asyncio.to_thread(check_docker, cfg, version))
    compose_t = asyncio.ensure_future(asyncio.to_thread(check_compose, cfg, version))
    for t, label in ((health_t, "health"), (metrics_t, "metrics"), (nginx_t, "nginx test"), (docker_t, "docker"),
                     (compose_t, "compose file")):
        try:
            got = await t
        except Exception as e:  # a check that crashes is a failed check, never a traceback
            got = [CheckRow(label, FAIL, f"check crashed: {type(e).__name__}: {e}".splitlines()[0])]
        rows.extend(got if isinstance(got, list) else [got])
    if strict:
        rows = [replace(r, result=FAIL, detail=f"{r.detail} (--strict)") if r.result == WARN else r for r in rows]
    return rows


def run_checks(cfg: Config, version: str, strict: bool = False, for_deploy: bool = False) -> list[CheckRow]:
    """Synchronous form; from inside a running event loop, await ``arun_checks`` instead."""
    return asyncio.run(arun_checks(cfg, version, strict, for_deploy))


def format_table(rows: list[CheckRow]) -> str:
    w1 = max([len("check"), *(len(r.check) for r in rows)])
    w2 = max([len("result"), *(len(r.result) for r in rows)])
    lines = [f"{'check':<{w1}}  {'result':<{w2}}  detail", f"{'-' * w1}  {'-' * w2}  {'-' * 6}"]
    lines += [f"{r.check:<{w1}}  {r.result.upper():<{w2}}  {r.detail}" for r in rows]
    return "\n".join(lines)


def print_table(rows: list[CheckRow], file: TextIO | None = None) -> None:
    print(format_table(rows), file=file or sys.stdout)


def summary(rows: list[CheckRow], version: str) -> str:
    counts = {k: sum(r.result == k for r in rows) for k in (PASS, WARN, FAIL, SKIP)}
    verdict = "FAILED" if counts[FAIL] else "ok"
    return (f"pre-deployment checks for {version}: {verdict} "
            f"({counts[PASS]} pass, {counts[WARN]} warn, {counts[FAIL]} fail, {counts[SKIP]} skip)")


def run(args: argparse.Namespace, cfg: Config, out: Callable[[str], None] | None = None) -> int:
    """``canary-console check --version V [--strict]``."""
    write = out or (lambda s: print(s, file=sys.stdout))
    rows = run_checks(cfg, args.version, bool(getattr(args, "strict", False)))
    write(format_table(rows))
    write(summary(rows, args.version))
    if any(r.check == PREFLIGHT and r.result == FAIL for r in rows):
        return ExitCode.PRECONDITION  # the router cannot see what nginx serves: no deploy could be confirmed
    return ExitCode.FAILED if failed(rows) else ExitCode.OK
