"""CloudEvents binary content mode: what producers write and what consumers accept."""

from __future__ import annotations

import json
import uuid

import pytest

from shared import events
from shared.envelope import InvalidEvent, build_event, derived_event_id, parse_event
from shared.events import CaseStatus, CaseStatusChanged
from tests.factories import submitted


def test_round_trip_in_binary_content_mode() -> None:
    data = submitted()
    event = build_event(event_type=events.SUBMITTED_V1, source="/ozg/intake", subject=str(data.case_id), data=data)
    assert event.key == str(data.case_id).encode()
    assert {"ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "ce_subject", "content-type"} <= set(
        event.headers
    )
    assert event.headers["ce_specversion"] == "1.0"
    assert event.headers["content-type"] == "application/json"
    envelope = parse_event([(k, v.encode()) for k, v in event.headers.items()], event.value, event.key)
    assert (envelope.id, envelope.type, envelope.subject) == (event.event_id, events.SUBMITTED_V1, str(data.case_id))
    assert envelope.data_as(events.ApplicationSubmitted) == data


def test_data_already_serialised_goes_out_as_it_is() -> None:
    data = submitted()
    serialised = data.model_dump_json().encode()
    attributes = {"event_type": events.SUBMITTED_V1, "source": "/ozg/intake", "subject": str(data.case_id),
                  "event_id": str(uuid.uuid4()), "time": data.submitted_at}
    from_model = build_event(**attributes, data=data)
    from_bytes = build_event(**attributes, data=serialised)
    assert from_bytes.value is serialised
    assert from_bytes.value == from_model.value
    assert {k: v for k, v in from_bytes.headers.items() if k != "traceparent"} == {
        k: v for k, v in from_model.headers.items() if k != "traceparent"}


@pytest.mark.parametrize(
    ("headers", "value", "message"),
    [
        ({}, b"{}", "missing CloudEvents headers"),
        ({"ce_specversion": "0.3"}, b"{}", "unsupported specversion"),
        ({"content-type": "text/plain"}, b"{}", "content-type must be"),
        ({}, b"[1, 2]", "must be a JSON object"),
        ({}, b"\xff\xfe", "not JSON at all"),
        ({}, b"{broken", "not JSON at all"),
        # Longer than the services' columns take, or with control characters (CloudEvents' String type has none,
        # and PostgreSQL stores no NUL): a poison message, not a database error that holds a consumer up.
        ({"ce_id": "x" * 201}, b"{}", "ce_id is longer than 200"),
        ({"ce_type": "t" * 101}, b"{}", "ce_type is longer than 100"),
        ({"ce_source": "/s" * 101}, b"{}", "ce_source is longer than 200"),
        ({"ce_subject": "c" * 201}, b"{}", "ce_subject is longer than 200"),
        ({"ce_id": "a\x00b"}, b"{}", "ce_id .* control characters"),
        ({"ce_source": "/s\n"}, b"{}", "ce_source .* control characters"),
        # Valid ISO 8601 with no UTC time: converting it failed audit's batch for ever.
        ({"ce_time": "0001-01-01T00:00:00+01:00"}, b"{}", "outside the range of UTC times"),
        ({"ce_time": "9999-12-31T23:30:00-01:00"}, b"{}", "outside the range of UTC times"),
    ],
)
def test_rejects_what_is_not_a_cloudevent(headers: dict[str, str], value: bytes, message: str) -> None:
    base = build_event(event_type="t.v1", source="/s", subject="c",
                       data=CaseStatusChanged(case_id=uuid.uuid4(), reference="r", status=CaseStatus.RECEIVED,
                                              changed_at="2026-01-01T00:00:00Z")).headers  # type: ignore[arg-type]
    merged = {} if message.startswith("missing") else {**base, **headers}
    with pytest.raises(InvalidEvent, match=message):
        parse_event([(k, v.encode()) for k, v in merged.items()], value)


def test_attributes_as_long_as_the_columns_take_are_read() -> None:
    event = build_event(event_type="t" * 100, source="s" * 200, subject="c" * 200, event_id="i" * 200,
                        data=b"{}")
    envelope = parse_event([(k, v.encode()) for k, v in event.headers.items()], event.value)
    assert (len(envelope.id), len(envelope.type), len(envelope.source), len(envelope.subject or "")) == (
        200, 100, 200, 200)


