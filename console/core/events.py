"""Engine events and operator intents: plain, frozen, serializable dataclasses.

Every event the engine emits is also one journal record (``to_record``), and the same
records travel over the engine socket, so a console attached later can rebuild exactly
what a console attached from the start saw.  Intents are what an operator asks for.

This module must stay importable without textual or rich (see tests/test_import_hygiene.py).
"""

from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

PROTOCOL_VERSION = 1

# verdicts of one gate in one check
PASS = "pass"
FAIL = "fail"
INCONCLUSIVE = "inconclusive"
ERROR = "error"
VERDICTS = (PASS, FAIL, INCONCLUSIVE, ERROR)

# the stage index of the shadow stage ([rollout] shadow_period): before stage 1 (index 0)
SHADOW_INDEX = -1


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Operator:
    """Who asked for something: $USER plus the SSH client, when there is one."""

    user: str
    ssh_client: str | None = None
    host: str = ""

    @classmethod
    def current(cls) -> Operator:
        user = os.environ.get("USER") or os.environ.get("LOGNAME")
        if not user:
            import getpass  # only here: it costs `rollback`'s start otherwise

            try:
                user = getpass.getuser()
            except (KeyError, OSError):
                user = f"uid{os.getuid()}"
        ssh = os.environ.get("SSH_CONNECTION", "").split()
        return cls(user=user, ssh_client=ssh[0] if ssh else None, host=socket.gethostname())

    def label(self) -> str:
        return f"{self.user}@{self.ssh_client}" if self.ssh_client else self.user


@dataclass(frozen=True)
class GateResult:
    """One gate judged on one check.

    ``gate`` names it (``error_rate``, ``critical_error_rate``, ``p95_latency.fast``,
    ``schema_failures``, ``rl_loss``, ``health``, ``seq.errors`` ...).  ``critical`` means a
    FAIL rolls back at once; a non-critical FAIL rolls back once it has held for
    ``consecutive_failures`` checks.  ``extra`` carries gate-specific figures (the
    production value, e-values, bounds) and must stay JSON-serializable.
    """

    gate: str
    verdict: str
    value: float | None = None
    threshold: float | None = None
    window: str = ""
    samples: int | None = None
    critical: bool = False
    detail: str = ""
    production_value: float | None = None
    blocking: bool = True  # False: INCONCLUSIVE/ERROR here never holds a stage (advisory gates)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _clean(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GateResult:
        return cls(**{k: v for k, v in d.items() if k in _GATE_FIELDS})


_GATE_FIELDS = frozenset(f.name for f in dataclasses.fields(GateResult))  # once: a journal holds thousands


# --------------------------------------------------------------------------- events

_EVENT_TYPES: dict[str, type[Event]] = {}

# An event class: a dataclass (fields, asdict, replace, is_dataclass all work) whose methods are
# Event's own instead of generated per class.  ``@dataclass(frozen=True)`` compiles six methods a
# class (about 0.5 ms each: 13 ms for this module's 23 dataclasses, 20 of them events, of the ~70 ms
# `canary-console rollback` spent before it touched nginx: issue 15); these behave the same:
# keyword-only, frozen, compared and hashed by their fields in order, shown as ``Kind(field=value, ...)``.
_event = dataclass(init=False, repr=False, eq=False)


@_event
class Event:
    """Base of every engine event.  ``kind`` is the wire/journal name.

    Frozen and keyword-only like ``@dataclass(frozen=True, kw_only=True)``, from these methods
    rather than generated ones (see ``_event``)."""

    kind: ClassVar[str] = "event"
    ts: str = field(default_factory=utc_now_iso)
    deployment_id: str = ""
    version: str = ""
    dry_run: bool = False

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        _EVENT_TYPES[cls.kind] = cls

    def __init__(self, **values: Any) -> None:
        for name, default, factory in _init_spec(type(self)):
            if name in values:
                v = values.pop(name)
            elif factory is not None:
                v = factory()
            elif default is dataclasses.MISSING:
                raise TypeError(f"{type(self).__name__}() missing keyword argument {name!r}")
            else:
                v = default
            object.__setattr__(self, name, v)
        if values:
            raise TypeError(f"{type(self).__name__}() got an unexpected keyword argument {next(iter(values))!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name, _, _ in _init_spec(type(self)))

    def __eq__(self, other: object) -> bool:
        if other.__class__ is self.__class__:
            return self._values() == other._values()  # type: ignore[attr-defined]
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        args = ", ".join(f"{name}={getattr(self, name)!r}" for name, _, _ in _init_spec(type(self)))
        return f"{type(self).__qualname__}({args})"

    def to_record(self) -> dict[str, Any]:
        d = {"event": self.kind}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, tuple) and v and isinstance(v[0], GateResult):
                v = [g.to_dict() for g in v]
            elif isinstance(v, Operator):
                v = dataclasses.asdict(v)
            elif dataclasses.is_dataclass(v):
                v = dataclasses.asdict(v)
            elif isinstance(v, tuple):
                v = list(v)
            d[f.name] = v
        return _clean(d)


