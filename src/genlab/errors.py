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
    """Training produced NaN or inf; the last good checkpoint is kept."""
