"""`canary-console init`: read an operator's hand-written upstream file, decide whether the
router can take it over without moving traffic, and say what nginx.conf still needs.

Pure functions over text (the command reads the file and runs nginx).  A refusal is
``Refused``, one line: what, where, what is allowed.

What is accepted, and why:

* **Comments and one ``upstream`` block, named ``[nginx] upstream_name``.**  The router writes
  the file whole, so anything else in it (a ``map``, a ``server``, a second upstream) would be
  dropped on the first change: it is refused, to be moved to nginx.conf first.
* **In the upstream: ``server`` lines and ``zone``.**  The managed file has its own
  ``zone <name> 64k`` (one round-robin shared by all workers).  Directives that change how nginx
  balances (``hash``, ``ip_hash``, ``least_conn``, ``random``, ...) are refused: the console's
  split is plain weighted round-robin.  Others (``keepalive``, ``resolver``, ...) are refused
  because the managed file would drop them.
* **One or two servers: production, and optionally the canary,** each at most once, neither
  ``backup`` nor ``down``.  Server parameters: ``weight=`` (kept, as a percent),
  ``max_fails=`` and ``fail_timeout=`` (accepted but not kept: they only decide when nginx
  skips a failing server, never the split; the result lists them, and nginx's defaults
  ``max_fails=1 fail_timeout=10s`` apply afterwards).  Anything else (``max_conns=``,
  ``slow_start=``, ``resolve``, ...) is refused.
* **The addresses must be the config's.**  A file with other addresses is refused, with a line
  that names the file's addresses, the config's, and which key to set.  The config is the one
  source every other command reads (``weights``, ``deploy``, health, scrape, docker): adopting
  the file's addresses behind its back would make the next ``weights`` rewrite the upstream with
  the config's addresses, which moves traffic to other backends.
* **The canary weight is exact:** ``100 * w_canary / (w_production + w_canary)`` must be a whole
  number (95/5 is 5%, 1/1 is 50%).  The managed file can only route whole percents; rounding
  2/1 (33.3%) to 33% would move traffic while claiming to adopt it, so such weights are refused
  with the nearest exact pair.  One server alone is 0% (production) or 100% (canary).
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from console.adapters.nginx.render import GENERATION_LOCATION, HEADER, check_address, listen_url

__all__ = [
    "Adoption",
    "Directive",
    "Refused",
    "Server",
    "adopt",
    "canary_percent",
    "confirmation",
    "decode",
    "dump_command",
    "included_as",
    "is_managed",
    "next_steps",
    "parse",
]

MAX_BYTES = 1 << 20  # an upstream file is a few hundred bytes; anything past 1 MiB is not one

ALLOWED_FILE = "allowed: a hand-written nginx file with one upstream block (comments are fine)"
ALLOWED_UPSTREAM = "allowed in the upstream: server lines (weight=, max_fails=, fail_timeout=) and zone"
ALLOWED_PARAMS = "allowed server parameters: weight=, max_fails=, fail_timeout="

# directives that change which server nginx picks: the console's split needs plain weighted round-robin
BALANCING = frozenset({"hash", "ip_hash", "least_conn", "least_time", "random", "sticky", "queue", "ntlm"})
KEPT_NOWHERE = ("max_fails", "fail_timeout")  # accepted, not written again (nginx's defaults apply)


class Refused(ValueError):
    """The file cannot be adopted as it is: one line, what, where and what is allowed."""


@dataclass(frozen=True)
class Directive:
    name: str
    args: tuple[str, ...]
    line: int
    block: tuple[Directive, ...] | None = None


@dataclass(frozen=True)
class Server:
    address: str
    weight: int
    line: int
    dropped: tuple[str, ...] = ()  # parameters the managed file does not write again


@dataclass(frozen=True)
class Adoption:
    """What the hand-written file routes, as the managed file will route it."""

    weight: int  # canary %
    servers: tuple[Server, ...]
    dropped: tuple[str, ...]  # "127.0.0.1:8000 max_fails=3", "zone backend 32k": not kept


# --------------------------------------------------------------------------- bytes and syntax


def is_managed(text: str) -> bool:
    """A file canary-console wrote (render.HEADER): nothing to adopt."""
    return text.startswith(HEADER)


def decode(data: bytes, where: str) -> str:
    """The file as text; Refused when it is not (NUL, invalid UTF-8, control characters)."""
    if len(data) > MAX_BYTES:
        raise Refused(f"{where} is larger than {MAX_BYTES // 1024} KiB, so it is not an upstream file; {ALLOWED_FILE}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Refused(f"{where} is not a text file (byte 0x{data[e.start]:02x} at offset {e.start} is not UTF-8); "
                      f"{ALLOWED_FILE}") from None
    bad = re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", text)
    if bad:
        raise Refused(f"{where} is not a text file (control character 0x{ord(bad.group()):02x} at offset {bad.start()}); "
                      f"{ALLOWED_FILE}")
    return text


_PUNCT = frozenset(";{}")


def _tokens(text: str, where: str) -> list[tuple[str, str, int]]:
    """nginx's lexer, enough for an upstream file: (kind, value, line), kind "word" or "punct";
    ``#`` starts a comment where a token would start; quotes group a word."""
    out: list[tuple[str, str, int]] = []
    i, line, n = 0, 1, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c.isspace():
            i += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c in _PUNCT:
            out.append(("punct", c, line))
            i += 1
        elif c in "\"'":
            start, j, buf = line, i + 1, []
            while j < n and text[j] != c:
                if text[j] == "\\" and j + 1 < n:
                    j += 1
                if text[j] == "\n":
                    line += 1
                buf.append(text[j])
                j += 1
            if j >= n:
                raise Refused(f"{where}:{start}: a quote that is never closed, so nginx cannot read it; {ALLOWED_FILE}")
            out.append(("word", "".join(buf), start))
            i = j + 1
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in _PUNCT:
                j += 1
            out.append(("word", text[i:j], line))
            i = j
    return out


