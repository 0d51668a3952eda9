"""Routing against the real broker: dispatch, clearing, idempotency, the routes API (poison: tests/resilience)."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from services.routing.app import build
from services.routing.settings import Settings
from shared import events, topics
from shared.envelope import build_event, parse_event
from shared.events import ApplicationDispatched, ApplicationRouted, ApplicationUnroutable
from shared.settings import KafkaSettings
from tests.factories import WOHNGELD, WOHNSITZ, submitted
from tests.support import consume, produce, running

STADT_KELHEIM = "1d37b5d9-077a-5b24-93ed-099f1d564f34"


@pytest.fixture
def settings(tmp_path: Path, kafka_settings: KafkaSettings) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path / 'routing.db'}", kafka=kafka_settings,
                    demo_destinations=True)


def for_case(case_id: uuid.UUID):  # type: ignore[no-untyped-def]
    return lambda record: record.key == str(case_id).encode()


async def send(kafka: KafkaSettings, data: events.ApplicationSubmitted, event_id: str | None = None) -> str:
    event = build_event(event_type=events.SUBMITTED_V1, source="/test", subject=str(data.case_id), data=data,
                        event_id=event_id)
    await produce(kafka, topics.SUBMITTED, event.value, event.headers, event.key)
    return event.event_id


async def test_dispatches_to_the_competent_destination_once(settings: Settings, kafka_settings: KafkaSettings) -> None:
    service, app = build(settings)
    async with running(service, app) as client:
        application = submitted(WOHNSITZ, {"postal_code": "93309", "place": "Kelheim"})
        event_id = await send(kafka_settings, application)
        await send(kafka_settings, application, event_id)  # redelivery of the same event

        routed = await consume(kafka_settings, topics.ROUTED, 1, predicate=for_case(application.case_id))
        envelope = parse_event(routed[0].headers, routed[0].value, routed[0].key)
        decision = envelope.data_as(ApplicationRouted)
        assert decision.authority.ars == "092730137137"
        assert decision.rule == "BY:gemeinde"
        assert str(decision.destination_id) == STADT_KELHEIM
        assert "Erika" not in routed[0].value.decode()  # metadata only

        destination_topic = topics.destination_topic(STADT_KELHEIM)
        dispatched = await consume(kafka_settings, destination_topic, 1, predicate=for_case(application.case_id))
        case = parse_event(dispatched[0].headers, dispatched[0].value, dispatched[0].key)
        assert case.type == events.DISPATCHED_V1
        assert case.data_as(ApplicationDispatched).application.applicant.name == "Erika Mustermann"

        # The redelivered event produced no second pair.
        with pytest.raises(AssertionError, match="only 1 of 2"):
            await consume(kafka_settings, topics.ROUTED, 2, predicate=for_case(application.case_id), timeout_s=3)

        # The dispatch was timed from the submission's event time.
        metrics = (await client.get("/metrics")).text
        count = re.search(r"^ozg_dispatch_latency_seconds_count (\S+)$", metrics, re.MULTILINE)
        assert count is not None
        assert float(count[1]) >= 1


async def test_unroutable_cases_go_to_clearing_with_a_reason(settings: Settings, kafka_settings: KafkaSettings) -> None:
    service, app = build(settings)
    async with running(service, app):
        cases = {
            "unknown_region": submitted(WOHNSITZ, {"ags": "01001000"}),
            "ambiguous_postal_code": submitted(WOHNSITZ, {"postal_code": "86695"}),
            "no_destination": submitted(WOHNGELD, {"ags": "06531007"}),
        }
        for application in cases.values():
            await send(kafka_settings, application)
        for reason, application in cases.items():
            records = await consume(kafka_settings, topics.UNROUTABLE, 1, predicate=for_case(application.case_id))
            data = parse_event(records[0].headers, records[0].value).data_as(ApplicationUnroutable)
            assert data.reason.value == reason
            if reason == "ambiguous_postal_code":
                assert {c.name for c in data.candidates} == {"Nordendorf", "Allmannshofen"}


async def test_routes_api(settings: Settings) -> None:
    service, app = build(settings)
    async with running(service, app) as client:
        ok = await client.get("/v1/routes", params={"leika_key": WOHNGELD, "postal_code": "93309"})
        assert ok.status_code == 200
        body = ok.json()
        assert body["authority"] == {"ars": "09273", "name": "Kelheim", "level": "kreis"}
        assert body["region"]["ags"] == "09273137"
        assert body["destinations"][0]["name"] == "Landratsamt Kelheim"

        unknown = await client.get("/v1/routes", params={"leika_key": WOHNGELD, "ags": "01001000"})
        assert unknown.status_code == 404
        ambiguous = await client.get("/v1/routes", params={"leika_key": WOHNSITZ, "postal_code": "65510"})
        assert ambiguous.status_code == 409
        assert {c["name"] for c in ambiguous.json()["candidates"]} >= {"Hünstetten"}
        malformed = await client.get("/v1/routes", params={"leika_key": "123", "ags": "09273137"})
        assert malformed.status_code == 422
        assert malformed.json()["errors"][0]["parameter"] == "leika_key"
        no_region = await client.get("/v1/routes", params={"leika_key": WOHNGELD})
        assert no_region.status_code == 422
