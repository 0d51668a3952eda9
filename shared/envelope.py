"""CloudEvents 1.0 in Kafka binary content mode (SPEC §3), on top of the CloudEvents SDK.

Attributes travel in ``ce_*`` headers, ``content-type`` is ``application/json``, the JSON data is the value and
the Kafka key is the case id (``ce_subject``), so all events of a case stay in one partition, in order.
"""

from __future__ import annotations

import builtins
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import pydantic_core
from cloudevents.core.bindings.kafka import KafkaMessage, from_binary, to_binary
from cloudevents.core.exceptions import BaseCloudEventException
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from pydantic import BaseModel, ValidationError

from shared import tracing
from shared.events import utc_representable

CONTENT_TYPE = "application/json"
_REQUIRED = ("ce_specversion", "ce_id", "ce_source", "ce_type")
# The longest id, type, source and subject the services' tables take (the narrowest column of each); the project's
# own are far shorter. A longer one is a poison message, not a database error on PostgreSQL that stops a consumer.
MAX_ATTRIBUTE_LENGTHS = {"id": 200, "type": 100, "source": 200, "subject": 200}
# CloudEvents' String type disallows the control characters (spec, "Type System"); PostgreSQL refuses NUL in text.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class _JSONData(JSONFormat):
    """The SDK's JSON format, reading event data with pydantic-core's JSON parser: less than half the time of the
    standard library's, for every event every consumer reads. Only keys are interned (``cache_strings``): values
    are personal data, and pydantic-core's string cache would keep them after the event is gone."""

    def read_data(self, body: bytes, datacontenttype: str | None) -> dict[str, Any] | str | bytes | None:
        if not body:
            return None
        try:
            parsed: dict[str, Any] = pydantic_core.from_json(body, cache_strings="keys")
        except ValueError:
            # Not JSON: the SDK's own reading (text or bytes), which parse_event refuses as data.
            return super().read_data(body, datacontenttype)
        return parsed


_FORMAT = _JSONData()
# Namespace for event ids derived from other events (see derived_event_id).
_DERIVED_NS = uuid.UUID("6f1f6a53-5c55-4c2e-9a3e-0d8f3b1f7c11")

M = TypeVar("M", bound=BaseModel)


class InvalidEvent(ValueError):
    """A Kafka record that is not a valid CloudEvent of the expected type: a poison message."""


@dataclass(frozen=True)
class OutgoingEvent:
    """A CloudEvent encoded for Kafka: what a producer sends."""

    key: bytes
    value: bytes
    headers: dict[str, str]
    event_id: str
    event_type: str


@dataclass(frozen=True)
class Envelope:
    """A CloudEvent read from Kafka, its data still a plain JSON object."""

    id: str
    type: str
    source: str
    subject: str | None
    time: datetime
    data: dict[str, Any]
    headers: dict[str, str]

    def data_as(self, model: builtins.type[M]) -> M:
        """Validate the data against the model of its event type; a mismatch is a poison message."""
        try:
            return model.model_validate(self.data)
        except ValidationError as exc:
            # Only field locations and error types: the input may be personal data.
            where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['type']}" for e in exc.errors())
            raise InvalidEvent(f"{self.type} data does not match {model.__name__}: {where}") from None


def derived_event_id(cause_id: str, event_type: str, discriminator: str = "") -> str:
    """A deterministic event id for an event caused by another one.

    A consumer that is redelivered its input produces the same output ids, so its consumers drop the repeat.
    """
    return str(uuid.uuid5(_DERIVED_NS, f"{cause_id}|{event_type}|{discriminator}"))


