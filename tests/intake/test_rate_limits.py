"""Per-client rate limits on intake's client-authenticated routes: RateLimit-* header fields on every answer,
429 with Retry-After beyond the limit, one budget per client."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from services.intake.app import build
from services.intake.ratelimit import RateLimiter
from services.intake.settings import Settings
from shared.events import ClientKind
from shared.settings import KafkaSettings
from tests.factories import application_body
from tests.support import issue_key, running

PDF = b"%PDF-1.7\n" + b"x" * 100


@pytest.fixture
def settings(tmp_path: Path, kafka_settings: KafkaSettings) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path / 'intake.db'}", kafka=kafka_settings,
                    blob_dir=tmp_path / "blobs", rate_limit="3/minute")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def limit_fields(response: httpx.Response) -> tuple[int, int, int]:
    return (int(response.headers["ratelimit-limit"]), int(response.headers["ratelimit-remaining"]),
            int(response.headers["ratelimit-reset"]))


def test_the_limit_is_configurable_in_the_limits_notation() -> None:
    assert RateLimiter("600/minute").item.amount == 600
    assert RateLimiter("10 per second").item.get_expiry() == 1
    with pytest.raises(ValueError, match="rate limit"):
        Settings(rate_limit="plenty")


def test_the_window_moves_and_refused_requests_do_not_count() -> None:
    now = [100.0]
    limiter = RateLimiter("3/second", clock=lambda: now[0])
    for at in (100.0, 100.1, 100.2):
        now[0] = at
        assert limiter.hit("portal")[0]
    now[0] = 100.5
    allowed, headers = limiter.hit("portal")
    assert not allowed
    assert headers == {"RateLimit-Limit": "3", "RateLimit-Remaining": "0", "RateLimit-Reset": "1",
                       "Retry-After": "1"}
    assert limiter.hit("counter")[0]  # another client has its own window
    now[0] = 101.0  # the first request has left the window; the refused one never entered it
    allowed, headers = limiter.hit("portal")
    assert allowed
    assert headers["RateLimit-Remaining"] == "0"
    now[0] = 101.15
    assert limiter.hit("portal")[1]["RateLimit-Remaining"] == "0"
    now[0] = 103.0
    assert limiter.hit("portal")[1]["RateLimit-Remaining"] == "2"


async def test_rate_limit_per_client_with_headers_and_429(settings: Settings, kafka_settings: KafkaSettings) -> None:
    service, app = build(settings)
    async with running(service, app) as client:
        _, portal = await issue_key(kafka_settings, ClientKind.PORTAL, service=service)
        _, counter = await issue_key(kafka_settings, ClientKind.COUNTER, service=service)

        # Submit, status query and upload share the client's budget; every answer carries the header fields.
        submitted = await client.post("/v1/applications", json=application_body(),
                                      headers={**bearer(portal), "Idempotency-Key": str(uuid.uuid4())})
        assert submitted.status_code == 202, submitted.text
        limit, remaining, reset = limit_fields(submitted)
        assert (limit, remaining) == (3, 2)
        assert 0 < reset <= 60
        status = await client.get(f"/v1/applications/{submitted.json()['case_id']}", headers=bearer(portal))
        assert status.status_code == 200
        assert limit_fields(status)[:2] == (3, 1)
        # A problem answered by the route itself carries them too.
        missing = await client.get(f"/v1/attachments/{uuid.uuid4()}", headers=bearer(portal))
        assert missing.status_code == 404
        assert limit_fields(missing)[:2] == (3, 0)

        refused = await client.post("/v1/attachments", headers=bearer(portal), files={"file": ("a.pdf", PDF)})
        assert refused.status_code == 429
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["type"] == "urn:ozg:problem:rate-limited"
        assert refused.json()["status"] == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        limit, remaining, reset = limit_fields(refused)
        assert (limit, remaining) == (3, 0)
        assert 0 < reset <= 60
        assert refused.headers.get_list("ratelimit-limit") == ["3"]  # not doubled by the middleware
        # Nothing was stored for the refused upload.
        assert not (settings.blob_dir.exists() and any(p.is_file() for p in settings.blob_dir.rglob("*")))
        again = await client.get(f"/v1/applications/{submitted.json()['case_id']}", headers=bearer(portal))
        assert again.status_code == 429

        # Another client has its own budget.
        other = await client.post("/v1/attachments", headers=bearer(counter), files={"file": ("a.pdf", PDF)})
        assert other.status_code == 201, other.text
        assert limit_fields(other)[:2] == (3, 2)

        # Unauthenticated requests are refused before any budget is counted; public routes are not limited.
        anonymous = await client.get(f"/v1/applications/{uuid.uuid4()}")
        assert anonymous.status_code == 401
        assert "ratelimit-limit" not in anonymous.headers
        catalogue = await client.get("/v1/services", headers=bearer(portal))
        assert catalogue.status_code == 200
        assert "ratelimit-limit" not in catalogue.headers
