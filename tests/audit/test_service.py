"""The audit service against the real broker: trails, verification, authentication, redelivery.

The broker is shared by the whole session and the consumer group reads from the earliest offset, so the chain
holds other tests' events too: every assertion looks at this test's own case ids.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.audit.app import build
from services.audit.settings import Settings
from services.audit.signing import (
    SigningKeyError,
    checkpoint_message,
    key_id,
    load_public_key,
    public_pem,
    signature_valid,
)
from services.audit.store import canonical_fields, entry_hash
from shared import events, topics
from shared.envelope import OutgoingEvent, build_event
from shared.events import (
    ApplicationDispatched,
    ApplicationRouted,
    ApplicationSubmitted,
    Authority,
    AuthorityLevel,
    CaseStatus,
    CaseStatusChanged,
    ClientKind,
    NotificationOutcome,
    PersonalDataDeleted,
    ReplyChannel,
    ResolvedRegion,
)
from shared.settings import KafkaSettings
from shared.topics import TopicSpec, ensure_topics
from tests.factories import submitted
from tests.support import issue_key, produce, running, wait_until

# The first events wait for the consumer group to form and, for a new topic, for the next metadata refresh.
ARRIVAL_S = 60


@pytest.fixture
def settings(database_url: str, kafka_settings: KafkaSettings, tmp_path: Path) -> Settings:
    return Settings(database_url=database_url, kafka=kafka_settings, checkpoint_every=1,
                    signing_key_file=tmp_path / "signing-key.pem")


@pytest.fixture
def sqlite_settings(tmp_path: Path, kafka_settings: KafkaSettings) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path / 'audit.db'}", kafka=kafka_settings)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def submitted_event(data: ApplicationSubmitted | None = None) -> OutgoingEvent:
    data = data or submitted()
    return build_event(event_type=events.SUBMITTED_V1, source="/ozg/intake", subject=str(data.case_id), data=data)


def routed_data(data: ApplicationSubmitted, destination_id: uuid.UUID) -> ApplicationRouted:
    return ApplicationRouted(
        case_id=data.case_id, reference=data.reference, leika_key=data.leika_key,
        region=ResolvedRegion(ars="092730137137", ags="09273137", name="Kelheim, St"),
        authority=Authority(ars="092730137137", name="Kelheim, St", level=AuthorityLevel.GEMEINDE),
        rule="default:gemeinde", destination_id=destination_id, destination_name="Stadt Kelheim",
    )


def dispatched_event(data: ApplicationSubmitted, destination_id: uuid.UUID) -> OutgoingEvent:
    dispatched = ApplicationDispatched(case_id=data.case_id, reference=data.reference,
                                       destination_id=destination_id, routing=routed_data(data, destination_id),
                                       application=data)
    return build_event(event_type=events.DISPATCHED_V1, source="/ozg/routing", subject=str(data.case_id),
                       data=dispatched)


async def send(kafka_settings: KafkaSettings, topic: str, event: OutgoingEvent) -> None:
    await produce(kafka_settings, topic, event.value, event.headers, event.key)


async def trail_of(client: httpx.AsyncClient, key: str, case_id: str, count: int) -> list[dict[str, Any]] | None:
    """The case's trail once it has at least ``count`` entries, else None."""
    response = await client.get(f"/v1/cases/{case_id}/trail", headers=bearer(key))
    if response.status_code != 200:
        return None
    entries: list[dict[str, Any]] = response.json()["entries"]
    return entries if len(entries) >= count else None


