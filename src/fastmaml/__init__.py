"""fastmaml: Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, ICML 2017) for any nn.Module."""

from fastmaml.algorithms import MAML
from fastmaml.core import TaskBatch

__version__ = "0.1.0"
__all__ = ["MAML", "TaskBatch", "__version__"]
