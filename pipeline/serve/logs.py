"""One log format for the supervisor and its workers: one line per event on stderr."""

from __future__ import annotations

import logging
import sys


def setup_logging() -> logging.Logger:
    """stderr, which the local target redirects into the service's log file; idempotent."""
    logger = logging.getLogger("pipeline.serve")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s.%(msecs)03d %(process)d %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S")
        )
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger
