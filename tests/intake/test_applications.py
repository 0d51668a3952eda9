"""Intake's application API against the real broker: accept, replay, refuse, and follow the status."""

from __future__ import annotations

import gc
import json
import uuid
from pathlib import Path

import httpx
import pytest

from services.intake.app import build
from services.intake.settings import Settings
from shared import events, topics
from shared.envelope import build_event, parse_event
from shared.events import ApplicationRouted, ApplicationSubmitted, Authority, AuthorityLevel, ClientKind, ResolvedRegion
from shared.settings import KafkaSettings
from tests.factories import WOHNSITZ, application_body
from tests.support import consume, issue_key, produce, running, wait_until


@pytest.fixture
def settings(tmp_path: Path, kafka_settings: KafkaSettings) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path / 'intake.db'}", kafka=kafka_settings)


def auth(key: str, idempotency_key: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key}"}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    return headers


async def test_start_up_objects_are_out_of_the_collectors_reach_while_running(settings: Settings) -> None:
    service, app = build(settings)
    async with running(service, app):
        assert gc.get_freeze_count() > 10_000
    assert gc.get_freeze_count() == 0


async def test_accepts_publishes_replays_and_reports_status(settings: Settings, kafka_settings: KafkaSettings) -> None:
    service, app = build(settings)
    async with running(service, app) as client:
        _, key = await issue_key(kafka_settings, ClientKind.PORTAL, service=service)
        body = application_body()
        idem = str(uuid.uuid4())

        first = await client.post("/v1/applications", json=body, headers=auth(key, idem))
        assert first.status_code == 202, first.text
        answer = first.json()
        assert answer["status"] == "submitted"
        assert answer["reference"].startswith("OZG-")
        assert answer["links"]["status"].endswith(f"/v1/applications/{answer['case_id']}")

        # The event is on the broker, in binary content mode, keyed by the case id.
        records = await consume(kafka_settings, topics.SUBMITTED, 1,
                                predicate=lambda r: r.key == answer["case_id"].encode())
        envelope = parse_event(records[0].headers, records[0].value, records[0].key)
        assert envelope.type == events.SUBMITTED_V1
        assert envelope.subject == answer["case_id"]
        assert envelope.headers["content-type"] == "application/json"
        data = envelope.data_as(ApplicationSubmitted)
        assert data.reference == answer["reference"]
        assert data.applicant.name == "Erika Mustermann"

        # Same key and body: the same answer, and no second event.
        again = await client.post("/v1/applications", json=body, headers=auth(key, idem))
        assert again.status_code == 202
        assert again.json() == answer
        # Same key, other body: refused.
        other = application_body(region={"ags": "09273111"})
        reused = await client.post("/v1/applications", json=other, headers=auth(key, idem))
        assert reused.status_code == 422
        assert reused.headers["content-type"] == "application/problem+json"
        assert reused.json()["type"] == "urn:ozg:problem:idempotency-key-reused"

        # Routing's answer reaches the status query.
        routed = ApplicationRouted(
            case_id=uuid.UUID(answer["case_id"]), reference=answer["reference"], leika_key=WOHNSITZ,
            region=ResolvedRegion(ars="092730137137", ags="09273137", name="Kelheim, St"),
            authority=Authority(ars="092730137137", name="Kelheim, St", level=AuthorityLevel.GEMEINDE),
            rule="default:gemeinde", destination_id=uuid.uuid4(), destination_name="Stadt Kelheim",
        )
        event = build_event(event_type=events.ROUTED_V1, source="/test", subject=answer["case_id"], data=routed)
        for _ in range(2):  # redelivered: recorded once
            await produce(kafka_settings, topics.ROUTED, event.value, event.headers, event.key)

        async def routed_status() -> httpx.Response | None:
            response = await client.get(f"/v1/applications/{answer['case_id']}", headers=auth(key))
            return response if response.json().get("status") == "routed" else None

        status = await wait_until(routed_status)
        assert [h["status"] for h in status.json()["history"]] == ["submitted", "routed"]


