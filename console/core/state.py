"""Deployment state folded from events.

The same fold serves the live console (events as they arrive), ``status``, ``history``,
``replay``, resume and attach (records read back from the journal), so every view of a
deployment agrees with the journal by construction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from console.core import events as ev
from console.core.events import GateResult

# states shown to the operator
OBSERVING = "observing"
PAUSED = "paused"
HOLDING = "holding"
ROLLING_BACK = "rolling back"
ROLLED_BACK = "rolled back"
AT_100 = "at 100%"
PROMOTED = "promoted"
INTERRUPTED = "interrupted"
FAILED = "failed"
STARTING = "starting"

FINISHED = (ROLLED_BACK, PROMOTED, FAILED)


@dataclass(frozen=True)
class DeploymentState:
    deployment_id: str = ""
    version: str = ""
    state: str = STARTING
    stages: tuple[float, ...] = ()
    index: int = -1  # current stage index; -1 before the first (and during the shadow stage)
    shadow: bool = False  # in the shadow stage now (weight 0, every request mirrored to the canary)
    shadow_period: float = 0.0  # [rollout] shadow_period of this deployment (0 = no shadow stage)
    weight: float | None = None  # last weight nginx verifiably served (journal: router_applied)
    pending_weight: float | None = None  # intent written, outcome not yet (or unconfirmed: the file holds it)
    observation_period: float = 0.0
    check_interval: float = 0.0
    elapsed: float = 0.0
    remaining: float = 0.0
    passed: tuple[int, ...] = ()  # indexes of passed stages
    failed_index: int | None = None
    reason: str = ""
    started: str = ""
    ended: str = ""
    last_ts: str = ""
    driver: str = ""
    dry_run: bool = False
    results: tuple[GateResult, ...] = ()
    breaches: dict[str, int] = field(default_factory=dict)
    consecutive_failures: int = 0
    automatic: bool | None = None
    completed_at: str = ""
    engine_pid: int = 0
    engine_host: str = ""
    approvals: tuple[str, ...] = ()
    # a fleet ([[nginx.hosts]]): each host's {name, weight, generation, outcome} of the latest change
    hosts: tuple[dict[str, Any], ...] = ()

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def outcome(self) -> str:
        if self.state in FINISHED or self.state == AT_100:
            return self.state
        return "unfinished"

    @property
    def live(self) -> bool:
        return self.state in (STARTING, OBSERVING, PAUSED, HOLDING, ROLLING_BACK, AT_100)

    def stage_label(self) -> str:
        if self.shadow:
            return "shadow (0%)"
        if self.index < 0 or not self.stages:
            return "-"
        return f"{self.index + 1}/{len(self.stages)} ({self.stages[self.index]}%)"


def apply(s: DeploymentState, e: ev.Event) -> DeploymentState:
    """Fold one event into the state (one ``replace``: a long journal folds at every `rollback`)."""
    return replace(s, last_ts=e.ts, deployment_id=e.deployment_id or s.deployment_id, version=e.version or s.version,
                   **_changes(s, e))


def _changes(s: DeploymentState, e: ev.Event) -> dict[str, Any]:
    """What ``e`` changes in ``s``, field by field."""
    if isinstance(e, ev.DeploymentStarted):
        op = e.operator.label() if e.operator else ""
        return dict(
            state=OBSERVING if e.resumed and s.index >= 0 else STARTING,
            stages=tuple(e.stages),
            observation_period=e.observation_period,
            check_interval=e.check_interval,
            started=s.started or e.ts,
            driver=op or s.driver,
            dry_run=e.dry_run,
            engine_pid=e.engine_pid,
            engine_host=e.engine_host,
            shadow_period=e.shadow_period,
        )
    if isinstance(e, ev.RouterIntent):
        if e.reason.startswith("rollback"):
            return dict(pending_weight=e.weight, state=ROLLING_BACK, reason=e.reason.removeprefix("rollback: "))
        return dict(pending_weight=e.weight)
    if isinstance(e, ev.RouterApplied):
        return dict(weight=e.weight, pending_weight=None, hosts=_hosts_applied(s.hosts, e))
    if isinstance(e, ev.RouterFailed):
        # unconfirmed: the file holds the new weight and nginx may serve it, so it stays pending
        pending = e.file_weight if e.outcome == "unconfirmed" and e.file_weight != s.weight else None
        return dict(pending_weight=pending, weight=e.restored_weight if e.restored_weight is not None else s.weight,
                    hosts=tuple(e.hosts) or s.hosts)
    if isinstance(e, ev.StageStarted):
        return dict(
            state=OBSERVING,
            index=e.index,
            shadow=e.shadow,
            observation_period=e.observation_period,
            elapsed=0.0,
            remaining=e.observation_period,
            breaches={},
            passed=tuple(i for i in s.passed if i < e.index),
            reason="",
        )
    if isinstance(e, ev.CheckCompleted):
        st = s.state
        if e.decision == "hold":
            st = HOLDING
        elif st == HOLDING and e.decision == "continue":
            st = OBSERVING
        return dict(
            state=st,
            elapsed=e.elapsed,
            remaining=e.remaining,
            results=e.results,
            breaches=dict(e.breaches),
            consecutive_failures=e.consecutive_failures,
        )
    if isinstance(e, ev.StageExtended):
        return dict(reason=e.reason, remaining=max(0.0, e.until - s.elapsed))
    if isinstance(e, ev.StagePassed):
        return dict(passed=tuple(sorted(set(s.passed) | {e.index})))
    if isinstance(e, ev.Holding):
        return dict(state=HOLDING, reason=e.reason)
    if isinstance(e, ev.Paused):
        return dict(state=PAUSED, remaining=e.remaining)
    if isinstance(e, ev.Resumed):
        return dict(state=OBSERVING, remaining=e.remaining, reason="")
    if isinstance(e, ev.OperatorAction):
        if e.action == "take_over" and e.accepted and e.operator:
            return dict(driver=e.operator.label())
        return {}
    if isinstance(e, ev.RollbackStarted):
        return dict(state=ROLLING_BACK, reason=e.reason, automatic=e.automatic, failed_index=e.index)
    if isinstance(e, ev.RolledBack):
        return dict(
            state=ROLLED_BACK, reason=e.reason, automatic=e.automatic, failed_index=e.index, ended=e.ts,
            results=e.snapshot or s.results,
        )
    if isinstance(e, ev.Completed):
        return dict(state=AT_100, index=e.index, completed_at=s.completed_at or e.ts,
                    passed=tuple(sorted(set(s.passed) | {e.index})))
    if isinstance(e, ev.Promoted):
        return dict(state=PROMOTED, ended=e.ts, approvals=e.approvals, reason=e.reason)
    if isinstance(e, ev.Interrupted):
        return dict(state=INTERRUPTED, reason=f"interrupted at stage {e.weight}% ({e.signal})")
    if isinstance(e, ev.Failed):
        return dict(state=FAILED, reason=e.reason, ended=e.ts)
    return {}


def _hosts_applied(hosts: tuple[dict[str, Any], ...], e: ev.RouterApplied) -> tuple[dict[str, Any], ...]:
    """A fleet's change applied: every host confirmed it (a record without ``hosts``, such as the
    preflight's, says so for the hosts already known)."""
    if e.hosts:
        return tuple(e.hosts)
    return tuple({**h, "weight": e.weight, "generation": e.generation, "outcome": "confirmed"} for h in hosts)


