"""The custom gates' queries (console/core/custom_gates.py), answered by Prometheus.

``PrometheusQueries(source)`` is a ``QueryReader``: it sends the rendered PromQL through the
``PrometheusSource`` the built-in gates use (``PrometheusSource.answers``: the same client,
credentials, TLS setting and ``[metrics] query_timeout`` budget, one evaluation time per
check) and turns every answer into a ``Reading``:

* an instant vector with one sample, or a scalar -> its value (NaN/Inf passed through: the
  gate judges ERROR);
* an empty vector -> ``None`` (no data);
* several series -> an error, ``invalid`` (a gate needs one number: aggregate the query);
* a range vector or a string -> an error, ``invalid``;
* HTTP 400/422 (Prometheus refused the query) -> an error with Prometheus' own words, ``invalid``;
* Prometheus unreachable, timed out, 5xx, malformed -> the same one-line error on every reading.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from console.adapters.metrics.prometheus import PrometheusSource, Rejected
from console.core.custom_gates import Reading
from console.core.protocols import MetricsUnavailable

WHAT = "custom gate query"


class PrometheusQueries:
    kind = "prometheus"

    def __init__(self, source: PrometheusSource, *, owns_source: bool = False) -> None:
        self.source = source
        self.owns_source = owns_source  # close the source with the reader (when no other checker does)

    def describe(self) -> str:
        return self.source.describe()

    async def read(self, queries: Sequence[str]) -> list[Reading]:
        if not queries:
            return []
        try:
            answers = await self.source.answers(WHAT, list(queries))
        except MetricsUnavailable as e:
            return [Reading(error=str(e)) for _ in queries]
        return [decode(a) for a in answers]

    async def aclose(self) -> None:
        if self.owns_source:
            await self.source.aclose()


def decode(answer: Any) -> Reading:
    """One answer (``data.result`` as Prometheus sent it, or a Rejected) as a Reading."""
    if isinstance(answer, Rejected):
        return Reading(error=f"Prometheus rejected the query ({answer.reason})", invalid=True)
    if isinstance(answer, list) and len(answer) == 2 and isinstance(answer[0], int | float) and not isinstance(answer[1], dict):
        return _number(answer[1], "a string")  # a scalar: [time, "value"]; a string result has the same shape
    if not isinstance(answer, list):
        return Reading(error="unexpected answer (no result list)")
    if not answer:
        return Reading()
    if any(not isinstance(s, dict) or "value" not in s for s in answer):
        kind = "a range vector" if all(isinstance(s, dict) and "values" in s for s in answer) else "an unexpected result"
        return Reading(error=f"the query returns {kind}; a gate needs an instant vector with one series, or a scalar",
                       invalid=True)
    if len(answer) > 1:
        labels = ", ".join(_labels(s.get("metric")) for s in answer[:3]) + (", ..." if len(answer) > 3 else "")
        return Reading(error=f"the query returns {len(answer)} series ({labels}); a gate needs one: aggregate it "
                             "(sum, max, ...)", invalid=True)
    value = answer[0]["value"]
    if not isinstance(value, list) or len(value) != 2:
        return Reading(error="unexpected answer (a sample without a value)")
    return _number(value[1], "a sample that is not a number")


def _number(text: Any, what: str) -> Reading:
    try:
        return Reading(value=float(text))
    except (TypeError, ValueError):
        return Reading(error=f"the query returns {what}; a gate needs a number", invalid=True)


def _labels(metric: Any) -> str:
    if not isinstance(metric, dict) or not metric:
        return "{}"
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(metric.items())) + "}"
