"""Structured JSON logging for every service. Log calls pass ids in ``extra``, never personal data."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

from pythonjsonlogger.json import JsonFormatter

from shared.redaction import safe_reason, safe_traceback
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


class _ErrorsWithoutData(logging.Filter):
    """FastStream logs a handler's failure as ``f"{type}: {error}"``, and an error's text may quote the data (a
    database's "Failing row contains (…)"): the message keeps the type and the error's safe reason only."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None:
            record.msg, record.args = f"{type(error).__name__}: {safe_reason(error)}", ()
        return True


def broker_logger() -> logging.Logger:
    """The logger the services' FastStream brokers log through.

    Not FastStream's own ``faststream`` logger: that one has a handler of its own and does not propagate, so its
    lines would bypass the JSON format and the redaction above.
    """
    logger = logging.getLogger("ozg.faststream")
    if not any(isinstance(f, _ErrorsWithoutData) for f in logger.filters):
        logger.addFilter(_ErrorsWithoutData())
    return logger