_SPECS: dict[type, tuple[tuple[str, Any, Any], ...]] = {}


def _init_spec(cls: type) -> tuple[tuple[str, Any, Any], ...]:
    """(name, default, default_factory or None) of each field of an event class, in order."""
    spec = _SPECS.get(cls)
    if spec is None:
        spec = _SPECS[cls] = tuple(
            (f.name, f.default, None if f.default_factory is dataclasses.MISSING else f.default_factory)
            for f in dataclasses.fields(cls))
    return spec


def event_from_record(rec: dict[str, Any]) -> Event | None:
    """Rebuild an event from a journal/wire record; None for an unknown kind."""
    cls = _EVENT_TYPES.get(rec.get("event", ""))
    if cls is None:
        return None
    kwargs: dict[str, Any] = {}
    for name, _, _ in _init_spec(cls):
        if name not in rec:
            continue
        v = rec[name]
        if name in ("results", "snapshot") and isinstance(v, list):  # RolledBack.snapshot too
            v = tuple(GateResult.from_dict(g) for g in v)
        elif name == "operator" and isinstance(v, dict):
            v = Operator(**v)
        elif isinstance(v, list):
            v = tuple(v)
        kwargs[name] = v
    try:
        return cls(**kwargs)
    except TypeError:
        return None


@_event
class DeploymentStarted(Event):
    kind: ClassVar[str] = "deployment_started"
    stages: tuple[float, ...] = ()
    start_stage: int = 0
    observation_period: float = 0.0
    check_interval: float = 0.0
    operator: Operator | None = None
    resumed: bool = False
    engine_pid: int = 0
    engine_host: str = ""
    shadow_period: float = 0.0  # [rollout] shadow_period: a shadow stage comes first (0 = none)


@_event
class RouterIntent(Event):
    """Written *before* the upstream file is touched."""

    kind: ClassVar[str] = "router_intent"
    weight: float = 0
    previous_weight: float | None = None
    generation: str = ""
    reason: str = ""
    shadow: bool = False  # the shadow stage: nginx also mirrors every request to the canary


@_event
class RouterApplied(Event):
    """Written once nginx verifiably serves ``weight`` (or, dry run, would have)."""

    kind: ClassVar[str] = "router_applied"
    weight: float = 0
    generation: str = ""
    duration_ms: float = 0.0
    late: bool = False  # confirmed after the change had been reported unconfirmed (the probe saw it later)
    shadow: bool = False  # the shadow stage: nginx also mirrors every request to the canary
    # a fleet ([[nginx.hosts]]): each host's outcome, {name, weight, generation, outcome}; () = one nginx
    hosts: tuple[dict[str, Any], ...] = ()


@_event
class RouterFailed(Event):
    kind: ClassVar[str] = "router_failed"
    weight: float = 0
    generation: str = ""
    error: str = ""
    restored_weight: float | None = None  # the old file was put back (nginx serves what it served before)
    # what the upstream file holds after the failure, and whether nginx confirmed it:
    # "restored" (the old file is back), "unconfirmed" (the new file stays, nginx was reloaded
    # and may serve it: nobody knows until a probe sees its generation)
    file_weight: float | None = None
    outcome: str = ""
    hosts: tuple[dict[str, Any], ...] = ()  # a fleet: each host's outcome, as in RouterApplied


@_event
class StageStarted(Event):
    kind: ClassVar[str] = "stage_started"
    index: int = 0  # SHADOW_INDEX (-1) for the shadow stage
    weight: float = 0
    total: int = 0
    observation_period: float = 0.0
    min_period: float = 0.0
    shadow: bool = False  # the shadow stage: weight 0, every request mirrored to the canary


@_event
class CheckCompleted(Event):
    """One check: every gate's result and what the engine made of it."""

    kind: ClassVar[str] = "check"
    index: int = 0
    weight: float = 0
    elapsed: float = 0.0  # observation seconds elapsed in this stage (clock stops when paused)
    remaining: float = 0.0
    results: tuple[GateResult, ...] = ()
    breaches: dict[str, int] = field(default_factory=dict)  # gate -> consecutive count
    consecutive_failures: int = 0
    unavailable: int = 0
    decision: str = "continue"  # continue | rollback | hold | extend


@_event
class StageExtended(Event):
    kind: ClassVar[str] = "stage_extended"
    index: int = 0
    weight: float = 0
    reason: str = ""
    until: float = 0.0  # observation seconds the stage may now last


@_event
class StagePassed(Event):
    kind: ClassVar[str] = "stage_passed"
    index: int = 0
    weight: float = 0
    reason: str = ""


@_event
class Holding(Event):
    """The engine waits for the operator: inconclusive data, missing metrics."""

    kind: ClassVar[str] = "holding"
    index: int = 0
    weight: float = 0
    reason: str = ""


@_event
class OperatorAction(Event):
    """An intent accepted (or refused) by the engine, with who asked."""

    kind: ClassVar[str] = "operator_action"
    action: str = ""
    operator: Operator | None = None
    detail: str = ""
    accepted: bool = True


