"""The engine as its own background process: `python -m console.remote.daemon ...`.

Why a separate process: an SSH drop kills the console's process group; the rollout must go
on (gates, automatic rollback) with nobody attached.  ``spawn_engine`` starts it in a new
session with its output in ``<journal>.engine.log``, hands it the driver lock (the flock's
file descriptor is inherited, so no other driver can slip in between), and the daemon:

* ignores SIGHUP, turns SIGTERM/SIGINT into an interrupt (traffic stays, exit 130, journaled);
* writes its pid to ``<journal>.pid`` and into the lock file;
* serves consoles on ``<journal>.sock`` (console.remote.server);
* exits when the deployment ends: rolled back, failed, interrupted, promoted, or at 100%
  when nobody will promote (``--stay-at-100`` keeps it monitoring until promote/rollback/stop).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from console.core.events import Operator, utc_now_iso
from console.core.exits import ExitCode
from console.remote import wire
from console.remote.client import socket_answers


def _log(line: str) -> None:
    print(f"{utc_now_iso()} {line}", flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m console.remote.daemon", description="the detached canary-console engine")
    p.add_argument("--config", metavar="PATH")
    p.add_argument("--env-file", metavar="PATH")
    p.add_argument("--version", required=True)
    p.add_argument("--deployment-id", required=True)
    p.add_argument("--start-index", type=int, default=0)
    p.add_argument("--resumed", action="store_true")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--stay-at-100", action="store_true")
    p.add_argument("--observation-period", type=float)
    p.add_argument("--check-interval", type=float)
    p.add_argument("--lock-fd", type=int, help="an inherited descriptor of the driver lock, already flocked")
    p.add_argument("--operator", help="JSON of the operator who started the deployment")
    p.add_argument("--queue-size", type=int, default=0, help="messages queued per console before it is dropped")
    return p


def spawn_engine(
    cfg: Any,
    version: str,
    deployment_id: str,
    *,
    lock_fd: int,
    start_index: int = 0,
    resumed: bool = False,
    dry_run: bool = False,
    stay_at_100: bool = False,
    env_file: str | None = None,
    observation_period: float | None = None,
    check_interval: float | None = None,
    operator: Operator | None = None,
) -> subprocess.Popen[bytes]:
    """Start the engine process; it inherits ``lock_fd`` (the caller closes its own copy later)."""
    journal = Path(cfg.journal_path)
    journal.parent.mkdir(parents=True, exist_ok=True)
    log = wire.log_path_for(journal)
    argv = [sys.executable, "-m", "console.remote.daemon", "--version", version, "--deployment-id", deployment_id,
            "--start-index", str(start_index), "--lock-fd", str(lock_fd)]
    if cfg.path is not None:
        argv += ["--config", str(Path(cfg.path).resolve())]
    if env_file:
        argv += ["--env-file", str(Path(env_file).resolve())]
    for flag, on in (("--resumed", resumed), ("--dry-run", dry_run), ("--stay-at-100", stay_at_100)):
        if on:
            argv.append(flag)
    if observation_period is not None:
        argv += ["--observation-period", repr(observation_period)]
    if check_interval is not None:
        argv += ["--check-interval", repr(check_interval)]
    op = operator or Operator.current()
    argv += ["--operator", json.dumps({"user": op.user, "ssh_client": op.ssh_client, "host": op.host})]
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, start_new_session=True,
                                pass_fds=(lock_fd,), env=env)
    finally:
        os.close(fd)


def wait_ready(proc: subprocess.Popen[bytes], socket_path: Path, timeout: float = 30.0) -> bool:
    """True once the engine answers on its socket; False if it exited first (or never answered)."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if socket_answers(socket_path):
            return True
        time.sleep(delay)  # polling a condition with a deadline
        delay = min(0.05, delay * 2)
    return False


# ---------------------------------------------------------------------------- the daemon itself
def _hold_lock(cfg: Any, args: argparse.Namespace, operator: Operator) -> Any:
    """The driver lock: the inherited descriptor, or a fresh one (started by hand)."""
    from console.core.lock import DriverLock, LockHeld, lock_path_for

    path = lock_path_for(Path(cfg.journal_path))
    command = f"engine: deploy --version {args.version} (detached)"
    if args.lock_fd is None:
        lk = DriverLock(path)
        try:
            lk.acquire(command, operator)
        except LockHeld as e:
            _log(f"another driver holds the lock: {e}")
            return None
        return lk
    info = {"user": operator.user, "ssh_client": operator.ssh_client, "host": socket.gethostname(), "pid": os.getpid(),
            "since": utc_now_iso(), "command": command}
    os.ftruncate(args.lock_fd, 0)
    os.pwrite(args.lock_fd, (json.dumps(info) + "\n").encode(), 0)
    os.fsync(args.lock_fd)
    return DriverLock(path, fd=args.lock_fd)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a closed terminal is no reason to stop a rollout
    args = build_parser().parse_args(argv)
    from console.core.config import ConfigError, load_config

    overrides = {("rollout", "observation_period"): args.observation_period,
                 ("rollout", "check_interval"): args.check_interval}
    try:
        cfg = load_config(args.config, args.env_file, overrides)
    except ConfigError as e:
        _log(f"config error: {e}")
        return ExitCode.USAGE
    operator = Operator(**json.loads(args.operator)) if args.operator else Operator.current()
    lk = _hold_lock(cfg, args, operator)
    if lk is None:
        return ExitCode.LOCKED
    journal_path = Path(cfg.journal_path)
    pid_file = wire.pid_path_for(journal_path)
    try:
        pid_file.write_text(f"{os.getpid()}\n")
        _log(f"engine pid {os.getpid()} on {socket.gethostname()}: {args.deployment_id} ({args.version}), "
             f"journal {journal_path}")
        code = asyncio.run(_serve(cfg, args, operator))
        _log(f"engine exits {code}")
        return code
    finally:
        try:
            if pid_file.read_text().strip() == str(os.getpid()):
                pid_file.unlink()
        except OSError:
            pass
        lk.release()


async def _serve(cfg: Any, args: argparse.Namespace, operator: Operator) -> int:
    from console.core.eventfmt import format_event
    from console.core.journal import Journal
    from console.remote.server import QUEUE_SIZE, EngineServer
    from console.wiring import build_engine

    journal = Journal(cfg.journal_path)
    engine = build_engine(
        cfg, args.version, journal=journal, dry_run=args.dry_run, start_index=args.start_index,
        deployment_id=args.deployment_id, resumed=args.resumed, stay_at_100=args.stay_at_100, operator=operator,
        listeners=[lambda e: print(format_event(e), flush=True)],
    )
    server = EngineServer(engine, wire.socket_path_for(Path(cfg.journal_path)), queue_size=args.queue_size or QUEUE_SIZE,
                          log=lambda line: print(line, flush=True))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, engine.interrupt, sig.name)
    code = None
    try:
        await server.start()
        code = await engine.run()
        return code
    finally:
        await server.close(code)
        await engine.aclose()
        journal.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
