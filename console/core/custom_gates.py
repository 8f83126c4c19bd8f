"""Custom gates: any PromQL the operator writes becomes a gate, judged like the built-in ones.

``[[gates.custom]]`` in canary.toml, one table per gate::

    [[gates.custom]]
    name = "p95"                   # the gate is custom.p95
    query = 'histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket{version="$version"}[$window])))'
    compare = "<="                 # the condition that PASSES: <, <=, >, >=
    threshold = 0.5                # a number
    relative = false               # true: threshold is a ratio to production's value of the same query
    critical = false               # true: one FAIL rolls back; else after [gates] consecutive_failures
    min_samples_query = 'sum(increase(http_requests_total{version="$version"}[$window]))'
    min_samples = 20               # below that: INCONCLUSIVE (default [metrics] min_requests)

``$version`` is replaced by the version label's value (``[metrics] canary_value`` or
``production_value``), ``$window`` by the rate window as a PromQL range (``"300s"``), ``$$``
by a ``$``; any other ``$name`` is a config error.

Pure, apart from ``CustomGates.check``: parsing (``parse_custom_gates``), rendering
(``render``) and judging (``judge_custom``) are plain functions that tests drive with tables.
The queries are answered by a ``QueryReader`` (console/adapters/metrics/custom.py for
Prometheus), which turns every failure into a ``Reading`` with a one-line error: this module
imports nothing but the events, so ``console.core.config`` can validate the tables at load.

Verdicts, in order: a reading that failed (the source is unreachable, Prometheus rejected the
query, the answer is not one number, NaN or Inf) -> ERROR; no series for the canary ->
INCONCLUSIVE; fewer than ``min_samples`` -> INCONCLUSIVE; relative and no production value ->
INCONCLUSIVE; then ``canary <compare> threshold`` (relative: ``threshold x production``) ->
PASS, else FAIL.  The engine applies the same policy as to every gate (critical, consecutive
failures, ``on_inconclusive``, ERROR x ``unavailable_after`` -> ``on_metrics_unavailable``).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from console.core.events import ERROR, FAIL, INCONCLUSIVE, PASS, GateResult

if TYPE_CHECKING:
    from console.core.protocols import CheckContext

COMPARE: dict[str, Callable[[float, float], bool]] = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
PLACEHOLDERS = ("version", "window")
KEYS = ("name", "query", "compare", "threshold", "relative", "critical", "min_samples_query", "min_samples")
REQUIRED = ("name", "query", "compare", "threshold")
PREFIX = "custom."
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
# $$, $name, ${name}, or a "${" that is never closed; a "$" before anything else (a regex anchor) stays
_PLACEHOLDER = re.compile(r"\$(?:\$|([A-Za-z_][A-Za-z0-9_]*)|\{([^}]*)\}|(\{))")


class CustomGateError(ValueError):
    """One line: what, where, what is allowed (console.core.config raises it as a ConfigError)."""


@dataclass(frozen=True)
class CustomGate:
    name: str
    query: str
    compare: str
    threshold: float
    relative: bool = False
    critical: bool = False
    min_samples_query: str = ""
    min_samples: int = 0

    @property
    def gate(self) -> str:
        return PREFIX + self.name

    def condition(self) -> str:
        """'p95 <= 0.5' or 'canary <= 1.2 x production'."""
        if self.relative:
            return f"canary {self.compare} {self.threshold:g} x production"
        return f"value {self.compare} {self.threshold:g}"


# --------------------------------------------------------------------------- parsing


def placeholders(template: str) -> list[str]:
    """The placeholder names a template uses ("" for an unterminated ``${``); ``$$`` is none."""
    out = []
    for m in _PLACEHOLDER.finditer(template):
        if m.group(0) == "$$":
            continue
        out.append(m.group(1) if m.group(1) is not None else (m.group(2) if m.group(2) is not None else ""))
    return out


def parse_custom_gates(raw: Any, *, where: str, source: str, min_requests: int) -> tuple[CustomGate, ...]:
    """The ``[[gates.custom]]`` tables, validated; CustomGateError (one line) on the first bad one."""
    head = "[[gates.custom]]"
    if isinstance(raw, dict):
        raise CustomGateError(f"{where}: [gates.custom] is a single table; allowed: an array of tables, "
                              f"each starting with {head}")
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise CustomGateError(f"{where}: [gates] custom = {raw!r} is not valid; allowed: tables, each starting with {head}")
    gates: list[CustomGate] = []
    seen: set[str] = set()
    for i, t in enumerate(raw, 1):
        name = t.get("name")
        at = f"{where}: {head} #{i}" + (f" ({name!r})" if isinstance(name, str) and name else "")
        unknown = [k for k in t if k not in KEYS]
        if unknown:
            raise CustomGateError(f"{at}: unknown key {unknown[0]}; allowed: {', '.join(KEYS)}")
        missing = [k for k in REQUIRED if k not in t]
        if missing:
            raise CustomGateError(f"{at}: {missing[0]} is missing; required: {', '.join(REQUIRED)}")
        if not isinstance(name, str) or not _NAME.match(name):
            raise CustomGateError(f"{at}: name = {name!r} is not valid; allowed: 1-64 letters, digits, _ . - "
                                  "(the gate is custom.<name>)")
        if name in seen:
            raise CustomGateError(f"{at}: name {name!r} is used twice; allowed: a name unique among the custom gates")
        seen.add(name)
        query = _template(t, "query", at, required=True)
        samples_query = _template(t, "min_samples_query", at, required=False)
        compare = t["compare"]
        if compare not in COMPARE:
            raise CustomGateError(f"{at}: compare = {compare!r} is not valid; allowed: {', '.join(map(repr, COMPARE))} "
                                  "(the condition that passes)")
        threshold = t["threshold"]
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not math.isfinite(threshold):
            raise CustomGateError(f"{at}: threshold = {threshold!r} is not valid; allowed: a finite number")
        for key in ("relative", "critical"):
            if key in t and not isinstance(t[key], bool):
                raise CustomGateError(f"{at}: {key} = {t[key]!r} is not valid; allowed: true or false")
        relative = bool(t.get("relative", False))
        if relative and threshold <= 0:
            raise CustomGateError(f"{at}: threshold = {threshold!r} is not valid with relative = true; "
                                  "allowed: a ratio > 0 (canary vs production)")
        min_samples = t.get("min_samples", min_requests if samples_query else 0)
        if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 0:
            raise CustomGateError(f"{at}: min_samples = {min_samples!r} is not valid; allowed: an integer >= 0")
        if "min_samples" in t and not samples_query:
            raise CustomGateError(f"{at}: min_samples needs min_samples_query; allowed: both, or neither")
        gates.append(CustomGate(name=name, query=query, compare=compare, threshold=float(threshold), relative=relative,
                                critical=bool(t.get("critical", False)), min_samples_query=samples_query,
                                min_samples=min_samples))
    if gates and source != "prometheus":
        raise CustomGateError(f'{where}: {head} needs [metrics] source = "prometheus" (source {source!r} cannot run '
                              'PromQL); allowed: source = "prometheus", or no custom gates')
    return tuple(gates)


def _template(t: dict[str, Any], key: str, at: str, required: bool) -> str:
    v = t.get(key, "")
    if not isinstance(v, str):
        raise CustomGateError(f"{at}: {key} = {v!r} is not valid; allowed: a PromQL string")
    if not v.strip():
        if required or key in t:
            raise CustomGateError(f"{at}: {key} is empty; allowed: PromQL, with $version and $window")
        return ""
    for name in placeholders(v):
        if name not in PLACEHOLDERS:
            shown = "an unterminated ${" if name == "" else f"unknown placeholder ${name}"
            raise CustomGateError(f"{at}: {key} has {shown}; allowed: $version, $window (and $$ for a $)")
    return v


def render(template: str, *, version: str, window: str) -> str:
    """The PromQL to send: ``$version`` / ``${version}``, ``$window`` / ``${window}``, ``$$`` -> ``$``."""
    values = {"version": version, "window": window}

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) if m.group(1) is not None else m.group(2)
        if name not in values:  # parse_custom_gates refused it; keep it visible rather than guess
            return m.group(0)
        return values[name]

    return _PLACEHOLDER.sub(sub, template)


# --------------------------------------------------------------------------- readings and verdicts


@dataclass(frozen=True)
class Reading:
    """One query's answer: one number, ``None`` (no series: no data), or a one-line ``error``.
    ``invalid``: the query itself is wrong (Prometheus rejected it, or its answer can never be
    one number), which the preflight refuses; other errors are the source's."""

    value: float | None = None
    error: str = ""
    invalid: bool = False


class QueryReader(Protocol):
    """Instant queries for custom gates (console/adapters/metrics/custom.py).  Never raises for
    a failure of the source: each Reading carries it, in one line, never a credential."""

    kind: str

    async def read(self, queries: Sequence[str]) -> list[Reading]:
        """One Reading per query, in order, evaluated at one instant."""

    def describe(self) -> str: ...

    async def aclose(self) -> None: ...


def _prom(v: float) -> str:
    return "NaN" if math.isnan(v) else ("+Inf" if v > 0 else "-Inf")


def _finite_or(r: Reading, what: str) -> str:
    """'' when the reading is usable, else why not (an ERROR)."""
    if r.error:
        return r.error
    if r.value is not None and not math.isfinite(r.value):
        return f"the {what} returned {_prom(r.value)}"
    return ""


def judge_custom(g: CustomGate, canary: Reading, production: Reading, samples: Reading | None, *,
                 window: str, extra: dict[str, Any] | None = None) -> GateResult:
    """One custom gate from its readings (``samples`` only when the gate has a min_samples_query)."""
    n: int | None = None
    if samples is not None and samples.value is not None and math.isfinite(samples.value):
        n = int(round(samples.value))
    elif samples is not None and not samples.error and samples.value is None:
        n = 0  # no series: nothing was counted
    prod = production.value if production.value is not None and math.isfinite(production.value) and not production.error \
        else None
    info = {"compare": g.compare, "relative": g.relative, **(extra or {})}
    if g.relative:
        info["ratio"] = g.threshold
    base: dict[str, Any] = dict(gate=g.gate, value=canary.value, window=window, samples=n, critical=g.critical,
                                production_value=prod, extra=info,
                                threshold=(g.threshold * prod if prod is not None else None) if g.relative else g.threshold)
    why = _finite_or(canary, "query for the canary")
    if not why and samples is not None:
        why = _finite_or(samples, "min_samples_query")
    if not why and g.relative:
        why = _finite_or(production, "query for production")
    if why:
        return GateResult(verdict=ERROR, detail=why, **{**base, "value": None if canary.error else canary.value})
    if canary.value is None:
        return GateResult(verdict=INCONCLUSIVE, detail=f"no data: the query returned no series for the canary in {window}",
                          **base)
    if n is not None and n < g.min_samples:
        return GateResult(verdict=INCONCLUSIVE, detail=f"{n} samples in {window}, fewer than min_samples {g.min_samples} "
                                                       f"(value {canary.value:g})", **base)
    if g.relative and prod is None:
        return GateResult(verdict=INCONCLUSIVE, detail=f"no production value in {window} to compare the canary's "
                                                       f"{canary.value:g} with", **base)
    limit = base["threshold"]
    ok = COMPARE[g.compare](canary.value, limit)
    op = g.compare if ok else _negate(g.compare)
    shown = f"{canary.value:.4g} {op} {limit:.4g}"
    if g.relative:
        shown = f"canary {canary.value:.4g} {op} {g.threshold:g} x production {prod:.4g}"
    needed = "" if ok else f" (must be {g.compare} {limit:.4g})"
    sized = "" if n is None else f"; {n} samples"
    return GateResult(verdict=PASS if ok else FAIL, detail=f"{shown} over {window}{needed}{sized}", **base)


def _negate(op: str) -> str:
    return {"<": ">=", "<=": ">", ">": "<=", ">=": "<"}[op]


# --------------------------------------------------------------------------- the checker


@dataclass(frozen=True)
class _Plan:
    """The rendered queries of one gate: canary, production, canary samples (or "")."""

    gate: CustomGate
    canary: str
    production: str
    samples: str


class CustomGates:
    """The Checker of the ``[[gates.custom]]`` gates: each check reads every query once, at one
    instant, and returns one GateResult per gate (``custom.<name>``).  ``preflight`` runs them
    once before anything moves and returns one line per query the source refuses."""

    name = "custom gates"

    def __init__(self, gates: Sequence[CustomGate], reader: QueryReader, *, canary_value: str, production_value: str,
                 window: str, promql_window: str, window_s: float = 0.0, clock: Any = None) -> None:
        """``window_s`` and ``clock`` (its ``monotonic()``): after a warm-up, ``$window`` is cut so
        that it never reaches back past it (``CheckContext.samples_since``), as the built-in gates'."""
        self.gates = tuple(gates)
        self.reader = reader
        self.window = window
        self.window_s, self.clock = window_s, clock
        self.values = (canary_value, production_value)
        self.plans = self._plans(promql_window)
        self.last: list[GateResult] = []

    def _plans(self, promql_window: str) -> tuple[_Plan, ...]:
        canary, production = self.values
        return tuple(
            _Plan(g, render(g.query, version=canary, window=promql_window),
                  render(g.query, version=production, window=promql_window),
                  render(g.min_samples_query, version=canary, window=promql_window) if g.min_samples_query else "")
            for g in self.gates
        )

    def _window_for(self, ctx: CheckContext) -> tuple[tuple[_Plan, ...], str]:
        """The plans and the window of this check: the whole ``$window``, or, while it would reach
        back over the warm-up, the time since it in whole milliseconds."""
        if not (ctx.samples_since and self.clock is not None and self.window_s):
            return self.plans, self.window
        from console.core.protocols import window_after  # here: at load this module imports only the events (config)

        ms = window_after(self.window_s, self.clock.monotonic() - ctx.samples_since)
        if ms is None:
            return self.plans, self.window
        return self._plans(f"{max(1, ms)}ms"), f"{ms / 1000:g}s"

    def describe(self) -> str:
        return f"{self.reader.describe()}; custom gates: " + ", ".join(
            f"{g.name} ({g.condition()}{', critical' if g.critical else ''})" for g in self.gates)

    @staticmethod
    def _queries(plans: Sequence[_Plan]) -> list[str]:
        out: list[str] = []
        for p in plans:
            out += [p.canary, p.production] + ([p.samples] if p.samples else [])
        return out

    async def _read(self, plans: Sequence[_Plan] | None = None) -> list[tuple[_Plan, Reading, Reading, Reading | None]]:
        plans = self.plans if plans is None else plans
        readings = iter(await self.reader.read(self._queries(plans)))
        return [(p, next(readings), next(readings), next(readings) if p.samples else None) for p in plans]

    async def begin_stage(self, ctx: CheckContext) -> Sequence[dict[str, Any]]:
        return [{"level": "info", "message": self.describe(),
                 "data": {"source": self.reader.kind, "window": self.window, "gates": [g.gate for g in self.gates]}}]

    async def check(self, ctx: CheckContext) -> list[GateResult]:
        plans, window = self._window_for(ctx)
        try:
            read = await self._read(plans)
        except Exception as e:  # a reader bug must show as ERROR, never as a pass
            reason = f"{self.reader.kind} custom-gate queries failed: {type(e).__name__}"
            self.last = [GateResult(g.gate, ERROR, window=window, critical=g.critical, detail=reason) for g in self.gates]
            return self.last
        self.last = [
            judge_custom(p.gate, c, pr, s, window=window,
                         extra={"source": self.reader.kind, "query": p.canary,
                                **({"samples_query": p.samples} if p.samples else {})})
            for p, c, pr, s in read
        ]
        return self.last

    async def probe(self) -> list[tuple[CustomGate, str, str]]:
        """Every query once: (gate, status, detail) with status "pass" (a number for the canary),
        "no data" (accepted, no series yet), "invalid" (the query is wrong: the detail is the
        source's own words) or "unavailable" (the source did not answer)."""
        out: list[tuple[CustomGate, str, str]] = []
        for p, c, pr, s in await self._read():
            gate = p.gate.gate
            named = [("query", c, "canary"), ("query", pr, "production")] + ([("min_samples_query", s, "canary")] if s else [])
            bad = next(((k, r, v) for k, r, v in named if r.invalid), None)
            if bad is not None:
                k, r, v = bad
                out.append((p.gate, "invalid", f"{gate} {k} ({v}): {r.error}"))
            elif any(r.error for _, r, _ in named):
                out.append((p.gate, "unavailable", next(r.error for _, r, _ in named if r.error)))
            elif c.value is None:
                out.append((p.gate, "no data", f"{gate}: accepted; no series for the canary yet"))
            else:
                prod = "no series" if pr.value is None else f"{pr.value:g}"
                out.append((p.gate, "pass", f"{gate}: accepted; canary {c.value:g}, production {prod}"))
        return out

    async def preflight(self) -> list[str]:
        """One line per query the source refuses (Prometheus' own error); [] when all are accepted
        or the source does not answer now (the checks then judge ERROR, as for every gate)."""
        return [detail for _, status, detail in await self.probe() if status == "invalid"]

    async def aclose(self) -> None:
        await self.reader.aclose()

    close = aclose
