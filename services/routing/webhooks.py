"""Webhook delivery (SPEC §5): each event routing sends to a destination with a webhook (the dispatched case, a
withdrawal) is POSTed to it as well, signed, in the order of the case's events.

The body is the event's JSON data, its CloudEvents attributes travel as ``ce-*`` HTTP headers (the CloudEvents HTTP
binary mode), ``X-OZG-Timestamp`` carries Unix seconds and ``X-OZG-Signature`` the hex HMAC-SHA512 of
``timestamp + "." + body`` under the destination's secret.

A delivery row is written in the same transaction as the routing decision (or the withdrawal), so the schedule
survives restarts and crashes. A background job claims due deliveries by compare-and-set on their due time (a
lease: a replica that dies mid-attempt leaves a delivery that becomes due again), attempts them, and records every
attempt. Timeouts, connection errors and 5xx are retried with exponential back-off and jitter until
``webhook_max_age_s`` (24 h) after the dispatch (or a redelivery); any other answer outside 2xx fails at once. A
failed delivery is flagged (``status = failed``, counted, logged) for an operator; the event stays on the
destination's Kafka topic either way.

A delivered delivery drops its body (the event, personal data) at once. A failed one keeps it for
``webhook_failed_keep_days`` after it first failed: an operator may put it back on the schedule once the receiver is
fixed (``redeliver``: due now, a fresh window, the destination's current URL and secret, the same ``ce-id``). Then
``WebhookRetention`` clears it and publishes the deletion, and it can no longer be redelivered.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import anyio.to_thread
import httpx
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy import Engine, exists, update
from sqlalchemy import select as sa_select
from sqlalchemy.orm import aliased, defer
from sqlmodel import Session, col, select

from services.routing.models import Destination, FailedWebhookDelivery, WebhookAttempt, WebhookDelivery
from services.routing.settings import Settings
from shared import backoff
from shared.envelope import OutgoingEvent
from shared.kafka import EventBroker
from shared.retention import DeletionPublisher, drain, record_deletion

log = logging.getLogger(__name__)

_NS = uuid.UUID("0b6f5d0e-6f61-4c1e-8d5e-5f0e1d7b2a90")
PENDING, DELIVERED, FAILED, RETRY = "pending", "delivered", "failed", "retry"
SERVICE = "routing"
# What a deletion event names when the retention job clears kept bodies.
KEPT_CATEGORY = "webhook_deliveries"
# Cases looked up at a time by the retention round (shared.retention.drain goes on until none is left).
RETENTION_BATCH = 100


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The hex HMAC-SHA512 of ``timestamp + "." + body``."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha512).hexdigest()


def delivery_for(destination: Destination, event: OutgoingEvent, case_id: uuid.UUID) -> WebhookDelivery:
    """The delivery of ``event`` to ``destination``'s webhook; its id is derived, so a repeat is the same row."""
    headers = {name.replace("_", "-"): value for name, value in event.headers.items()
               if name.startswith("ce_") or name in ("content-type", "traceparent")}
    return WebhookDelivery(
        delivery_id=uuid.uuid5(_NS, f"{event.event_id}|{destination.destination_id}"),
        event_id=event.event_id, destination_id=destination.destination_id, case_id=case_id,
        headers=headers, body=event.value.decode(),
    )


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_url(url: str, settings: Settings) -> bool:
    """Whether routing may push to ``url``: https, or with ``webhook_allow_http_loopback`` (a developer's machine)
    plain http to a loopback address."""
    scheme = urlsplit(url).scheme
    return scheme == "https" or (scheme == "http" and settings.webhook_allow_http_loopback and _loopback(url))


@dataclass(frozen=True)
class Attempt:
    """What one HTTP attempt came to."""

    outcome: str  # delivered | retry | failed
    status_code: int | None = None
    error: str | None = None


