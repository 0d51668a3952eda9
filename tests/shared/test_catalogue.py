"""The catalogue refuses a form schema that is not valid JSON Schema 2020-12."""

from __future__ import annotations

from typing import Any

import jsonschema_rs
import pytest

from shared import catalogue


def test_every_form_of_the_catalogue_is_valid_2020_12() -> None:
    for entry in catalogue.load().values():
        catalogue.check_form_schema(entry.form_schema)


@pytest.mark.parametrize("schema", [
    {"type": "objekt"},
    {"$schema": catalogue.DIALECT, "type": "object", "properties": {"name": {"minLength": -1}}},
    {"type": "object", "required": "name"},
])
def test_a_schema_breaking_the_meta_schema_is_refused(schema: dict[str, Any]) -> None:
    with pytest.raises(jsonschema_rs.ValidationError):
        catalogue.check_form_schema(schema)


def test_a_schema_of_another_dialect_is_refused() -> None:
    # Valid draft-07, but forms are compiled as 2020-12, where some keywords mean something else.
    with pytest.raises(ValueError, match="2020-12"):
        catalogue.check_form_schema({"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"})
