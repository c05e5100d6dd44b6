"""unyoke's own log: the ``unyoke`` logger (start-up, shutdown) and ``unyoke.error``
(application errors, written by the engine with their tracebacks).

The access log is not here: the engine writes it to stderr itself, batched, so that it
costs the hot path no Python call.
"""

from __future__ import annotations

import logging
import sys

LOGGER_NAME = "unyoke"

#: ``[2025-11-22 20:52:00 +0000] [1234] [INFO] unyoke listening on ...``, as gunicorn does.
LOG_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S %z"


def configure(level: str, *, add_handler: bool = True) -> logging.Logger:
    """Set the level of the ``unyoke`` logger; give it a stderr handler if logging is unset.

    A handler is added only when ``add_handler`` is true and neither the root logger nor
    ``unyoke`` has one, so an application that configures logging keeps its own set-up.
    """
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level.upper())
    if add_handler and not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT, DATE_FORMAT))
        logger.addHandler(handler)
        logger.propagate = False
    return logger


def enable() -> None:
    """Undo ``disabled`` on unyoke's loggers (set by a ``dictConfig`` that did not name them)."""
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and (
            name == LOGGER_NAME or name.startswith(LOGGER_NAME + ".")
        ):
            logger.disabled = False
