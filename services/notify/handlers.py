"""Notify's consumers: turn case events into messages to the applicant and report each outcome on
``ozg.notifications``.

Each event is claimed (processed-event record plus a pending notification, one transaction) before anything is
sent, so a redelivered event never sends a second message. Logs carry ids only, never contact data.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from uuid import UUID

import anyio.to_thread
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage
from prometheus_client import CollectorRegistry, Counter

from services.notify.channels import Channel
from services.notify.messages import Renderer, service_name
from services.notify.models import Contact, Notification, NotificationStatus
from services.notify.settings import Settings
from services.notify.store import Claimed, NotifyStore, UnknownContactError
from shared import events, topics
from shared.envelope import Envelope, InvalidEvent, build_event, derived_event_id
from shared.events import (
    ApplicationRouted,
    ApplicationSubmitted,
    ApplicationUnroutable,
    CaseStatus,
    CaseStatusChanged,
    NotificationOutcome,
    ReplyChannel,
)
from shared.kafka import publish, read_event

log = logging.getLogger(__name__)

SOURCE = "/ozg/notify"
INTERRUPTED = "delivery interrupted before its outcome was recorded; not sent again"

# The statuses of status-changed events the applicant hears about; routed and unroutable have their own events.
ANNOUNCED_STATUSES = frozenset(
    {
        CaseStatus.RECEIVED,
        CaseStatus.REJECTED,
        CaseStatus.IN_PROGRESS,
        CaseStatus.INFORMATION_REQUESTED,
        CaseStatus.DECIDED,
        CaseStatus.CLOSED,
        CaseStatus.WITHDRAWN,
    }
)


@dataclass(frozen=True)
class Trigger:
    """What an event asks notify to tell the applicant, read from the event alone."""

    case_id: UUID
    template: str
    # Template variables the event itself supplies (status, outcome, the authority's message).
    context: Mapping[str, object] = field(default_factory=dict)
    # The contact, when the event is the submitted event that introduces it.
    contact: Contact | None = None
    # The competent authority, when the event is the routed event that names it.
    authority_name: str | None = None


def trigger_of(envelope: Envelope) -> Trigger | None:
    """The message an event calls for, or None; an event type notify does not consume raises InvalidEvent."""
    if envelope.type == events.SUBMITTED_V1:
        submitted = envelope.data_as(ApplicationSubmitted)
        applicant = submitted.applicant
        contact = Contact(
            case_id=submitted.case_id,
            reference=submitted.reference,
            leika_key=submitted.leika_key,
            language=applicant.language,
            reply_channel=applicant.reply_channel,
            name=applicant.name,
            email=str(applicant.contact.email) if applicant.contact.email else None,
        )
        return Trigger(case_id=submitted.case_id, template="submitted", contact=contact)
    if envelope.type == events.ROUTED_V1:
        routed = envelope.data_as(ApplicationRouted)
        return Trigger(case_id=routed.case_id, template="routed", authority_name=routed.authority.name)
    if envelope.type == events.UNROUTABLE_V1:
        unroutable = envelope.data_as(ApplicationUnroutable)
        return Trigger(case_id=unroutable.case_id, template="unroutable")
    if envelope.type == events.STATUS_CHANGED_V1:
        changed = envelope.data_as(CaseStatusChanged)
        if changed.status not in ANNOUNCED_STATUSES:
            return None
        return Trigger(
            case_id=changed.case_id,
            template="status-changed",
            context={
                "status": changed.status.value,
                "outcome": changed.outcome.value if changed.outcome else None,
                "message": changed.message,
                "problems": [problem.title for problem in changed.problems],
            },
        )
    raise InvalidEvent(f"notify does not expect {envelope.type}")


class Notifier:
    """Delivers the message each event calls for, exactly once per (event, channel), and reports the outcome."""

    def __init__(
        self,
        *,
        broker: KafkaBroker,
        store: NotifyStore,
        settings: Settings,
        renderer: Renderer,
        channels: Mapping[ReplyChannel, Channel],
        registry: CollectorRegistry,
    ) -> None:
        self.broker = broker
        self.store = store
        self.settings = settings
        self.renderer = renderer
        self.channels = channels
        self.outcomes = Counter(
            "ozg_notifications", "Notifications to applicants, by channel and outcome", ["channel", "outcome"],
            registry=registry,
        )

    def context(self, contact: Contact, trigger: Trigger) -> dict[str, object]:
        """The template variables of a message: case metadata only, never the form."""
        return {
            "name": contact.name,
            "reference": contact.reference,
            "service": service_name(contact.leika_key, contact.language),
            "authority": trigger.authority_name or contact.authority_name,
            "status_url": f"{self.settings.status_base_url.rstrip('/')}/{contact.case_id}",
            "status": None,
            "outcome": None,
            "message": None,
            "problems": [],
            **trigger.context,
        }

    async def handle(self, envelope: Envelope) -> None:
        """Process one event: claim it, deliver its message, record and publish the outcome."""
        trigger = trigger_of(envelope)
        if trigger is None:
            return
        contact = trigger.contact or await anyio.to_thread.run_sync(self.store.contact, trigger.case_id)
        if contact is None:
            raise UnknownContactError(f"no contact for case {trigger.case_id}")
        # Rendered before the claim: a failure here is retried with nothing recorded yet.
        message = self.renderer.render(trigger.template, contact.language, self.context(contact, trigger))
        claim = await anyio.to_thread.run_sync(
            partial(
                self.store.claim,
                event_id=envelope.id,
                event_type=envelope.type,
                case_id=trigger.case_id,
                new_contact=trigger.contact,
                authority_name=trigger.authority_name,
            )
        )
        if not isinstance(claim, Claimed):
            await self._resume(claim.notifications)
            return
        channel = claim.notification.channel
        delivery = await self.channels[channel].deliver(claim.contact, message)
        notification = await anyio.to_thread.run_sync(
            self.store.finish,
            claim.notification.notification_id,
            NotificationStatus.SENT if delivery.ok else NotificationStatus.FAILED,
            delivery.attempts,
            delivery.error,
        )
        self._count(notification)
        await self._publish_outcome(notification)

    async def _resume(self, notifications: list[Notification]) -> None:
        """A redelivered event: send nothing, but make sure each outcome is recorded and published."""
        for notification in notifications:
            if notification.status is NotificationStatus.PENDING:
                # The earlier delivery was cut short; whether it went out is unknown, and sending again could
                # send twice. Report it failed, for an operator to follow up.
                notification = await anyio.to_thread.run_sync(
                    self.store.finish, notification.notification_id, NotificationStatus.FAILED,
                    notification.attempts, INTERRUPTED,
                )
                self._count(notification)
            # Same event id as the first time: if that publish went out, consumers drop this one.
            await self._publish_outcome(notification)

    def _count(self, notification: Notification) -> None:
        self.outcomes.labels(notification.channel.value, notification.status.value).inc()
        log.info(
            "notification %s", notification.status.value,
            extra={"notification_id": str(notification.notification_id), "case_id": str(notification.case_id),
                   "channel": notification.channel.value, "trigger_event_id": notification.trigger_event_id,
                   "attempts": notification.attempts, "error": notification.error},
        )

    async def _publish_outcome(self, notification: Notification) -> None:
        sent = notification.status is NotificationStatus.SENT
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


def register(broker: KafkaBroker, notifier: Notifier, group_id: str) -> None:
    """Subscribe notify's consumer on ``broker``."""

    async def on_event(msg: KafkaMessage) -> None:
        await notifier.handle(read_event(msg))

    # One consumer for all four topics: on Tansu, a second member in the same group makes every start-up wait
    # for a rebalance (and now and then never settle), which a single member avoids.
    broker.subscriber(
        topics.SUBMITTED, topics.ROUTED, topics.UNROUTABLE, topics.CASE_STATUS,
        group_id=group_id, auto_offset_reset="earliest", ack_policy=AckPolicy.NACK_ON_ERROR,
    )(on_event)
