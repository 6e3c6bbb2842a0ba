"""``python -m fastmaml`` is the ``fastmaml`` command."""

from fastmaml._entry import run

run()