def parse(text: str, where: str) -> tuple[Directive, ...]:
    """The directives of an nginx file, blocks nested; Refused on what nginx could not parse."""
    toks = _tokens(text, where)
    pos = 0

    def syntax(line: int, what: str) -> Refused:
        return Refused(f"{where}:{line}: {what}, so it is not a file nginx accepts; {ALLOWED_FILE}")

    def block(depth: int, opened: int) -> tuple[Directive, ...]:
        nonlocal pos
        items: list[Directive] = []
        words: list[tuple[str, int]] = []
        while pos < len(toks):
            kind, value, line = toks[pos]
            pos += 1
            if kind == "word":
                words.append((value, line))
                continue
            if value == "}":
                if words:
                    raise syntax(words[0][1], f"`{words[0][0]}` has no `;` before the `}}`")
                if depth == 0:
                    raise syntax(line, "a `}` that closes nothing")
                return tuple(items)
            if not words:
                raise syntax(line, f"a `{value}` with no directive before it")
            name, first = words[0]
            args = tuple(w for w, _ in words[1:])
            words = []
            items.append(Directive(name, args, first, block(depth + 1, line) if value == "{" else None))
        if words:
            raise syntax(words[0][1], f"`{words[0][0]}` has no `;` at the end")
        if depth:
            raise syntax(opened, "a `{` that is never closed")
        return tuple(items)

    return block(0, 0)


# --------------------------------------------------------------------------- the upstream


def canary_percent(production_weight: int, canary_weight: int) -> int | None:
    """The canary's whole percent of the two weights, or None when it is not a whole number."""
    total = production_weight + canary_weight
    if total <= 0 or (100 * canary_weight) % total:
        return None
    return 100 * canary_weight // total


def _server(d: Directive, where: str) -> Server:
    if d.block is not None or not d.args:
        raise Refused(f"{where}:{d.line}: `server` in an upstream takes an address and parameters; {ALLOWED_UPSTREAM}")
    address, weight, dropped = d.args[0], 1, []
    try:
        check_address("server", address)
    except ValueError:
        raise Refused(f"{where}:{d.line}: server address {address!r} is not one canary-console can write; "
                      "allowed: host:port or unix:/path (no spaces, quotes, ';', '{', '}' or '#')") from None
    for p in d.args[1:]:
        key, eq, value = p.partition("=")
        if key == "weight" and eq:
            if not re.fullmatch(r"[1-9]\d{0,5}", value):
                raise Refused(f"{where}:{d.line}: `weight={value}` on {address} is not valid; allowed: weight=1 or more")
            weight = int(value)
        elif key in KEPT_NOWHERE and eq and value:
            dropped.append(p)
        else:
            why = {"backup": "the managed file has no backup servers", "down": "remove the server line instead"}.get(
                key, "the managed file would drop it")
            raise Refused(f"{where}:{d.line}: server parameter `{p}` on {address} is not supported ({why}); {ALLOWED_PARAMS}")
    return Server(address, weight, d.line, tuple(dropped))


