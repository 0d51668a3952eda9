"""Client authentication (SPEC §5): API keys as SHA-256 hashes, kinds and scopes, one copy per service.

Every service follows the compacted ``ozg.clients`` topic from the beginning with its own consumer (no group),
so a key issued or revoked with ``python -m shared.clients`` works, or stops working, everywhere within seconds.
"""


import asyncio
import hashlib
import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated
from uuid import UUID

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage

from shared import events, topics
from shared.envelope import InvalidEvent
from shared.events import ClientKind, ClientRecord
from shared.kafka import read_event
from shared.problems import ProblemException
from shared.settings import KafkaSettings

KEY_PREFIX = "ozg_"

# Scopes a client of each kind gets unless the operator issuing the key names others.
DEFAULT_SCOPES: dict[ClientKind, tuple[str, ...]] = {
    ClientKind.PORTAL: ("applications:submit", "applications:read", "attachments:write"),
    ClientKind.COUNTER: ("applications:submit", "applications:read", "attachments:write"),
    ClientKind.DESTINATION: ("cases:read", "cases:status", "attachments:read"),
    ClientKind.OPERATOR: ("destinations:write", "destinations:read", "clearing", "notifications:read"),
    ClientKind.AUDITOR: ("audit:read",),
}
# Every scope there is: the services check no other, so a key can be given only these.
SCOPES: frozenset[str] = frozenset(scope for scopes in DEFAULT_SCOPES.values() for scope in scopes)


def hash_key(key: str) -> str:
    """SHA-256 of an API key. Keys are 256-bit random, so a fast unsalted hash is safe (as for GitHub tokens)."""
    return hashlib.sha256(key.encode()).hexdigest()


class ClientDirectory:
    """This service's copy of the client records, indexed by key hash."""

    def __init__(self) -> None:
        self._by_hash: dict[str, ClientRecord] = {}
        self._by_id: dict[UUID, ClientRecord] = {}
        # Next offset to read per partition of ozg.clients, and the end offsets found when the service connected.
        self._read: dict[int, int] = {}
        self._ends: dict[int, int] | None = None
        self._complete = asyncio.Event()

    @property
    def complete(self) -> bool:
        """Whether this copy holds every record ``ozg.clients`` held when the service connected."""
        return self._complete.is_set()

    def _advance(self, partition: int, offset: int) -> None:
        self._read[partition] = max(self._read.get(partition, 0), offset + 1)
        self._check_complete()

    def _check_complete(self) -> None:
        if self._ends is not None and all(self._read.get(p, 0) >= end for p, end in self._ends.items()):
            self._complete.set()

    async def catch_up(self, settings: KafkaSettings, timeout_s: float) -> None:
        """Wait until every record on ``ozg.clients`` right now has been read.

        Until then an unknown key may just not be read yet: a restarted service would answer 401 to valid keys.
        """
        if self.complete:
            return
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False,
                                    request_timeout_ms=settings.request_timeout_ms, **settings.client_options())
        try:
            await consumer.start()  # inside: a failed start must still close what it opened
            await consumer.topics()  # fetches the metadata of every topic
            partitions = [TopicPartition(topics.CLIENTS, p)
                          for p in consumer.partitions_for_topic(topics.CLIENTS) or ()]
            starts = await consumer.beginning_offsets(partitions)
            ends = await consumer.end_offsets(partitions)
        finally:
            await consumer.stop()
        # A partition whose records were all deleted has nothing to read.
        self._ends = {tp.partition: end for tp, end in ends.items() if end > starts[tp]}
        self._check_complete()
        await asyncio.wait_for(self._complete.wait(), timeout_s)

    def __len__(self) -> int:
        return len(self._by_id)

    def apply(self, record: ClientRecord) -> None:
        """Take a newer record of a client (registration, rotation or revocation); an older one is ignored.

        After a reconnect the topic is read again from its beginning: its registration must not bring a revoked
        key back until the revocation is read once more. A revocation keeps its registration's ``issued_at``.
        """
        old = self._by_id.get(record.client_id)
        if old is not None and (record.issued_at, record.revoked) < (old.issued_at, old.revoked):
            return
        if old is not None:
            self._by_hash.pop(old.key_hash, None)
        self._by_id[record.client_id] = record
        if not record.revoked:
            self._by_hash[record.key_hash] = record

    def get(self, client_id: UUID) -> ClientRecord | None:
        """The current record of a client, revoked or not."""
        return self._by_id.get(client_id)

    def authenticate(self, key: str) -> ClientRecord | None:
        """The live client whose key this is, or None."""
        digest = hash_key(key)
        record = self._by_hash.get(digest)
        # Dictionary lookup already matched; compare_digest keeps the final check constant-time.
        if record is None or not hmac.compare_digest(record.key_hash, digest):
            return None
        return record

    def subscribe(self, broker: KafkaBroker) -> None:
        """Follow ``ozg.clients`` on ``broker`` from the beginning, without a consumer group."""

        async def on_client(msg: KafkaMessage) -> None:
            record = msg.raw_message
            if isinstance(record, ConsumerRecord):
                # Counted as read before it is applied (nothing awaits in between); a bad record is read too.
                self._advance(record.partition, record.offset)
            # A bad record is never applied: the dead-letter middleware moves it to ozg.clients.dlq. Without a group
            # nothing is committed, so each service reports it again at each start while it is in the topic.
            envelope = read_event(msg)
            if envelope.type not in (events.CLIENT_REGISTERED_V1, events.CLIENT_REVOKED_V1):
                raise InvalidEvent(f"unexpected type {envelope.type} on {topics.CLIENTS}")
            self.apply(envelope.data_as(ClientRecord))

        broker.subscriber(
            topics.CLIENTS, auto_offset_reset="earliest", ack_policy=AckPolicy.ACK_FIRST
        )(on_client)


_bearer = HTTPBearer(auto_error=False, description="API key of a client (SPEC §5)")

Authenticator = Callable[[HTTPAuthorizationCredentials | None], Awaitable[ClientRecord]]


def identify(directory: ClientDirectory, credentials: HTTPAuthorizationCredentials | None) -> ClientRecord:
    """The live client whose key ``credentials`` carry: 401 without a valid key, 503 while the service has not read
    every key yet (just started)."""
    challenge = {"WWW-Authenticate": 'Bearer realm="ozg"'}
    if credentials is None:
        raise ProblemException(401, "An API key is required (Authorization: Bearer ...).",
                               kind="unauthenticated", headers=challenge)
    if not directory.complete:
        # A key not read yet may be valid, and one read already may be revoked by a record not read yet (a service
        # just started): no verdict on any key until the directory is complete.
        raise ProblemException(503, "The service is still reading its client directory; retry shortly.",
                               kind="not-ready", headers={"Retry-After": "1"})
    client = directory.authenticate(credentials.credentials)
    if client is None:
        raise ProblemException(401, "The API key is unknown or revoked.", kind="unauthenticated",
                               headers=challenge)
    return client


def require(directory: ClientDirectory, scope: str) -> Authenticator:
    """A FastAPI dependency that answers 401 without a valid key and 403 without ``scope``."""

    async def authenticate(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> ClientRecord:
        client = identify(directory, credentials)
        if scope not in client.scopes:
            raise ProblemException(403, f"The API key lacks the scope {scope!r}.", kind="forbidden")
        return client

    return authenticate