def test_schema_mismatch_names_fields_but_not_values() -> None:
    event = build_event(event_type=events.SUBMITTED_V1, source="/s", subject="c", data=submitted())
    envelope = parse_event([(k, v.encode()) for k, v in event.headers.items()], event.value)
    broken = envelope.data | {"leika_key": "Erika"}
    with pytest.raises(InvalidEvent) as error:
        type(envelope)(**{**envelope.__dict__, "data": broken}).data_as(events.ApplicationSubmitted)
    assert "leika_key" in str(error.value)
    assert "Erika" not in str(error.value)


def test_derived_event_ids_are_deterministic() -> None:
    assert derived_event_id("a", "t") == derived_event_id("a", "t")
    assert derived_event_id("a", "t") != derived_event_id("b", "t")
    assert derived_event_id("a", "t") != derived_event_id("a", "u")


def test_a_header_that_is_not_utf8_is_refused_even_as_the_consumer_hands_it_over() -> None:
    # The consumer's parser hook makes header values decode leniently (shared.kafka); parse_event must not.
    from shared.kafka import _LenientBytes

    event = build_event(event_type="t.v1", source="/s", subject="c", data=submitted())
    headers = [(k, _LenientBytes(b"\xff\xfe" if k == "ce_id" else v.encode())) for k, v in event.headers.items()]
    with pytest.raises(InvalidEvent, match="not UTF-8"):
        parse_event(headers, event.value)


def test_data_reads_as_the_standard_library_reads_it() -> None:
    value = '{"n": 12345678901234567890123, "f": 0.1, "s": "Straße 🏠", "l": [null, true], "o": {"k": -1e5}}'
    headers = build_event(event_type="t.v1", source="/s", subject="c", data=submitted()).headers
    envelope = parse_event([(k, v.encode()) for k, v in headers.items()], value.encode())
    assert envelope.data == json.loads(value)


@pytest.mark.parametrize(
    ("model", "field", "value"),
    [
        # What the consumers' tables take (routing's and notify's references have 32 characters, PostgreSQL no NUL):
        # refused as poison when read, instead of a database error that fails the consumer's batch for ever.
        (events.ApplicationSubmitted, "reference", "OZG-" + "X" * 40),
        (events.ApplicationSubmitted, "reference", "OZG-2026\x00"),
        (events.ApplicationSubmitted, "submitted_at", "0001-01-01T00:00:00+01:00"),
        (events.ApplicationRouted, "authority", {"ars": "09273137", "name": "Stadt\x00", "level": "gemeinde"}),
        (events.ApplicationRouted, "region", {"ars": "092730137137", "ags": "09273137", "name": "K" * 101}),
        (events.ApplicationRouted, "destination_name", "d" * 201),
        (events.CaseStatusChanged, "changed_at", "9999-12-31T23:30:00-01:00"),
    ],
)
def test_event_data_the_consumers_cannot_store_is_refused(model: type[events.Strict], field: str, value: object,
                                                          ) -> None:
    routed = {"case_id": str(uuid.uuid4()), "reference": "OZG-2026-AAAA-BBBB", "leika_key": "99107023037000",
              "region": {"ars": "092730137137", "ags": "09273137", "name": "Kelheim"},
              "authority": {"ars": "092730137137", "name": "Stadt Kelheim", "level": "gemeinde"},
              "rule": "r", "destination_id": str(uuid.uuid4()), "destination_name": "Bürgerbüro"}
    valid = {
        events.ApplicationSubmitted: lambda: submitted().model_dump(mode="json"),
        events.ApplicationRouted: lambda: routed,
        events.CaseStatusChanged: lambda: {"case_id": str(uuid.uuid4()), "reference": "OZG-2026-AAAA-BBBB",
                                           "status": "received", "changed_at": "2026-01-01T00:00:00Z"},
    }[model]()
    model.model_validate(valid)
    event = build_event(event_type="t.v1", source="/s", subject="c", data=json.dumps({**valid, field: value}).encode())
    envelope = parse_event([(k, v.encode()) for k, v in event.headers.items()], event.value)
    with pytest.raises(InvalidEvent, match=field):
        envelope.data_as(model)