def _upstream(text: str, where: str, name: str) -> Directive:
    tops = parse(text, where)
    for d in tops:
        if d.name != "upstream":
            raise Refused(f"{where}:{d.line}: `{d.name}` outside the upstream block would be dropped (canary-console "
                          f"writes this file whole); {ALLOWED_FILE} (move `{d.name}` to nginx.conf)")
        if d.block is None or len(d.args) != 1:
            raise Refused(f"{where}:{d.line}: `upstream` needs one name and a block; {ALLOWED_FILE}")
    if not tops:
        raise Refused(f"{where} has no upstream block; {ALLOWED_FILE}, named as [nginx] upstream_name = \"{name}\"")
    mine = [d for d in tops if d.args[0] == name]
    if not mine:
        if len(tops) == 1:
            found = tops[0].args[0]
            raise Refused(f"{where}:{tops[0].line}: the upstream is `{found}`, but [nginx] upstream_name = \"{name}\"; "
                          f"allowed: the name nginx.conf proxies to, in the config (set [nginx] upstream_name = \"{found}\")")
        names = ", ".join(f"{d.args[0]} (line {d.line})" for d in tops)
        raise Refused(f"{where}: upstream blocks {names}, none named {name} ([nginx] upstream_name); "
                      "allowed: one upstream block, the one [nginx] upstream_name names")
    if len(tops) > 1:
        extra = next(d for d in tops if d is not mine[0])
        raise Refused(f"{where}:{extra.line}: a second upstream block `{extra.args[0]}` besides {name} would be dropped "
                      f"(canary-console writes this file whole); allowed: only upstream {name} (move the others to nginx.conf)")
    return mine[0]


def adopt(text: str, where: str, name: str, production: str, canary: str, config: str = "the config") -> Adoption:
    """What the hand-written ``text`` routes, checked against the config; Refused otherwise.

    ``where``: the file's path, for the messages; ``config``: the config file's, likewise."""
    up = _upstream(text, where, name)
    assert up.block is not None
    servers: list[Server] = []
    dropped: list[str] = []
    for d in up.block:
        if d.block is not None:
            raise Refused(f"{where}:{d.line}: a `{d.name} {{...}}` block inside upstream {name}; {ALLOWED_UPSTREAM}")
        if d.name == "server":
            servers.append(_server(d, where))
        elif d.name == "zone":
            if not 1 <= len(d.args) <= 2:
                raise Refused(f"{where}:{d.line}: `zone` takes a name and a size; {ALLOWED_UPSTREAM}")
            if d.args != (name, "64k"):
                dropped.append(f"zone {' '.join(d.args)} (the managed file has zone {name} 64k)")
        elif d.name in BALANCING:
            raise Refused(f"{where}:{d.line}: `{d.name}` changes how nginx balances upstream {name}, and the canary "
                          f"split needs plain weighted round-robin; {ALLOWED_UPSTREAM}")
        else:
            raise Refused(f"{where}:{d.line}: `{d.name}` in upstream {name} would be dropped (the managed file has "
                          f"only zone and server lines); {ALLOWED_UPSTREAM}")
    if not servers:
        raise Refused(f"{where}:{up.line}: upstream {name} has no server; allowed: a production server "
                      "and at most one canary server")
    if len(servers) > 2:
        lines = ", ".join(str(s.line) for s in servers)
        raise Refused(f"{where}:{up.line}: upstream {name} has {len(servers)} servers (lines {lines}); "
                      "allowed: a production server and at most one canary server")
    if len(servers) == 2 and servers[0].address == servers[1].address:
        raise Refused(f"{where}:{servers[1].line}: server {servers[1].address} is listed twice; "
                      "allowed: a production server and at most one canary server")
    _check_addresses(servers, where, name, production, canary, config)
    by = {s.address: s for s in servers}
    wp = by[production].weight if production in by else 0
    wc = by[canary].weight if canary in by else 0
    weight = canary_percent(wp, wc)
    if weight is None:
        r = min(99, max(1, round(100 * wc / (wp + wc))))
        raise Refused(f"{where}: weights {wp} ({production}) and {wc} ({canary}) give the canary "
                      f"{100 * wc / (wp + wc):.2f}%, not a whole percent, and the managed file routes whole percents; "
                      f"allowed: weights whose canary share is exact, e.g. weight={100 - r} and weight={r} for {r}%")
    for s in servers:
        if s.dropped:
            dropped.append(f"{s.address} {' '.join(s.dropped)}")
    return Adoption(weight, tuple(servers), tuple(dropped))


