"""Dynamic mode (``[nginx] mode = "dynamic"``): weight changes without a reload.

The managed include then defines, besides the upstream (``render.render_upstream``):

* ``lua_shared_dict canary_<name>``: one key ``state`` = ``"<base> <w> <t> <generation>"`` (one
  string, so a worker never reads half a change) and one counter ``n``;
* a ``balancer_by_lua_block`` in the upstream that picks production or the canary per request:
  ``w`` of every ``t`` (100, or 1000 for a weight with a decimal) consecutive values of the shared
  counter go to the canary (``floor((i+1)w/t) > floor(iw/t)``, spread evenly; 0 and ``t`` are
  exact), across all workers, whatever the connections;  with ``[routing] sticky_key`` a request
  with a key goes by ``crc32(key) % t < w`` instead (one key, one version; raising the weight
  only moves keys onto the canary);
* a ``server`` on ``[nginx] dynamic_listen`` (loopback only) whose ``location = /__canary/dynamic``
  answers ``"<generation> <w> <t>"`` (what the balancer uses now) and, to a PUT with ``w``, ``t``
  and ``g`` arguments, sets them first.

The file's own weight and generation are rendered into the Lua as constants, and ``base`` is the
generation of the file nginx loaded: the dict counts only while its ``base`` is the loaded file's
generation.  So after a restart (the dict is empty) or a reload (a new file, a new base) nginx
routes exactly what the file says, and a weight change writes the file first (the source of truth
after a restart), then sets the dict: the traffic never jumps.

Light stdlib only: this is on the CLI's rollback path.
"""

from __future__ import annotations

import time
from urllib.parse import quote

from console.adapters.nginx.probe import RouterNotVerified, http_request, http_response, parse_http_url
from console.core.routing import RouterError

__all__ = [
    "DYNAMIC_PATH",
    "EndpointUnreachable",
    "confirm_dynamic",
    "dynamic_lines",
    "dynamic_url",
    "lua_module_missing",
    "read_dynamic",
    "set_dynamic",
    "totals",
]

DYNAMIC_PATH = "/__canary/dynamic"

# What nginx -t says when the include's Lua directives have no module behind them (or the module
# cannot load lua-resty-core)
_MISSING = ('unknown directive "lua_shared_dict"', 'unknown directive "balancer_by_lua_block"',
            'unknown directive "content_by_lua_block"', "resty.core", "ngx_http_lua_module")


def lua_module_missing(nginx_output: str) -> bool:
    return any(m in nginx_output for m in _MISSING)


def totals(weight: float) -> tuple[int, int]:
    """(canary count, out of) for a weight: per 100, or per 1000 with a decimal (0.1 -> 1 of 1000)."""
    return (weight, 100) if isinstance(weight, int) else (round(weight * 10), 1000)  # type: ignore[return-value]


def dynamic_url(dynamic_listen: str) -> str:
    return f"http://{dynamic_listen}{DYNAMIC_PATH}"


def _peer(address: str) -> tuple[str, str]:
    """(Lua expression of the host, of the port) for ``ngx.balancer.set_current_peer``."""
    if address.startswith("unix:"):
        return _lua_str(address), "nil"
    host, _, port = address.rpartition(":")
    return _lua_str(host.strip("[]")), port


def _lua_str(s: str) -> str:
    # addresses and generations are checked before they get here: no quote, no backslash, no newline
    return '"' + s + '"'


_EFFECTIVE = """\
        local d = ngx.shared["{dict}"]
        local gen, w, t = FILE_GEN, FILE_W, FILE_T
        local raw = d:get("state")
        if raw then
            local b, sw, st, sg = string.match(raw, "^(%S+) (%d+) (%d+) (%S+)$")
            if b == FILE_GEN then gen, w, t = sg, tonumber(sw), tonumber(st) end
        end"""


