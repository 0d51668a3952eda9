"""The status loop against the real broker: back-office reports, the status model, isolation, withdrawal, pull."""

from __future__ import annotations

import asyncio
import base64
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session, select

from services.routing.app import build
from services.routing.lifecycle import TRANSITIONS, allowed_next
from services.routing.models import RoutedCase
from services.routing.registry import RoutingState
from services.routing.settings import Settings
from services.routing.store import RoutingStore
from shared import events, topics
from shared.envelope import build_event, derived_event_id, parse_event
from shared.events import CaseStatus, CaseStatusChanged, ClientKind
from shared.outbox import OutboxEntry
from shared.runtime import Service
from shared.settings import KafkaSettings
from tests.factories import WOHNSITZ, submitted
from tests.support import consume, issue_key, produce, running, wait_until

STADT_KELHEIM = uuid.UUID("1d37b5d9-077a-5b24-93ed-099f1d564f34")
S = CaseStatus


def settings_for(database_url: str, kafka: KafkaSettings, **overrides: Any) -> Settings:
    return Settings(database_url=database_url, kafka=kafka, **overrides)


@pytest.fixture
def settings(tmp_path: Path, kafka_settings: KafkaSettings) -> Settings:
    return settings_for(f"sqlite:///{tmp_path / 'routing.db'}", kafka_settings)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def body_for(status: CaseStatus) -> dict[str, Any]:
    """A complete report of ``status``."""
    body: dict[str, Any] = {"status": status.value}
    if status in (S.INFORMATION_REQUESTED, S.DECIDED):
        body["message"] = f"Nachricht zu {status.value}"
    if status == S.DECIDED:
        body["outcome"] = "approved"
    if status == S.REJECTED:
        body["problems"] = [{"type": "urn:example:unreadable", "title": "Anlage nicht lesbar"}]
    return body


def add_case(service: Service, destination_id: uuid.UUID, status: CaseStatus = S.ROUTED) -> uuid.UUID:
    """A case routing dispatched to ``destination_id``, now in ``status``."""
    case_id = uuid.uuid4()
    RoutingStore(service.engine).record(str(uuid.uuid4()), RoutedCase(
        case_id=case_id, reference=f"OZG-2026-{case_id.hex[:4].upper()}-TEST", leika_key=WOHNSITZ, status=status,
        destination_id=destination_id, authority_ars="092730137137", rule="test"))
    return case_id


async def destination_key(kafka: KafkaSettings, service: Service, destination_id: uuid.UUID) -> str:
    _, key = await issue_key(kafka, ClientKind.DESTINATION, service=service, destination_id=destination_id)
    return key


def status_of(service: Service, case_id: uuid.UUID) -> CaseStatus | None:
    case = RoutingStore(service.engine).case(case_id)
    return case.status if case is not None else None


def changes(records: list[Any]) -> list[CaseStatusChanged]:
    return [parse_event(r.headers, r.value, r.key).data_as(CaseStatusChanged) for r in records]


async def test_every_allowed_transition_is_published(settings: Settings, kafka_settings: KafkaSettings) -> None:
    service, app = build(settings)
    async with running(service, app) as client:
        destination = uuid.uuid4()
        key = await destination_key(kafka_settings, service, destination)
        expected: dict[bytes, tuple[CaseStatus, CaseStatus]] = {}
        for current, targets in TRANSITIONS.items():
            for new in targets:
                case_id = add_case(service, destination, current)
                answer = await client.post(f"/v1/cases/{case_id}/status", json=body_for(new), headers=bearer(key))
                assert answer.status_code == 202, answer.text
                assert answer.json()["previous_status"] == current.value
                assert status_of(service, case_id) == new
                expected[str(case_id).encode()] = (current, new)
        records = await consume(kafka_settings, topics.CASE_STATUS, len(expected),
                                predicate=lambda r: r.key in expected)
        for record, change in zip(records, changes(records), strict=True):
            assert record.key is not None
            assert (change.previous_status, change.status) == expected[record.key]
            assert change.destination_id == destination
            assert change.leika_key == WOHNSITZ
            if change.status == S.DECIDED:
                assert change.outcome == events.Outcome.APPROVED
                assert change.message
            if change.status == S.REJECTED:
                assert change.problems[0].title == "Anlage nicht lesbar"


