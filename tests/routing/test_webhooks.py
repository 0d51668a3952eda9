"""Webhook delivery against a real HTTP server as the back office, and the real broker."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import http.server
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlmodel import Session, col, select

from services.routing.app import build
from services.routing.models import Destination, WebhookDelivery
from services.routing.settings import Settings
from services.routing.store import RoutingStore
from services.routing.webhooks import WebhookStore, sign
from shared import events, topics
from shared.envelope import build_event, parse_event
from shared.events import ApplicationSubmitted, CaseStatus, CaseStatusChanged, ClientKind
from shared.runtime import Service
from shared.settings import KafkaSettings
from tests.factories import WOHNSITZ, submitted
from tests.support import consume, issue_key, produce, running, wait_until

SECRET = "a-long-webhook-secret-for-tests"


def verify(secret: str, timestamp: str, body: bytes, signature: str, now: float | None = None) -> bool:
    """The receiver's check as the README documents it: fresh timestamp (5 minutes), constant-time compare."""
    now = time.time() if now is None else now
    if not timestamp.isdigit() or abs(now - int(timestamp)) > 300:
        return False
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha512).hexdigest()
    return hmac.compare_digest(expected, signature)


class BackOffice:
    """A threaded HTTP server as a back office: it verifies each request as the README documents (401 if that
    fails), otherwise answers from a script of (status, delay); it records every request.

    With ``subject``, only that case's requests follow the script and are recorded; others get 200. The tests share
    one broker and routing's consumer group, so a routing instance may yet be handed cases an earlier test left
    unacknowledged, and they go to the same Kelheim back office."""

    def __init__(self, script: list[tuple[int, float]], subject: uuid.UUID | None = None,
                 answer: tuple[dict[str, str], bytes] = ({}, b"")) -> None:
        self.script = list(script)
        self.requests: list[tuple[dict[str, str], bytes]] = []
        office = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, delay = 200, 0.0
                if subject is None or headers.get("ce-subject") == str(subject):
                    office.requests.append((headers, body))
                    status, delay = office.script.pop(0) if office.script else (200, 0.0)
                if not verify(SECRET, headers.get("x-ozg-timestamp", ""), body, headers.get("x-ozg-signature", "")):
                    status, delay = 401, 0.0
                time.sleep(delay)
                self.send_response(status)
                answer_headers, answer_body = answer
                for name, value in answer_headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer_body)))
                self.end_headers()
                self.wfile.write(answer_body)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ozg"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> BackOffice:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def settings(tmp_path: Path, kafka_settings: KafkaSettings) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path / 'routing.db'}", kafka=kafka_settings, poll_interval_s=0.1,
                    webhook_allow_http_loopback=True, webhook_poll_interval_s=0.05, webhook_backoff_base_s=0.05,
                    webhook_timeout_s=1.0)


@pytest.fixture
def destination_id() -> uuid.UUID:
    return uuid.uuid4()


def register(service: Service, destination_id: uuid.UUID, url: str) -> None:
    """Register a back office for Stadt Kelheim's Wohnsitz cases (directly: the API accepts https only)."""
    RoutingStore(service.engine).upsert_destination(Destination(
        destination_id=destination_id, name="Stadt Kelheim, Bürgerbüro (Test)", authority_ars="092730137137",
        leika_keys=[WOHNSITZ], webhook_url=url, webhook_secret=SECRET))


async def produce_submitted(kafka: KafkaSettings, application: ApplicationSubmitted) -> None:
    event = build_event(event_type=events.SUBMITTED_V1, source="/test", subject=str(application.case_id),
                        data=application)
    await produce(kafka, topics.SUBMITTED, event.value, event.headers, event.key)


def kelheim_application() -> ApplicationSubmitted:
    """A Wohnsitz application in Kelheim: routed to the back office ``register`` sets up."""
    return submitted(WOHNSITZ, {"postal_code": "93309", "place": "Kelheim"})


async def submit(kafka: KafkaSettings, application: ApplicationSubmitted) -> uuid.UUID:
    await produce_submitted(kafka, application)
    return application.case_id


async def knows(client: httpx.AsyncClient, destination_id: uuid.UUID) -> bool:
    """Whether routing's in-memory index has picked up the destination (it polls the database)."""
    answer = await client.get("/v1/routes", params={"leika_key": WOHNSITZ, "ags": "09273137"})
    return str(destination_id) in answer.text


