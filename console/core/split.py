"""The split nginx really served, measured from its canary access log: the ``split`` gate.

Pure: access-log lines in, counts and a verdict out (the tailing is
``console/adapters/split_source.py``).  The canary log format (``nginx/nginx.canary.conf``,
``console.sandbox.nginx_local.LOG_FORMAT``) carries ``upstream=$upstream_addr`` and
``gen=$canary_generation``:

    127.0.0.1 [...] "GET / HTTP/1.1" 200 61 rt=0.001 upstream=127.0.0.1:8001 ustatus=200 urt=0.001 gen=v1-...:3fa2c1

* Only lines of the generation the router last applied are judged: a change starts a new
  count, and a worker still on an older file logs that file's generation, not this one.
* ``$upstream_addr`` lists every server nginx tried (``proxy_next_upstream``): ``"canary,
  production"`` means the canary refused and production answered.  A request counts for the
  last address; such retries are counted apart, as the evidence of a canary hidden by retries.
* The judgement uses the last ``window`` requests of the generation (so a canary that stops
  mid-stage shows within a check or two, not after the whole stage's count has diluted it):
  fewer than ``min_requests`` -> INCONCLUSIVE, measured share off the target by more than
  ``tolerance`` points -> FAIL.  INCONCLUSIVE (and an unreadable log: ERROR) are advisory
  (``blocking=False``): the metric gates already hold a stage that saw too little traffic.
  A FAIL is not critical: it rolls back once it held ``consecutive_failures`` checks.
* Lines in other formats (no ``upstream=``, no ``gen=``) are skipped and counted, never an error.
"""

from __future__ import annotations

import re
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from console.core.events import ERROR, FAIL, INCONCLUSIVE, PASS, GateResult

GATE = "split"
CANARY, PRODUCTION, OTHER = "c", "p", "o"

# the last `upstream=` / `gen=` field of a line: a client cannot forge it in the request line,
# which comes before the real fields
_UPSTREAM = re.compile(r"(?:^|\s)upstream=([^=]*?)(?=\s+[A-Za-z_][A-Za-z0-9_]*=|\s*$)")
_GEN = re.compile(r"(?:^|\s)gen=(\S*)")
# $upstream_addr: ", " between servers of one upstream, " : " between upstream groups (X-Accel-Redirect)
_SEP = re.compile(r"\s*,\s*|\s+:\s+")


@dataclass(frozen=True)
class Routed:
    """One proxied request of the access log."""

    generation: str | None  # None: the line has no gen= field (an older log format)
    addresses: tuple[str, ...]  # every server nginx tried, in order; the last one answered


def parse_line(line: str) -> Routed | None:
    """The upstream addresses and generation of one canary log line; None when the line is
    not a proxied request (no ``upstream=`` field, or ``upstream=-``)."""
    ups = _UPSTREAM.findall(line)
    if not ups:
        return None
    addresses = tuple(a for a in _SEP.split(ups[-1].strip()) if a and a != "-")
    if not addresses:
        return None
    gens = _GEN.findall(line)
    gen = gens[-1] if gens and gens[-1] not in ("", "-") else None
    return Routed(gen, addresses)


@dataclass
class Tally:
    """The requests of one generation: all of them, and the last ``window`` for the verdict."""

    window: int
    requests: int = 0
    canary: int = 0
    production: int = 0
    other: int = 0
    retried: int = 0  # more than one server tried
    retried_from_canary: int = 0  # the canary was tried and another server answered
    other_addresses: list[str] = field(default_factory=list)  # a few, for the message
    recent: deque[str] = field(init=False)
    recent_counts: dict[str, int] = field(default_factory=lambda: {CANARY: 0, PRODUCTION: 0, OTHER: 0})

    def __post_init__(self) -> None:
        self.recent = deque(maxlen=max(1, self.window))

    def add(self, kind: str, retried: bool, from_canary: bool, address: str) -> None:
        self.requests += 1
        if kind == CANARY:
            self.canary += 1
        elif kind == PRODUCTION:
            self.production += 1
        else:
            self.other += 1
            if address not in self.other_addresses and len(self.other_addresses) < 3:
                self.other_addresses.append(address)
        self.retried += retried
        self.retried_from_canary += from_canary
        if len(self.recent) == self.recent.maxlen:
            self.recent_counts[self.recent[0]] -= 1
        self.recent.append(kind)
        self.recent_counts[kind] += 1

    @property
    def judged(self) -> int:
        return len(self.recent)

    @property
    def share(self) -> float | None:
        """The canary's percentage of the last ``window`` requests (None: none yet)."""
        n = len(self.recent)
        return 100.0 * self.recent_counts[CANARY] / n if n else None


