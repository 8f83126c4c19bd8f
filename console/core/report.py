"""The incident report of one deployment, from the journal (the guide's "document incident").

``build(records, deployment_id, ...)`` folds a deployment's journal records into a ``Report``:
the timeline (a line per thing that changed; checks that change nothing fold into one row),
who did what (the operators, with their labels, and the engine's own decisions), the deciding
gate of a rollback (value, threshold, window, n), every gate over time, the sequential
analysis' e-values and notes, the last value of every gate, and the command that replays it.
``render_html`` / ``render_markdown`` write it out with the charts from ``console.core.chart``:
HTML embeds them as data: URIs (one self-contained file), Markdown links PNG files in a
``<name>_files/`` folder beside it (Markdown viewers do not show data: URIs).

``write_beside`` is what every rollback calls once nginx serves 0% (the engine through
``IncidentReporter``, ``canary-console rollback`` and the break-glass rollback directly): the
HTML report at ``<journal dir>/reports/<deployment id>.html``.  This module imports nothing
heavy (no asyncio until the engine's listener runs), so the rollback path can afford it.
"""

from __future__ import annotations

import base64
import contextlib
import html
import os
import re
import shlex
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from console.core import events as ev
from console.core.chart import Point, line_chart
from console.core.eventfmt import WORD, format_event
from console.core.journal import read_records
from console.core.state import deployments, events_of, fold

REPORTS_DIR = "reports"
FORMATS = ("html", "md")
SEQ_PREFIX = "seq."


class ReportError(Exception):
    """A report that cannot be written: one line, what and where (nothing was written)."""


# --------------------------------------------------------------------------- the deciding gate


def failing(e: ev.RolledBack) -> list[ev.GateResult]:
    return [r for r in e.snapshot if r.verdict in (ev.FAIL, ev.ERROR)]


def deciding_gate(e: ev.Event) -> ev.GateResult | None:
    """A rollback's deciding gate from its snapshot: the failing gate its reason opens with (the
    engine's reason is ``describe(gate)``), or the erroring gate whose detail it quotes (metrics
    unavailable); None for a manual rollback or one no gate decided."""
    if not isinstance(e, ev.RolledBack):
        return None
    for r in failing(e):
        if e.reason == r.gate or e.reason.startswith((f"{r.gate} ", f"{r.gate}:")):
            return r
        if r.verdict == ev.ERROR and r.detail and r.detail in e.reason:
            return r
    return None


# --------------------------------------------------------------------------- where reports go


def safe_name(deployment_id: str) -> str:
    """A deployment id as a file name (ids are ``v1.2.3-<time>-<hex>``; anything else becomes _)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", deployment_id).lstrip(".") or "deployment"


def report_path(journal_path: str | os.PathLike[str], deployment_id: str, fmt: str = "html") -> Path:
    """``<journal dir>/reports/<deployment id>.html`` (or ``.md``): where a rollback's report goes."""
    return Path(journal_path).parent / REPORTS_DIR / f"{safe_name(deployment_id)}.{fmt}"


def files_dir(output: Path) -> Path:
    """The folder beside a Markdown report that holds its PNG charts."""
    return output.with_name(f"{output.stem}_files")


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Row:
    ts: str
    at: float  # seconds since the deployment started
    what: str
    who: str = ""


@dataclass(frozen=True)
class Action:
    ts: str
    at: float
    who: str
    action: str
    detail: str = ""
    accepted: bool = True


@dataclass(frozen=True)
class Series:
    gate: str
    points: tuple[Point, ...]
    threshold: float | None
    window: str
    critical: bool

    @property
    def log(self) -> bool:
        return self.gate.startswith(SEQ_PREFIX)  # e-values span orders of magnitude


@dataclass(frozen=True)
class EValueRow:
    gate: str
    when: str  # "end of stage 2 (5%)", "final", "highest"
    at: float
    e_value: float | None
    threshold: float | None
    bound: float | None
    verdict: str
    counts: str


@dataclass(frozen=True)
class Decision:
    """How the deployment ended, when it was rolled back."""

    reason: str
    automatic: bool
    from_weight: float
    stage: str
    ts: str
    gate: ev.GateResult | None  # the deciding gate (None: manual, or no gate decided)
    breaches: int | None = None  # its consecutive breaches at the deciding check
    needed: int | None = None  # how many the policy asks for (consecutive_failures)


