"""``QuickRouter``: the NginxRouter of the CLI's `rollback` and `weights`, without an event loop.

The same ``apply`` as ``router.NginxRouter`` (render, atomic write, ``nginx -t`` with the old
bytes put back on a refusal, reload, and the change counts only once nginx verifiably serves the
new generation), with its three waits done blocking: the commands through
``files.run_command_now``, the verification through ``probe.verify_generation_now``, and a lock
that never waits.  Every ``await`` in its ``apply`` completes at once, so a caller drives it
with ``console.core.manual.run_inline`` and never loads asyncio (tens of ms of a rollback that
takes about 150).

Reload mode only: dynamic mode (``[nginx] mode = "dynamic"``) and a fleet keep the async routers.
"""

from __future__ import annotations

from typing import Any

from console.adapters.nginx.files import run_command_now
from console.adapters.nginx.probe import verify_generation_now
from console.adapters.nginx.router import NginxRouter

__all__ = ["QuickRouter"]


class _InlineLock:
    """``async with`` that never waits: one change at a time in a process that makes one."""

    def __init__(self) -> None:
        self.held = False

    async def __aenter__(self) -> None:
        if self.held:
            raise RuntimeError("QuickRouter: a change is already under way (it makes one at a time)")
        self.held = True

    async def __aexit__(self, *exc: object) -> None:
        self.held = False


class QuickRouter(NginxRouter):
    """``NginxRouter`` whose ``apply`` never waits on an event loop; see the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.dynamic:
            raise ValueError('QuickRouter is for [nginx] mode = "reload"; dynamic mode takes NginxRouter')

    def _new_lock(self) -> Any:
        return _InlineLock()

    async def _run(self, argv: list[str]) -> tuple[int, str]:
        return run_command_now(argv, self.command_timeout)

    async def _verify(self, generation: str, timings: dict[str, float]) -> None:
        verify_generation_now(self.verify_url, generation, self.verify_timeout, self.verify_hits,
                              self.verify_interval, self.verify_burst, self.verify_settle, timings)
