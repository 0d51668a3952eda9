"""Delivery from a persisted schedule: attempts, retries with exponential back-off, outcomes, retention.

Every notification row is its own schedule. ``pending`` with ``next_attempt_at`` means "try at that time";
an attempt takes the row with a conditional update (so only one worker of any replica sends it) and holds it
as ``sending`` until its lease runs out. A temporary failure puts the row back to ``pending`` with the next
time; a permanent one, or the last attempt (``max_attempts``, ``max_age_s``), fails it. A crash loses nothing:
pending rows are picked up by the background job of any replica after a restart. An attempt cut short by a
crash is reported failed rather than sent again, as it may have gone out (a second message is worse).

Final outcomes are published on ``ozg.notifications`` under deterministic event ids and marked published; a
final row left unpublished (broker outage, crash) is published again by the background job, under the same id.
"""

import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from functools import partial
from uuid import UUID

import anyio.to_thread
from prometheus_client import CollectorRegistry, Counter

from services.notify.channels import Channel, Delivery, LetterChannel
from services.notify.models import Notification, NotificationStatus
from services.notify.ratelimit import TokenBucket
from services.notify.settings import Settings
from services.notify.store import Attempt, NotifyStore
from shared import events, topics
from shared.backoff import delay_s
from shared.envelope import build_event, derived_event_id
from shared.events import NotificationOutcome, ReplyChannel
from shared.kafka import EventBroker, publish
from shared.retention import DeletionPublisher, drain

log = logging.getLogger(__name__)

SOURCE = "/ozg/notify"
# Contacts looked up at a time by the retention round.
RETENTION_PAGE = 100
# An e-mail whose attempt was interrupted may have gone out: it is failed, never sent twice.
INTERRUPTED = "delivery interrupted before its outcome was recorded; not sent again"
NO_CONTACT = "contact data no longer held"


def now_utc() -> datetime:
    return datetime.now(UTC)


def backoff(settings: Settings, attempts: int) -> timedelta:
    """The wait after the ``attempts``-th failed attempt: ``retry_backoff_s`` doubled per attempt, capped."""
    return timedelta(seconds=delay_s(attempts, base_s=settings.retry_backoff_s, cap_s=settings.retry_backoff_max_s))


def next_step(settings: Settings, notification: Notification, delivery: Delivery, now: datetime) -> datetime | None:
    """When to try a failed attempt again, or None when the notification has failed for good."""
    if delivery.ok or not delivery.temporary or notification.attempts >= settings.max_attempts:
        return None
    retry_at = now + backoff(settings, notification.attempts)
    if retry_at - notification.created_at > timedelta(seconds=settings.max_age_s):
        return None
    return retry_at