@dataclass(frozen=True)
class Report:
    deployment_id: str
    version: str
    outcome: str
    started: str
    ended: str
    driver: str
    dry_run: bool
    stages: tuple[float, ...]
    reason: str
    decision: Decision | None
    timeline: tuple[Row, ...]
    actions: tuple[Action, ...]
    series: tuple[Series, ...]
    evalues: tuple[EValueRow, ...]
    analysis_notes: tuple[Row, ...]
    snapshot: tuple[ev.GateResult, ...]
    stage_starts: tuple[float, ...]
    replay_command: str
    journal_path: str
    checks: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def duration(self) -> float | None:
        a, b = _when(self.started), _when(self.ended)
        return None if a is None or b is None else (b - a).total_seconds()


def _when(ts: str) -> datetime | None:
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")) if ts else None
    except ValueError:
        return None


def fmt_value(v: float | None) -> str:
    return "unknown" if v is None else f"{v:.4g}"


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "unknown"
    if s < 120:
        return f"{s:.0f}s"
    return f"{int(s // 60)}m{int(s % 60):02d}s"


def gate_line(r: ev.GateResult) -> str:
    """``error_rate FAIL: 0.052 against threshold 0.005 (window 5m, n=120)``."""
    n = "n unknown" if r.samples is None else f"n={r.samples}"
    window = f"window {r.window}" if r.window else "no window"
    return (f"{r.gate} {WORD.get(r.verdict, r.verdict)}: {fmt_value(r.value)} against threshold "
            f"{fmt_value(r.threshold)} ({window}, {n})")


def replay_command(deployment_id: str, config_path: str | os.PathLike[str] | None,
                   journal_path: str | os.PathLike[str]) -> str:
    """The exact command that replays this deployment in the read-only console."""
    if config_path:
        return shlex.join(["canary-console", "--config", str(config_path), "replay", deployment_id])
    return f"CANARY_JOURNAL={shlex.quote(str(journal_path))} canary-console replay {shlex.quote(deployment_id)}"


def _body(e: ev.Event) -> str:
    line = format_event(e)
    t = e.ts[11:19] if len(e.ts) >= 19 else e.ts
    return line[len(t) + 1:] if line.startswith(t + " ") else line


def _check_row(e: ev.CheckCompleted, prev: dict[str, str], first: bool) -> str:
    """What a check changed, in words; "" when it changed nothing."""
    now = {r.gate: r.verdict for r in e.results}
    if first:
        counts: dict[str, int] = {}
        for v in now.values():
            counts[WORD.get(v, v)] = counts.get(WORD.get(v, v), 0) + 1
        text = f"first check at {e.weight}%: {len(now)} gates, " + ", ".join(f"{n} {w}" for w, n in counts.items())
        bad = [r for r in e.results if r.verdict in (ev.FAIL, ev.ERROR)]
        if bad:
            text += "; " + "; ".join(gate_line(r) for r in bad)
    else:
        changed = [r for r in e.results if prev.get(r.gate) != r.verdict]
        if not changed and e.decision == "continue" and not e.breaches:
            return ""
        parts = [f"{r.gate} {WORD.get(prev.get(r.gate, ''), 'new')} -> " + gate_line(r).split(" ", 1)[1]
                 for r in changed]
        text = f"check at {e.weight}% +{e.elapsed:.0f}s: " + ("; ".join(parts) if parts else "no verdict changed")
    if e.breaches:
        text += "; breaches " + ", ".join(f"{g} {n} of {e.consecutive_failures}" for g, n in e.breaches.items())
    if e.decision != "continue":
        text += f" -> {e.decision}"
    return text


def _folded(n: int) -> str:
    return f"{n} check{'s' if n != 1 else ''}: no verdict changed"


