"""Sequential canary-vs-production analysis (issue 7).

``core`` is the math (pure Python, also driven with numpy arrays by bench/analysis.py);
``checker`` wraps it as a ``console.core.protocols.Checker`` reading counter snapshots.
"""

from __future__ import annotations

from console.core.analysis.core import Params

__all__ = ["Params", "SequentialChecker"]


def __getattr__(name: str):  # keep `import console.core.analysis` cheap until the checker is needed
    if name == "SequentialChecker":
        from console.core.analysis.checker import SequentialChecker

        return SequentialChecker
    raise AttributeError(name)
