"""One reporting path: library code logs to the `genlab` logger and never prints.

The command line attaches a handler that writes each message as one line on stderr (`cli.main`);
a Python user sees nothing below WARNING until they configure logging, e.g.

    import logging
    logging.basicConfig(level=logging.INFO)       # genlab's messages on stderr
    logging.getLogger("genlab").setLevel(logging.WARNING)   # or only its warnings

Progress bars (tqdm) are separate: they appear only when stderr is a terminal.
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("genlab")


def get_logger(name: str) -> logging.Logger:
    """The logger of a genlab module (`get_logger(__name__)`), a child of `genlab`."""
    return logging.getLogger(name if name.startswith("genlab") else f"genlab.{name}")


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        return f"warning: {message}" if record.levelno == logging.WARNING and not \
            message.startswith(("warning", "note")) else message


def to_stderr(level: int = logging.INFO) -> logging.Handler:
    """Send genlab's messages at `level` and above to stderr, one line each (the CLI's setting).
    Returns the handler, so a caller can remove it again."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return handler
