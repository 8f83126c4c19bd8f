"""What every caller of a router shares: ``RouterError`` and two reads that never raise.

Apart from ``protocols`` (the ``TrafficRouter`` Protocol itself) so that the CLI's `rollback`
and `weights`, which need only these, do not pay for building every Protocol and the data they
return (issue 15: a rollback from process start until nginx serves 0%)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from console.core.protocols import TrafficRouter


class RouterError(Exception):
    """A router change failed.  ``detail`` is the tool's own text (nginx -t output);
    ``restored_weight`` is what the file was put back to, if anything."""

    reloaded = False  # True when nginx was reloaded with the new file but did not confirm it

    def __init__(self, message: str, detail: str = "", restored_weight: float | None = None) -> None:
        super().__init__(message)
        self.detail = detail
        self.restored_weight = restored_weight


def file_weight(router: TrafficRouter) -> float | None:
    """What the router's file holds now, or None when it cannot be read: on the way to a safe
    state an unreadable file is reported as unknown, never raised again."""
    try:
        return router.current_weight()
    except Exception:
        return None


def router_hosts(router: TrafficRouter) -> tuple[dict, ...]:
    """A fleet's per-host outcomes of its last change (one nginx: none)."""
    last = getattr(router, "last_hosts", None)  # optional: only a FleetRouter has hosts
    return tuple(last()) if callable(last) else ()
