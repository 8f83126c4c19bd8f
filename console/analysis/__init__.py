"""Sequential canary-vs-production analysis (issue 7).

``core`` is the math (pure Python, also driven with numpy arrays by bench/analysis.py);
``checker`` wraps it as a ``console.protocols.Checker`` reading counter snapshots.
"""

from __future__ import annotations

from .core import Params

__all__ = ["Params", "SequentialChecker"]


def __getattr__(name: str):  # keep `import console.analysis` cheap until the checker is needed
    if name == "SequentialChecker":
        from .checker import SequentialChecker

        return SequentialChecker
    raise AttributeError(name)
