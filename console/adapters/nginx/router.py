"""The NGINX traffic router: owns one include file that defines the weighted upstream.

The file is written whole on every change, so nginx.conf only needs
``include .../upstream.conf;`` at http level and ``proxy_pass http://<upstream_name>;``
(what the file says and why: ``render``).  A change:

1. is written atomically (``files.write_atomic``: temp file, fsync, rename, fsync the dir);
2. is tested with ``nginx -t`` before any reload; a failed test puts the old bytes back and
   raises ``RouterError`` with nginx's own text;
3. is reloaded, and counts as applied only once nginx verifiably serves the new generation
   (``probe.verify_generation``): a reload returns before old workers stop taking
   connections.

``preflight()`` proves, before a rollout, that the router can see what nginx serves.

With ``mode = "dynamic"`` (``console.adapters.nginx.dynamic``) a change of the weight alone is
instead: write the file, set the weight and generation over the loopback endpoint, read them
back from every worker a burst of fresh connections reaches; no ``nginx -t``, no reload.  Any
other change (addresses, routing, the shadow switch, a file that is not this router's dynamic
file yet) takes the reload path above, and so does a change the endpoint did not take.

This module is on the CLI's rollback path: it imports only light stdlib modules.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from console.adapters.nginx.dynamic import (
    EndpointUnreachable,
    confirm_dynamic,
    dynamic_url,
    lua_module_missing,
    read_dynamic,
    set_dynamic,
)
from console.adapters.nginx.files import DEFAULT_COMMAND_TIMEOUT, remove_durably, run_command, write_atomic
from console.adapters.nginx.probe import (
    DEFAULT_VERIFY_BURST,
    DEFAULT_VERIFY_HITS,
    DEFAULT_VERIFY_INTERVAL,
    DEFAULT_VERIFY_SETTLE,
    RouterNotVerified,
    http_get,
    parse_http_url,
    verify_generation,
)
from console.adapters.nginx.render import (
    GENERATION_LOCATION,
    HEADER,
    check_address,
    check_dynamic_listen,
    check_generation,
    check_name,
    check_verify_listen,
    check_weight,
    generation_of,
    header_weight,
    listen_url,
    render_upstream,
    shadow_of,
    weight_of,
)
from console.core.routing import RouterError

if TYPE_CHECKING:
    from console.core.config import Config

__all__ = [
    "NginxRouter",
    "PreflightFailed",
    "RouterError",
    "RouterNotVerified",
    "Staged",
    # re-exported for callers that import them from here (bench/rollback.py, commands/check.py)
    "generation_of",
    "http_get",
    "render_upstream",
    "run_command",
    "verify_generation",
    "weight_of",
    "write_atomic",
]

EXAMPLE_VERIFY_LISTEN = "127.0.0.1:8089"
MODES = ("reload", "dynamic")


class PreflightFailed(RouterError):
    """``NginxRouter.preflight()`` could not prove that the router sees what nginx serves.

    The message is one line: verify_url, what came back, and the fix.  The upstream file is
    byte for byte what it was (put back and reloaded if it had been changed), so
    ``restored_weight`` is the weight it routes.  ``answer``: what came back, in a few words."""

    def __init__(self, message: str, detail: str = "", restored_weight: float | None = None, answer: str = "") -> None:
        super().__init__(message, detail, restored_weight)
        self.answer = answer


@dataclass(frozen=True)
class Staged:
    """A change written and passed by ``nginx -t``, not yet reloaded: what to put back."""

    old: bytes | None  # the file before (None: there was none)
    mode: int
    owner: tuple[int, int] | None
    what: str  # "25%", for messages
    old_weight: float | None = None  # what ``old`` routes (None: no file, or not ours)
    old_generation: str | None = None
    live: bool = False  # dynamic mode: ``reload`` sets the weight over the endpoint instead
    weight: float | None = None  # what the change routes
    generation: str | None = None


class NginxRouter:
    """``console.core.protocols.TrafficRouter`` for an nginx that includes ``upstream_file``.

    ``test_command`` / ``reload_command`` are argv lists (for example
    ``["docker", "exec", "fragrance-ai-nginx", "nginx", "-t"]``); ``verify_url`` is the
    generation location ("" = count the change as applied once the reload returns).
    ``verify_listen`` ("host:port" on loopback, "" = off): the include also defines a server
    there with the generation location (``from_config`` then points ``verify_url`` at it).
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
        verify_listen: str = "",
        routing: dict[str, str] | None = None,
        shadow_stage: bool = False,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        verify_hits: int = DEFAULT_VERIFY_HITS,
        verify_interval: float = DEFAULT_VERIFY_INTERVAL,
        verify_burst: int = DEFAULT_VERIFY_BURST,
        verify_settle: float = DEFAULT_VERIFY_SETTLE,
        mode: str = "reload",
        dynamic_listen: str = "",
        dynamic_endpoint: str = "",
    ) -> None:
        self.upstream_file = Path(upstream_file)
        self.upstream_name = check_name(upstream_name)
        self.production = check_address("production", production)
        self.canary = check_address("canary", canary)
        for key, argv in (("test_command", test_command), ("reload_command", reload_command)):
            if not argv or not all(isinstance(a, str) for a in argv):
                raise ValueError(f"[nginx] {key} = {argv!r} is not valid; allowed: a non-empty argv list of strings")
        self.test_command = list(test_command)
        self.reload_command = list(reload_command)
        # [routing]: sticky_key, override_header, override_cookie (render_upstream checks them)
        self.routing = {k: v for k, v in (routing or {}).items() if v}
        render_upstream(self.upstream_name, self.production, self.canary, 0, "check", **self.routing)
        # [rollout] shadow_period > 0: every file maps $canary_shadow (nginx.conf's mirror location reads it)
        self.shadow_stage = bool(shadow_stage)
        if verify_url:
            parse_http_url(verify_url)
        self.verify_url = verify_url
        self.verify_listen = check_verify_listen(verify_listen)
        if not verify_timeout > 0:
            raise ValueError(f"[nginx] verify_timeout = {verify_timeout!r} is not valid; allowed: seconds > 0")
        self.verify_timeout = float(verify_timeout)
        self.command_timeout = float(command_timeout)
        self.verify_hits = max(1, int(verify_hits))
        self.verify_interval = float(verify_interval)
        self.verify_burst = max(1, int(verify_burst))
        self.verify_settle = max(0.0, float(verify_settle))
        # mode = "dynamic": weight changes over the endpoint the include defines on dynamic_listen
        if mode not in MODES:
            raise ValueError(f"[nginx] mode = {mode!r} is not valid; allowed: {' or '.join(MODES)}")
        self.mode = mode
        self.dynamic = mode == "dynamic"
        self.dynamic_listen = check_dynamic_listen(dynamic_listen) if self.dynamic else ""
        if self.dynamic:
            if not self.dynamic_listen:
                raise ValueError('[nginx] dynamic_listen is empty; allowed: with mode = "dynamic", a loopback '
                                 '"host:port" such as "127.0.0.1:8090" (or mode = "reload")')
            for key, address in (("production", self.production), ("canary", self.canary)):
                _check_ip_peer(key, address)
        self.dynamic_url = dynamic_endpoint or (dynamic_url(self.dynamic_listen) if self.dynamic else "")
        if self.dynamic_url:
            parse_http_url(self.dynamic_url)
        self._live: dict[str, float] = {}  # generation -> weight set over the endpoint (the last few)
        self._lock = self._new_lock()
        # cumulative seconds since apply() began at each step (write, test, reload, total) and
        # the verification's first_new / probes: for bench/rollback.py and for the curious
        self.last_timings: dict[str, float] = {}
        self.last_fallback = ""  # dynamic mode: why the last change took the reload path instead ("" = it did not)

    @classmethod
    def from_config(cls, cfg: Config, host: dict[str, Any] | None = None) -> NginxRouter:
        """The router ``[nginx]`` describes (or ``host``, one of ``cfg.nginx_hosts``: ``[nginx]``
        with that ``[[nginx.hosts]]`` table's keys on top).  With ``verify_listen`` set and
        ``verify_url`` left at its default, verification goes to ``http://<verify_listen>/__canary/generation``."""
        from console.core.config import SCHEMA

        n = cfg["nginx"] if host is None else host
        verify_url = n["verify_url"]
        if n["verify_listen"] and verify_url == SCHEMA["nginx"]["verify_url"][1]:
            verify_url = listen_url(n["verify_listen"])
        return cls(
            upstream_file=cfg.upstream_file if host is None else cfg.resolve(host["upstream_file"]),
            upstream_name=n["upstream_name"],
            production=n["production"],
            canary=n["canary"],
            test_command=list(n["test_command"]),
            reload_command=list(n["reload_command"]),
            verify_url=verify_url,
            verify_timeout=n["verify_timeout"],
            verify_listen=n["verify_listen"],
            routing=dict(cfg["routing"]),
            shadow_stage=cfg["rollout"]["shadow_period"] > 0,
            mode=n["mode"],
            dynamic_listen=n["dynamic_listen"],
            dynamic_endpoint=n["dynamic_url"],
        )

    # ---- reading

    def _read(self) -> bytes | None:
        try:
            return self.upstream_file.read_bytes()
        except FileNotFoundError:
            return None

    def _weight_in(self, data: bytes | None) -> float | None:
        if data is None:
            return None
        text = data.decode(errors="replace")
        found = weight_of(text, self.upstream_name, self.production, self.canary)
        return found if found is not None else header_weight(text)

    def current_weight(self) -> float | None:
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

    def render(self, weight: float, generation: str, shadow: bool = False) -> str:
        if shadow and not self.shadow_stage:
            raise ValueError("a shadow stage needs [rollout] shadow_period > 0 (the file then maps $canary_shadow)")
        return render_upstream(self.upstream_name, self.production, self.canary, weight, generation, self.verify_listen,
                               **self.routing, shadow=shadow if self.shadow_stage else None,
                               dynamic_listen=self.dynamic_listen)

    def _live_ok(self, old: bytes | None, shadow: bool) -> bool:
        """Dynamic mode, and ``old`` is exactly this router's dynamic file for its own weight,
        generation and shadow switch: then only the weight and generation change (no reload)."""
        if not self.dynamic or old is None:
            return False
        text = old.decode(errors="replace")
        w, g, s = weight_of(text, self.upstream_name, self.production, self.canary), generation_of(text), shadow_of(text)
        if w is None or g is None or bool(s) != bool(shadow and self.shadow_stage):
            return False
        try:
            return self.render(w, g, bool(s)).encode() == old
        except ValueError:
            return False

    def _remember(self, generation: str, weight: float) -> None:
        self._live[generation] = weight
        while len(self._live) > 16:
            del self._live[next(iter(self._live))]

    async def _live_change(self, new: bytes, old: bytes | None, weight: float, generation: str, t0: float,
                           timings: dict[str, float]) -> None:
        """Dynamic mode: write, set over the endpoint, read back.  EndpointUnreachable (nginx did not
        take it) with the old file back; RouterNotVerified (it may have) with the new file kept."""
        mode, owner = self._mode_owner(old)
        write_atomic(self.upstream_file, new, mode, owner)
        timings["write"] = time.perf_counter() - t0
        try:
            await set_dynamic(self.dynamic_url, weight, generation, self.verify_timeout)
        except EndpointUnreachable:
            self._restore(old, mode, owner)
            raise
        self._remember(generation, weight)
        timings["set"] = time.perf_counter() - t0
        await confirm_dynamic(self.dynamic_url, weight, generation, self.verify_timeout, self.verify_burst,
                              self.verify_interval, timings)
        timings["confirm"] = time.perf_counter() - t0

    # ---- changing

    async def apply(self, weight: float, generation: str, shadow: bool = False) -> float:
        """Write, ``nginx -t``, reload, verify; the seconds it took.  See the module docstring.
        ``shadow``: the shadow stage (nginx.conf's mirror copies every request to the canary)."""
        check_weight(weight)
        check_generation(generation)
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        self.last_timings = timings
        async with self._lock:
            old = self._read()
            new = self.render(weight, generation, shadow).encode()
            self.last_fallback = ""
            if self._live_ok(old, shadow):
                try:
                    await self._live_change(new, old, weight, generation, t0, timings)
                    timings["total"] = time.perf_counter() - t0
                    return timings["total"]
                except EndpointUnreachable as e:
                    # nginx did not take it (not loaded, not listening): the reload path does the change
                    timings["fallback"] = time.perf_counter() - t0
                    self.last_fallback = str(e)
            await self._swap(new, old, _what(weight, shadow), RouterError, t0, timings)
            if self.verify_url:
                # the reload was signalled: on a timeout the new file stays (RouterNotVerified)
                await self._verify(generation, timings)
        timings["total"] = time.perf_counter() - t0
        return timings["total"]

    async def preflight(self, generation: str | None = None) -> float:
        """Prove that the router sees what nginx serves; the seconds it took.

        Rewrites the current weights under a fresh generation, ``nginx -t``, reload, and
        waits until ``verify_url`` answers the new generation.  Traffic does not move.  On any
        failure raises ``PreflightFailed`` (one line: verify_url, what came back, the fix)
        with the upstream file byte for byte as it was: put back and reloaded if nginx had
        been reloaded with the rewrite, put back without a reload if ``nginx -t`` refused it.
        With no upstream file yet, writes the first one at canary 0% (what nginx serves without
        it is no canary at all) and removes it again on failure.  Refuses, changing nothing,
        when verification is off or the file is not one canary-console can read.
        ``generation``: the one to write (the engine journals it); a fresh one by default.
        """
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        self.last_timings = timings
        async with self._lock:
            if not self.verify_url:
                raise PreflightFailed(
                    "preflight: [nginx] verify_url is empty, so the router cannot see what nginx serves; "
                    f"fix: set verify_url to a location `{GENERATION_LOCATION}` in nginx.conf, "
                    f'or set [nginx] verify_listen = "{EXAMPLE_VERIFY_LISTEN}"'
                )
            old = self._read()
            text = old.decode(errors="replace") if old is not None else ""
            # the server lines, not the header: rewriting a file written for other addresses would move traffic
            weight = weight_of(text, self.upstream_name, self.production, self.canary) if old is not None else 0
            if old is not None and not text.startswith(HEADER):
                raise PreflightFailed(
                    f"preflight: {self.upstream_file} is a hand-written file, not one canary-console manages, so it is "
                    "left as it is; fix: adopt it with `canary-console init` (same servers, same weights), then deploy",
                    restored_weight=self._weight_in(old),
                )
            if weight is None:
                if old is None:
                    what = "does not exist yet"
                elif header_weight(text) is not None:
                    what = f"routes addresses other than [nginx] production = {self.production} / canary = {self.canary}"
                else:
                    what = f"has no upstream {self.upstream_name} that canary-console can read"
                raise PreflightFailed(
                    f"preflight: {self.upstream_file} {what}, so there are no current weights to rewrite; "
                    "fix: write it with `canary-console weights 0` (nginx.conf must include it), then run the preflight again",
                    restored_weight=self._weight_in(old),
                )
            generation = generation or f"preflight-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.urandom(3).hex()}"
            check_generation(generation)
            try:
                await self._swap(self.render(weight, generation).encode(), old,
                                 f"the preflight at {weight}%", PreflightFailed, t0, timings)
            except PreflightFailed as e:
                if self.dynamic and lua_module_missing(e.detail):
                    raise PreflightFailed(
                        f"preflight: nginx has no Lua module for [nginx] mode = \"dynamic\" ({first_error_line(e.detail)}); "
                        f"{self.upstream_file} left as it was, nginx not reloaded; fix: install libnginx-mod-http-lua and "
                        "lua-resty-core and load the module in nginx.conf (Debian's stock nginx.conf includes "
                        '/etc/nginx/modules-enabled/*.conf), or set [nginx] mode = "reload", which works without them',
                        detail=e.detail, restored_weight=e.restored_weight, answer="no Lua module") from None
                raise
            try:
                await self._verify(generation, timings)
                if self.dynamic:
                    await self._preflight_endpoint(weight, generation, timings)
            except RouterNotVerified as e:
                restored = await self._put_back_and_reload(old)
                what = (e.answer if e.answer.startswith("the dynamic endpoint") else
                        f"{self.verify_url} did not answer the new generation within {self.verify_timeout:g}s (got {e.answer})")
                raise PreflightFailed(
                    f"preflight: {what}; {self.upstream_file} {restored}; fix: {self._fix(e.answer)}",
                    detail=e.detail,
                    restored_weight=weight,
                    answer=e.answer,
                ) from None
            except BaseException:
                await self._put_back_and_reload(old)
                raise
        timings["total"] = time.perf_counter() - t0
        return timings["total"]

    async def _preflight_endpoint(self, weight: float, generation: str, timings: dict[str, float]) -> None:
        """Dynamic mode: the endpoint answers the file nginx just loaded (RouterNotVerified otherwise)."""
        try:
            await confirm_dynamic(self.dynamic_url, weight, generation, min(self.verify_timeout, 2.0), self.verify_burst,
                                  self.verify_interval, timings)
        except RouterNotVerified as e:
            raise RouterNotVerified(
                f"the dynamic endpoint {self.dynamic_url} did not answer {generation}", detail=e.detail,
                answer=f"the dynamic endpoint {self.dynamic_url}: {e.answer or 'no answer'}") from None
        timings["endpoint"] = timings.get("verify", 0.0)

    async def served_generation(self, timeout: float = 2.0) -> tuple[str | None, str]:
        """What nginx answers on ``verify_url`` now (dynamic mode: on the dynamic endpoint, what
        the balancer uses): (the generation, "") or (None, what came back instead: connection
        refused, HTTP 404, a timeout...).  One request, no retries."""
        if self.dynamic:
            try:
                got = await read_dynamic(self.dynamic_url, timeout)
            except (OSError, TimeoutError, ValueError, RouterError) as e:
                return None, "connection refused" if "refused" in str(e) else f"{type(e).__name__}: {e}"
            return (got[0], "") if got else (None, f"{self.dynamic_url}: another answer")
        if not self.verify_url:
            return None, "verification is off ([nginx] verify_url is empty)"
        host, port, path, host_header = parse_http_url(self.verify_url)
        try:
            status, body = await http_get(host, port, path, host_header, timeout)
        except (OSError, TimeoutError, ValueError) as e:
            return None, "connection refused" if isinstance(e, ConnectionRefusedError) else f"{type(e).__name__}: {e}"
        text = body.strip()
        if status != 200:
            return None, f"HTTP {status}"
        if not text or len(text) > 128 or any(c.isspace() for c in text):
            return None, f"another body: {text[:60]!r}"
        return text, ""

    def _fix(self, answer: str) -> str:
        """What the operator changes so the probe sees nginx: one line, nginx syntax."""
        if answer.startswith("the dynamic endpoint"):
            return (
                f"nginx.conf must include {self.upstream_file} at http level (it defines the endpoint on "
                f"{self.dynamic_listen}), nothing else may listen there, and canary-console must reach it "
                f'({self.dynamic_url}); or set [nginx] mode = "reload", which needs no endpoint'
            )
        if self.verify_listen and self.verify_url == listen_url(self.verify_listen):
            return (
                f"nginx.conf must include {self.upstream_file} at http level (it defines the server on "
                f"{self.verify_listen}), nothing else may listen there, and canary-console must run where "
                f"{self.verify_listen} is nginx's loopback (same host or network namespace)"
            )
        where = "in the server that verify_url reaches"
        if answer == "HTTP 403":
            where += " (it answers 403: add an `allow` line for this console's address)"
        return (
            f"add `{GENERATION_LOCATION}` {where}, "
            f'or set [nginx] verify_listen = "{EXAMPLE_VERIFY_LISTEN}" (nginx.conf then needs only the include)'
        )

    async def _swap(
        self, new: bytes, old: bytes | None, what: str, error: type[RouterError], t0: float, timings: dict[str, float]
    ) -> None:
        """Write ``new``, ``nginx -t``, reload; on a failure put ``old`` back and raise ``error``."""
        staged = await self._write_and_test(new, old, what, error, t0, timings)
        await self._reload(staged, error, t0, timings)

    async def _write_and_test(
        self, new: bytes, old: bytes | None, what: str, error: type[RouterError], t0: float, timings: dict[str, float]
    ) -> Staged:
        """Write ``new`` and ``nginx -t`` it; on a refusal put ``old`` back and raise ``error``."""
        mode, owner = self._mode_owner(old)
        write_atomic(self.upstream_file, new, mode, owner)
        timings["write"] = time.perf_counter() - t0
        try:
            rc, out = await self._run(self.test_command)
        except BaseException:
            self._restore(old, mode, owner)
            raise
        timings["test"] = time.perf_counter() - t0
        if rc != 0:
            self._restore(old, mode, owner)
            raise error(
                f"nginx rejected the upstream file for {what} ({first_error_line(out)}); "
                f"{self.upstream_file} left as it was, nginx not reloaded",
                detail=out,
                restored_weight=self._weight_in(old),
            )
        return self._staged(old, what, mode, owner)

    async def _reload(self, staged: Staged, error: type[RouterError], t0: float, timings: dict[str, float]) -> None:
        """Reload what ``_write_and_test`` passed; on a failure put the old file back and raise ``error``."""
        rc, out = await self._run(self.reload_command)
        timings["reload"] = time.perf_counter() - t0
        if rc != 0:
            self._restore(staged.old, staged.mode, staged.owner)
            raise error(
                f"nginx reload failed for {staged.what} ({first_error_line(out)}); {self.upstream_file} put back as it was",
                detail=out,
                restored_weight=self._weight_in(staged.old),
            )

    # ---- the phases of one change, for console.adapters.nginx.fleet.FleetRouter (apply() = all four)

    def _staged(self, old: bytes | None, what: str, mode: int, owner: tuple[int, int] | None) -> Staged:
        gen = generation_of(old.decode(errors="replace")) if old is not None else None
        return Staged(old, mode, owner, what, self._weight_in(old), gen)

    def snapshot(self) -> Staged:
        """The file as it is now, to ``put_back`` later."""
        old = self._read()
        return self._staged(old, "the file as it was", *self._mode_owner(old))

    async def stage(self, weight: float, generation: str, timings: dict[str, float] | None = None,
                    shadow: bool = False) -> Staged:
        """Phase 1: write the file for ``weight`` and ``nginx -t`` it, no reload.  On a refusal the
        old bytes are back and RouterError is raised.  The caller holds the fleet's lock."""
        check_weight(weight)
        check_generation(generation)
        old, new = self._read(), self.render(weight, generation, shadow).encode()
        if self._live_ok(old, shadow):  # dynamic mode: no nginx -t for a change of the weight alone
            mode, owner = self._mode_owner(old)
            write_atomic(self.upstream_file, new, mode, owner)
            return replace(self._staged(old, _what(weight, shadow), mode, owner), live=True, weight=weight,
                           generation=generation)
        return await self._write_and_test(new, old, _what(weight, shadow), RouterError, time.perf_counter(),
                                          {} if timings is None else timings)

    async def reload(self, staged: Staged, timings: dict[str, float] | None = None) -> None:
        """Phase 2: reload a staged change (dynamic mode: set it over the endpoint); on a failure the
        old file is back and RouterError is raised."""
        if staged.live and staged.weight is not None and staged.generation is not None:
            t0 = time.perf_counter()
            try:
                await set_dynamic(self.dynamic_url, staged.weight, staged.generation, self.verify_timeout)
            except EndpointUnreachable as e:
                self._restore(staged.old, staged.mode, staged.owner)
                raise RouterError(f"{e}; {self.upstream_file} put back as it was", detail=e.detail,
                                  restored_weight=staged.old_weight) from None
            except RouterNotVerified:
                pass  # nginx may have taken it: confirm() says
            self._remember(staged.generation, staged.weight)
            if timings is not None:
                timings["set"] = time.perf_counter() - t0
            return
        await self._reload(staged, RouterError, time.perf_counter(), {} if timings is None else timings)

    async def confirm(self, generation: str, timings: dict[str, float] | None = None) -> None:
        """Phase 3: return once nginx verifiably serves ``generation`` (RouterNotVerified after
        ``verify_timeout``); at once when verification is off.  A generation set over the dynamic
        endpoint is read back there."""
        if generation in self._live:
            await confirm_dynamic(self.dynamic_url, self._live[generation], generation, self.verify_timeout,
                                  self.verify_burst, self.verify_interval, timings)
        elif self.verify_url:
            await self._verify(generation, {} if timings is None else timings)

    async def put_back(self, staged: Staged, reload: bool) -> str:
        """Undo a staged change: the old bytes (or no file) again, reloaded when ``reload``.
        Returns what happened, for a message.  A dynamic change is put back over the endpoint."""
        if reload and staged.live and staged.old_weight is not None and staged.old_generation is not None:
            self._restore(staged.old, staged.mode, staged.owner)
            try:
                await set_dynamic(self.dynamic_url, staged.old_weight, staged.old_generation, self.verify_timeout)
                self._remember(staged.old_generation, staged.old_weight)
                return "put back as it was and set over the dynamic endpoint"
            except RouterError:
                self._live.pop(staged.old_generation, None)
                return await self._put_back_and_reload(staged.old)
        if reload:
            return await self._put_back_and_reload(staged.old)
        self._restore(staged.old, staged.mode, staged.owner)
        return "put back as it was, nginx not reloaded"

    # ---- the router's waits: an event loop's here, none in quick.QuickRouter (the CLI's rollback)

    def _new_lock(self) -> Any:
        import asyncio

        return asyncio.Lock()

    async def _run(self, argv: list[str]) -> tuple[int, str]:
        return await run_command(argv, self.command_timeout)

    async def _verify(self, generation: str, timings: dict[str, float]) -> None:
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

    async def _put_back_and_reload(self, old: bytes | None) -> str:
        """After a reload with a rewrite the probe could not confirm: the old bytes, reloaded.
        Returns what happened, for the message."""
        self._restore(old, *self._mode_owner(old))
        rc, out = await self._run(self.reload_command)
        if rc != 0:
            return f"put back as it was, but the reload after that failed ({first_error_line(out)})"
        return "put back as it was and nginx reloaded"

    def _mode_owner(self, old: bytes | None) -> tuple[int, tuple[int, int] | None]:
        if old is None:
            return 0o644, None
        try:
            st = self.upstream_file.stat()
        except FileNotFoundError:
            return 0o644, None
        return st.st_mode & 0o7777, (st.st_uid, st.st_gid)

    def _restore(self, old: bytes | None, mode: int, owner: tuple[int, int] | None) -> None:
        if old is None:
            remove_durably(self.upstream_file)
        else:
            write_atomic(self.upstream_file, old, mode, owner)


def _check_ip_peer(key: str, address: str) -> None:
    """Dynamic mode: nginx's Lua balancer connects to an IP address (or a unix socket), it cannot resolve a name."""
    import ipaddress

    if address.startswith("unix:"):
        return
    host = address.rpartition(":")[0].strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f'[nginx] {key} = {address!r} is not valid with mode = "dynamic"; allowed: an IP address and '
                         'port such as "127.0.0.1:8000" (the Lua balancer cannot resolve names), or mode = "reload"') from None


def _what(weight: float, shadow: bool) -> str:
    return f"{weight}% (shadow stage)" if shadow else f"{weight}%"


def first_error_line(out: str) -> str:
    """nginx -t prints the error first and "test failed" last: show the error."""
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    for ln in lines:
        if "[emerg]" in ln or "[alert]" in ln or "[crit]" in ln or "error" in ln.lower():
            return ln
    return lines[0] if lines else "no output"
