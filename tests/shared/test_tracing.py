"""W3C trace context: carried from HTTP and Kafka headers into events and log lines."""

from __future__ import annotations

import logging
from pathlib import Path

from services.routing.app import build
from services.routing.settings import Settings
from shared import events, topics, tracing
from shared.envelope import build_event
from shared.settings import KafkaSettings
from tests.factories import WOHNSITZ, submitted
from tests.support import consume, produce, running

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_parse_accepts_only_valid_traceparents() -> None:
    context = tracing.parse(PARENT)
    assert context is not None
    assert (context.trace_id, context.span_id) == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")
    assert context.traceparent == PARENT
    for bad in (None, "", "garbage", PARENT.replace("00-", "ff-", 1), f"00-{'0' * 32}-00f067aa0ba902b7-01"):
        assert tracing.parse(bad) is None


def test_events_and_logs_carry_the_active_trace() -> None:
    parent = tracing.parse(PARENT)
    assert parent is not None
    with tracing.activated(parent):
        tracing.set_case("case-1")
        event = build_event(event_type="t.v1", source="/s", subject="case-1", data=events.Problem(title="x"))
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "message", None, None)
        assert tracing.TraceLogFilter().filter(record)
    child = tracing.parse(event.headers[tracing.HEADER])
    assert child is not None
    assert child.trace_id == parent.trace_id
    assert child.span_id != parent.span_id
    assert (record.trace_id, record.case_id) == (parent.trace_id, "case-1")  # type: ignore[attr-defined]
    assert tracing.current() is None
    # Outside any request or message, an event starts a trace of its own.
    assert tracing.parse(
        build_event(event_type="t.v1", source="/s", subject="c", data=events.Problem(title="x")).headers["traceparent"]
    ) is not None


async def test_trace_continues_across_http_and_kafka(tmp_path: Path, kafka_settings: KafkaSettings) -> None:
    service, app = build(Settings(database_url=f"sqlite:///{tmp_path / 'r.db'}", kafka=kafka_settings,
                                  demo_destinations=True))
    async with running(service, app) as client:
        response = await client.get("/v1/routes", params={"leika_key": WOHNSITZ, "ags": "09273137"},
                                    headers={"traceparent": PARENT})
        answered = tracing.parse(response.headers["traceparent"])
        assert answered is not None
        assert answered.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"

        application = submitted(WOHNSITZ)
        event = build_event(event_type=events.SUBMITTED_V1, source="/test", subject=str(application.case_id),
                            data=application, extra_headers={"traceparent": PARENT})
        await produce(kafka_settings, topics.SUBMITTED, event.value, event.headers, event.key)
        routed = await consume(kafka_settings, topics.ROUTED, 1,
                               predicate=lambda r: r.key == str(application.case_id).encode())
        continued = tracing.parse(dict(routed[0].headers)["traceparent"].decode())
        assert continued is not None
        assert continued.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
        assert continued.span_id != "00f067aa0ba902b7"
