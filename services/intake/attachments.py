"""Attachment uploads: a streamed multipart/form-data body into the blob store, with its SHA-512, its real media
type (from the bytes, whatever the client claims) and a size limit enforced while reading: on the file and on the
whole body, whether or not the client declared its length."""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.to_thread
from python_multipart.multipart import MultipartParser, parse_options_header

from services.intake.blobs import STALE_PART_S, BlobStore, BlobWriter
from services.intake.store import IntakeStore
from shared.jobs import periodic
from shared.problems import ProblemException

log = logging.getLogger(__name__)

# Enough bytes to tell the accepted types apart (and to skip a BOM and some leading whitespace of an XML file).
SNIFF_BYTES = 512
_XML_NAME_START = re.compile(rb"[A-Za-z_:]")
MAX_FIELD_BYTES = 1024
# The form fields besides ``file`` that the API documents (``UPLOAD_SCHEMA`` in api.py), each at most once: any
# other part is refused when its headers arrive, so a request holds at most two parts.
FIELDS = frozenset({"sha512"})
# What a body may carry besides the file: boundaries, part headers, the ``sha512`` field, a short epilogue. A body
# longer than the file limit plus this is refused (413), counted as it arrives, with or without Content-Length.
BODY_ALLOWANCE = 64 * 1024
# What ``sniff`` recognises: the only media types intake accepts.
MEDIA_TYPES = ("application/pdf", "image/png", "image/jpeg", "application/xml")


def sniff(head: bytes) -> str | None:
    """The media type of a file from its first bytes: PDF, PNG, JPEG or XML; None for anything else."""
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")
    if text.startswith(b"<?xml") or (text[:1] == b"<" and _XML_NAME_START.match(text[1:2]) is not None):
        return "application/xml"
    return None


def safe_filename(raw: str) -> str:
    """The last path component of a client's file name, without control characters, at most 255 characters."""
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip().strip(".")
    return name[:255] or "attachment"


def too_large(limit: int) -> ProblemException:
    return ProblemException(413, f"An attachment may have at most {limit} bytes.", kind="attachment-too-large",
                            title="Attachment too large")


def unsupported() -> ProblemException:
    return ProblemException(415, "Only PDF, PNG, JPEG and XML files are accepted (judged by their content).",
                            kind="unsupported-media-type", title="Unsupported media type")


def invalid(detail: str, pointer: str = "#/file", code: str = "invalid") -> ProblemException:
    return ProblemException(422, detail, kind="validation", title="Validation failed",
                            errors=[{"pointer": pointer, "detail": detail, "code": code}])


@dataclass
class Upload:
    """What was stored: the blob's id and facts about it."""

    attachment_id: uuid.UUID
    filename: str
    media_type: str
    size: int
    sha512: str


@dataclass
class _Part:
    headers: dict[str, str] = field(default_factory=dict)
    name: str | None = None
    filename: str | None = None


