"""``python -m fastmaml`` is the ``fastmaml`` command."""

from fastmaml.cli import run

run()
