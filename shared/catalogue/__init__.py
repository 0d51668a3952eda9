"""The service catalogue: the seed services of SPEC §6 with their LeiKa keys, names and form JSON Schemas.

It is a contract all services share: intake validates forms against it, routing knows each service's
default competent level from it, notify names the service in its messages.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any, Literal

import jsonschema_rs
from pydantic import BaseModel

Level = Literal["gemeinde", "verband", "kreis", "land"]
DIALECT = "https://json-schema.org/draft/2020-12/schema"


class ServiceName(BaseModel):
    """A service's name in the languages notify writes in."""

    de: str
    en: str


class CatalogueEntry(BaseModel):
    """One service (Leistung) of the catalogue."""

    leika_key: str
    name: ServiceName
    level: Level
    form_schema: dict[str, Any]


def check_form_schema(schema: dict[str, Any]) -> None:
    """Refuse a form schema that is not valid JSON Schema 2020-12 (the dialect forms are validated in): raises
    ``jsonschema_rs.ValidationError`` naming the first violation of the meta-schema, or ``ValueError`` for another
    dialect."""
    dialect = schema.get("$schema", DIALECT)
    if dialect != DIALECT:
        raise ValueError(f"a form schema is JSON Schema 2020-12 ({DIALECT}), not {dialect}")
    # jsonschema-rs knows the meta-schemas as well: the pure-Python jsonschema was in the image for this check alone,
    # with the four packages it needs.
    jsonschema_rs.meta.validate(schema)


@cache
def load() -> dict[str, CatalogueEntry]:
    """All services, keyed by LeiKa key; every form schema checked against the 2020-12 meta-schema."""
    root = resources.files(__package__)
    index = json.loads(root.joinpath("services.json").read_text(encoding="utf-8"))
    entries: dict[str, CatalogueEntry] = {}
    for item in index["services"]:
        schema = json.loads(root.joinpath("forms", item["form"]).read_text(encoding="utf-8"))
        check_form_schema(schema)
        entries[item["leika_key"]] = CatalogueEntry(
            leika_key=item["leika_key"], name=ServiceName(**item["name"]), level=item["level"], form_schema=schema
        )
    return entries


@cache
def validator(leika_key: str) -> jsonschema_rs.Draft202012Validator:
    """The compiled JSON Schema validator of a service's form (with format checks).

    jsonschema-rs (Rust) rather than the pure-Python ``jsonschema``: validating a form took a third of a millisecond
    with ``jsonschema``, a third of a bare endpoint's whole time per request (``make bench``), and a few
    microseconds with jsonschema-rs.
    """
    return jsonschema_rs.Draft202012Validator(load()[leika_key].form_schema, validate_formats=True)
