"""Docker: find the canary and production containers, their state, their logs; save the
canary's logs and optionally stop it on rollback; tag images on promotion.

Why it looks the way it does:

* The docker SDK is imported inside functions only: the CLI's rollback path and the engine
  never pay for it unless ``[docker] enabled = true``.
* Containers are found by name (``[docker] canary_container``) or, when no name is set, by
  the compose label ``com.docker.compose.service=<canary_service>``, so a stack started with
  ``docker compose -f docker-compose.canary.yml up`` is found without configuration.
* Every docker failure becomes one ``DockerUnavailable`` line ("Docker unreachable at
  unix:///var/run/docker.sock: socket not found (is dockerd running?)").  Callers treat it
  as a warning unless ``[docker] required = true``; nothing here crashes the console.
* The SDK is blocking: the engine calls ``DockerRollbackHook`` (which runs the SDK in a
  thread) and the UI runs ``follow_logs`` in a thread worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from console.core import events as ev
from console.core.protocols import DockerUnavailable

if TYPE_CHECKING:
    from console.core.config import Config

COMPOSE_SERVICE = "com.docker.compose.service"
COMPOSE_PROJECT = "com.docker.compose.project"
DEFAULT_HOST = "unix:///var/run/docker.sock"
API_TIMEOUT = 10  # seconds per docker API call (streams disable it themselves)
MAX_LINE = 64 * 1024  # a log "line" without a newline is cut here: every buffer is bounded

NoteFn = Callable[[str, str, dict[str, Any]], object]


@dataclass(frozen=True)
class ContainerInfo:
    role: str  # "canary" | "production"
    name: str
    id: str  # short id
    image: str
    status: str  # created | running | paused | restarting | exited | dead
    health: str | None  # healthy | unhealthy | starting | None (no healthcheck)
    service: str = ""
    project: str = ""
    started_at: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "running" and self.health in (None, "healthy")

    def describe(self) -> str:
        health = f", {self.health}" if self.health else ", no healthcheck"
        return f"{self.name} ({self.image}): {self.status}{health}"


@dataclass(frozen=True)
class DockerStatus:
    """What the console shows: never raises, a warning line instead."""

    available: bool
    required: bool
    host: str
    warning: str = ""
    server_version: str = ""
    canary: tuple[ContainerInfo, ...] = ()
    production: tuple[ContainerInfo, ...] = ()

    @property
    def severity(self) -> str:
        if self.available:
            return "ok"
        return "error" if self.required else "warning"


def short_reason(exc: BaseException) -> str:
    """The innermost useful cause of a docker/requests/urllib3 failure, in a few words."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    found: list[BaseException] = []
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        found.append(e)
        for nxt in (e.__cause__, e.__context__, *(a for a in getattr(e, "args", ()) if isinstance(a, BaseException))):
            if isinstance(nxt, BaseException):
                stack.append(nxt)
        for a in getattr(e, "args", ()):
            if isinstance(a, tuple):
                stack.extend(x for x in a if isinstance(x, BaseException))
    for e in found:
        if isinstance(e, FileNotFoundError):
            return "socket not found (is dockerd running?)"
        if isinstance(e, ConnectionRefusedError):
            return "connection refused (is dockerd running?)"
        if isinstance(e, PermissionError):
            return "permission denied on the docker socket"
    for e in found:
        name = type(e).__name__
        if "Timeout" in name or isinstance(e, TimeoutError):
            return "timed out"
    status = getattr(exc, "status_code", None)
    explanation = getattr(exc, "explanation", None)
    if status:
        return f"HTTP {status}: {explanation or exc}".splitlines()[0][:200]
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


