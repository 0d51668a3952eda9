"""The hash chain: append, checkpoint, verify and read trails; synchronous, called from async code through a
worker thread.

Each entry's ``hash`` is the SHA-256 of a canonical JSON serialisation of all its other fields, ``prev_hash``
included, so changing, removing, inserting or reordering an entry breaks the chain from that point on. Signed
checkpoints (sequence, head hash, time) catch what the chain alone cannot: a cut-off tail, or a chain rewritten
and re-hashed as a whole. Checkpoints read from the same database go when the database goes: a verifier who kept
checkpoints of its own passes them as anchors, which catch a tail cut off together with its checkpoints.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from json.encoder import encode_basestring_ascii as _json
from typing import Any, NamedTuple
from uuid import UUID

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    String,
    bindparam,
    cast,
    create_engine,
    func,
    insert,
    select,
    type_coerce,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.pool import NullPool

from services.audit.models import CHECKPOINTS, ENTRIES, GENESIS_HASH, Checkpoint, ProblemKind, TrailEntry, VerifyReport
from services.audit.signing import (
    CheckpointSigner,
    SigningKeyError,
    canonical_time,
    checkpoint_message,
    signature_valid,
    trusted_keys,
)

__all__ = [
    "HASHED_COLUMNS", "HEAD_HASH", "Anchor", "AuditStore", "NewEntry", "canonical_fields", "canonical_time",
    "entry_hash",
]

log = logging.getLogger(__name__)

# Every column the hash covers, in the order verify() selects them; ``hash`` itself follows last.
HASHED_COLUMNS = (
    "seq", "event_id", "event_type", "source", "subject", "event_time", "recorded_at", "topic", "partition",
    "offset", "data_sha256", "status", "destination_id", "reason", "prev_hash",
)
_FIELD_COUNT = len(HASHED_COLUMNS)
# A head hash as checkpoints and anchors give it: SHA-256, 64 lower-case hex digits.
HEAD_HASH = "[0-9a-f]{64}"
_HEAD_HASH = re.compile(HEAD_HASH)
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


class Anchor(NamedTuple):
    """A checkpoint the verifier kept outside audit's database (seq and head hash of a checkpoint it fetched and
    whose signature it checked): the chain must reach entry ``seq``, and that entry's hash must be ``head_hash``."""

    seq: int
    head_hash: str


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
    """The hashed columns as verify() selects them: canonical but for SQLite's times, which _walk() completes
    (``replace(" ", "T") + "+00:00"``: cheaper in Python than in SQLite)."""
    columns: list[ColumnElement[Any]] = [ENTRIES.c[name] for name in HASHED_COLUMNS]
    for name in ("event_time", "recorded_at"):
        column = ENTRIES.c[name]
        time: ColumnElement[Any]
        if dialect == "postgresql":
            time = func.to_char(func.timezone("UTC", column), _PG_TIME_FORMAT)
        else:
            # SQLAlchemy stores "YYYY-MM-DD HH:MM:SS.ffffff" (UTC) on SQLite.
            time = type_coerce(column, String)
        columns[HASHED_COLUMNS.index(name)] = type_coerce(time, String).label(name)
    destination = ENTRIES.c.destination_id
    # PostgreSQL writes a uuid as the hyphenated text; SQLite's stored 32 hex digits are taken raw, as text.
    text_destination = cast(destination, String) if dialect == "postgresql" else type_coerce(destination, String)
    columns[HASHED_COLUMNS.index("destination_id")] = text_destination.label("destination_id")
    return columns


def _utcnow() -> datetime:
    return datetime.now(UTC)


# The columns of an INSERT into audit_entries: the hashed ones, then the hash.
_INSERTED = (*HASHED_COLUMNS, "hash")


