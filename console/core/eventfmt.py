"""Engine events as text: one line per event (``format_event``), and the decision feed the
operator reads (``DecisionFeed``: the console's events pane, the headless lines).

The feed shows what changed.  Checks that change nothing fold into ONE updating line
("checks: 14 in a row, every gate passing", a ``FoldLine``); a verdict change, a breach
count, a hold, a stage change, an operator action and a rollback each get their own line, in
words (PASS / FAIL / INCONCLUSIVE / ERROR, the value against the threshold, the window, n).
An unknown value reads as a word ("no data yet", "an unknown operator"), never ``?``.

``HeadlessLines`` turns the feed into what a headless run writes: on a terminal the fold line
is rewritten in place; into a file or a pipe it is written when something else follows it, at
the end, and at most once a minute (event time) while nothing changes, so a log holds every
decision, the length of every quiet run, and a sign of life at least once a minute.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from console.core import events as ev

WORD = {ev.PASS: "PASS", ev.FAIL: "FAIL", ev.INCONCLUSIVE: "INCONCLUSIVE", ev.ERROR: "ERROR"}
# the operator's actions in the guide's words (docs: roll back, advance, promote, pause)
ACTION_WORDS = {"advance": "advance", "step_back": "step back", "rollback": "roll back", "pause": "pause",
                "resume": "resume", "promote": "promote", "take_over": "take over", "stop": "stop the engine"}


# ----------------------------------------------------------------------------- values in their units

def is_percent(gate: str) -> bool:
    return gate in ("error_rate", "critical_error_rate") or gate.endswith(".error_rate")


def is_seconds(gate: str) -> bool:
    return gate.startswith("p95_latency") or gate.endswith("_latency")


def fmt_value(gate: str, v: float | None) -> str:
    """A gate value in the unit an operator reads it in ("-" when there is none: a table cell)."""
    if v is None:
        return "-"
    if is_percent(gate):
        return f"{v * 100:.2f}%"
    if is_seconds(gate):
        return f"{v * 1000:.0f}ms" if abs(v) < 1 else f"{v:.2f}s"
    if gate == "health":
        return f"{v:.0f}ms"
    if gate == "split":  # the measured share of the traffic the canary got, in percent (core/split.py)
        return f"{v:.2g}%" if v < 10 else f"{v:.3g}%"
    if gate == "schema_failures" or float(v).is_integer():
        return f"{v:.0f}"
    return f"{v:.3g}"


def verdict_word(verdict: str) -> str:
    return WORD.get(verdict, verdict.upper() or "NO VERDICT")


def action_words(action: str) -> str:
    return ACTION_WORDS.get(action, action.replace("_", " "))


def who(operator: ev.Operator | None) -> str:
    return f"operator {operator.label()}" if operator else "an unknown operator"


def measured(r: ev.GateResult) -> str:
    """"0.71% against 0.50% (5m, n=421)": the value against the threshold, the window and n, in
    words when a part is unknown; the detail when the value or the threshold does not say why."""
    value, threshold, label = r.value, r.threshold, ""
    if r.gate.startswith("seq."):  # the analysis' gates: an e-value against its rejection threshold
        value = value if value is not None else r.extra.get("e_value")
        threshold = threshold if threshold is not None else r.extra.get("threshold")
        label = "e-value "
    if value is None:
        s = "no value" if r.verdict == ev.ERROR else "no data yet"
    else:
        s = label + fmt_value(r.gate, value) + (f" against {fmt_value(r.gate, threshold)}" if threshold is not None else "")
    scope = ", ".join(x for x in (r.window, f"n={r.samples}" if r.samples is not None else "") if x)
    if scope:
        s += f" ({scope})"
    if r.verdict != ev.PASS and r.detail and (value is None or threshold is None):
        s += f": {r.detail}"
    return s


def _results(results: tuple[object, ...]) -> list[ev.GateResult]:
    """Gate results as GateResult, whatever a record from an older or newer engine carried."""
    out = []
    for r in results:
        if isinstance(r, ev.GateResult):
            out.append(r)
        elif isinstance(r, dict) and isinstance(r.get("gate"), str):
            out.append(ev.GateResult.from_dict(r))
    return out


def _stage(index: int) -> str:
    return "shadow stage" if index == ev.SHADOW_INDEX else f"stage {index + 1}"


def _stamp(e: ev.Event, body: str) -> str:
    t = e.ts[11:19] if len(e.ts) >= 19 else e.ts
    return f"{t} {body}" + (" (dry run)" if e.dry_run else "")


def _check(e: ev.CheckCompleted) -> str:
    """A check as one full line: every gate's verdict and value (the single-event form)."""
    results = _results(e.results)
    body = f"check at {e.weight}% +{e.elapsed:.0f}s: " + ("; ".join(
        f"{r.gate} {verdict_word(r.verdict)} {measured(r)}" for r in results) or "no gate reported")
    if e.breaches:
        body += "; " + ", ".join(f"{g} breach {n} of {e.consecutive_failures}" for g, n in e.breaches.items())
    if e.decision != "continue":
        body += f"; decision: {action_words(e.decision)}"
    return body


