"""Logging set-up shared by every entry point: secrets and tokens never reach a log line."""

from __future__ import annotations

import logging

# httpx and uvicorn log full request URLs at INFO (callback URLs carry their token; signed
# upload URLs are credentials), and aiosqlite logs every statement with its parameters at
# DEBUG (webhook secrets, subscription secrets). They are held at WARNING whatever the level.
QUIET = ("httpx", "httpcore", "uvicorn.access", "aiosqlite")


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_url_loggers()


def quiet_url_loggers() -> None:
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
