"""One line of plain text per engine event: headless output and the console's event log."""

from __future__ import annotations

from console.core import events as ev

SYMBOL = {ev.PASS: "ok", ev.FAIL: "FAIL", ev.INCONCLUSIVE: "??", ev.ERROR: "ERR"}


def _gates(results: tuple[ev.GateResult, ...]) -> str:
    out = []
    for r in results:
        v = "-" if r.value is None else f"{r.value:.4g}"
        out.append(f"{r.gate}={v}[{SYMBOL.get(r.verdict, r.verdict)}]")
    return " ".join(out)


def _stage(index: int) -> str:
    return "shadow stage" if index == ev.SHADOW_INDEX else f"stage {index + 1}"


def format_event(e: ev.Event) -> str:
    t = e.ts[11:19] if len(e.ts) >= 19 else e.ts
    dry = " (dry run)" if e.dry_run else ""
    body: str
    match e:
        case ev.DeploymentStarted():
            who = e.operator.label() if e.operator else "?"
            verb = "resumed" if e.resumed else "started"
            body = (f"deployment {e.deployment_id} {verb} by {who}: {e.version}, stages {list(e.stages)}, "
                    f"observation {e.observation_period:g}s, checks every {e.check_interval:g}s")
        case ev.RouterIntent():
            prev = "?" if e.previous_weight is None else e.previous_weight
            body = f"router: set canary {prev}% -> {e.weight}% ({e.reason})"
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
            body = f"check {e.weight}% +{e.elapsed:.0f}s: {_gates(e.results)}"
            if e.breaches:
                body += " breaches " + ", ".join(f"{g} {n} of {e.consecutive_failures}" for g, n in e.breaches.items())
            if e.decision != "continue":
                body += f" -> {e.decision}"
        case ev.StageExtended():
            body = f"{_stage(e.index)} extended to {e.until:g}s: {e.reason}"
        case ev.StagePassed():
            body = f"{_stage(e.index)} ({e.weight}%) passed: {e.reason}"
        case ev.Holding():
            body = f"HOLDING at {e.weight}%: {e.reason}"
        case ev.OperatorAction():
            who = e.operator.label() if e.operator else "?"
            body = f"operator {who}: {e.action}" + ("" if e.accepted else " REFUSED") + (f" ({e.detail})" if e.detail else "")
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
    return f"{t} {body}{dry}"