async def test_forbidden_transitions_and_incomplete_reports(settings: Settings, kafka_settings: KafkaSettings) -> None:
    service, app = build(settings)
    async with running(service, app) as client:
        destination = uuid.uuid4()
        key = await destination_key(kafka_settings, service, destination)
        forbidden = [(S.ROUTED, S.IN_PROGRESS), (S.ROUTED, S.DECIDED), (S.RECEIVED, S.DECIDED),
                     (S.RECEIVED, S.CLOSED), (S.IN_PROGRESS, S.RECEIVED), (S.INFORMATION_REQUESTED, S.DECIDED),
                     (S.DECIDED, S.IN_PROGRESS), (S.CLOSED, S.IN_PROGRESS), (S.REJECTED, S.RECEIVED),
                     (S.WITHDRAWN, S.RECEIVED), (S.UNROUTABLE, S.RECEIVED), (S.RECEIVED, S.RECEIVED)]
        for current, new in forbidden:
            case_id = add_case(service, destination, current)
            answer = await client.post(f"/v1/cases/{case_id}/status", json=body_for(new), headers=bearer(key))
            assert answer.status_code == 409, (current, new, answer.text)
            problem = answer.json()
            assert answer.headers["content-type"].startswith("application/problem+json")
            assert problem["allowed"] == [s.value for s in allowed_next(current)]
            assert problem["current_status"] == current.value
            assert status_of(service, case_id) == current
        assert allowed_next(S.CLOSED) == []
        assert allowed_next(S.ROUTED) == [S.RECEIVED, S.REJECTED]

        case_id = add_case(service, destination, S.IN_PROGRESS)
        url = f"/v1/cases/{case_id}/status"
        incomplete = [{"status": "information_requested"}, {"status": "decided", "message": "Bescheid"},
                      {"status": "decided", "outcome": "denied"}, {"status": "rejected"},
                      {"status": "withdrawn"}, {"status": "routed"},
                      {"status": "in_progress", "outcome": "approved"},
                      {"status": "information_requested", "message": "x" * 5001},
                      # PostgreSQL's text takes no NUL: refused here rather than failing where it is stored.
                      {"status": "information_requested", "message": "Bitte\x00 nachreichen"},
                      {"status": "rejected", "problems": [{"title": "Unterschrift\nfehlt"}]}]
        for body in incomplete:
            answer = await client.post(url, json=body, headers=bearer(key))
            assert answer.status_code == 422, (body, answer.text)
            assert answer.json()["errors"]
        # Each error points at the field that is missing or does not go with the status.
        for body, pointer in (({"status": "decided", "message": "Bescheid"}, "#/outcome"),
                              ({"status": "decided", "outcome": "denied"}, "#/message"),
                              ({"status": "rejected"}, "#/problems"),
                              ({"status": "in_progress", "outcome": "approved"}, "#/outcome"),
                              ({"status": "received", "problems": [{"title": "x"}]}, "#/problems")):
            answer = await client.post(url, json=body, headers=bearer(key))
            assert [e["pointer"] for e in answer.json()["errors"]] == [pointer], (body, answer.text)
        assert status_of(service, case_id) == S.IN_PROGRESS

        not_json = await client.post(url, content=b'{"status": "decided", "message": "Bescheid anbei", nope',
                                     headers={**bearer(key), "Content-Type": "application/json"})
        assert not_json.status_code == 400, not_json.text
        assert not_json.headers["content-type"] == "application/problem+json"
        assert not_json.json()["type"] == "urn:ozg:problem:unreadable-body"
        assert "Bescheid" not in not_json.text
        assert status_of(service, case_id) == S.IN_PROGRESS

        # Every consumer would dead-letter an event over max_event_bytes, and the services would fall out of step.
        received = add_case(service, destination, S.ROUTED)
        longest = {"type": "urn:example:" + "t" * 488, "title": "T" * 200, "detail": "D" * 2000,
                   "instance": "urn:example:" + "i" * 488}
        for field, value in (("title", "T" * 201), ("detail", "D" * 2001), ("type", "u" * 501)):
            answer = await client.post(f"/v1/cases/{received}/status", headers=bearer(key), json={
                "status": "rejected", "problems": [{**longest, field: value}]})
            assert answer.status_code == 422, (field, answer.text)
        too_many = {"status": "rejected", "problems": [longest] * 101}
        assert (await client.post(f"/v1/cases/{received}/status", json=too_many,
                                  headers=bearer(key))).status_code == 422
        # 100 problems within every bound, but past half of max_event_bytes (4-byte characters): 413.
        wide = {**longest, "detail": "\U0001F4C4" * 2000}
        large = await client.post(f"/v1/cases/{received}/status", headers=bearer(key),
                                  json={"status": "rejected", "problems": [wide] * 100})
        assert large.status_code == 413, large.text
        assert large.json()["type"] == "urn:ozg:problem:status-report-too-large"
        assert status_of(service, received) == S.ROUTED
        fitting = await client.post(f"/v1/cases/{received}/status", headers=bearer(key),
                                    json={"status": "rejected", "problems": [longest] * 100})
        assert fitting.status_code == 202, fitting.text
        assert status_of(service, received) == S.REJECTED
        # The event keeps accepting what was published before the bounds (consumers must not dead-letter it).
        earlier = CaseStatusChanged(case_id=received, reference="R", status=S.REJECTED, changed_at=datetime.now(UTC),
                                    problems=[{"title": "", "detail": "D" * 5000}] * 150)
        assert CaseStatusChanged.model_validate_json(earlier.model_dump_json()) == earlier


