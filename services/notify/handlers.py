"""Notify's consumers: turn case events into messages to the applicant and report each outcome on
``ozg.notifications``.

Each event is claimed (processed-event record plus a notification due at once, one transaction) before anything
is sent, so a redelivered event never sends a second message; the first attempt is made right away, any retry
from the persisted schedule (:mod:`services.notify.delivery`). Logs carry ids only, never contact data.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from uuid import UUID

import anyio.to_thread
from faststream.kafka import KafkaBroker, KafkaMessage

from services.notify.delivery import Deliverer, now_utc
from services.notify.messages import Renderer, service_name
from services.notify.models import FINAL_STATUSES, Contact, ParkedEvent
from services.notify.settings import Settings
from services.notify.store import Attempt, Claimed, NotifyStore, Seen
from shared import events, topics
from shared.envelope import Envelope, InvalidEvent
from shared.events import (
    ENDED_STATUSES,
    ApplicationRouted,
    ApplicationSubmitted,
    ApplicationUnroutable,
    CaseStatus,
    CaseStatusChanged,
)
from shared.kafka import group_subscription, read_event

log = logging.getLogger(__name__)

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

# The statuses that end a case: the retention period of its contact data runs from the first of them (SPEC §7).


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
    # Whether the event ends the case (closed, withdrawn, rejected), starting the retention clock.
    ends_case: bool = False
    # Whether the event undoes a withdrawal (routing refused it as too late): said even though the case ended.
    reopens: bool = False


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
            postfach_id=applicant.contact.postfach_id,
        )
        if applicant.contact.address is not None:
            address = applicant.contact.address
            contact.street, contact.postal_code = address.street, address.postal_code
            contact.city, contact.country = address.city, address.country
        return Trigger(case_id=submitted.case_id, template="submitted", contact=contact)
    if envelope.type == events.ROUTED_V1:
        routed = envelope.data_as(ApplicationRouted)
        return Trigger(case_id=routed.case_id, template="routed", authority_name=routed.authority.name)
    if envelope.type == events.UNROUTABLE_V1:
        unroutable = envelope.data_as(ApplicationUnroutable)
        return Trigger(case_id=unroutable.case_id, template="unroutable")
    if envelope.type == events.STATUS_CHANGED_V1:
        changed = envelope.data_as(CaseStatusChanged)
        if changed.refuses_withdrawal:
            # The confirmation of the withdrawal sent before no longer holds.
            return Trigger(case_id=changed.case_id, template="withdrawal-refused",
                           context={"status": changed.status.value},
                           ends_case=changed.status in ENDED_STATUSES, reopens=True)
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
            ends_case=changed.status in ENDED_STATUSES,
        )
    raise InvalidEvent(f"notify does not expect {envelope.type}")


class Notifier:
    """Turns each event into the message it calls for, exactly once per (event, channel), and hands it over."""

    def __init__(
        self, *, store: NotifyStore, settings: Settings, renderer: Renderer, deliverer: Deliverer
    ) -> None:
        self.store = store
        self.settings = settings
        self.renderer = renderer
        self.deliverer = deliverer

    def context(self, contact: Contact, trigger: Trigger) -> dict[str, object]:
        """The template variables of a message: case metadata only, never the form."""
        return {
            "name": contact.name,
            "reference": contact.reference,
            "service": service_name(contact.leika_key, contact.language),
            "authority": trigger.authority_name or contact.authority_name,
            "status_url": f"{self.settings.status_base_url.rstrip('/')}/{contact.case_id}",
            "channel": contact.reply_channel.value,
            "status": None,
            "outcome": None,
            "message": None,
            "problems": [],
            **trigger.context,
        }

    async def handle(self, envelope: Envelope) -> None:
        """Process one event: claim it with its rendered message, then make the first delivery attempt.

        An event for a case whose contact is not known yet is parked and handled when the submitted event comes.
        """
        trigger = trigger_of(envelope)
        if trigger is None:
            return
        contact = trigger.contact or await anyio.to_thread.run_sync(self.store.contact, trigger.case_id)
        if contact is None:
            if await anyio.to_thread.run_sync(self.store.processed, envelope.id):
                # A redelivery after the contact was deleted (retention): it took effect long ago.
                return
            if await anyio.to_thread.run_sync(self.store.pass_over_deleted, trigger.case_id, envelope.id):
                # An event after the retention deleted the case's data: nobody to tell, and nothing to keep.
                return
            # The submitted event travels on another topic and may come later: park this one until it does.
            await anyio.to_thread.run_sync(self.store.park, parked_event(envelope, trigger.case_id))
            return
        # The case ended before this event was read (a withdrawal overtook routing's decision, which travels on
        # another topic): "your case is with …" after "your withdrawal is confirmed" would mislead.
        if (contact.ended_at is not None and not trigger.ends_case and not trigger.reopens
                and trigger.contact is None and await anyio.to_thread.run_sync(self.store.pass_over, envelope.id)):
            return
        await self._claim_and_deliver(envelope, trigger, contact)
        if trigger.contact is not None:
            await self._handle_parked(trigger.case_id)

    async def handle_stranded(self) -> None:
        """Handle the events still parked ``NOTIFY_PARKED_GRACE_S`` after their case's contact became known."""
        before = now_utc() - timedelta(seconds=self.settings.parked_grace_s)
        for case_id in await anyio.to_thread.run_sync(self.store.stranded_parked, before):
            await self._handle_parked(case_id)

    async def _handle_parked(self, case_id: UUID) -> None:
        """Handle the events that arrived before the case's submitted event, in their order of arrival."""
        for event in await anyio.to_thread.run_sync(self.store.parked, case_id):
            await self.handle(
                Envelope(id=event.event_id, type=event.event_type, source=event.source, subject=str(case_id),
                         time=event.event_time, data=json.loads(event.data), headers={})
            )
            await anyio.to_thread.run_sync(self.store.unpark, event.event_id)

    async def _claim_and_deliver(self, envelope: Envelope, trigger: Trigger, contact: Contact) -> None:
        # Rendered before the claim: a failure here is retried with nothing recorded yet.
        message = self.renderer.render(trigger.template, contact.language, self.context(contact, trigger))

        def claim_and_start() -> tuple[Claimed | Seen, Attempt | None]:
            # The claim and the start of the first attempt stay two transactions (a crash between them leaves a
            # due notification for the scheduler, not an interrupted attempt), made in one trip to a worker thread.
            claim = self.store.claim(
                event_id=envelope.id,
                event_type=envelope.type,
                case_id=trigger.case_id,
                message=message,
                now=now_utc(),
                new_contact=trigger.contact,
                authority_name=trigger.authority_name,
                ended=trigger.ends_case,
                reopened=trigger.reopens,
            )
            if not isinstance(claim, Claimed):
                return claim, None
            now = now_utc()
            return claim, self.store.start_attempt(claim.notification.notification_id, now=now,
                                                   lease_until=self.deliverer.lease_until(now))

        claim, taken = await anyio.to_thread.run_sync(claim_and_start)
        if isinstance(claim, Claimed):
            # None: another worker (the scheduler) took the notification first and makes the attempt.
            if taken is not None:
                await self.deliverer.make(taken)
            return
        # A redelivered event: send nothing new. Finish what the first delivery left undone: publish an outcome
        # that isn't yet, or make an attempt that is due (both no-ops if done or owned elsewhere).
        for notification in claim.notifications:
            if notification.status in FINAL_STATUSES:
                await self.deliverer.finished(notification)
            else:
                await self.deliverer.attempt(notification.notification_id)


def parked_event(envelope: Envelope, case_id: UUID) -> ParkedEvent:
    """An event kept until its case's contact arrives."""
    return ParkedEvent(event_id=envelope.id, case_id=case_id, event_type=envelope.type, source=envelope.source,
                       event_time=envelope.time, data=json.dumps(envelope.data))


def register(broker: KafkaBroker, notifier: Notifier, settings: Settings) -> None:
    """Subscribe notify's consumer on ``broker``."""

    async def on_event(msg: KafkaMessage) -> None:
        await notifier.handle(read_event(msg))

    # One consumer for all four topics: on Tansu, a second member in the same group makes every start-up wait
    # for a rebalance (and now and then never settle), which a single member avoids.
    broker.subscriber(
        topics.SUBMITTED, topics.ROUTED, topics.UNROUTABLE, topics.CASE_STATUS,
        **group_subscription(settings.kafka, settings.consumer_group),
    )(on_event)
