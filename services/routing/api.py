"""Routing's HTTP API (SPEC §5 routing)."""

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import ValidationError

from services.routing.competence import NoCompetenceRule, competent_authority
from services.routing.directory import AmbiguousPostalCode, UnknownRegion
from services.routing.models import DestinationPublic, RouteAnswer
from services.routing.registry import RoutingState
from shared.events import Region, ResolvedRegion
from shared.problems import ProblemException, validation_errors

PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}


def create_router(state: RoutingState) -> APIRouter:
    """The routes of routing's API."""
    router = APIRouter(prefix="/v1", tags=["routes"])

    @router.get("/routes", summary="Find the competent authority and its destinations",
                responses={404: PROBLEM, 409: PROBLEM, 422: PROBLEM})
    async def route(
        leika_key: Annotated[str, Query(pattern=r"^99\d{12}$", description="LeiKa key (14 digits)")],
        ars: Annotated[str | None, Query(description="Regionalschlüssel (12 digits)")] = None,
        ags: Annotated[str | None, Query(description="Gemeindeschlüssel (8 digits)")] = None,
        postal_code: Annotated[str | None, Query(description="Postleitzahl (5 digits)")] = None,
        place: Annotated[str | None, Query(description="Place name, to decide a shared postal code")] = None,
    ) -> RouteAnswer:
        """Public lookup, in the manner of FIT-Connect's Routing API."""
        try:
            region = Region(ars=ars, ags=ags, postal_code=postal_code, place=place)
        except ValidationError as exc:
            errors = validation_errors(
                [{**e, "loc": ("query", *(e["loc"] or ("region",)))} for e in exc.errors()]
            )
            raise ProblemException(422, "The region is not valid.", kind="validation", title="Validation failed",
                                   errors=errors) from None
        try:
            gemeinde = state.directory.resolve(region)
        except UnknownRegion as exc:
            raise ProblemException(404, str(exc), kind="unknown-region") from None
        except AmbiguousPostalCode as exc:
            candidates = [ResolvedRegion(ars=g.ars, ags=g.ags, name=g.name).model_dump() for g in exc.candidates]
            raise ProblemException(409, f"{exc}; name the place to decide.", kind="ambiguous-postal-code",
                                   extra={"candidates": candidates}) from None
        try:
            decision = competent_authority(state.directory, gemeinde, leika_key)
        except NoCompetenceRule as exc:
            raise ProblemException(404, str(exc), kind="no-competence-rule") from None
        return RouteAnswer(
            leika_key=leika_key,
            region=ResolvedRegion(ars=gemeinde.ars, ags=gemeinde.ags, name=gemeinde.name),
            authority=decision.authority,
            rule=decision.rule,
            destinations=[
                DestinationPublic(destination_id=d.destination_id, name=d.name, channels=["kafka"])
                for d in state.destinations_for(decision.authority.ars, leika_key)
            ],
        )

    return router
