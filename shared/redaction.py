"""What of an error may leave the process: error texts go into logs and dead-letter headers, which must never
carry personal data.

A database error quotes the offending values (PostgreSQL's ``DETAIL: Key (…)=(…)``, an invalid input's text), a
pydantic error its ``input_value``. Only our own ``InvalidEvent`` is written to hold no input data; of every other
error only its type and the first line of its message are kept, and of a database error only the driver's primary
message.
"""

from __future__ import annotations

import re
import traceback
from types import TracebackType

from sqlalchemy.exc import DBAPIError, StatementError

from shared.envelope import InvalidEvent

MAX_REASON = 300
_QUOTED = re.compile(r'"[^"]*"')


def safe_reason(error: BaseException) -> str:
    """A description of ``error`` fit for logs and headers: no input values, at most ``MAX_REASON`` characters."""
    if isinstance(error, InvalidEvent):
        return str(error)[:MAX_REASON]
    if isinstance(error, DBAPIError) and error.orig is not None:
        diag = getattr(error.orig, "diag", None)  # psycopg's diagnostics: schema names, never data
        primary = getattr(diag, "message_primary", None)
        # PostgreSQL quotes offending input in double quotes ('invalid input syntax for type integer: "…"').
        text = _QUOTED.sub('"…"', primary) if isinstance(primary, str) else _first_line(str(error.orig))
        where = [f"{name}={value}" for name in ("sqlstate", "table_name", "constraint_name")
                 if isinstance(value := getattr(diag, name, None), str)]
        return " ".join([f"{type(error.orig).__name__}: {text}", *where])[:MAX_REASON]
    if isinstance(error, StatementError):
        # The statement is ours; its parameters are hidden by the engine (shared.db.make_engine).
        return f"{type(error).__name__}: {_first_line(str(error.orig or error))}"[:MAX_REASON]
    return _first_line(str(error))[:MAX_REASON]


def safe_traceback(
    exc_type: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
) -> str:
    """A traceback whose every exception message (the chained causes too) is cut to :func:`safe_reason`."""
    if error is None:
        return "".join(traceback.format_exception(exc_type, error, tb))
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    chain: list[BaseException] = []
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    for index, item in enumerate(reversed(chain)):
        if index:
            parts.append("\nDuring handling of the above exception, another exception occurred:\n\n")
        parts.append("Traceback (most recent call last):\n")
        parts.extend(traceback.format_tb(item.__traceback__))
        parts.append(f"{type(item).__module__}.{type(item).__qualname__}: {safe_reason(item)}\n")
    return "".join(parts).rstrip("\n")


def _first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0]