def format_event(e: ev.Event) -> str:
    """One event as one line of plain text (a log, a replay to a pipe, a journal dump)."""
    body: str
    match e:
        case ev.DeploymentStarted():
            verb = "resumed" if e.resumed else "started"
            body = (f"deployment {e.deployment_id} {verb} by {who(e.operator).removeprefix('operator ')}: {e.version}, "
                    f"stages {list(e.stages)}, observation {e.observation_period:g}s, checks every {e.check_interval:g}s")
        case ev.RouterIntent():
            prev = "from an unknown weight" if e.previous_weight is None else f"{e.previous_weight}%"
            body = f"router: set canary {prev} -> {e.weight}% ({e.reason})"
        case ev.RouterApplied():
            body = (f"router: nginx serves canary {e.weight}% (confirmed late, after the change was reported unconfirmed)"
                    if e.late else f"router: nginx serves canary {e.weight}% (verified in {e.duration_ms:.0f} ms)")
        case ev.RouterFailed():
            held = "" if e.file_weight is None else f"; the upstream file holds canary {e.file_weight}%"
            body = f"router: FAILED to set {e.weight}% ({e.outcome or 'failed'}{held}): {e.error}"
        case ev.StageStarted() if e.shadow:
            body = f"shadow stage: 0% canary, every request mirrored to it, observing {e.observation_period:g}s"
        case ev.StageStarted():
            body = f"stage {e.index + 1}/{e.total}: {e.weight}% canary, observing {e.observation_period:g}s"
        case ev.CheckCompleted():
            body = _check(e)
        case ev.StageExtended():
            body = f"{_stage(e.index)} extended to {e.until:g}s: {e.reason}"
        case ev.StagePassed():
            body = f"{_stage(e.index)} ({e.weight}%) passed: {e.reason}"
        case ev.Holding():
            body = f"HOLDING at {e.weight}%: {e.reason}"
        case ev.OperatorAction():
            body = f"{who(e.operator)}: {action_words(e.action)}" + ("" if e.accepted else " REFUSED") + (
                f" ({e.detail})" if e.detail else "")
        case ev.Paused():
            body = f"paused at {e.weight}% ({e.remaining:.0f}s of observation left)"
        case ev.Resumed():
            body = f"resumed at {e.weight}% ({e.remaining:.0f}s of observation left)"
        case ev.RollbackStarted():
            body = f"ROLLING BACK from {e.weight}%: {e.reason}"
        case ev.RolledBack():
            kind = "automatic" if e.automatic else "manual"
            body = f"ROLLED BACK ({kind}) from {e.from_weight}% to 0%: {e.reason}"
        case ev.Completed():
            body = "canary at 100%: rollout complete (promote when ready)"
        case ev.Promoted():
            body = "promoted to production" + (f" (approved by {', '.join(e.approvals)})" if e.approvals else "")
        case ev.Interrupted():
            body = f"interrupted at stage {e.weight}% ({e.signal}); traffic stays there. Resume: {e.resume_command}"
        case ev.Failed():
            body = f"FAILED: {e.reason}"
        case ev.Note():
            body = ("" if e.level == "info" else f"{e.level}: ") + e.message
        case _:
            body = e.kind
    return _stamp(e, body)


# ----------------------------------------------------------------------------- the decision feed

class FoldLine(str):
    """The one updating line of a run of checks that change nothing.  It replaces the line
    before it when that line is a FoldLine too; after any other line it is a new line."""

    __slots__ = ()


def fold_text(n: int, results: list[ev.GateResult]) -> str:
    """"checks: 14 in a row, every gate passing"."""
    count = f"checks: {n} in a row" if n > 1 else "checks: 1"
    if not results:
        return f"{count}, no gate reported"
    off = [r for r in results if r.verdict != ev.PASS]
    if not off:
        return f"{count}, every gate passing"
    named = ", ".join(f"{r.gate} {verdict_word(r.verdict)}" for r in off)
    if not any(r.blocking for r in off):  # only advisory gates are off: nothing holds the stage
        return f"{count}, all blocking gates pass, {named}"
    ok = len(results) - len(off)
    return f"{count}, no change: {named}" + (f"; {ok} passing" if ok else "")


