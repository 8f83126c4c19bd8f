"""The engine and the CLI's fast path never load textual or rich (nor the heavy SDKs)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

ENGINE_MODULES = ("console.core.engine, console.core.state, console.core.journal, console.core.config, console.wiring, "
                  "console.remote.links, console.commands.deploy")

HEAVY = ("textual", "rich", "httpx", "docker", "prometheus_api_client", "prometheus_client", "plotext")


@pytest.mark.parametrize("modules", [ENGINE_MODULES, "console.commands.cli"])
def test_engine_imports_without_textual_or_rich(modules):
    code = (
        f"import sys; import {modules}; "
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'textual', 'rich'}); print(','.join(bad))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, f"importing {modules} failed:\n{proc.stderr}"
    assert proc.stdout.strip() == "", f"importing {modules} loaded {proc.stdout.strip()}"


def core_modules() -> list[str]:
    """Every module of console/core, found on disk (a new module is covered without editing this test)."""
    names = []
    for path in sorted((ROOT / "console" / "core").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def fast_path_modules() -> list[str]:
    """All of core, plus what `canary-console rollback` / `weights` import: the parser, the router, journal, lock."""
    rollback = ["console.commands.cli", "console.adapters.nginx.router", "console.core.journal", "console.core.lock"]
    if (ROOT / "console" / "commands" / "traffic.py").is_file():
        rollback.insert(1, "console.commands.traffic")
    return core_modules() + [m for m in rollback if m not in core_modules()]


# Runs in a fresh interpreter: imports each module in turn; a meta-path hook notes, for each heavy
# package, the chain of our files that was executing when it was first imported.
_PROBE = textwrap.dedent("""
    import importlib, json, sys, traceback
    root, heavy, modules = sys.argv[1], set(sys.argv[2].split(",")), sys.argv[3].split(",")
    first = {}
    class Spy:
        def find_spec(self, name, path=None, target=None):
            top = name.partition(".")[0]
            if top in heavy and top not in first:
                chain = [f"{f.filename[len(root) + 1:]}:{f.lineno}" for f in traceback.extract_stack()
                         if f.filename.startswith(root + "/")]
                first[top] = chain
            return None
    sys.meta_path.insert(0, Spy())
    culprits = {}
    for m in modules:
        before = set(first)
        importlib.import_module(m)
        for top in sorted(set(first) - before):
            culprits[top] = {"module": m, "chain": first[top]}
    loaded = sorted({k.partition(".")[0] for k in sys.modules} & heavy)
    print(json.dumps({"loaded": loaded, "culprits": culprits}))
""")


def test_cli_fast_path_keeps_heavy_sdks_out():
    modules = fast_path_modules()
    assert "console.core.engine" in modules and "console.core.analysis.checker" in modules  # the walk found core
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(ROOT), ",".join(HEAVY), ",".join(modules)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, f"importing the fast-path modules failed:\n{proc.stderr}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if out["loaded"]:
        lines = [f"importing core and the CLI's rollback path loaded {', '.join(out['loaded'])}:"]
        for top, c in sorted(out["culprits"].items()):
            lines.append(f"  {top}: first by `import {c['module']}`, via {' -> '.join(c['chain']) or '?'}")
        pytest.fail("\n".join(lines), pytrace=False)
