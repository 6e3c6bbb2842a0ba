"""One small module per paper experiment; importing this package registers every preset."""

from fastmaml.experiments import fewshot  # noqa: F401
from fastmaml.experiments import rl  # noqa: F401
from fastmaml.experiments import sinusoid  # noqa: F401
from fastmaml.experiments import table  # noqa: F401