async def test_trail_and_verify_over_the_broker(settings: Settings, kafka_settings: KafkaSettings) -> None:
    service, app = build(settings)
    async with running(service, app) as client:
        _, auditor = await issue_key(kafka_settings, ClientKind.AUDITOR, service=service)
        _, portal = await issue_key(kafka_settings, ClientKind.PORTAL, service=service)
        data = submitted()
        case_id = str(data.case_id)

        first = submitted_event(data)
        await send(kafka_settings, topics.SUBMITTED, first)
        await wait_until(lambda: trail_of(client, auditor, case_id, 1), timeout_s=ARRIVAL_S)

        # A destination topic created after the consumer started joins the pattern subscription by itself.
        destination_id = uuid.uuid4()
        destination_topic = topics.destination_topic(destination_id)
        await ensure_topics(kafka_settings, [TopicSpec(destination_topic)])
        second = dispatched_event(data, destination_id)
        await send(kafka_settings, destination_topic, second)
        entries = await wait_until(lambda: trail_of(client, auditor, case_id, 2), timeout_s=ARRIVAL_S)

        assert len(entries) == 2
        assert entries[0]["seq"] < entries[1]["seq"]
        assert [e["event_id"] for e in entries] == [first.event_id, second.event_id]
        assert [e["event_type"] for e in entries] == [events.SUBMITTED_V1, events.DISPATCHED_V1]
        assert [e["topic"] for e in entries] == [topics.SUBMITTED, destination_topic]
        assert [e["status"] for e in entries] == ["submitted", None]
        assert entries[1]["destination_id"] == str(destination_id)
        assert [e["data_sha256"] for e in entries] == [hashlib.sha256(first.value).hexdigest(),
                                                       hashlib.sha256(second.value).hexdigest()]
        for entry in entries:
            assert entry["subject"] == case_id
            # Every proof field is there: an auditor recomputes each hash from the trail alone.
            fields = {**entry, "event_time": datetime.fromisoformat(entry["event_time"]),
                      "recorded_at": datetime.fromisoformat(entry["recorded_at"])}
            assert entry_hash(canonical_fields(fields)) == entry["hash"]
        # Digests only: nothing of the application itself is kept.
        trail_text = (await client.get(f"/v1/cases/{case_id}/trail", headers=bearer(auditor))).text
        assert data.applicant.name not in trail_text
        assert data.reference not in trail_text

        # No verdict before the first verification (the service's own runs once an hour, the first an hour after
        # the start): the critical alert on "ozg_audit_chain_intact == 0" cannot fire at a start.
        assert not re.search(r"^ozg_audit_chain_intact", (await client.get("/metrics")).text, re.MULTILINE)
        verified = await client.get("/v1/verify", headers=bearer(auditor))
        assert verified.status_code == 200
        report = verified.json()
        assert report["intact"] is True
        assert report["length"] >= 2
        assert report["first_bad_seq"] is None
        assert report["problem"] is None
        assert len(report["head_hash"]) == 64

        # Authentication and authorisation, as problem details.
        for path in (f"/v1/cases/{case_id}/trail", "/v1/verify"):
            anonymous = await client.get(path)
            assert anonymous.status_code == 401
            assert anonymous.headers["content-type"] == "application/problem+json"
            forbidden = await client.get(path, headers=bearer(portal))
            assert forbidden.status_code == 403
            assert forbidden.headers["content-type"] == "application/problem+json"
        unknown = await client.get(f"/v1/cases/{uuid.uuid4()}/trail", headers=bearer(auditor))
        assert unknown.status_code == 404
        assert unknown.json()["type"] == "urn:ozg:problem:not-found"
        malformed = await client.get("/v1/cases/not-a-case/trail", headers=bearer(auditor))
        assert malformed.status_code == 422

        metrics = (await client.get("/metrics")).text
        assert f'ozg_audit_entries_total{{type="{events.SUBMITTED_V1}"}}' in metrics
        assert "ozg_audit_chain_intact 1.0" in metrics

        # Checkpoints (here after every batch), their public key for anyone, the checkpoints for auditors.
        assert report["checkpoints"] >= 1
        pem = await client.get("/v1/checkpoints/public-key")
        assert pem.status_code == 200
        assert pem.headers["content-type"] == "application/x-pem-file"
        public_key = load_public_key(pem.content)
        listed_keys = (await client.get("/v1/checkpoints/public-keys")).json()["keys"]
        assert [(k["key_id"], k["signing"], k["pem"].encode()) for k in listed_keys] == [
            (pem.headers["x-key-id"], True, pem.content)]
        listed = await client.get("/v1/checkpoints", headers=bearer(auditor))
        assert listed.status_code == 200
        body = listed.json()
        assert body["key_id"] == pem.headers["x-key-id"]
        assert body["checkpoints"]
        for checkpoint in body["checkpoints"]:
            message = checkpoint_message(checkpoint["seq"], checkpoint["head_hash"],
                                         datetime.fromisoformat(checkpoint["created_at"]))
            assert signature_valid(public_key, message, checkpoint["signature"])
        assert (await client.get("/v1/checkpoints")).status_code == 401
        assert (await client.get("/v1/checkpoints", headers=bearer(portal))).status_code == 403
        assert (await client.get("/v1/checkpoints?limit=0", headers=bearer(auditor))).status_code == 422
        # Beyond a 64-bit integer the database would refuse the parameter: refused here, never a 500.
        beyond = await client.get(f"/v1/checkpoints?after_seq={2**63}", headers=bearer(auditor))
        assert beyond.status_code == 422
        assert beyond.json()["errors"][0]["parameter"] == "after_seq"
        last = await client.get(f"/v1/checkpoints?after_seq={2**63 - 1}", headers=bearer(auditor))
        assert last.status_code == 200
        assert last.json()["checkpoints"] == []

        # A checkpoint the auditor kept, passed back: the chain must still reach it with its hash.
        kept = body["checkpoints"][-1]
        anchored = await client.get("/v1/verify", params={"seq": kept["seq"], "head_hash": kept["head_hash"]},
                                    headers=bearer(auditor))
        assert anchored.status_code == 200
        assert (anchored.json()["intact"], anchored.json()["anchors"]) == (True, 1)
        beyond_head = kept["seq"] + 1_000_000
        cut = await client.get("/v1/verify", params={"seq": beyond_head, "head_hash": kept["head_hash"]},
                               headers=bearer(auditor))
        assert cut.status_code == 200
        assert (cut.json()["intact"], cut.json()["kind"], cut.json()["checkpoint_seq"]) == (
            False, "truncated", beyond_head)
        assert "ozg_audit_chain_intact 0.0" in (await client.get("/metrics")).text
        assert (await client.get("/v1/verify", headers=bearer(auditor))).json()["intact"] is True
        assert "ozg_audit_chain_intact 1.0" in (await client.get("/metrics")).text
        # Both or neither, a seq the database can hold, a head hash as /v1/checkpoints gives it.
        for query, parameter in ((f"seq={kept['seq']}", "head_hash"), (f"head_hash={kept['head_hash']}", "seq"),
                                 (f"seq=0&head_hash={kept['head_hash']}", "seq"),
                                 (f"seq={2**63}&head_hash={kept['head_hash']}", "seq"),
                                 (f"seq=1&head_hash={kept['head_hash'].upper()}", "head_hash"),
                                 (f"seq=1&head_hash={kept['head_hash'][:-1]}", "head_hash")):
            refused = await client.get(f"/v1/verify?{query}", headers=bearer(auditor))
            assert refused.status_code == 422, query
            assert refused.headers["content-type"] == "application/problem+json"
            assert refused.json()["errors"][0]["parameter"] == parameter, query