@contextlib.asynccontextmanager
async def serving(settings: Settings, destination_id: uuid.UUID,
                  url: str) -> AsyncIterator[tuple[Service, httpx.AsyncClient]]:
    """Routing running, with the destination registered to the webhook at ``url`` and known to its API."""
    service, app = build(settings)
    async with running(service, app) as client:
        register(service, destination_id, url)
        await wait_until(lambda: knows(client, destination_id))
        yield service, client


def delivery_of(service: Service, case_id: uuid.UUID) -> WebhookDelivery | None:
    with Session(service.engine) as session:
        return session.exec(select(WebhookDelivery).where(col(WebhookDelivery.case_id) == case_id)).first()


def deliveries_of(service: Service, case_id: uuid.UUID) -> list[WebhookDelivery]:
    with Session(service.engine) as session:
        query = select(WebhookDelivery).where(col(WebhookDelivery.case_id) == case_id)
        return list(session.exec(query.order_by(col(WebhookDelivery.created_at))).all())


def settled(service: Service, case_id: uuid.UUID) -> WebhookDelivery | None:
    delivery = delivery_of(service, case_id)
    return delivery if delivery is not None and delivery.status != "pending" else None


async def test_a_500_is_retried_and_the_event_delivered_once_signed(
    settings: Settings, kafka_settings: KafkaSettings, destination_id: uuid.UUID
) -> None:
    application = kelheim_application()
    with BackOffice([(500, 0.0), (200, 0.0)], subject=application.case_id) as office:
        async with serving(settings, destination_id, office.url) as (service, client):
            case_id = await submit(kafka_settings, application)
            delivery = await wait_until(lambda: settled(service, case_id))
            assert delivery.status == "delivered"
            assert delivery.body == ""  # personal data dropped once delivered
            attempts = WebhookStore(service.engine).attempts(delivery.delivery_id)
            assert [(a.outcome, a.status_code) for a in attempts] == [("retry", 500), ("delivered", 200)]
            metrics = (await client.get("/metrics")).text
            assert 'ozg_webhook_deliveries_total{outcome="delivered"} 1.0' in metrics
            assert 'ozg_webhook_deliveries_total{outcome="retry"} 1.0' in metrics

        assert len(office.requests) == 2
        for headers, body in office.requests:
            assert verify(SECRET, headers["x-ozg-timestamp"], body, headers["x-ozg-signature"])
            assert headers["x-ozg-signature"] == sign(SECRET, headers["x-ozg-timestamp"], body)
            assert headers["ce-type"] == events.DISPATCHED_V1
            assert headers["ce-subject"] == str(case_id)
            assert headers["ce-specversion"] == "1.0"
            assert headers["content-type"] == "application/json"
            data = json.loads(body)
            assert data["case_id"] == str(case_id)
            assert data["destination_id"] == str(destination_id)
        assert office.requests[0][0]["ce-id"] == office.requests[1][0]["ce-id"] == delivery.event_id
        # A tampered body or a stale timestamp fails the documented verification.
        headers, body = office.requests[0]
        assert not verify(SECRET, headers["x-ozg-timestamp"], body + b" ", headers["x-ozg-signature"])
        stale = str(int(time.time()) - 301)
        assert not verify(SECRET, stale, body, sign(SECRET, stale, body))


async def test_the_answers_body_is_not_read_so_a_broken_one_changes_nothing(
    settings: Settings, kafka_settings: KafkaSettings, destination_id: uuid.UUID
) -> None:
    # A 200 whose body claims gzip but is not: decoding it would raise, and the delivery would be attempted again
    # and again without ever being settled.
    application = kelheim_application()
    with BackOffice([(200, 0.0)], subject=application.case_id,
                    answer=({"Content-Encoding": "gzip"}, b"not gzip at all")) as office:
        async with serving(settings, destination_id, office.url) as (service, _):
            case_id = await submit(kafka_settings, application)
            delivery = await wait_until(lambda: settled(service, case_id))
            assert delivery.status == "delivered"
            attempts = WebhookStore(service.engine).attempts(delivery.delivery_id)
            assert [(a.outcome, a.status_code) for a in attempts] == [("delivered", 200)]
        assert len(office.requests) == 1


