"""Logging set-up shared by every entry point: secrets and tokens never reach a log line."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

# httpx and uvicorn log full request URLs at INFO (callback URLs carry their token; signed
# upload URLs are credentials), and aiosqlite logs every statement with its parameters at
# DEBUG (webhook secrets, subscription secrets). They are held at WARNING whatever the level.
QUIET = ("httpx", "httpcore", "uvicorn.access", "aiosqlite")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: a traceback goes in `exception`, escaped."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)  # ASCII: a lone surrogate cannot break the stream


def configure_logging(level: str, log_format: str = "text") -> None:
    """Every record through the root logger's one handler, as text or JSON lines."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    quiet_url_loggers()


def quiet_url_loggers() -> None:
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
