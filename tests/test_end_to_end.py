"""The whole system as processes, as ``make run`` starts it: one application from portal to audit trail."""

from __future__ import annotations

import email
import email.policy
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy.local.stack import LocalStack
from shared import catalogue

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, dict[str, Any]]]:
    system = LocalStack.on_free_ports(tmp_path_factory.mktemp("run"))
    try:
        system.start(timeout_s=90)
        credentials = system.create_demo_keys()
        yield system, credentials
    finally:
        system.stop()


def poll(fetch: Any, timeout_s: float = 30) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = fetch()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"condition not met within {timeout_s}s")


def test_application_flows_from_portal_to_audit_trail(stack: tuple[LocalStack, dict[str, Any]]) -> None:
    system, credentials = stack
    portal = {"Authorization": f"Bearer {credentials['portal']}"}
    auditor = {"Authorization": f"Bearer {credentials['auditor']}"}
    from deploy.local.__main__ import first_application

    body = first_application()
    with httpx.Client(timeout=10) as http:
        # Keys reach every service through ozg.clients; wait until intake knows the portal's.
        def submit() -> httpx.Response | None:
            response = http.post(f"{system.url('intake')}/v1/applications", json=body,
                                 headers={**portal, "Idempotency-Key": str(uuid.uuid4())})
            return response if response.status_code != 401 else None

        accepted = poll(submit)
        assert accepted.status_code == 202, accepted.text
        case_id = accepted.json()["case_id"]
        reference = accepted.json()["reference"]

        def routed() -> dict[str, Any] | None:
            case = http.get(f"{system.url('intake')}/v1/applications/{case_id}", headers=portal).json()
            return case if case["status"] == "routed" else None

        case = poll(routed)
        assert [h["status"] for h in case["history"]] == ["submitted", "routed"]

        def mails() -> list[email.message.EmailMessage]:
            found = []
            for path in (system.root / "mail").glob("*.eml"):
                message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
                if reference in str(message["Subject"]) + message.get_body().get_content():  # type: ignore[union-attr]
                    found.append(message)
            return found if len(found) >= 2 else []

        messages = poll(mails)
        assert {m["To"].addresses[0].addr_spec for m in messages} == {"erika.mustermann@example.org"}
        service_name = catalogue.load()[body["leika_key"]].name.de
        assert any(service_name in m.get_body().get_content() for m in messages)  # type: ignore[union-attr]

        def trail() -> list[dict[str, Any]] | None:
            response = http.get(f"{system.url('audit')}/v1/cases/{case_id}/trail", headers=auditor)
            if response.status_code != 200:
                return None
            entries = response.json()
            entries = entries["entries"] if isinstance(entries, dict) else entries
            types = [e.get("event_type") or e.get("type") for e in entries]
            wanted = {"de.ozg.application.submitted.v1", "de.ozg.application.routed.v1",
                      "de.ozg.application.dispatched.v1", "de.ozg.notification.sent.v1"}
            return entries if wanted <= set(types) else None

        entries = poll(trail)
        assert [e["seq"] for e in entries] == sorted(e["seq"] for e in entries)
        assert "Erika" not in json.dumps(entries)  # digests, never payloads
        verdict = http.get(f"{system.url('audit')}/v1/verify", headers=auditor).json()
        assert verdict["intact"] is True

    credentials_file = json.loads((system.root / "credentials.json").read_text())
    assert set(credentials_file) == {"portal", "counter", "operator", "auditor", "destinations"}
