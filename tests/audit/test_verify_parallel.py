"""verify(workers=N) splits the chain into parts walked by forked processes: it must find exactly what a single
walk finds, whatever was done to the chain and wherever the part boundaries fall (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Connection, Engine, delete, update

from services.audit import store as store_module
from services.audit.models import ENTRIES
from services.audit.signing import CheckpointSigner
from services.audit.store import Anchor, AuditStore, canonical_fields, entry_hash
from tests.audit.chain import drop_guards, fill

# 12 entries, a checkpoint after every 4: with 2 workers the parts are 1–6 and 7–12, with 3 workers 1–4, 5–8, 9–12.
LENGTH = 12


@pytest.fixture
def chain(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> tuple[AuditStore, list[dict[str, Any]], list[int]]:
    store = AuditStore(engine, CheckpointSigner(Ed25519PrivateKey.generate()), checkpoint_every=4)
    rows = [row for _ in range(LENGTH // 4) for row in fill(store, 4)]
    drop_guards(engine)
    monkeypatch.setattr(store_module, "_MIN_PART", 1)
    joined: list[int] = []
    join = store_module._join

    def counting_join(parts: Any) -> Any:
        joined.append(len(parts))
        return join(parts)

    monkeypatch.setattr(store_module, "_join", counting_join)
    return store, rows, joined


def _rewrite(seq: int, rows: list[dict[str, Any]]) -> Callable[[Connection], None]:
    """Entry ``seq`` changed and given a fresh hash of its own: the next entry's link breaks."""
    def tamper(connection: Connection) -> None:
        forged = {**rows[seq - 1], "status": "rejected"}
        connection.execute(update(ENTRIES).where(ENTRIES.c.seq == seq)
                           .values(status="rejected", hash=entry_hash(canonical_fields(forged))))
    return tamper


def _delete(*seqs: int) -> Callable[[Connection], None]:
    def tamper(connection: Connection) -> None:
        connection.execute(delete(ENTRIES).where(ENTRIES.c.seq.in_(seqs)))
    return tamper


def _change(seq: int) -> Callable[[Connection], None]:
    def tamper(connection: Connection) -> None:
        connection.execute(update(ENTRIES).where(ENTRIES.c.seq == seq).values(status="decided"))
    return tamper


SCENARIOS: dict[str, Callable[[list[dict[str, Any]]], Callable[[Connection], None]]] = {
    "intact": lambda rows: lambda connection: None,
    "changed first of a part": lambda rows: _change(7),
    "changed inside a part": lambda rows: _change(3),
    "changed last entry": lambda rows: _change(12),
    "removed first entry": lambda rows: _delete(1),
    "removed last of a part": lambda rows: _delete(6),
    "removed first of a part": lambda rows: _delete(7),
    "removed a whole part": lambda rows: _delete(5, 6, 7, 8),
    "removed the tail after a checkpoint": lambda rows: _delete(10, 11, 12),
    "rewritten last of a part": lambda rows: _rewrite(6, rows),
    "rewritten inside a part": lambda rows: _rewrite(2, rows),
    "two problems, the first wins": lambda rows: lambda c: (_change(9)(c), _delete(4)(c)),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_parts_find_what_a_single_walk_finds(
    chain: tuple[AuditStore, list[dict[str, Any]], list[int]], engine: Engine, scenario: str
) -> None:
    store, rows, joined = chain
    with engine.begin() as connection:
        SCENARIOS[scenario](rows)(connection)
    single = store.verify().model_dump()
    assert joined == []
    for workers in (2, 3):
        assert store.verify(workers=workers).model_dump() == single, f"{workers} workers"
    assert joined == [2, 3]
    assert single["intact"] is (scenario == "intact")
    # Anchors (checkpoints kept by the auditor) at the edges of parts and at the head: honoured by every part.
    anchors = [Anchor(seq, rows[seq - 1]["hash"]) for seq in (6, 7, 12)]
    anchored = store.verify(anchors=anchors).model_dump()
    for workers in (2, 3):
        assert store.verify(workers=workers, anchors=anchors).model_dump() == anchored, f"{workers} workers"
    assert anchored["intact"] is (scenario == "intact")
    assert anchored["anchors"] == 3
