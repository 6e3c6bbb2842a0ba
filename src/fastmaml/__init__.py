"""fastmaml: Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, ICML 2017) for any nn.Module."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastmaml.algorithms import MAML
    from fastmaml.core import TaskBatch

__version__ = "0.1.0"
__all__ = ["MAML", "TaskBatch", "__version__"]


def __dir__() -> list[str]:
    return sorted([*globals(), "MAML", "TaskBatch"])


def __getattr__(name: str) -> Any:
    """``MAML`` and ``TaskBatch`` on first use: importing the package alone does not import torch,
    so the ``fastmaml`` command can answer a Ctrl-C during that import (seconds) without a traceback."""
    if name == "MAML":
        from fastmaml.algorithms import MAML

        return MAML
    if name == "TaskBatch":
        from fastmaml.core import TaskBatch

        return TaskBatch
    raise AttributeError(f"module 'fastmaml' has no attribute {name!r}")
