"""Errors a user can cause. The CLI prints their message on one line, without a traceback."""


class FastMAMLError(Exception):
    """A problem the user can fix; the message says what is wrong and what to do. CLI exit code 2."""

    exit_code = 2


class ConfigError(FastMAMLError, ValueError):
    """Unknown preset or key, or a value out of range."""


class CheckpointError(FastMAMLError):
    """A run folder or checkpoint that cannot be used as asked."""


class DataError(FastMAMLError, ValueError):
    """A data set or input file that cannot be read as expected."""


class NonFiniteLossError(FastMAMLError):
    """Training produced NaN or inf; the last good checkpoint is kept. CLI exit code 1."""

    exit_code = 1
