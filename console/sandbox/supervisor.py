"""The demo's process supervisor: every child it starts stops on every exit path.

Why it looks the way it does:

* Each child runs in its own session (so its own process group): stopping it is one
  ``killpg`` that also reaches whatever it forked (nginx workers), and a Ctrl+C in the
  terminal reaches only the demo itself, which then stops the children in order.
* One object owns every child and one ``close()`` stops them all: SIGTERM to every group
  first (they shut down in parallel), then SIGKILL to whatever is left after the grace
  period, then ``wait()`` so nothing stays a zombie, then the temporary directory goes
  (unless kept).  ``close()`` runs from ``finally`` blocks, from the SIGTERM/SIGHUP handler
  (which turns the signal into an exception that unwinds through those blocks) and from
  ``atexit``; it is idempotent.
* Signals are blocked while a child is being spawned and recorded, so a SIGTERM can never
  land between ``fork`` and the bookkeeping and leave an untracked child.  The child
  unblocks them again before ``exec`` (a signal mask survives exec: a service started with
  SIGTERM blocked could only be SIGKILLed).
* Children also get ``PR_SET_PDEATHSIG`` (Linux): if the demo itself is SIGKILLed, the
  kernel sends them SIGTERM.

No UI imports here.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from console.sandbox.procs import die_with_parent, killpg, wait_group_gone

__all__ = ["Child", "PortTaken", "Sandbox", "SandboxInterrupted", "StartFailed", "free_port", "port_free"]

MARKER_ENV = "CANARY_DEMO_SANDBOX"  # every child carries it: a test can find strays by it
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
GRACE = 5.0  # seconds between SIGTERM and SIGKILL


class StartFailed(RuntimeError):
    """A child did not come up; the message is the one line to show (what, and what to do)."""


class PortTaken(StartFailed):
    """A port the sandbox needs is in use by another process."""


class SandboxInterrupted(BaseException):
    """SIGTERM or SIGHUP outside the rollout: unwind through every ``finally``, then exit."""

    def __init__(self, signame: str) -> None:
        super().__init__(signame)
        self.signame = signame


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether ``port`` can be bound now (nothing listens on it)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _child_setup() -> None:  # pragma: no cover - runs in the child between fork and exec
    """The signal mask survives exec: unblock what ``spawn`` held, or the child could never be
    stopped by SIGTERM.  Then ask the kernel for SIGTERM when the demo dies (Linux)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    die_with_parent()


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP until the block ends (then they are delivered)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@dataclass
class Child:
    """One supervised process group.  ``stop`` replaces the default SIGTERM/SIGKILL when the
    child has its own way down (nginx: QUIT, then KILL to the group)."""

    name: str
    pid: int
    log_path: Path | None = None
    port: int | None = None
    url: str = ""
    proc: subprocess.Popen[bytes] | None = None
    stop: Callable[[], None] | None = None
    stopped: bool = False

    def running(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        try:
            os.killpg(self.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def log_tail(self, limit: int = 600) -> str:
        """The end of what the child printed, folded to one line."""
        if self.log_path is None:
            return ""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(ln.strip() for ln in text.strip().splitlines()[-6:])[-limit:]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "pid": self.pid, "pgid": self.pid, "port": self.port, "url": self.url}


class Sandbox:
    """A temporary directory and the children started in it.

        with Sandbox(keep=False, progress=print) as sb:
            child = sb.spawn("canary", [sys.executable, "-m", ...], port=8001)
            sb.wait_http(child, "http://127.0.0.1:8001/health", 30, "the canary")
            ...
        # every child stopped and reaped; the directory removed
    """

    def __init__(self, root: Path | None = None, *, keep: bool = False, grace: float = GRACE,
                 progress: Callable[[str], None] | None = None) -> None:
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="canary-demo-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self.grace = grace
        self.progress = progress or (lambda line: None)
        self.children: list[Child] = []
        self._closed = False
        self._closing = False
        self._lock = threading.RLock()
        self._old_handlers: dict[int, Any] = {}
        self._atexit_registered = False
        self._callbacks: list[Callable[[], object]] = []

    # ------------------------------------------------------------------ signals / atexit

    def install_handlers(self, release: Any = None) -> None:
        """SIGTERM and SIGHUP raise SandboxInterrupted in the main thread, SIGINT its usual
        KeyboardInterrupt; either way the stack unwinds through ``close()``, and while it runs
        further signals are ignored.  Call it again after an event loop removed its own
        handlers (asyncio puts back SIG_DFL, which would kill the demo without cleaning up)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in STOP_SIGNALS:
            old = signal.signal(sig, self._on_signal)
            self._old_handlers.setdefault(sig, old)
        if not self._atexit_registered:
            atexit.register(self.close)
            self._atexit_registered = True
        if release is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, release)  # a held signal is delivered now

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self._closing or self._closed:
            return  # already on the way down: finish stopping the children
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SandboxInterrupted(signal.Signals(signum).name)

    @staticmethod
    def hold_signals() -> Any:
        """Hold the stop signals (they stay pending) until ``install_handlers(release=mask)``:
        covers the moment an event loop closes and puts back SIG_DFL."""
        return signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)

    def restore_handlers(self) -> None:
        for sig, old in self._old_handlers.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, old if old is not None else signal.SIG_DFL)
        self._old_handlers.clear()
        if self._atexit_registered:
            atexit.unregister(self.close)
            self._atexit_registered = False

    def __enter__(self) -> Sandbox:
        self.install_handlers()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.close()
        finally:
            self.restore_handlers()

    # ------------------------------------------------------------------ children

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: this process's environment) plus the sandbox marker."""
        env = dict(os.environ if base is None else base)
        env[MARKER_ENV] = str(self.root)
        return env

    def on_close(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` at ``close()``, before the children stop (newest first): the in-process
        traffic generator stops before the nginx it talks to."""
        self._callbacks.append(fn)

    def spawn(self, name: str, argv: Sequence[str], *, port: int | None = None, url: str = "",
              env: dict[str, str] | None = None, cwd: Path | None = None) -> Child:
        """Start ``argv`` in its own session, output to ``<root>/logs/<name>.log``; ``env`` is
        the whole environment (default: ours), the sandbox marker is added."""
        if self._closed or self._closing:
            raise RuntimeError("the sandbox is closed")
        log_dir = self.root / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{name}.log"
        with _signals_blocked(), open(log_path, "ab") as out:
            try:
                proc = subprocess.Popen(
                    list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True, env=self.env(env), cwd=cwd,
                    preexec_fn=_child_setup,
                )
            except OSError as e:
                raise StartFailed(f"cannot start {name} ({argv[0]}): {e.strerror or e}") from None
            child = Child(name, proc.pid, log_path, port, url, proc=proc)
            self.children.append(child)
        self.write_manifest()
        return child

    def adopt(self, name: str, pid: int, stop: Callable[[], None], *, port: int | None = None, url: str = "",
              log_path: Path | None = None) -> Child:
        """Track a process group someone else started (it stops with ``stop``)."""
        child = Child(name, pid, log_path, port, url, stop=stop)
        self.children.append(child)
        self.write_manifest()
        return child

    def started(self, start: Callable[[], Any]) -> Any:
        """Run a start function that spawns a child itself, with the stop signals held, so
        that it either returns (and the caller adopts the child) or cleans up after itself."""
        with _signals_blocked():
            return start()

    def wait_http(self, child: Child, url: str, timeout: float, what: str, ok: Callable[[int, bytes], bool] | None = None,
                  interval: float = 0.05) -> None:
        """Poll ``url`` until it answers (``ok(status, body)``, default 2xx); StartFailed (or
        PortTaken) with the child's own last words if it exits or the deadline passes."""
        deadline = time.monotonic() + timeout
        accept = ok or (lambda status, _body: 200 <= status < 300)
        while True:
            if not child.running():
                self._raise_exited(child, what)
            try:
                with urllib.request.urlopen(url, timeout=1.0) as r:
                    if accept(r.status, r.read()):
                        return
            except urllib.error.HTTPError as e:
                if accept(e.code, e.read()):
                    return
            except (OSError, ValueError):
                pass
            if time.monotonic() >= deadline:
                tail = child.log_tail()
                raise StartFailed(f"{what} did not answer on {url} within {timeout:g}s" + (f": {tail}" if tail else ""))
            time.sleep(interval)  # polling interval of a deadline loop

    def _raise_exited(self, child: Child, what: str) -> None:
        code = child.proc.returncode if child.proc is not None else None
        tail = child.log_tail()
        if "address already in use" in tail.lower() and child.port:
            raise PortTaken(port_taken_line(child.port, what))
        raise StartFailed(f"{what} exited" + (f" with {code}" if code is not None else "") + (f": {tail}" if tail else ""))

    # ------------------------------------------------------------------ stopping

    def close(self) -> None:
        """Stop every child (newest first), reap it, remove the directory unless kept.

        Another thread calling meanwhile waits until it is done (the console's watchdog and
        the main thread may both get here)."""
        with self._lock:
            if self._closed or self._closing:
                return
            self._closing = True
            try:
                for fn in reversed(self._callbacks):
                    try:
                        fn()
                    except Exception as e:  # the children must stop whatever a callback does
                        self.progress(f"cleanup step failed ({type(e).__name__}: {e}); stopping the processes anyway")
                self._stop_children()
            finally:
                self._closed = True
                self._closing = False
                if not self.keep:
                    shutil.rmtree(self.root, ignore_errors=True)

    def _stop_children(self) -> None:
        live = [c for c in reversed(self.children) if not c.stopped]
        # custom stops (nginx: QUIT then KILL) first and one by one; they bound their own waits
        for c in live:
            if c.stop is not None:
                try:
                    c.stop()
                except Exception as e:  # keep stopping the others, then SIGKILL this group below
                    self.progress(f"stopping {c.name} failed ({type(e).__name__}: {e}); killing its process group")
        for c in live:
            if c.stop is None:
                killpg(c.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for c in live:
            if c.proc is not None:
                try:
                    c.proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        for c in live:
            killpg(c.pid, signal.SIGKILL)  # whatever is left of the group, the leader included
            if c.proc is not None:
                c.proc.wait()
            wait_group_gone(c.pid, 5.0)
            c.stopped = True

    # ------------------------------------------------------------------ reporting

    def describe(self) -> dict[str, Any]:
        return {"dir": str(self.root), "keep": self.keep, "children": [c.describe() for c in self.children]}

    def write_manifest(self) -> Path:
        """``<root>/sandbox.json``: the children's pids, process groups and ports, rewritten
        (atomically) whenever a child is added, so that it is right at every moment."""
        path = self.root / "sandbox.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.describe(), indent=2) + "\n")
        os.replace(tmp, path)
        return path


def port_taken_line(port: int, what: str) -> str:
    return (f"port {port} on 127.0.0.1 is taken, so {what} cannot listen there; "
            f"see who holds it with: ss -ltnp 'sport = :{port}', then free it or choose another port")



