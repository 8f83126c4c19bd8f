"""What the demo rolls out, and what the operator asked for: the ``demo`` flags, validated
into a ``Plan`` (a bad flag is a ``UsageError``: one line, exit 2).

The ``--fault`` flags are checked here, against the demo service's own validation, so that a
bad one fails before anything starts; injecting them is console/sandbox/faults.py.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from typing import Any

PRODUCTION_VERSION = "0.1.0"
CANARY_VERSION = "0.2.0"
DEPLOY_VERSION = "v0.2.0"
STAGES = (1, 5, 25, 100)
UPSTREAM_NAME = "fragrance_app"

_BOOL = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
FAULT_NAMES = ("error_rate", "latency", "schema_failure_rate", "schema_failures", "unhealthy", "rl_loss", "metrics_down")


class UsageError(ValueError):
    """A bad flag: one line, exit 2."""


def parse_fault(spec: str) -> dict[str, Any]:
    """``--fault NAME=VALUE`` -> the /admin/faults body for it (validated like the service does)."""
    from console.sandbox.service import BadInput, Faults, apply_fault_update

    allowed = "NAME=VALUE with NAME one of " + ", ".join(FAULT_NAMES)
    name, sep, value = spec.partition("=")
    name, value = name.strip().replace("-", "_"), value.strip()
    if not sep or name not in FAULT_NAMES or not value:
        raise UsageError(f"--fault {spec!r} is not valid; allowed: {allowed} (e.g. error_rate=0.05, latency=fast:3)")
    body: dict[str, Any]
    try:
        if name in ("error_rate", "schema_failure_rate"):
            body = {name: float(value)}
        elif name == "schema_failures":
            body = {name: int(value)}
        elif name == "latency":
            body = {name: value.replace(":", "=")}
        elif name in ("unhealthy", "metrics_down"):
            if value.lower() not in _BOOL:
                raise ValueError
            body = {name: _BOOL[value.lower()]}
        else:  # rl_loss
            body = {name: None if value.lower() in ("none", "null") else float(value)}
        apply_fault_update(Faults(), body)
    except BadInput as e:
        raise UsageError(f"--fault {spec!r}: {e}") from None
    except ValueError:
        raise UsageError(f"--fault {spec!r}: {value!r} is not a valid value for {name}; allowed: {allowed}") from None
    return body


def describe_faults(body: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in body.items())


@dataclass(frozen=True)
class Plan:
    rps: float
    observation: float
    check_interval: float
    faults: dict[str, Any] = field(default_factory=dict)
    fault_at: int | None = None
    headless: bool = False
    json: bool = False
    keep: bool = False
    source: str = "auto"
    port: int | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Plan:
        rps = float(args.rps)
        if not (rps > 0 and math.isfinite(rps)):
            raise UsageError(f"--rps {args.rps!r} is not valid; allowed: a number of requests per second > 0")
        faults: dict[str, Any] = {}
        for spec in args.fault:
            faults.update(parse_fault(spec))
        fault_at = args.fault_at_stage
        if fault_at is not None and not faults:
            raise UsageError("--fault-at-stage needs at least one --fault NAME=VALUE (e.g. --fault error_rate=0.05)")
        if fault_at is not None and fault_at not in STAGES:
            raise UsageError(f"--fault-at-stage {fault_at} is not valid; allowed: one of the stages "
                             f"{', '.join(map(str, STAGES))}")
        port = getattr(args, "port", None)
        if port is not None and not 1 <= int(port) <= 65535:
            raise UsageError(f"--port {port} is not valid; allowed: a TCP port 1..65535")
        return cls(
            rps=rps, observation=float(args.observation_period), check_interval=float(args.check_interval),
            faults=faults, fault_at=(STAGES[0] if faults and fault_at is None else fault_at),
            headless=bool(args.headless or args.json), json=bool(args.json), keep=bool(args.keep),
            source=args.source, port=None if port is None else int(port),
        )