def build_event(
    *,
    event_type: str,
    source: str,
    subject: str,
    data: BaseModel | bytes,
    event_id: str | None = None,
    time: datetime | None = None,
    extra_headers: Mapping[str, str] | None = None,
) -> OutgoingEvent:
    """Encode ``data`` as a CloudEvent in binary content mode, keyed by ``subject`` (the case id).

    ``data`` is the event's data model, or its JSON already serialised (``model_dump_json()``), as the sender may
    hold it anyway (intake keeps it in its outbox).
    """
    event_id = event_id or str(uuid.uuid4())
    event = CloudEvent(
        attributes={
            "id": event_id,
            "source": source,
            "type": event_type,
            "subject": subject,
            "time": time or datetime.now(UTC),
            "datacontenttype": CONTENT_TYPE,
        },
        # Serialised by pydantic-core straight to JSON bytes, which the SDK passes through: a dict for the SDK's
        # json.dumps cost several times as much.
        data=data if isinstance(data, bytes) else data.model_dump_json().encode(),
    )
    message = to_binary(event, _FORMAT, key_mapper=lambda _: subject)
    headers = {name: value.decode() for name, value in message.headers.items()}
    headers[tracing.HEADER] = tracing.outgoing_traceparent()
    if extra_headers:
        headers.update(extra_headers)
    return OutgoingEvent(
        key=subject.encode(), value=message.value, headers=headers, event_id=event_id, event_type=event_type
    )


def check_size(value: bytes | None, max_bytes: int | None) -> None:
    """Refuse a record value longer than ``max_bytes`` (None: no limit) as a poison message."""
    if max_bytes is not None and value is not None and len(value) > max_bytes:
        raise InvalidEvent(f"the value has {len(value)} bytes, more than the limit of {max_bytes}")


def parse_event(
    headers: Iterable[tuple[str, bytes]] | Mapping[str, bytes],
    value: bytes | None,
    key: bytes | None = None,
    *,
    max_bytes: int | None = None,
) -> Envelope:
    """Decode a Kafka record in binary content mode; anything that isn't a CloudEvent, or a value longer than
    ``max_bytes``, raises InvalidEvent."""
    check_size(value, max_bytes)
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    # One pass over the headers: their text for the Envelope, the CloudEvents ones as bytes for the SDK.
    text: dict[str, str] = {}
    ce_headers: dict[str, bytes] = {}
    try:
        for name, val in pairs:
            if val is None:
                continue
            name = name.lower()
            # str(), not val.decode(): the consumer's values are lenient about decoding (shared.kafka), this is not.
            text[name] = str(val, "utf-8")
            if name.startswith("ce_") or name == "content-type":
                ce_headers[name] = val
    except UnicodeDecodeError:
        raise InvalidEvent("a header is not UTF-8") from None
    missing = [h for h in _REQUIRED if h not in text]
    if missing:
        raise InvalidEvent(f"missing CloudEvents headers: {', '.join(missing)}")
    if text["ce_specversion"] != "1.0":
        raise InvalidEvent(f"unsupported specversion {text['ce_specversion']!r}")
    content_type = text.get("content-type", "")
    if not content_type.startswith(CONTENT_TYPE):
        raise InvalidEvent(f"content-type must be {CONTENT_TYPE}, got {content_type!r}")
    try:
        event = from_binary(KafkaMessage(headers=ce_headers, key=key, value=value or b""), _FORMAT, CloudEvent)
    except (BaseCloudEventException, ValueError, TypeError) as exc:
        raise InvalidEvent(f"not a valid CloudEvent: {type(exc).__name__}") from None
    data = event.get_data()
    if not isinstance(data, dict):
        raise InvalidEvent("event data must be a JSON object (the value is not one, or not JSON at all)")
    event_id, event_type, source, subject = event.get_id(), event.get_type(), event.get_source(), event.get_subject()
    for name, attribute in (("id", event_id), ("type", event_type), ("source", source), ("subject", subject)):
        if attribute is None:
            continue
        if len(attribute) > MAX_ATTRIBUTE_LENGTHS[name]:
            raise InvalidEvent(f"ce_{name} is longer than {MAX_ATTRIBUTE_LENGTHS[name]} characters")
        if _CONTROL.search(attribute):
            raise InvalidEvent(f"ce_{name} holds control characters")
    time = event.get_time() or datetime.now(UTC)
    if not utc_representable(time):
        # Every consumer compares, stores or canonicalises the time: an OverflowError there would fail it for ever.
        raise InvalidEvent("ce_time lies outside the range of UTC times")
    return Envelope(
        id=event_id,
        type=event_type,
        source=source,
        subject=subject,
        time=time,
        data=data,
        headers=text,
    )