class _Statements:
    """The SQL of append_many(), compiled once for the engine's dialect and run with exec_driver_sql().

    The statements Core compiles, with the values through the columns' own bind processors, so the database
    stores exactly what Core would store; what is left out is Core's work per execution and per row (statement
    cache, parameter processing, rendering an expanding IN), which cost more than hashing the entries. Driver
    errors are still wrapped as SQLAlchemy's (append_patiently() waits out OperationalError).
    """

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        insert_sql = insert(ENTRIES).compile(dialect=dialect)
        self.positional = insert_sql.positional
        self.insert = str(insert_sql)
        # Parameter order of a positional driver (qmark); a named one (pyformat) takes the column names as keys.
        order = insert_sql.positiontup if insert_sql.positional else None
        self.order = tuple(order) if order is not None else _INSERTED
        if set(self.order) != set(_INSERTED) or set(insert_sql.params) != set(_INSERTED):
            raise ValueError(f"unexpected INSERT parameters on {dialect.name}: {self.order}")
        # The dialect's implementation of each type, as Core executes it (SQLite: times as text, UUIDs as hex).
        processors = {name: ENTRIES.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in _INSERTED}
        # recorded_at is one value per batch: processed once, not per row.
        self.recorded_at = processors.pop("recorded_at")
        self.row_processors = tuple((name, process) for name, process in processors.items() if process is not None)
        self.head = self._literal(select(ENTRIES.c.seq, ENTRIES.c.hash).order_by(ENTRIES.c.seq.desc()).limit(1))
        self._lookups: dict[int, tuple[str, tuple[str, ...] | None]] = {}

    def _literal(self, statement: Any) -> str:
        return str(statement.compile(dialect=self.dialect, compile_kwargs={"literal_binds": True}))

    def lookup(self, count: int) -> tuple[str, tuple[str, ...] | None]:
        """``SELECT event_id … WHERE event_id IN (count parameters)`` and its parameter names (None: positional)."""
        found = self._lookups.get(count)
        if found is None:
            binds = [bindparam(f"id{i}", type_=ENTRIES.c.event_id.type) for i in range(count)]
            compiled = select(ENTRIES.c.event_id).where(ENTRIES.c.event_id.in_(binds)).compile(dialect=self.dialect)
            names = None if compiled.positional else tuple(f"id{i}" for i in range(count))
            found = self._lookups[count] = (str(compiled), names)
        return found

    def rows_params(self, rows: Sequence[Mapping[str, Any]], recorded_at: datetime) -> list[Any]:
        """The driver's parameters of inserting ``rows``: values through the columns' bind processors."""
        recorded = self.recorded_at(recorded_at) if self.recorded_at is not None else recorded_at
        processors = self.row_processors
        order = self.order
        params: list[Any] = []
        for row in rows:
            values = dict(row)
            values["recorded_at"] = recorded
            for name, process in processors:
                values[name] = process(values[name])
            params.append(tuple([values[name] for name in order]) if self.positional else values)
        return params


@dataclass(slots=True)
class _Walk:
    """What walking the chain found."""

    length: int = 0
    head_hash: str = GENESIS_HASH
    last_seq: int = 0
    bad_seq: int | None = None
    kind: ProblemKind | None = None
    problem: str | None = None
    # The stored hash of each checkpointed (or anchored) entry, up to the first broken entry.
    hashes_at: dict[int, str] = field(default_factory=dict)
    # The first row walked: its seq and its prev_hash (joining a part of the chain to the part before it).
    first_seq: int | None = None
    first_prev: str | None = None