def hosts_confirmed(hosts: Iterable[dict[str, Any]]) -> tuple[int, int, list[str]]:
    """(confirmed, total, "name: outcome" of every other host) of a fleet's latest change."""
    hosts = list(hosts)
    odd = [f"{h.get('name')}: {h.get('outcome') or 'unknown'}" for h in hosts if h.get("outcome") not in ("confirmed", "kept")]
    return len(hosts) - len(odd), len(hosts), odd


def drifted_hosts(weights: dict[str, float | None], truth: RouterTruth | None = None) -> list[str]:
    """The hosts of a fleet whose upstream file drifted: it differs from what the journal says
    nginx serves (the last confirmed weight, or a change still unconfirmed), or, with nothing
    journaled, from the other hosts (the odd ones out; a tie makes every host odd).  A host
    without a readable file always drifted."""
    expected: set[int] = set()
    if truth is not None and truth.confirmed_weight is not None:
        expected.add(truth.confirmed_weight)
    if truth is not None and truth.state == UNCONFIRMED and truth.pending_weight is not None:
        expected.add(truth.pending_weight)
    if not expected:
        from collections import Counter

        top = Counter(w for w in weights.values() if w is not None).most_common(2)
        if top and (len(top) == 1 or top[0][1] > top[1][1]):
            expected.add(top[0][0])
    return [name for name, w in weights.items() if w is None or w not in expected]


def fold(events: Iterable[ev.Event], initial: DeploymentState | None = None) -> DeploymentState:
    s = initial or DeploymentState()
    for e in events:
        s = apply(s, e)
    return s


