"""The engine and the CLI's fast path never load textual or rich (nor the heavy SDKs)."""

from __future__ import annotations

import subprocess
import sys

import pytest

ENGINE_MODULES = "console.engine, console.state, console.journal, console.config, console.wiring, console.links, console.deploy"


@pytest.mark.parametrize("modules", [ENGINE_MODULES, "console.cli"])
def test_engine_imports_without_textual_or_rich(modules):
    code = (
        f"import sys; import {modules}; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'rich')); print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_cli_fast_path_keeps_heavy_sdks_out():
    code = (
        "import sys; import console.cli, console.router, console.journal, console.lock, console.events; "
        "heavy = ('textual', 'rich', 'docker', 'prometheus_api_client', 'httpx', 'plotext');"
        "print(','.join(sorted({m.split('.')[0] for m in sys.modules} & set(heavy))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
