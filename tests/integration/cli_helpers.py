"""Helpers shared by the CLI tests (pytest puts this folder on sys.path: it has no __init__.py)."""

from fastmaml.cli import main


def one_error_line(args, capsys) -> str:
    """Run the CLI with ``args``; it must fail with exit code 2 and one line on stderr that starts
    with ``fastmaml: error:`` and holds no traceback. Returns that line."""
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("fastmaml: error: ") and "Traceback" not in err, err
    return err
