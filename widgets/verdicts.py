"""How a verdict and a gate value read on screen: always a word or a symbol, never colour alone.

Shared by the decision panel, the sparklines, the timeline and the detail view, so "FAIL"
means the same thing everywhere, with NO_COLOR, in 16 colours and in tmux.
"""

from __future__ import annotations

from console.core.eventfmt import fmt_value, is_percent, is_seconds  # one formatter for the panels and the lines
from console.core.events import ERROR, FAIL, INCONCLUSIVE, PASS

__all__ = ["VERDICT", "VERDICT_VAR", "fmt_value", "is_percent", "is_seconds", "short_gate", "verdict_label"]

# verdict -> (symbol, word, CSS-ish style class used in Rich styles of the widgets)
VERDICT = {
    PASS: ("✓", "PASS"),
    FAIL: ("✗", "FAIL"),
    INCONCLUSIVE: ("…", "WAIT"),  # a verdict not reached yet; "?" would read as an unknown value
    ERROR: ("!", "ERR"),
}

# Rich style names resolved from the theme by the widgets (see ``verdict_style``)
VERDICT_VAR = {PASS: "success", FAIL: "error", INCONCLUSIVE: "warning", ERROR: "warning"}


def verdict_label(verdict: str) -> str:
    sym, word = VERDICT.get(verdict, ("·", verdict.upper()[:4]))
    return f"{sym} {word}"


def short_gate(gate: str) -> str:
    """A gate name that fits a narrow column: p95_latency.fast -> p95 fast."""
    if gate.startswith("p95_latency."):
        return "p95 " + gate.split(".", 1)[1]
    return {"critical_error_rate": "crit errors", "schema_failures": "schema fails"}.get(gate, gate)
