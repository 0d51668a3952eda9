"""What every service is made of, assembled once: settings, metrics registry, broker, database, client directory,
the FastAPI app with health, metrics and problem details, and the uvicorn server."""


import argparse
import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio.to_thread
import uvicorn
from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, Response
from faststream.kafka.subscriber.usecase import LogicSubscriber
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from shared import backoff, db, kafka, problems, topics
from shared.auth import ClientDirectory
from shared.jobs import periodic
from shared.kafka import make_broker
from shared.lag import ConsumerLag
from shared.logs import configure_logging
from shared.settings import ServiceSettings
from shared.tracing import TraceASGIMiddleware

log = logging.getLogger(__name__)

BackgroundTask = Callable[[], Awaitable[None]]
# How long a start may take to read ozg.clients before it counts as failed and is retried.
CLIENTS_CATCH_UP_S = 60.0


class Service:
    """The parts of one service process; each service's ``app.py`` builds one and adds its own pieces."""

    def __init__(self, settings: ServiceSettings, *, migrations: Path) -> None:
        self.settings = settings
        self.name = settings.service_name
        self.registry = CollectorRegistry()
        self.broker, self.dead_letters = make_broker(settings.kafka, service=self.name, registry=self.registry)
        self.engine = db.make_engine(settings.database_url)
        self.migrations = migrations
        self.clients = ClientDirectory()
        self.clients.subscribe(self.broker)
        self.topic_specs: list[topics.TopicSpec] = topics.standard_topics()
        # Start-up jobs run before the broker connects (loading caches); background jobs run once it has.
        self.on_start: list[BackgroundTask] = []
        self.background: list[BackgroundTask] = []
        self.lag = ConsumerLag(settings.kafka, self.consumer_groups, self.registry)
        self.background += [periodic("consumer lag measurement", settings.kafka.lag_interval_s, self.lag.measure),
                            self.watch_broker]
        self.broker_started = asyncio.Event()
        self._up = Gauge("ozg_service_up", "1 while the service is connected to its broker", ["service"],
                         registry=self.registry)
        # 0 from the start: a service that never reaches its broker must show as such, not as no data.
        self._up.labels(self.name).set(0)

    def consumer_groups(self) -> list[str]:
        """The consumer groups this service's subscribers use (a service may have several, e.g. routing)."""
        return sorted({sub.group_id for sub in self.broker.subscribers
                       if isinstance(sub, LogicSubscriber) and sub.group_id})

    def migrate(self) -> None:
        """Run this service's Alembic migrations to head."""
        db.migrate(self.engine, self.migrations, self.name)

    async def connect(self, *, cap_s: float = 10.0) -> None:
        """Create the topics and start the broker, retrying (at most every ``cap_s``) until Kafka is reachable."""
        attempt = 0
        while True:
            try:
                await topics.ensure_topics(self.settings.kafka, self.topic_specs)
                kafka.release(self.broker)  # the topics exist: publishing cannot auto-create them any more
                await self.broker.start()
                # Ready only with every client key read: before that, a valid key would look unknown.
                await self.clients.catch_up(self.settings.kafka, timeout_s=CLIENTS_CATCH_UP_S)
            except Exception as exc:  # noqa: BLE001 - any failure to connect is retried
                attempt += 1
                delay = backoff.delay_s(attempt, base_s=0.5, cap_s=cap_s)
                log.warning("broker not reachable, retrying", extra={"error": type(exc).__name__,
                                                                       "retry_in_s": delay})
                with contextlib.suppress(Exception):
                    await self.broker.stop()
                await asyncio.sleep(delay)
                continue
            self.broker_started.set()
            self._up.labels(self.name).set(1)
            log.info("connected to broker", extra={"bootstrap": self.settings.kafka.bootstrap_servers})
            return

    async def watch_broker(self) -> None:
        """Connect afresh once the broker was unreachable for a few seconds (a background job).

        A broker may come back without its state (a memory-only Tansu restarted, a cluster rebuilt): its topics start
        again at offset 0 and the groups' offsets are gone. A running consumer would go on from its old positions,
        skip the new topics' first records and commit those positions (Tansu takes the commit of a member it no
        longer knows). Consumers started afresh have no positions: they take the group's committed offsets or, with
        none, begin at the beginning (``auto_offset_reset=earliest``); what they see again is dropped by ``ce_id``.
        """
        interval_s = self.settings.kafka.watch_interval_s
        failures = 0
        while True:
            await asyncio.sleep(interval_s)
            if await self.broker.ping(timeout=2 * interval_s):
                failures = 0
                continue
            failures += 1
            if failures < self.settings.kafka.lost_after_pings:
                continue
            log.warning("broker unreachable, connecting afresh", extra={"failed_pings": failures})
            # Nothing is published until connect() made the topics again: a stopping broker may keep its producer.
            kafka.hold(self.broker)
            self.broker_started.clear()
            self._up.labels(self.name).set(0)
            with contextlib.suppress(Exception):
                await self.broker.stop()
            await self.connect(cap_s=interval_s)
            failures = 0

    async def readiness(self) -> dict[str, bool]:
        """Whether the broker and the database are reachable right now."""
        broker_ok = self.broker_started.is_set() and await self.broker.ping(timeout=2.0)
        db_ok = await anyio.to_thread.run_sync(db.ping, self.engine)
        return {"broker": bool(broker_ok), "database": db_ok}

    def create_app(
        self,
        *,
        title: str,
        description: str,
        routers: Sequence[APIRouter],
        migrate_on_start: bool = True,
    ) -> FastAPI:
        """The service's FastAPI app: its routers plus health, metrics, problem details and the broker lifespan."""

        @contextlib.asynccontextmanager
        async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
            if migrate_on_start:
                await anyio.to_thread.run_sync(self.migrate)
            for job in self.on_start:
                await job()
            freeze_start_up_objects()
            tasks = [asyncio.create_task(self.connect(), name="connect")]
            tasks += [asyncio.create_task(self._after_connect(job), name=job.__name__) for job in self.background]
            try:
                yield
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await self.broker.stop()
                self.engine.dispose()
                # What the service built may be collected again (an app stopped within a process that goes on).
                gc.unfreeze()

        app = FastAPI(title=title, description=description, version="0.1.0", lifespan=lifespan)
        problems.install(app)
        app.add_middleware(TraceASGIMiddleware)
        app.include_router(self._health_router())
        for router in routers:
            app.include_router(router)
        return app

    async def _after_connect(self, job: BackgroundTask) -> None:
        await self.broker_started.wait()
        await job()

    def _health_router(self) -> APIRouter:
        router = APIRouter(tags=["operations"])

        @router.get("/health/live", summary="Liveness: the process is running")
        async def live() -> dict[str, str]:
            return {"status": "ok"}

        @router.get(
            "/health/ready",
            summary="Readiness: broker and database are reachable",
            responses={503: {"description": "Not ready", "content": {problems.MEDIA_TYPE: {}}}},
        )
        async def ready() -> JSONResponse:
            checks = await self.readiness()
            if all(checks.values()):
                return JSONResponse({"status": "ready", "checks": checks})
            failing = ", ".join(name for name, ok in checks.items() if not ok)
            return problems.problem_response(
                problems.ProblemException(503, f"Not ready: {failing} unreachable.", kind="not-ready",
                                          extra={"checks": checks}, headers={"Retry-After": "5"}),
                "/health/ready",
            )

        @router.get("/metrics", summary="Prometheus metrics", response_class=Response)
        async def metrics() -> Response:
            return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

        return router


