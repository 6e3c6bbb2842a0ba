"""Optional dependencies of the RL code (gymnasium, mujoco), imported only when they are needed."""

from __future__ import annotations

import importlib
from types import ModuleType

from fastmaml.errors import FastMAMLError


class MissingExtraError(FastMAMLError, ModuleNotFoundError):
    """An optional package of the ``rl`` extra is not installed."""


def require(module: str) -> ModuleType:
    """Import ``module`` or raise one message that says how to install it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name != module:  # a broken install of the package itself: show the real error
            raise
        raise MissingExtraError(
            f"{module} is needed for the RL environments; install with pip install 'fastmaml[rl]'"
        ) from None
