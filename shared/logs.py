"""Structured JSON logging for every service. Log calls pass ids in ``extra``, never personal data."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

from pythonjsonlogger.json import JsonFormatter

from shared.redaction import safe_traceback
from shared.tracing import TraceLogFilter

if TYPE_CHECKING:
    from types import TracebackType

    ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]


class _SafeJsonFormatter(JsonFormatter):
    def formatException(self, ei: ExcInfo) -> str:  # noqa: N802 - logging's name
        return safe_traceback(*ei)


class _SafeTextFormatter(logging.Formatter):
    def formatException(self, ei: ExcInfo) -> str:  # noqa: N802 - logging's name
        return safe_traceback(*ei)


def configure_logging(level: str = "INFO", *, json: bool = True, service: str = "ozg") -> None:
    """Send all logs to stderr, one JSON object per line (or plain text for a terminal).

    Tracebacks keep their frames but not the messages of errors that may quote data (shared.redaction).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(TraceLogFilter())
    if json:
        handler.setFormatter(
            _SafeJsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"levelname": "level", "asctime": "time", "name": "logger"},
                static_fields={"service": service},
            )
        )
    else:
        handler.setFormatter(_SafeTextFormatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka reports every reconnect attempt at ERROR; one line per state change is enough.
    logging.getLogger("aiokafka").setLevel(max(root.level, logging.WARNING))
