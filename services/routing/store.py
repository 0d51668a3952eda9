"""Routing's database operations; synchronous, called from async code through a worker thread."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, Engine, Table, bindparam, delete, func, insert, tuple_, update
from sqlalchemy import select as core_select
from sqlmodel import Session, SQLModel, col, select

from services.routing.directory import Directory, Gemeinde, Kreis, Land, Verband
from services.routing.importer import DESTINATIONS, DIRECTORY, bump_version
from services.routing.models import (
    CaseRecord,
    ClearingCase,
    DataVersion,
    Destination,
    DirGemeinde,
    DirKreis,
    DirLand,
    DirPostcode,
    DirVerband,
    RoutedCase,
    WebhookDelivery,
)
from shared import topics
from shared.db import table_of
from shared.envelope import OutgoingEvent
from shared.events import CaseStatus
from shared.idempotency import ProcessedEvent, claim_batch, first_delivery, processed_among
from shared.outbox import stage

_CASES, _CLEARING, _WEBHOOKS = table_of(RoutedCase), table_of(ClearingCase), table_of(WebhookDelivery)


def _values(table: Table, row: SQLModel) -> dict[str, Any]:
    """An ORM object's column values, for a Core statement."""
    return {column.name: getattr(row, column.name) for column in table.columns}


def _merge(connection: Connection, table: Table, key: str, rows: dict[Any, dict[str, Any]]) -> None:
    """Insert or replace ``rows`` (by primary key ``key``), as ``Session.merge`` does one by one: one query for
    the keys already there, one executemany insert, one executemany update for the (rare) rows that exist."""
    if not rows:
        return
    column = table.c[key]
    known = set(connection.scalars(core_select(column).where(column.in_(list(rows)))))
    if new := [row for k, row in rows.items() if k not in known]:
        connection.execute(insert(table), new)
    if known:
        names = [name for name in next(iter(rows.values())) if name != key]
        connection.execute(
            update(table).where(column == bindparam("merge_key")).values({n: bindparam(n) for n in names}),
            [{"merge_key": k, **{n: rows[k][n] for n in names}} for k in known])


