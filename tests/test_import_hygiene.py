"""The engine and the CLI's fast path never load textual or rich (nor the heavy SDKs)."""

from __future__ import annotations

import subprocess
import sys

import pytest

ENGINE_MODULES = ("console.core.engine, console.core.state, console.core.journal, console.core.config, console.wiring, "
                  "console.remote.links, console.commands.deploy")


@pytest.mark.parametrize("modules", [ENGINE_MODULES, "console.commands.cli"])
def test_engine_imports_without_textual_or_rich(modules):
    code = (
        f"import sys; import {modules}; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'rich')); print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_cli_fast_path_keeps_heavy_sdks_out():
    code = (
        "import sys; import console.commands.cli, console.adapters.nginx.router, console.core.journal, console.core.lock, "
        "console.core.events; "
        "heavy = ('textual', 'rich', 'docker', 'prometheus_api_client', 'httpx', 'plotext');"
        "print(','.join(sorted({m.split('.')[0] for m in sys.modules} & set(heavy))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