class DockerAdapter:
    """The docker SDK behind the few calls the console needs (blocking: run in a thread)."""

    def __init__(self, cfg: Config, client: Any = None, timeout: int = API_TIMEOUT) -> None:
        d = cfg["docker"]
        self.enabled: bool = bool(d["enabled"])
        self.required: bool = bool(d["required"])
        self.host: str = d["host"] or os.environ.get("DOCKER_HOST", "") or DEFAULT_HOST
        self.canary_container: str = d["canary_container"]
        self.production_container: str = d["production_container"]
        self.canary_service: str = d["canary_service"]
        self.production_service: str = d["production_service"]
        self.image: str = d["image"]
        self.log_lines: int = int(d["log_lines"])
        self.timeout = timeout
        self._client = client

    @classmethod
    def from_config(cls, cfg: Config) -> DockerAdapter:
        return cls(cfg)

    # ------------------------------------------------------------------ plumbing
    def _fail(self, what: str, exc: BaseException) -> DockerUnavailable:
        return DockerUnavailable(f"{what}: {short_reason(exc)}", self.required)

    def client(self) -> Any:
        if self._client is None:
            try:
                import docker
            except ImportError as e:  # pragma: no cover - docker is a runtime dependency
                raise DockerUnavailable("the docker SDK is not installed (pip install docker)", self.required) from e
            env = dict(os.environ)
            env["DOCKER_HOST"] = self.host
            try:
                self._client = docker.from_env(timeout=self.timeout, environment=env)
            except Exception as e:
                raise self._fail(f"Docker unreachable at {self.host}", e) from None
        return self._client

    def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None

    def ping(self) -> str:
        """The server version; DockerUnavailable when the daemon does not answer."""
        try:
            c = self.client()
            c.ping()
            return str(c.version().get("Version", "?"))
        except DockerUnavailable:
            raise
        except Exception as e:
            self.close()
            raise self._fail(f"Docker unreachable at {self.host}", e) from None

    # ------------------------------------------------------------------ finding
    def selector(self, role: str) -> str:
        name, service = self._names(role)
        return f"name {name}" if name else f"label {COMPOSE_SERVICE}={service}"

    def _names(self, role: str) -> tuple[str, str]:
        if role == "canary":
            return self.canary_container, self.canary_service
        if role == "production":
            return self.production_container, self.production_service
        raise ValueError(f"role {role!r} is not valid; allowed: canary, production")

    def _find(self, role: str) -> list[Any]:
        name, service = self._names(role)
        c = self.client()
        try:
            if name:
                try:
                    return [c.containers.get(name)]
                except Exception as e:
                    if type(e).__name__ == "NotFound":
                        return []
                    raise
            found = c.containers.list(all=True, filters={"label": f"{COMPOSE_SERVICE}={service}"})
            return sorted(found, key=lambda x: x.name)
        except DockerUnavailable:
            raise
        except Exception as e:
            raise self._fail(f"cannot list {role} containers at {self.host}", e) from None

    @staticmethod
    def _info(role: str, ctr: Any) -> ContainerInfo:
        attrs = ctr.attrs or {}
        state = attrs.get("State") or {}
        labels = (attrs.get("Config") or {}).get("Labels") or {}
        health = (state.get("Health") or {}).get("Status") if isinstance(state, dict) else None
        image = (attrs.get("Config") or {}).get("Image") or ""
        return ContainerInfo(
            role=role,
            name=ctr.name,
            id=ctr.short_id,
            image=image,
            status=state.get("Status", ctr.status) if isinstance(state, dict) else str(ctr.status),
            health=health,
            service=labels.get(COMPOSE_SERVICE, ""),
            project=labels.get(COMPOSE_PROJECT, ""),
            started_at=state.get("StartedAt", "") if isinstance(state, dict) else "",
        )

    def containers(self, role: str) -> list[ContainerInfo]:
        return [self._info(role, c) for c in self._find(role)]

    def state(self) -> DockerStatus:
        """Both roles' containers, or a one-line warning; never raises."""
        try:
            version = self.ping()
            return DockerStatus(
                available=True, required=self.required, host=self.host, server_version=version,
                canary=tuple(self.containers("canary")), production=tuple(self.containers("production")),
            )
        except DockerUnavailable as e:
            return DockerStatus(available=False, required=self.required, host=self.host, warning=str(e))

    # ------------------------------------------------------------------ logs
    def _container(self, container: ContainerInfo | str) -> Any:
        ref = container.id if isinstance(container, ContainerInfo) else container
        try:
            return self.client().containers.get(ref)
        except DockerUnavailable:
            raise
        except Exception as e:
            raise self._fail(f"container {ref}", e) from None

    def follow_logs(self, container: ContainerInfo | str, tail: int | None = None) -> LogFollower:
        """A blocking iterator of decoded lines, ending when the container stops.  Run it in a
        thread; ``close()`` from another thread ends it."""
        ctr = self._container(container)
        try:
            stream = ctr.logs(stream=True, follow=True, tail=self.log_lines if tail is None else tail)
        except Exception as e:
            raise self._fail(f"cannot follow the logs of {ctr.name}", e) from None
        return LogFollower(stream, ctr.name, self)

    def logs(self, container: ContainerInfo | str, n: int | None = None, timestamps: bool = False) -> list[str]:
        ctr = self._container(container)
        try:
            raw = ctr.logs(stream=False, tail=self.log_lines if n is None else n, timestamps=timestamps)
        except Exception as e:
            raise self._fail(f"cannot read the logs of {ctr.name}", e) from None
        return [ln.rstrip("\r") for ln in raw.decode("utf-8", "replace").splitlines()]

    def last_logs(
        self, n: int | None = None, role: str = "canary", timestamps: bool = False
    ) -> list[tuple[ContainerInfo, list[str]]]:
        """The last ``n`` lines (default ``[docker] log_lines``) of every container of ``role``."""
        return [(info, self.logs(info, n, timestamps)) for info in self.containers(role)]

    def save_failure_logs(self, directory: str | os.PathLike[str], n: int | None = None) -> Path:
        """``canary_failure_<UTC %Y%m%d_%H%M%S>.log`` in ``directory``, as the seed's manual
        rollback (``docker-compose logs app-canary > canary_failure_...``): one
        ``name | timestamp line`` per log line.  Never overwrites an existing file."""
        found = self.last_logs(n, "canary", timestamps=True)
        if not found:
            raise DockerUnavailable(f"no canary container found ({self.selector('canary')}) at {self.host}", self.required)
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%d_%H%M%S")
        width = max(len(info.name) for info, _ in found)
        body = []
        for info, lines in found:
            body.append(f"# {info.describe()}, id {info.id}, last {len(lines)} lines")
            body.extend(f"{info.name:<{width}} | {ln}" for ln in lines)
        data = ("\n".join(body) + "\n").encode()
        for i in range(100):
            path = d / (f"canary_failure_{stamp}.log" if i == 0 else f"canary_failure_{stamp}_{i}.log")
            try:
                with open(path, "xb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                return path
            except FileExistsError:
                continue
        raise DockerUnavailable(f"cannot pick a free canary_failure_{stamp}_N.log name in {d}", self.required)

    # ------------------------------------------------------------------ actions
    def stop_canary(self, timeout: int = 10) -> list[str]:
        """Stop every running canary container; the names stopped."""
        stopped = []
        for ctr in self._find("canary"):
            if ctr.status not in ("running", "restarting", "paused"):
                continue
            try:
                ctr.stop(timeout=timeout)
            except Exception as e:
                raise self._fail(f"cannot stop {ctr.name}", e) from None
            stopped.append(ctr.name)
        return stopped

    def tag_image(self, src: str, tags: list[str]) -> list[str]:
        """Tag image ``src`` as each of ``tags`` (``repo:tag``); the references written."""
        from docker.utils import parse_repository_tag

        try:
            img = self.client().images.get(src)
        except DockerUnavailable:
            raise
        except Exception as e:
            if type(e).__name__ == "ImageNotFound":
                raise DockerUnavailable(f"image {src} not found at {self.host}", self.required) from None
            raise self._fail(f"cannot read image {src}", e) from None
        done = []
        for t in tags:
            repo, tag = parse_repository_tag(t)
            try:
                if not img.tag(repo, tag or "latest"):
                    raise DockerUnavailable(f"docker refused to tag {src} as {t}", self.required)
            except DockerUnavailable:
                raise
            except Exception as e:
                raise self._fail(f"cannot tag {src} as {t}", e) from None
            done.append(f"{repo}:{tag or 'latest'}")
        return done

    def image_id(self, ref: str) -> str:
        try:
            return str(self.client().images.get(ref).id)
        except Exception as e:
            raise self._fail(f"cannot read image {ref}", e) from None


class LogFollower:
    """Lines from a docker log stream; ``close()`` (any thread) ends the iteration."""

    def __init__(self, stream: Any, name: str, adapter: DockerAdapter) -> None:
        self._stream = stream
        self.name = name
        self._adapter = adapter
        self.closed = False

    def __iter__(self) -> Iterator[str]:
        buf = b""
        try:
            for chunk in self._stream:
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for ln in lines:
                    yield ln.decode("utf-8", "replace").rstrip("\r")
                if len(buf) > MAX_LINE:
                    yield buf.decode("utf-8", "replace")
                    buf = b""
        except Exception as e:
            if not self.closed:
                raise self._adapter._fail(f"log stream of {self.name} broke", e) from None
        if buf and not self.closed:
            yield buf.decode("utf-8", "replace").rstrip("\r")

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(Exception):
            self._stream.close()

    def __enter__(self) -> LogFollower:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------- rollback hook
@dataclass(frozen=True)
class HookResult:
    log_file: Path | None = None
    stopped: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default_factory=tuple)


