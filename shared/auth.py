"""Client authentication (SPEC §5): API keys as SHA-256 hashes, kinds and scopes, one copy per service.

Every service follows the compacted ``ozg.clients`` topic from the beginning with its own consumer (no group),
so a key issued or revoked with ``python -m shared.clients`` works, or stops working, everywhere within seconds.
"""


import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated
from uuid import UUID

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage

from shared import events, topics
from shared.envelope import InvalidEvent
from shared.events import ClientKind, ClientRecord
from shared.kafka import read_event
from shared.problems import ProblemException

log = logging.getLogger(__name__)

KEY_PREFIX = "ozg_"

# Scopes a client of each kind gets unless the operator issuing the key names others.
DEFAULT_SCOPES: dict[ClientKind, tuple[str, ...]] = {
    ClientKind.PORTAL: ("applications:submit", "applications:read", "attachments:write"),
    ClientKind.COUNTER: ("applications:submit", "applications:read", "attachments:write"),
    ClientKind.DESTINATION: ("cases:read", "cases:status", "attachments:read"),
    ClientKind.OPERATOR: ("destinations:write", "destinations:read", "clearing", "notifications:read"),
    ClientKind.AUDITOR: ("audit:read",),
}


def hash_key(key: str) -> str:
    """SHA-256 of an API key. Keys are 256-bit random, so a fast unsalted hash is safe (as for GitHub tokens)."""
    return hashlib.sha256(key.encode()).hexdigest()


class ClientDirectory:
    """This service's copy of the client records, indexed by key hash."""

    def __init__(self) -> None:
        self._by_hash: dict[str, ClientRecord] = {}
        self._by_id: dict[UUID, ClientRecord] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def apply(self, record: ClientRecord) -> None:
        """Take a newer record of a client (registration, rotation or revocation)."""
        old = self._by_id.get(record.client_id)
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
            try:
                envelope = read_event(msg)
                if envelope.type not in (events.CLIENT_REGISTERED_V1, events.CLIENT_REVOKED_V1):
                    raise InvalidEvent(f"unexpected type {envelope.type} on {topics.CLIENTS}")
                self.apply(envelope.data_as(ClientRecord))
            except InvalidEvent as exc:
                # Without a group there is no commit; a bad record is skipped and reported, never applied.
                log.error("ignored invalid client record", extra={"error": str(exc)})

        broker.subscriber(
            topics.CLIENTS, auto_offset_reset="earliest", ack_policy=AckPolicy.ACK_FIRST
        )(on_client)


_bearer = HTTPBearer(auto_error=False, description="API key of a client (SPEC §5)")

Authenticator = Callable[[HTTPAuthorizationCredentials | None], Awaitable[ClientRecord]]


def require(directory: ClientDirectory, scope: str) -> Authenticator:
    """A FastAPI dependency that answers 401 without a valid key and 403 without ``scope``."""

    async def authenticate(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> ClientRecord:
        challenge = {"WWW-Authenticate": 'Bearer realm="ozg"'}
        if credentials is None:
            raise ProblemException(401, "An API key is required (Authorization: Bearer ...).",
                                   kind="unauthenticated", headers=challenge)
        client = directory.authenticate(credentials.credentials)
        if client is None:
            raise ProblemException(401, "The API key is unknown or revoked.", kind="unauthenticated",
                                   headers=challenge)
        if scope not in client.scopes:
            raise ProblemException(403, f"The API key lacks the scope {scope!r}.", kind="forbidden")
        return client

    return authenticate
