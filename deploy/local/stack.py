"""The whole system on one machine: Tansu, an SMTP sink, the four services as processes, and demo keys.

``make run`` uses it (``python -m deploy.local``), and so does the end-to-end test, so what the test proves is
what an operator starts.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from aiosmtpd.controller import Controller

from deploy.local.broker import Tansu, free_port
from deploy.local.mailsink import start_sink
from shared import clients
from shared.events import ClientKind
from shared.settings import KafkaSettings

SERVICES = ("intake", "routing", "notify", "audit")
DEFAULT_PORTS = {"intake": 8001, "routing": 8002, "notify": 8003, "audit": 8004}
DEMO_DESTINATIONS = Path(__file__).resolve().parents[2] / "services" / "routing" / "data" / "demo_destinations.json"


@dataclass
class LocalStack:
    """One local system with all its state under ``root`` (``.run/`` for ``make run``)."""

    root: Path
    kafka_port: int = 9092
    smtp_port: int = 2525
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    log_json: bool = True
    # Extra environment for every service process (tests tune intervals and limits with it).
    env: dict[str, str] = field(default_factory=dict)
    # The interpreter the services run with: this one, or (make bench) one with the runtime dependencies only.
    python: str = sys.executable
    broker: Tansu | None = None
    sink: Controller | None = None
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: list[IO[bytes]] = field(default_factory=list)

    @classmethod
    def on_free_ports(cls, root: Path, env: dict[str, str] | None = None, python: str = sys.executable) -> LocalStack:
        """A stack whose every port is free right now (for tests beside a running ``make run``)."""
        return cls(root=root, kafka_port=free_port(), smtp_port=free_port(),
                   ports={name: free_port() for name in SERVICES}, env=dict(env or {}), python=python)

    @property
    def kafka(self) -> KafkaSettings:
        """Kafka settings for clients of this stack."""
        return KafkaSettings(bootstrap_servers=f"127.0.0.1:{self.kafka_port}")

    def url(self, service: str) -> str:
        """The base URL of one service."""
        return f"http://127.0.0.1:{self.ports[service]}"

    def service_env(self, name: str) -> dict[str, str]:
        """The environment one service process runs with."""
        prefix = name.upper()
        env = {
            **os.environ,
            "OZG_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{self.kafka_port}",
            # Tansu holds a group join for half the session timeout: 1.5 s here instead of 5 s per (re)start.
            "OZG_KAFKA_HEARTBEAT_INTERVAL_MS": "300",
            "OZG_KAFKA_SESSION_TIMEOUT_MS": "3000",
            # Tansu answers a waiting fetch only near the end of its wait: each hop of a case would take ~0.1 s.
            "OZG_KAFKA_FETCH_MAX_WAIT_MS": "100",
            f"{prefix}_DATABASE_URL": f"sqlite:///{self.root / f'{name}.db'}",
            f"{prefix}_PORT": str(self.ports[name]),
            f"{prefix}_LOG_JSON": "true" if self.log_json else "false",
        }
        if name == "intake":
            env["INTAKE_PUBLIC_BASE_URL"] = self.url("intake")
        if name == "routing":
            env["ROUTING_DEMO_DESTINATIONS"] = "true"
            # An integrator trying a webhook receiver on this machine needs no certificate for it.
            env["ROUTING_WEBHOOK_ALLOW_HTTP_LOOPBACK"] = "true"
        if name == "notify":
            env["NOTIFY_SMTP_PORT"] = str(self.smtp_port)
            env["NOTIFY_STATUS_BASE_URL"] = f"{self.url('intake')}/v1/applications"
            env["NOTIFY_LETTER_DIR"] = str(self.root / "letters")
        return {**env, **self.env}

    def start_service(self, name: str) -> None:
        """Start (or restart) one service process, logging to ``<root>/logs/<name>.log``."""
        log = open(self.root / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        self.processes[name] = subprocess.Popen(
            [self.python, "-m", f"services.{name}"], env=self.service_env(name), stdout=log,
            stderr=subprocess.STDOUT,
        )

    def kill(self, name: str) -> None:
        """Kill one service process with SIGKILL (a crash: no shutdown code runs) and reap it."""
        process = self.processes[name]
        process.send_signal(signal.SIGKILL)
        process.wait()

    def start_broker(self) -> None:
        """Start Tansu on the stack's Kafka port (again, after ``stop_broker``: empty, being memory-only)."""
        self.broker = Tansu(port=self.kafka_port, log_path=self.root / "logs" / "tansu.log").start()

    def stop_broker(self) -> None:
        """Stop Tansu; it forgets every topic, record and consumer offset."""
        if self.broker is not None:
            self.broker.stop()
            self.broker = None

    def start(self, timeout_s: float = 60) -> None:
        """Start broker, SMTP sink and services, and wait until every service is ready."""
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        (self.root / "letters").mkdir(parents=True, exist_ok=True)
        self.start_broker()
        self.sink = start_sink(self.root / "mail", self.smtp_port)
        for name in SERVICES:
            self.start_service(name)
        self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float = 60, services: tuple[str, ...] = SERVICES) -> None:
        """Block until every service (of ``services``) answers ``/health/ready`` with 200."""
        deadline = time.monotonic() + timeout_s
        pending = set(services)
        while pending:
            for name in sorted(pending):
                process = self.processes[name]
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}; see {self.root}/logs/{name}.log")
                try:
                    with urllib.request.urlopen(f"{self.url(name)}/health/ready", timeout=2) as response:  # noqa: S310
                        if response.status == 200:
                            pending.discard(name)
                except OSError:
                    pass
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"not ready after {timeout_s}s: {', '.join(sorted(pending))}")
            time.sleep(0.2)

    def create_demo_keys(self) -> dict[str, Any]:
        """Issue the demo API keys and write them to ``<root>/credentials.json``."""
        destinations = json.loads(DEMO_DESTINATIONS.read_text(encoding="utf-8"))["destinations"]

        async def issue_all() -> dict[str, Any]:
            keys: dict[str, Any] = {}
            for kind in (ClientKind.PORTAL, ClientKind.COUNTER, ClientKind.OPERATOR, ClientKind.AUDITOR):
                _, keys[kind.value] = await clients.issue(self.kafka, kind=kind, name=f"Demo {kind.value}")
            keys["destinations"] = {}
            for item in destinations:
                _, key = await clients.issue(self.kafka, kind=ClientKind.DESTINATION, name=item["name"],
                                             destination_id=item["destination_id"])
                keys["destinations"][item["destination_id"]] = key
            return keys

        credentials = asyncio.run(issue_all())
        path = self.root / "credentials.json"
        path.write_text(json.dumps(credentials, indent=2), encoding="utf-8")
        path.chmod(0o600)
        return credentials

    def stop(self) -> None:
        """Stop services (SIGTERM, then SIGKILL after 15 s), the sink and the broker."""
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()
        if self.sink is not None:
            self.sink.stop()
            self.sink = None
        self.stop_broker()
        for log in self._logs:
            log.close()
        self._logs.clear()
