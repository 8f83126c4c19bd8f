"""Exit codes: one enum for every command, and the one function that maps a deployment's
state to the code `deploy` returns (attach, the console and the engine agree through it).

    0 ok / reached 100%        1 checks failed (check) / cancelled at a question
    2 usage or config error    3 rolled back
    4 precondition failed      5 the driver lock is held by another driver
    6 the router could not apply a change   130 interrupted (traffic stays where it is)
"""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from console.core.state import DeploymentState


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # `check`: a check failed; `promote`: cancelled at the question
    USAGE = 2
    ROLLED_BACK = 3
    PRECONDITION = 4
    LOCKED = 5
    ROUTER = 6
    INTERRUPTED = 130


EPILOG = """exit codes: 0 ok (reached 100%); 1 checks failed; 2 usage or config error; 3 rolled back;
4 precondition failed; 5 lock held by another driver; 6 router change failed (old file kept); 130 interrupted"""

# a failed deployment whose reason starts so failed in the router, not a precondition
ROUTER_REASONS = ("router", "rollback to 0% failed")


def exit_code_for(st: DeploymentState) -> ExitCode:
    """The exit code `deploy` returns (or would have returned) for a deployment in this state."""
    from console.core import state as s

    if st.state in (s.AT_100, s.PROMOTED):
        return ExitCode.OK
    if st.state == s.ROLLED_BACK:
        return ExitCode.ROLLED_BACK
    if st.state == s.FAILED:
        return ExitCode.ROUTER if st.reason.startswith(ROUTER_REASONS) else ExitCode.PRECONDITION
    return ExitCode.INTERRUPTED