def _link(entries: Sequence[NewEntry], seq: int, prev_hash: str, recorded_at: datetime) -> list[dict[str, Any]]:
    """The rows of ``entries`` appended after entry ``seq`` with hash ``prev_hash``, each hashed and linked.

    canonical_fields() of each row, built straight from the entry, with recorded_at (one value per batch)
    formatted once.
    """
    recorded = canonical_time(recorded_at)
    rows: list[dict[str, Any]] = []
    for entry in entries:
        seq += 1
        destination_id = entry.destination_id
        digest = entry_hash((
            seq, entry.event_id, entry.event_type, entry.source, entry.subject, canonical_time(entry.event_time),
            recorded, entry.topic, entry.partition, entry.offset, entry.data_sha256, entry.status,
            None if destination_id is None else str(destination_id), entry.reason, prev_hash,
        ))
        rows.append({
            "seq": seq, "event_id": entry.event_id, "event_type": entry.event_type, "source": entry.source,
            "subject": entry.subject, "event_time": entry.event_time, "recorded_at": recorded_at,
            "topic": entry.topic, "partition": entry.partition, "offset": entry.offset,
            "data_sha256": entry.data_sha256, "status": entry.status, "destination_id": destination_id,
            "reason": entry.reason, "prev_hash": prev_hash, "hash": digest,
        })
        prev_hash = digest
    return rows