def deployments(records: Iterable[dict[str, Any]], initial: dict[str, DeploymentState] | None = None,
                ) -> dict[str, DeploymentState]:
    """Every deployment in a journal, in order of first appearance, folded; ``initial`` (updated
    in place): the deployments folded from the records before these (``checkpoint``)."""
    out: dict[str, DeploymentState] = {} if initial is None else initial
    for rec in records:
        e = ev.event_from_record(rec)
        if e is None or not e.deployment_id:
            continue
        out[e.deployment_id] = apply(out.get(e.deployment_id, DeploymentState()), e)
    return out


def events_of(records: Iterable[dict[str, Any]], deployment_id: str) -> list[ev.Event]:
    out = []
    for rec in records:
        if rec.get("deployment_id") != deployment_id:
            continue
        e = ev.event_from_record(rec)
        if e is not None:
            out.append(e)
    return out


def last_applied_weight(records: Iterable[dict[str, Any]]) -> float | None:
    """The weight nginx last verifiably served, according to the journal (any deployment)."""
    w = None
    for rec in records:
        if rec.get("event") == "router_applied" and not rec.get("dry_run"):
            w = rec.get("weight")
        elif rec.get("event") == "router_failed" and rec.get("restored_weight") is not None and not rec.get("dry_run"):
            w = rec.get("restored_weight")
    return w


APPLIED, UNCONFIRMED, RESTORED, NO_CHANGE = "applied", "unconfirmed", "failed and restored", "none"


@dataclass(frozen=True)
class RouterTruth:
    """Where the journal says the traffic is: what nginx last confirmed, and whether a later
    change is still unconfirmed (the file may hold it, nginx may serve it)."""

    confirmed_weight: float | None  # what nginx last verifiably served (None: nothing journaled)
    state: str  # APPLIED | UNCONFIRMED | RESTORED | NO_CHANGE: the outcome of the latest change
    pending_weight: float | None = None  # UNCONFIRMED: the weight of the change nobody has confirmed
    detail: str = ""  # UNCONFIRMED: why (the error, or "no outcome journaled": the engine died mid-change)

    def agrees_with(self, file_weight: float | None) -> bool:
        """The upstream file holds exactly what nginx last confirmed, and nothing is pending."""
        return self.state != UNCONFIRMED and file_weight is not None and file_weight == self.confirmed_weight


def router_truth(records: Iterable[dict[str, Any]], initial: RouterTruth | None = None) -> RouterTruth:
    """Fold every router record of a journal (any deployment, dry runs aside); ``initial``: the
    truth of the records before these (``checkpoint``)."""
    confirmed: float | None = None
    state, pending, detail = NO_CHANGE, None, ""
    if initial is not None:
        confirmed, state, pending, detail = initial.confirmed_weight, initial.state, initial.pending_weight, initial.detail
    for rec in records:
        if rec.get("dry_run"):
            continue
        kind = rec.get("event")
        if kind == "router_intent":
            state, pending, detail = UNCONFIRMED, rec.get("weight"), "no outcome journaled (the engine stopped mid-change)"
        elif kind == "router_applied":
            confirmed, state, pending, detail = rec.get("weight"), APPLIED, None, ""
        elif kind == "router_failed":
            if rec.get("outcome") == "unconfirmed" or (rec.get("restored_weight") is None and rec.get("outcome") != "restored"):
                state, pending, detail = UNCONFIRMED, rec.get("file_weight", rec.get("weight")), str(rec.get("error", ""))
            else:
                state, pending, detail = RESTORED, None, ""
                if rec.get("restored_weight") is not None:
                    confirmed = rec.get("restored_weight")
    return RouterTruth(confirmed, state, pending, detail)


def unfinished(records: Iterable[dict[str, Any]], version: str | None = None) -> DeploymentState | None:
    """The latest deployment (of ``version``) that neither rolled back, failed nor was promoted
    and did not simply reach 100%... a deployment at 100% is finished for ``deploy`` purposes."""
    return unfinished_of(deployments(records), version)


def unfinished_of(deps: dict[str, DeploymentState], version: str | None = None) -> DeploymentState | None:
    """``unfinished`` of deployments already folded (``deployments``, ``checkpoint.deployments_in``)."""
    latest = None
    for d in deps.values():
        if d.dry_run:
            continue
        if version is not None and d.version != version:
            continue
        if d.state in FINISHED or d.state == AT_100:
            continue
        latest = d
    return latest
