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


class TrainingStopped(FastMAMLError):
    """Training stopped on SIGINT, SIGTERM or SIGUSR1 after saving a checkpoint at the iteration it had reached
    (``fastmaml.engine.stopping``). CLI exit code 128 + the signal's number, as a shell reports it."""

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signal_number


def iterations_span(first: int, last: int) -> str:
    """'at iteration 7' or 'between iterations 5 and 7': where a logged quantity went wrong."""
    return f"at iteration {last}" if first >= last else f"between iterations {first} and {last}"


def kept_checkpoint(run_dir: object, last_good: int, first_due: int) -> str:
    """The part of a :class:`NonFiniteLossError` message saying which checkpoint survives: the one at
    ``last_good`` or, when the run failed before its first checkpoint (``last_good == 0``), none."""
    if last_good > 0:
        return f"the last good checkpoint (iteration {last_good}) is kept in {run_dir}"
    return f"no checkpoint had been written yet (the first was due at iteration {first_due})"
