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
from jsonschema import Draft202012Validator
from pydantic import BaseModel

Level = Literal["gemeinde", "verband", "kreis", "land"]


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


@cache
def load() -> dict[str, CatalogueEntry]:
    """All services, keyed by LeiKa key; every form schema checked against the 2020-12 meta-schema."""
    root = resources.files(__package__)
    index = json.loads(root.joinpath("services.json").read_text(encoding="utf-8"))
    entries: dict[str, CatalogueEntry] = {}
    for item in index["services"]:
        schema = json.loads(root.joinpath("forms", item["form"]).read_text(encoding="utf-8"))
        Draft202012Validator.check_schema(schema)
        entries[item["leika_key"]] = CatalogueEntry(
            leika_key=item["leika_key"], name=ServiceName(**item["name"]), level=item["level"], form_schema=schema
        )
    return entries


@cache
def validator(leika_key: str) -> jsonschema_rs.Draft202012Validator:
    """The compiled JSON Schema validator of a service's form (with format checks).

    jsonschema-rs (Rust) rather than the pure-Python ``jsonschema``, which the catalogue still uses to check the
    schemas themselves: validating a form took a third of a millisecond with ``jsonschema``, a third of a bare
    endpoint's whole time per request (``make bench``), and a few microseconds with jsonschema-rs.
    """
    return jsonschema_rs.Draft202012Validator(load()[leika_key].form_schema, validate_formats=True)
