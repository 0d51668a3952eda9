"""The operator's API against the real broker: destination registry, clearing, replicas picking up changes."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.exc import OperationalError

from services.routing import app as routing_app
from services.routing.app import build
from services.routing.importer import import_directory
from services.routing.models import Destination
from services.routing.settings import Settings
from services.routing.store import RoutingStore
from shared import events, topics
from shared.envelope import build_event, parse_event
from shared.events import ApplicationDispatched, ApplicationRouted, ClientKind
from shared.settings import KafkaSettings
from shared.topics import ensure_topics
from tests.factories import WOHNGELD, WOHNSITZ, submitted
from tests.support import consume, issue_key, produce, running, wait_until

LANDRATSAMT_KELHEIM = "43ae26ea-e805-5195-a336-d8f8280f38ea"


def settings_for(database: Path, kafka: KafkaSettings, **overrides: Any) -> Settings:
    return Settings(database_url=f"sqlite:///{database}", kafka=kafka, poll_interval_s=0.2, **overrides)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def send(kafka: KafkaSettings, data: events.ApplicationSubmitted) -> None:
    event = build_event(event_type=events.SUBMITTED_V1, source="/test", subject=str(data.case_id), data=data)
    await produce(kafka, topics.SUBMITTED, event.value, event.headers, event.key)


def for_case(case_id: uuid.UUID):  # type: ignore[no-untyped-def]
    return lambda record: record.key == str(case_id).encode()


async def test_destination_registry(tmp_path: Path, kafka_settings: KafkaSettings) -> None:
    service, app = build(settings_for(tmp_path / "routing.db", kafka_settings))
    async with running(service, app) as client:
        _, operator = await issue_key(kafka_settings, ClientKind.OPERATOR, service=service)
        _, portal = await issue_key(kafka_settings, ClientKind.PORTAL, service=service)
        destination_id = uuid.uuid4()
        url = f"/v1/destinations/{destination_id}"
        body = {"name": "Landratsamt Kelheim, Wohngeldstelle", "authority_ars": "09273", "leika_keys": [WOHNGELD],
                "webhook": {"url": "https://fachverfahren.example.org/ozg", "secret": "s3cret-s3cret-s3cret"}}

        assert (await client.put(url, json=body)).status_code == 401
        assert (await client.put(url, json=body, headers=bearer(portal))).status_code == 403
        insecure = {**body, "webhook": {"url": "http://example.org/ozg", "secret": "s3cret-s3cret-s3cret"}}
        for plain in (insecure, {**insecure, "webhook": {**insecure["webhook"], "url": "http://127.0.0.1:8080/"}}):
            refused_plain = await client.put(url, json=plain, headers=bearer(operator))
            assert refused_plain.status_code == 422
            assert [e["pointer"] for e in refused_plain.json()["errors"]] == ["#/webhook/url"]
        nul_secret = {**body, "webhook": {**body["webhook"], "secret": "s3cret\x00s3cret-s3cret"}}
        for control in ({**body, "name": "Landratsamt\x00"}, nul_secret):
            assert (await client.put(url, json=control, headers=bearer(operator))).status_code == 422

        for unreadable in (b'{"name": "Landratsamt Kelheim", nope', b"[" * 10_000 + b"]" * 10_000):
            not_json = await client.put(url, content=unreadable,
                                        headers={**bearer(operator), "Content-Type": "application/json"})
            assert not_json.status_code == 400, not_json.text
            assert not_json.headers["content-type"] == "application/problem+json"
            assert not_json.json()["type"] == "urn:ozg:problem:unreadable-body"
            assert "Kelheim" not in not_json.text
            assert "nope" not in not_json.text

        # A typo would register a back office that never receives a case: an authority of every level must be in
        # the directory, and a service in the catalogue.
        typo = {**body, "authority_ars": "092731111111", "leika_keys": [WOHNGELD, "99999999999999"]}
        refused_typo = await client.put(url, json=typo, headers=bearer(operator))
        assert refused_typo.status_code == 422
        assert [(e["pointer"], e["code"]) for e in refused_typo.json()["errors"]] == [
            ("#/authority_ars", "unknown_authority"), ("#/leika_keys/1", "unknown_leika_key")]
        for unknown_ars in ("17", "09999", "092739999"):
            answer = await client.put(url, json={**body, "authority_ars": unknown_ars}, headers=bearer(operator))
            assert answer.status_code == 422, unknown_ars
        assert (await client.get(url, headers=bearer(operator))).status_code == 404
        for known_ars in ("09", "092735215", "092730137137"):  # Land, Verwaltungsgemeinschaft, Gemeinde
            other = f"/v1/destinations/{uuid.uuid4()}"
            answer = await client.put(other, json={**body, "authority_ars": known_ars}, headers=bearer(operator))
            assert answer.status_code == 201, (known_ars, answer.text)
            assert (await client.delete(other, headers=bearer(operator))).status_code == 204

        created = await client.put(url, json=body, headers=bearer(operator))
        assert created.status_code == 201, created.text
        answer = created.json()
        assert answer["channels"] == {"kafka": {"topic": f"ozg.dest.{destination_id}"},
                                      "webhook": {"url": "https://fachverfahren.example.org/ozg"}}
        assert "s3cret" not in created.text

        got = await client.get(url, headers=bearer(operator))
        assert got.status_code == 200
        assert "s3cret" not in got.text
        route = await client.get("/v1/routes", params={"leika_key": WOHNGELD, "ags": "09273137"})
        assert {"destination_id": str(destination_id), "name": body["name"], "channels": ["kafka", "webhook"]} in \
            route.json()["destinations"]
        other_service = await client.get("/v1/routes", params={"leika_key": WOHNSITZ, "ags": "09273137"})
        assert str(destination_id) not in other_service.text

        # The secret is kept when a replacement names the same webhook without it.
        renamed = {**body, "name": "Landratsamt Kelheim", "webhook": {"url": "https://fachverfahren.example.org/ozg"}}
        replaced = await client.put(url, json=renamed, headers=bearer(operator))
        assert replaced.status_code == 200
        stored = RoutingStore(service.engine).destination(destination_id)
        assert stored is not None
        assert stored.webhook_secret == "s3cret-s3cret-s3cret"
        # Not for another webhook: the previous receiver's secret must not sign for a new one.
        moved = {**body, "webhook": {"url": "https://elsewhere.example.org/ozg"}}
        refused = await client.put(url, json=moved, headers=bearer(operator))
        assert refused.status_code == 422
        assert refused.json()["errors"][0]["pointer"] == "#/webhook/secret"
        unchanged = RoutingStore(service.engine).destination(destination_id)
        assert unchanged is not None
        assert unchanged.webhook_url == "https://fachverfahren.example.org/ozg"

        assert (await client.delete(url, headers=bearer(operator))).status_code == 204
        missing = await client.get(url, headers=bearer(operator))
        assert missing.status_code == 404
        assert missing.headers["content-type"].startswith("application/problem+json")
        assert (await client.delete(url, headers=bearer(operator))).status_code == 404


async def test_a_developer_may_register_a_plain_http_webhook_on_loopback_only(
    tmp_path: Path, kafka_settings: KafkaSettings
) -> None:
    service, app = build(settings_for(tmp_path / "routing.db", kafka_settings, webhook_allow_http_loopback=True))
    async with running(service, app) as client:
        _, operator = await issue_key(kafka_settings, ClientKind.OPERATOR, service=service)
        body = {"name": "Stadt Kelheim (Entwicklung)", "authority_ars": "092730137137"}
        for url, status in (("http://127.0.0.1:8080/ozg", 201), ("http://localhost:8080/ozg", 201),
                            ("http://[::1]:8080/ozg", 201), ("http://example.org/ozg", 422),
                            ("http://10.0.0.1/ozg", 422), ("https://example.org/ozg", 201)):
            webhook = {"url": url, "secret": "s3cret-s3cret-s3cret"}
            answer = await client.put(f"/v1/destinations/{uuid.uuid4()}", json={**body, "webhook": webhook},
                                      headers=bearer(operator))
            assert answer.status_code == status, (url, answer.text)


async def test_a_registration_a_newer_directory_no_longer_knows_can_still_be_replaced(
    tmp_path: Path, kafka_settings: KafkaSettings
) -> None:
    service, app = build(settings_for(tmp_path / "routing.db", kafka_settings))
    async with running(service, app) as client:
        _, operator = await issue_key(kafka_settings, ClientKind.OPERATOR, service=service)
        destination_id = uuid.uuid4()
        # Registered under an earlier Gebietsstand and catalogue: the Gemeinde and the service are gone now.
        RoutingStore(service.engine).upsert_destination(Destination(
            destination_id=destination_id, name="Altgemeinde", authority_ars="091111111111",
            leika_keys=["99999999999999"]))
        body = {"name": "Altgemeinde", "authority_ars": "091111111111", "leika_keys": ["99999999999999"],
                "webhook": {"url": "https://altgemeinde.example/ozg", "secret": "n3w-s3cret-n3w-s3cret"}}
        url = f"/v1/destinations/{destination_id}"
        assert (await client.put(url, json=body, headers=bearer(operator))).status_code == 200
        # Changing to another unknown authority or adding an unknown service is still refused.
        moved = await client.put(url, json={**body, "authority_ars": "091111111112"}, headers=bearer(operator))
        assert [e["pointer"] for e in moved.json()["errors"]] == ["#/authority_ars"]
        added = await client.put(url, json={**body, "leika_keys": ["99999999999999", "99999999999998"]},
                                 headers=bearer(operator))
        assert [e["pointer"] for e in added.json()["errors"]] == ["#/leika_keys/1"]


async def test_every_replica_sees_new_destinations_and_a_new_directory(
    tmp_path: Path, kafka_settings: KafkaSettings, handout_data: Path
) -> None:
    database = tmp_path / "routing.db"
    # A consumer group of their own: after two members of one group leave, Tansu 0.6 keeps the next member
    # of that group waiting in its join for longer than the tests wait (seen with Tansu 0.6 in this suite).
    first, first_app = build(settings_for(database, kafka_settings, service_name="routing-replicas"))
    second, second_app = build(settings_for(database, kafka_settings, service_name="routing-replicas"))
    async with running(first, first_app) as one, running(second, second_app) as two:
        _, operator = await issue_key(kafka_settings, ClientKind.OPERATOR, service=first)
        destination_id = uuid.uuid4()
        put = await one.put(f"/v1/destinations/{destination_id}", headers=bearer(operator),
                            json={"name": "Stadt Aschaffenburg", "authority_ars": "09661"})
        assert put.status_code == 201

        async def listed(client: httpx.AsyncClient) -> bool:
            answer = await client.get("/v1/routes", params={"leika_key": WOHNGELD, "ags": "09661000"})
            return str(destination_id) in answer.text

        await wait_until(lambda: listed(two))

        # Flensburg is not in the demo directory; after an import, both replicas know it without a restart.
        flensburg = {"leika_key": WOHNGELD, "ags": "01001000"}
        assert (await two.get("/v1/routes", params=flensburg)).status_code == 404
        import_directory(first.engine, handout_data / "GV100AD_30112025.txt")

        async def known(client: httpx.AsyncClient) -> bool:
            return (await client.get("/v1/routes", params=flensburg)).status_code == 200

        await wait_until(lambda: known(one))
        await wait_until(lambda: known(two))
        answer = (await two.get("/v1/routes", params=flensburg)).json()
        assert answer["authority"] == {"ars": "01001", "name": "Flensburg, Stadt", "level": "kreis"}
        assert answer["rule"] == "default:kreisfreie-stadt"


async def test_clearing(tmp_path: Path, kafka_settings: KafkaSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(routing_app, "CLEARING_COUNT_INTERVAL_S", 0.1)
    service, app = build(settings_for(tmp_path / "routing.db", kafka_settings, demo_destinations=True))

    async def waiting_count(expected: int) -> bool:
        # What the OzgUnroutableCases alert watches: the cases waiting now, not decisions made lately.
        return f"ozg_clearing_cases {float(expected)}" in (await client.get("/metrics")).text

    async with running(service, app) as client:
        _, operator = await issue_key(kafka_settings, ClientKind.OPERATOR, service=service)
        no_destination = submitted(WOHNGELD, {"ags": "06531007"})  # Heuchelheim: no demo back office
        ambiguous = submitted(WOHNSITZ, {"postal_code": "86695"})
        for application in (no_destination, ambiguous):
            await send(kafka_settings, application)

        async def waiting() -> dict[str, Any]:
            listed = (await client.get("/v1/clearing", headers=bearer(operator))).json()["cases"]
            cases = {c["case_id"]: c for c in listed}
            return cases if {str(no_destination.case_id), str(ambiguous.case_id)} <= set(cases) else {}

        cases = await wait_until(waiting)
        await wait_until(lambda: waiting_count(2))
        assert cases[str(no_destination.case_id)]["reason"] == "no_destination"
        assert cases[str(ambiguous.case_id)]["reason"] == "ambiguous_postal_code"
        assert cases[str(ambiguous.case_id)]["reference"] == ambiguous.reference
        listing = await client.get("/v1/clearing", headers=bearer(operator))
        assert "Erika" not in listing.text  # no personal data in the list
        assert (await client.get("/v1/clearing")).status_code == 401
        for listing_url in ("/v1/clearing", "/v1/clearing/webhooks"):  # an offset beyond 64 bits: 422, never 500
            assert (await client.get(f"{listing_url}?offset={2**63}", headers=bearer(operator))).status_code == 422
            assert (await client.get(f"{listing_url}?offset={2**63 - 1}", headers=bearer(operator))).status_code == 200

        url = f"/v1/clearing/{no_destination.case_id}"
        routed = await client.post(url, headers=bearer(operator), json={"destination_id": LANDRATSAMT_KELHEIM})
        assert routed.status_code == 200, routed.text
        assert routed.json()["rule"] == "manual:clearing"
        records = await consume(kafka_settings, topics.ROUTED, 1, predicate=for_case(no_destination.case_id))
        decision = parse_event(records[0].headers, records[0].value).data_as(ApplicationRouted)
        assert decision.manual
        assert str(decision.destination_id) == LANDRATSAMT_KELHEIM
        assert decision.region.ags == "06531007"
        dispatched = await consume(kafka_settings, topics.destination_topic(LANDRATSAMT_KELHEIM), 1,
                                   predicate=for_case(no_destination.case_id))
        case = parse_event(dispatched[0].headers, dispatched[0].value).data_as(ApplicationDispatched)
        assert case.application.applicant.name == "Erika Mustermann"
        again = await client.post(url, headers=bearer(operator), json={"destination_id": LANDRATSAMT_KELHEIM})
        assert again.status_code == 409

        # The ambiguous one needs the Gemeinde named; an unknown destination is refused.
        url = f"/v1/clearing/{ambiguous.case_id}"
        unknown = await client.post(url, headers=bearer(operator), json={"destination_id": str(uuid.uuid4())})
        assert unknown.status_code == 422
        unnamed = await client.post(url, headers=bearer(operator), json={"destination_id": LANDRATSAMT_KELHEIM})
        assert unnamed.status_code == 422
        named = await client.post(url, headers=bearer(operator),
                                  json={"destination_id": LANDRATSAMT_KELHEIM, "region": {"ags": "09772185"}})
        assert named.status_code == 200, named.text
        remaining = (await client.get("/v1/clearing", headers=bearer(operator))).json()["cases"]
        assert {str(no_destination.case_id), str(ambiguous.case_id)}.isdisjoint(c["case_id"] for c in remaining)
        await wait_until(lambda: waiting_count(0))
        assert (await client.post(f"/v1/clearing/{uuid.uuid4()}", headers=bearer(operator),
                                  json={"destination_id": LANDRATSAMT_KELHEIM})).status_code == 404


@pytest.mark.parametrize("count", [60])
async def test_a_batch_with_poison_records_and_duplicates(
    tmp_path: Path, kafka_settings: KafkaSettings, count: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first batch fails as a whole (the database away for a moment) and is redelivered: its poison records
    # still reach the .dlq once each.
    record_many = RoutingStore.record_many
    failed: list[bool] = []

    def fail_once(store: RoutingStore, *args: Any, **kwargs: Any) -> Any:
        if not failed:
            failed.append(True)
            raise OperationalError("INSERT", {}, ConnectionRefusedError("database restarting"))
        return record_many(store, *args, **kwargs)

    monkeypatch.setattr(RoutingStore, "record_many", fail_once)
    service, app = build(settings_for(tmp_path / "routing.db", kafka_settings, demo_destinations=True))
    # On the topic before routing starts, so that its first batch holds poison records too.
    await ensure_topics(kafka_settings, topics.standard_topics())
    marker = uuid.uuid4().hex
    applications = [submitted(WOHNSITZ, {"postal_code": "93309", "place": "Kelheim"}) for _ in range(count)]
    for index, application in enumerate(applications):
        event = build_event(event_type=events.SUBMITTED_V1, source="/test", subject=str(application.case_id),
                            data=application)
        await produce(kafka_settings, topics.SUBMITTED, event.value, event.headers, event.key)
        if index % 20 == 0:
            await produce(kafka_settings, topics.SUBMITTED, event.value, event.headers, event.key)  # duplicate
            await produce(kafka_settings, topics.SUBMITTED, b"\xff", {"ce_specversion": "1.0"},
                          f"poison-{marker}-{index}".encode())
    async with running(service, app):
        wanted = {str(a.case_id).encode() for a in applications}
        routed = await consume(kafka_settings, topics.ROUTED, count, predicate=lambda r: r.key in wanted)
        assert len({r.key for r in routed}) == count
        dead = await consume(kafka_settings, topics.dlq_topic(topics.SUBMITTED), 3,
                             predicate=lambda r: marker.encode() in (r.key or b""))
        assert len(dead) == 3
        assert failed
        with pytest.raises(AssertionError, match="only 3 of 4"):
            await consume(kafka_settings, topics.dlq_topic(topics.SUBMITTED), 4, timeout_s=3,
                          predicate=lambda r: marker.encode() in (r.key or b""))
