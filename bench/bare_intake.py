"""The intake baseline: a bare FastAPI endpoint that validates the same body as intake's ``POST /v1/applications``
(the same pydantic model, the same catalogue check and form JSON Schema) and does nothing else.

``uvicorn bench.bare_intake:app``: what intake's throughput is compared with.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import FastAPI, Header, status

from services.intake.api import validate_form
from services.intake.models import ApplicationCreate

app = FastAPI(title="bare intake baseline")


@app.post("/v1/applications", status_code=status.HTTP_202_ACCEPTED)
async def submit(
    body: ApplicationCreate, idempotency_key: Annotated[str, Header(min_length=1, max_length=200)]
) -> dict[str, Any]:
    """Validate the application and answer 202, as intake would, without keeping or publishing anything."""
    validate_form(body)
    return {"case_id": str(uuid.uuid4()), "status": "submitted"}