def build(records: Iterable[dict[str, Any]], deployment_id: str, *, journal_path: str | os.PathLike[str],
          config_path: str | os.PathLike[str] | None = None) -> Report:
    """The report of ``deployment_id`` (which must be in ``records``)."""
    events = events_of(records, deployment_id)
    st = fold(events)
    t0 = _when(st.started) or (_when(events[0].ts) if events else None)

    def at(ts: str) -> float:
        w = _when(ts)
        return 0.0 if w is None or t0 is None else round((w - t0).total_seconds(), 3)

    timeline: list[Row] = []
    actions: list[Action] = []
    notes: list[Row] = []
    series: dict[str, list[tuple[Point, ev.GateResult]]] = {}
    stage_starts: list[float] = []
    prev: dict[str, str] = {}
    quiet = 0
    last_quiet_ts = ""
    checks = 0
    last_check: ev.CheckCompleted | None = None
    rolled: ev.RolledBack | None = None
    evalue_rows: list[EValueRow] = []
    last_seq: dict[str, tuple[float, ev.GateResult, int]] = {}  # gate -> the stage's latest e-value

    def flush_quiet() -> None:
        nonlocal quiet
        if quiet:
            timeline.append(Row(last_quiet_ts, at(last_quiet_ts), _folded(quiet)))
            quiet = 0

    def end_of_stage() -> None:
        for gate, (t, r, index) in last_seq.items():
            evalue_rows.append(_evalue_row(gate, f"end of stage {index + 1} ({_stage_weight(st.stages, index)})", t, r))
        last_seq.clear()

    for e in events:
        t = at(e.ts)
        if isinstance(e, ev.CheckCompleted):
            checks += 1
            for r in e.results:
                series.setdefault(r.gate, []).append((Point(t, r.value, r.verdict), r))
                if r.gate.startswith(SEQ_PREFIX):
                    last_seq[r.gate] = (t, r, e.index)
            text = _check_row(e, prev, first=last_check is None)
            prev = {r.gate: r.verdict for r in e.results}
            last_check = e
            if text:
                flush_quiet()
                timeline.append(Row(e.ts, t, text))
            else:
                quiet += 1
                last_quiet_ts = e.ts
            continue
        if isinstance(e, ev.Note) and e.message.startswith("analysis:"):
            notes.append(Row(e.ts, t, e.message))  # the analysis section lists them
            continue
        if isinstance(e, ev.RouterIntent):
            continue  # its outcome (RouterApplied / RouterFailed) says it
        flush_quiet()
        who = ""
        if isinstance(e, ev.StageStarted):
            stage_starts.append(t)
            end_of_stage()
        if isinstance(e, ev.DeploymentStarted | ev.OperatorAction | ev.Promoted) and e.operator is not None:
            who = e.operator.label()
            what = {"deployment_started": "resumed the deployment" if getattr(e, "resumed", False) else "started the deployment",
                    "promoted": "promoted"}.get(e.kind, getattr(e, "action", e.kind))
            detail = getattr(e, "detail", "") or getattr(e, "reason", "")
            actions.append(Action(e.ts, t, who, what, detail, getattr(e, "accepted", True)))
        if isinstance(e, ev.RollbackStarted | ev.RolledBack) and e.automatic:
            who = "engine (automatic)"
            if isinstance(e, ev.RolledBack):
                actions.append(Action(e.ts, t, who, "rolled back", e.reason))
        if isinstance(e, ev.RolledBack):
            rolled = e
            end_of_stage()
        timeline.append(Row(e.ts, t, _body(e), who))
    flush_quiet()
    end_of_stage()
    evalue_rows += _evalue_extremes(series)

    decision = None
    if rolled is not None:
        gate = deciding_gate(rolled)
        breaches = needed = None
        if gate is not None and last_check is not None:
            breaches = last_check.breaches.get(gate.gate)
            needed = last_check.consecutive_failures or None
        stage = f"stage {rolled.index + 1}/{len(st.stages)}" if st.stages else f"stage {rolled.index + 1}"
        decision = Decision(rolled.reason, rolled.automatic, rolled.from_weight, f"{stage}, {rolled.from_weight}%",
                            rolled.ts, gate, breaches, needed)
    out_series = []
    for gate, pts in series.items():
        if not any(p.value is not None for p, _ in pts):
            continue
        last = pts[-1][1]
        thr = next((r.threshold for _, r in reversed(pts) if r.threshold is not None), None)
        out_series.append(Series(gate, tuple(p for p, _ in pts), thr, last.window, last.critical))
    snapshot = rolled.snapshot if rolled is not None and rolled.snapshot else (last_check.results if last_check else ())
    return Report(
        deployment_id=deployment_id, version=st.version, outcome=st.outcome, started=st.started, ended=st.ended,
        driver=st.driver, dry_run=st.dry_run, stages=tuple(st.stages), reason=st.reason, decision=decision,
        timeline=tuple(timeline), actions=tuple(actions), series=tuple(out_series), evalues=tuple(evalue_rows),
        analysis_notes=tuple(notes), snapshot=tuple(snapshot), stage_starts=tuple(stage_starts),
        replay_command=replay_command(deployment_id, config_path, journal_path), journal_path=str(journal_path),
        checks=checks,
    )