class DecisionFeed:
    """Events in, the lines an operator reads out: ``feed(e)`` gives the lines for one event,
    each a ``str`` to append or a ``FoldLine`` that replaces the fold line before it.

    A check changes something when a gate's verdict differs from the check before (a gate
    seen for the first time counts when it does not pass) or a breach count moved: then each
    such gate gets a line ("error_rate PASS -> FAIL: 0.71% against 0.50% (5m, n=421); breach 1
    of 3").  Otherwise the check only counts in the fold line.  The count is of checks in a row
    on the same stage with the same verdicts, the one that set them included."""

    def __init__(self) -> None:
        self._verdicts: dict[str, str] = {}
        self._breaches: dict[str, int] = {}
        self._signature: tuple[object, ...] | None = None
        self._run = 0

    def feed(self, e: ev.Event) -> list[str]:
        if isinstance(e, ev.CheckCompleted):
            return self._check(e)
        return [format_event(e)]

    def _check(self, e: ev.CheckCompleted) -> list[str]:
        results = _results(e.results)
        lines = []
        for r in results:
            before = self._verdicts.get(r.gate)
            breach, was = e.breaches.get(r.gate, 0), self._breaches.get(r.gate, 0)
            if before == r.verdict and breach == was or before is None and r.verdict == ev.PASS:
                continue
            if before is None or before == r.verdict:
                head = f"{r.gate} {'still ' if before else ''}{verdict_word(r.verdict)}"
            else:
                head = f"{r.gate} {verdict_word(before)} -> {verdict_word(r.verdict)}"
            tail = f"; breach {breach} of {e.consecutive_failures}" if breach else ""
            lines.append(_stamp(e, f"{head}: {measured(r)}{tail}"))
        self._verdicts = {r.gate: r.verdict for r in results}
        self._breaches = dict(e.breaches)
        signature = (e.index, e.weight, tuple(sorted(self._verdicts.items())))
        self._run = self._run + 1 if signature == self._signature else 1
        self._signature = signature
        if lines:
            return lines
        return [FoldLine(_stamp(e, fold_text(self._run, results)))]


def feed_lines(events: Iterable[ev.Event]) -> list[str]:
    """The lines a fresh feed shows for ``events``, folds applied (what the pane ends up with)."""
    feed, out = DecisionFeed(), []
    for e in events:
        for line in feed.feed(e):
            if isinstance(line, FoldLine) and out and isinstance(out[-1], FoldLine):
                out[-1] = line
            else:
                out.append(line)
    return out


# ----------------------------------------------------------------------------- headless output

def _when(ts: str) -> float | None:
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class HeadlessLines:
    """The decision feed as the text a headless run writes (``feed`` / ``close`` return it).

    ``tty``: the fold line is rewritten in place (``\\r`` and spaces over the old one, cut to
    ``width``; the last version of it is written whole, with its newline, once another line
    follows).  Not a tty (a file, a pipe): each line is written once and never rewritten, so the
    fold line is written when another line follows it (its final count), at ``close``, and
    while nothing changes at most every ``every`` seconds of event time (a sign of life)."""

    def __init__(self, tty: bool, width: int = 80, every: float = 60.0) -> None:
        self.tty = tty
        self.width = max(20, width)
        self.every = every
        self.feed_ = DecisionFeed()
        self.open = False  # tty: a fold line is on the terminal without its newline
        self._shown = 0  # tty: cells of the open fold line
        self._fold = ""  # the latest fold line, not yet written whole
        self._last: float | None = None  # not a tty: event time of the last line written

    def feed(self, e: ev.Event) -> str:
        out = []
        for line in self.feed_.feed(e):
            out.append(self._fold_line(line, e.ts) if isinstance(line, FoldLine) else self._line(line, e.ts))
        return "".join(out)

    def _fold_line(self, line: str, ts: str) -> str:
        self._fold = line
        if self.tty:
            cut = line if len(line) < self.width else line[: self.width - 2] + "…"
            pad = " " * max(0, self._shown - len(cut))
            was_open, self.open, self._shown = self.open, True, len(cut)
            return ("\r" if was_open else "") + cut + pad
        now = _when(ts)
        if self._last is None or now is None or now - self._last >= self.every:
            self._last = now if now is not None else self._last
            self._fold = ""
            return line + "\n"
        return ""

    def _line(self, line: str, ts: str) -> str:
        text = self.end_fold() + line + "\n"
        if not self.tty:
            self._last = _when(ts) or self._last
        return text

    def end_fold(self) -> str:
        """What ends the fold line so another line can follow: on a terminal its whole last
        version and a newline; elsewhere the fold line not written yet."""
        fold, self._fold = self._fold, ""
        if self.tty:
            if not self.open:
                return ""
            self.open = False
            return "\r" + fold + " " * max(0, self._shown - len(fold)) + "\n" if fold else "\n"
        return fold + "\n" if fold else ""

    def close(self) -> str:
        return self.end_fold()
