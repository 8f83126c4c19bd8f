"""A real nginx in its own prefix directory, on loopback: for the tests and the demo sandbox.

Everything it touches lives under ``prefix_dir`` (conf, pid, error log, temp paths), so it
runs side by side with a system nginx, as root or not.  nginx runs in the foreground
(``daemon off``) in its own session, so ``stop()`` can always reap the master and every
worker: QUIT, then KILL to the whole process group, then wait.

No UI imports here: ``canary-console demo`` uses it as well.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from console.sandbox.procs import die_with_parent, wait_group_gone

__all__ = ["LocalNginx", "NginxStartError", "find_nginx", "render_local_conf"]

GENERATION_PATH = "/__canary/generation"

LOG_FORMAT = (
    '$remote_addr [$time_iso8601] "$request" $status $body_bytes_sent '
    "rt=$request_time upstream=$upstream_addr ustatus=$upstream_status "
    'urt=$upstream_response_time gen=$canary_generation'
)


class NginxStartError(RuntimeError):
    """nginx did not come up; the message carries its error log."""


def find_nginx() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    candidates = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
    return next((p for p in candidates if os.path.exists(p)), None)


def render_conf_head(prefix_dir: Path, worker_processes: int = 2, user: str | None = None) -> str:
    """The start of an nginx.conf whose every path is inside ``prefix_dir``: the main context, and
    ``http {`` with its temp paths (the caller writes the rest of the http block and closes it)."""
    p = Path(prefix_dir)
    user_line = f"user {user};\n" if user else ""
    return f"""{user_line}worker_processes {worker_processes};
daemon off;
pid {p / "logs" / "nginx.pid"};
error_log {p / "logs" / "error.log"} warn;

events {{
    worker_connections 1024;
}}

http {{
    client_body_temp_path {p / "temp" / "client_body"};
    proxy_temp_path {p / "temp" / "proxy"};
    fastcgi_temp_path {p / "temp" / "fastcgi"};
    uwsgi_temp_path {p / "temp" / "uwsgi"};
    scgi_temp_path {p / "temp" / "scgi"};
"""


def render_local_conf(
    prefix_dir: Path,
    listen_port: int,
    upstream_file: Path,
    access_log: Path,
    upstream_name: str = "fragrance_app",
    worker_processes: int = 2,
    listen_host: str = "127.0.0.1",
    user: str | None = None,
    allow: Sequence[str] = (),
) -> str:
    """An nginx.conf shaped like nginx/nginx.canary.conf, with every path inside ``prefix_dir``.

    ``user`` is written only when given (root must name one so workers can read the prefix;
    a non-root master cannot switch users and would only warn).  ``allow``: addresses besides
    loopback that may read the generation location (a console outside nginx's network namespace).
    """
    allow_lines = "".join(f"            allow {a};\n" for a in allow)
    return f"""# Rendered by console.sandbox.nginx_local for a sandbox nginx; not for production.
{render_conf_head(prefix_dir, worker_processes, user)}
    log_format canary '{LOG_FORMAT}';
    access_log {access_log} canary;

    include {upstream_file};

    server {{
        listen {listen_host}:{listen_port};

        location = {GENERATION_PATH} {{
            allow 127.0.0.1;
            allow ::1;
{allow_lines}            deny all;
            access_log off;
            default_type text/plain;
            return 200 "$canary_generation\\n";
        }}

        location / {{
            proxy_pass http://{upstream_name};
            proxy_set_header Host $host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_connect_timeout 2s;
            proxy_read_timeout 30s;
        }}
    }}
}}
"""


class LocalNginx:
    """One sandbox nginx.  The upstream file must exist before ``start()`` (nginx includes it)."""

    def __init__(
        self,
        prefix_dir: Path,
        listen_port: int,
        upstream_file: Path,
        access_log: Path | None = None,
        upstream_name: str = "fragrance_app",
        worker_processes: int = 2,
        nginx_bin: str | None = None,
        listen_host: str = "127.0.0.1",
        conf_text: str | None = None,
        die_with_parent: bool = False,
        wrapper: Sequence[str] = (),
        allow: Sequence[str] = (),
    ) -> None:
        """``conf_text``: run this nginx.conf instead of ``render_local_conf``'s (it must listen
        on ``listen_port``, keep its pid and logs in the prefix and say ``daemon off``).
        ``wrapper``: an argv prefix for every nginx command, the master's included, such as
        ``["ip", "netns", "exec", "edge-1"]`` (it must exec nginx, so the master is its child's pid).
        ``allow``: see ``render_local_conf``."""
        self.wrapper = list(wrapper)
        self.allow = tuple(allow)
        self.prefix_dir = Path(prefix_dir).resolve()
        self.listen_port = int(listen_port)
        self.listen_host = listen_host
        self.upstream_file = Path(upstream_file).resolve()
        self.access_log = Path(access_log).resolve() if access_log else self.prefix_dir / "logs" / "canary.log"
        self.upstream_name = upstream_name
        self.worker_processes = worker_processes
        found = nginx_bin or find_nginx()
        if not found:
            raise NginxStartError("nginx is not installed (looked on PATH and in /usr/sbin); allowed: apt-get install nginx")
        self.nginx_bin = found
        self.conf_path = self.prefix_dir / "conf" / "nginx.conf"
        self.error_log = self.prefix_dir / "logs" / "error.log"
        self.pid_file = self.prefix_dir / "logs" / "nginx.pid"
        self.conf_text = conf_text
        self._proc: subprocess.Popen[bytes] | None = None
        self._die_with_parent = die_with_parent  # the demo: a SIGKILLed supervisor takes nginx with it

    # ---- argv for the router

    def _base(self) -> list[str]:
        # -e: the error log before the conf is read (Debian builds default to stderr or /var/log)
        return [*self.wrapper, self.nginx_bin, "-p", f"{self.prefix_dir}/", "-c", str(self.conf_path), "-e",
                str(self.error_log)]

    @property
    def test_command(self) -> list[str]:
        return [*self._base(), "-t", "-q"]

    @property
    def reload_command(self) -> list[str]:
        return [*self._base(), "-s", "reload"]

    @property
    def url(self) -> str:
        return f"http://{self.listen_host}:{self.listen_port}"

    @property
    def verify_url(self) -> str:
        return f"{self.url}{GENERATION_PATH}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    # ---- life cycle

    def write_conf(self) -> Path:
        for d in ("conf", "logs", "temp"):
            (self.prefix_dir / d).mkdir(parents=True, exist_ok=True)
        self.access_log.parent.mkdir(parents=True, exist_ok=True)
        if self.conf_text is not None:
            self.conf_path.write_text(self.conf_text)
            return self.conf_path
        user = "root" if os.geteuid() == 0 else None
        self.conf_path.write_text(
            render_local_conf(
                self.prefix_dir,
                self.listen_port,
                self.upstream_file,
                self.access_log,
                self.upstream_name,
                self.worker_processes,
                self.listen_host,
                user,
                self.allow,
            )
        )
        return self.conf_path

    def start(self, timeout: float = 10.0) -> None:
        """Start nginx and return once it answers on its port; NginxStartError otherwise.

        The answer counts only once the pid file names this master (it writes it before any
        worker runs): a port someone else took in the meantime answers too, while this nginx
        fails to bind it and exits (its error log says so)."""
        if self._proc is not None:
            raise RuntimeError("this LocalNginx is already started")
        self.write_conf()
        self._proc = subprocess.Popen(
            [*self._base()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent if self._die_with_parent else None,
        )
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self._proc.poll() is not None:
                    raise NginxStartError(f"nginx exited with {self._proc.returncode} on start: {self.error_tail()}")
                if self._pid_written() and self._answers():
                    return
                if time.monotonic() > deadline:
                    raise NginxStartError(f"nginx did not answer on {self.url} within {timeout:g}s: {self.error_tail()}")
                time.sleep(0.01)
        except BaseException:
            self.stop()
            raise

    def _pid_written(self) -> bool:
        try:
            return self.pid_file.read_text().strip() == str(self._proc.pid if self._proc else "")
        except OSError:
            return False

    def _answers(self) -> bool:
        try:
            with socket.create_connection((self.listen_host, self.listen_port), timeout=0.2) as s:
                s.sendall(f"GET {GENERATION_PATH} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
                return s.recv(16).startswith(b"HTTP/")
        except OSError:
            return False

    def stop(self, timeout: float = 5.0) -> None:
        """Graceful QUIT, then KILL the whole process group, then reap.  Never leaves a process."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGQUIT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # workers are in the master's group (its own session): none may outlive it
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        wait_group_gone(proc.pid, timeout)

    def error_tail(self, lines: int = 20) -> str:
        try:
            return " | ".join(self.error_log.read_text(errors="replace").splitlines()[-lines:]) or "(error log empty)"
        except OSError:
            return "(no error log)"

    def __enter__(self) -> LocalNginx:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