async def test_refuses_bad_requests_with_problem_details(settings: Settings, kafka_settings: KafkaSettings) -> None:
    service, app = build(settings)
    async with running(service, app) as client:
        _, portal = await issue_key(kafka_settings, ClientKind.PORTAL, service=service)
        _, auditor = await issue_key(kafka_settings, ClientKind.AUDITOR, service=service)
        body = application_body()

        missing_key = await client.post("/v1/applications", json=body, headers={"Idempotency-Key": "a"})
        assert missing_key.status_code == 401
        assert missing_key.headers["www-authenticate"].startswith("Bearer")
        wrong_key = await client.post("/v1/applications", json=body, headers=auth("ozg_nope", "a"))
        assert wrong_key.status_code == 401
        no_scope = await client.post("/v1/applications", json=body, headers=auth(auditor, "a"))
        assert no_scope.status_code == 403

        no_idem = await client.post("/v1/applications", json=body, headers=auth(portal))
        assert no_idem.status_code == 422
        assert {"header": "idempotency-key"}.items() <= no_idem.json()["errors"][0].items()

        bad_field = application_body()
        bad_field["applicant"]["contact"] = {}
        bad_field["region"] = {"ags": "123"}
        invalid = await client.post("/v1/applications", json=bad_field, headers=auth(portal, "b"))
        assert invalid.status_code == 422
        problem = invalid.json()
        assert problem["type"] == "urn:ozg:problem:validation"
        pointers = {e["pointer"] for e in problem["errors"]}
        assert "#/region/ags" in pointers
        assert "erika" not in invalid.text.lower()  # input is never echoed
        for field, text in (("name", "Erika\x00Mustermann"), ("name", "Erika\nMustermann")):
            control = application_body()
            control["applicant"][field] = text
            refused = await client.post("/v1/applications", json=control, headers=auth(portal, f"ctl-{text!r}"))
            assert refused.status_code == 422
            assert [e["pointer"] for e in refused.json()["errors"]] == [f"#/applicant/{field}"]

        bad_form = application_body()
        bad_form["form"] = {"unexpected": True}
        form_problem = await client.post("/v1/applications", json=bad_form, headers=auth(portal, "c"))
        assert form_problem.status_code == 422
        assert all(e["pointer"].startswith("#/form") for e in form_problem.json()["errors"])

        # Nested beyond what the schema validator and the serialisers take (they give up near 255 levels): a 422.
        deep_form = application_body()
        for _ in range(300):
            deep_form["form"] = {"nested": deep_form["form"]}
        too_deep = await client.post("/v1/applications", json=deep_form, headers=auth(portal, "e"))
        assert too_deep.status_code == 422
        assert [e["pointer"] for e in too_deep.json()["errors"]] == ["#/form"]
        deep_form["form"] = {}
        for _ in range(events.MAX_FORM_DEPTH - 1):  # as deep as allowed: the form's own schema decides
            deep_form["form"] = {"nested": deep_form["form"]}
        deep_enough = await client.post("/v1/applications", json=deep_form, headers=auth(portal, "f"))
        assert deep_enough.status_code == 422
        assert all(e["code"] != "value_error" for e in deep_enough.json()["errors"])

        # A lone surrogate is valid JSON but no character: it cannot be stored or sent on (it was a 500).
        for where, body in (("#/form", {**application_body(), "form": {"note": "Stra\ud800e"}}),
                            ("#/form", {**application_body(), "form": {"\udfff": "x"}}),
                            ("#/applicant/name", application_body())):
            if where == "#/applicant/name":
                body["applicant"]["name"] = "Erika \udc00"
            lone = await client.post("/v1/applications", content=json.dumps(body).encode(),
                                     headers={**auth(portal, f"lone-{where}-{len(str(body))}"),
                                              "Content-Type": "application/json"})
            assert lone.status_code == 422, lone.text
            assert [e["pointer"] for e in lone.json()["errors"]][:1] == [where]
        paired = application_body()
        paired["form"] = {**paired["form"], "note": "\U0001f600"}  # escaped as a surrogate pair in the JSON
        emoji = await client.post("/v1/applications", content=json.dumps(paired).encode(),
                                  headers={**auth(portal, "paired"), "Content-Type": "application/json"})
        assert emoji.status_code != 500

        # A body that is no JSON at all, or nested deeper than the parser goes, is a 400, not a field's 422.
        name = application_body()["applicant"]["name"]
        for unreadable in (b"{nope", f'{{"applicant": {{"name": "{name}"'.encode(), b"[" * 10_000 + b"]" * 10_000):
            not_json = await client.post("/v1/applications", content=unreadable,
                                         headers={**auth(portal, "g"), "Content-Type": "application/json"})
            assert not_json.status_code == 400, not_json.text
            assert not_json.headers["content-type"] == "application/problem+json"
            assert not_json.json()["type"] == "urn:ozg:problem:unreadable-body"
            assert "nope" not in not_json.text
            assert name not in not_json.text

        unknown_service = application_body()
        unknown_service["leika_key"] = "99999999999999"
        unknown = await client.post("/v1/applications", json=unknown_service, headers=auth(portal, "d"))
        assert unknown.status_code == 422
        assert unknown.json()["errors"][0]["pointer"] == "#/leika_key"


async def test_a_client_sees_only_its_own_cases(settings: Settings, kafka_settings: KafkaSettings) -> None:
    service, app = build(settings)
    async with running(service, app) as client:
        _, mine = await issue_key(kafka_settings, ClientKind.PORTAL, service=service)
        _, theirs = await issue_key(kafka_settings, ClientKind.COUNTER, service=service)
        response = await client.post("/v1/applications", json=application_body(reply_channel="email"),
                                     headers=auth(mine, "x"))
        case_id = response.json()["case_id"]
        assert (await client.get(f"/v1/applications/{case_id}", headers=auth(mine))).status_code == 200
        foreign = await client.get(f"/v1/applications/{case_id}", headers=auth(theirs))
        assert foreign.status_code == 404
        unknown = await client.get(f"/v1/applications/{uuid.uuid4()}", headers=auth(mine))
        assert unknown.status_code == 404
        assert foreign.json()["detail"] == unknown.json()["detail"]


async def test_catalogue_and_operations_endpoints(settings: Settings) -> None:
    service, app = build(settings)
    async with running(service, app) as client:
        catalogue = (await client.get("/v1/services")).json()
        assert {entry["leika_key"] for entry in catalogue} >= {WOHNSITZ, "99107023037000"}
        assert all(entry["form_schema"]["$schema"].endswith("2020-12/schema") for entry in catalogue)
        assert (await client.get("/health/live")).json() == {"status": "ok"}
        ready = await client.get("/health/ready")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"broker": True, "database": True}
        metrics = await client.get("/metrics")
        assert "faststream_received_messages_total" in metrics.text or "ozg_service_up" in metrics.text
        openapi = (await client.get("/openapi.json")).json()
        assert openapi["openapi"].startswith("3.1")
        assert "/v1/applications" in openapi["paths"]
