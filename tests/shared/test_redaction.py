"""Error texts leave the process (logs, dead-letter headers) without the data they quote, on both databases."""

from __future__ import annotations

import io
import json
import logging

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert
from sqlalchemy.exc import DBAPIError, IntegrityError

from shared.db import make_engine
from shared.envelope import InvalidEvent
from shared.logs import configure_logging
from shared.redaction import safe_reason

NAME = "Erika Mustermann"


def _duplicate_key_error(database_url: str) -> IntegrityError:
    engine = make_engine(database_url)
    people = Table("people", MetaData(), Column("name", String(100), primary_key=True))
    people.create(engine)
    with engine.begin() as connection:
        connection.execute(insert(people).values(name=NAME))
    with pytest.raises(IntegrityError) as failure, engine.begin() as connection:
        connection.execute(insert(people).values(name=NAME))
    engine.dispose()
    return failure.value


def test_database_errors_keep_neither_parameters_nor_quoted_values(database_url: str) -> None:
    error = _duplicate_key_error(database_url)
    # The engine hides the bound parameters; PostgreSQL still quotes the key in its DETAIL line.
    assert "hidden due to hide_parameters" in str(error)
    reason = safe_reason(error)
    assert "Mustermann" not in reason
    assert "unique" in reason.lower()
    if database_url.startswith("postgresql"):
        assert "constraint_name=people_pkey" in reason


def test_a_value_quoted_in_the_primary_message_is_not_kept(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    numbers = Table("numbers", MetaData(), Column("n", Integer))
    numbers.create(engine)
    with pytest.raises(DBAPIError) as failure, engine.begin() as connection:
        connection.exec_driver_sql("INSERT INTO numbers (n) VALUES ('Mustermann')")
    engine.dispose()
    assert "Mustermann" in str(failure.value)  # PostgreSQL quotes the input even in its primary message
    reason = safe_reason(failure.value)
    assert "Mustermann" not in reason
    assert "invalid input syntax for type integer" in reason
    assert "sqlstate=22P02" in reason


def test_logged_tracebacks_keep_frames_but_not_data(database_url: str) -> None:
    error = _duplicate_key_error(database_url)
    stream = io.StringIO()
    configure_logging("INFO", json=True, service="test")
    logging.getLogger().handlers[0].setStream(stream)  # type: ignore[attr-defined]
    try:
        try:
            raise error
        except IntegrityError:
            logging.getLogger("test").exception("insert failed")
    finally:
        logging.getLogger().handlers.clear()
    record = json.loads(stream.getvalue())
    assert "Mustermann" not in stream.getvalue()
    assert "IntegrityError" in record["exc_info"]
    assert "test_logged_tracebacks_keep_frames_but_not_data" in record["exc_info"]


def test_our_own_invalid_event_message_is_kept_whole() -> None:
    error = InvalidEvent("missing CloudEvents headers: ce_id")
    assert safe_reason(error) == "missing CloudEvents headers: ce_id"
    assert safe_reason(KeyError("case")) == "'case'"
    assert safe_reason(ValueError("first line\nDETAIL: Erika")) == "first line"
