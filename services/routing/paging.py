"""Opaque cursors for keyset paging: the position (``updated_at``, ``case_id``) of the last case of a page.

Clients treat a cursor as an opaque string; it is URL-safe base64 so it can be changed without breaking them.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from uuid import UUID

from shared.events import utc_representable
from shared.problems import ProblemException


def encode(updated_at: datetime, case_id: UUID) -> str:
    """The cursor that continues after the case (``updated_at``, ``case_id``)."""
    if updated_at.utcoffset() is None:
        updated_at = updated_at.replace(tzinfo=UTC)  # stored in UTC; SQLite hands it back without the offset
    raw = f"{updated_at.isoformat()}|{case_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str) -> tuple[datetime, UUID]:
    """The position in ``cursor``; anything that is not a cursor routing made is a 422 problem."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        when, case_id = raw.split("|")
        updated_at = datetime.fromisoformat(when)
        if updated_at.utcoffset() is None or not utc_representable(updated_at):
            raise ValueError("a cursor's time has an offset and a UTC equivalent")
        return updated_at, UUID(case_id)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ProblemException(
            422, "The cursor is not valid; use the cursor or next link of a previous page.", kind="validation",
            title="Validation failed",
            errors=[{"parameter": "cursor", "in": "query", "detail": "not a cursor", "code": "invalid_cursor"}],
        ) from None
