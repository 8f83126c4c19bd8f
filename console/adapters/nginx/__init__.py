"""NGINX as the traffic router: the managed include, its atomic write and commands, the probe, the router.

``render`` (the include file: render and read back), ``files`` (atomic writes, argv-only
commands), ``probe`` (which generation nginx serves), ``router`` (``NginxRouter``).  All light
stdlib: ``from console.adapters.nginx import NginxRouter`` is on the CLI's rollback path.
"""

from console.adapters.nginx.files import run_command, write_atomic
from console.adapters.nginx.probe import RouterNotVerified, verify_generation
from console.adapters.nginx.render import generation_of, render_upstream, weight_of
from console.adapters.nginx.router import NginxRouter, PreflightFailed

__all__ = [
    "NginxRouter",
    "PreflightFailed",
    "RouterNotVerified",
    "generation_of",
    "render_upstream",
    "run_command",
    "verify_generation",
    "weight_of",
    "write_atomic",
]