def _stage_weight(stages: Sequence[float], index: int) -> str:
    if index == ev.SHADOW_INDEX:
        return "shadow"
    return f"{stages[index]}%" if 0 <= index < len(stages) else "an unknown weight"


def _evalue_row(gate: str, when: str, t: float, r: ev.GateResult) -> EValueRow:
    x = r.extra or {}
    counts = ""
    if "canary_requests" in x:
        counts = (f"canary {x.get('canary_events', 0):.0f}/{x.get('canary_requests', 0):.0f}, "
                  f"production {x.get('production_events', 0):.0f}/{x.get('production_requests', 0):.0f}")
    e_value = x.get("e_value", r.value)
    return EValueRow(gate, when, t, e_value, r.threshold if r.threshold is not None else x.get("threshold"),
                     x.get("bound"), r.verdict, counts)


def _evalue_extremes(series: dict[str, list[tuple[Point, ev.GateResult]]]) -> list[EValueRow]:
    out = []
    for gate, pts in series.items():
        if not gate.startswith(SEQ_PREFIX):
            continue
        known = [(p, r) for p, r in pts if p.value is not None]
        if known:
            p, r = max(known, key=lambda pr: pr[0].value or 0.0)
            out.append(_evalue_row(gate, "highest", p.t, r))
    return out


# --------------------------------------------------------------------------- rendering


def charts(r: Report) -> dict[str, bytes]:
    """gate -> the PNG of that gate over time."""
    return {s.gate: line_chart(s.points, threshold=s.threshold, stage_starts=r.stage_starts, log=s.log)
            for s in r.series}


def caption(s: Series) -> str:
    known = [p.value for p in s.points if p.value is not None]
    fails = sum(p.verdict == ev.FAIL for p in s.points)
    errors = sum(p.verdict == ev.ERROR for p in s.points)
    scale = "log scale, " if s.log else ""
    thr = "no threshold" if s.threshold is None else f"threshold {fmt_value(s.threshold)} (dashed)"
    return (f"{s.gate} over time ({scale}window {s.window or 'none'}{', critical' if s.critical else ''}): "
            f"{len(s.points)} checks, from {fmt_value(min(known))} to {fmt_value(max(known))}; {thr}; "
            f"{fails} FAIL (filled squares), {errors} ERROR (crosses); dotted lines: stage starts")


def _headline(r: Report) -> str:
    dry = " (dry run)" if r.dry_run else ""
    return f"Incident report: {r.version} {r.outcome}{dry}"


def _summary(r: Report) -> list[tuple[str, str]]:
    rows = [("Deployment", r.deployment_id), ("Version", r.version), ("Outcome", r.outcome + (" (dry run)" if r.dry_run else "")),
            ("Started", r.started or "unknown"), ("Ended", r.ended or "not ended"), ("Duration", fmt_seconds(r.duration)),
            ("Driver", r.driver or "unknown"), ("Stages", ", ".join(f"{s}%" for s in r.stages) or "unknown"),
            ("Checks", str(r.checks)), ("Journal", r.journal_path)]
    if r.reason:
        rows.insert(3, ("Reason", r.reason))
    return rows


def _decision_rows(d: Decision) -> list[tuple[str, str]]:
    rows = [("Rolled back", f"{'automatically' if d.automatic else 'by hand'} at {d.stage}, {d.ts}"), ("Reason", d.reason)]
    g = d.gate
    if g is None:
        rows.append(("Deciding gate", "none: " + ("a manual rollback" if not d.automatic else "no gate named in the reason")))
        return rows
    rows += [("Deciding gate", f"{g.gate} ({WORD.get(g.verdict, g.verdict)}{', critical' if g.critical else ''})"),
             ("Value", fmt_value(g.value)), ("Threshold", fmt_value(g.threshold)), ("Window", g.window or "none"),
             ("n (samples)", "unknown" if g.samples is None else str(g.samples))]
    if g.production_value is not None:
        rows.append(("Production", fmt_value(g.production_value)))
    if d.breaches is not None:
        rows.append(("Breaches", f"{d.breaches} in a row" + (f" (rollback after {d.needed})" if d.needed else "")))
    if g.detail:
        rows.append(("Detail", g.detail))
    return rows


