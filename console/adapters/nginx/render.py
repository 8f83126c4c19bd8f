"""The managed include file: render it, read it back, and check what goes into it.

Pure functions over text (no I/O).  Why the file looks the way it does:

* nginx refuses ``weight=0``, so the ends are exact by listing only one server: at 0% only
  production is in the upstream, at 100% only the canary.
* In between the weights are ``100 - w`` and ``w``, and the upstream has a shared ``zone``:
  every worker then walks one smooth weighted round-robin state, so out of every 100
  requests exactly ``w`` reach the canary, however the kernel spreads connections across
  workers (and the zone is not reused across reloads, so each change starts clean).  A
  weight with a decimal (0.1) is written per 1000 instead: ``1000 - 10w`` and ``10w``.
* The file also maps ``$canary_generation`` to an id chosen per change.  A location echoes
  it, and the router polls that location until only the new id comes back.  The location
  is either in nginx.conf (``GENERATION_LOCATION``) or, with ``[nginx] verify_listen``, in a
  small loopback-only ``server`` this file defines itself.
* With a shadow stage configured (``[rollout] shadow_period``) the file also defines
  ``upstream <name>__canary`` and ``$canary_shadow`` (1 while the shadow stage is live): nginx.conf's
  ``location = /__canary/mirror`` (``mirror_location``) copies every request there only then.
"""

from __future__ import annotations

import re

from console.adapters.nginx.dynamic import dynamic_lines
from console.core.config import (
    LOOPBACK_LISTEN_ALLOWED,
    NAME_ALLOWED,
    NGINX_NAME,
    WEIGHT_ALLOWED,
    address_problem,
    is_weight,
    normalize_weight,
    parse_loopback_listen,
    routing_problem,
)

__all__ = [
    "GENERATION_LOCATION",
    "GENERATION_PATH",
    "HEADER",
    "MIRROR_PATH",
    "check_address",
    "check_dynamic_listen",
    "check_generation",
    "check_name",
    "check_override",
    "check_sticky_key",
    "check_verify_listen",
    "check_weight",
    "generation_of",
    "header_weight",
    "listen_url",
    "mirror_location",
    "shadow_of",
    "render_upstream",
    "weight_of",
]

HEADER = "# Managed by canary-console: written whole on every change; manual edits are overwritten."

GENERATION_PATH = "/__canary/generation"

# The location nginx/nginx.canary.conf has, on one line: what an operator adds to the server
# that verify_url reaches (tests/test_nginx_golden.py checks that the shipped conf has it).
GENERATION_LOCATION = (
    f"location = {GENERATION_PATH} {{ allow 127.0.0.1; allow ::1; deny all; access_log off; "
    'default_type text/plain; return 200 "$canary_generation\\n"; }'
)

MIRROR_PATH = "/__canary/mirror"


def mirror_location(name: str) -> str:
    """What an operator adds for a shadow stage, on two lines: in the proxied location, and
    beside it in the same server (docs/router.md, "Shadow stage")."""
    return (
        f"mirror {MIRROR_PATH}; mirror_request_body on;\n"
        f"location = {MIRROR_PATH} {{ internal; if ($canary_shadow = 0) {{ return 204; }} "
        f"proxy_pass http://{name}__canary$request_uri; }}"
    )


_GENERATION = re.compile(r"^[A-Za-z0-9_.:@+-]{1,128}$")


# --------------------------------------------------------------------------- validation


def check_weight(weight: object) -> int | float:
    """A weight as ``normalize_weight`` keeps it: an int 0..100, or a float 0..100 with one
    decimal that is not whole (0.1, never 5.0; bool is not a number here); ValueError with
    one clear line otherwise."""
    n = normalize_weight(weight) if is_weight(weight) else None  # type: ignore[arg-type]
    if n is None or n != weight or type(n) is not type(weight):
        raise ValueError(f"canary weight {weight!r} is not valid; allowed: {WEIGHT_ALLOWED} (a whole one as an integer)")
    return n