def dynamic_lines(name: str, production: str, canary: str, weight: float, generation: str, listen: str,
                  sticky: str) -> tuple[list[str], list[str], list[str]]:
    """(http-level lines before the upstream, lines inside it, the endpoint server) of a
    dynamic-mode include."""
    w, t = totals(weight)
    dict_name = f"canary_{name}"
    consts = f"        local FILE_GEN, FILE_W, FILE_T = {_lua_str(generation)}, {w}, {t}"
    effective = _EFFECTIVE.format(dict=dict_name)
    (ph, pp), (ch, cp) = _peer(production), _peer(canary)
    if sticky:
        pick = [
            f"            local key = ngx.var.{sticky[1:]}",
            "            if key and key ~= \"\" then",
            "                canary = ngx.crc32_long(key) % t < w",
            "            else",
            "                local i = d:incr(\"n\", 1, 0) % t",
            "                canary = math.floor((i + 1) * w / t) > math.floor(i * w / t)",
            "            end",
        ]
    else:
        pick = [
            "            local i = d:incr(\"n\", 1, 0) % t",
            "            canary = math.floor((i + 1) * w / t) > math.floor(i * w / t)",
        ]
    before = [
        "# [nginx] mode = \"dynamic\": the weight and generation live in this dict, set through the",
        f"# endpoint on {listen} without a reload; it counts only while its base is this file's generation.",
        f"lua_shared_dict {dict_name} 1m;",
        "# $canary_live_generation is empty in a request the balancer did not route (the generation",
        "# location): $canary_generation is then this file's, and nginx need not warn about it.",
        "uninitialized_variable_warn off;",
        "",
    ]
    inside = [
        "    # the Lua balancer picks the server per request (the weights above are what it starts from)",
        "    balancer_by_lua_block {",
        consts,
        effective,
        "        local canary = w >= t",
        "        if w > 0 and w < t then",
        *pick,
        "        end",
        "        ngx.var.canary_live_generation = gen",
        "        local balancer = require \"ngx.balancer\"",
        f"        local ok, err = balancer.set_current_peer(canary and {ch} or {ph}, canary and {cp} or {pp})",
        "        if not ok then",
        "            ngx.log(ngx.ERR, \"canary-console balancer: \", err)",
        "            return ngx.exit(502)",
        "        end",
        "    }",
    ]
    server = [
        "# [nginx] dynamic_listen: canary-console sets and reads the weight here, on loopback only.",
        "server {",
        f"    listen {listen};",
        "    access_log off;",
        "    default_type text/plain;",
        f"    location = {DYNAMIC_PATH} {{",
        "        content_by_lua_block {",
        consts,
        effective,
        "        local function reply(status, text)",
        "            ngx.status = status",
        "            ngx.header[\"Content-Length\"] = #text + 1",
        "            ngx.print(text, \"\\n\")",
        "        end",
        "        if ngx.req.get_method() == \"PUT\" then",
        "            local a = ngx.req.get_uri_args()",
        "            local nw, nt, ng = tonumber(a.w), tonumber(a.t), a.g",
        "            if not (nt == 100 or nt == 1000) or not nw or nw ~= math.floor(nw) or nw < 0 or nw > nt",
        "                    or type(ng) ~= \"string\" or #ng > 128 or not string.match(ng, \"^[%w_.:@+-]+$\") then",
        "                return reply(400, \"bad weight or generation\")",
        "            end",
        "            local ok, err = d:set(\"state\", FILE_GEN .. \" \" .. nw .. \" \" .. nt .. \" \" .. ng)",
        "            if not ok then",
        "                return reply(500, \"cannot set: \" .. tostring(err))",
        "            end",
        "            gen, w, t = ng, nw, nt",
        "        end",
        "        reply(200, gen .. \" \" .. w .. \" \" .. t)",
        "        }",
        "    }",
        "    location / {",
        "        set $canary_live_generation \"\";  # declares the variable the balancer sets (any server may read it)",
        "        return 404;",
        "    }",
        "}",
        "",
    ]
    return before, inside, server


# --------------------------------------------------------------------------- the client


