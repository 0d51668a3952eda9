"""Issuing, listing and revoking API clients on the compacted ``ozg.clients`` topic (SPEC §5).

Used by the CLI (``python -m shared.clients``), by ``make run`` for the demo keys and by the tests.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from shared import events, topics
from shared.auth import DEFAULT_SCOPES, KEY_PREFIX, SCOPES, hash_key
from shared.envelope import InvalidEvent, build_event, parse_event
from shared.events import ClientKind, ClientRecord
from shared.settings import KafkaSettings

SOURCE = "/ozg/clients-cli"


def new_key() -> str:
    """A fresh API key: 256 bits from the OS's CSPRNG."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


async def _publish(settings: KafkaSettings, record: ClientRecord, event_type: str) -> None:
    await topics.ensure_topics(settings, topics.standard_topics())
    event = build_event(
        event_type=event_type, source=SOURCE, subject=str(record.client_id), data=record
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        acks="all",
        enable_idempotence=settings.idempotence,
        request_timeout_ms=settings.request_timeout_ms,
        **settings.client_options(),
    )
    await producer.start()
    try:
        await producer.send_and_wait(
            topics.CLIENTS,
            value=event.value,
            key=event.key,
            headers=[(name, value.encode()) for name, value in event.headers.items()],
        )
    finally:
        await producer.stop()


async def issue(
    settings: KafkaSettings,
    *,
    kind: ClientKind,
    name: str,
    scopes: Sequence[str] | None = None,
    destination_id: uuid.UUID | None = None,
) -> tuple[ClientRecord, str]:
    """Register a new client; returns its record and its key (the only time the key is known).

    Raises ValueError, before anything is published, for a destination client without a ``destination_id``, a
    ``destination_id`` for any other kind, or a scope outside ``shared.auth.SCOPES``.
    """
    if kind is ClientKind.DESTINATION and destination_id is None:
        raise ValueError("a destination client must be bound to a destination_id")
    if kind is not ClientKind.DESTINATION and destination_id is not None:
        # The binding opens that destination's cases and attachments: only the destination's own key may carry it.
        raise ValueError(f"only a destination client is bound to a destination_id, not a {kind.value} client")
    unknown = sorted(set(scopes or ()) - SCOPES)
    if unknown:
        # A scope no service checks would leave the key without the access its issuer meant to grant.
        raise ValueError(f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(sorted(SCOPES))}")
    key = new_key()
    record = ClientRecord(
        client_id=uuid.uuid4(),
        name=name,
        kind=kind,
        scopes=list(scopes) if scopes else list(DEFAULT_SCOPES[kind]),
        key_hash=hash_key(key),
        destination_id=destination_id,
        issued_at=datetime.now(UTC),
    )
    await _publish(settings, record, events.CLIENT_REGISTERED_V1)
    return record, key


async def current(settings: KafkaSettings) -> dict[uuid.UUID, ClientRecord]:
    """The newest record of every client, read from the topic's beginning to its end."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=settings.request_timeout_ms,
        **settings.client_options(),
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topics.CLIENTS)
        if partitions is None:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topics.CLIENTS) or set()
        assigned = [TopicPartition(topics.CLIENTS, p) for p in sorted(partitions)]
        if not assigned:
            return {}
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        end = await consumer.end_offsets(assigned)
        records: dict[uuid.UUID, ClientRecord] = {}
        async def behind() -> bool:
            return any([await consumer.position(tp) < end[tp] for tp in assigned])

        while await behind():
            batch = await consumer.getmany(timeout_ms=1000)
            for messages in batch.values():
                for message in messages:
                    try:
                        envelope = parse_event(message.headers, message.value, message.key)
                        record: ClientRecord = envelope.data_as(ClientRecord)
                    except InvalidEvent:
                        continue
                    records[record.client_id] = record
        return records
    finally:
        await consumer.stop()


async def revoke(settings: KafkaSettings, client_id: uuid.UUID) -> ClientRecord:
    """Revoke a client's key everywhere; raises KeyError for an unknown client."""
    record = (await current(settings))[client_id]
    revoked = record.model_copy(update={"revoked": True})
    await _publish(settings, revoked, events.CLIENT_REVOKED_V1)
    return revoked
