"""The whole system as processes (``deploy.local.stack``, as ``make run`` starts it), with its own Tansu, SMTP sink,
ports and state directory per test, so a test may kill services and restart the broker beside any other test."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from deploy.local.stack import LocalStack

# Intervals short enough for a test to see recovery within seconds; limits out of the way of a steady stream.
SYSTEM_ENV = {
    "INTAKE_RATE_LIMIT": "1000000/minute",
    "INTAKE_OUTBOX_AFTER_S": "25",  # more than twice INTAKE_PUBLISH_TIMEOUT_S (12): only abandoned cases
    "INTAKE_OUTBOX_INTERVAL_S": "2",
    "NOTIFY_RATE_EMAIL_PER_S": "0",
    "NOTIFY_ATTEMPT_LEASE_S": "15",  # longer than NOTIFY_SMTP_TIMEOUT_S (10)
    "NOTIFY_SCHEDULER_INTERVAL_S": "1",
    "OZG_KAFKA_LAG_INTERVAL_S": "5",
}


@dataclass(frozen=True)
class System:
    """A running stack and the demo keys issued on it."""

    stack: LocalStack
    keys: dict[str, Any]


@pytest.fixture
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    stack = LocalStack.on_free_ports(tmp_path_factory.mktemp("system"), env=SYSTEM_ENV)
    try:
        stack.start(timeout_s=120)
        yield System(stack, stack.create_demo_keys())
    finally:
        stack.stop()