async def test_of_two_concurrent_reports_one_wins(database_url: str, kafka_settings: KafkaSettings) -> None:
    service, app = build(settings_for(database_url, kafka_settings))
    async with running(service, app) as client:
        destination = uuid.uuid4()
        key = await destination_key(kafka_settings, service, destination)
        for _ in range(3):
            case_id = add_case(service, destination)
            url = f"/v1/cases/{case_id}/status"
            answers = await asyncio.gather(
                client.post(url, json=body_for(S.RECEIVED), headers=bearer(key)),
                client.post(url, json=body_for(S.REJECTED), headers=bearer(key)),
            )
            codes = sorted(a.status_code for a in answers)
            assert codes == [202, 409], [a.text for a in answers]
            winner = next(a for a in answers if a.status_code == 202).json()["status"]
            assert status_of(service, case_id) == CaseStatus(winner)
            published = await consume(kafka_settings, topics.CASE_STATUS, 1,
                                      predicate=lambda r, c=case_id: r.key == str(c).encode())
            assert changes(published)[0].status == CaseStatus(winner)


async def test_destinations_see_and_change_only_their_own_cases(
    settings: Settings, kafka_settings: KafkaSettings
) -> None:
    service, app = build(settings)
    async with running(service, app) as client:
        a, b = uuid.uuid4(), uuid.uuid4()
        key_a = await destination_key(kafka_settings, service, a)
        key_b = await destination_key(kafka_settings, service, b)
        _, operator = await issue_key(kafka_settings, ClientKind.OPERATOR, service=service)
        case_b = add_case(service, b)
        url = f"/v1/cases/{case_b}/status"

        not_yours = await client.post(url, json=body_for(S.RECEIVED), headers=bearer(key_a))
        assert not_yours.status_code == 404
        assert not_yours.json()["type"] == "urn:ozg:problem:unknown-case"
        unknown = await client.post(f"/v1/cases/{uuid.uuid4()}/status", json=body_for(S.RECEIVED),
                                    headers=bearer(key_a))
        assert unknown.status_code == 404
        assert (await client.post(url, json=body_for(S.RECEIVED))).status_code == 401
        assert (await client.post(url, json=body_for(S.RECEIVED), headers=bearer(operator))).status_code == 403
        assert status_of(service, case_b) == S.ROUTED

        assert (await client.get(f"/v1/destinations/{b}/cases", headers=bearer(key_a))).status_code == 404
        own = await client.get(f"/v1/destinations/{a}/cases", headers=bearer(key_a))
        assert own.status_code == 200
        assert own.json()["cases"] == []
        assert (await client.get(f"/v1/destinations/{b}/cases", headers=bearer(operator))).status_code == 403

        assert (await client.post(url, json=body_for(S.RECEIVED), headers=bearer(key_b))).status_code == 202
        listed = (await client.get(f"/v1/destinations/{b}/cases", headers=bearer(key_b))).json()["cases"]
        assert [c["case_id"] for c in listed] == [str(case_b)]
        assert listed[0]["status"] == "received"


