"""Intake's store on SQLite and PostgreSQL: migrations, attachment binding, outbox and sweep queries."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from services.intake.app import MIGRATIONS
from services.intake.models import Attachment, Case, CaseState
from services.intake.store import AttachmentsTaken, IntakeStore, Reserved, new_reference
from shared import db


def candidate(client_id: uuid.UUID, key: str, at: datetime) -> Case:
    return Case(case_id=uuid.uuid4(), reference=new_reference(at), leika_key="99115005104000", submitted_at=at,
                updated_at=at, client_id=client_id, idempotency_key=key, body_hash="h" * 64,
                event_id=str(uuid.uuid4()), submission="{}")


def test_binding_release_outbox_and_sweep(database_url: str) -> None:
    engine = db.make_engine(database_url)
    db.migrate(engine, MIGRATIONS, "intake")
    store = IntakeStore(engine)
    client, other = uuid.uuid4(), uuid.uuid4()
    long_ago = datetime.now(UTC) - timedelta(days=2)
    files = [Attachment(attachment_id=uuid.uuid4(), client_id=client, filename="a.pdf", media_type="application/pdf",
                        size=10, sha512="0" * 128, created_at=long_ago) for _ in range(2)]
    ids = [row.attachment_id for row in files]
    for row in files:
        store.add_attachment(row)

    assert set(store.owned_attachments(ids, client)) == set(ids)
    assert store.owned_attachments(ids, other) == {}
    first = store.reserve(candidate(client, "k1", long_ago), ids)
    assert isinstance(first, Reserved)
    assert isinstance(store.reserve(candidate(client, "k2", long_ago), ids[:1]), AttachmentsTaken)
    assert store.unreferenced_before(datetime.now(UTC)) == []

    # The outbox sees the old pending case; accepting it is idempotent and drops the stored event data.
    assert [c.case_id for c in store.pending_before(datetime.now(UTC))] == [first.case.case_id]
    store.accept(first.case.case_id)
    accepted = store.accept(first.case.case_id)
    assert accepted.state == CaseState.ACCEPTED
    assert accepted.submission is None
    assert store.pending_before(datetime.now(UTC)) == []

    # A released reservation frees its attachments; the sweep then takes them, once.
    second = store.reserve(candidate(client, "k3", datetime.now(UTC)), [])
    assert isinstance(second, Reserved)
    store.release(second.case.case_id)
    orphan = Attachment(attachment_id=uuid.uuid4(), client_id=client, filename="b.png", media_type="image/png",
                        size=5, sha512="1" * 128, created_at=long_ago)
    orphan_id = orphan.attachment_id
    store.add_attachment(orphan)
    assert store.unreferenced_before(datetime.now(UTC)) == [orphan_id]
    assert store.forget_unreferenced(orphan_id) is True
    assert store.forget_unreferenced(orphan_id) is False
    assert store.forget_unreferenced(ids[0]) is False  # referenced: kept
    engine.dispose()
