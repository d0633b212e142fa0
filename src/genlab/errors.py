"""User-facing errors.

A `UserError` means the user can fix it (bad flag, missing or corrupt file, wrong checkpoint). The CLI
prints its message as one line and exits with status 2; nothing else is caught that way, so real bugs
still show a traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix; the message says what is wrong and what to do."""

    exit_code = 2


class NonFiniteLossError(UserError):
    """Training produced NaN or inf; nothing non-finite was saved."""


class StopRequested(KeyboardInterrupt):
    """Training stopped on a signal (Ctrl-C: SIGINT, a scheduler: SIGTERM); the exit status of
    the command is 128 + the signal's number, as a shell reports it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
