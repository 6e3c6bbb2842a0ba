"""``python -m fastmaml`` is the ``fastmaml`` command."""

import sys

from fastmaml.cli import main

sys.exit(main())
