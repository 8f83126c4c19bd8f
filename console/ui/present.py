"""Model -> widget data: pure functions, so the App only assigns results to reactives."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from console.core import state as st
from console.core.events import SHADOW_INDEX, GateResult
from console.core.state import DeploymentState
from console.ui.asks import KeyHelp
from console.ui.model import ConsoleModel
from widgets.decision import GateRow
from widgets.header_bar import HeaderInfo, fmt_countdown
from widgets.sparklines import SeriesRow
from widgets.timeline import CURRENT, DONE, FAILED, PENDING, TimelineView, stage_marks

MODE_ORDER = ("fast", "balanced", "creative")


def header_info(model: ConsoleModel, role: str, version: str = "", link: str = "") -> HeaderInfo:
    s = model.state
    stage = "-" if s.index < 0 or not s.stages else f"stage {s.index + 1}/{len(s.stages)} {s.stages[s.index]}%"
    if s.shadow:
        stage = "shadow stage 0%"
    weight = ""
    if s.weight is not None:
        weight = f"canary {s.weight}%" + (f"→{s.pending_weight}%" if s.pending_weight is not None else "")
        weight += split_text(s)
    return HeaderInfo(
        version=s.version or version,
        deployment_id=s.deployment_id,
        state=s.state,
        stage=stage,
        countdown=fmt_countdown(model.remaining()),
        driver=s.driver,
        role=role,
        dry_run=s.dry_run,
        weight=weight,
        link=link,
        **hosts_header(s),
    )


def split_text(s: DeploymentState) -> str:
    """The header's " · split 4.8% of 5%": what nginx served at the current weight, as the split
    gate of the last check measured it ("" before it measured, or once the weight moved on)."""
    r = next((r for r in gate_results(s.results) if r.gate == "split"), None)
    if r is None or r.value is None or r.threshold is None or r.threshold != s.weight:
        return ""
    mark = " ✗" if r.verdict == "fail" else ""
    return f" · split {r.value:.1f}% of {r.threshold:g}%{mark}"


def hosts_header(s: DeploymentState) -> dict[str, Any]:
    """A fleet's "hosts 3/3 confirmed", or "hosts 2/3 confirmed (edge-3: unconfirmed)" naming the odd one out."""
    if not s.hosts:
        return {}
    ok, total, odd = st.hosts_confirmed(s.hosts)
    return {"hosts": f"hosts {ok}/{total} confirmed" + (f" ({', '.join(odd)})" if odd else ""), "hosts_ok": not odd}


def status_line(model: ConsoleModel) -> tuple[str, str]:
    s = model.state
    w = s.stages[s.index] if 0 <= s.index < len(s.stages) else s.weight
    left = model.remaining()
    left_s = fmt_countdown(left).removesuffix(" left") if left is not None else "an unknown time"
    match s.state:
        case st.STARTING:
            return "starting: health check, then the first stage", "info"
        case st.OBSERVING:  # the countdown is in the header: this line changes only with the state
            if s.breaches:
                worst = max(s.breaches.items(), key=lambda kv: kv[1])
                return (f"observing {w}%: {worst[0]} failing, breach {worst[1]} of {s.consecutive_failures} "
                        f"(rolls back at {s.consecutive_failures})", "warning")
            why = f": {s.reason}" if s.reason else f", gates checked every {s.check_interval:g}s"
            return f"observing {w}% for {fmt_countdown(s.observation_period).removesuffix(' left')}{why}", "info"
        case st.PAUSED:
            return f"PAUSED at {w}% ({left_s} of observation left): p resumes, r rolls back", "warning"
        case st.HOLDING:
            return f"HOLDING at {w}%: {s.reason or 'waiting for the operator'}. p resumes, r rolls back", "warning"
        case st.ROLLING_BACK:
            return f"ROLLING BACK to 0%: {s.reason}", "error"
        case st.ROLLED_BACK:
            kind = "automatic" if s.automatic else "manual"
            return f"ROLLED BACK ({kind}) to canary 0%: {s.reason}", "error"
        case st.AT_100:
            return "canary at 100%: P promotes, r rolls back", "info"
        case st.PROMOTED:
            return f"promoted {s.version} to production", "info"
        case st.INTERRUPTED:
            return f"{s.reason}; resume: canary-console deploy --version {s.version} --resume", "warning"
        case st.FAILED:
            return f"FAILED: {s.reason}", "error"
    return s.state, "info"