async def test_other_4xx_answers_are_not_retried(
    settings: Settings, kafka_settings: KafkaSettings, destination_id: uuid.UUID
) -> None:
    application = kelheim_application()
    with BackOffice([(400, 0.0)], subject=application.case_id) as office:
        async with serving(settings, destination_id, office.url) as (service, client):
            case_id = await submit(kafka_settings, application)
            delivery = await wait_until(lambda: settled(service, case_id))
            assert delivery.status == "failed"
            attempts = WebhookStore(service.engine).attempts(delivery.delivery_id)
            assert [(a.outcome, a.status_code) for a in attempts] == [("failed", 400)]
            # Flagged for an operator, with what went wrong and no personal data.
            _, operator = await issue_key(kafka_settings, ClientKind.OPERATOR, service=service)
            flagged = await client.get("/v1/clearing/webhooks", headers={"Authorization": f"Bearer {operator}"})
            assert flagged.status_code == 200
            mine = [f for f in flagged.json() if f["case_id"] == str(case_id)]
            assert [(f["attempts"], f["last_error"]) for f in mine] == [(1, "HTTP 400")]
            assert "Erika" not in flagged.text
            _, portal = await issue_key(kafka_settings, ClientKind.PORTAL, service=service)
            forbidden = await client.get("/v1/clearing/webhooks", headers={"Authorization": f"Bearer {portal}"})
            assert forbidden.status_code == 403
        assert len(office.requests) == 1


async def test_a_timeout_is_retried_after_a_restart_of_routing(
    settings: Settings, kafka_settings: KafkaSettings, destination_id: uuid.UUID
) -> None:
    # The first answer comes after the client's timeout; routing stops before the next attempt is due.
    slow = settings.model_copy(update={"webhook_timeout_s": 0.3, "webhook_backoff_base_s": 3600.0,
                                       "webhook_backoff_max_s": 3600.0})
    application = kelheim_application()
    with BackOffice([(200, 1.0)], subject=application.case_id) as office:
        async with serving(slow, destination_id, office.url) as (service, _):
            case_id = await submit(kafka_settings, application)

            def timed_out() -> bool:
                delivery = delivery_of(service, case_id)
                return delivery is not None and delivery.last_error == "timeout"

            await wait_until(timed_out)
        # Make the persisted retry due now, as if the back-off had passed while routing was down.
        delivery = delivery_of(service, case_id)
        assert delivery is not None
        assert delivery.status == "pending"
        with service.engine.begin() as connection:
            connection.execute(update(WebhookDelivery).values(next_attempt_at=delivery.created_at))

        restarted, restarted_app = build(settings)
        async with running(restarted, restarted_app):
            done = await wait_until(lambda: settled(restarted, case_id))
            assert done.status == "delivered"
            attempts = WebhookStore(restarted.engine).attempts(done.delivery_id)
            assert [(a.attempt, a.outcome, a.error) for a in attempts] == [(1, "retry", "timeout"),
                                                                            (2, "delivered", None)]
        assert len(office.requests) == 2