async def test_redelivered_event_is_recorded_once(sqlite_settings: Settings, kafka_settings: KafkaSettings) -> None:
    service, app = build(sqlite_settings)
    async with running(service, app) as client:
        _, auditor = await issue_key(kafka_settings, ClientKind.AUDITOR, service=service)
        data = submitted()
        event = submitted_event(data)
        # Same key, same partition: when the marker is in, both deliveries before it were handled.
        marker = submitted_event(data)
        for record in (event, event, marker):
            await send(kafka_settings, topics.SUBMITTED, record)
        entries = await wait_until(lambda: trail_of(client, auditor, str(data.case_id), 2), timeout_s=ARRIVAL_S)
        assert [e["event_id"] for e in entries] == [event.event_id, marker.event_id]


async def test_trail_of_a_case_through_the_whole_loop_is_complete_and_in_order(
    sqlite_settings: Settings, kafka_settings: KafkaSettings
) -> None:
    """submitted → routed → dispatched → received, in_progress, decided, closed (each with a notification) →
    deletion of its personal data: every event in the trail, in the order it happened."""
    service, app = build(sqlite_settings)
    async with running(service, app) as client:
        _, auditor = await issue_key(kafka_settings, ClientKind.AUDITOR, service=service)
        data = submitted()
        case_id = str(data.case_id)
        destination_id = uuid.uuid4()
        destination_topic = topics.destination_topic(destination_id)
        await ensure_topics(kafka_settings, [TopicSpec(destination_topic)])

        def notification(trigger: OutgoingEvent) -> OutgoingEvent:
            outcome = NotificationOutcome(notification_id=uuid.uuid4(), case_id=data.case_id,
                                          channel=ReplyChannel.EMAIL, trigger_event_id=trigger.event_id,
                                          trigger_type=trigger.event_type, attempts=1)
            return build_event(event_type=events.NOTIFICATION_SENT_V1, source="/ozg/notify", subject=case_id,
                               data=outcome)

        def status(value: CaseStatus, previous: CaseStatus) -> OutgoingEvent:
            changed = CaseStatusChanged(case_id=data.case_id, reference=data.reference, status=value,
                                        previous_status=previous, destination_id=destination_id,
                                        message="Sehr geehrte Frau Mustermann", changed_at=datetime.now(UTC))
            return build_event(event_type=events.STATUS_CHANGED_V1, source="/ozg/routing", subject=case_id,
                               data=changed)

        loop: list[tuple[str, OutgoingEvent]] = [
            (topics.SUBMITTED, submitted_event(data)),
            (topics.ROUTED, build_event(event_type=events.ROUTED_V1, source="/ozg/routing", subject=case_id,
                                        data=routed_data(data, destination_id))),
            (destination_topic, dispatched_event(data, destination_id)),
        ]
        previous = CaseStatus.ROUTED
        for value in (CaseStatus.RECEIVED, CaseStatus.IN_PROGRESS, CaseStatus.DECIDED, CaseStatus.CLOSED):
            changed = status(value, previous)
            loop += [(topics.CASE_STATUS, changed), (topics.NOTIFICATIONS, notification(changed))]
            previous = value
        deleted = PersonalDataDeleted(case_id=data.case_id, service="intake",
                                      categories=["applicant", "form", "attachments"],
                                      deleted_at=datetime.now(UTC))
        loop.append((topics.DELETIONS, build_event(event_type=events.PERSONAL_DATA_DELETED_V1,
                                                   source="/ozg/intake", subject=case_id, data=deleted)))

        # Each event once the one before it is recorded, as the services cause them one after the other.
        for count, (topic, event) in enumerate(loop, start=1):
            await send(kafka_settings, topic, event)
            entries = await wait_until(lambda n=count: trail_of(client, auditor, case_id, n), timeout_s=ARRIVAL_S)

        assert [e["event_id"] for e in entries] == [event.event_id for _, event in loop]
        assert [e["topic"] for e in entries] == [topic for topic, _ in loop]
        assert [e["seq"] for e in entries] == sorted(e["seq"] for e in entries)
        assert [e["status"] for e in entries] == [
            "submitted", "routed", None, "received", None, "in_progress", None, "decided", None, "closed", None,
            "personal_data_deleted",
        ]
        assert entries[-1]["event_type"] == events.PERSONAL_DATA_DELETED_V1
        assert entries[-1]["reason"] == "retention"
        for entry in entries:
            fields = {**entry, "event_time": datetime.fromisoformat(entry["event_time"]),
                      "recorded_at": datetime.fromisoformat(entry["recorded_at"])}
            assert entry_hash(canonical_fields(fields)) == entry["hash"]
        trail_text = (await client.get(f"/v1/cases/{case_id}/trail", headers=bearer(auditor))).text
        assert "Mustermann" not in trail_text
        assert (await client.get("/v1/verify", headers=bearer(auditor))).json()["intact"] is True


async def test_after_a_rotation_the_service_lists_the_trusted_keys_and_refuses_unreadable_ones(
    sqlite_settings: Settings,
) -> None:
    earlier, later = (Ed25519PrivateKey.generate().public_key() for _ in range(2))
    trusted = (public_pem(earlier) + public_pem(later)).decode()
    _, app = build(sqlite_settings.model_copy(update={"trusted_public_keys": trusted}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://audit") as client:
        signing = await client.get("/v1/checkpoints/public-key")
        listed = await client.get("/v1/checkpoints/public-keys")
    assert listed.status_code == 200
    keys = {k["key_id"]: (k["signing"], k["pem"]) for k in listed.json()["keys"]}
    assert keys == {signing.headers["x-key-id"]: (True, signing.text),
                    key_id(earlier): (False, public_pem(earlier).decode()),
                    key_id(later): (False, public_pem(later).decode())}

    # A service that could not check its own earlier checkpoints must not start.
    for garbled in ("not a key", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"):
        with pytest.raises(SigningKeyError, match="AUDIT_TRUSTED_PUBLIC_KEYS"):
            build(sqlite_settings.model_copy(update={"trusted_public_keys": garbled}))