def freeze_start_up_objects() -> None:
    """Move everything built so far (modules, the app, schemas, validators) out of the garbage collector's reach.

    Those objects live as long as the process. Left in the collector's oldest generation, every full collection
    walked all of them: with requests or messages in flight, their objects survive the young collections, full
    collections follow often, and each cost intake about 80 µs of CPU per request (``make bench``'s profile).
    """
    gc.collect()
    gc.freeze()


def serve(app: FastAPI, settings: ServiceSettings, **uvicorn_options: Any) -> None:
    """Run ``app`` under uvicorn with the service's logging."""
    configure_logging(settings.log_level, json=settings.log_json, service=settings.service_name)
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                **uvicorn_options)


def main(
    build: Callable[[], tuple[Service, FastAPI]],
    argv: Sequence[str],
    *,
    settings: Callable[[], ServiceSettings],
    migrations: Path,
    extra: dict[str, Callable[[list[str]], int]] | None = None,
) -> int:
    """``python -m services.<name> [serve|migrate|...] [args]``; ``serve`` is the default command.

    ``-h`` lists the commands; an unknown command or option is refused (exit 2) instead of starting the service.
    ``migrate`` reads only the service's ``settings`` and applies its ``migrations``: a migration job needs no more
    than the database (no broker, no key). Each extra command parses its own arguments.
    """

    def _serve() -> int:
        service, app = build()
        serve(app, service.settings)
        return 0

    def _migrate() -> int:
        current = settings()
        configure_logging(current.log_level, json=current.log_json, service=current.service_name)
        engine = db.make_engine(current.database_url)
        try:
            db.migrate(engine, migrations, current.service_name)
        finally:
            engine.dispose()
        return 0

    extra = extra or {}
    prog = "python -m " + build.__module__.rsplit(".", 1)[0]
    parser = argparse.ArgumentParser(prog=prog, description="Run the service, or one of its commands.")
    commands = parser.add_subparsers(dest="command", metavar="command")
    commands.add_parser("serve", help="serve the HTTP API and consume the service's topics (the default)")
    commands.add_parser("migrate", help="bring the database to the newest migration, then exit")
    for name, command in extra.items():
        # Its own parser sees the rest of the line (and answers its own -h).
        commands.add_parser(name, help=(command.__doc__ or "").split("\n")[0], add_help=False,
                            prefix_chars="\0").add_argument("args", nargs=argparse.REMAINDER)
    options = parser.parse_args(list(argv))
    if options.command in extra:
        return extra[options.command](list(options.args))
    return _migrate() if options.command == "migrate" else _serve()
