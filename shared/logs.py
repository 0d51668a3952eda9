"""Structured JSON logging for every service. Log calls pass ids in ``extra``, never personal data."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

from shared.tracing import TraceLogFilter


def configure_logging(level: str = "INFO", *, json: bool = True, service: str = "ozg") -> None:
    """Send all logs to stderr, one JSON object per line (or plain text for a terminal)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(TraceLogFilter())
    if json:
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"levelname": "level", "asctime": "time", "name": "logger"},
                static_fields={"service": service},
            )
        )
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka reports every reconnect attempt at ERROR; one line per state change is enough.
    logging.getLogger("aiokafka").setLevel(max(root.level, logging.WARNING))