def _check_addresses(servers: list[Server], where: str, name: str, production: str, canary: str, config: str) -> None:
    addrs = [s.address for s in servers]
    if all(a in (production, canary) for a in addrs):
        return
    has = " and ".join(f"{s.address} (weight {s.weight})" for s in servers)
    if len(servers) == 1:
        fix = f'production = "{addrs[0]}"'
    elif production in addrs:
        fix = f'canary = "{next(a for a in addrs if a != production)}"'
    elif canary in addrs:
        fix = f'production = "{next(a for a in addrs if a != canary)}"'
    else:
        heavy, light = sorted(servers, key=lambda s: -s.weight)
        fix = (f'production = "{heavy.address}" and canary = "{light.address}"' if heavy.weight != light.weight
               else f'production and canary to "{addrs[0]}" and "{addrs[1]}", in that order or the other')
    raise Refused(f"{where}: upstream {name} has {has}, but {config} has [nginx] production = \"{production}\", "
                  f"canary = \"{canary}\"; allowed: the file's addresses in the config (set [nginx] {fix})")


# --------------------------------------------------------------------------- what nginx.conf has


def dump_command(test_command: list[str]) -> list[str] | None:
    """``nginx -T`` from ``[nginx] test_command`` (its ``-t`` after the nginx binary becomes
    ``-T``: test and dump every file nginx reads); None when there is no such ``-t``."""
    for i in range(len(test_command) - 1, 0, -1):
        if test_command[i] == "-t" and any(posixpath.basename(a) == "nginx" for a in test_command[:i]):
            return [*test_command[:i], "-T", *test_command[i + 1:]]
    return None


_DUMP_FILE = re.compile(r"^# configuration file (.+):$", re.M)


def included_as(dump: str, path: str, text: str) -> str | None:
    """The name nginx reads the upstream file under, from ``nginx -T`` output: ``path`` itself,
    or a file with the same content (another mount, as in a container); None: not included."""
    parts = _DUMP_FILE.split(dump)
    files = list(zip(parts[1::2], parts[2::2], strict=True))
    if any(p == path for p, _ in files):
        return path
    want = text.strip("\n")
    return next((p for p, body in files if body.strip("\n") == want), None)


def confirmation(verify_url: str, verify_listen: str, included: bool | None) -> str:
    """Why the first managed file cannot be verified ("" when it can).

    Only ``verify_listen`` can confirm it: its generation server is in the file itself.  A
    ``location`` in nginx.conf that echoes ``$canary_generation`` cannot exist yet, because only
    the managed file defines that variable (a hand-written file that did is refused as foreign)
    and nginx -t refuses an unknown variable; waiting for it would only time out."""
    if not verify_url:
        return "verification is off ([nginx] verify_url is empty)"
    if included is False:
        return "nginx.conf does not include the file yet"
    if verify_listen and verify_url == listen_url(verify_listen):
        return ""
    return (f"{verify_url} needs the generation location in nginx.conf, which can only be added now that this file "
            "defines $canary_generation")


def next_steps(path: str, included: bool | None, included_path: str | None, verify_url: str, verify_listen: str,
               verified: bool, weight: int, config: str, example_listen: str) -> list[str]:
    """What the operator still adds, one line each ([] when nothing)."""
    if verified:
        return []
    steps: list[str] = []
    if included is False:
        steps.append(f"add to nginx.conf, at http level: include {path};")
    elif included is None:
        steps.append(f"nginx.conf must include the file at http level (add it unless it is there): include {path};")
    elif included_path and included_path != path:
        steps.append(f"(nginx.conf includes it already, as {included_path})")
    own_server = bool(verify_listen) and verify_url == listen_url(verify_listen)
    if not own_server:
        where = f"the server that {verify_url} reaches" if verify_url else "a server on loopback (and set [nginx] verify_url)"
        steps.append(f"add to {where}: {GENERATION_LOCATION}")
        steps.append(f'or instead set in {config}: [nginx] verify_listen = "{example_listen}" (the file then serves the '
                     "generation itself, and nginx.conf needs only the include)")
    steps.append(f"then reload nginx and run `canary-console weights {weight}`: the same split, confirmed once nginx "
                 "verifiably serves it")
    return steps