async def pages(client: httpx.AsyncClient, url: str, key: str, **params: Any) -> list[list[str]]:
    """Every page of a listing, following the ``next`` links from the first."""
    answer = await client.get(url, params=params, headers=bearer(key))
    result: list[list[str]] = []
    while True:
        assert answer.status_code == 200, answer.text
        body = answer.json()
        result.append([c["case_id"] for c in body["cases"]])
        if body["next"] is None:
            return result
        answer = await client.get(body["next"], headers=bearer(key))


async def test_pull_api_pages_by_cursor_and_filters(settings: Settings, kafka_settings: KafkaSettings) -> None:
    service, app = build(settings)
    async with running(service, app) as client:
        destination = uuid.uuid4()
        key = await destination_key(kafka_settings, service, destination)
        created = [add_case(service, destination) for _ in range(5)]
        add_case(service, uuid.uuid4())  # someone else's
        url = f"/v1/destinations/{destination}/cases"

        walked = await pages(client, url, key, limit=2)
        assert walked == [[str(c) for c in created[0:2]], [str(c) for c in created[2:4]], [str(created[4])]]
        first = (await client.get(url, headers=bearer(key))).json()
        assert set(first["cases"][0]) == {"case_id", "reference", "leika_key", "status", "updated_at"}
        assert first["next"] is None

        before = datetime.now(UTC)
        changed = created[2]
        assert (await client.post(f"/v1/cases/{changed}/status", json=body_for(S.RECEIVED),
                                  headers=bearer(key))).status_code == 202
        received = (await client.get(url, params={"status": "received"}, headers=bearer(key))).json()["cases"]
        assert [c["case_id"] for c in received] == [str(changed)]
        recent = (await client.get(url, params={"since": before.isoformat()}, headers=bearer(key))).json()["cases"]
        assert [c["case_id"] for c in recent] == [str(changed)]
        # The next links keep the filters.
        routed = await pages(client, url, key, status="routed", limit=3)
        assert routed == [[str(c) for c in (created[0], created[1], created[3])], [str(created[4])]]
        assert (await client.get(url, params={"limit": 0}, headers=bearer(key))).status_code == 422
        assert (await client.get(url, params={"status": "nonsense"}, headers=bearer(key))).status_code == 422
        # Valid ISO 8601, but before the first UTC time Python has (or after the last): never a 500.
        for edge in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"):
            refused = await client.get(url, params={"since": edge}, headers=bearer(key))
            assert refused.status_code == 422, refused.text
            assert refused.json()["errors"][0]["parameter"] == "since"
        edge_cursor = base64.urlsafe_b64encode(f"0001-01-01T00:00:00+01:00|{created[0]}".encode()).decode()
        for bad in ("nonsense", "bm9uc2Vuc2U", "MjAyNi0wMS0wMXx4", edge_cursor):
            refused = await client.get(url, params={"cursor": bad}, headers=bearer(key))
            assert refused.status_code == 422, refused.text
            assert refused.json()["errors"][0]["parameter"] == "cursor"