class RoutingStore:
    """Destinations and routing decisions."""

    CONSUMER = "routing.dispatch"
    STATUS_CONSUMER = "routing.status"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def upsert_destination(self, destination: Destination) -> None:
        """Create or replace a destination."""
        with Session(self.engine) as session:
            existing = session.get(Destination, destination.destination_id)
            if existing is None:
                session.add(destination)
            else:
                existing.name = destination.name
                existing.authority_ars = destination.authority_ars
                existing.leika_keys = destination.leika_keys
                existing.webhook_url = destination.webhook_url
                existing.webhook_secret = destination.webhook_secret
                existing.updated_at = datetime.now(UTC)
                session.add(existing)
            bump_version(session, DESTINATIONS)
            session.commit()

    def destination(self, destination_id: UUID) -> Destination | None:
        """One destination."""
        with Session(self.engine) as session:
            return session.get(Destination, destination_id)

    def delete_destination(self, destination_id: UUID) -> bool:
        """Remove a destination; False when there was none."""
        with Session(self.engine) as session:
            existing = session.get(Destination, destination_id)
            if existing is None:
                return False
            session.delete(existing)
            bump_version(session, DESTINATIONS)
            session.commit()
            return True

    def versions(self) -> dict[str, int]:
        """The current version of each kind of shared data (what replicas poll)."""
        with Session(self.engine) as session:
            return {row.kind: row.version for row in session.exec(select(DataVersion)).all()}

    def load_directory(self) -> Directory | None:
        """The imported directory with its postal codes, or None when nothing was imported yet."""
        with Session(self.engine) as session:
            version = session.get(DataVersion, DIRECTORY)
            if version is None or version.stand is None:
                return None
            stand = version.stand
            directory = Directory(gebietsstand=f"{stand[:4]}-{stand[4:6]}-{stand[6:]}")
            for land in session.exec(select(DirLand.key, DirLand.name)).all():
                directory.laender[land[0]] = Land(land[0], land[1])
            for k in session.exec(select(DirKreis.key, DirKreis.name, DirKreis.type, DirKreis.kreisfrei)).all():
                directory.kreise[k[0]] = Kreis(k[0], k[1], k[2], bool(k[3]))
            for v in session.exec(select(DirVerband.ars, DirVerband.name, DirVerband.type)).all():
                directory.verbaende[v[0]] = Verband(v[0], v[1], v[2])
            for g in session.exec(select(DirGemeinde.ags, DirGemeinde.ars, DirGemeinde.name, DirGemeinde.type)).all():
                directory.add_gemeinde(Gemeinde(g[0], g[1], g[2], g[3]))
            for p in session.exec(select(DirPostcode.postal_code, DirPostcode.ags, DirPostcode.place)).all():
                directory.add_postcode(p[0], p[1], p[2])
            return directory

    def destinations(self) -> list[Destination]:
        """Every registered destination."""
        with Session(self.engine) as session:
            return list(session.exec(select(Destination)).all())

    def already_processed(self, event_id: str) -> bool:
        """Whether the dispatcher has taken this event into effect before."""
        with Session(self.engine) as session:
            return session.get(ProcessedEvent, (self.CONSUMER, event_id)) is not None

    def record(self, event_id: str, case: RoutedCase) -> None:
        """Record a routing decision together with its event id (once)."""
        with Session(self.engine) as session:
            if not first_delivery(session, self.CONSUMER, event_id):
                return
            session.merge(case)
            session.commit()

    def processed_among(self, event_ids: list[str]) -> set[str]:
        """Which of ``event_ids`` the dispatcher has taken into effect before (one query for a batch)."""
        if not event_ids:
            return set()
        with self.engine.connect() as connection:
            return processed_among(connection, self.CONSUMER, event_ids)

    def record_many(
        self, decisions: list[tuple[str, CaseRecord, ClearingCase | None, WebhookDelivery | None]],
        connection: Connection | None = None,
    ) -> None:
        """Record a batch of decisions, each with its event id, clearing case and webhook delivery, in one
        transaction (``connection``'s, if given: the caller commits it): the event ids are claimed in it
        (idempotent consumer), so a redelivered one changes nothing."""
        if connection is None:
            with self.engine.begin() as own:
                self.record_many(decisions, own)
            return
        # SQLAlchemy Core, a few statements per batch: the ORM's per-object work (construction, unit of work,
        # flush) was most of routing's database time.
        fresh = claim_batch(connection, self.CONSUMER, [decision[0] for decision in decisions])
        cases: dict[UUID, dict[str, Any]] = {}
        clearing_cases: dict[UUID, dict[str, Any]] = {}
        webhooks: dict[UUID, dict[str, Any]] = {}
        for event_id, case, clearing, webhook in decisions:
            if event_id not in fresh:
                continue
            fresh.discard(event_id)  # the same event twice in one batch takes effect once
            # A later decision of the same case replaces an earlier one, as a later merge did.
            cases[case.case_id] = case.row()
            if clearing is not None:
                clearing_cases[clearing.case_id] = _values(_CLEARING, clearing)
            if webhook is not None:
                webhooks[webhook.delivery_id] = _values(_WEBHOOKS, webhook)
        _merge(connection, _CASES, "case_id", cases)
        _merge(connection, _CLEARING, "case_id", clearing_cases)
        _merge(connection, _WEBHOOKS, "delivery_id", webhooks)

    def clearing_cases(self, limit: int, offset: int) -> list[ClearingCase]:
        """Cases waiting in clearing, oldest first."""
        with Session(self.engine) as session:
            query = select(ClearingCase).order_by(col(ClearingCase.created_at), col(ClearingCase.case_id))
            return list(session.exec(query.offset(offset).limit(limit)).all())

    def clearing_count(self) -> int:
        """How many cases wait in clearing now."""
        with self.engine.connect() as connection:
            return int(connection.scalar(core_select(func.count()).select_from(_CLEARING)) or 0)

    def clearing_case(self, case_id: UUID) -> ClearingCase | None:
        """One case waiting in clearing."""
        with Session(self.engine) as session:
            return session.get(ClearingCase, case_id)

    def resolve_clearing(
        self, case: CaseRecord, publish: Sequence[tuple[str, OutgoingEvent]], webhook: WebhookDelivery | None = None,
    ) -> bool:
        """Route a case out of clearing by hand: take it out (deleting the kept application, its personal data),
        record the decision and put its events into the outbox, in one transaction.

        False when the case is no longer in clearing: a withdrawal, or another operator, took it out meanwhile.
        Whoever deletes the row first wins, so a withdrawal is never overwritten by a late manual decision.
        """
        with Session(self.engine) as session:
            taken = session.exec(delete(ClearingCase).where(col(ClearingCase.case_id) == case.case_id))
            if taken.rowcount != 1:
                return False
            if webhook is not None and session.get(WebhookDelivery, webhook.delivery_id) is None:
                session.add(webhook)
            session.merge(case.routed_case())
            for topic, event in publish:
                stage(session, topic, event)
            session.commit()
            return True

    def case(self, case_id: UUID) -> RoutedCase | None:
        """Routing's record of a case."""
        with Session(self.engine) as session:
            return session.get(RoutedCase, case_id)

    def transition(
        self, case_id: UUID, expected: CaseStatus, new: CaseStatus, at: datetime, destination_id: UUID,
        announce: OutgoingEvent,
    ) -> bool:
        """Compare-and-set the status of a case dispatched to ``destination_id``: only when it still is
        ``expected``. Of two concurrent changes of one case exactly one wins; False for the loser. The event
        ``announce`` goes into the outbox in the same transaction, so the change is never left unannounced."""
        statement = update(RoutedCase).where(
            col(RoutedCase.case_id) == case_id, col(RoutedCase.status) == str(expected),
            col(RoutedCase.destination_id) == destination_id,
        ).values(status=str(new), updated_at=at)
        with Session(self.engine) as session:
            if session.exec(statement).rowcount != 1:
                return False
            stage(session, topics.CASE_STATUS, announce)
            session.commit()
            return True

    def status_processed(self, event_id: str) -> bool:
        """Whether the status consumer has taken this event into effect before."""
        with Session(self.engine) as session:
            return session.get(ProcessedEvent, (self.STATUS_CONSUMER, event_id)) is not None

    def destination_cases(
        self, destination_id: UUID, *, status: CaseStatus | None, since: datetime | None, limit: int,
        after: tuple[datetime, UUID] | None = None,
    ) -> list[RoutedCase]:
        """The cases dispatched to a destination, least recently changed first (then by case id), from the
        position ``after`` on (keyset paging: rows inserted meanwhile never shift a page)."""
        with Session(self.engine) as session:
            query = select(RoutedCase).where(col(RoutedCase.destination_id) == destination_id)
            if status is not None:
                query = query.where(col(RoutedCase.status) == str(status))
            if since is not None:
                query = query.where(col(RoutedCase.updated_at) > since)
            if after is not None:
                query = query.where(tuple_(col(RoutedCase.updated_at), col(RoutedCase.case_id)) > tuple_(*after))
            query = query.order_by(col(RoutedCase.updated_at), col(RoutedCase.case_id))
            return list(session.exec(query.limit(limit)).all())
