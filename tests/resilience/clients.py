"""A portal and a back office as a careful integrator writes them: every request is repeated, with the same
Idempotency-Key, until the system gives a definitive answer; a crash or an outage is never a reason to give up.

Every answer that is not definitive is counted, so a test can also say which answers a client had to wait out
(connection errors and 503 are expected while a service restarts; 401 or 500 for a valid request are not).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from deploy.local.stack import LocalStack
from tests.factories import WOHNGELD, WOHNSITZ, application_body

# Places of the demo directory with a registered back office each, so cases go to several destination topics.
PLACES = ({"ags": "09273137"}, {"ags": "09761000"}, {"ags": "06414000"})
SERVICES = (WOHNSITZ, WOHNGELD)
RETRY_PAUSE_S = 0.5
T = TypeVar("T")


def application(index: int) -> dict[str, Any]:
    """The ``index``-th application of a run: the services and places take turns."""
    body = application_body(SERVICES[index % len(SERVICES)], PLACES[index // len(SERVICES) % len(PLACES)])
    body["applicant"]["contact"] = {"email": f"applicant-{index}@example.org"}
    return body


@dataclass
class Answers:
    """What the system answered besides the definitive answer: status codes, and transport errors by class."""

    seen: Counter[str] = field(default_factory=Counter)

    def unexpected(self) -> dict[str, int]:
        """Answers a careful client should never get for a valid request, even during a crash or an outage."""
        expected = {"503", "409", "ConnectError", "ReadError", "RemoteProtocolError", "ReadTimeout",
                    "ConnectTimeout", "WriteError", "PoolTimeout"}
        return {answer: count for answer, count in self.seen.items() if answer not in expected}


@dataclass(frozen=True)
class Accepted:
    """A case intake answered ``202`` for."""

    index: int
    case_id: str
    reference: str


async def _request(http: httpx.AsyncClient, method: str, url: str, answers: Answers,
                   **kwargs: Any) -> httpx.Response | None:
    try:
        return await http.request(method, url, **kwargs)
    except httpx.TransportError as exc:
        answers.seen[type(exc).__name__] += 1
        return None


async def submit(http: httpx.AsyncClient, intake: str, key: str, index: int, answers: Answers,
                 deadline_s: float = 300) -> Accepted:
    """Post application ``index`` until intake accepts it (202), always with the same Idempotency-Key."""
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": f"crash-{index}-{uuid.uuid4()}"}
    body = application(index)
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        response = await _request(http, "POST", f"{intake}/v1/applications", answers, json=body, headers=headers)
        if response is not None and response.status_code == 202:
            answer = response.json()
            return Accepted(index, answer["case_id"], answer["reference"])
        if response is not None:
            answers.seen[str(response.status_code)] += 1
            if 400 <= response.status_code < 500 and response.status_code not in (401, 409, 429):
                raise AssertionError(f"application {index}: {response.status_code} {response.text}")
        await asyncio.sleep(RETRY_PAUSE_S)
    raise AssertionError(f"application {index} not accepted within {deadline_s}s; answers so far: {answers.seen}")


async def stream(count: int, rate_per_s: float, job: Callable[[int], Awaitable[T]]) -> list[T]:
    """Start ``job(0)``, ``job(1)``, ... ``job(count - 1)`` at a steady ``rate_per_s``; wait for all of them."""
    start = time.monotonic()
    tasks: list[asyncio.Task[T]] = []
    for index in range(count):
        await asyncio.sleep(max(0.0, start + index / rate_per_s - time.monotonic()))
        tasks.append(asyncio.create_task(job(index)))  # type: ignore[arg-type]
    return list(await asyncio.gather(*tasks))


async def report_status(http: httpx.AsyncClient, routing: str, key: str, case_id: str, status: str,
                        answers: Answers, deadline_s: float = 300) -> None:
    """Report ``status`` for a case as its back office, until routing took it (202) or already has it (409)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        response = await _request(http, "POST", f"{routing}/v1/cases/{case_id}/status", answers,
                                  json={"status": status}, headers={"Authorization": f"Bearer {key}"})
        if response is not None and response.status_code == 202:
            return
        if response is not None:
            # 409 with the status itself: an earlier attempt took effect but its answer was lost in a crash.
            if response.status_code == 409 and response.json().get("current_status") == status:
                return
            # 404: routing has not dispatched the case yet (it consumes the submitted event asynchronously).
            if response.status_code != 404:
                answers.seen[str(response.status_code)] += 1
        await asyncio.sleep(RETRY_PAUSE_S)
    raise AssertionError(f"status {status} of case {case_id} not taken within {deadline_s}s: {answers.seen}")


async def known_everywhere(http: httpx.AsyncClient, stack: LocalStack, keys: dict[str, Any]) -> None:
    """Wait until intake and routing know the demo keys (they arrive through ozg.clients)."""
    destination_key = next(iter(keys["destinations"].values()))
    probes = [
        (f"{stack.url('intake')}/v1/applications/{uuid.uuid4()}", "GET", keys["portal"]),
        (f"{stack.url('routing')}/v1/cases/{uuid.uuid4()}/status", "POST", destination_key),
    ]
    deadline = time.monotonic() + 60
    for url, method, key in probes:
        while (await http.request(method, url, json={"status": "received"},
                                  headers={"Authorization": f"Bearer {key}"})).status_code in (401, 503):
            assert time.monotonic() < deadline, f"{url}: key still unknown after 60 s"
            await asyncio.sleep(0.2)


async def destination_of(http: httpx.AsyncClient, routing: str, index: int) -> str:
    """The destination application ``index`` goes to, as routing's public route API answers it."""
    body = application(index)
    answer = await http.get(f"{routing}/v1/routes", params={"leika_key": body["leika_key"], **body["region"]})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["destinations"][0]["destination_id"])


async def differing_statuses(http: httpx.AsyncClient, intake: str, key: str, expected: dict[str, str]) -> list[str]:
    """Cases whose status at intake differs from ``expected`` (intake's own consumer must have caught up)."""
    headers = {"Authorization": f"Bearer {key}"}
    limit = asyncio.Semaphore(20)

    async def status(case_id: str) -> str:
        async with limit:
            answer = await http.get(f"{intake}/v1/applications/{case_id}", headers=headers)
            return str(answer.json().get("status")) if answer.status_code == 200 else str(answer.status_code)

    seen = await asyncio.gather(*(status(case_id) for case_id in expected))
    return [f"case {case_id}: {now} at intake, want {want}"
            for (case_id, want), now in zip(expected.items(), seen, strict=True) if now != want]