def _snapshot_rows(r: Report) -> list[list[str]]:
    return [[g.gate, WORD.get(g.verdict, g.verdict), fmt_value(g.value), fmt_value(g.threshold), g.window or "-",
             "-" if g.samples is None else str(g.samples), g.detail] for g in r.snapshot]


def _evalue_table(r: Report) -> list[list[str]]:
    return [[e.gate, e.when, fmt_seconds(e.at), fmt_value(e.e_value), fmt_value(e.threshold), fmt_value(e.bound),
             WORD.get(e.verdict, e.verdict), e.counts or "-"] for e in r.evalues]


SNAPSHOT_HEAD = ["gate", "verdict", "value", "threshold", "window", "n", "detail"]
EVALUE_HEAD = ["gate", "when", "at", "e-value", "rejects at", "proven below", "verdict", "events/requests"]
TIMELINE_HEAD = ["time (UTC)", "+", "what", "who"]
ACTIONS_HEAD = ["time (UTC)", "+", "who", "action", "detail"]


def _hms(ts: str) -> str:
    return ts[11:23] if len(ts) >= 23 else ts


def _action_cells(a: Action) -> list[str]:
    return [_hms(a.ts), fmt_seconds(a.at), a.who, a.action + ("" if a.accepted else " (REFUSED)"), a.detail or "-"]


def render_html(r: Report, images: dict[str, bytes] | None = None) -> str:
    """One self-contained HTML file: charts as data: URIs, inline CSS, no script, no link out."""
    images = charts(r) if images is None else images
    esc = html.escape

    def table(head: list[str], rows: Iterable[Sequence[str]]) -> str:
        h = "".join(f"<th>{esc(c)}</th>" for c in head)
        body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
        return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"

    def facts(rows: list[tuple[str, str]]) -> str:
        return "<table class=facts>" + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows) + "</table>"

    def figure(s: Series) -> str:
        data = base64.b64encode(images[s.gate]).decode("ascii")
        return (f'<figure><img alt="{esc(s.gate)} over time" src="data:image/png;base64,{data}">'
                f"<figcaption>{esc(caption(s))}</figcaption></figure>")

    gates = [s for s in r.series if not s.log]
    seq = [s for s in r.series if s.log]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(_headline(r))}: {esc(r.deployment_id)}</title>",
        "<style>body{font-family:sans-serif;max-width:72rem;margin:1rem auto;padding:0 1rem;color:#222}"
        "table{border-collapse:collapse;margin:.5rem 0}th,td{border:1px solid #ccc;padding:.2rem .5rem;"
        "text-align:left;vertical-align:top;font-size:.9rem}table.facts th{background:#f4f4f4}"
        "pre{background:#f4f4f4;padding:.5rem;overflow-x:auto}figure{margin:1rem 0}"
        "figcaption{font-size:.85rem;color:#555}</style></head><body>",
        f"<h1>{esc(_headline(r))}</h1>", facts(_summary(r)),
    ]
    parts.append("<h2>What decided</h2>")
    parts.append(facts(_decision_rows(r.decision)) if r.decision else f"<p>Not rolled back: {esc(r.outcome)}.</p>")
    parts += ["<h2>Who did what</h2>", table(ACTIONS_HEAD, [_action_cells(a) for a in r.actions]) if r.actions
              else "<p>No operator action is journaled.</p>"]
    parts += ["<h2>Timeline</h2>", table(TIMELINE_HEAD, [[_hms(x.ts), fmt_seconds(x.at), x.what, x.who] for x in r.timeline])]
    parts.append("<h2>Gates over time</h2>")
    parts += [figure(s) for s in gates] or ["<p>No gate has a value in this deployment.</p>"]
    parts.append("<h2>Sequential analysis</h2>")
    if seq or r.evalues or r.analysis_notes:
        parts += [figure(s) for s in seq]
        if r.evalues:
            parts.append(table(EVALUE_HEAD, _evalue_table(r)))
        if r.analysis_notes:
            parts.append("<ul>" + "".join(f"<li>{esc(_hms(n.ts))} {esc(n.what)}</li>" for n in r.analysis_notes) + "</ul>")
    else:
        parts.append("<p>The sequential analysis did not run in this deployment.</p>")
    parts += ["<h2>Last value of every gate</h2>", table(SNAPSHOT_HEAD, _snapshot_rows(r)) if r.snapshot
              else "<p>No check was journaled.</p>"]
    parts += ["<h2>Replay</h2>", f"<pre>{esc(r.replay_command)}</pre>", "</body></html>"]
    return "\n".join(parts) + "\n"


