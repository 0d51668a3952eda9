"""The whole system as processes, as ``make run`` starts it: one application from portal to audit trail."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from deploy.local.__main__ import first_application
from deploy.local.broker import free_port
from deploy.local.stack import LocalStack
from shared import catalogue, topics
from tests.conftest import skip_or_fail
from tests.support import produce

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


def test_the_back_office_reports_status_and_the_portal_sees_every_step(
    stack: tuple[LocalStack, dict[str, Any]],
) -> None:
    """The status loop of SPEC §4 through the real processes: back office → routing → Kafka → intake → portal."""
    system, credentials = stack
    portal = {"Authorization": f"Bearer {credentials['portal']}"}
    with httpx.Client(timeout=10) as http:
        accepted = http.post(f"{system.url('intake')}/v1/applications", json=first_application(),
                             headers={**portal, "Idempotency-Key": str(uuid.uuid4())})
        assert accepted.status_code == 202, accepted.text
        case_id = accepted.json()["case_id"]

        def case() -> dict[str, Any]:
            return dict(http.get(f"{system.url('intake')}/v1/applications/{case_id}", headers=portal).json())

        poll(lambda: case()["status"] == "routed")
        routed = http.get(f"{system.url('routing')}/v1/routes",
                          params={"leika_key": first_application()["leika_key"], "postal_code": "93309"}).json()
        destination_id = routed["destinations"][0]["destination_id"]
        back_office = {"Authorization": f"Bearer {credentials['destinations'][destination_id]}"}
        steps: list[dict[str, Any]] = [
            {"status": "received"},
            {"status": "in_progress"},
            {"status": "information_requested", "message": "Bitte reichen Sie den Mietvertrag nach."},
            {"status": "in_progress"},
            {"status": "decided", "outcome": "approved", "message": "Ihr Antrag wurde bewilligt."},
            {"status": "closed"},
        ]
        for step in steps:
            answer = http.post(f"{system.url('routing')}/v1/cases/{case_id}/status", json=step, headers=back_office)
            assert answer.status_code == 202, answer.text
            poll(lambda step=step: case()["history"][-1]["status"] == step["status"])
        history = [entry["status"] for entry in case()["history"]]
        assert history == ["submitted", "routed", "received", "in_progress", "information_requested",
                           "in_progress", "decided", "closed"]
        # After closing, nothing moves any more, and the applicant can no longer withdraw.
        late = http.post(f"{system.url('routing')}/v1/cases/{case_id}/status", json={"status": "in_progress"},
                         headers=back_office)
        assert late.status_code == 409


def test_prometheus_scrapes_the_system_and_every_dashboard_query_has_data(
    stack: tuple[LocalStack, dict[str, Any]], tmp_path: Path
) -> None:
    """A real Prometheus (Debian's package) against the running system: every dashboard panel returns data."""
    system, credentials = stack
    binary = shutil.which("prometheus")
    if binary is None:
        skip_or_fail("prometheus is not installed (make test installs it from Debian's packages)")
    assert binary is not None
    # A poison record, so the dead-letter series exist as they would in production after the first one.
    asyncio.run(produce(system.kafka, topics.SUBMITTED, b"{broken", {"content-type": "application/json"}, b"x"))
    with httpx.Client(timeout=10) as http:
        http.get(f"{system.url('audit')}/v1/verify", headers={"Authorization": f"Bearer {credentials['auditor']}"})
        # And a case for clearing: Flensburg is not in the demo directory.
        unroutable = {**first_application(), "region": {"ags": "01001000"}}
        response = http.post(f"{system.url('intake')}/v1/applications", json=unroutable,
                             headers={"Authorization": f"Bearer {credentials['portal']}",
                                      "Idempotency-Key": str(uuid.uuid4())})
        assert response.status_code == 202, response.text
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [{"job_name": "ozg", "static_configs": [
            {"targets": [f"127.0.0.1:{system.ports[name]}"], "labels": {"service": name}} for name in system.ports
        ]}],
    }), encoding="utf-8")
    process = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "ozg.json").read_text(encoding="utf-8"))
    queries = {panel["title"]: target["expr"] for panel in dashboard["panels"] for target in panel["targets"]}
    try:
        def query(expr: str) -> list[Any]:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": expr}, timeout=5)
            except httpx.TransportError:
                return []
            return list(response.json()["data"]["result"]) if response.status_code == 200 else []

        poll(lambda: len(query('up{job="ozg"} == 1')) == 4, timeout_s=60)
        empty: dict[str, str] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            empty = {title: expr for title, expr in queries.items() if not query(expr)}
            if not empty:
                break
            time.sleep(1)
        assert not empty, f"dashboard panels without data: {sorted(empty)}"
    finally:
        process.terminate()
        process.wait(timeout=30)
