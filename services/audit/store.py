"""The hash chain: append, verify and read trails; synchronous, called from async code through a worker thread.

Each entry's ``hash`` is the SHA-256 of a canonical JSON serialisation of all its other fields, ``prev_hash``
included, so changing, removing, inserting or reordering an entry breaks the chain from that point on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii as _json
from typing import Any
from uuid import UUID

from sqlalchemy import ColumnElement, Connection, Engine, String, cast, func, insert, select, text, type_coerce

from services.audit.models import ENTRIES, GENESIS_HASH, TrailEntry, VerifyReport

# Every column the hash covers, in the order verify() selects them; ``hash`` itself follows last.
HASHED_COLUMNS = (
    "seq", "event_id", "event_type", "source", "subject", "event_time", "recorded_at", "topic", "partition",
    "offset", "data_sha256", "status", "destination_id", "reason", "prev_hash",
)
_FIELD_COUNT = len(HASHED_COLUMNS)
# Bound parameters per "event_id IN (...)" query: far below every database's limit.
_LOOKUP_CHUNK = 500
# The canonical time format, as PostgreSQL's to_char writes it (SQLite's stored text is turned into the same).
_PG_TIME_FORMAT = 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'


@dataclass(frozen=True, slots=True)
class NewEntry:
    """What the chain records of one event, before it has a place in the chain."""

    event_id: str
    event_type: str
    source: str
    subject: str | None
    event_time: datetime
    topic: str
    partition: int
    offset: int
    data_sha256: str
    status: str | None = None
    destination_id: UUID | None = None
    reason: str | None = None


def canonical_time(moment: datetime) -> str:
    """A time as the hash covers it: ISO-8601 in UTC with microseconds, e.g. ``2026-01-31T12:00:00.000000+00:00``."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def canonical_fields(entry: Mapping[str, Any]) -> tuple[Any, ...]:
    """An entry's hashed fields (a row as stored or as the API shows it) in ``HASHED_COLUMNS`` order and canonical
    form: times as canonical_time() writes them, ``destination_id`` as the hyphenated UUID string."""
    fields = {name: entry[name] for name in HASHED_COLUMNS}
    fields["event_time"] = canonical_time(fields["event_time"])
    fields["recorded_at"] = canonical_time(fields["recorded_at"])
    if fields["destination_id"] is not None:
        fields["destination_id"] = str(fields["destination_id"])
    return tuple(fields[name] for name in HASHED_COLUMNS)


