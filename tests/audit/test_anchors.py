"""Anchors (SQLite and PostgreSQL): checkpoints an auditor kept outside audit's database and passes to verify.

The checkpoints stored beside the chain go with the database: whoever can delete the tail can delete its checkpoints
too, and the rest verifies as intact. An anchor cannot be deleted that way.
"""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, delete, update

from services.audit import store as store_module
from services.audit.models import CHECKPOINTS, ENTRIES
from services.audit.signing import CheckpointSigner
from services.audit.store import Anchor, AuditStore, canonical_fields, entry_hash
from tests.audit.chain import drop_checkpoint_guards, drop_guards, fill, rewrite_from_seq_2


@pytest.fixture
def store(engine: Engine) -> AuditStore:
    return AuditStore(engine, CheckpointSigner(Ed25519PrivateKey.generate()), checkpoint_every=4)


@pytest.fixture
def rows(store: AuditStore, engine: Engine) -> list[dict[str, Any]]:
    """12 entries, checkpoints at 4, 8 and 12; the guards of both tables dropped, as an intruder would."""
    appended = [row for _ in range(3) for row in fill(store, 4)]
    assert [c.seq for c in store.checkpoints()] == [4, 8, 12]
    drop_guards(engine)
    drop_checkpoint_guards(engine)
    return appended


def anchor(rows: list[dict[str, Any]], seq: int) -> Anchor:
    """The checkpoint at ``seq`` as the auditor fetched and kept it."""
    return Anchor(seq, rows[seq - 1]["hash"])


def every_way(store: AuditStore, anchors: list[Anchor], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The report of one walk, after checking that walks in parts (2 and 3 forked workers) find the same."""
    single = store.verify(anchors=anchors).model_dump()
    monkeypatch.setattr(store_module, "_MIN_PART", 1)
    for workers in (2, 3):
        assert store.verify(workers=workers, anchors=anchors).model_dump() == single, f"{workers} workers"
    return single


def cut_tail(engine: Engine, after: int) -> None:
    """Delete the entries after ``after`` and every checkpoint covering them."""
    with engine.begin() as connection:
        connection.execute(delete(ENTRIES).where(ENTRIES.c.seq > after))
        connection.execute(delete(CHECKPOINTS).where(CHECKPOINTS.c.seq > after))


def test_intact_chain_with_anchors(store: AuditStore, rows: list[dict[str, Any]],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    report = every_way(store, [anchor(rows, 12), anchor(rows, 5), anchor(rows, 5)], monkeypatch)
    assert (report["intact"], report["anchors"], report["checkpoints"], report["length"]) == (True, 2, 3, 12)
    assert store.verify().anchors == 0


def test_tail_removed_with_its_checkpoints_is_caught_only_by_an_anchor(
    store: AuditStore, rows: list[dict[str, Any]], engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    cut_tail(engine, 6)
    # The stored checkpoints (now only 4) agree with what is left: the database alone cannot tell.
    plain = store.verify()
    assert (plain.intact, plain.length, plain.last_checkpoint_seq) == (True, 6, 4)

    report = every_way(store, [anchor(rows, 8)], monkeypatch)
    assert not report["intact"]
    assert (report["kind"], report["first_bad_seq"], report["checkpoint_seq"], report["length"]) == (
        "truncated", 7, 8, 6)
    assert report["problem"].startswith("truncated: the chain ends at entry 6")
    assert "expected checkpoint 8" in report["problem"]
    # An anchor the chain still reaches is no alarm; the one beyond it is.
    assert store.verify(anchors=[anchor(rows, 4), anchor(rows, 6)]).intact
    assert store.verify(anchors=[anchor(rows, 4), anchor(rows, 12)]).first_bad_seq == 7


def test_tail_removed_and_grown_again_is_a_mismatch_at_the_anchor(
    store: AuditStore, rows: list[dict[str, Any]], engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    cut_tail(engine, 6)
    # The service, restarted, goes on appending and signing checkpoints with its own key: the chain passes 8 again.
    fill(AuditStore(engine, store.signer, checkpoint_every=4), 4)
    assert [c.seq for c in store.checkpoints()] == [4, 10]
    assert store.verify().intact

    report = every_way(store, [anchor(rows, 4), anchor(rows, 8)], monkeypatch)
    assert not report["intact"]
    assert (report["kind"], report["first_bad_seq"], report["checkpoint_seq"], report["length"]) == (
        "checkpoint_mismatch", 8, 8, 10)
    assert "expected checkpoint 8 given to verify" in report["problem"]


def test_chain_rewritten_as_a_whole_without_its_checkpoints(
    store: AuditStore, rows: list[dict[str, Any]], engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Entry 2 changed, every entry after it re-hashed, every checkpoint deleted: intact without an anchor.
    with engine.begin() as connection:
        connection.execute(delete(CHECKPOINTS))
        rewrite_from_seq_2(connection, rows)
    assert store.verify().intact
    report = every_way(store, [anchor(rows, 1), anchor(rows, 5), anchor(rows, 9)], monkeypatch)
    assert (report["intact"], report["kind"], report["first_bad_seq"], report["checkpoint_seq"]) == (
        False, "checkpoint_mismatch", 5, 5)


def test_an_anchor_vouches_for_the_chain_up_to_its_seq(
    store: AuditStore, rows: list[dict[str, Any]], engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Entry 10 rewritten with a fresh hash of its own: the chain breaks at 11, whatever the anchor at 8 says.
    forged = {**rows[9], "status": "rejected"}
    with engine.begin() as connection:
        connection.execute(update(ENTRIES).where(ENTRIES.c.seq == 10)
                           .values(status="rejected", hash=entry_hash(canonical_fields(forged))))
    report = every_way(store, [anchor(rows, 8)], monkeypatch)
    assert (report["intact"], report["kind"], report["first_bad_seq"]) == (False, "unlinked", 11)
    # An anchor at the rewritten entry pinpoints it; an older one beyond a broken entry yields to the chain's finding.
    assert store.verify(anchors=[anchor(rows, 10)]).model_dump()["first_bad_seq"] == 10
    assert store.verify(anchors=[anchor(rows, 10)]).kind == "checkpoint_mismatch"
    with engine.begin() as connection:
        connection.execute(update(ENTRIES).where(ENTRIES.c.seq == 3).values(status="decided"))
    report = every_way(store, [anchor(rows, 8), Anchor(20, "f" * 64)], monkeypatch)
    assert (report["kind"], report["first_bad_seq"], report["checkpoint_seq"]) == ("changed", 3, None)


def test_a_wrong_anchor_on_an_intact_chain_is_a_mismatch(store: AuditStore, rows: list[dict[str, Any]]) -> None:
    report = store.verify(anchors=[Anchor(7, "e" * 64)])
    assert (report.intact, report.kind, report.first_bad_seq, report.checkpoint_seq) == (
        False, "checkpoint_mismatch", 7, 7)
    # Two contradicting anchors for one seq: one of them is wrong.
    assert not store.verify(anchors=[anchor(rows, 7), Anchor(7, "e" * 64)]).intact


def test_malformed_anchors_are_refused(store: AuditStore) -> None:
    for bad in (Anchor(0, "a" * 64), Anchor(-1, "a" * 64), Anchor(1, "A" * 64), Anchor(1, "a" * 63),
                Anchor(1, "g" * 64), Anchor(1, "a" * 64 + "\n")):
        with pytest.raises(ValueError, match="anchor"):
            store.verify(anchors=[bad])