def _md_cell(s: str) -> str:
    return " ".join(s.split()).replace("\\", "\\\\").replace("|", "\\|") or "-"


def render_markdown(r: Report, image_dir: str, images: dict[str, bytes] | None = None) -> tuple[str, dict[str, bytes]]:
    """The Markdown text and its PNG files (name -> bytes), linked as ``<image_dir>/<name>``."""
    images = charts(r) if images is None else images
    files = {f"{safe_name(s.gate)}.png": images[s.gate] for s in r.series}

    def table(head: list[str], rows: Iterable[Sequence[str]]) -> list[str]:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
        return out + [""]

    def facts(rows: list[tuple[str, str]]) -> list[str]:
        return table(["", ""], rows)

    def figure(s: Series) -> list[str]:
        return [f"![{s.gate} over time]({image_dir}/{safe_name(s.gate)}.png)", "", f"*{_md_cell(caption(s))}*", ""]

    lines = [f"# {_headline(r)}", ""] + facts(_summary(r))
    lines += ["## What decided", ""]
    lines += facts(_decision_rows(r.decision)) if r.decision else [f"Not rolled back: {r.outcome}.", ""]
    lines += ["## Who did what", ""]
    lines += table(ACTIONS_HEAD, [_action_cells(a) for a in r.actions]) if r.actions else ["No operator action is journaled.", ""]
    lines += ["## Timeline", ""] + table(TIMELINE_HEAD, [[_hms(x.ts), fmt_seconds(x.at), x.what, x.who] for x in r.timeline])
    lines += ["## Gates over time", ""]
    gates = [s for s in r.series if not s.log]
    seq = [s for s in r.series if s.log]
    for s in gates:
        lines += figure(s)
    if not gates:
        lines += ["No gate has a value in this deployment.", ""]
    lines += ["## Sequential analysis", ""]
    if seq or r.evalues or r.analysis_notes:
        for s in seq:
            lines += figure(s)
        if r.evalues:
            lines += table(EVALUE_HEAD, _evalue_table(r))
        lines += [f"- {_hms(n.ts)} {_md_cell(n.what)}" for n in r.analysis_notes] + [""]
    else:
        lines += ["The sequential analysis did not run in this deployment.", ""]
    lines += ["## Last value of every gate", ""]
    lines += table(SNAPSHOT_HEAD, _snapshot_rows(r)) if r.snapshot else ["No check was journaled.", ""]
    lines += ["## Replay", "", "```sh", r.replay_command, "```", ""]
    return "\n".join(lines), files


