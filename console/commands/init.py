"""`canary-console init [--dry-run]`: adopt an existing nginx setup.

Reads the hand-written upstream file at ``[nginx] upstream_file`` (what it accepts:
``console.adapters.nginx.adopt``), writes the first managed file with the same servers at the
same split, and has the router test, reload and confirm it: one journaled change (intent, then
outcome) under deployment "manual", with the driver lock held, as `weights` does.  Then it
prints what nginx.conf still needs.

* A file it does not understand, or whose addresses or upstream name differ from the config's,
  is refused in one line, exit 2, before anything is locked, written, reloaded or journaled.
  The config is kept as the truth (the docstring of ``adopt`` says why); the line names the key
  to set.
* A file canary-console already manages: said so, nothing changed, exit 0.
* ``nginx -t`` or the reload fails: the router puts the hand-written file back, exit 6.
* Confirmation: only ``[nginx] verify_listen`` can confirm this first file (its generation
  server is in the file).  A generation ``location`` in nginx.conf cannot exist before the file
  defines ``$canary_generation``, so with one the change counts once nginx reloads, and the
  lines printed say what to add and how to confirm afterwards (``adopt.confirmation``).
* Whether nginx.conf includes the file is asked of nginx itself: ``nginx -T`` (the
  ``test_command`` with ``-T``) lists every file it reads.  Read-only, also under ``--dry-run``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import stat
from pathlib import Path
from typing import Any

from console.adapters.nginx import adopt
from console.adapters.nginx.files import run_command
from console.adapters.nginx.router import EXAMPLE_VERIFY_LISTEN, NginxRouter
from console.commands.term import err, report_router_error
from console.core import events as ev
from console.core import manual
from console.core.exits import ExitCode
from console.core.journal import Journal
from console.core.lock import DriverLock, LockHeld, lock_path_for
from console.core.routing import RouterError

DUMP_TIMEOUT = 15.0


def read_upstream(path: Path) -> bytes:
    """The file's bytes; adopt.Refused (one line) for what is not a readable regular file.
    Never blocks on a FIFO or a device: the type is checked before and after opening."""
    where = str(path)
    allowed = "allowed: the hand-written upstream file nginx includes now"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise adopt.Refused(f"{where} is a symlink to {os.readlink(path)}, which does not exist; {allowed}") from None
        raise adopt.Refused(f"{where} does not exist; {allowed} (without one, `canary-console weights 0` "
                            "writes a first managed file)") from None
    except OSError as e:
        raise adopt.Refused(f"{where} cannot be read ({e.strerror}); {allowed}") from None
    if stat.S_ISDIR(st.st_mode):
        raise adopt.Refused(f"{where} is a directory; {allowed} ([nginx] upstream_file names the file itself)")
    if not stat.S_ISREG(st.st_mode):
        raise adopt.Refused(f"{where} is not a regular file ({_kind(st.st_mode)}); {allowed}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as e:
        raise adopt.Refused(f"{where} cannot be read ({e.strerror}); {allowed}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced between stat and open
            raise adopt.Refused(f"{where} is not a regular file; {allowed}")
        chunks, size = [], 0
        while size <= adopt.MAX_BYTES and (chunk := os.read(fd, 65536)):
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    except OSError as e:
        raise adopt.Refused(f"{where} cannot be read ({e.strerror}); {allowed}") from None
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a file"


def _refused(e: adopt.Refused) -> ExitCode:
    err(f"init: {e}; nothing was changed")
    return ExitCode.USAGE


async def _included(router: NginxRouter, path: str, text: str) -> tuple[bool | None, str | None]:
    """(does nginx read the file, under which name); (None, None) when nginx cannot be asked."""
    argv = adopt.dump_command(router.test_command)
    if argv is None:
        return None, None
    rc, out = await run_command(argv, DUMP_TIMEOUT)
    if rc != 0:
        return None, None
    found = adopt.included_as(out, path, text)
    return found is not None, found


def run(args: argparse.Namespace, cfg: Any) -> int:
    path = Path(os.path.abspath(cfg.upstream_file))
    n = cfg["nginx"]
    config = str(cfg.path) if cfg.path else "the config"
    try:
        data = read_upstream(path)
        text = adopt.decode(data, str(path))
        if adopt.is_managed(text):
            print(f"{path} is already managed by canary-console: nothing changed "
                  "(`canary-console status` shows what it routes)")
            return ExitCode.OK
        found = adopt.adopt(text, str(path), n["upstream_name"], n["production"], n["canary"], config)
        router = NginxRouter.from_config(cfg)
    except ValueError as e:  # adopt.Refused, or a config value NginxRouter refuses
        return _refused(adopt.Refused(str(e)))
    w = found.weight
    included, included_path = asyncio.run(_included(router, str(path), text))
    why_not = adopt.confirmation(router.verify_url, router.verify_listen, included)
    steps = adopt.next_steps(str(path), included, included_path, router.verify_url, router.verify_listen,
                             not why_not, w, config, EXAMPLE_VERIFY_LISTEN)
    split = f"canary {w}% / production {100 - w}%"
    if args.dry_run:
        print(f"would adopt {path}: {split}, as the hand-written file routes (dry run: nothing changed)")
        _print_dropped(found)
        print(f"--- {path}, as init would write it (the generation id is chosen when it is written)")
        print(router.render(w, "manual:dry-run"), end="")
        print("---")
        _print_steps(steps, path, dry_run=True)
        return ExitCode.OK
    if why_not:
        router.verify_url = ""  # this one change counts once nginx reloads (adopt.confirmation says why)
    op = ev.Operator.current()
    lk = DriverLock(lock_path_for(cfg.journal_path))
    try:
        lk.acquire("init", op)
    except LockHeld as e:
        err(f"another driver holds the lock: {e}. Watch with `canary-console status` or `canary-console watch`.")
        return ExitCode.LOCKED
    try:
        try:
            if read_upstream(path) != data:
                raise adopt.Refused(f"{path} changed while init read it; run init again")
        except adopt.Refused as e:
            return _refused(e)
        reason = f"init: adopted {path} at canary {w}%" + (f" (not verified: {why_not})" if why_not else "")
        action = ev.OperatorAction(action="init", operator=op, detail=f"{w}%", deployment_id="manual", version="")
        with Journal(cfg.journal_path) as j:
            took = asyncio.run(manual.router_change(j, router, w, reason, "manual", "", before=(action,),
                                                     unverified=why_not))
    except RouterError as e:
        return report_router_error(e)
    finally:
        lk.release()
    if why_not:
        print(f"adopted {path}: {split}, as the hand-written file routed; nginx -t passed and nginx reloaded it "
              f"(not verified: {why_not})")
    else:
        print(f"adopted {path}: {split}, as the hand-written file routed; nginx serves it "
              f"(verified in {took * 1000:.0f} ms)")
    _print_dropped(found)
    _print_steps(steps, path)
    return ExitCode.OK


def _print_dropped(found: adopt.Adoption) -> None:
    if found.dropped:
        print(f"not kept by the managed file (it writes only the servers, weight= and its own zone; nginx's defaults "
              f"max_fails=1 fail_timeout=10s apply): {'; '.join(found.dropped)}")


def _print_steps(steps: list[str], path: Path, dry_run: bool = False) -> None:
    if not steps:
        print(("nothing else to add, once init confirms it: " if dry_run else "nothing else to add: ")
              + f"nginx reads {path} and serves its generation on [nginx] verify_listen")
        return
    print("to finish:")
    for s in steps:
        print(f"  {s}")