class _FileSink:
    """Receives one file part: sniffs its head, hashes, counts and writes it, refusing as soon as it's too big."""

    def __init__(self, blobs: BlobStore, filename: str, limit: int) -> None:
        self.blobs = blobs
        self.filename = filename
        self.limit = limit
        self.attachment_id = uuid.uuid4()
        self.head = b""
        self.media_type: str | None = None
        self.size = 0
        self.digest = hashlib.sha512()
        self.writer: BlobWriter | None = None

    async def feed(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise too_large(self.limit)
        self.digest.update(data)
        if self.writer is None:
            self.head += data
            if len(self.head) < SNIFF_BYTES:
                return
            await self._open()
            data, self.head = self.head, b""
        assert self.writer is not None
        await self.writer.write(data)

    async def _open(self) -> None:
        self.media_type = sniff(self.head)
        if self.media_type is None:
            raise unsupported()
        self.writer = await self.blobs.writer(self.attachment_id)

    async def finish(self) -> None:
        if self.writer is None:
            if self.size == 0:
                raise invalid("The file is empty.")
            await self._open()
            assert self.writer is not None
            await self.writer.write(self.head)
        await self.writer.commit()

    async def abort(self) -> None:
        if self.writer is not None:
            await self.writer.abort()


async def receive(
    content_type: str, body: AsyncIterator[bytes], blobs: BlobStore, limit: int
) -> tuple[Upload, dict[str, str]]:
    """Stream a multipart/form-data body with one file in the field ``file`` into ``blobs``.

    Returns the upload and the other (small) form fields: only those in ``FIELDS``. Raises ProblemException: 413
    for a file beyond ``limit`` or a body beyond ``limit + BODY_ALLOWANCE`` (reading stops at once), 415 for
    content that is not PDF, PNG, JPEG or XML, 422 for a malformed form or a part the API does not document.
    Whatever was written is removed when it raises.
    """
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise ProblemException(415, "Send the file as multipart/form-data in the field 'file'.",
                               kind="unsupported-media-type", title="Unsupported media type")
    pending: list[tuple[str, Any]] = []
    header: dict[str, bytes] = {"field": b"", "value": b""}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def on_header_end() -> None:
        pending.append(("header", (header["field"].decode("latin-1").lower(), header["value"])))
        header["field"], header["value"] = b"", b""

    callbacks: Any = {
        "on_part_begin": lambda: pending.append(("begin", None)),
        "on_part_data": lambda data, start, end: pending.append(("data", bytes(data[start:end]))),
        "on_part_end": lambda: pending.append(("end", None)),
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_headers_finished": lambda: pending.append(("headers", None)),
    }
    try:
        parser = MultipartParser(boundary, callbacks)
    except Exception:  # noqa: BLE001 - a boundary it cannot take (longer than RFC 2046's 70 characters, say)
        raise invalid("The multipart boundary is malformed.", "#") from None
    part = _Part()
    sink: _FileSink | None = None
    done: _FileSink | None = None
    fields: dict[str, str] = {}
    field_value = b""
    received = 0
    try:
        async for chunk in body:
            received += len(chunk)
            if received > limit + BODY_ALLOWANCE:
                raise too_large(limit)
            try:
                parser.write(chunk)
            except Exception:  # noqa: BLE001 - python-multipart raises several kinds for broken input
                raise invalid("The multipart body is malformed.", "#") from None
            for event, value in pending:
                if event == "begin":
                    part, field_value = _Part(), b""
                elif event == "header":
                    name, raw = value
                    # Latin-1 keeps the octets as they came; parameters are decoded as UTF-8 below.
                    part.headers[name] = raw.decode("latin-1")
                elif event == "headers":
                    _, params = parse_options_header(part.headers.get("content-disposition", ""))
                    part.name = params.get(b"name", b"").decode("utf-8", "replace") or None
                    raw_filename = params.get(b"filename")
                    part.filename = raw_filename.decode("utf-8", "replace") if raw_filename is not None else None
                    if part.name == "file":
                        if done is not None or sink is not None:
                            raise invalid("Send one file per request.")
                        sink = _FileSink(blobs, safe_filename(part.filename or ""), limit)
                    elif part.name not in FIELDS:
                        # Not echoed: the name is the client's input.
                        raise invalid("Unknown form field: only 'file' and 'sha512' are accepted.", "#",
                                      "unknown_field")
                    elif part.name in fields:
                        raise invalid(f"The field '{part.name}' was sent twice.", f"#/{part.name}", "duplicate")
                elif event == "data":
                    if part.name == "file" and sink is not None:
                        await sink.feed(value)
                    else:
                        field_value += value
                        if len(field_value) > MAX_FIELD_BYTES:
                            raise invalid("A form field is too long.", f"#/{part.name or ''}")
                elif event == "end":
                    if part.name == "file" and sink is not None:
                        await sink.finish()
                        done, sink = sink, None
                    elif part.name in FIELDS:
                        fields[part.name] = field_value.decode("utf-8", "replace")
            pending.clear()
        if sink is not None:
            raise invalid("The multipart body ended inside the file.")
        if done is None:
            raise invalid("The field 'file' is missing.")
    except BaseException:
        # Shielded: a cancelled request (the client gone, a shutdown) must still remove what it wrote.
        with anyio.CancelScope(shield=True):
            for open_sink in (sink, done):
                if open_sink is not None:
                    await open_sink.abort()
            if done is not None:
                await blobs.delete(done.attachment_id)
        raise
    assert done.media_type is not None
    upload = Upload(attachment_id=done.attachment_id, filename=done.filename, media_type=done.media_type,
                    size=done.size, sha512=done.digest.hexdigest())
    return upload, fields


async def sweep_unreferenced(
    store: IntakeStore, blobs: BlobStore, older_than_s: float, partial_older_than_s: float = STALE_PART_S
) -> int:
    """Remove uploads that no application referenced within ``older_than_s``; returns how many.

    First (it needs no database) what uploads never finished left in the blob store, a crashed process's temporary
    files, once nothing was written to them for ``partial_older_than_s`` (``BlobStore.sweep_partial``); logged as
    ``partial_uploads``.
    """
    try:
        partial = await blobs.sweep_partial(partial_older_than_s)
    except OSError as exc:  # must not hold up the sweep of unreferenced uploads
        partial = 0
        log.warning("sweep of partial uploads failed", extra={"error": type(exc).__name__})
    cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
    removed = 0
    for attachment_id in await anyio.to_thread.run_sync(store.unreferenced_before, cutoff):
        # The record goes first, and only if still unreferenced: a submission taking it meanwhile wins.
        if await anyio.to_thread.run_sync(store.forget_unreferenced, attachment_id):
            await blobs.delete(attachment_id)
            removed += 1
    if removed or partial:
        log.info("removed unreferenced attachments", extra={"count": removed, "partial_uploads": partial})
    return removed


def sweep_job(
    store: IntakeStore, blobs: BlobStore, older_than_s: float, interval_s: float
) -> Callable[[], Awaitable[None]]:
    """A background job: sweep unreferenced uploads at start-up and every ``interval_s`` seconds."""
    return periodic("attachment sweep", interval_s, lambda: sweep_unreferenced(store, blobs, older_than_s))