async def test_a_withdrawal_before_routing_reaches_topic_and_webhook_after_the_case(
    settings: Settings, kafka_settings: KafkaSettings, destination_id: uuid.UUID
) -> None:
    # The case's first push fails: its withdrawal must wait for the case's retry, never overtake it.
    application = kelheim_application()
    with BackOffice([(500, 0.0)], subject=application.case_id) as office:
        async with serving(settings, destination_id, office.url) as (service, client):
            case_id = application.case_id
            withdrawal = build_event(
                event_type=events.STATUS_CHANGED_V1, source="/ozg/intake", subject=str(case_id),
                data=CaseStatusChanged(case_id=case_id, reference=application.reference, status=CaseStatus.WITHDRAWN,
                                       previous_status=CaseStatus.SUBMITTED, leika_key=WOHNSITZ,
                                       changed_at=datetime.now(UTC)))
            # The withdrawal overtakes the submission (they travel on different topics): kept, not dropped.
            await produce(kafka_settings, topics.CASE_STATUS, withdrawal.value, withdrawal.headers, withdrawal.key)
            store = RoutingStore(service.engine)
            await wait_until(lambda: store.status_processed(withdrawal.event_id))
            assert store.case(case_id) is None

            await produce_submitted(kafka_settings, application)
            await wait_until(lambda: getattr(store.case(case_id), "status", None) == CaseStatus.WITHDRAWN)
            # Redelivered: changes nothing, forwards nothing again.
            await produce(kafka_settings, topics.CASE_STATUS, withdrawal.value, withdrawal.headers, withdrawal.key)

            def both_delivered() -> list[WebhookDelivery] | None:
                rows = deliveries_of(service, case_id)
                return rows if len(rows) == 2 and all(r.status == "delivered" for r in rows) else None

            await wait_until(both_delivered)
            on_topic = await consume(kafka_settings, topics.destination_topic(destination_id), 2,
                                     predicate=lambda r: r.key == str(case_id).encode())
            types = [dict(r.headers)["ce_type"].decode() for r in on_topic]
            assert types == [events.DISPATCHED_V1, events.STATUS_CHANGED_V1]
            forwarded = parse_event(on_topic[1].headers, on_topic[1].value).data_as(CaseStatusChanged)
            assert (forwarded.status, forwarded.destination_id) == (CaseStatus.WITHDRAWN, destination_id)
            # Once routed and withdrawn, the case is the destination's to see as such, and nothing moves it.
            _, key = await issue_key(kafka_settings, ClientKind.DESTINATION, service=service,
                                     destination_id=destination_id)
            moved = await client.post(f"/v1/cases/{case_id}/status", json={"status": "received"},
                                      headers={"Authorization": f"Bearer {key}"})
            assert moved.status_code == 409
            await asyncio.sleep(0.5)  # time for a wrongly repeated forward to show up
            assert len(deliveries_of(service, case_id)) == 2

        pushed = [(h, b) for h, b in office.requests if h["ce-subject"] == str(case_id)]
        assert [(h["ce-type"], json.loads(b).get("status")) for h, b in pushed] == [
            (events.DISPATCHED_V1, None), (events.DISPATCHED_V1, None), (events.STATUS_CHANGED_V1, "withdrawn")]
        withdrawn_headers, withdrawn_body = pushed[-1]
        assert withdrawn_headers["ce-id"] == dict(on_topic[1].headers)["ce_id"].decode()
        assert verify(SECRET, withdrawn_headers["x-ozg-timestamp"], withdrawn_body,
                      withdrawn_headers["x-ozg-signature"])


async def test_a_request_failing_verification_is_refused_by_the_back_office(
    settings: Settings, kafka_settings: KafkaSettings, destination_id: uuid.UUID
) -> None:
    application = kelheim_application()
    with BackOffice([], subject=application.case_id) as office:
        service, app = build(settings)
        async with running(service, app) as client:
            register(service, destination_id, office.url)
            # Routing signs with another secret than the back office knows: the documented check refuses it.
            with Session(service.engine) as session:
                row = session.get_one(Destination, destination_id)
                row.webhook_secret = "not-the-secret-the-back-office-has"
                session.add(row)
                session.commit()
            await wait_until(lambda: knows(client, destination_id))
            case_id = await submit(kafka_settings, application)
            delivery = await wait_until(lambda: settled(service, case_id))
            assert delivery.status == "failed"
            assert delivery.last_error == "HTTP 401"
        assert len(office.requests) == 1
        # A correctly signed request with a stale timestamp (a replay) is refused all the same.
        headers, body = office.requests[0]
        stale = str(int(time.time()) - 301)
        async with httpx.AsyncClient() as http:
            replayed = await http.post(office.url, content=body, headers={
                **headers, "x-ozg-timestamp": stale, "x-ozg-signature": sign(SECRET, stale, body)})
            fresh = str(int(time.time()))
            signed = await http.post(office.url, content=body, headers={
                **headers, "x-ozg-timestamp": fresh, "x-ozg-signature": sign(SECRET, fresh, body)})
        assert (replayed.status_code, signed.status_code) == (401, 200)


