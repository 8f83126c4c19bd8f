"""The NGINX traffic router: owns one include file that defines the weighted upstream.

The file is written whole on every change, so nginx.conf only needs
``include .../upstream.conf;`` at http level and ``proxy_pass http://<upstream_name>;``.

Why it looks the way it does:

* nginx refuses ``weight=0``, so the ends are exact by listing only one server: at 0% only
  production is in the upstream, at 100% only the canary.
* In between the weights are ``100 - w`` and ``w``, and the upstream has a shared ``zone``:
  every worker then walks one smooth weighted round-robin state, so out of every 100
  requests exactly ``w`` reach the canary, however the kernel spreads connections across
  workers (and the zone is not reused across reloads, so each change starts clean).
* A reload returns before old workers stop taking connections (the master starts the new
  workers, sleeps 100 ms, then stops the old ones).  The file therefore also maps
  ``$canary_generation`` to an id chosen per change; a tiny location in nginx.conf echoes
  it, and ``apply`` polls that location on fresh connections until only the new id can
  come back (see ``verify_generation``).  Only then does the change count as applied.
* A change is written atomically (temp file in the same directory, fsync, rename, fsync
  the directory) and tested with ``nginx -t`` before any reload; a failed test puts the old
  bytes back and raises ``RouterError`` with nginx's own text.

This module is on the CLI's rollback path: it imports only light stdlib modules.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from console.core.protocols import RouterError

if TYPE_CHECKING:
    from console.core.config import Config

__all__ = [
    "NginxRouter",
    "RouterError",
    "RouterNotVerified",
    "generation_of",
    "http_get",
    "render_upstream",
    "verify_generation",
    "weight_of",
    "write_atomic",
]

HEADER = "# Managed by canary-console: written whole on every change; manual edits are overwritten."

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_ADDRESS = re.compile(r"^(?:unix:/[A-Za-z0-9_./-]+|[A-Za-z0-9_.:\[\]-]+)$")
_GENERATION = re.compile(r"^[A-Za-z0-9_.:@+-]{1,128}$")

DEFAULT_COMMAND_TIMEOUT = 15.0
DEFAULT_VERIFY_INTERVAL = 0.005
DEFAULT_VERIFY_HITS = 1
DEFAULT_VERIFY_BURST = 8
DEFAULT_VERIFY_SETTLE = 0.12  # nginx master: start new workers, sleep 100 ms, stop old ones


class RouterNotVerified(RouterError):
    """nginx was told to reload the new file but did not verifiably serve it in time.

    Unlike a failed ``nginx -t`` or reload, the new file stays: nginx may already serve it
    (a rollback must not be undone by putting the old weights back), so ``restored_weight``
    is None and the file says the new weight."""

    reloaded = True


# --------------------------------------------------------------------------- validation


def check_weight(weight: object) -> int:
    """An int 0..100 (bool is not an int here); ValueError with one clear line otherwise."""
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
        raise ValueError(f"canary weight {weight!r} is not valid; allowed: an integer 0..100")
    return weight


def check_generation(generation: object) -> str:
    """The generation goes inside a quoted nginx string, so only a safe alphabet is allowed."""
    if not isinstance(generation, str) or not _GENERATION.match(generation):
        raise ValueError(
            f"router generation {generation!r} is not valid; allowed: 1-128 characters of A-Z a-z 0-9 _ . : @ + -"
        )
    return generation


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"[nginx] upstream_name = {name!r} is not valid; allowed: letters, digits, _ . - (at most 64)")
    return name


def _check_address(key: str, address: str) -> str:
    """Addresses are written into nginx syntax: refuse anything that could end a directive."""
    if not isinstance(address, str) or not _ADDRESS.match(address):
        raise ValueError(
            f"[nginx] {key} = {address!r} is not valid; allowed: host:port or unix:/path "
            "(no spaces, quotes, ';', '{', '}' or '#')"
        )
    return address


# --------------------------------------------------------------------------- the file


def render_upstream(name: str, production: str, canary: str, weight: int, generation: str) -> str:
    """The whole include file for ``weight`` % canary.  Pure: same input, same bytes."""
    _check_name(name)
    _check_address("production", production)
    _check_address("canary", canary)
    check_weight(weight)
    check_generation(generation)
    lines = [
        HEADER,
        f"# canary-weight: {weight}",
        f"# generation: {generation}",
        "",
        "# A shared zone makes smooth weighted round-robin exact across all workers.",
        f"upstream {name} {{",
        f"    zone {name} 64k;",
    ]
    if weight < 100:
        lines.append(f"    server {production} weight={100 - weight};")
    if weight > 0:
        lines.append(f"    server {canary} weight={weight};")
    lines += [
        "}",
        "",
        "# Echoed by `location = /__canary/generation`: the router polls it to know this file is live.",
        "map $host $canary_generation {",
        f'    default "{generation}";',
        "}",
        "",
    ]
    return "\n".join(lines)


_UPSTREAM_BLOCK = re.compile(r"^\s*upstream\s+(\S+)\s*\{(.*?)\}", re.M | re.S)
_SERVER = re.compile(r"^\s*server\s+(\S+?)((?:\s+[^;\s]+)*)\s*;", re.M)
_GEN_DEFAULT = re.compile(r'map\s+\S+\s+\$canary_generation\s*\{[^}]*?default\s+"?([^";\s]+)"?\s*;', re.S)


def _strip_comments(text: str) -> str:
    return re.sub(r"#[^\n]*", "", text)


def weight_of(text: str, name: str, production: str, canary: str) -> int | None:
    """The canary % an upstream file routes, read from its ``server`` lines (not the comment).

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
        return round(100 * canary_w / total)
    return None


