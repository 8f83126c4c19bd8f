"""The router's side effects on disk and in subprocesses: atomic writes and argv-only commands.

Light stdlib only: this is on the CLI's rollback path, which runs without an event loop
(``run_command_now``), so asyncio is imported only by ``run_command``.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

__all__ = ["DEFAULT_COMMAND_TIMEOUT", "fsync_dir", "remove_durably", "run_command", "run_command_now", "write_atomic"]

DEFAULT_COMMAND_TIMEOUT = 15.0


def fsync_dir(directory: Path) -> None:
    """Make a rename or an unlink in ``directory`` durable."""
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
    fsync_dir(directory)


def remove_durably(path: Path) -> None:
    path.unlink(missing_ok=True)
    fsync_dir(path.parent)


async def run_command(argv: list[str], timeout: float) -> tuple[int, str]:
    """Run argv (no shell) with a timeout; (exit code, combined output).  127: could not start.

    The command runs in its own session; on a timeout or a cancellation its whole process
    group is killed and reaped, so nothing it started is left behind."""
    import asyncio

    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as e:
        return _cannot_run(argv, e)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException as e:
        _kill_group(proc.pid)
        await proc.wait()
        if isinstance(e, TimeoutError):
            return _timed_out(argv, timeout)
        raise
    return proc.returncode if proc.returncode is not None else -1, out.decode(errors="replace").strip()


def run_command_now(argv: list[str], timeout: float) -> tuple[int, str]:
    """``run_command`` without an event loop (the CLI's rollback): the same argv, session,
    timeout, answers and clean-up, blocking."""
    import subprocess

    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
    except OSError as e:
        return _cannot_run(argv, e)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except BaseException as e:
        _kill_group(proc.pid)
        proc.communicate()
        if isinstance(e, subprocess.TimeoutExpired):
            return _timed_out(argv, timeout)
        raise
    return proc.returncode, out.decode(errors="replace").strip()


def _cannot_run(argv: list[str], e: OSError) -> tuple[int, str]:
    return 127, f"{argv[0]}: cannot run: {e.strerror or e}"


def _timed_out(argv: list[str], timeout: float) -> tuple[int, str]:
    return -1, f"{' '.join(argv)}: timed out after {timeout:g}s"


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
