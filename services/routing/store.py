"""Routing's database operations; synchronous, called from async code through a worker thread."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

from sqlalchemy import Engine
from sqlmodel import Session, select

from services.routing.models import Destination, RoutedCase
from shared.idempotency import ProcessedEvent, first_delivery


class RoutingStore:
    """Destinations and routing decisions."""

    CONSUMER = "routing.dispatch"

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
                existing.updated_at = datetime.now(UTC)
                session.add(existing)
            session.commit()

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

    def case(self, case_id: UUID) -> RoutedCase | None:
        """Routing's record of a case."""
        with Session(self.engine) as session:
            return session.get(RoutedCase, case_id)
