"""RFC 9457 problem details for every HTTP error, validation errors pointing at each bad field."""

from __future__ import annotations

import json
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "urn:ozg:problem:"
# The kind of the 400 every service answers for a request body that cannot be parsed at all.
UNREADABLE_BODY = "unreadable-body"
# The name of ProblemDetail's schema in every service's OpenAPI document.
PROBLEM_SCHEMA = "Problem"
_PROBLEM_REF = {"$ref": f"#/components/schemas/{PROBLEM_SCHEMA}"}
# What FastAPI declares for a request that fails validation: replaced by the problem it really answers.
_FASTAPI_422 = "#/components/schemas/HTTPValidationError"
_INT_HEADER: dict[str, Any] = {"schema": {"type": "integer", "minimum": 0}}
RETRY_AFTER: dict[str, Any] = {"Retry-After": {"description": "Seconds to wait before retrying", **_INT_HEADER}}


class ProblemDetail(BaseModel):
    """The body of every error response (RFC 9457)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[dict[str, Any]] | None = None
    # Extension members (RFC 9457 §3.2) some problems carry, declared so that clients can rely on their shape.
    current_status: str | None = Field(default=None, description="409 of a status change: the case's status now")
    allowed: list[str] | None = Field(default=None, description="409 invalid-transition: the statuses that may "
                                      "be reported next")
    candidates: list[dict[str, Any]] | None = Field(
        default=None, description="409 ambiguous-postal-code: the Gemeinden (ars, ags, name) the code may mean")
    checks: dict[str, bool] | None = Field(default=None, description="503 not-ready: each dependency, reachable "
                                           "or not")


class ProblemException(Exception):
    """Raise to answer with a problem; ``kind`` becomes the type ``urn:ozg:problem:<kind>``."""

    def __init__(
        self,
        status: int,
        detail: str | None = None,
        *,
        kind: str | None = None,
        title: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail or "")
        self.status = status
        self.detail = detail
        self.type = f"{TYPE_BASE}{kind}" if kind else "about:blank"
        self.title = title or HTTPStatus(status).phrase
        self.errors = errors
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


def problem_response(problem: ProblemException, instance: str | None = None) -> JSONResponse:
    """The JSON response for ``problem``."""
    body: dict[str, Any] = {"type": problem.type, "title": problem.title, "status": problem.status}
    if problem.detail:
        body["detail"] = problem.detail
    if instance:
        body["instance"] = instance
    if problem.errors is not None:
        body["errors"] = problem.errors
    body.update(problem.extra)
    return JSONResponse(body, status_code=problem.status, headers=problem.headers, media_type=MEDIA_TYPE)


def unreadable_body(cause: BaseException | None = None) -> ProblemException:
    """The problem for a request body that cannot be parsed at all (``400``): not JSON, not UTF-8, or nested deeper
    than the parser goes. A body that parses but breaks the model is a ``422`` instead.

    For a JSONDecodeError ``cause`` the parser's message and position are told, never the body: it may be personal
    data.
    """
    where = ""
    if isinstance(cause, json.JSONDecodeError):
        where = f" ({cause.msg}: line {cause.lineno} column {cause.colno})"
    return ProblemException(400, f"The request body is not readable JSON{where}.", kind=UNREADABLE_BODY,
                            title="Unreadable request body")


def validation_errors(errors: Any) -> list[dict[str, Any]]:
    """Pydantic errors as RFC 9457 ``errors`` members: a JSON pointer (or parameter name) and a message.

    The offending input is never echoed back: it may be personal data.
    """
    out: list[dict[str, Any]] = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        where = loc[0] if loc else "body"
        member: dict[str, Any] = {"detail": error.get("msg", "invalid"), "code": error.get("type", "invalid")}
        if where == "body":
            member["pointer"] = "#/" + "/".join(loc[1:]) if len(loc) > 1 else "#"
        elif where == "header":
            member["header"] = loc[1] if len(loc) > 1 else ""
        else:
            member["parameter"] = loc[-1] if loc else ""
            member["in"] = where
        out.append(member)
    return out


def responses(
    *statuses: int, headers: Mapping[int, Mapping[str, Any]] | None = None
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for ``statuses``, each an RFC 9457 problem (the schema ``Problem``); a 503 may carry
    ``Retry-After``, other statuses the ``headers`` given for them."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in statuses:
        response: dict[str, Any] = {"description": HTTPStatus(code).phrase,
                                    "content": {MEDIA_TYPE: {"schema": dict(_PROBLEM_REF)}}}
        declared = {**(RETRY_AFTER if code == 503 else {}), **(headers or {}).get(code, {})}
        if declared:
            response["headers"] = declared
        out[code] = response
    return out


def _document_problems(schema: dict[str, Any]) -> None:
    """Declare in an OpenAPI document what every route of the app may answer: the ``Problem`` schema for each
    problem+json response, ``400`` wherever a body is read (a body that cannot be parsed at all), ``401`` and ``503``
    wherever an API key is checked."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components[PROBLEM_SCHEMA] = ProblemDetail.model_json_schema(
        ref_template="#/components/schemas/{model}"
    ) | {"title": PROBLEM_SCHEMA}
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            answers = operation.setdefault("responses", {})
            if "requestBody" in operation and "400" not in answers:
                answers.update({str(code): r for code, r in responses(400).items()})
            if "security" in operation:
                # A key is checked: 401 without a valid one, 503 while a just-started service still reads the keys.
                answers.update({str(code): r for code, r in responses(401, 503).items() if str(code) not in answers})
            if _FASTAPI_422 in json.dumps(answers.get("422", {})):
                # FastAPI's own declaration; the handler above answers a problem instead.
                answers.update({str(code): r for code, r in responses(422).items()})
            for answer in answers.values():
                content = answer.get("content", {})
                if MEDIA_TYPE in content and not content[MEDIA_TYPE].get("schema"):
                    content[MEDIA_TYPE]["schema"] = dict(_PROBLEM_REF)


def install(app: FastAPI) -> None:
    """Make every error of ``app`` a problem+json response, and say so in its OpenAPI document."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _document_problems(generate())
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(ProblemException)
    async def _problem(request: Request, exc: ProblemException) -> JSONResponse:
        return problem_response(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        if isinstance(exc.__cause__, json.JSONDecodeError):
            # FastAPI reports a body that is not JSON as a validation error ("json_invalid"); it is no field's fault.
            return problem_response(unreadable_body(exc.__cause__), request.url.path)
        problem = ProblemException(
            422,
            "The request is not valid; see errors.",
            kind="validation",
            title="Validation failed",
            errors=validation_errors(exc.errors()),
        )
        return problem_response(problem, request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # The framework's only 400: a body it failed to parse other than as a JSONDecodeError (RecursionError
            # for deep nesting, UnicodeDecodeError for bytes that are not UTF-8, a broken multipart form).
            return problem_response(unreadable_body(), request.url.path)
        # The framework's own 404 (no such route) and 405 (no such method on it) get the project's types too.
        kind = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code)
        problem = ProblemException(exc.status_code, str(exc.detail), kind=kind,
                                   headers=getattr(exc, "headers", None))
        return problem_response(problem, request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return problem_response(ProblemException(500, "An unexpected error occurred."), request.url.path)
