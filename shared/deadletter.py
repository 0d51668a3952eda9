"""Retry-then-dead-letter: the one middleware every consumer runs under.

A message whose handler raises is retried a bounded number of times with exponential back-off (the partition
waits, so order is kept), except while the database or the broker is unreachable, which the partition waits out;
a poison message (InvalidEvent, or a value longer than ``max_event_bytes``, which no handler sees) is not retried
at all. Then the original record goes to ``<topic>.dlq`` with headers naming the error, the source topic,
partition and offset, and the consumer moves on. If even the dead-letter publish fails, the error propagates and
the message is redelivered: nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from aiokafka import ConsumerRecord
from aiokafka.errors import KafkaError, KafkaTimeoutError, MessageSizeTooLargeError
from faststream import BaseMiddleware
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy.exc import InterfaceError, OperationalError

from shared import backoff
from shared.envelope import InvalidEvent, check_size
from shared.redaction import safe_reason
from shared.topics import dlq_topic

if TYPE_CHECKING:
    from faststream._internal.basic_types import AsyncFuncAny
    from faststream._internal.context.repository import ContextRepo
    from faststream.kafka import KafkaBroker
    from faststream.message import StreamMessage

log = logging.getLogger(__name__)

BACKOFF_CAP_S = 10.0


def transient(error: BaseException) -> bool:
    """Whether ``error`` says the database or the broker is unreachable (a restart, a failover, a timeout) rather
    than anything about the event being handled: such a failure is waited out, never dead-lettered."""
    if isinstance(error, OperationalError | InterfaceError | ConnectionError | TimeoutError | KafkaTimeoutError):
        return True
    return isinstance(error, KafkaError) and error.retriable


def _error_name(error: BaseException) -> str:
    # The driver's own class says more than SQLAlchemy's wrapper (OperationalError of psycopg's ConnectionTimeout).
    orig = getattr(error, "orig", None)
    return type(orig if isinstance(orig, BaseException) else error).__name__


def batch_records(msg: StreamMessage[Any]) -> tuple[ConsumerRecord[Any, Any], ...]:
    """The Kafka records of a batch subscriber's message (a lone record as a batch of one)."""
    raw: Any = msg.raw_message
    return tuple(raw) if isinstance(raw, tuple) else (raw,)


class DeadLetterPolicy:
    """Factory of the per-message middleware; holds the retry settings, the metric and the broker."""

    def __init__(
        self, *, retries: int, backoff_s: float, registry: CollectorRegistry, service: str,
        max_event_bytes: int | None = None,
    ) -> None:
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_event_bytes = max_event_bytes
        self.service = service
        self.broker: KafkaBroker | None = None
        # Consecutive failures of redelivered batches, by the topic of their first record.
        self.batch_failures: dict[str, int] = {}
        self.dead_lettered = Counter(
            "ozg_dead_lettered_messages",
            "Messages moved to a dead-letter topic, by source topic and error class",
            ["topic", "error"],
            registry=registry,
        )

    def attach(self, broker: KafkaBroker) -> None:
        """Give the policy the broker it publishes dead letters with."""
        self.broker = broker

    def __call__(self, msg: Any, /, *, context: ContextRepo) -> _DeadLetterMiddleware:
        return _DeadLetterMiddleware(msg, context=context, policy=self)

    async def dead_letter(self, record: ConsumerRecord[Any, Any], error: BaseException) -> None:
        """Publish the original record to its dead-letter topic with error headers."""
        assert self.broker is not None, "DeadLetterPolicy.attach() was not called"
        headers = {
            name: value.decode(errors="replace")
            for name, value in (record.headers or ())
            if not name.startswith("x-ozg-dlq-")
        }
        headers.update(
            {
                "x-ozg-dlq-error": type(error).__name__,
                # Never the input itself: the topic's own ACLs guard the value, not those of whoever reads headers.
                "x-ozg-dlq-reason": safe_reason(error),
                "x-ozg-dlq-topic": record.topic,
                "x-ozg-dlq-partition": str(record.partition),
                "x-ozg-dlq-offset": str(record.offset),
                "x-ozg-dlq-consumer": self.service,
            }
        )
        try:
            await self.broker.publish(record.value, dlq_topic(record.topic), key=record.key, headers=headers)
        except MessageSizeTooLargeError:
            # Even the dead-letter topic refuses the value: keep the headers, which name where the original still
            # is, rather than redeliver the record forever and stop the partition.
            headers["x-ozg-dlq-value-omitted"] = str(len(record.value or b""))
            await self.broker.publish(None, dlq_topic(record.topic), key=record.key, headers=headers)
        self.dead_lettered.labels(record.topic, type(error).__name__).inc()
        log.warning(
            "message dead-lettered",
            extra={"topic": record.topic, "partition": record.partition, "offset": record.offset,
                   "error": type(error).__name__},
        )