_HEADER_WEIGHT = re.compile(r"^# canary-weight: (\d{1,3})$", re.M)


def _header_weight(text: str) -> int | None:
    """The weight our own header records: the truth about a file we wrote for other addresses."""
    if not text.startswith(HEADER):
        return None
    m = _HEADER_WEIGHT.search(text)
    return int(m.group(1)) if m and int(m.group(1)) <= 100 else None


def generation_of(text: str) -> str | None:
    """The generation id an upstream file maps ``$canary_generation`` to (None: none)."""
    m = _GEN_DEFAULT.search(_strip_comments(text))
    return m.group(1) if m else None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o644, owner: tuple[int, int] | None = None) -> None:
    """Temp file in the same directory, fsync, rename over ``path``, fsync the directory.

    A reader (nginx -t, a human with cat) sees either the old bytes or the new, never a mix.
    Note for containers: bind-mount the directory, not the file, or the rename is invisible.
    """
    directory = path.parent
    tmp = directory / f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)
            if owner is not None and os.geteuid() == 0:
                os.fchown(fd, *owner)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(directory)


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    _fsync_dir(path.parent)


# --------------------------------------------------------------------------- subprocesses


async def run_command(argv: list[str], timeout: float) -> tuple[int, str]:
    """Run argv (no shell) with a timeout; (exit code, combined output).  127: could not start."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as e:
        return 127, f"{argv[0]}: cannot run: {e.strerror or e}"
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException as e:
        _kill_group(proc.pid)
        await proc.wait()
        if isinstance(e, TimeoutError):
            return -1, f"{' '.join(argv)}: timed out after {timeout:g}s"
        raise
    return proc.returncode if proc.returncode is not None else -1, out.decode(errors="replace").strip()


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# --------------------------------------------------------------------------- verification


def _parse_http_url(url: str) -> tuple[str, int, str, str]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"[nginx] verify_url = {url!r} is not valid; allowed: an http:// URL, or empty for no verification")
    host = parts.hostname
    port = parts.port or 80
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    host_header = parts.netloc.rsplit("@", 1)[-1]
    return host, port, path, host_header


async def http_get(host: str, port: int, path: str, host_header: str, timeout: float) -> tuple[int, str]:
    """One GET on a fresh connection (``Connection: close``): (status, body stripped).

    A raw stream instead of an HTTP client: it costs nothing to import and a new
    connection each time is the point (keep-alive would stick to one old worker).
    """

    async def go() -> tuple[int, str]:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\n\r\n".encode("latin-1"))
            raw = await reader.read(65536)
            while True:
                more = await reader.read(65536)
                if not more:
                    break
                raw += more
        finally:
            writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0].split()
        if len(status_line) < 2 or not status_line[1].isdigit():
            raise ValueError(f"not an HTTP response from {host}:{port}")
        return int(status_line[1]), body.decode(errors="replace").strip()

    return await asyncio.wait_for(go(), timeout)


async def _probe(host: str, port: int, path: str, host_header: str, generation: str, timeout: float) -> tuple[bool, str]:
    try:
        status, body = await http_get(host, port, path, host_header, timeout)
    except (OSError, TimeoutError, ValueError) as e:
        return False, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    if status == 200 and body == generation:
        return True, body
    return False, f"HTTP {status}: {body[:200]!r}"


async def verify_generation(
    url: str,
    generation: str,
    timeout: float,
    hits: int = DEFAULT_VERIFY_HITS,
    interval: float = DEFAULT_VERIFY_INTERVAL,
    burst: int = DEFAULT_VERIFY_BURST,
    settle: float = DEFAULT_VERIFY_SETTLE,
    timings: dict[str, float] | None = None,
) -> float:
    """Return once every new connection to ``url`` is served by workers answering ``generation``.

    Why not "the first answer that matches": on reload the nginx master starts the new
    workers, sleeps 100 ms, and only then tells the old ones to stop accepting; in between
    both take connections (with two or more old workers the old ones usually win, with one
    they alternate).  So: poll in bursts of ``burst`` concurrent fresh connections (a burst
    reaches a new worker early, which bounds when the new workers started); once the new
    generation has answered, the old workers are told to quit within ``settle`` seconds
    (100 ms + margin); after that, ``hits`` bursts in a row must all answer the new
    generation.  An old answer after the settle window starts the wait over.

    Returns the seconds spent; raises RouterNotVerified (detail: the last wrong answer) after
    ``timeout``.  ``timings`` (optional) receives ``first_new`` (seconds until the new
    generation first answered) and ``probes`` (connections made).
    """
    host, port, path, host_header = _parse_http_url(url)
    start = time.monotonic()
    deadline = start + timeout
    first_new: float | None = None
    in_a_row = 0
    last = "no answer yet"
    while True:
        sent = time.monotonic()
        per_try = max(0.05, min(1.0, deadline - sent))
        answers = await asyncio.gather(*(_probe(host, port, path, host_header, generation, per_try) for _ in range(burst)))
        now = time.monotonic()
        if timings is not None:
            timings["probes"] = timings.get("probes", 0) + burst
        oks = [ok for ok, _ in answers]
        for ok, text in answers:
            if not ok:
                last = text
        if first_new is None:
            if any(oks):
                first_new = now  # a new worker has answered: it started before now
                if timings is not None:
                    timings["first_new"] = now - start
        elif sent >= first_new + settle:
            if all(oks):
                in_a_row += 1
                if in_a_row >= hits:
                    return now - start
            else:
                # an old worker still accepting after the window: start the wait over
                in_a_row = 0
                first_new = now if any(oks) else None
        if now >= deadline:
            raise RouterNotVerified(
                f"nginx did not verifiably serve generation {generation} at {url} within {timeout:g}s "
                f"(last other answer: {last})",
                detail=last,
            )
        wake = first_new + settle if first_new is not None and now < first_new + settle else now + interval
        await asyncio.sleep(max(0.0, min(wake, deadline) - time.monotonic()))


# --------------------------------------------------------------------------- the router


class NginxRouter:
    """``console.core.protocols.TrafficRouter`` for an nginx that includes ``upstream_file``.

    ``test_command`` / ``reload_command`` are argv lists (for example
    ``["docker", "exec", "fragrance-ai-nginx", "nginx", "-t"]``); ``verify_url`` is the
    generation location ("" = count the change as applied once the reload returns).
    """

    def __init__(
        self,
        upstream_file: Path,
        upstream_name: str,
        production: str,
        canary: str,
        test_command: list[str],
        reload_command: list[str],
        verify_url: str,
        verify_timeout: float = 10.0,
        *,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        verify_hits: int = DEFAULT_VERIFY_HITS,
        verify_interval: float = DEFAULT_VERIFY_INTERVAL,
        verify_burst: int = DEFAULT_VERIFY_BURST,
        verify_settle: float = DEFAULT_VERIFY_SETTLE,
    ) -> None:
        self.upstream_file = Path(upstream_file)
        self.upstream_name = _check_name(upstream_name)
        self.production = _check_address("production", production)
        self.canary = _check_address("canary", canary)
        for key, argv in (("test_command", test_command), ("reload_command", reload_command)):
            if not argv or not all(isinstance(a, str) for a in argv):
                raise ValueError(f"[nginx] {key} = {argv!r} is not valid; allowed: a non-empty argv list of strings")
        self.test_command = list(test_command)
        self.reload_command = list(reload_command)
        if verify_url:
            _parse_http_url(verify_url)
        self.verify_url = verify_url
        if not verify_timeout > 0:
            raise ValueError(f"[nginx] verify_timeout = {verify_timeout!r} is not valid; allowed: seconds > 0")
        self.verify_timeout = float(verify_timeout)
        self.command_timeout = float(command_timeout)
        self.verify_hits = max(1, int(verify_hits))
        self.verify_interval = float(verify_interval)
        self.verify_burst = max(1, int(verify_burst))
        self.verify_settle = max(0.0, float(verify_settle))
        self._lock = asyncio.Lock()
        # cumulative seconds since apply() began at each step (write, test, reload, total) and
        # the verification's first_new / probes: for bench/rollback.py and for the curious
        self.last_timings: dict[str, float] = {}

    @classmethod
    def from_config(cls, cfg: Config) -> NginxRouter:
        n = cfg["nginx"]
        return cls(
            upstream_file=cfg.upstream_file,
            upstream_name=n["upstream_name"],
            production=n["production"],
            canary=n["canary"],
            test_command=list(n["test_command"]),
            reload_command=list(n["reload_command"]),
            verify_url=n["verify_url"],
            verify_timeout=n["verify_timeout"],
        )

    # ---- reading

    def _read(self) -> bytes | None:
        try:
            return self.upstream_file.read_bytes()
        except FileNotFoundError:
            return None

    def _weight_in(self, data: bytes | None) -> int | None:
        if data is None:
            return None
        text = data.decode(errors="replace")
        found = weight_of(text, self.upstream_name, self.production, self.canary)
        return found if found is not None else _header_weight(text)

    def current_weight(self) -> int | None:
        """The canary % the managed file routes now (None: no file, or not an upstream of ours).

        Read from the ``server`` lines for our addresses; a file this console wrote for other
        addresses (the config changed since) is read from its header."""
        try:
            return self._weight_in(self._read())
        except OSError:
            return None

    def current_generation(self) -> str | None:
        data = self._read()
        return generation_of(data.decode(errors="replace")) if data is not None else None

    def render(self, weight: int, generation: str) -> str:
        return render_upstream(self.upstream_name, self.production, self.canary, weight, generation)

    # ---- changing

    async def apply(self, weight: int, generation: str) -> float:
        """Write, ``nginx -t``, reload, verify; the seconds it took.  See the module docstring."""
        check_weight(weight)
        check_generation(generation)
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        self.last_timings = timings
        async with self._lock:
            new = self.render(weight, generation).encode()
            old = self._read()
            mode, owner = 0o644, None
            if old is not None:
                st = self.upstream_file.stat()
                mode, owner = st.st_mode & 0o7777, (st.st_uid, st.st_gid)
            write_atomic(self.upstream_file, new, mode, owner)
            timings["write"] = time.perf_counter() - t0
            try:
                rc, out = await run_command(self.test_command, self.command_timeout)
            except BaseException:
                self._restore(old, mode, owner)
                raise
            timings["test"] = time.perf_counter() - t0
            if rc != 0:
                self._restore(old, mode, owner)
                raise RouterError(
                    f"nginx rejected the upstream file for {weight}% ({_first_error_line(out)}); "
                    f"{self.upstream_file} left as it was, nginx not reloaded",
                    detail=out,
                    restored_weight=self._weight_in(old),
                )
            rc, out = await run_command(self.reload_command, self.command_timeout)
            timings["reload"] = time.perf_counter() - t0
            if rc != 0:
                self._restore(old, mode, owner)
                raise RouterError(
                    f"nginx reload failed for {weight}% ({_first_error_line(out)}); {self.upstream_file} put back as it was",
                    detail=out,
                    restored_weight=self._weight_in(old),
                )
            if self.verify_url:
                # the reload was signalled: on a timeout the new file stays (RouterNotVerified)
                await verify_generation(
                    self.verify_url,
                    generation,
                    self.verify_timeout,
                    self.verify_hits,
                    self.verify_interval,
                    self.verify_burst,
                    self.verify_settle,
                    timings,
                )
        timings["total"] = time.perf_counter() - t0
        return timings["total"]

    def _restore(self, old: bytes | None, mode: int, owner: tuple[int, int] | None) -> None:
        if old is None:
            _remove(self.upstream_file)
        else:
            write_atomic(self.upstream_file, old, mode, owner)


def _first_error_line(out: str) -> str:
    """nginx -t prints the error first and "test failed" last: show the error."""
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    for ln in lines:
        if "[emerg]" in ln or "[alert]" in ln or "[crit]" in ln or "error" in ln.lower():
            return ln
    return lines[0] if lines else "no output"
