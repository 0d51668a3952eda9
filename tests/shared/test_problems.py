"""The problem details every service answers with (shared/problems.py), on a small app of their own."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from shared import problems

SECRET = "Erika Mustermann"  # stands for personal data in a body: it must never come back


class Applicant(BaseModel):
    name: str


def app_with_a_body_route() -> FastAPI:
    app = FastAPI()
    problems.install(app)

    @app.post("/applicants")
    async def create(body: Applicant) -> Applicant:
        return body

    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app_with_a_body_route())
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"{nope", "(Expecting property name enclosed in double quotes: line 1 column 2)"),
        (f'{{"name": "{SECRET}"'.encode(), "(Expecting ',' delimiter: line 1 column 28)"),
        (f'{{"name": "{SECRET}"}} trailing'.encode(), "(Extra data: line 1 column 30)"),
        # Deeper than Python's parser recurses: RecursionError, which FastAPI turns into a bare 400.
        (b'{"name": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", None),
        (f'{{"name": "{SECRET}\xff"}}'.encode("latin-1"), None),  # not UTF-8
    ],
    ids=["not-json", "cut-off", "trailing-text", "nested-10000-deep", "not-utf-8"],
)
async def test_an_unreadable_body_is_a_400_of_the_projects_type(
    client: httpx.AsyncClient, body: bytes, detail: str | None
) -> None:
    answer = await client.post("/applicants", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 400
    assert answer.headers["content-type"] == problems.MEDIA_TYPE
    problem = answer.json()
    assert problem["type"] == "urn:ozg:problem:unreadable-body"
    assert problem["status"] == 400
    assert problem["instance"] == "/applicants"
    assert "errors" not in problem
    if detail is not None:
        assert detail in problem["detail"]
    assert SECRET not in answer.text
    assert "nope" not in answer.text


async def test_a_readable_body_that_breaks_the_model_stays_a_422(client: httpx.AsyncClient) -> None:
    answer = await client.post("/applicants", json={"name": ["not", "a", "string"]})
    assert answer.status_code == 422
    assert answer.json()["type"] == "urn:ozg:problem:validation"
    assert [e["pointer"] for e in answer.json()["errors"]] == ["#/name"]


async def test_the_openapi_document_declares_the_400_where_a_body_is_read(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    declared = document["paths"]["/applicants"]["post"]["responses"]["400"]
    assert declared["content"] == {problems.MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    members = document["components"]["schemas"]["Problem"]["properties"]
    # The extension members some problems carry are declared, so a client can rely on their shape.
    assert {"current_status", "allowed", "candidates", "checks"} <= set(members)


async def test_the_frameworks_own_404_and_405_carry_the_projects_types(client: httpx.AsyncClient) -> None:
    for answer, kind in ((await client.get("/nowhere"), "not-found"), (await client.get("/applicants"),
                                                                       "method-not-allowed")):
        assert answer.headers["content-type"] == problems.MEDIA_TYPE
        assert answer.json()["type"] == f"urn:ozg:problem:{kind}"
    assert (await client.get("/applicants")).headers["allow"] == "POST"
