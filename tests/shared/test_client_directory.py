"""A service's copy of ``ozg.clients`` right after a (re)start: a valid key is never answered 401 for not being read
yet (found by the crash test: every restarted service refused valid keys for a few seconds)."""

from __future__ import annotations

import pytest
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import CollectorRegistry

from shared import clients
from shared.auth import ClientDirectory, identify, require
from shared.events import ClientKind
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