class AuditStore:
    """The ``audit_entries`` chain and its ``audit_checkpoints`` in one database.

    With a ``signer``, appends sign a checkpoint in the same transaction once ``checkpoint_every`` entries were
    appended since the last one, and checkpoint_if_due() (run periodically) signs one once
    ``checkpoint_interval_s`` passed and the chain has grown.
    """

    def __init__(
        self,
        engine: Engine,
        signer: CheckpointSigner | None = None,
        *,
        checkpoint_every: int = 1000,
        checkpoint_interval_s: float = 60.0,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.engine = engine
        self.signer = signer
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval = timedelta(seconds=checkpoint_interval_s)
        self.clock = clock
        self._sql = _Statements(engine.dialect)
        # A lower bound of the newest checkpoint's seq (checkpoints are append-only): while the chain is less than
        # checkpoint_every entries past it, no checkpoint can be due by count, and appends skip asking the database.
        self._checkpointed = 0

    def append_many(self, entries: Sequence[NewEntry]) -> list[dict[str, Any]]:
        """Append the entries not yet in the chain, in one transaction; returns the rows appended.

        Reading the head, hashing and inserting happen under a write lock, so concurrent appenders (several
        replicas) queue up instead of forking the chain; the primary key on ``seq`` backs that up. A checkpoint
        that falls due is signed in the same transaction.
        """
        if not entries:
            return []
        with self.engine.connect() as connection:
            self._lock(connection)
            fresh = self._unseen(connection, entries)
            if not fresh:
                connection.rollback()
                return []
            seq, prev_hash = self._head(connection)
            recorded_at = self.clock()
            rows = _link(fresh, seq, prev_hash, recorded_at)
            connection.exec_driver_sql(self._sql.insert, self._sql.rows_params(rows, recorded_at))
            checkpoint = None
            if rows[-1]["seq"] - self._checkpointed >= self.checkpoint_every:
                checkpoint = self._checkpoint_if_due(connection, rows[-1]["seq"], rows[-1]["hash"], recorded_at,
                                                     by_count_only=True)
            connection.commit()
        if checkpoint is not None:
            # Only once committed: a rolled-back checkpoint must not count as made.
            self._checkpointed = max(self._checkpointed, checkpoint.seq)
        return rows

    def append(self, entry: NewEntry) -> bool:
        """Append one entry; False if its event is already in the chain."""
        return bool(self.append_many([entry]))

    def checkpoint_if_due(self) -> Checkpoint | None:
        """Sign a checkpoint of the head if the chain grew since the last one and it is due; returns it, if any."""
        if self.signer is None:
            return None
        with self.engine.connect() as connection:
            self._lock(connection)
            seq, head_hash = self._head(connection)
            checkpoint = self._checkpoint_if_due(connection, seq, head_hash, self.clock(), by_count_only=False)
            connection.commit()
        if checkpoint is not None:
            self._checkpointed = max(self._checkpointed, checkpoint.seq)
        return checkpoint

    def _checkpoint_if_due(
        self, connection: Connection, seq: int, head_hash: str, now: datetime, *, by_count_only: bool
    ) -> Checkpoint | None:
        if self.signer is None or seq == 0:
            return None
        last = connection.execute(
            select(CHECKPOINTS.c.seq, CHECKPOINTS.c.created_at).order_by(CHECKPOINTS.c.seq.desc()).limit(1)
        ).first()
        last_seq = int(last.seq) if last is not None else 0
        # Committed by whoever made it, so a safe lower bound from now on (a racing update may lower it: still safe).
        self._checkpointed = max(self._checkpointed, last_seq)
        if seq <= last_seq:
            return None
        due = seq - last_seq >= self.checkpoint_every
        if not due and not by_count_only:
            since = last.created_at if last is not None else connection.scalar(
                select(ENTRIES.c.recorded_at).order_by(ENTRIES.c.seq).limit(1))
            due = since is None or now - since >= self.checkpoint_interval
        if not due:
            return None
        checkpoint = Checkpoint(seq=seq, head_hash=head_hash, created_at=now, key_id=self.signer.key_id,
                                signature=self.signer.sign(seq, head_hash, now))
        connection.execute(insert(CHECKPOINTS), [checkpoint.model_dump()])
        log.info("audit checkpoint signed", extra={"seq": seq, "key_id": self.signer.key_id})
        return checkpoint

    def _head(self, connection: Connection) -> tuple[int, str]:
        head = connection.exec_driver_sql(self._sql.head).first()
        return (int(head[0]), str(head[1])) if head is not None else (0, GENESIS_HASH)

    @staticmethod
    def _lock(connection: Connection) -> None:
        dialect = connection.dialect.name
        if dialect == "sqlite":
            # pysqlite would begin only at the INSERT; the head must be read inside the write transaction.
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        elif dialect == "postgresql":
            # EXCLUSIVE blocks other writers but not readers: trails and verify keep working meanwhile.
            connection.exec_driver_sql("LOCK TABLE audit_entries IN EXCLUSIVE MODE")

    def _unseen(self, connection: Connection, entries: Sequence[NewEntry]) -> list[NewEntry]:
        """The entries whose event is neither in the chain nor earlier in the same batch."""
        first: dict[str, NewEntry] = {}
        for entry in entries:
            first.setdefault(entry.event_id, entry)
        ids = list(first)
        seen: set[str] = set()
        for start in range(0, len(ids), _LOOKUP_CHUNK):
            chunk = ids[start:start + _LOOKUP_CHUNK]
            # Padded (repeating the last id) to a power of two: few distinct statements to compile and prepare.
            size = min(_LOOKUP_CHUNK, 1 << (len(chunk) - 1).bit_length())
            chunk += [chunk[-1]] * (size - len(chunk))
            sql, names = self._sql.lookup(size)
            params: Any = tuple(chunk) if names is None else dict(zip(names, chunk, strict=True))
            seen.update(row[0] for row in connection.exec_driver_sql(sql, params))
        return [entry for event_id, entry in first.items() if event_id not in seen]

    def trail(self, subject: str) -> list[TrailEntry]:
        """Every entry whose subject (case id) is ``subject``, in chain order."""
        query = select(ENTRIES).where(ENTRIES.c.subject == subject).order_by(ENTRIES.c.seq)
        with self.engine.connect() as connection:
            return [TrailEntry.model_validate(dict(row._mapping)) for row in connection.execute(query)]

    def checkpoints(self, after_seq: int = 0, limit: int | None = None) -> list[Checkpoint]:
        """The checkpoints with ``seq > after_seq``, oldest first."""
        query = select(CHECKPOINTS).where(CHECKPOINTS.c.seq > after_seq).order_by(CHECKPOINTS.c.seq).limit(limit)
        with self.engine.connect() as connection:
            return [Checkpoint.model_validate(dict(row._mapping)) for row in connection.execute(query)]

    def verify(
        self, public_keys: Iterable[Ed25519PublicKey] = (), batch_size: int = 20_000, workers: int = 1,
        anchors: Sequence[Anchor] = (), retired: Mapping[str, int] | None = None,
    ) -> VerifyReport:
        """Recompute the whole chain in seq order and check every checkpoint against it and the key it names
        among ``public_keys`` (the signing key's own and any earlier one after a rotation).

        ``anchors`` are checkpoints the verifier kept outside this database: the chain must reach each one's seq
        (else ``truncated``) and have its head hash there (else ``checkpoint_mismatch``). They catch what the
        stored checkpoints cannot once those were removed together with the tail they cover.

        ``retired`` maps a key id to the seq of the last checkpoint that key signed before it was retired: one
        beyond it naming the key is ``checkpoint_key_retired``. ``public_keys`` default to the signer's.

        Rows arrive ``batch_size`` at a time as plain tuples from the driver's cursor (a server-side cursor on
        PostgreSQL), so memory stays flat however long the chain is.
        With ``workers`` > 1 and a long chain in a database file or server, that many forked processes each walk
        one contiguous part of it and the parts are joined link by link: the same checks, on more cores. Fork
        only from a process without other threads (the CLI); the service's API walks in its own thread.
        Reports the problem with the lowest sequence number, if any.
        """
        dialect = self.engine.dialect.name
        if dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"verify() supports SQLite and PostgreSQL, not {dialect}")
        for anchor in anchors:
            if anchor.seq < 1 or not _HEAD_HASH.fullmatch(anchor.head_hash):
                raise ValueError("an anchor is a seq >= 1 and a head hash of 64 lower-case hex digits")
        keys = trusted_keys(public_keys) or (
            trusted_keys([self.signer.public_key]) if self.signer is not None else {})
        with self.engine.connect() as connection:
            # Checkpoints first: each one read covers entries already committed, so the chain read next has them.
            checkpoints = [
                (int(row.seq), str(row.head_hash), canonical_time(row.created_at), str(row.key_id),
                 str(row.signature))
                for row in connection.execute(select(CHECKPOINTS).order_by(CHECKPOINTS.c.seq))
            ]
            last = int(connection.scalar(select(func.max(ENTRIES.c.seq))) or 0) if workers > 1 else 0
            connection.rollback()
        if checkpoints and not keys:
            raise SigningKeyError("no public key to check the checkpoint signatures with")
        # The walk keeps the stored hash at each of these seqs, for _report() to compare.
        seqs = sorted({c[0] for c in checkpoints} | {a.seq for a in anchors})
        database = self.engine.url.database or ""
        if workers > 1 and last >= workers * _MIN_PART and (dialect == "postgresql" or database != ":memory:"):
            # The parts end at the head read above: entries appended meanwhile are left out, as a walk started
            # a moment earlier would have.
            bounds = [(1 + last * i // workers, last * (i + 1) // workers) for i in range(workers)]
            url = self.engine.url.render_as_string(hide_password=False)
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
                parts = list(pool.map(_walk_part, [url] * workers, bounds, [seqs] * workers,
                                      [batch_size] * workers))
            walk = _join(parts)
        else:
            walk = _walk_rows(self.engine, seqs, batch_size)
        return _report(walk, checkpoints, keys, anchors, retired)


# Below this many entries per worker, starting processes costs more than it saves.
_MIN_PART = 50_000


def _walk_rows(
    engine: Engine, checkpoint_seqs: Sequence[int], batch_size: int, bounds: tuple[int, int] | None = None
) -> _Walk:
    """Walk the whole chain, or the entries with seq in ``bounds`` (the first one's link left to _join())."""
    dialect = engine.dialect.name
    query = select(*_canonical_columns(dialect), ENTRIES.c.hash).order_by(ENTRIES.c.seq)
    if bounds is not None:
        query = query.where(ENTRIES.c.seq.between(*bounds))
    sql = str(query.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
    with engine.connect() as connection:
        dbapi = connection.connection.dbapi_connection
        assert dbapi is not None
        cursor: Any = dbapi.cursor(name="audit_verify") if dialect == "postgresql" else dbapi.cursor()
        try:
            cursor.arraysize = batch_size
            if dialect == "postgresql":
                cursor.itersize = batch_size
            cursor.execute(sql)
            walk = _walk(_batches(cursor), checkpoint_seqs, time_suffix="+00:00" if dialect == "sqlite" else "",
                         start=bounds[0] if bounds else 1, prev=None if bounds else GENESIS_HASH)
        finally:
            cursor.close()
        connection.rollback()
    return walk


def _walk_part(url: str, bounds: tuple[int, int], checkpoint_seqs: Sequence[int], batch_size: int) -> _Walk:
    """In a worker process: walk one part of the chain on a connection of its own."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        return _walk_rows(engine, [s for s in checkpoint_seqs if bounds[0] <= s <= bounds[1]], batch_size, bounds)
    finally:
        engine.dispose()


def _join(parts: Sequence[_Walk]) -> _Walk:
    """The walk of the whole chain from the walks of its consecutive parts.

    Each part checked its own rows but not the link of its first row, nor whether entries are missing at its
    edges: those are checked here, in the order a single walk would have met them.
    """
    walk = _Walk()
    expected, prev = 1, GENESIS_HASH
    found: _Walk | None = None
    for part in parts:
        walk.length += part.length
        if part.first_seq is None:
            continue  # no entries in this part: the next part's first seq shows the gap
        walk.head_hash, walk.last_seq = part.head_hash, part.last_seq
        walk.hashes_at.update(part.hashes_at)
        if found is not None:
            continue
        if part.first_seq != expected:
            found = _Walk(bad_seq=expected, kind="removed", problem=(
                f"entry {expected} is missing (the next entry is {part.first_seq}): entries were removed"))
        elif part.bad_seq == part.first_seq and part.kind == "changed":
            found = part
        elif part.first_prev != prev:
            found = _Walk(bad_seq=part.first_seq, kind="unlinked", problem=(
                f"entry {part.first_seq} does not link to entry {part.first_seq - 1}: "
                "an entry was inserted, replaced or reordered"))
        elif part.bad_seq is not None:
            found = part
        expected, prev = part.last_seq + 1, part.head_hash
    if found is not None:
        walk.bad_seq, walk.kind, walk.problem = found.bad_seq, found.kind, found.problem
        walk.hashes_at = {seq: h for seq, h in walk.hashes_at.items() if found.bad_seq is None or seq < found.bad_seq}
    return walk


def _batches(cursor: Any) -> Iterator[list[tuple[Any, ...]]]:
    while rows := cursor.fetchmany():
        yield rows


def _walk(
    batches: Iterator[list[tuple[Any, ...]]], checkpoint_seqs: Sequence[int], *, time_suffix: str = "",
    start: int = 1, prev: str | None = GENESIS_HASH,
) -> _Walk:
    """Recompute every entry's hash and link, until the first broken one; count on to the end after that.

    The hot loop of verify(), written out flat, as its time is what an auditor waits for a million entries. Each
    row first gets a fast candidate text with the values put between quotes unescaped. It is accepted when its
    hash matches and it holds no backslash and exactly the quotes of the structure (30 around the keys, 2 around
    each non-null string): the hashed text is pure ASCII without control characters, so a matching candidate is
    too; without backslashes the hashed values needed no escaping; with no extra quotes no value can have spilled
    into another. So the candidate is the text entry_hash() writes for exactly these values. Anything else
    (non-ASCII, quotes or backslashes in a value, a value of the wrong type, a real change) takes the exact path,
    entry_hash(). Times come as PostgreSQL writes them canonically (``time_suffix`` ""), or as SQLite stores them
    ("YYYY-MM-DD HH:MM:SS.ffffff", ``time_suffix`` "+00:00"), completed here. A part of the chain starts at
    seq ``start``; with ``prev`` None its first row's link is not checked here (_join() does).
    """
    sha256 = hashlib.sha256
    space, t = " ", "T"
    walk = _Walk()
    hashes_at = walk.hashes_at
    pending = iter(checkpoint_seqs)
    next_checkpoint = next(pending, -1)
    expected, length = start, 0
    for rows in batches:
        if walk.first_seq is None and rows:
            walk.first_seq, walk.first_prev = rows[0][0], rows[0][_FIELD_COUNT - 1]
            prev = prev or walk.first_prev
        batch_start = length
        for row in rows:
            (seq, event_id, event_type, source, subject, event_time, recorded_at, topic, partition, offset,
             data_sha256, status, destination_id, reason, prev_hash, stored) = row
            if seq != expected:
                walk.bad_seq, walk.kind = expected, "removed"
                walk.problem = f"entry {expected} is missing (the next entry is {seq}): entries were removed"
                break
            try:
                event_time = f"{event_time.replace(space, t)}{time_suffix}"
                recorded_at = f"{recorded_at.replace(space, t)}{time_suffix}"
            except (AttributeError, TypeError):
                # A forged value of another type: the exact path below finds it changed.
                event_time = recorded_at = None
            quotes = 54
            if destination_id is None:
                destination = "null"
                quotes -= 2
            elif len(destination_id) == 32:
                d = destination_id
                destination = f'"{d[:8]}-{d[8:12]}-{d[12:16]}-{d[16:20]}-{d[20:]}"'
            else:
                destination = f'"{destination_id}"'
            if reason is None:
                reason_text = "null"
                quotes -= 2
            else:
                reason_text = f'"{reason}"'
            if status is None:
                status_text = "null"
                quotes -= 2
            else:
                status_text = f'"{status}"'
            if subject is None:
                subject_text = "null"
                quotes -= 2
            else:
                subject_text = f'"{subject}"'
            text = (
                f'{{"data_sha256":"{data_sha256}","destination_id":{destination},'
                f'"event_id":"{event_id}","event_time":"{event_time}","event_type":"{event_type}",'
                f'"offset":{offset},"partition":{partition},"prev_hash":"{prev_hash}",'
                f'"reason":{reason_text},"recorded_at":"{recorded_at}",'
                f'"seq":{seq},"source":"{source}","status":{status_text},'
                f'"subject":{subject_text},"topic":"{topic}"}}'
            )
            if not (sha256(text.encode()).hexdigest() == stored and "\\" not in text
                    and text.count('"') == quotes):
                try:
                    unchanged = entry_hash((*row[:5], event_time, recorded_at, *row[7:])) == stored
                except (TypeError, ValueError):
                    # SQLite keeps whatever type is written: a forged value of the wrong type is a change too.
                    unchanged = False
                if not unchanged:
                    walk.bad_seq, walk.kind = seq, "changed"
                    walk.problem = f"entry {seq} was changed: its hash does not match its content"
                    break
            if prev_hash != prev:
                walk.bad_seq, walk.kind = seq, "unlinked"
                walk.problem = (f"entry {seq} does not link to entry {seq - 1}: "
                                "an entry was inserted, replaced or reordered")
                break
            if seq == next_checkpoint:
                hashes_at[seq] = stored
                next_checkpoint = next(pending, -1)
            prev = stored
            expected = seq + 1
            length += 1
        else:
            if rows:
                walk.head_hash, walk.last_seq = rows[-1][-1], rows[-1][0]
            continue
        # Broken: only count on, so the report still gives the length and the stored head.
        length = batch_start + len(rows)
        walk.head_hash, walk.last_seq = rows[-1][-1], rows[-1][0]
        for rest in batches:
            length += len(rest)
            walk.head_hash, walk.last_seq = rest[-1][-1], rest[-1][0]
        break
    walk.length = length
    return walk


def _report(
    walk: _Walk, checkpoints: Sequence[tuple[int, str, str, str, str]], keys: Mapping[str, Ed25519PublicKey],
    anchors: Sequence[Anchor] = (), retired: Mapping[str, int] | None = None,
) -> VerifyReport:
    """The verdict: the problem with the lowest sequence number among the chain's, the checkpoints' and the
    anchors'."""
    # (seq, rank, kind, problem, checkpoint seq): at one seq, the chain's own finding is the more precise.
    found: list[tuple[int, int, ProblemKind, str, int | None]] = []
    if walk.bad_seq is not None and walk.kind is not None and walk.problem is not None:
        found.append((walk.bad_seq, 0, walk.kind, walk.problem, None))
    previous = 0
    for seq, head_hash, time, key_id, signature in checkpoints:
        key = keys.get(key_id)
        if key is None:
            found.append((seq, 2, "checkpoint_key_unknown",
                          f"checkpoint {seq} (signed at {time}) names key {key_id}, which is not among the trusted "
                          f"public keys ({', '.join(sorted(keys))})", seq))
        elif retired and key_id in retired and seq > retired[key_id]:
            found.append((seq, 2, "checkpoint_key_retired",
                          f"checkpoint {seq} (signed at {time}) names key {key_id}, retired after checkpoint "
                          f"{retired[key_id]}", seq))
        elif not signature_valid(key, checkpoint_message(seq, head_hash, time), signature):
            found.append((seq, 2, "checkpoint_signature_invalid",
                          f"checkpoint {seq} (signed at {time}, key {key_id}): checkpoint signature invalid", seq))
        elif seq in walk.hashes_at:
            if walk.hashes_at[seq] != head_hash:
                found.append((seq, 1, "checkpoint_mismatch",
                              f"entry {seq} differs from signed checkpoint {seq}: the chain was rewritten after "
                              f"{f'checkpoint {previous}' if previous else 'its start'}", seq))
        elif seq > walk.last_seq:
            first_missing = walk.last_seq + 1
            found.append((first_missing, 1, "truncated",
                          f"truncated: the chain ends at entry {walk.last_seq}, but checkpoint {seq} (signed at "
                          f"{time}) covers {seq} entries; entries from {first_missing} on were removed", seq))
        previous = seq
    # An anchor is a checkpoint the verifier kept: the same checks but the signature, which the verifier checked
    # when it fetched it. From the first broken entry on the walk kept no hashes: the chain's own finding, at a
    # lower seq, is the verdict then.
    for seq, head_hash in sorted(set(anchors)):
        if seq in walk.hashes_at:
            if walk.hashes_at[seq] != head_hash:
                found.append((seq, 1, "checkpoint_mismatch",
                              f"entry {seq} differs from the expected checkpoint {seq} given to verify: the chain "
                              "was rewritten up to there", seq))
        elif seq > walk.last_seq:
            first_missing = walk.last_seq + 1
            found.append((first_missing, 1, "truncated",
                          f"truncated: the chain ends at entry {walk.last_seq}, but the expected checkpoint {seq} "
                          f"given to verify covers {seq} entries; entries from {first_missing} on were removed",
                          seq))
    report = VerifyReport(
        intact=not found, length=walk.length, head_hash=walk.head_hash, first_bad_seq=None, problem=None,
        checkpoints=len(checkpoints), last_checkpoint_seq=checkpoints[-1][0] if checkpoints else None,
        anchors=len(set(anchors)),
    )
    if found:
        bad_seq, _, kind, problem, checkpoint_seq = min(found, key=lambda item: (item[0], item[1]))
        report.first_bad_seq, report.kind, report.problem = bad_seq, kind, problem
        report.checkpoint_seq = checkpoint_seq
    return report