class EndpointUnreachable(RouterError):
    """The endpoint did not take the change: nothing reached nginx (refused, no such location,
    refused as bad), so nginx still routes what it did."""


async def _request(url: str, method: str, path: str, timeout: float) -> tuple[int, str]:
    """One request on a fresh connection; EndpointUnreachable when it could not connect."""
    import asyncio  # here, not at the top: the CLI's rollback path loads no asyncio

    host, port, _, host_header = parse_http_url(url)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError) as e:
        why = "connection refused" if isinstance(e, ConnectionRefusedError) else f"cannot connect ({e or type(e).__name__})"
        raise EndpointUnreachable(f"{url}: {why}", detail=f"{type(e).__name__}: {e}") from None
    try:
        writer.write(http_request(path, host_header, method))
        raw = await asyncio.wait_for(reader.read(-1), timeout)
    finally:
        writer.close()
    return http_response(raw, host, port)


def _parse(body: str) -> tuple[str, int, int] | None:
    parts = body.split()
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    return parts[0], int(parts[1]), int(parts[2])


async def read_dynamic(url: str, timeout: float = 2.0) -> tuple[str, int, int] | None:
    """(generation, w, t) the endpoint answers now; None for anything else.  Raises
    EndpointUnreachable when nothing listens."""
    _, _, path, _ = parse_http_url(url)
    status, body = await _request(url, "GET", path, timeout)
    return _parse(body) if status == 200 else None


async def set_dynamic(url: str, weight: float, generation: str, timeout: float) -> str:
    """PUT the weight and generation; the endpoint's answer.  EndpointUnreachable when nginx did
    not take it (could not connect, 404: no dynamic include loaded, 400); RouterNotVerified when
    it may have (no answer, or another one)."""
    w, t = totals(weight)
    _, _, path, _ = parse_http_url(url)
    try:
        status, body = await _request(url, "PUT", f"{path}?w={w}&t={t}&g={quote(generation, safe='')}", timeout)
    except EndpointUnreachable:
        raise
    except (OSError, TimeoutError, ValueError) as e:
        raise RouterNotVerified(f"{url} did not answer the change to {generation} ({type(e).__name__}: {e})",
                                detail=str(e), answer=type(e).__name__) from None
    if status in (400, 404, 405):
        raise EndpointUnreachable(f"{url} answered HTTP {status} ({body[:80]!r})", detail=body)
    if status != 200 or _parse(body) != (generation, w, t):
        raise RouterNotVerified(f"{url} answered HTTP {status} {body[:80]!r} to the change to {generation}",
                                detail=body, answer=f"HTTP {status}: {body[:60]!r}")
    return body


async def confirm_dynamic(url: str, weight: float | None, generation: str, timeout: float, burst: int,
                          interval: float, timings: dict[str, float] | None = None) -> float:
    """Return once ``burst`` fresh connections at once all read back ``generation`` (at ``weight``,
    unless None): every worker they reach routes it.  RouterNotVerified after ``timeout``."""
    import asyncio

    want = (generation, *totals(weight)) if weight is not None else None
    start = time.monotonic()
    deadline = start + timeout
    last = "no answer yet"
    while True:
        answers = await asyncio.gather(*(read_dynamic(url, max(0.05, deadline - time.monotonic()))
                                         for _ in range(burst)), return_exceptions=True)
        if timings is not None:
            timings["probes"] = timings.get("probes", 0) + burst
        ok = True
        for a in answers:
            good = isinstance(a, tuple) and (a == want if want else a[0] == generation)
            if not good:
                ok = False
                last = str(a) if isinstance(a, BaseException) else (" ".join(map(str, a)) if a else "another answer")
        if ok:
            return time.monotonic() - start
        if time.monotonic() >= deadline:
            raise RouterNotVerified(
                f"nginx did not confirm generation {generation} at {url} within {timeout:g}s (last other answer: {last})",
                detail=last, answer=last[:60])
        await asyncio.sleep(interval)
