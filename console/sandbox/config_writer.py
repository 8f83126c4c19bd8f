"""The sandbox's canary.toml: an ordinary config describing the sandbox (and nothing of the
operator's own setup), written into the sandbox directory and loaded with ``load_config``.

Its rate window and ``min_requests`` are sized for demo traffic (see the package docstring,
console/sandbox/__init__.py).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from console.sandbox.plan import STAGES, UPSTREAM_NAME, Plan
from console.sandbox.stack import MODES, WARMUP_PER_MODE, Running


def demo_window(observation: float) -> float:
    """The rate window: twice the observation, so at the end of a stage the window still holds
    the whole stage and what came just before it (never the warm-up: windows start after it)."""
    return max(10.0, 2.0 * observation)


def demo_min_requests(rps: float, window: float) -> int:
    """Canary requests a gate needs in the window: a quarter of what the rarest mode (20% of
    the mix) is expected to get in the window at the second stage, within 3..20."""
    expected = rps * STAGES[1] / 100 * window * 0.2
    return int(min(20, max(3, math.floor(expected / 4))))


def warmup_bodies() -> list[str]:
    """One body per mode, sent in turn: the warm-up reaches every mode's code path."""
    return [json.dumps({"mode": mode, "notes": ["bergamot", "cedar"]}) for mode in MODES]


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def render_config(r: Running, plan: Plan, analysis: bool) -> str:
    """The sandbox's canary.toml: an ordinary config, loaded with load_config."""
    window = demo_window(plan.observation)
    prod_addr, canary_addr = r.production_url.removeprefix("http://"), r.canary_url.removeprefix("http://")
    sections: dict[str, dict[str, Any]] = {
        "rollout": {"stages": list(STAGES), "observation_period": plan.observation, "check_interval": plan.check_interval,
                    "health_timeout": 2.0, "warmup_requests": WARMUP_PER_MODE * len(MODES), "warmup_method": "POST",
                    "warmup_path": "/api/generate", "warmup_bodies": warmup_bodies()},
        "nginx": {"upstream_file": str(r.upstream_file), "upstream_name": UPSTREAM_NAME, "production": prod_addr,
                  "canary": canary_addr, "test_command": r.test_command, "reload_command": r.reload_command,
                  "verify_url": r.verify_url, "verify_timeout": 10.0, "access_log": str(r.access_log)},
        "health": {"production_url": f"{r.production_url}/health", "canary_url": f"{r.canary_url}/health", "timeout": 2.0},
        "journal": {"path": ".canary/journal.jsonl"},
        "metrics": {"source": r.source, "rate_window": f"{window:g}s",
                    "min_requests": demo_min_requests(plan.rps, window), "query_timeout": 3.0},
        "prometheus": {"url": r.prometheus_url or "http://127.0.0.1:9090"},
        "scrape": {"production": f"{r.production_url}/metrics", "canary": f"{r.canary_url}/metrics", "timeout": 2.0},
        "analysis": {"enabled": analysis},
    }
    lines = [f"# canary-console demo sandbox: generated for {plan.rps:g} requests/s; removed on exit unless --keep."]
    for name, body in sections.items():
        lines.append(f"\n[{name}]")
        lines += [f"{k} = {_toml(v)}" for k, v in body.items()]
    return "\n".join(lines) + "\n"


def _analysis_available() -> bool:
    try:
        from console.core.analysis import SequentialChecker  # noqa: F401
    except ImportError:
        return False
    return True


def _config_environ() -> dict[str, str]:
    """Our environment without what load_config maps onto keys (PROMETHEUS_URL, CANARY_*):
    the sandbox's config must describe the sandbox, not the operator's real setup."""
    from console.core.config import ENV_MAP

    return {k: v for k, v in os.environ.items() if k not in ENV_MAP and not k.startswith("CANARY_")}


def write_config(r: Running, plan: Plan) -> Any:
    from console.core.config import load_config

    path = r.sandbox.root / "canary.toml"
    path.write_text(render_config(r, plan, analysis=_analysis_available()))
    return load_config(path, None, {}, environ=_config_environ(), check_upstream_dir=True)
