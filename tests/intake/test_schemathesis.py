"""Schemathesis against intake's own OpenAPI, in-process and against the real broker: for every operation a
bounded, derandomized number of generated requests (valid and invalid), authenticated as a portal; no answer may be
a server error and every answer must match the response the schema declares for its status.

The schema comes from the running app's ``/openapi.json``. The requests go through the test's own ASGI client
rather than schemathesis's ASGI transport: in schemathesis 4 that transport starts the app's lifespan a second time
on an event loop of its own, while the broker (and with it every submission) lives on the test's loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio.from_thread
import anyio.to_thread
import httpx
import pytest
import requests
import schemathesis
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

from services.intake.app import build
from services.intake.settings import Settings
from shared.events import ClientKind
from shared.settings import KafkaSettings
from tests.support import issue_key, running

MAX_EXAMPLES = 25
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance, status_code_conformance,
          response_headers_conformance]


@pytest.fixture
def intake_settings(tmp_path: Path, kafka_settings: KafkaSettings) -> Settings:
    # A generous rate limit: the fuzzer's volume must not turn every later answer into a 429.
    return Settings(database_url=f"sqlite:///{tmp_path / 'intake.db'}", kafka=kafka_settings,
                    blob_dir=tmp_path / "blobs", rate_limit="100000/minute")


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


async def test_schemathesis_finds_no_server_errors_and_no_schema_violations(
    intake_settings: Settings, kafka_settings: KafkaSettings
) -> None:
    service, app = build(intake_settings)
    async with running(service, app) as client:
        _, key = await issue_key(kafka_settings, ClientKind.PORTAL, service=service)
        raw = (await client.get("/openapi.json")).json()
        schema = schemathesis.openapi.from_dict(raw)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {op.label for op in operations} >= {
            "POST /v1/applications", "GET /v1/applications/{case_id}", "POST /v1/attachments",
            "GET /v1/attachments/{attachment_id}", "GET /v1/services", "POST /v1/applications/{case_id}/withdrawal",
        }
        auth = {"Authorization": f"Bearer {key}"}
        checked: list[str] = []

        def fuzz(operation: Any) -> None:
            strategy = st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                                 operation.as_strategy(GenerationMode.NEGATIVE))

            @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                             HealthCheck.data_too_large])
            @given(case=strategy)
            def check(case: Any) -> None:
                kwargs = case.as_transport_kwargs(base_url="http://testserver", headers=auth)
                response = anyio.from_thread.run(send, client, kwargs)
                case.validate_response(response, checks=CHECKS,
                                       headers=kwargs.get("headers"))
                checked.append(operation.label)

            check()

        for operation in operations:
            await anyio.to_thread.run_sync(fuzz, operation)
        assert set(checked) == {op.label for op in operations}