class _DeadLetterMiddleware(BaseMiddleware):
    def __init__(self, msg: Any, /, *, context: ContextRepo, policy: DeadLetterPolicy) -> None:
        super().__init__(msg, context=context)
        self.policy = policy

    async def consume_scope(self, call_next: AsyncFuncAny, msg: StreamMessage[Any]) -> Any:
        record = msg.raw_message
        if not isinstance(record, ConsumerRecord):
            return await self._batch(call_next, msg, batch_records(msg))
        try:
            check_size(record.value, self.policy.max_event_bytes)
        except InvalidEvent as exc:
            await self._pass_over(call_next, msg, record)
            await self.policy.dead_letter(record, exc)
            return None
        attempt = outage = 0
        while True:
            try:
                return await call_next(msg)
            except InvalidEvent as exc:
                await self.policy.dead_letter(record, exc)
                return None
            except Exception as exc:  # noqa: BLE001 - any handler failure is retried, then dead-lettered
                if transient(exc):
                    # The database or the broker is away (a restart, a failover): no fault of the event's.
                    # Dead-lettering valid events after a few retries would lose their effect until someone
                    # replays them, so the partition waits, as audit's batches do.
                    outage += 1
                    delay = backoff.delay_s(outage, base_s=self.policy.backoff_s, cap_s=BACKOFF_CAP_S)
                    log.warning("database or broker unavailable, holding the partition",
                                extra={"topic": record.topic, "partition": record.partition,
                                       "offset": record.offset, "error": _error_name(exc), "retry_in_s": delay})
                    await asyncio.sleep(delay)
                    continue
                if attempt >= self.policy.retries:
                    await self.policy.dead_letter(record, exc)
                    return None
                attempt += 1
                await asyncio.sleep(backoff.delay_s(attempt, base_s=self.policy.backoff_s, cap_s=BACKOFF_CAP_S))

    async def _batch(
        self, call_next: AsyncFuncAny, msg: StreamMessage[Any], records: tuple[ConsumerRecord[Any, Any], ...]
    ) -> Any:
        """Batch subscribers dead-letter poison records themselves, one by one; a batch that fails as a whole (the
        broker or database away) is redelivered, after a growing pause so an outage is no busy loop.

        A batch that failed more often than the policy retries for another reason is then handled record by record:
        a record its handler cannot take, for a reason nobody foresaw (a value the database refuses, say), would
        otherwise fail its batch for ever and hold up every partition in it. It is dead-lettered, the others take
        effect. A transient failure (``transient``) is never a record's fault: it keeps failing the batch.
        """
        key = records[0].topic if records else ""
        failures = self.policy.batch_failures.get(key, 0)
        result: Any = None
        try:
            if failures > self.policy.retries and len(records) > 1:
                await self._one_by_one(call_next, msg, records)
            else:
                result = await call_next(msg)
        except Exception as exc:
            failures = self.policy.batch_failures[key] = failures + 1
            delay = backoff.delay_s(failures, base_s=self.policy.backoff_s, cap_s=BACKOFF_CAP_S)
            log.warning("batch failed, redelivering", extra={"error": _error_name(exc), "records": len(records),
                                                             "retry_in_s": delay})
            await asyncio.sleep(delay)
            raise
        self.policy.batch_failures.pop(key, None)
        return result

    async def _one_by_one(
        self, call_next: AsyncFuncAny, msg: StreamMessage[Any], records: tuple[ConsumerRecord[Any, Any], ...]
    ) -> None:
        # The handler sees a batch of one record at a time; each takes effect (or is dropped as a repeat) on its own.
        try:
            for record in records:
                msg.raw_message = (record,)
                try:
                    await call_next(msg)
                except Exception as exc:
                    if transient(exc):
                        raise
                    await self.policy.dead_letter(record, exc)
        finally:
            msg.raw_message = records

    @staticmethod
    async def _pass_over(call_next: AsyncFuncAny, msg: StreamMessage[Any], record: ConsumerRecord[Any, Any]) -> None:
        """Show the handler a record too long to read without its value, which is never parsed: it fails as poison,
        but a handler that follows its position (the client directory, which must reach the topic's end before its
        service is ready) counts the record as read."""
        msg.raw_message = dataclasses.replace(record, value=None)
        msg.body = b""
        # Whatever the handler makes of an empty record is beside the point: the record is dead-lettered for its size.
        with contextlib.suppress(Exception):
            await call_next(msg)