class NotRedeliverable(Exception):
    """Why a delivery cannot be put back on the schedule: ``kind`` ``unknown-delivery``, ``not-failed``,
    ``body-deleted``, ``out-of-order`` or ``no-webhook``."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def kept_until(delivery: WebhookDelivery, keep: timedelta) -> datetime | None:
    """Until when a failed delivery keeps its body for a redelivery (None: never failed)."""
    return delivery.first_failed_at + keep if delivery.first_failed_at is not None else None


def listed(delivery: WebhookDelivery, has_body: bool, keep: timedelta, now: datetime) -> FailedWebhookDelivery:
    """A delivery as the clearing API answers it."""
    until = kept_until(delivery, keep) if has_body else None
    return FailedWebhookDelivery(
        delivery_id=delivery.delivery_id, case_id=delivery.case_id, destination_id=delivery.destination_id,
        event_id=delivery.event_id, status=delivery.status,
        attempts=delivery.attempts, last_error=delivery.last_error, failed_at=delivery.settled_at,
        redeliverable=delivery.status == FAILED and until is not None and now < until, redeliverable_until=until,
    )


# A failed delivery that still keeps its event: redeliverable while within the keep time, cleared after it.
_FAILED_AND_KEPT = (col(WebhookDelivery.status) == FAILED, col(WebhookDelivery.body) != "")


class WebhookStore:
    """The persisted schedule."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def due(self, now: datetime, limit: int) -> list[WebhookDelivery]:
        """Deliveries due now; one waits while an earlier delivery of its case to the same destination is still
        pending, so a back office never gets a case's withdrawal before the case itself."""
        earlier = aliased(WebhookDelivery)
        blocked = exists().where(
            col(earlier.case_id) == col(WebhookDelivery.case_id),
            col(earlier.destination_id) == col(WebhookDelivery.destination_id),
            col(earlier.status) == PENDING, col(earlier.created_at) < col(WebhookDelivery.created_at),
        )
        with Session(self.engine) as session:
            query = select(WebhookDelivery).where(
                col(WebhookDelivery.status) == PENDING, col(WebhookDelivery.next_attempt_at) <= now, ~blocked,
            ).order_by(col(WebhookDelivery.next_attempt_at)).limit(limit)
            return list(session.exec(query).all())

    def claim(self, delivery: WebhookDelivery, lease_until: datetime) -> bool:
        """Take a due delivery for one attempt; of two replicas only one gets it."""
        statement = update(WebhookDelivery).where(
            col(WebhookDelivery.delivery_id) == delivery.delivery_id, col(WebhookDelivery.status) == PENDING,
            col(WebhookDelivery.next_attempt_at) == delivery.next_attempt_at,
        ).values(next_attempt_at=lease_until, attempts=delivery.attempts + 1)
        with self.engine.begin() as connection:
            return connection.execute(statement).rowcount == 1

    def settle(self, delivery_id: uuid.UUID, attempt_no: int, result: Attempt, next_at: datetime | None) -> None:
        """Record the attempt; schedule the next one, or settle the delivery (and drop its body)."""
        now = datetime.now(UTC)
        with Session(self.engine) as session:
            session.add(WebhookAttempt(delivery_id=delivery_id, attempt=attempt_no, attempted_at=now,
                                       status_code=result.status_code, error=result.error, outcome=result.outcome))
            row = session.get(WebhookDelivery, delivery_id)
            if row is not None:
                row.last_error = result.error
                if result.outcome == RETRY and next_at is not None:
                    row.next_attempt_at = next_at
                else:
                    row.status = DELIVERED if result.outcome == DELIVERED else FAILED
                    row.settled_at = now
                    if row.status == DELIVERED:
                        row.body = ""  # personal data: a failed one keeps it for a redelivery, for a while
                    elif row.first_failed_at is None:
                        row.first_failed_at = now
                session.add(row)
            session.commit()

    def attempts(self, delivery_id: uuid.UUID) -> list[WebhookAttempt]:
        with Session(self.engine) as session:
            query = select(WebhookAttempt).where(col(WebhookAttempt.delivery_id) == delivery_id)
            return list(session.exec(query.order_by(col(WebhookAttempt.attempt))).all())

    def delivery(self, delivery_id: uuid.UUID) -> WebhookDelivery | None:
        with Session(self.engine) as session:
            return session.get(WebhookDelivery, delivery_id)

    def failed(self, limit: int, offset: int) -> list[tuple[WebhookDelivery, bool]]:
        """Deliveries given up on, the most recent first, each with whether it still keeps its body: the operator's
        clearing list for webhooks. The bodies themselves are not loaded."""
        with Session(self.engine) as session:
            query = (select(WebhookDelivery, col(WebhookDelivery.body) != "")
                     .options(defer(WebhookDelivery.body))  # type: ignore[arg-type]  # SQLModel types it as a str
                     .where(WebhookDelivery.status == FAILED)
                     .order_by(col(WebhookDelivery.settled_at).desc()).limit(limit).offset(offset))
            return [(row, bool(has_body)) for row, has_body in session.exec(query).all()]

    def redeliver(self, delivery_id: uuid.UUID, now: datetime, keep: timedelta) -> WebhookDelivery:
        """Put a failed delivery back on the schedule: pending, due ``now``, its retry window starting ``now``;
        raises ``NotRedeliverable``. The delivery job takes it like any other (same ``ce-id``, the destination's
        webhook URL and secret at the attempt) and numbers its attempts on.

        The case's other failed deliveries to the same destination that still keep their event go back with it,
        so the job sends them in their order (a withdrawal after the case it withdraws); if a later event of the
        case already reached the destination, nothing goes back (``out-of-order``).
        """
        with Session(self.engine) as session:
            row = session.get(WebhookDelivery, delivery_id)
            if row is None:
                raise NotRedeliverable("unknown-delivery", "No webhook delivery with this id.")
            if row.status != FAILED:
                raise NotRedeliverable("not-failed", f"The delivery is {row.status}, not failed.")
            until = kept_until(row, keep)
            if not row.body or until is None or until <= now:
                raise NotRedeliverable("body-deleted", "The event of this delivery was deleted after "
                                       "ROUTING_WEBHOOK_FAILED_KEEP_DAYS; the destination's topic keeps it only "
                                       "while OZG_KAFKA_RETENTION_DAYS lasts.")
            destination = session.get(Destination, row.destination_id)
            if destination is None or not destination.webhook_url:
                raise NotRedeliverable("no-webhook", "The destination has no webhook now; register one first.")
            siblings = session.connection().execute(
                sa_select(col(WebhookDelivery.delivery_id), col(WebhookDelivery.status),
                          col(WebhookDelivery.created_at), col(WebhookDelivery.body) != "",
                          col(WebhookDelivery.first_failed_at))
                .where(col(WebhookDelivery.case_id) == row.case_id,
                       col(WebhookDelivery.destination_id) == row.destination_id)).all()
        group = {d for d, status, _, kept, first in siblings
                 if status == FAILED and kept and first is not None and first + keep > now}
        if delivery_id not in group:  # another operator or replica was quicker
            raise NotRedeliverable("not-failed", "The delivery changed meanwhile; look at it again.")
        earliest = min(created for d, _, created, _, _ in siblings if d in group)
        if any(status == DELIVERED and created > earliest for _, status, created, _, _ in siblings):
            raise NotRedeliverable("out-of-order", "A later event of this case already reached the destination (its "
                                   "withdrawal, say): delivering this one now would reverse their order.")
        # Compare-and-set: of two operators (or replicas) only one puts them back, and never after the retention job
        # cleared a body. Pending again, the delivery job's own compare-and-set (claim) takes over.
        statement = update(WebhookDelivery).where(
            col(WebhookDelivery.delivery_id).in_(group), *_FAILED_AND_KEPT,
            col(WebhookDelivery.first_failed_at) > now - keep,
        ).values(status=PENDING, next_attempt_at=now, redelivered_at=now, settled_at=None)
        with self.engine.begin() as connection:
            if connection.execute(statement).rowcount != len(group):
                connection.rollback()
                raise NotRedeliverable("not-failed", "The delivery changed meanwhile; look at it again.")
        again = self.delivery(delivery_id)
        assert again is not None  # deliveries are never deleted
        return again

    def expired_cases(self, cutoff: datetime, limit: int) -> list[uuid.UUID]:
        """Cases with a failed delivery that keeps its body although it first failed before ``cutoff``."""
        with Session(self.engine) as session:
            query = select(WebhookDelivery.case_id).where(*self._expired(cutoff)).distinct().limit(limit)
            return list(session.exec(query).all())

    def clear_expired(self, case_id: uuid.UUID, cutoff: datetime, now: datetime) -> int:
        """Clear the bodies of the case's failed deliveries kept since before ``cutoff`` and record the deletion
        for publishing, in one transaction; returns how many were cleared."""
        with Session(self.engine) as session:
            cleared = session.exec(update(WebhookDelivery).where(
                col(WebhookDelivery.case_id) == case_id, *self._expired(cutoff)).values(body="")).rowcount
            if cleared:
                record_deletion(session, case_id, [KEPT_CATEGORY], now)
            session.commit()
            return cleared

    @staticmethod
    def _expired(cutoff: datetime) -> tuple[Any, ...]:
        return (*_FAILED_AND_KEPT, col(WebhookDelivery.first_failed_at) <= cutoff)