async def test_cursor_pages_are_stable_under_concurrent_changes(
    settings: Settings, kafka_settings: KafkaSettings
) -> None:
    service, app = build(settings)
    async with running(service, app) as client:
        destination = uuid.uuid4()
        key = await destination_key(kafka_settings, service, destination)
        created = [add_case(service, destination) for _ in range(6)]
        url = f"/v1/destinations/{destination}/cases"
        first = (await client.get(url, params={"limit": 3}, headers=bearer(key))).json()
        assert [c["case_id"] for c in first["cases"]] == [str(c) for c in created[:3]]
        # Between two pages: new cases arrive, one on the first page changes (an offset would now skip or repeat).
        newer = [add_case(service, destination) for _ in range(2)]
        assert (await client.post(f"/v1/cases/{created[0]}/status", json=body_for(S.RECEIVED),
                                  headers=bearer(key))).status_code == 202
        rest: list[str] = []
        answer = await client.get(first["next"], headers=bearer(key))
        while True:
            body = answer.json()
            rest += [c["case_id"] for c in body["cases"]]
            if body["next"] is None:
                break
            answer = await client.get(body["next"], headers=bearer(key))
        # Nothing of the first page again except the changed case, at its new place; nothing skipped.
        assert rest == [str(c) for c in (*created[3:], *newer, created[0])]
        # The last cursor polls for what comes later: nothing now, the next change then.
        idle = (await client.get(url, params={"cursor": body["cursor"]}, headers=bearer(key))).json()
        assert idle == {"cases": [], "cursor": body["cursor"], "next": None}
        assert (await client.post(f"/v1/cases/{created[1]}/status", json=body_for(S.RECEIVED),
                                  headers=bearer(key))).status_code == 202
        later = (await client.get(url, params={"cursor": body["cursor"]}, headers=bearer(key))).json()
        assert [c["case_id"] for c in later["cases"]] == [str(created[1])]
        # Another destination's cursor or listing shows nothing of these.
        other = uuid.uuid4()
        other_key = await destination_key(kafka_settings, service, other)
        foreign = await client.get(f"/v1/destinations/{other}/cases", params={"cursor": first["cursor"]},
                                   headers=bearer(other_key))
        assert foreign.json()["cases"] == []
        assert (await client.get(url, params={"cursor": first["cursor"]},
                                 headers=bearer(other_key))).status_code == 404


async def test_the_full_loop(settings: Settings, kafka_settings: KafkaSettings) -> None:
    service, app = build(settings.model_copy(update={"demo_destinations": True}))
    async with running(service, app) as client:
        key = await destination_key(kafka_settings, service, STADT_KELHEIM)
        application = submitted(WOHNSITZ, {"postal_code": "93309", "place": "Kelheim"})
        event = build_event(event_type=events.SUBMITTED_V1, source="/test", subject=str(application.case_id),
                            data=application)
        await produce(kafka_settings, topics.SUBMITTED, event.value, event.headers, event.key)
        case_id = application.case_id
        await wait_until(lambda: status_of(service, case_id) == S.ROUTED)
        dispatched = await consume(kafka_settings, topics.destination_topic(STADT_KELHEIM), 1,
                                   predicate=lambda r: r.key == str(case_id).encode())
        assert parse_event(dispatched[0].headers, dispatched[0].value).type == events.DISPATCHED_V1

        walk = [S.RECEIVED, S.IN_PROGRESS, S.INFORMATION_REQUESTED, S.IN_PROGRESS, S.DECIDED, S.CLOSED]
        for new in walk:
            answer = await client.post(f"/v1/cases/{case_id}/status", json=body_for(new), headers=bearer(key))
            assert answer.status_code == 202, answer.text
        listed = (await client.get(f"/v1/destinations/{STADT_KELHEIM}/cases", params={"status": "closed"},
                                   headers=bearer(key))).json()["cases"]
        assert str(case_id) in [c["case_id"] for c in listed]

        records = await consume(kafka_settings, topics.CASE_STATUS, len(walk),
                                predicate=lambda r: r.key == str(case_id).encode())
        seen = changes(records)
        assert [c.status for c in seen] == walk
        assert [c.previous_status for c in seen] == [S.ROUTED, *walk[:-1]]
        assert all(c.reference == application.reference for c in seen)
        for record in records:
            headers = dict(record.headers)
            assert headers["ce_type"] == events.STATUS_CHANGED_V1.encode()
            assert headers["ce_source"] == b"/ozg/routing"
            assert headers["ce_subject"] == str(case_id).encode()
        assert "Erika" not in b"".join(r.value for r in records).decode()


