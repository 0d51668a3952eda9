"""SPEC §9 "bad input" on HTTP: schemathesis against the OpenAPI document of each of the four services.

Each service runs in-process against the real broker; for every operation of its own ``/openapi.json`` a bounded,
derandomized number of generated requests (valid and invalid) is sent with a key holding every scope, so the
requests get past authentication to the real handlers. No answer may be a server error, and every answer must be
one the document declares: status code, content type, headers and body schema.

The requests go through the test's own ASGI client rather than schemathesis's ASGI transport: in schemathesis 4
that transport starts the app's lifespan a second time on an event loop of its own, while the broker (and with it
every publishing handler) lives on the test's loop.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio.from_thread
import anyio.to_thread
import httpx
import pytest
import requests
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from services.audit.app import build as build_audit
from services.audit.settings import Settings as AuditSettings
from services.intake.app import build as build_intake
from services.intake.settings import Settings as IntakeSettings
from services.notify.app import build as build_notify
from services.notify.settings import Settings as NotifySettings
from services.routing.app import build as build_routing
from services.routing.settings import Settings as RoutingSettings
from shared.auth import SCOPES
from shared.events import ClientKind
from shared.runtime import Service
from shared.settings import KafkaSettings
from tests.support import issue_key, running

# Per operation; with a few dozen operations in all, the four documents take well under two minutes.
MAX_EXAMPLES = 25
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance, status_code_conformance,
          response_headers_conformance]
EVERY_SCOPE = sorted(SCOPES)


def intake(root: Path, kafka: KafkaSettings) -> tuple[Service, FastAPI]:
    # A generous rate limit: the fuzzer's volume must not turn every later answer into a 429.
    return build_intake(IntakeSettings(database_url=f"sqlite:///{root / 'intake.db'}", kafka=kafka,
                                       blob_dir=root / "blobs", rate_limit="100000/minute", log_json=False))


def routing(root: Path, kafka: KafkaSettings) -> tuple[Service, FastAPI]:
    return build_routing(RoutingSettings(database_url=f"sqlite:///{root / 'routing.db'}", kafka=kafka,
                                         log_json=False))


def notify(root: Path, kafka: KafkaSettings) -> tuple[Service, FastAPI]:
    return build_notify(NotifySettings(database_url=f"sqlite:///{root / 'notify.db'}", kafka=kafka,
                                       letter_dir=str(root / "letters"), smtp_port=1, log_json=False))


def audit(root: Path, kafka: KafkaSettings) -> tuple[Service, FastAPI]:
    return build_audit(AuditSettings(database_url=f"sqlite:///{root / 'audit.db'}", kafka=kafka,
                                     signing_key_file=root / "audit-key.pem", log_json=False))


# Each service, the client kind of its typical caller, and operations its document must have.
SERVICES: dict[str, tuple[Callable[[Path, KafkaSettings], tuple[Service, FastAPI]], ClientKind, set[str]]] = {
    "intake": (intake, ClientKind.PORTAL, {
        "POST /v1/applications", "GET /v1/applications/{case_id}", "POST /v1/applications/{case_id}/withdrawal",
        "POST /v1/attachments", "GET /v1/attachments/{attachment_id}", "GET /v1/services"}),
    "routing": (routing, ClientKind.OPERATOR, {
        "GET /v1/routes", "PUT /v1/destinations/{destination_id}", "GET /v1/clearing",
        "POST /v1/clearing/{case_id}", "POST /v1/cases/{case_id}/status",
        "GET /v1/destinations/{destination_id}/cases", "GET /v1/clearing/webhooks",
        "POST /v1/clearing/webhooks/{delivery_id}/redeliver"}),
    "notify": (notify, ClientKind.OPERATOR, {"GET /v1/notifications"}),
    "audit": (audit, ClientKind.AUDITOR, {
        "GET /v1/cases/{case_id}/trail", "GET /v1/verify", "GET /v1/checkpoints",
        "GET /v1/checkpoints/public-key"}),
}


async def send(client: httpx.AsyncClient, kwargs: dict[str, Any]) -> httpx.Response:
    """Send a generated case's ``requests`` keyword arguments through the httpx client, encoded by ``requests``
    itself (multipart, form, JSON) exactly as schemathesis would put them on the wire."""
    prepared = requests.Request(
        method=kwargs["method"], url=kwargs["url"], headers=kwargs.get("headers"), params=kwargs.get("params"),
        data=kwargs.get("data"), files=kwargs.get("files"), json=kwargs.get("json"), cookies=kwargs.get("cookies"),
    ).prepare()
    assert prepared.method is not None
    assert prepared.url is not None
    body = prepared.body.encode() if isinstance(prepared.body, str) else prepared.body
    request = client.build_request(prepared.method, prepared.url, headers=dict(prepared.headers), content=body)
    return await client.send(request)


def fuzz(operation: Any, client: httpx.AsyncClient, auth: dict[str, str], checked: list[str]) -> None:
    """Run the bounded examples of one operation (in a worker thread: hypothesis drives them synchronously)."""
    strategy = st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                         operation.as_strategy(GenerationMode.NEGATIVE))

    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
    @given(case=strategy)
    def check(case: Any) -> None:
        kwargs = case.as_transport_kwargs(base_url="http://testserver", headers=auth)
        response = anyio.from_thread.run(send, client, kwargs)
        case.validate_response(response, checks=CHECKS, headers=kwargs.get("headers"))
        checked.append(operation.label)

    check()


@pytest.mark.parametrize("name", list(SERVICES))
async def test_schemathesis_finds_no_server_errors_and_no_schema_violations(
    name: str, tmp_path: Path, kafka_settings: KafkaSettings
) -> None:
    build, kind, expected = SERVICES[name]
    service, app = build(tmp_path, kafka_settings)
    async with running(service, app) as client:
        _, key = await issue_key(kafka_settings, kind, service=service, scopes=EVERY_SCOPE)
        schema = schemathesis.openapi.from_dict((await client.get("/openapi.json")).json())
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {op.label for op in operations} >= expected
        auth = {"Authorization": f"Bearer {key}"}
        checked: list[str] = []
        for operation in operations:
            await anyio.to_thread.run_sync(fuzz, operation, client, auth, checked)
        assert set(checked) == {op.label for op in operations}


async def test_the_answer_of_a_service_still_reading_its_keys_is_declared(tmp_path: Path) -> None:
    """A service that has not read ozg.clients to its end answers 503 to a key it does not know yet; its document
    says so for every operation that checks a key (shared/problems.py), which the fuzzing above cannot reach."""
    _, app = notify(tmp_path, KafkaSettings(bootstrap_servers="127.0.0.1:9"))  # never started: no key read yet
    document = app.openapi()
    secured = [(path, method, op) for path, item in document["paths"].items() for method, op in item.items()
               if "security" in op]
    assert secured
    assert all({"401", "503"} <= set(op["responses"]) for _, _, op in secured)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
        answer = await client.get("/v1/notifications", params={"case_id": "5f0c3a8e-2b7d-4e61-9c3a-7d2f1e0b9a44"},
                                  headers={"Authorization": "Bearer ozg_unknown"})
    assert answer.status_code == 503
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.headers["retry-after"] == "1"
    declared = document["paths"]["/v1/notifications"]["get"]["responses"]["503"]
    assert declared["content"]["application/problem+json"]["schema"] == {"$ref": "#/components/schemas/Problem"}
    assert "Retry-After" in declared["headers"]