def check_generation(generation: object) -> str:
    """The generation goes inside a quoted nginx string, so only a safe alphabet is allowed."""
    if not isinstance(generation, str) or not _GENERATION.match(generation):
        raise ValueError(
            f"router generation {generation!r} is not valid; allowed: 1-128 characters of A-Z a-z 0-9 _ . : @ + -"
        )
    return generation


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NGINX_NAME.fullmatch(name):
        raise ValueError(f"[nginx] upstream_name = {name!r} is not valid; allowed: {NAME_ALLOWED}")
    return name


def check_address(key: str, address: str) -> str:
    """Addresses are written into nginx syntax: refuse anything that could end a directive
    (core's rule, ``address_problem``: config loading refuses the same addresses first)."""
    problem = address_problem(address)
    if problem:
        raise ValueError(f"[nginx] {key} = {address!r} is not valid; allowed: {problem}")
    return address


def check_verify_listen(value: str) -> str:
    """``[nginx] verify_listen`` as nginx's ``listen`` wants it ("" = off): ``127.0.0.1:8089``,
    ``[::1]:8089``; ``localhost`` becomes 127.0.0.1 (one address, whatever /etc/hosts says).
    ValueError with one line otherwise; only loopback is allowed."""
    if value == "":
        return ""
    try:
        host, port = parse_loopback_listen(value)
    except ValueError as e:
        raise ValueError(f"[nginx] verify_listen = {value!r} is not valid ({e}); allowed: {LOOPBACK_LISTEN_ALLOWED}") from None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_dynamic_listen(value: str) -> str:
    """``[nginx] dynamic_listen``: the same rules as ``verify_listen`` (loopback "host:port", "" = off)."""
    try:
        return check_verify_listen(value)
    except ValueError as e:
        raise ValueError(str(e).replace("verify_listen", "dynamic_listen", 1)) from None


def listen_url(verify_listen: str) -> str:
    """The generation URL of the server the include defines for ``verify_listen``."""
    return f"http://{check_verify_listen(verify_listen)}{GENERATION_PATH}"


# --------------------------------------------------------------------------- the file