def withdrawal(case_id: uuid.UUID, previous: CaseStatus) -> tuple[str, Any]:
    data = CaseStatusChanged(case_id=case_id, reference="OZG-2026-TEST-WDRN", status=S.WITHDRAWN,
                             previous_status=previous, changed_at=datetime.now(UTC))
    event = build_event(event_type=events.STATUS_CHANGED_V1, source="/ozg/intake", subject=str(case_id),
                        data=data)
    return event.event_id, event


async def test_withdrawal_is_applied_and_forwarded_to_the_destination(
    settings: Settings, kafka_settings: KafkaSettings
) -> None:
    service, app = build(settings)
    async with running(service, app) as client:
        destination = uuid.uuid4()
        key = await destination_key(kafka_settings, service, destination)
        store = RoutingStore(service.engine)
        case_id = add_case(service, destination, S.IN_PROGRESS)
        event_id, event = withdrawal(case_id, S.IN_PROGRESS)
        await produce(kafka_settings, topics.CASE_STATUS, event.value, event.headers, event.key)
        await produce(kafka_settings, topics.CASE_STATUS, event.value, event.headers, event.key)  # redelivered
        await wait_until(lambda: store.status_processed(event_id))
        assert status_of(service, case_id) == S.WITHDRAWN

        forwarded = await consume(kafka_settings, topics.destination_topic(destination), 1,
                                  predicate=lambda r: r.key == str(case_id).encode())
        envelope = parse_event(forwarded[0].headers, forwarded[0].value)
        assert envelope.type == events.STATUS_CHANGED_V1
        assert envelope.id != event_id
        change = envelope.data_as(CaseStatusChanged)
        assert change.status == S.WITHDRAWN
        assert change.destination_id == destination
        assert change.previous_status == S.IN_PROGRESS

        # The destination can no longer move it.
        moved = await client.post(f"/v1/cases/{case_id}/status", json=body_for(S.DECIDED), headers=bearer(key))
        assert moved.status_code == 409
        assert moved.json()["allowed"] == []

        # After a decision a withdrawal is too late: the case stays decided, and the refusal goes out on
        # ozg.cases.status (intake had checked the withdrawal against a copy of the status that lagged behind).
        decided = add_case(service, destination, S.DECIDED)
        late_id, late = withdrawal(decided, S.IN_PROGRESS)
        await produce(kafka_settings, topics.CASE_STATUS, late.value, late.headers, late.key)
        await wait_until(lambda: store.status_processed(late_id))
        assert status_of(service, decided) == S.DECIDED
        [refusal] = await consume(kafka_settings, topics.CASE_STATUS, 1,
                                  predicate=lambda r: r.key == str(decided).encode() and r.value != late.value)
        envelope = parse_event(refusal.headers, refusal.value)
        assert (envelope.source, envelope.id) == ("/ozg/routing",
                                                  derived_event_id(late_id, events.STATUS_CHANGED_V1, "refused"))
        refused = envelope.data_as(CaseStatusChanged)
        assert (refused.status, refused.previous_status, refused.destination_id) == (S.DECIDED, S.WITHDRAWN,
                                                                                     destination)
        # Nothing reaches the destination: for its back office nothing changed.
        with pytest.raises(AssertionError):
            await consume(kafka_settings, topics.destination_topic(destination), 1, timeout_s=2,
                          predicate=lambda r: r.key == str(decided).encode())