class WebhookSender:
    """The background job that works through the schedule."""

    def __init__(self, engine: Engine, settings: Settings, deliveries: Counter) -> None:
        self.store = WebhookStore(engine)
        self.engine = engine
        self.settings = settings
        self.deliveries = deliveries

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=self.settings.webhook_timeout_s, follow_redirects=False) as client:
            while True:
                try:
                    await self.work_once(client)
                except Exception as exc:  # noqa: BLE001 - a database hiccup must not end the job
                    log.warning("webhook round failed", extra={"error": type(exc).__name__})
                await asyncio.sleep(self.settings.webhook_poll_interval_s)

    async def work_once(self, client: httpx.AsyncClient) -> int:
        """Attempt every due delivery once; returns how many were attempted."""
        now = datetime.now(UTC)
        due = await anyio.to_thread.run_sync(self.store.due, now, self.settings.webhook_batch)
        lease = now + timedelta(seconds=self.settings.webhook_timeout_s + 30)
        claimed = [d for d in due if await anyio.to_thread.run_sync(self.store.claim, d, lease)]
        await asyncio.gather(*(self._attempt(client, d) for d in claimed))
        return len(claimed)

    async def _attempt(self, client: httpx.AsyncClient, delivery: WebhookDelivery) -> None:
        attempt_no = delivery.attempts + 1
        destination = await anyio.to_thread.run_sync(self._destination, delivery.destination_id)
        if destination is None or not destination.webhook_url or not destination.webhook_secret:
            result = Attempt(FAILED, error="the destination has no webhook any more")
        elif not allowed_url(destination.webhook_url, self.settings):
            result = Attempt(FAILED, error="the webhook URL is not https")
        else:
            result = await self._post(client, destination.webhook_url, destination.webhook_secret, delivery)
        next_at = None
        if result.outcome == RETRY:
            next_at = datetime.now(UTC) + timedelta(seconds=backoff.delay_s(
                attempt_no, base_s=self.settings.webhook_backoff_base_s, cap_s=self.settings.webhook_backoff_max_s,
                jitter=True))
            give_up_at = delivery.window_start + timedelta(seconds=self.settings.webhook_max_age_s)
            if delivery.first_failed_at is not None:
                # A redelivery ends with the kept event: past that, its personal data is due for deletion.
                give_up_at = min(give_up_at, delivery.first_failed_at + self.settings.webhook_failed_keep)
            if next_at > give_up_at:
                result = Attempt(FAILED, result.status_code, f"gave up after {attempt_no} attempts: {result.error}")
        await anyio.to_thread.run_sync(self.store.settle, delivery.delivery_id, attempt_no, result, next_at)
        self.deliveries.labels(result.outcome).inc()
        if result.outcome == FAILED:
            log.error("webhook delivery failed; flagged for clearing",
                      extra={"case_id": str(delivery.case_id), "destination_id": str(delivery.destination_id),
                             "attempts": attempt_no, "error": result.error})

    def _destination(self, destination_id: uuid.UUID) -> Destination | None:
        with Session(self.engine) as session:
            return session.get(Destination, destination_id)

    @staticmethod
    async def _post(client: httpx.AsyncClient, url: str, secret: str, delivery: WebhookDelivery) -> Attempt:
        body = delivery.body.encode()
        timestamp = str(int(time.time()))
        headers = {**delivery.headers, "content-type": "application/json", "X-OZG-Timestamp": timestamp,
                   "X-OZG-Signature": sign(secret, timestamp, body)}
        try:
            # Only the status counts. The answer's body is never read: a broken one (a Content-Encoding it does not
            # have) would raise after a 2xx, and an endless one would hold the attempt.
            async with client.stream("POST", url, content=body, headers=headers) as answer:
                status_code = answer.status_code
        except httpx.TimeoutException:
            return Attempt(RETRY, error="timeout")
        except httpx.TransportError as exc:
            return Attempt(RETRY, error=f"connection error: {type(exc).__name__}")
        except httpx.HTTPError as exc:  # whatever else httpx refuses: an answer that is not HTTP, say
            return Attempt(RETRY, error=f"request error: {type(exc).__name__}")
        if 200 <= status_code < 300:
            return Attempt(DELIVERED, status_code)
        if status_code >= 500:
            return Attempt(RETRY, status_code, f"HTTP {status_code}")
        return Attempt(FAILED, status_code, f"HTTP {status_code}")


