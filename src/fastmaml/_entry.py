"""The ``fastmaml`` console script: :func:`fastmaml.cli.run`, after an import of torch (about a
second) that a Ctrl-C may interrupt; that interrupt exits 130 without a traceback, as the command does."""

from __future__ import annotations

import sys


def run() -> None:
    try:
        from fastmaml.cli import run as cli_run
    except KeyboardInterrupt:
        print("fastmaml: interrupted", file=sys.stderr)
        sys.exit(130)
    cli_run()