async def test_a_delivery_refused_by_a_broken_receiver_is_redelivered_once_it_is_fixed(
    settings: Settings, kafka_settings: KafkaSettings, destination_id: uuid.UUID
) -> None:
    # A bug in the back office's signature check answers 401: final, the delivery fails. The team deploys a fixed
    # receiver (here at another URL, re-registered), and the operator redelivers.
    application = kelheim_application()
    with BackOffice([(401, 0.0)], subject=application.case_id) as broken, \
            BackOffice([], subject=application.case_id) as fixed:
        async with serving(settings, destination_id, broken.url) as (service, client):
            case_id = await submit(kafka_settings, application)
            failed = await wait_until(lambda: settled(service, case_id))
            assert (failed.status, failed.last_error) == ("failed", "HTTP 401")
            assert failed.body != ""  # kept for a redelivery
            _, operator = await issue_key(kafka_settings, ClientKind.OPERATOR, service=service)
            auth = {"Authorization": f"Bearer {operator}"}
            listed = [f for f in (await client.get("/v1/clearing/webhooks", headers=auth)).json()
                      if f["delivery_id"] == str(failed.delivery_id)]
            assert [(f["status"], f["redeliverable"]) for f in listed] == [("failed", True)]
            until = datetime.fromisoformat(listed[0]["redeliverable_until"])
            assert failed.settled_at is not None
            assert until - failed.settled_at == timedelta(days=30)  # ROUTING_WEBHOOK_FAILED_KEEP_DAYS
            register(service, destination_id, fixed.url)

            url = f"/v1/clearing/webhooks/{failed.delivery_id}/redeliver"
            _, portal = await issue_key(kafka_settings, ClientKind.PORTAL, service=service)
            assert (await client.post(url, headers={"Authorization": f"Bearer {portal}"})).status_code == 403
            assert (await client.post(url)).status_code == 401
            unknown = await client.post(f"/v1/clearing/webhooks/{uuid.uuid4()}/redeliver", headers=auth)
            assert (unknown.status_code, unknown.json()["type"]) == (404, "urn:ozg:problem:unknown-delivery")

            answer = await client.post(url, headers=auth)
            assert answer.status_code == 202
            assert (answer.json()["delivery_id"], answer.json()["status"]) == (str(failed.delivery_id), "pending")
            done = await wait_until(lambda: settled(service, case_id))
            assert done.status == "delivered"
            assert done.body == ""  # delivered: the personal data goes
            attempts = WebhookStore(service.engine).attempts(done.delivery_id)
            assert [(a.attempt, a.outcome, a.status_code) for a in attempts] == [(1, "failed", 401),
                                                                                  (2, "delivered", 200)]
            again = await client.post(url, headers=auth)
            assert (again.status_code, again.json()["type"]) == (409, "urn:ozg:problem:not-failed")
            flagged = (await client.get("/v1/clearing/webhooks", headers=auth)).text
            assert str(failed.delivery_id) not in flagged
            assert "ozg_webhook_redeliveries_total 1.0" in (await client.get("/metrics")).text

        assert len(broken.requests) == len(fixed.requests) == 1
        (first, _), (headers, body) = broken.requests[0], fixed.requests[0]
        assert headers["ce-id"] == first["ce-id"] == failed.event_id  # the receiver de-duplicates on it
        assert verify(SECRET, headers["x-ozg-timestamp"], body, headers["x-ozg-signature"])
        assert json.loads(body)["case_id"] == str(case_id)


async def test_a_failed_deliverys_event_is_deleted_after_the_keep_time_and_not_redelivered(
    settings: Settings, kafka_settings: KafkaSettings, destination_id: uuid.UUID
) -> None:
    short = settings.model_copy(update={"webhook_failed_keep_days": 1 / 86400, "webhook_retention_interval_s": 0.1})
    application = kelheim_application()
    with BackOffice([(400, 0.0)], subject=application.case_id) as office:
        async with serving(short, destination_id, office.url) as (service, client):
            case_id = await submit(kafka_settings, application)
            failed = await wait_until(lambda: settled(service, case_id))
            assert failed.status == "failed"
            # A second after it failed, the retention job clears the kept event.
            await wait_until(lambda: getattr(delivery_of(service, case_id), "body", None) == "")
            _, operator = await issue_key(kafka_settings, ClientKind.OPERATOR, service=service)
            auth = {"Authorization": f"Bearer {operator}"}
            listed = [f for f in (await client.get("/v1/clearing/webhooks", headers=auth)).json()
                      if f["delivery_id"] == str(failed.delivery_id)]
            assert [(f["redeliverable"], f["redeliverable_until"]) for f in listed] == [(False, None)]
            refused = await client.post(f"/v1/clearing/webhooks/{failed.delivery_id}/redeliver", headers=auth)
            assert (refused.status_code, refused.json()["type"]) == (409, "urn:ozg:problem:body-deleted")
            # The deletion is audited like intake's and notify's.
            records = await consume(kafka_settings, topics.DELETIONS, 1,
                                    predicate=lambda r: r.key == str(case_id).encode())
            deleted = parse_event(records[0].headers, records[0].value)
            assert deleted.type == events.PERSONAL_DATA_DELETED_V1
            assert (deleted.data["service"], deleted.data["categories"], deleted.data["reason"]) == (
                "routing", ["webhook_deliveries"], "retention")
        assert len(office.requests) == 1
