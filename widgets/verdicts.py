"""How a verdict and a gate value read on screen: always a word or a symbol, never colour alone.

Shared by the decision panel, the sparklines, the timeline and the detail view, so "FAIL"
means the same thing everywhere, with NO_COLOR, in 16 colours and in tmux.
"""

from __future__ import annotations

from console.core.events import ERROR, FAIL, INCONCLUSIVE, PASS

# verdict -> (symbol, word, CSS-ish style class used in Rich styles of the widgets)
VERDICT = {
    PASS: ("✓", "PASS"),
    FAIL: ("✗", "FAIL"),
    INCONCLUSIVE: ("?", "WAIT"),
    ERROR: ("!", "ERR"),
}

# Rich style names resolved from the theme by the widgets (see ``verdict_style``)
VERDICT_VAR = {PASS: "success", FAIL: "error", INCONCLUSIVE: "warning", ERROR: "warning"}


def verdict_label(verdict: str) -> str:
    sym, word = VERDICT.get(verdict, ("·", verdict.upper()[:4]))
    return f"{sym} {word}"


def is_percent(gate: str) -> bool:
    return gate in ("error_rate", "critical_error_rate") or gate.endswith(".error_rate")


def is_seconds(gate: str) -> bool:
    return gate.startswith("p95_latency") or gate.endswith("_latency")


def fmt_value(gate: str, v: float | None) -> str:
    """A gate value in the unit an operator reads it in."""
    if v is None:
        return "-"
    if is_percent(gate):
        return f"{v * 100:.2f}%"
    if is_seconds(gate):
        return f"{v * 1000:.0f}ms" if abs(v) < 1 else f"{v:.2f}s"
    if gate == "health":
        return f"{v:.0f}ms"
    if gate == "schema_failures" or float(v).is_integer():
        return f"{v:.0f}"
    return f"{v:.3g}"


def short_gate(gate: str) -> str:
    """A gate name that fits a narrow column: p95_latency.fast -> p95 fast."""
    if gate.startswith("p95_latency."):
        return "p95 " + gate.split(".", 1)[1]
    return {"critical_error_rate": "crit errors", "schema_failures": "schema fails"}.get(gate, gate)