def entry_hash(fields: Sequence[Any]) -> str:
    """SHA-256 (hex) of an entry's canonical JSON; ``fields`` in ``HASHED_COLUMNS`` order, in canonical form.

    Canonical form: times as canonical_time() writes them, ``destination_id`` as a UUID string (32 bare hex
    digits, as SQLite stores it, are taken as that UUID). Anything after the hashed fields is ignored, so a row
    of verify() can be passed as it is. The text is exactly ``json.dumps(fields, sort_keys=True,
    separators=(",", ":"))``, written out by hand: the generic encoder would cost more than all else verify() does.
    """
    (seq, event_id, event_type, source, subject, event_time, recorded_at, topic, partition, offset, data_sha256,
     status, destination_id, reason, prev_hash) = fields[:_FIELD_COUNT]
    if destination_id is not None and len(destination_id) == 32:
        d = destination_id
        destination_id = f"{d[:8]}-{d[8:12]}-{d[12:16]}-{d[16:20]}-{d[20:]}"
    canonical = (
        f'{{"data_sha256":{_json(data_sha256)},'
        f'"destination_id":{"null" if destination_id is None else _json(destination_id)},'
        f'"event_id":{_json(event_id)},"event_time":{_json(event_time)},"event_type":{_json(event_type)},'
        f'"offset":{offset:d},"partition":{partition:d},"prev_hash":{_json(prev_hash)},'
        f'"reason":{"null" if reason is None else _json(reason)},"recorded_at":{_json(recorded_at)},'
        f'"seq":{seq:d},"source":{_json(source)},"status":{"null" if status is None else _json(status)},'
        f'"subject":{"null" if subject is None else _json(subject)},"topic":{_json(topic)}}}'
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _canonical_columns(dialect: str) -> list[ColumnElement[Any]]:
    """The hashed columns as verify() selects them: already in canonical form, so no per-row conversion."""
    columns: list[ColumnElement[Any]] = [ENTRIES.c[name] for name in HASHED_COLUMNS]
    for name in ("event_time", "recorded_at"):
        column = ENTRIES.c[name]
        time: ColumnElement[Any]
        if dialect == "postgresql":
            time = func.to_char(func.timezone("UTC", column), _PG_TIME_FORMAT)
        else:
            # SQLAlchemy stores "YYYY-MM-DD HH:MM:SS.ffffff" (UTC) on SQLite.
            time = type_coerce(func.replace(type_coerce(column, String), " ", "T"), String).concat("+00:00")
        columns[HASHED_COLUMNS.index(name)] = type_coerce(time, String).label(name)
    destination = ENTRIES.c.destination_id
    # PostgreSQL writes a uuid as the hyphenated text; SQLite's stored 32 hex digits are taken raw, as text.
    text_destination = cast(destination, String) if dialect == "postgresql" else type_coerce(destination, String)
    columns[HASHED_COLUMNS.index("destination_id")] = text_destination.label("destination_id")
    return columns


class AuditStore:
    """The ``audit_entries`` chain in one database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def append_many(self, entries: Sequence[NewEntry]) -> list[dict[str, Any]]:
        """Append the entries not yet in the chain, in one transaction; returns the rows appended.

        Reading the head, hashing and inserting happen under a write lock, so concurrent appenders (several
        replicas) queue up instead of forking the chain; the primary key on ``seq`` backs that up.
        """
        if not entries:
            return []
        with self.engine.connect() as connection:
            self._lock(connection)
            fresh = self._unseen(connection, entries)
            if not fresh:
                connection.rollback()
                return []
            head = connection.execute(
                select(ENTRIES.c.seq, ENTRIES.c.hash).order_by(ENTRIES.c.seq.desc()).limit(1)
            ).first()
            seq, prev_hash = (int(head.seq), str(head.hash)) if head is not None else (0, GENESIS_HASH)
            recorded_at = datetime.now(UTC)
            rows: list[dict[str, Any]] = []
            for entry in fresh:
                seq += 1
                row: dict[str, Any] = {
                    "seq": seq, "event_id": entry.event_id, "event_type": entry.event_type,
                    "source": entry.source, "subject": entry.subject, "event_time": entry.event_time,
                    "recorded_at": recorded_at, "topic": entry.topic, "partition": entry.partition,
                    "offset": entry.offset, "data_sha256": entry.data_sha256, "status": entry.status,
                    "destination_id": entry.destination_id, "reason": entry.reason, "prev_hash": prev_hash,
                }
                row["hash"] = prev_hash = entry_hash(canonical_fields(row))
                rows.append(row)
            connection.execute(insert(ENTRIES), rows)
            connection.commit()
        return rows

    def append(self, entry: NewEntry) -> bool:
        """Append one entry; False if its event is already in the chain."""
        return bool(self.append_many([entry]))

    @staticmethod
    def _lock(connection: Connection) -> None:
        dialect = connection.dialect.name
        if dialect == "sqlite":
            # pysqlite would begin only at the INSERT; the head must be read inside the write transaction.
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        elif dialect == "postgresql":
            # EXCLUSIVE blocks other writers but not readers: trails and verify keep working meanwhile.
            connection.execute(text("LOCK TABLE audit_entries IN EXCLUSIVE MODE"))

    @staticmethod
    def _unseen(connection: Connection, entries: Sequence[NewEntry]) -> list[NewEntry]:
        """The entries whose event is neither in the chain nor earlier in the same batch."""
        first: dict[str, NewEntry] = {}
        for entry in entries:
            first.setdefault(entry.event_id, entry)
        ids = list(first)
        seen: set[str] = set()
        for start in range(0, len(ids), _LOOKUP_CHUNK):
            chunk = ids[start:start + _LOOKUP_CHUNK]
            seen.update(connection.scalars(select(ENTRIES.c.event_id).where(ENTRIES.c.event_id.in_(chunk))))
        return [entry for event_id, entry in first.items() if event_id not in seen]

    def trail(self, subject: str) -> list[TrailEntry]:
        """Every entry whose subject (case id) is ``subject``, in chain order."""
        query = select(ENTRIES).where(ENTRIES.c.subject == subject).order_by(ENTRIES.c.seq)
        with self.engine.connect() as connection:
            return [TrailEntry.model_validate(dict(row._mapping)) for row in connection.execute(query)]

    def verify(self, batch_size: int = 5_000) -> VerifyReport:
        """Recompute the whole chain in seq order, streaming rows; names the first broken entry, if any.

        Rows arrive ``batch_size`` at a time (a server-side cursor on PostgreSQL), so memory stays flat however
        long the chain is.
        """
        dialect = self.engine.dialect.name
        if dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"verify() supports SQLite and PostgreSQL, not {dialect}")
        query = (
            select(*_canonical_columns(dialect), ENTRIES.c.hash)
            .order_by(ENTRIES.c.seq)
            .execution_options(yield_per=batch_size)
        )
        with self.engine.connect() as connection:
            return _check(connection.execute(query))


def _check(rows: Iterable[Sequence[Any]]) -> VerifyReport:
    expected_seq, prev_hash, length, head_hash = 1, GENESIS_HASH, 0, GENESIS_HASH
    bad_seq: int | None = None
    problem: str | None = None
    for row in rows:
        length += 1
        head_hash = row[-1]
        if bad_seq is not None:
            # Already broken: only count on, so the report still gives the length and the stored head.
            continue
        seq = row[0]
        stored_hash = row[-1]
        if seq != expected_seq:
            bad_seq = expected_seq
            problem = (f"entry {expected_seq} is missing (the next entry is {seq}): entries were removed")
            continue
        try:
            unchanged = entry_hash(row) == stored_hash
        except (TypeError, ValueError):
            # SQLite keeps whatever type is written: a forged value of the wrong type is a change too.
            unchanged = False
        if not unchanged:
            bad_seq = seq
            problem = f"entry {seq} was changed: its hash does not match its content"
        elif row[-2] != prev_hash:
            bad_seq = seq
            problem = (f"entry {seq} does not link to entry {seq - 1}: "
                       "an entry was inserted, replaced or reordered")
        prev_hash = stored_hash
        expected_seq = seq + 1
    return VerifyReport(intact=bad_seq is None, length=length, head_hash=head_hash, first_bad_seq=bad_seq,
                        problem=problem)
