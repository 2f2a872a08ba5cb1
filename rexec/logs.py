"""Logging set-up shared by the broker, the spawner and the worker processes."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    """Log to stderr at ``level`` (a name such as ``info``, any case)."""
    logging.basicConfig(level=level.upper(), format=FORMAT)
    # One line per identity-provider request at INFO would drown the service's own log.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