def render_upstream(
    name: str, production: str, canary: str, weight: float, generation: str, verify_listen: str = "", *,
    sticky_key: str = "", override_header: str = "", override_cookie: str = "", shadow: bool | None = None,
    dynamic_listen: str = "",
) -> str:
    """The whole include file for ``weight`` % canary.  Pure: same input, same bytes.

    A whole weight is written per 100 (``100 - w`` and ``w``), one with a decimal per 1000
    (``1000 - 10w`` and ``10w``: 0.1% is 999 and 1), so the split is exact per 100 or per 1000
    requests.

    ``verify_listen`` ("host:port" on loopback): the file also defines a ``server`` there
    whose ``location = /__canary/generation`` echoes the same ``$canary_generation``, so
    nginx.conf needs nothing but the ``include``.

    ``sticky_key`` (an nginx variable, e.g. ``$cookie_session``): between the ends the
    upstream hashes on it (``hash $key``: nginx picks ``crc32(key) % 100`` within the weights,
    production listed first), so one key stays on one version within a stage, the share of
    keys on the canary is the weight, and raising the weight only moves keys onto the canary
    (a key on the canary at 5% is still there at 25%).  0% and 100% stay exact: only one
    server is listed there.

    ``override_header`` / ``override_cookie`` (names): a tester's ``always`` reaches the
    canary and ``never`` production, at every weight, through ``$<name>_route``: nginx.conf
    then proxies to ``http://$<name>_route`` (see docs/router.md); the header wins.

    ``shadow``: None = no shadow stage configured (nothing more); False or True = the file also
    defines ``upstream <name>__canary`` (once, whatever the override defines) and maps
    ``$canary_shadow`` to 0 or 1, which nginx.conf's mirror location reads.

    ``dynamic_listen`` ("host:port" on loopback, "" = reload mode): ``[nginx] mode = "dynamic"``,
    the file also defines the shared dict, the Lua balancer in the upstream and the endpoint
    server there (``console.adapters.nginx.dynamic``); the server lines stay what they would be,
    so the file reads back the same way."""
    check_name(name)
    check_address("production", production)
    check_address("canary", canary)
    check_weight(weight)
    check_generation(generation)
    listen = check_verify_listen(verify_listen)
    sticky = check_sticky_key(sticky_key)
    header, cookie = check_override("override_header", override_header), check_override("override_cookie", override_cookie)
    dyn = check_dynamic_listen(dynamic_listen)
    before, inside, dyn_server = dynamic_lines(name, production, canary, weight, generation, dyn, sticky) if dyn else ([], [], [])
    lines = [
        HEADER,
        f"# canary-weight: {weight}",
        f"# generation: {generation}",
        "",
        *before,
        "# The Lua balancer below picks per request; the server lines are what the file routes."
        if dyn else "# A shared zone makes smooth weighted round-robin exact across all workers.",
        f"upstream {name} {{",
        f"    zone {name} 64k;",
    ]
    if sticky and 0 < weight < 100 and not dyn:
        lines.append(f"    hash {sticky};  # [routing] sticky_key: one key, one version (see below)")
    total, canary_w = (100, weight) if isinstance(weight, int) else (1000, round(weight * 10))
    if weight < 100:
        lines.append(f"    server {production} weight={total - canary_w};")
    if weight > 0:
        lines.append(f"    server {canary} weight={canary_w};")
    lines += [
        *inside,
        "}",
        "",
        *_override_lines(name, production, canary, header, cookie),
        *_shadow_lines(name, canary, shadow, defined=bool(header or cookie)),
        f"# Echoed by `location = {GENERATION_PATH}`: the router polls it to know this file is live.",
        *([
            "# mode = \"dynamic\": a request the balancer routed logs the generation it routed by (set below).",
            "map $canary_live_generation $canary_generation {",
            f'    default "{generation}";',
            '    "~." $canary_live_generation;',
            "}",
        ] if dyn else [
            "map $host $canary_generation {",
            f'    default "{generation}";',
            "}",
        ]),
        "",
    ]
    if listen:
        lines += [
            "# [nginx] verify_listen: the generation endpoint, on loopback only, so that nginx.conf",
            "# needs nothing but the include of this file at http level.",
            "server {",
            f"    listen {listen};",
            "    access_log off;",
            "    default_type text/plain;",
            f"    location = {GENERATION_PATH} {{",
            '        return 200 "$canary_generation\\n";',
            "    }",
            "    location / {",
            "        return 404;",
            "    }",
            "}",
            "",
        ]
    return "\n".join(lines + dyn_server)


def _override_lines(name: str, production: str, canary: str, header: str, cookie: str) -> list[str]:
    """Upstreams of one version each, and ``$<name>_route``: the tester's choice, else the split."""
    if not header and not cookie:
        return []
    h = f"$http_{header.lower().replace('-', '_')}" if header else ""
    c = f"$cookie_{cookie}" if cookie else ""
    return [
        "# [routing] override_header / override_cookie: always = canary, never = production, at any",
        f"# weight; nginx.conf proxies to http://${name}_route for this to apply.",
        f"upstream {name}__canary {{",
        f"    server {canary};",
        "}",
        f"upstream {name}__production {{",
        f"    server {production};",
        "}",
        f'map "{h}:{c}" ${name}_route {{',
        f"    default {name};",
        f'    "~^always:" {name}__canary;',
        f'    "~^never:" {name}__production;',
        f'    "~:always$" {name}__canary;',
        f'    "~:never$" {name}__production;',
        "}",
        "",
    ]


