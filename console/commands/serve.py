"""`canary-console serve [--listen ADDR]`: the live console, read-only, in a browser (docs/serve.md).

textual-serve (PyPI ``textual-serve``) serves a page with a terminal (xterm.js); each browser that
opens it gets its own console process, ``canary-console watch --mirror``: the journal followed as
``watch`` does, on a link with role "observer" that refuses every intent, in a console that binds
no key that moves traffic (console/ui/app.py ``UNBOUND_FOR_OBSERVER``).

The command textual-serve runs is one string (it starts it with a shell): ``mirror_command``
builds it with ``shlex.quote`` from fixed parts (this Python, ``-m console.commands.cli``,
``watch --mirror``) and the config and .env paths only.  Nothing a browser sends reaches it: the
page sends keys, its size, focus and pings; downloads are only files the console itself delivers
(a screenshot from the palette); ``/static`` is textual-serve's own directory.

Loopback (127.0.0.1:8566) by default; any other address must be given with ``--listen`` and the
first line says that it is not loopback.  There is no login: whoever reaches the port sees the console.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from console.commands.term import err, out
from console.core.exits import ExitCode

DEFAULT_LISTEN = "127.0.0.1:8566"
LISTEN_ALLOWED = "HOST:PORT, HOST an IP address or localhost ([::1]:PORT for IPv6), PORT 1..65535 (e.g. 127.0.0.1:8566)"
SHUTDOWN_S = 2.0  # on Ctrl+C / SIGTERM: open consoles get this long to end before they are cancelled


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port); ValueError (what is allowed) otherwise."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:([0-9]{1,5})|([^:\[\]\s]+):([0-9]{1,5})", text)
    host, port = (m.group(1) or m.group(3), int(m.group(2) or m.group(4))) if m else ("", 0)
    if m and host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            host = ""
    if not host or not 1 <= port <= 65535:
        raise ValueError(f"{text!r} is not valid; allowed: {LISTEN_ALLOWED}")
    return host, port


def is_loopback(host: str) -> bool:
    return host == "localhost" or ipaddress.ip_address(host).is_loopback


def public_url(host: str, port: int) -> str:
    """The address the page tells the browser to open its websocket on: the host itself, or for a
    wildcard (0.0.0.0, ::) this machine's name."""
    if host != "localhost" and ipaddress.ip_address(host).is_unspecified:
        import socket

        host = socket.getfqdn()
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def mirror_command(config_path: Path | None, env_file: str | None, python: str = sys.executable) -> str:
    """The shell command textual-serve runs for each browser: fixed words and two quoted paths."""
    argv = [python, "-m", "console.commands.cli"]
    if config_path is not None:
        argv += ["--config", str(Path(config_path).resolve())]
    if env_file:
        argv += ["--env-file", str(Path(env_file).resolve())]
    argv += ["watch", "--mirror"]
    return "exec " + shlex.join(argv)  # exec: the console is the shell's process, signals reach it


def run(args: argparse.Namespace, cfg: Any) -> int:
    """Serve until Ctrl+C / SIGTERM; 0 then, 4 when the address cannot be listened on."""
    host, port = args.listen if isinstance(args.listen, tuple) else parse_listen(args.listen or DEFAULT_LISTEN)
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    where = ("loopback only" if is_loopback(host) else
             "NOT loopback: anyone who can reach this address sees the console, read-only, without a login")
    server = _server(mirror_command(cfg.path, getattr(args, "env_file", None)), host, port)

    def ready() -> None:
        out(f"serving the read-only console of {cfg.journal_path} on {url} ({where}); Ctrl+C stops")

    try:
        server.serve_until_stopped(ready)
    except OSError as e:
        err(f"cannot listen on {host}:{port}: {e.strerror or e}; choose another --listen ({LISTEN_ALLOWED})")
        return ExitCode.PRECONDITION
    return ExitCode.OK


def _server(command: str, host: str, port: int) -> Any:
    """A textual-serve Server that says one line when it listens and ends its consoles quickly."""
    import asyncio
    import signal

    from aiohttp import web
    from textual_serve.server import Server

    class MirrorServer(Server):
        async def on_startup(self, app: web.Application) -> None:
            return None  # no logo, no command echoed: `run` says where it listens

        def serve_until_stopped(self, ready: Any) -> None:
            """Server.serve, but the line is printed once the socket is bound (a bind error raises
            OSError first) and open consoles get SHUTDOWN_S, not aiohttp's 60 s, to end."""
            self.initialize_logging()
            loop = asyncio.new_event_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.request_exit)
            try:
                web.run_app(self._make_app(), host=self.host, port=self.port, handle_signals=False, loop=loop,
                            shutdown_timeout=SHUTDOWN_S, print=lambda *_: ready())
            finally:
                if not loop.is_closed():
                    loop.close()

    return MirrorServer(command, host=host, port=port, title="canary-console (read-only)",
                        public_url=public_url(host, port))
