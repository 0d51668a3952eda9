"""Publishing intake's events (submissions, withdrawals): a bounded wait, topics recreated after a broker outage,
and the outbox sweep."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import anyio.to_thread

from services.intake.models import Case, NewCase
from services.intake.store import IntakeStore
from shared import events, topics
from shared.envelope import OutgoingEvent, build_event, derived_event_id
from shared.events import ApplicationSubmitted, CaseStatusChanged
from shared.jobs import periodic
from shared.kafka import publish
from shared.outbox import Backlog, relay
from shared.runtime import Service

log = logging.getLogger(__name__)

SOURCE = "/ozg/intake"
RETRY_DELAY_S = 0.1


class BrokerUnavailable(Exception):
    """The broker did not acknowledge the event.

    ``maybe_sent`` is False when the producer itself gave up on the event (it will never be delivered) and True
    when the time limit ran out while the producer still held it: then it may yet reach the broker.
    """

    def __init__(self, error: str, *, maybe_sent: bool) -> None:
        super().__init__(error)
        self.maybe_sent = maybe_sent


def withdrawn_event(data: CaseStatusChanged) -> OutgoingEvent:
    """The ``status-changed`` event of a withdrawal, published by intake itself.

    A case is withdrawn once, so its withdrawal has one event id: two requests at the same moment (both found the
    case withdrawable) publish the same event twice, and every consumer takes it once.
    """
    return build_event(event_type=events.STATUS_CHANGED_V1, source=SOURCE, subject=str(data.case_id),
                       event_id=derived_event_id(str(data.case_id), events.STATUS_CHANGED_V1, "withdrawal"),
                       time=data.changed_at, data=data)


def submitted_event(case: Case | NewCase, submitted_at: datetime) -> OutgoingEvent:
    """The ``submitted`` event of a reserved ``case``, its data the submission the case keeps (serialised once, for
    the outbox and the event alike): rebuilt by the outbox it has the same id, time and content."""
    if case.submission is None:
        raise ValueError(f"case {case.case_id} keeps no submission (it was accepted)")
    return build_event(
        event_type=events.SUBMITTED_V1, source=SOURCE, subject=str(case.case_id), event_id=case.event_id,
        time=submitted_at, data=case.submission.encode(),
    )


class SubmissionPublisher:
    """Publishes ``submitted`` events with acks=all within ``timeout_s``.

    After a failure the next attempt first makes sure intake's topics exist: a broker that lost its state (a
    memory-only Tansu restarted, a cluster rebuilt) comes back without them, and nothing relies on auto-creation.
    """

    def __init__(self, service: Service, timeout_s: float) -> None:
        self._service = service
        self._timeout_s = timeout_s
        self._producer_timeout_s = service.settings.kafka.request_timeout_ms / 1000
        # Service.connect() created the topics before the broker started.
        self._topics_known = True

    async def publish(self, event: OutgoingEvent, topic: str = topics.SUBMITTED) -> None:
        """Publish ``event`` on ``topic`` (by default ``ozg.applications.submitted``); raises BrokerUnavailable on
        any failure.

        Within the time limit a failed attempt is repeated (a broker just back may refuse the first produce to a
        topic it only now created); repeats carry the same event id, so consumers drop any duplicate.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        error = "TimeoutError"
        while True:
            sending = False
            try:
                async with asyncio.timeout_at(deadline):
                    if not self._topics_known:
                        await topics.ensure_topics(self._service.settings.kafka, self._service.topic_specs)
                        self._topics_known = True
                    sending = True
                    await publish(self._service.broker, topic, event)
                    return
            except TimeoutError:
                self._topics_known = False
                raise BrokerUnavailable(error, maybe_sent=sending) from None
            except Exception as exc:  # noqa: BLE001 - the producer gave it up: connection, protocol errors
                error = type(exc).__name__
                self._topics_known = False
            # Repeat only while a repeat can still end in the producer's own verdict before the deadline.
            if loop.time() + RETRY_DELAY_S + self._producer_timeout_s >= deadline:
                raise BrokerUnavailable(error, maybe_sent=False)
            await asyncio.sleep(RETRY_DELAY_S)


async def republish_pending(store: IntakeStore, publisher: SubmissionPublisher, older_than_s: float) -> int:
    """Publish again every case left pending longer than ``older_than_s`` (a crash between publish and accept).

    The event keeps its id, so consumers that saw it already drop the repeat. Returns how many were accepted.
    """
    cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
    pending = [c for c in await anyio.to_thread.run_sync(store.pending_before, cutoff) if c.submission is not None]

    async def publish_case(case: Case) -> None:
        assert case.submission is not None
        submitted_at = ApplicationSubmitted.model_validate_json(case.submission).submitted_at
        await publisher.publish(submitted_event(case, submitted_at))

    # Still pending after a failure: the next sweep tries again.
    accepted = await relay(pending, publish_case, lambda case: store.accept(case.case_id), what="outbox")
    if accepted:
        log.info("outbox: accepted pending cases", extra={"count": accepted})
    return accepted


def outbox_job(
    store: IntakeStore, publisher: SubmissionPublisher, backlog: Backlog, older_than_s: float, interval_s: float
) -> Callable[[], Awaitable[None]]:
    """A background job: sweep the outbox at start-up and every ``interval_s`` seconds, then export its backlog."""

    async def sweep() -> None:
        await republish_pending(store, publisher, older_than_s)
        backlog.observe(*await anyio.to_thread.run_sync(store.pending_backlog))

    return periodic("outbox sweep", interval_s, sweep)