class SplitCounter:
    """Counts routed requests per generation, in bounded memory: the last few generations, each
    with a fixed-size window.  ``production``/``canary`` are the addresses nginx logs for each
    (as written in the upstream file, and what they resolve to)."""

    def __init__(self, production: Iterable[str], canary: Iterable[str], window: int = 1000,
                 generations: int = 4) -> None:
        self.window = window
        self.keep = max(1, generations)
        self.set_addresses(production, canary)
        self._tallies: OrderedDict[str, Tally] = OrderedDict()
        self.unattributed = 0  # proxied requests whose line has no gen= (another log format)
        self.skipped = 0  # lines that are not a proxied request

    def set_addresses(self, production: Iterable[str], canary: Iterable[str]) -> None:
        self.canary = frozenset(canary)
        self.production = frozenset(production) - self.canary

    def kind(self, address: str) -> str:
        return CANARY if address in self.canary else PRODUCTION if address in self.production else OTHER

    def feed(self, lines: Iterable[str]) -> None:
        for line in lines:
            r = parse_line(line)
            if r is None:
                self.skipped += 1
                continue
            if r.generation is None:
                self.unattributed += 1
                continue
            self.add(r)

    def add(self, r: Routed) -> None:
        assert r.generation is not None
        t = self._tallies.get(r.generation)
        if t is None:
            t = self._tallies[r.generation] = Tally(self.window)
            while len(self._tallies) > self.keep:
                self._tallies.popitem(last=False)
        last = r.addresses[-1]
        kind = self.kind(last)
        from_canary = kind != CANARY and any(a in self.canary for a in r.addresses[:-1])
        t.add(kind, len(r.addresses) > 1, from_canary, last)

    def tally(self, generation: str) -> Tally | None:
        return self._tallies.get(generation)


@dataclass(frozen=True)
class SplitPolicy:
    tolerance: float = 2.0  # points of percentage
    min_requests: int = 200
    window: int = 1000
    advisory: str = ""  # non-empty: never FAIL, say why (for example sticky routing)

    @classmethod
    def from_cfg(cls, cfg: Any) -> SplitPolicy:
        g = cfg["gates"]
        return cls(tolerance=float(g["split_tolerance"]), min_requests=int(g["split_min_requests"]),
                   window=int(g["split_window"]))


def _pct(v: float) -> str:
    return f"{v:.1f}%" if abs(v - round(v)) > 1e-9 else f"{v:.0f}%"


def split_error(detail: str, target: float | None = None) -> GateResult:
    """The access log could not be read: shown, never holds a stage (the file may yet appear)."""
    return GateResult(GATE, ERROR, threshold=None if target is None else float(target), window="gen", detail=detail,
                      blocking=False)


def judge_split(tally: Tally | None, generation: str, target: float, policy: SplitPolicy,
                unattributed: int = 0) -> GateResult:
    """The ``split`` gate for one check.  value: the canary's measured share (percent) over the
    last ``policy.window`` requests of ``generation``; threshold: the target weight; samples: the
    requests counted at this generation."""
    target = float(target)
    gen = generation or "(unknown)"
    if tally is None or tally.requests == 0:
        detail = f"no request at generation {gen} in the access log yet"
        if unattributed:
            detail = (f"{unattributed} proxied requests in the access log carry no gen=$canary_generation: "
                      "add it to the log_format (as nginx/nginx.canary.conf does)")
        return GateResult(GATE, INCONCLUSIVE, threshold=target, window="gen", samples=0, detail=detail,
                          blocking=False, extra={"generation": generation})
    extra: dict[str, Any] = {
        "generation": generation, "canary": tally.canary, "production": tally.production, "other": tally.other,
        "retried": tally.retried, "retried_from_canary": tally.retried_from_canary, "judged": tally.judged,
        "tolerance": policy.tolerance,
    }
    window = f"last {tally.judged}"
    if tally.canary + tally.production == 0:
        seen = ", ".join(tally.other_addresses)
        return GateResult(GATE, INCONCLUSIVE, threshold=target, window=window, samples=tally.requests, blocking=False,
                          detail=(f"none of {tally.requests} requests went to [nginx] production or canary as written "
                                  f"(nginx logged {seen}): set them to the addresses nginx logs"), extra=extra)
    share = tally.share
    assert share is not None
    value = round(share, 3)
    retries = ""
    if tally.retried_from_canary:
        retries = f"; {tally.retried_from_canary} retried from the canary on another server (proxy_next_upstream)"
    if tally.judged < policy.min_requests:
        return GateResult(GATE, INCONCLUSIVE, value=value, threshold=target, window=window, samples=tally.requests,
                          blocking=False, extra=extra,
                          detail=f"{tally.judged} requests at this generation, fewer than {policy.min_requests}: "
                                 f"canary {_pct(share)} of {_pct(target)} so far, not judged yet{retries}")
    off = abs(share - target)
    measured = f"canary served {_pct(share)} of the last {tally.judged} requests, target {_pct(target)}"
    if off > policy.tolerance + 1e-9:
        detail = f"{measured}: off by {off:.1f} points (> {policy.tolerance:g}){retries}"
        if policy.advisory:
            return GateResult(GATE, INCONCLUSIVE, value=value, threshold=target, window=window, samples=tally.requests,
                              blocking=False, extra=extra, detail=f"{detail}; not judged: {policy.advisory}")
        return GateResult(GATE, FAIL, value=value, threshold=target, window=window, samples=tally.requests,
                          detail=detail, extra=extra)
    return GateResult(GATE, PASS, value=value, threshold=target, window=window, samples=tally.requests, extra=extra,
                      detail=f"{measured} (±{policy.tolerance:g} points){retries}")
