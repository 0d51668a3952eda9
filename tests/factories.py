"""Valid example data for tests: applications and the events services exchange."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.events import ApplicationSubmitted, ClientKind

EXAMPLES = json.loads(
    (Path(__file__).resolve().parents[1] / "shared" / "catalogue" / "examples.json").read_text(encoding="utf-8")
)
WOHNSITZ = "99115005104000"
WOHNGELD = "99107023037000"


def application_body(leika_key: str = WOHNSITZ, region: dict[str, str] | None = None,
                     language: str = "de", **applicant: Any) -> dict[str, Any]:
    """The JSON body of a valid ``POST /v1/applications``."""
    return {
        "leika_key": leika_key,
        "region": region or {"ags": "09273137"},
        "applicant": {
            "name": "Erika Mustermann",
            "contact": {"email": "erika.mustermann@example.org"},
            "reply_channel": "email",
            "language": language,
            **applicant,
        },
        "form": EXAMPLES[leika_key],
    }


def submitted(
    leika_key: str = WOHNSITZ, region: dict[str, str] | None = None, **overrides: Any
) -> ApplicationSubmitted:
    """The data of a ``de.ozg.application.submitted.v1`` event."""
    body = application_body(leika_key, region)
    case_id = uuid.uuid4()
    return ApplicationSubmitted.model_validate(
        {
            **body,
            "case_id": str(case_id),
            "reference": f"OZG-2026-{case_id.hex[:4].upper()}-{case_id.hex[4:8].upper()}",
            "attachments": [],
            "client_id": str(uuid.uuid4()),
            "client_kind": ClientKind.PORTAL.value,
            "submitted_at": datetime.now(UTC).isoformat(),
            **overrides,
        }
    )
