"""Redelivery of failed webhook deliveries and the retention of their kept events, on SQLite and PostgreSQL: the
delivery job (against a real HTTP server as the back office) and the store, without the broker."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, update
from sqlmodel import Session, col

from services.routing.models import Destination, WebhookDelivery
from services.routing.settings import Settings
from services.routing.store import RoutingStore
from services.routing.webhooks import (
    NotRedeliverable,
    WebhookSender,
    WebhookStore,
    deliveries_counter,
    delivery_for,
    listed,
)
from shared import events
from shared.envelope import build_event
from shared.retention import Deletion
from tests.factories import submitted
from tests.routing.test_webhooks import SECRET, BackOffice, verify

KEEP = timedelta(days=30)


def add_delivery(engine: Engine, url: str | None, created_at: datetime) -> WebhookDelivery:
    """A destination with a webhook at ``url`` (none: without one) and a pending delivery of a case to it."""
    destination = Destination(destination_id=uuid.uuid4(), name="Test", authority_ars="09", webhook_url=url,
                              webhook_secret=SECRET if url else None)
    application = submitted()
    event = build_event(event_type=events.DISPATCHED_V1, source="/ozg/routing", subject=str(application.case_id),
                        data=application)
    delivery = delivery_for(destination, event, application.case_id)
    RoutingStore(engine).upsert_destination(destination)
    delivery.created_at = delivery.next_attempt_at = created_at
    with Session(engine) as session:
        session.add(delivery)
        session.commit()
        session.refresh(delivery)
    return delivery


def fail(engine: Engine, delivery_id: uuid.UUID, first_failed_at: datetime) -> None:
    """Mark a delivery failed at ``first_failed_at``, with its body kept."""
    with engine.begin() as connection:
        connection.execute(update(WebhookDelivery).where(col(WebhookDelivery.delivery_id) == delivery_id)
                           .values(status="failed", settled_at=first_failed_at, first_failed_at=first_failed_at))


def refusal(store: WebhookStore, delivery_id: uuid.UUID, now: datetime) -> str:
    with pytest.raises(NotRedeliverable) as refused:
        store.redeliver(delivery_id, now, KEEP)
    return refused.value.kind


async def test_a_redelivered_delivery_gets_a_fresh_window_and_numbers_its_attempts_on(engine: Engine) -> None:
    settings = Settings(webhook_allow_http_loopback=True, webhook_backoff_base_s=0.01, webhook_timeout_s=2.0)
    sender = WebhookSender(engine, settings, deliveries_counter(CollectorRegistry()))
    store = sender.store
    # Dispatched two days ago: without a fresh window a 5xx now would end it at once.
    with BackOffice([(401, 0.0), (500, 0.0), (200, 0.0)]) as office:
        delivery = add_delivery(engine, office.url, datetime.now(UTC) - timedelta(days=2))
        async with httpx.AsyncClient(timeout=2.0) as client:
            assert await sender.work_once(client) == 1
            failed = store.delivery(delivery.delivery_id)
            assert failed is not None
            assert (failed.status, failed.body, failed.first_failed_at) == ("failed", delivery.body,
                                                                            failed.settled_at)

            now = datetime.now(UTC)
            pending = store.redeliver(delivery.delivery_id, now, KEEP)
            assert (pending.status, pending.next_attempt_at, pending.redelivered_at) == ("pending", now, now)
            assert pending.settled_at is None
            assert pending.first_failed_at == failed.first_failed_at  # the keep time does not start again
            assert not listed(pending, True, KEEP, now).redeliverable
            # A second operator (or replica) loses the compare-and-set.
            assert refusal(store, delivery.delivery_id, now) == "not-failed"

            assert await sender.work_once(client) == 1
            retried = store.delivery(delivery.delivery_id)
            assert retried is not None
            assert (retried.status, retried.last_error) == ("pending", "HTTP 500")
            await make_due(engine, store, delivery.delivery_id)
            assert await sender.work_once(client) == 1

    done = store.delivery(delivery.delivery_id)
    assert done is not None
    assert (done.status, done.body) == ("delivered", "")
    assert [(a.attempt, a.outcome, a.status_code) for a in store.attempts(delivery.delivery_id)] == [
        (1, "failed", 401), (2, "retry", 500), (3, "delivered", 200)]
    assert refusal(store, delivery.delivery_id, datetime.now(UTC)) == "not-failed"
    assert {headers["ce-id"] for headers, _ in office.requests} == {delivery.event_id}
    assert all(verify(SECRET, h["x-ozg-timestamp"], body, h["x-ozg-signature"]) for h, body in office.requests)


async def make_due(engine: Engine, store: WebhookStore, delivery_id: uuid.UUID) -> None:
    """Make the scheduled retry due now, as if its back-off had passed."""
    with engine.begin() as connection:
        connection.execute(update(WebhookDelivery).where(col(WebhookDelivery.delivery_id) == delivery_id)
                           .values(next_attempt_at=datetime.now(UTC) - timedelta(seconds=1)))


def test_kept_events_are_deleted_after_the_keep_time_and_the_deletion_recorded(engine: Engine) -> None:
    store = WebhookStore(engine)
    now = datetime.now(UTC)
    old = add_delivery(engine, "https://backoffice.example/ozg", now - timedelta(days=40))
    young = add_delivery(engine, "https://backoffice.example/ozg", now - timedelta(days=2))
    fail(engine, old.delivery_id, now - KEEP - timedelta(hours=1))
    fail(engine, young.delivery_id, now - timedelta(days=1))
    flags = {d.delivery_id: listed(d, has_body, KEEP, now).redeliverable for d, has_body in store.failed(10, 0)}
    # Past its keep time it is refused at once, before the retention job has run.
    assert flags == {old.delivery_id: False, young.delivery_id: True}
    assert refusal(store, old.delivery_id, now) == "body-deleted"

    cutoff = now - KEEP
    assert store.expired_cases(cutoff, 10) == [old.case_id]
    assert store.clear_expired(old.case_id, cutoff, now) == 1
    assert store.clear_expired(old.case_id, cutoff, now) == 0  # a second round finds nothing
    assert store.expired_cases(cutoff, 10) == []
    cleared = store.delivery(old.delivery_id)
    assert cleared is not None
    assert (cleared.status, cleared.body) == ("failed", "")
    with Session(engine) as session:
        deletion = session.get(Deletion, old.case_id)
        assert deletion is not None
        assert (deletion.categories, deletion.published_at) == ("webhook_deliveries", None)
        assert session.get(Deletion, young.case_id) is None
    entries = {d.delivery_id: listed(d, has_body, KEEP, now) for d, has_body in store.failed(10, 0)}
    assert (entries[old.delivery_id].redeliverable, entries[old.delivery_id].redeliverable_until) == (False, None)
    assert refusal(store, old.delivery_id, now) == "body-deleted"
    assert refusal(store, uuid.uuid4(), now) == "unknown-delivery"
    assert store.redeliver(young.delivery_id, now, KEEP).status == "pending"


def test_a_destination_without_a_webhook_gets_no_redelivery(engine: Engine) -> None:
    store = WebhookStore(engine)
    now = datetime.now(UTC)
    delivery = add_delivery(engine, None, now)
    fail(engine, delivery.delivery_id, now)
    assert refusal(store, delivery.delivery_id, now) == "no-webhook"


def test_of_two_concurrent_redeliveries_one_wins(engine: Engine) -> None:
    store = WebhookStore(engine)
    now = datetime.now(UTC)
    delivery = add_delivery(engine, "https://backoffice.example/ozg", now)
    fail(engine, delivery.delivery_id, now)
    outcomes: list[str] = []
    start = threading.Barrier(4)

    def redeliver() -> None:
        start.wait()
        try:
            store.redeliver(delivery.delivery_id, now, KEEP)
            outcomes.append("pending")
        except NotRedeliverable as exc:
            outcomes.append(exc.kind)

    threads = [threading.Thread(target=redeliver) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["not-failed"] * 3 + ["pending"]


def sibling(engine: Engine, of: WebhookDelivery, created_at: datetime) -> WebhookDelivery:
    """A later event of the same case to the same destination (its withdrawal, say)."""
    event_id = str(uuid.uuid4())
    later = WebhookDelivery(delivery_id=uuid.uuid4(), event_id=event_id, destination_id=of.destination_id,
                            case_id=of.case_id, headers={**of.headers, "ce-id": event_id}, body=of.body,
                            created_at=created_at, next_attempt_at=created_at)
    with Session(engine) as session:
        session.add(later)
        session.commit()
        session.refresh(later)
    return later


async def test_a_case_goes_back_whole_in_order_and_never_behind_a_later_event(engine: Engine) -> None:
    settings = Settings(webhook_allow_http_loopback=True, webhook_timeout_s=2.0)
    sender = WebhookSender(engine, settings, deliveries_counter(CollectorRegistry()))
    store = sender.store
    now = datetime.now(UTC)
    with BackOffice([(200, 0.0), (200, 0.0)]) as office:
        dispatched = add_delivery(engine, office.url, now - timedelta(hours=3))
        withdrawal = sibling(engine, dispatched, now - timedelta(hours=2))
        fail(engine, dispatched.delivery_id, now - timedelta(hours=2))
        fail(engine, withdrawal.delivery_id, now - timedelta(hours=1))
        # Asked for the withdrawal (the top of the clearing list): the case it withdraws goes back with it.
        store.redeliver(withdrawal.delivery_id, now, KEEP)
        assert [store.delivery(d.delivery_id).status for d in (dispatched, withdrawal)] == ["pending", "pending"]
        async with httpx.AsyncClient(timeout=2.0) as client:
            while await sender.work_once(client):
                pass
    assert [headers["ce-id"] for headers, _ in office.requests] == [dispatched.event_id, withdrawal.event_id]

    # Once the withdrawal reached the destination, the case must not follow it there.
    case = add_delivery(engine, "https://example.org/ozg", now - timedelta(hours=3))
    later = sibling(engine, case, now - timedelta(hours=2))
    fail(engine, case.delivery_id, now - timedelta(hours=2))
    with engine.begin() as connection:
        connection.execute(update(WebhookDelivery).where(col(WebhookDelivery.delivery_id) == later.delivery_id)
                           .values(status="delivered", body=""))
    assert refusal(store, case.delivery_id, now) == "out-of-order"
    assert store.delivery(case.delivery_id).status == "failed"


async def test_a_redelivery_ends_when_its_kept_event_is_due_for_deletion(engine: Engine) -> None:
    # Its 24-h window would go on, but the event may be kept only until 30 days after the first failure.
    settings = Settings(webhook_allow_http_loopback=True, webhook_backoff_base_s=600, webhook_timeout_s=2.0)
    sender = WebhookSender(engine, settings, deliveries_counter(CollectorRegistry()))
    now = datetime.now(UTC)
    with BackOffice([(500, 0.0)]) as office:
        delivery = add_delivery(engine, office.url, now - KEEP)
        fail(engine, delivery.delivery_id, now - KEEP + timedelta(seconds=60))
        sender.store.redeliver(delivery.delivery_id, now, KEEP)
        async with httpx.AsyncClient(timeout=2.0) as client:
            assert await sender.work_once(client) == 1
    ended = sender.store.delivery(delivery.delivery_id)
    assert ended is not None
    assert ended.status == "failed"
    assert ended.last_error is not None
    assert ended.last_error.startswith("gave up after")
    assert ended.last_error.endswith("HTTP 500")