class Deliverer:
    """Makes delivery attempts, schedules retries, publishes outcomes, and deletes contacts after retention."""

    def __init__(
        self,
        *,
        broker: EventBroker,
        store: NotifyStore,
        settings: Settings,
        channels: Mapping[ReplyChannel, Channel],
        registry: CollectorRegistry,
    ) -> None:
        self.broker = broker
        self.store = store
        self.settings = settings
        self.deletion_publisher = DeletionPublisher(store.engine, broker, settings.service_name)
        self.channels = channels
        self.limits = {
            ReplyChannel.EMAIL: TokenBucket(settings.rate_email_per_s),
            ReplyChannel.POSTFACH: TokenBucket(settings.rate_postfach_per_s),
            ReplyChannel.LETTER: TokenBucket(settings.rate_letter_per_s),
        }
        self.outcomes = Counter(
            "ozg_notifications", "Notifications to applicants, by channel and final outcome", ["channel", "outcome"],
            registry=registry,
        )
        self.retries = Counter(
            "ozg_notification_retries", "Attempts that failed temporarily and were scheduled again", ["channel"],
            registry=registry,
        )
        self.deletions = Counter(
            "ozg_notify_contacts_deleted", "Contacts deleted after the retention period", registry=registry,
        )

    def lease_until(self, now: datetime) -> datetime:
        """Until when an attempt starting at ``now`` holds its notification."""
        return now + timedelta(seconds=self.settings.attempt_lease_s)

    async def attempt(self, notification_id: UUID) -> None:
        """Make one attempt if the notification is due and no other worker has it; record and report the result."""
        now = now_utc()
        taken = await anyio.to_thread.run_sync(
            partial(self.store.start_attempt, notification_id, now=now, lease_until=self.lease_until(now))
        )
        if taken is not None:
            await self.make(taken)

    async def make(self, taken: Attempt) -> None:
        """Make the attempt ``taken`` (from :meth:`NotifyStore.start_attempt`, held by this process now): deliver,
        then record and report the result."""
        notification = taken.notification
        notification_id = notification.notification_id
        if taken.contact is None or taken.message is None:
            delivery = Delivery.permanent(NO_CONTACT)
        else:
            await self.limits[notification.channel].acquire()
            try:
                delivery = await self.channels[notification.channel].deliver(
                    notification.notification_id, taken.contact, taken.message
                )
            except Exception as exc:  # noqa: BLE001 - a channel bug fails this message, not the consumer
                # The class only: an exception's text may quote contact data.
                log.error("channel raised", extra={"notification_id": str(notification_id),
                                                   "error": type(exc).__name__})
                delivery = Delivery.permanent(f"channel error: {type(exc).__name__}")
        done = now_utc()
        retry_at = next_step(self.settings, notification, delivery, done)
        if retry_at is not None:
            await anyio.to_thread.run_sync(
                partial(self.store.record_attempt, notification_id, status=NotificationStatus.PENDING, now=done,
                        error=delivery.error, next_attempt_at=retry_at)
            )
            self.retries.labels(notification.channel.value).inc()
            log.info("notification attempt failed, retry scheduled",
                     extra={"notification_id": str(notification_id), "attempts": notification.attempts,
                            "error": delivery.error, "retry_at": retry_at.isoformat()})
            return
        status = NotificationStatus.SENT if delivery.ok else NotificationStatus.FAILED
        recorded = await anyio.to_thread.run_sync(
            partial(self.store.record_attempt, notification_id, status=status, now=done, error=delivery.error)
        )
        await self.finished(recorded)

    async def finished(self, notification: Notification) -> None:
        """Count, log and publish a final outcome (once: only if it isn't marked published yet)."""
        if notification.outcome_published_at is not None:
            return
        await self.publish_outcome(notification)
        self.outcomes.labels(notification.channel.value, notification.status.value).inc()
        log.info(
            "notification %s", notification.status.value,
            extra={"notification_id": str(notification.notification_id), "case_id": str(notification.case_id),
                   "channel": notification.channel.value, "trigger_event_id": notification.trigger_event_id,
                   "attempts": notification.attempts, "error": notification.error},
        )

    async def publish_outcome(self, notification: Notification) -> None:
        """Publish a final outcome under its deterministic event id and mark it published."""
        sent = notification.status == NotificationStatus.SENT
        event_type = events.NOTIFICATION_SENT_V1 if sent else events.NOTIFICATION_FAILED_V1
        event = build_event(
            event_type=event_type,
            source=SOURCE,
            subject=str(notification.case_id),
            event_id=derived_event_id(str(notification.notification_id), event_type),
            data=NotificationOutcome(
                notification_id=notification.notification_id,
                case_id=notification.case_id,
                channel=notification.channel,
                trigger_event_id=notification.trigger_event_id,
                trigger_type=notification.trigger_type,
                attempts=notification.attempts,
                error=notification.error,
            ),
        )
        await publish(self.broker, topics.NOTIFICATIONS, event)
        await anyio.to_thread.run_sync(self.store.mark_published, notification.notification_id, now_utc())

    async def sweep(self) -> None:
        """One round of the background job: due retries, lapsed attempts, unpublished outcomes."""
        now = now_utc()
        for notification_id, channel in await anyio.to_thread.run_sync(self.store.lapsed, now):
            repeatable = channel in self.channels and self.channels[channel].repeatable
            if repeatable and await anyio.to_thread.run_sync(
                    partial(self.store.retry_lapsed, notification_id, now=now)):
                continue  # due at once: attempted below, and the receiver recognises the repeat
            failed = await anyio.to_thread.run_sync(
                partial(self.store.fail_unsent, notification_id, now=now, error=INTERRUPTED)
            )
            if failed is not None:
                await self.finished(failed)
        for notification_id in await anyio.to_thread.run_sync(self.store.due, now):
            await self.attempt(notification_id)
        # Outcomes recorded a lease ago and still unpublished: their publish failed or the process died.
        grace = now - timedelta(seconds=self.settings.attempt_lease_s)
        for notification in await anyio.to_thread.run_sync(self.store.unpublished, grace):
            await self.finished(notification)

    async def purge(self) -> int:
        """Delete the contacts whose retention period ran out, and publish each deletion; returns how many. Also
        removes the letter files a crash left half-written (``LetterChannel.sweep_parts``)."""
        now = now_utc()
        cutoff = now - timedelta(days=self.settings.retention_days)
        letters = self.channels.get(ReplyChannel.LETTER)
        if isinstance(letters, LetterChannel):
            # First, needing no database: what crashes left of letters being written.
            try:
                swept = await anyio.to_thread.run_sync(letters.sweep_parts)
            except OSError as exc:  # must not hold up the deletion of contacts
                log.warning("sweep of half-written letters failed", extra={"error": type(exc).__name__})
            else:
                if swept:
                    log.info("removed letter files a crash left half-written", extra={"count": swept})

        async def delete(expired: tuple[UUID, str]) -> None:
            case_id, reference = expired
            # Letters still in the outbox carry the name and address: the files first, then the records.
            discarded = (await anyio.to_thread.run_sync(letters.discard, reference)
                         if isinstance(letters, LetterChannel) else 0)
            await anyio.to_thread.run_sync(self.store.delete_contact, case_id, now, ["letters"] if discarded else [])

        await drain(lambda: anyio.to_thread.run_sync(self.store.expired_contacts, cutoff, RETENTION_PAGE), delete)
        dropped = await anyio.to_thread.run_sync(self.store.drop_parked, cutoff, now)
        if dropped:
            log.warning("parked events dropped after retention: their cases' submitted events never came",
                        extra={"events": dropped})
        published = await self.deletion_publisher.publish_pending()
        self.deletions.inc(published)
        return published
