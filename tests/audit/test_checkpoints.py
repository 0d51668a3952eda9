"""Signed checkpoints on SQLite and PostgreSQL: when they are made, that they are append-only, and what verify
finds with them that the chain alone cannot (a cut-off tail, a chain rewritten as a whole, a forged signature)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, delete, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError

from services.audit.models import CHECKPOINTS, ENTRIES
from services.audit.signing import CheckpointSigner, load_public_key
from services.audit.store import AuditStore
from tests.audit.chain import drop_checkpoint_guards, drop_guards, fill, new_entry, rewrite_from_seq_2


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def signer() -> CheckpointSigner:
    return CheckpointSigner(Ed25519PrivateKey.generate())


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(engine: Engine, signer: CheckpointSigner, clock: Clock) -> AuditStore:
    return AuditStore(engine, signer, checkpoint_every=3, checkpoint_interval_s=60, clock=clock)


def test_a_checkpoint_after_every_n_entries_signed_over_seq_head_and_time(
    store: AuditStore, signer: CheckpointSigner
) -> None:
    rows = fill(store, 2) + fill(store, 2) + fill(store, 1) + fill(store, 3)
    checkpoints = store.checkpoints()
    # Made at the end of the batch in which N entries since the last checkpoint were reached.
    assert [c.seq for c in checkpoints] == [4, 8]
    assert [c.head_hash for c in checkpoints] == [rows[3]["hash"], rows[7]["hash"]]
    assert {c.key_id for c in checkpoints} == {signer.key_id}

    # An auditor checks a signature with the published PEM and any JSON library, nothing of ours.
    public_key = load_public_key(signer.public_pem)
    for checkpoint in checkpoints:
        message = json.dumps({"seq": checkpoint.seq, "head_hash": checkpoint.head_hash,
                              "time": checkpoint.created_at.astimezone(UTC).isoformat(timespec="microseconds"),
                              "type": "de.ozg.audit.checkpoint.v1"}, sort_keys=True, separators=(",", ":"))
        public_key.verify(bytes.fromhex(checkpoint.signature), message.encode())

    report = store.verify()
    assert (report.intact, report.checkpoints, report.last_checkpoint_seq) == (True, 2, 8)
    assert [c.seq for c in store.checkpoints(after_seq=4, limit=10)] == [8]


def test_a_checkpoint_after_t_seconds_while_the_chain_grows(store: AuditStore, clock: Clock) -> None:
    fill(store, 2)
    assert store.checkpoint_if_due() is None
    clock.now += timedelta(seconds=61)
    checkpoint = store.checkpoint_if_due()
    assert checkpoint is not None
    assert (checkpoint.seq, checkpoint.created_at) == (2, clock.now)
    fill(store, 1)
    clock.now += timedelta(seconds=30)
    assert store.checkpoint_if_due() is None
    clock.now += timedelta(seconds=30)
    assert [c.seq for c in store.checkpoints()] == [2]
    assert store.checkpoint_if_due() is not None
    assert [c.seq for c in store.checkpoints()] == [2, 3]
    # Nothing new: no checkpoint, however long it has been.
    clock.now += timedelta(hours=1)
    assert store.checkpoint_if_due() is None
    assert store.verify().intact


def test_triggers_refuse_update_and_delete_of_checkpoints(store: AuditStore, engine: Engine) -> None:
    fill(store, 3)
    with engine.connect() as connection:
        with pytest.raises(DBAPIError, match="append-only"):
            connection.execute(update(CHECKPOINTS).values(signature="00" * 64))
        connection.rollback()
        with pytest.raises(DBAPIError, match="append-only"):
            connection.execute(delete(CHECKPOINTS))
        connection.rollback()
        if engine.dialect.name == "postgresql":
            with pytest.raises(DBAPIError, match="append-only"):
                connection.execute(text("TRUNCATE audit_checkpoints"))
            connection.rollback()
        row = {**dict(connection.execute(select(CHECKPOINTS)).mappings().one()), "signature": "00" * 64}
        replace = pg_insert(CHECKPOINTS).values(row)
        replacing = (insert(CHECKPOINTS).values(row).prefix_with("OR REPLACE") if engine.dialect.name == "sqlite"
                     else replace.on_conflict_do_update(index_elements=["seq"],
                                                        set_={"signature": replace.excluded.signature}))
        with pytest.raises(DBAPIError, match="append-only"):
            connection.execute(replacing)
        connection.rollback()
    assert [c.seq for c in store.checkpoints()] == [3]
    assert store.verify().intact


def test_forged_signature_is_reported(store: AuditStore, engine: Engine) -> None:
    fill(store, 3)
    fill(store, 3)
    drop_checkpoint_guards(engine)
    forged = CheckpointSigner(Ed25519PrivateKey.generate()).sign(6, "f" * 64, datetime.now(UTC))
    with engine.begin() as connection:
        connection.execute(update(CHECKPOINTS).where(CHECKPOINTS.c.seq == 6).values(signature=forged))
    report = store.verify()
    assert not report.intact
    assert (report.kind, report.checkpoint_seq, report.first_bad_seq) == ("checkpoint_signature_invalid", 6, 6)
    assert report.problem is not None
    assert "checkpoint signature invalid" in report.problem
    assert report.length == 6


def test_each_signature_is_checked_against_the_key_its_checkpoint_names(store: AuditStore) -> None:
    fill(store, 3)
    assert store.signer is not None
    assert store.verify([store.signer.public_key]).intact
    other = CheckpointSigner(Ed25519PrivateKey.generate()).public_key
    report = store.verify([other])
    assert (report.intact, report.kind, report.checkpoint_seq) == (False, "checkpoint_key_unknown", 3)
    assert report.problem is not None
    assert store.signer.key_id in report.problem


def test_after_a_rotation_of_the_signing_key_the_earlier_checkpoints_hold_while_their_key_is_trusted(
    engine: Engine, signer: CheckpointSigner, clock: Clock
) -> None:
    fill(AuditStore(engine, signer, checkpoint_every=3, clock=clock), 3)
    rotated = CheckpointSigner(Ed25519PrivateKey.generate())
    store = AuditStore(engine, rotated, checkpoint_every=3, clock=clock)  # the service restarted with a new key
    fill(store, 3)
    assert [(c.seq, c.key_id) for c in store.checkpoints()] == [(3, signer.key_id), (6, rotated.key_id)]

    both = store.verify([rotated.public_key, signer.public_key])
    assert (both.intact, both.checkpoints, both.length) == (True, 2, 6)
    forgotten = store.verify([rotated.public_key])  # the earlier key left out
    assert (forgotten.intact, forgotten.kind, forgotten.checkpoint_seq) == (False, "checkpoint_key_unknown", 3)

    # Naming a trusted key proves nothing by itself: the signature must be that key's.
    intruder = CheckpointSigner(Ed25519PrivateKey.generate())
    drop_checkpoint_guards(engine)
    with engine.begin() as connection:
        created_at = connection.scalar(select(CHECKPOINTS.c.created_at).where(CHECKPOINTS.c.seq == 6))
        head_hash = connection.scalar(select(CHECKPOINTS.c.head_hash).where(CHECKPOINTS.c.seq == 6))
        connection.execute(update(CHECKPOINTS).where(CHECKPOINTS.c.seq == 6).values(
            signature=intruder.sign(6, head_hash, created_at)))
    forged = store.verify([rotated.public_key, signer.public_key])
    assert (forged.intact, forged.kind, forged.checkpoint_seq) == (False, "checkpoint_signature_invalid", 6)

    # Whoever holds the retired key (it leaked: the reason for the rotation) signs checkpoint 6 with it. Only a pin
    # of the retired key to its last checkpoint (3) tells that from an honest checkpoint.
    with engine.begin() as connection:
        connection.execute(update(CHECKPOINTS).where(CHECKPOINTS.c.seq == 6).values(
            key_id=signer.key_id, signature=signer.sign(6, head_hash, created_at)))
    assert store.verify([rotated.public_key, signer.public_key]).intact
    pinned = store.verify([rotated.public_key, signer.public_key], retired={signer.key_id: 3})
    assert (pinned.intact, pinned.kind, pinned.checkpoint_seq) == (False, "checkpoint_key_retired", 6)
    assert store.verify([signer.public_key], retired={signer.key_id: 6}).intact


def test_truncated_tail_is_reported_with_the_first_missing_entry(store: AuditStore, engine: Engine) -> None:
    fill(store, 6)
    fill(store, 2)  # 7 and 8: after the last checkpoint (6)
    drop_guards(engine)
    with engine.begin() as connection:
        connection.execute(delete(ENTRIES).where(ENTRIES.c.seq >= 5))
    report = store.verify()
    assert not report.intact
    assert (report.kind, report.first_bad_seq, report.checkpoint_seq, report.length) == ("truncated", 5, 6, 4)
    assert report.problem is not None
    assert report.problem.startswith("truncated")


def test_chain_rewritten_as_a_whole_is_caught_by_the_checkpoint(store: AuditStore, engine: Engine) -> None:
    rows = fill(store, 3) + fill(store, 1)
    drop_guards(engine)
    # The intruder changes entry 2 and re-hashes the chain from there on: the chain alone looks intact.
    with engine.begin() as connection:
        rewrite_from_seq_2(connection, rows)
    report = store.verify()
    # Every entry matches its hash and links up: only the signed checkpoint tells.
    assert not report.intact
    assert (report.kind, report.checkpoint_seq, report.first_bad_seq) == ("checkpoint_mismatch", 3, 3)


def test_entries_in_the_checkpoint_table_without_a_signer_are_not_ignored(engine: Engine, store: AuditStore) -> None:
    fill(store, 3)
    unsigned = AuditStore(engine)
    with pytest.raises(ValueError, match="no public key"):
        unsigned.verify()
    with engine.connect() as connection:
        assert connection.scalar(select(CHECKPOINTS.c.seq)) == 3


def test_tampered_values_needing_escapes_are_found(store: AuditStore, engine: Engine) -> None:
    # Honest values that JSON must escape verify; a forged value that mimics an escape does not.
    fill(store, 1)
    honest = store.append_many([new_entry(source='/ozg/"Bürgeramt"\\\n')])
    fill(store, 1)
    assert store.verify().intact
    drop_guards(engine)
    for forged in ("/ozg/\\\"B\\u00fcrgeramt\\\"\\\\\\n", '/ozg/"B\\u00fcrgeramt"', '/ozg/routing","x":"y'):
        with engine.begin() as connection:
            connection.execute(update(ENTRIES).where(ENTRIES.c.seq == 2).values(source=forged))
        report = store.verify()
        assert (report.kind, report.first_bad_seq) == ("changed", 2), forged
    with engine.begin() as connection:
        connection.execute(update(ENTRIES).where(ENTRIES.c.seq == 2).values(source=honest[0]["source"]))
    assert store.verify().intact


def test_replicas_appending_in_turn_checkpoint_as_one_appender_would(
    store: AuditStore, engine: Engine, signer: CheckpointSigner, clock: Clock
) -> None:
    # Each store remembers the checkpoints it saw; another replica's appends and checkpoints must not fool it.
    replica = AuditStore(engine, signer, checkpoint_every=3, checkpoint_interval_s=60, clock=clock)
    fill(store, 2)
    fill(replica, 2)
    fill(store, 2)
    fill(replica, 1)
    fill(store, 1)
    fill(store, 2)
    assert [c.seq for c in store.checkpoints()] == [4, 7, 10]
    assert store.verify().intact