def timeline_view(model: ConsoleModel) -> TimelineView:
    s = model.state
    finished_ok = s.state in (st.AT_100, st.PROMOTED)
    failed = s.failed_index if s.state in (st.ROLLED_BACK, st.ROLLING_BACK, st.FAILED) else None
    if s.state == st.FAILED and failed is None and s.index >= 0:
        failed = s.index
    marks = stage_marks(s.stages, s.index, s.passed, failed, finished_ok)
    shadow = ""  # the shadow stage's mark, before stage 1 ("" = no shadow stage)
    if s.shadow_period > 0:
        shadow = FAILED if failed == SHADOW_INDEX else CURRENT if s.shadow and failed is None and s.live else DONE if (
            s.index >= 0 or finished_ok) else PENDING
    text, level = status_line(model)
    progress = model.progress() if s.state in (st.OBSERVING, st.PAUSED, st.HOLDING) else None
    entries = tuple((e.ts, e.text, e.level) for e in model.timeline)
    if s.shadow and shadow != CURRENT:
        progress = None
    return TimelineView(stages=s.stages, marks=marks, progress=progress, status=text, level=level, entries=entries,
                        shadow=shadow)


def gate_results(results: tuple[object, ...]) -> list[GateResult]:
    """Gate results as GateResult, whatever a record from an older or newer engine carried."""
    out = []
    for r in results:
        if isinstance(r, GateResult):
            out.append(r)
        elif isinstance(r, dict) and isinstance(r.get("gate"), str):
            out.append(GateResult.from_dict(r))
    return out


def decision_rows(s: DeploymentState) -> tuple[GateRow, ...]:
    rows = [GateRow(r, s.breaches.get(r.gate, 0), s.consecutive_failures) for r in gate_results(s.results)]
    return tuple(rows)


def series_rows(model: ConsoleModel) -> tuple[SeriesRow, ...]:
    """p95 per mode (canary vs production), then the error rate."""
    failing = {r.gate for r in gate_results(model.state.results) if r.verdict == "fail"}
    gates = [g for g in model.series if g.startswith("p95_latency.")]
    gates.sort(key=lambda g: (MODE_ORDER.index(g.split(".", 1)[1]) if g.split(".", 1)[1] in MODE_ORDER else 99, g))
    if "error_rate" in model.series:
        gates.append("error_rate")
    rows = []
    for g in gates:
        pts = model.series[g]
        label = g.split(".", 1)[1] if g.startswith("p95_latency.") else "errors"
        thr = next((p.threshold for p in reversed(pts) if p.threshold is not None), None)
        rows.append(SeriesRow(g, label, tuple(p.value for p in pts), tuple(p.production for p in pts), thr, g in failing))
    return tuple(rows)


WHY_OFF = {
    "advance": "only while observing, paused or holding, before the last stage",
    "step_back": "only after the first stage, while the rollout is live",
    "pause": "only while observing, paused or holding",
    "promote": "only at 100%",
    "rollback": "only while the rollout is live",
    "faults": "only in the demo sandbox",
    "take_over": "only in a watching console attached to a running engine",
}


def key_help(bindings: Sequence[Any], allowed: Callable[[str], bool], role: str, traffic: Sequence[str],
             skip: set[str]) -> list[KeyHelp]:
    """One row per key for the help screen: what it does and, when it is off, why."""
    out = [KeyHelp("tab", "next panel (shift+tab: previous); ↑/↓ pick a row", True)]
    for b in bindings:
        if b.action == "resume" or b.key == "ctrl+c" or b.action in skip:
            continue  # p is one row (pause / resume); ctrl+c is q
        on = allowed(b.action)
        desc = b.tooltip or b.description
        if b.action == "pause":
            on = on or allowed("resume")
            desc = "Pause / resume the observation clock (traffic stays)"
        key = {"slash": "/", "question_mark": "?", "q": "q ctrl+c"}.get(b.key, b.key)
        why = f"read-only {role} console" if role != "driver" and b.action in traffic else WHY_OFF.get(b.action, "")
        out.append(KeyHelp(key, desc, bool(on), "" if on else why))
    out.append(KeyHelp("ctrl+p", "command palette: every action by name", True))
    return out


def link_note(status: Any) -> str:
    """One short phrase about a detached engine's link, for the header."""
    if status.lost and status.lost != "detached":
        if status.exit_code is None:
            return f"ENGINE LOST: {status.lost}"
        return status.lost
    if status.role != "driver":
        return f"now watching: {status.note or ('driver ' + str(status.driver))}"
    host = f"@{status.engine_host}" if getattr(status, "engine_host", "") else ""
    return f"engine pid {status.engine_pid}{host} link {latency_bucket(status.latency_ms)}"


_LATENCY_EDGES = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


def latency_bucket(ms: float | None) -> str:
    """Link latency in coarse steps: the header changes only when the step does, so a ping
    every few seconds costs no bytes on a slow SSH link."""
    if ms is None:
        return "untimed"  # no ping answered yet: a word, never "?"
    for edge in _LATENCY_EDGES:
        if ms < edge:
            return f"<{edge}ms"
    return ">1s"
