"""MAML, first-order MAML and Meta-SGD on top of the functional core."""

from fastmaml.algorithms.maml import MAML, STRATEGIES

__all__ = ["MAML", "STRATEGIES"]
