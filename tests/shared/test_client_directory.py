"""A service's copy of ``ozg.clients`` right after a (re)start: a valid key is never answered 401 for not being read
yet (found by the crash test: every restarted service refused valid keys for a few seconds)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import CollectorRegistry

from shared import clients
from shared.auth import ClientDirectory, hash_key, identify, require
from shared.events import ClientKind, ClientRecord
from shared.kafka import make_broker
from shared.problems import ProblemException
from shared.settings import KafkaSettings


async def test_catch_up_returns_once_every_key_issued_before_is_known(kafka_settings: KafkaSettings) -> None:
    keys = [(await clients.issue(kafka_settings, kind=ClientKind.PORTAL, name=f"portal {i}"))[1] for i in range(3)]
    directory = ClientDirectory()
    broker, _ = make_broker(kafka_settings, service="test", registry=CollectorRegistry())
    directory.subscribe(broker)
    authenticate = require(directory, "applications:submit")
    unknown = HTTPAuthorizationCredentials(scheme="Bearer", credentials="ozg_not-a-key")

    # Before the directory is complete, an unknown key is no verdict: 503 with Retry-After, never 401.
    with pytest.raises(ProblemException) as early:
        await authenticate(unknown)
    assert early.value.status == 503
    assert early.value.headers is not None
    assert "Retry-After" in early.value.headers
    # No key at all is a verdict at once (what intake's attachment download, which takes any client, relies on).
    with pytest.raises(ProblemException) as missing:
        identify(directory, None)
    assert missing.value.status == 401

    await broker.start()
    try:
        await directory.catch_up(kafka_settings, timeout_s=30)
        assert directory.complete
        for key in keys:
            client = await authenticate(HTTPAuthorizationCredentials(scheme="Bearer", credentials=key))
            assert client.kind == ClientKind.PORTAL
        with pytest.raises(ProblemException) as late:
            await authenticate(unknown)
        assert late.value.status == 401
    finally:
        await broker.stop()


def test_no_key_gets_a_verdict_until_the_directory_is_complete() -> None:
    # A key read already may be revoked by a record further on: answering it before the end was read would let a
    # revoked key in for the first seconds after every start.
    record, key = ClientRecord(client_id=uuid.uuid4(), name="portal", kind=ClientKind.PORTAL,
                               scopes=["applications:submit"], key_hash=hash_key("ozg_known"),
                               issued_at=datetime.now(UTC)), "ozg_known"
    directory = ClientDirectory()
    directory.apply(record)
    with pytest.raises(ProblemException) as early:
        identify(directory, HTTPAuthorizationCredentials(scheme="Bearer", credentials=key))
    assert early.value.status == 503


def test_reading_the_topic_again_never_brings_a_revoked_key_back() -> None:
    # After a reconnect the service reads ozg.clients from its beginning: the registration comes before the
    # revocation again.
    now = datetime.now(UTC)
    registered = ClientRecord(client_id=uuid.uuid4(), name="portal", kind=ClientKind.PORTAL,
                              scopes=["applications:submit"], key_hash=hash_key("ozg_old"), issued_at=now)
    revoked = registered.model_copy(update={"revoked": True})
    directory = ClientDirectory()
    for record in (registered, revoked, registered):
        directory.apply(record)
    assert directory.authenticate("ozg_old") is None
    current = directory.get(registered.client_id)
    assert current is not None
    assert current.revoked
    # A newer record of the client (a later issue) is still taken.
    renewed = registered.model_copy(update={"key_hash": hash_key("ozg_new"), "issued_at": now + timedelta(seconds=1)})
    directory.apply(renewed)
    assert directory.authenticate("ozg_new") == renewed
