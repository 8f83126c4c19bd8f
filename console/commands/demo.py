"""``canary-console demo``: a complete local canary sandbox (real nginx, Prometheus, two demo
services and traffic), rolled out under the console or ``--headless``; see docs/demo.md.

The sandbox is console/sandbox/ (its package docstring says which module does what); this
module only turns the flags into a ``Plan`` and runs it.

Exit codes: the deploy's (0 at 100%, 3 rolled back, 4 precondition, 6 router, 130
interrupted); 2 for bad flags; 4 when the sandbox cannot start (the line says what to do).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from console.core.exits import ExitCode
from console.sandbox.drive import run_sandbox
from console.sandbox.plan import Plan, UsageError


def run(args: argparse.Namespace, cfg: Any = None) -> int:
    """`canary-console demo`; ``cfg`` (the operator's own config) is not used: the demo
    writes and loads its own."""
    try:
        plan = Plan.from_args(args)
    except UsageError as e:
        print(f"canary-console demo: {e}", file=sys.stderr)
        return ExitCode.USAGE
    return run_sandbox(plan)