@_event
class Paused(Event):
    kind: ClassVar[str] = "paused"
    index: int = 0
    weight: float = 0
    remaining: float = 0.0


@_event
class Resumed(Event):
    kind: ClassVar[str] = "resumed"
    index: int = 0
    weight: float = 0
    remaining: float = 0.0


@_event
class RollbackStarted(Event):
    kind: ClassVar[str] = "rollback_started"
    reason: str = ""
    automatic: bool = True
    index: int = 0
    weight: float = 0


@_event
class RolledBack(Event):
    """Traffic is at 0% canary; ``snapshot`` is the last value of every gate."""

    kind: ClassVar[str] = "rolled_back"
    reason: str = ""
    automatic: bool = True
    index: int = 0
    from_weight: float = 0
    snapshot: tuple[GateResult, ...] = ()


@_event
class Completed(Event):
    """The canary takes 100% of the traffic."""

    kind: ClassVar[str] = "completed"
    index: int = 0


@_event
class Promoted(Event):
    kind: ClassVar[str] = "promoted"
    operator: Operator | None = None
    approvals: tuple[str, ...] = ()
    forced: bool = False
    reason: str = ""


@_event
class Interrupted(Event):
    kind: ClassVar[str] = "interrupted"
    index: int = 0
    weight: float = 0
    signal: str = ""
    resume_command: str = ""


@_event
class Failed(Event):
    """The deployment could not go on (router failure, precondition)."""

    kind: ClassVar[str] = "failed"
    reason: str = ""
    index: int = 0
    weight: float = 0


@_event
class Note(Event):
    """Anything else worth a line in the event log and the journal."""

    kind: ClassVar[str] = "note"
    level: str = "info"  # info | warning | error
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- intents

INTENT_ACTIONS = ("advance", "pause", "resume", "step_back", "rollback", "promote", "take_over")


@dataclass(frozen=True)
class Intent:
    """What an operator asks the engine to do."""

    action: str
    operator: Operator
    reason: str = ""
    approvals: tuple[str, ...] = ()
    protocol: int = PROTOCOL_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["approvals"] = list(self.approvals)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Intent:
        if d.get("action") not in INTENT_ACTIONS:
            raise ValueError(f"unknown action {d.get('action')!r}; allowed: {', '.join(INTENT_ACTIONS)}")
        op = d.get("operator")
        if not isinstance(op, dict) or not isinstance(op.get("user"), str):
            raise ValueError("intent has no operator identity")
        return cls(
            action=d["action"],
            operator=Operator(user=op["user"], ssh_client=op.get("ssh_client"), host=op.get("host", "")),
            reason=str(d.get("reason", ""))[:500],
            approvals=tuple(str(a) for a in d.get("approvals", ()))[:20],
            protocol=int(d.get("protocol", 0)),
        )


def _clean(v: Any) -> Any:
    """Make a value JSON-safe: NaN/Inf become None (JSON has no NaN)."""
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    return v


# --------------------------------------------------------------------------- bounded delivery

SUBSCRIBER_MAX = 1000  # events queued for one consumer before it starts losing the oldest non-critical ones
# what a consumer may lose when it lags: the periodic check results and notes; never a weight,
# a stage, a rollback or an ending
DROPPABLE = (CheckCompleted, Note)


class EventQueue:
    """A bounded queue of events for one consumer (a console link, a socket reader).

    Full, it drops its oldest droppable event (a check or a note) to make room; when only
    critical events are queued it keeps them and grows past ``maxsize`` rather than lose one.
    The consumer is told how many it lost: the next ``get`` returns a Note saying so first."""

    def __init__(self, maxsize: int = SUBSCRIBER_MAX) -> None:
        import asyncio
        from collections import deque

        self.maxsize = max(1, maxsize)
        self._items: deque[Any] = deque()
        self._ready = asyncio.Event()
        self.dropped = 0  # lost since the consumer last heard of it
        self.dropped_total = 0

    def __len__(self) -> int:
        return len(self._items)

    def put_nowait(self, item: Any) -> None:
        if len(self._items) >= self.maxsize:
            for i, old in enumerate(self._items):
                if isinstance(old, DROPPABLE):
                    del self._items[i]
                    self.dropped += 1
                    self.dropped_total += 1
                    break
        self._items.append(item)
        self._ready.set()

    def get_nowait(self) -> Any:
        if self.dropped:
            n, self.dropped = self.dropped, 0
            nxt = next((x for x in self._items if isinstance(x, Event)), None)
            return Note(level="warning", message=f"this console fell behind: {n} check/note event(s) were dropped; "
                        "the journal has them all", data={"dropped": n},
                        deployment_id=getattr(nxt, "deployment_id", ""), version=getattr(nxt, "version", ""))
        if not self._items:
            raise IndexError("empty")
        item = self._items.popleft()
        if not self._items:
            self._ready.clear()
        return item

    async def get(self) -> Any:
        while not self._items and not self.dropped:
            await self._ready.wait()
        return self.get_nowait()