def _shadow_lines(name: str, canary: str, shadow: bool | None, defined: bool) -> list[str]:
    """The canary alone (unless the override defined it) and ``$canary_shadow``: the mirror's switch."""
    if shadow is None:
        return []
    lines = ["# [rollout] shadow_period: nginx.conf's `location = /__canary/mirror` proxies to the canary alone."]
    if not defined:
        lines += [f"upstream {name}__canary {{", f"    server {canary};", "}"]
    return lines + [
        "# 1 while the shadow stage is live: every request is mirrored to the canary, its answers discarded.",
        "map $host $canary_shadow {",
        f"    default {1 if shadow else 0};",
        "}",
        "",
    ]


def check_sticky_key(value: str) -> str:
    """``[routing] sticky_key``: one nginx variable (``$cookie_session``, ``$remote_addr``), or ""."""
    return _check_routing("sticky_key", value)


def check_override(key: str, value: str) -> str:
    """``[routing] override_header`` (a header name) / ``override_cookie`` (a cookie name), or ""."""
    return _check_routing(key, value)


def _check_routing(key: str, value: str) -> str:
    problem = routing_problem(key, value)
    if problem:
        raise ValueError(f"[routing] {key} = {value!r} is not valid; allowed: {problem}")
    return value


_UPSTREAM_BLOCK = re.compile(r"^\s*upstream\s+(\S+)\s*\{(.*?)\}", re.M | re.S)
_SERVER = re.compile(r"^\s*server\s+(\S+?)((?:\s+[^;\s]+)*)\s*;", re.M)
_GEN_DEFAULT = re.compile(r'map\s+\S+\s+\$canary_generation\s*\{[^}]*?default\s+"?([^";\s]+)"?\s*;', re.S)
_SHADOW_DEFAULT = re.compile(r"map\s+\S+\s+\$canary_shadow\s*\{[^}]*?default\s+([01])\s*;", re.S)
_HEADER_WEIGHT = re.compile(r"^# canary-weight: (\d{1,3}(?:\.\d)?)$", re.M)


def _strip_comments(text: str) -> str:
    return re.sub(r"#[^\n]*", "", text)


def weight_of(text: str, name: str, production: str, canary: str) -> int | float | None:
    """The canary % an upstream file routes, read from its ``server`` lines (not the comment),
    to one decimal (``normalize_weight``): a per-1000 file (999/1) reads back as 0.1 exactly.

    Works for the seed's hand-written files too.  None when the upstream is missing, names a
    server that is neither production nor canary, or has no live server.
    """
    for m in _UPSTREAM_BLOCK.finditer(_strip_comments(text)):
        if m.group(1) != name:
            continue
        prod_w = canary_w = 0
        for s in _SERVER.finditer(m.group(2)):
            address, params = s.group(1), s.group(2).split()
            if "down" in params or "backup" in params:
                continue
            w = 1
            for p in params:
                if p.startswith("weight="):
                    try:
                        w = int(p[7:])
                    except ValueError:
                        return None
            if address == production:
                prod_w += w
            elif address == canary:
                canary_w += w
            else:
                return None
        total = prod_w + canary_w
        if total <= 0:
            return None
        return normalize_weight(round(1000 * canary_w / total) / 10)
    return None


def header_weight(text: str) -> int | float | None:
    """The weight our own header records: the truth about a file we wrote for other addresses."""
    if not text.startswith(HEADER):
        return None
    m = _HEADER_WEIGHT.search(text)
    return normalize_weight(float(m.group(1))) if m and float(m.group(1)) <= 100 else None


def generation_of(text: str) -> str | None:
    """The generation id an upstream file maps ``$canary_generation`` to (None: none)."""
    m = _GEN_DEFAULT.search(_strip_comments(text))
    return m.group(1) if m else None


def shadow_of(text: str) -> bool | None:
    """Whether a file maps ``$canary_shadow`` to 1 (None: it has no shadow map)."""
    m = _SHADOW_DEFAULT.search(_strip_comments(text))
    return m.group(1) == "1" if m else None