async def case_in_clearing(kafka: KafkaSettings, store: RoutingStore) -> uuid.UUID:
    """Submit an application routing cannot decide (an ambiguous postal code) and wait until it is in clearing."""
    application = submitted(WOHNSITZ, {"postal_code": "86695"})
    event = build_event(event_type=events.SUBMITTED_V1, source="/test", subject=str(application.case_id),
                        data=application)
    await produce(kafka, topics.SUBMITTED, event.value, event.headers, event.key)
    await wait_until(lambda: store.clearing_case(application.case_id) is not None)
    return application.case_id


async def test_a_withdrawn_case_leaves_clearing(settings: Settings, kafka_settings: KafkaSettings) -> None:
    service, app = build(settings)
    async with running(service, app) as client:
        _, operator = await issue_key(kafka_settings, ClientKind.OPERATOR, service=service)
        store = RoutingStore(service.engine)
        case_id = await case_in_clearing(kafka_settings, store)

        event_id, withdrawn = withdrawal(case_id, S.UNROUTABLE)
        await produce(kafka_settings, topics.CASE_STATUS, withdrawn.value, withdrawn.headers, withdrawn.key)
        await wait_until(lambda: store.status_processed(event_id))
        assert status_of(service, case_id) == S.WITHDRAWN
        # The kept application (personal data) is gone, and nobody can route the case by hand any more.
        assert store.clearing_case(case_id) is None
        listed = (await client.get("/v1/clearing", headers=bearer(operator))).json()["cases"]
        assert str(case_id) not in [c["case_id"] for c in listed]
        by_hand = await client.post(f"/v1/clearing/{case_id}", headers=bearer(operator),
                                    json={"destination_id": str(STADT_KELHEIM), "region": {"ags": "09273137"}})
        assert by_hand.status_code == 409
        assert (by_hand.json()["type"].endswith("left-clearing"), by_hand.json()["current_status"]) == (
            True, "withdrawn")


async def test_a_withdrawal_during_routing_by_hand_wins(
    settings: Settings, kafka_settings: KafkaSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The withdrawal is applied while an operator's manual routing awaits the broker: the operator gets 409, the
    case stays withdrawn, and no routed or dispatched event is on its way."""
    service, app = build(settings.model_copy(update={"demo_destinations": True}))
    async with running(service, app) as client:
        _, operator = await issue_key(kafka_settings, ClientKind.OPERATOR, service=service)
        store = RoutingStore(service.engine)
        case_id = await case_in_clearing(kafka_settings, store)

        event_id, withdrawn = withdrawal(case_id, S.UNROUTABLE)
        ensure_topic = RoutingState.ensure_topic

        async def withdrawn_meanwhile(self: RoutingState, kafka: KafkaSettings, destination_id: uuid.UUID) -> None:
            await produce(kafka_settings, topics.CASE_STATUS, withdrawn.value, withdrawn.headers, withdrawn.key)
            await wait_until(lambda: store.status_processed(event_id))
            await ensure_topic(self, kafka, destination_id)

        monkeypatch.setattr(RoutingState, "ensure_topic", withdrawn_meanwhile)
        by_hand = await client.post(f"/v1/clearing/{case_id}", headers=bearer(operator),
                                    json={"destination_id": str(STADT_KELHEIM), "region": {"ags": "09273137"}})
        assert by_hand.status_code == 409, by_hand.text
        assert by_hand.json()["type"].endswith("left-clearing")
        assert status_of(service, case_id) == S.WITHDRAWN
        with Session(service.engine) as session:
            staged = session.exec(select(OutboxEntry.event_type).where(OutboxEntry.key == str(case_id))).all()
        assert events.ROUTED_V1 not in staged
        assert events.DISPATCHED_V1 not in staged