# --------------------------------------------------------------------------- writing


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(3).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def check_output(output: Path, fmt: str) -> None:
    """ReportError unless ``output`` can be written: its folder exists and it is not a folder."""
    if fmt not in FORMATS:
        raise ReportError(f"report format {fmt!r} is not valid; allowed: {' or '.join(FORMATS)}")
    parent = output.parent
    if not parent.is_dir():
        raise ReportError(f"cannot write the report to {output}: {parent} is not a directory; "
                          "allowed: a file in an existing, writable directory")
    if output.is_dir():
        raise ReportError(f"cannot write the report to {output}: it is a directory; allowed: a file path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ReportError(f"cannot write the report to {output}: {parent} is not writable")
    if fmt == "md" and files_dir(output).exists() and not files_dir(output).is_dir():
        raise ReportError(f"cannot write the report's charts to {files_dir(output)}: it exists and is not a directory")


def write(r: Report, fmt: str, output: str | os.PathLike[str]) -> list[Path]:
    """Write the report (and, for Markdown, its charts' folder); returns every file written.
    ReportError (nothing written, or what was half written removed) when it cannot."""
    out = Path(output)
    check_output(out, fmt)
    images = charts(r)
    written: list[Path] = []
    try:
        if fmt == "html":
            _atomic_write(out, render_html(r, images).encode())
            return [out]
        folder = files_dir(out)
        text, files = render_markdown(r, folder.name, images)
        made = not folder.exists()
        folder.mkdir(exist_ok=True)
        try:
            for name, data in files.items():
                _atomic_write(folder / name, data)
                written.append(folder / name)
            _atomic_write(out, text.encode())
        except BaseException:
            for p in written:
                with contextlib.suppress(OSError):
                    p.unlink()
            if made:
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise
        return [out, *written]
    except OSError as e:
        raise ReportError(f"cannot write the report to {out}: {e.strerror or type(e).__name__}") from None


def deployment_ids(records: list[dict[str, Any]]) -> list[str]:
    """Every deployment's id in journal order ("manual", router changes outside any, is none)."""
    return [i for i in deployments(records) if i != "manual"]


def resolve(records: list[dict[str, Any]], wanted: str) -> str | None:
    """A deployment id, ``latest``, or a prefix / suffix that names exactly one deployment."""
    ids = deployment_ids(records)
    if wanted == "latest":
        return ids[-1] if ids else None
    if wanted in ids:
        return wanted
    hits = [i for i in ids if i.startswith(wanted) or i.endswith(wanted)]
    return hits[0] if len(hits) == 1 else None


def read_journal(journal_path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every record, or ReportError when the journal cannot be read (missing, a folder, no access)."""
    p = Path(journal_path)
    if not p.exists():
        raise ReportError(f"no journal at {p}; allowed: the [journal] path of a canary.toml that has deployed")
    try:
        return list(read_records(p))
    except OSError as e:
        raise ReportError(f"cannot read the journal {p}: {e.strerror or type(e).__name__}") from None


def write_beside(journal_path: str | os.PathLike[str], deployment_id: str,
                 config_path: str | os.PathLike[str] | None = None, fmt: str = "html") -> Path:
    """The rollback's report at ``report_path(journal_path, deployment_id, fmt)``; ReportError when not."""
    records = read_journal(journal_path)
    out = report_path(journal_path, deployment_id, fmt)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportError(f"cannot create {out.parent}: {e.strerror or type(e).__name__}") from None
    write(build(records, deployment_id, journal_path=journal_path, config_path=config_path), fmt, out)
    return out


def after_rollback(journal_path: str | os.PathLike[str], deployment_id: str,
                   config_path: str | os.PathLike[str] | None = None) -> str:
    """What a manual rollback prints once nginx serves 0%: the report's path, or why there is none
    (never raises: the rollback is done, the report is its paperwork)."""
    if not deployment_id or deployment_id == "manual":
        return ""
    try:
        return f"incident report: {write_beside(journal_path, deployment_id, config_path)}"
    except ReportError as e:
        return f"incident report not written: {e}"
    except Exception as e:  # a report never turns a done rollback into a failure
        return f"incident report not written: {type(e).__name__}: {e}"


NoteFn = Callable[[str, str, dict[str, Any]], object]


class IncidentReporter:
    """An engine listener: on ``RolledBack`` (traffic is at 0% by then), write the report beside
    the journal in a thread and journal a note naming it.  Returns a coroutine for RolledBack only,
    so the engine waits for it before it exits (``Engine._drain_tasks``)."""

    def __init__(self, journal_path: str | os.PathLike[str], config_path: str | os.PathLike[str] | None = None,
                 note: NoteFn | None = None) -> None:
        self.journal_path = Path(journal_path)
        self.config_path = config_path
        self.note = note

    def __call__(self, e: ev.Event) -> Any:
        if isinstance(e, ev.RolledBack) and e.deployment_id:
            return self.on_rolled_back(e)
        return None

    async def on_rolled_back(self, e: ev.RolledBack) -> Path | None:
        import asyncio

        try:
            path = await asyncio.to_thread(write_beside, self.journal_path, e.deployment_id, self.config_path)
        except Exception as exc:  # the rollback is done; say why there is no report
            why = str(exc) if isinstance(exc, ReportError) else f"{type(exc).__name__}: {exc}"
            self._note("warning", f"incident report not written: {why}", {})
            return None
        self._note("info", f"incident report written to {path}", {"report": str(path)})
        return path

    def _note(self, level: str, message: str, data: dict[str, Any]) -> None:
        if self.note is not None:
            with contextlib.suppress(Exception):
                self.note(level, message, data)
