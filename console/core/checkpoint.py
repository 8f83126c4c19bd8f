"""Every deployment of a journal and where it says the traffic is, folded, without reading the
whole journal each time.

A journal grows by a check record every ``check_interval`` (240 a deployment at the defaults) and
is never cut, so after a year of deploys a fold of all of it takes seconds, and `rollback` folds
it before it touches nginx (to journal the change under the open deployment).  A checkpoint
beside the journal, ``<journal>.fold.json``, keeps the fold up to an offset; ``fold_in`` folds
only the records after it, and writes a fresh checkpoint once that tail is long.  `rollback`,
`weights`, `deploy` and `status` fold through it.

The journal stays the source of truth: the checkpoint is derived, written atomically, never
fsynced, and used only while it still describes this journal (the line that ends at its offset
is the one it remembers) and this fold (``_fold_id`` changes with the fold's code and the fields
it reads).
Anything else (no file, a torn or foreign one, a journal replaced or cut) means a full fold, the
same answer a little later.  Failing to write one changes nothing.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import CodeType
from typing import Any

from console.core import events as ev
from console.core import state
from console.core.journal import tail_records
from console.core.state import DeploymentState, RouterTruth

REFRESH_RECORDS = 500  # a fold that read this many records past the checkpoint writes a new one
_LAST_LINE_MAX = 1 << 20  # the remembered line is looked for this far back from the offset, at most


def _fold_id() -> int:
    """Changes with the fold's code, DeploymentState's fields and the events' (what a record is
    read back as): a checkpoint of another fold is not used."""
    parts = [f.name.encode() for f in fields(DeploymentState)] + [f.name.encode() for f in fields(ev.GateResult)]
    for kind, cls in ev._EVENT_TYPES.items():
        parts += [kind.encode(), *(f.name.encode() for f in fields(cls))]
    parts += [f.name.encode() for f in fields(RouterTruth)]
    for fn in (state.apply, state._changes, state._hosts_applied, state.deployments, state.router_truth,
               ev.event_from_record):
        parts += _code_parts(fn.__code__)
    return zlib.crc32(b"\0".join(parts))


def _code_parts(code: CodeType) -> list[bytes]:
    """What a code object computes, without what differs between processes (a nested code
    object's repr has its address)."""
    out = [code.co_code, repr(code.co_names).encode()]
    for c in code.co_consts:
        out += _code_parts(c) if isinstance(c, CodeType) else [repr(c).encode()]
    return out


def path_for(journal_path: str | os.PathLike[str]) -> Path:
    p = Path(journal_path)
    return p.with_name(p.name + ".fold.json")


@dataclass(frozen=True)
class Folded:
    """A whole journal, folded: ``state.deployments`` and ``state.router_truth`` of every record."""

    deployments: dict[str, DeploymentState]
    truth: RouterTruth


def fold_in(journal_path: str | os.PathLike[str], *, refresh: int = REFRESH_RECORDS) -> Folded:
    """``state.deployments(records)`` (the same dict in the same order) and
    ``state.router_truth(records)`` of ``read_records(journal_path)``, from the checkpoint and
    the records after it; writes a new checkpoint when ``refresh`` or more records were folded
    past the old one."""
    fold = _fold_id()
    deps, truth, offset = _load(journal_path, fold)
    records, end = tail_records(journal_path, offset)
    state.deployments(records, deps)
    truth = state.router_truth(records, truth)
    if len(records) >= refresh and end > 0:
        _save(journal_path, fold, Folded(deps, truth), end)
    return Folded(deps, truth)


def deployments_in(journal_path: str | os.PathLike[str], *, refresh: int = REFRESH_RECORDS) -> dict[str, DeploymentState]:
    """``state.deployments(read_records(journal_path))``, through the checkpoint (``fold_in``)."""
    return fold_in(journal_path, refresh=refresh).deployments


def _last_line(f: Any, offset: int) -> bytes:
    """The journal's line that ends at ``offset`` (b"" when no line ends there, or it is longer
    than ``_LAST_LINE_MAX``)."""
    size = 4096
    while True:
        start = max(0, offset - size)
        f.seek(start)
        chunk = f.read(offset - start)
        if not chunk.endswith(b"\n"):
            return b""
        cut = chunk.rfind(b"\n", 0, len(chunk) - 1)
        if cut >= 0 or start == 0:
            return chunk[cut + 1:]
        if size >= _LAST_LINE_MAX:
            return b""
        size *= 4


def _load(journal_path: str | os.PathLike[str], fold: int) -> tuple[dict[str, DeploymentState], RouterTruth | None, int]:
    """The checkpoint's deployments, router truth and offset, or ({}, None, 0) when it does not
    describe this journal."""
    nothing: tuple[dict[str, DeploymentState], RouterTruth | None, int] = ({}, None, 0)
    try:
        doc = json.loads(path_for(journal_path).read_bytes())
        offset = int(doc["offset"])
        if doc.get("fold") != fold or offset <= 0:
            return nothing
        with open(journal_path, "rb") as f:
            if os.fstat(f.fileno()).st_size < offset:
                return nothing
            line = _last_line(f, offset)
        if not line or zlib.crc32(line) != doc["line_crc"] or len(line) != doc["line_len"]:
            return nothing
        return {d["deployment_id"]: _state(d) for d in doc["deployments"]}, RouterTruth(**doc["truth"]), offset
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return nothing


def _state(d: dict[str, Any]) -> DeploymentState:
    kw: dict[str, Any] = {}
    for f in fields(DeploymentState):
        if f.name not in d:
            continue
        v = d[f.name]
        if f.name == "results":
            v = tuple(ev.GateResult.from_dict(g) for g in v)
        elif isinstance(v, list):
            v = tuple(v)
        kw[f.name] = v
    return DeploymentState(**kw)


def _save(journal_path: str | os.PathLike[str], fold: int, folded: Folded, offset: int) -> None:
    target = path_for(journal_path)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    try:
        with open(journal_path, "rb") as f:
            line = _last_line(f, offset)
        if not line:
            return
        doc = {"fold": fold, "offset": offset, "line_crc": zlib.crc32(line), "line_len": len(line),
               "deployments": [asdict(d) for d in folded.deployments.values()], "truth": asdict(folded.truth)}
        data = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # as private as the journal
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except (OSError, ValueError, TypeError):
        try:
            tmp.unlink()
        except OSError:
            pass