class WebhookRetention:
    """Clears the bodies of failed deliveries ``webhook_failed_keep_days`` after they first failed (SPEC §7), and
    publishes each deletion (``de.ozg.personal-data.deleted.v1``, service ``routing``) as intake and notify do."""

    def __init__(self, engine: Engine, broker: EventBroker, settings: Settings) -> None:
        self.store = WebhookStore(engine)
        self.keep = settings.webhook_failed_keep
        self.publisher = DeletionPublisher(engine, broker, SERVICE)

    async def purge(self) -> int:
        """Clear what was kept too long, then publish every deletion not yet published (this round's and any an
        earlier round left); returns how many were published."""
        now = datetime.now(UTC)
        cutoff = now - self.keep

        async def clear(case_id: uuid.UUID) -> None:
            await anyio.to_thread.run_sync(self.store.clear_expired, case_id, cutoff, now)

        await drain(lambda: anyio.to_thread.run_sync(self.store.expired_cases, cutoff, RETENTION_BATCH), clear)
        return await self.publisher.publish_pending()


def redeliveries_counter(registry: CollectorRegistry) -> Counter:
    """``ozg_webhook_redeliveries_total``: failed deliveries an operator put back on the schedule."""
    return Counter("ozg_webhook_redeliveries", "Failed webhook deliveries put back on the schedule by an operator",
                   registry=registry)


def deliveries_counter(registry: CollectorRegistry) -> Counter:
    """``ozg_webhook_deliveries_total{outcome}``: every attempt by what it came to."""
    counter = Counter("ozg_webhook_deliveries", "Webhook delivery attempts by outcome (delivered, retry, failed)",
                      ["outcome"], registry=registry)
    # Every outcome exists from the start, so rates and alerts see 0 rather than no data.
    for outcome in (DELIVERED, RETRY, FAILED):
        counter.labels(outcome)
    return counter
