"""Log sources of the console: what to tail (from the config) and the blocking readers that
fill a pane's PendingLines from a thread worker.

Readers never touch a widget: they push lines into the pane's bounded buffer and call
``wake`` (which posts a message) when it went from empty to non-empty.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from console.adapters.logtail import FileTail, PendingLines, TailEvent, follow_file

DOCKER_RETRY = 5.0  # seconds between attempts while the daemon or the container is away
HEARTBEAT = 1.0  # a file reader reports at least this often; its pane is stale after twice as long


@dataclass(frozen=True)
class LogSourceSpec:
    """One log pane's source.  ``kind`` is "file" (a path tailed like tail -F) or "docker"
    (a container's logs, by name or by compose service label)."""

    kind: str
    title: str
    path: str = ""
    container: str = ""
    service: str = ""
    tail: int = 500
    poll_interval: float = 0.25
    docker: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def source_id(self) -> str:
        return f"{self.kind}:{self.path or self.container or self.service}"


def specs_from_config(cfg: Any) -> list[LogSourceSpec]:
    """The canary app's container logs (when [docker] enabled) and the NGINX canary access log."""
    out: list[LogSourceSpec] = []
    d = cfg["docker"]
    if d["enabled"]:
        who = d["canary_container"] or f"service {d['canary_service']}"
        out.append(LogSourceSpec("docker", f"canary app ({who})", container=d["canary_container"],
                                 service=d["canary_service"], tail=int(d["log_lines"]), docker=dict(d)))
    access = cfg["nginx"]["access_log"]
    if access:
        out.append(LogSourceSpec("file", "nginx canary access log", path=str(cfg.resolve(access)),
                                 tail=min(500, int(cfg["console"]["log_max_lines"]))))
    return out


def read_file(spec: LogSourceSpec, pending: PendingLines, wake: Callable[[], object],
              status: Callable[[str, str], object], heartbeat: Callable[[], object], stop: threading.Event) -> None:
    """Tail a file until ``stop``; for a thread worker."""
    def on_event(e: TailEvent) -> None:
        status(e.kind, e.detail)

    last = [0.0]

    def beat() -> None:  # one heartbeat message a second (the pane's freshness period)
        now = time.monotonic()
        if now - last[0] >= HEARTBEAT:
            last[0] = now
            heartbeat()

    follow_file(FileTail(spec.path, initial_lines=spec.tail), pending, wake, on_event, stop, spec.poll_interval, beat)


class DockerReader:
    """Follow the canary container's logs until stopped; reconnects when the stream ends.

    ``close()`` (from the UI thread) ends a blocked stream at once."""

    def __init__(self, spec: LogSourceSpec) -> None:
        self.spec = spec
        self._follower: Any = None
        self._stop = threading.Event()

    def close(self) -> None:
        self._stop.set()
        f = self._follower
        if f is not None:
            f.close()

    def run(self, pending: PendingLines, wake: Callable[[], object], status: Callable[[str, str], object]) -> None:
        try:
            from console.adapters.docker import DockerAdapter, DockerUnavailable
        except ImportError as e:  # the adapter belongs to another module; a console without it still runs
            status("error", f"docker logs unavailable: {e}")
            return
        cfg = {"docker": {"enabled": True, "required": False, "host": "", "canary_container": self.spec.container,
                          "production_container": "", "canary_service": self.spec.service, "production_service": "",
                          "image": "", "log_lines": self.spec.tail, **self.spec.docker}}
        adapter = DockerAdapter(cfg)  # type: ignore[arg-type]
        last_error = ""
        seen: set[str] = set()  # containers already shown: a reconnect does not repeat their last lines
        try:
            while not self._stop.is_set():
                try:
                    found = adapter.containers("canary")
                    if not found:
                        raise DockerUnavailable(f"no canary container ({adapter.selector('canary')})")
                    info = found[0]
                    self._follower = adapter.follow_logs(info, tail=0 if info.id in seen else self.spec.tail)
                    seen.add(info.id)
                    status("opened", f"following {info.name} ({info.status})")
                    last_error = ""
                    for line in self._follower:
                        if pending.push((line,)):
                            wake()
                        if self._stop.is_set():
                            break
                    if not self._stop.is_set():
                        status("ended", f"log stream of {info.name} ended (container stopped?); retrying")
                except DockerUnavailable as e:
                    if str(e) != last_error:
                        status("error", str(e))
                        last_error = str(e)
                finally:
                    if self._follower is not None:
                        self._follower.close()
                        self._follower = None
                self._stop.wait(DOCKER_RETRY)
        finally:
            adapter.close()