class DockerRollbackHook:
    """After a ``RolledBack`` event: save the canary's last logs next to the journal and, with
    ``[docker] stop_canary_on_rollback = true``, stop the canary containers.

    Traffic is already at 0% when this runs (it reacts to ``RolledBack``, never to
    ``RollbackStarted``), and the SDK runs in a thread, so a slow or dead daemon never
    delays a rollback.  Use it as an engine listener (``engine.add_listener(hook)``: it
    returns a coroutine for ``RolledBack`` events only) or await ``on_rolled_back(event)``.
    Outcomes go to ``note(level, message, data)`` (the engine's journal note)."""

    def __init__(self, cfg: Config, journal_dir: str | os.PathLike[str], adapter: DockerAdapter | None = None,
                 note: NoteFn | None = None) -> None:
        self.enabled = bool(cfg["docker"]["enabled"])
        self.stop_on_rollback = bool(cfg["docker"]["stop_canary_on_rollback"])
        self.journal_dir = Path(journal_dir)
        self.adapter = adapter or (DockerAdapter(cfg) if self.enabled else None)
        self.note = note

    def __call__(self, event: ev.Event) -> Any:
        if isinstance(event, ev.RolledBack) and self.enabled:
            return self.on_rolled_back(event)
        return None

    async def on_rolled_back(self, event: ev.Event) -> HookResult | None:
        if not self.enabled or self.adapter is None:
            return None
        stop = self.stop_on_rollback and not event.dry_run
        result = await asyncio.to_thread(self._work, stop)
        self._report(result)
        return result

    def _work(self, stop: bool) -> HookResult:
        assert self.adapter is not None
        path, stopped, warnings = None, (), []
        try:
            path = self.adapter.save_failure_logs(self.journal_dir)
        except DockerUnavailable as e:
            warnings.append(f"canary logs not saved: {e}")
        if stop:
            try:
                stopped = tuple(self.adapter.stop_canary())
            except DockerUnavailable as e:
                warnings.append(f"canary not stopped: {e}")
        return HookResult(log_file=path, stopped=stopped, warnings=tuple(warnings))

    def _report(self, r: HookResult) -> None:
        if self.note is None:
            return
        level = "error" if (self.adapter and self.adapter.required) else "warning"
        if r.log_file is not None:
            self.note("info", f"canary logs saved to {r.log_file}", {"log_file": str(r.log_file)})
        if r.stopped:
            self.note("info", f"canary containers stopped: {', '.join(r.stopped)}", {"stopped": list(r.stopped)})
        for w in r.warnings:
            self.note(level, w, {})
