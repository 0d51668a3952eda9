"""Attachments by claim-check against the real broker: upload, media type from the bytes, limits, hashes,
references from applications, download authorisation and the sweep of unreferenced uploads."""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import httpx
import pytest
from pydantic import ValidationError
from sqlmodel import Session

from services.intake.app import build
from services.intake.attachments import receive, sniff, sweep_unreferenced
from services.intake.blobs import MIN_PART_BYTES, LocalBlobStore, S3BlobStore
from services.intake.models import Attachment
from services.intake.settings import Settings
from shared import events, topics
from shared.envelope import build_event, parse_event
from shared.events import (
    ApplicationRouted,
    ApplicationSubmitted,
    Authority,
    AuthorityLevel,
    CaseStatus,
    CaseStatusChanged,
    ClientKind,
    PersonalDataDeleted,
    ResolvedRegion,
)
from shared.problems import ProblemException
from shared.settings import KafkaSettings
from tests.factories import WOHNSITZ, application_body
from tests.intake.conftest import S3_ACCESS_KEY_ID, S3_REGION, S3_SECRET_ACCESS_KEY, S3Bucket
from tests.support import consume, issue_key, produce, running, wait_until

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100
PDF = b"%PDF-1.7\n" + b"x" * 100
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 100
XML = b"\xef\xbb\xbf  \n<xoev:nachricht xmlns:xoev='urn:x'/>"


@pytest.fixture
def settings(tmp_path: Path, kafka_settings: KafkaSettings) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path / 'intake.db'}", kafka=kafka_settings,
                    blob_dir=tmp_path / "blobs", max_attachment_bytes=2048, max_application_attachment_bytes=3000)


@pytest.fixture(params=["local", "s3"])
def store_settings(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    """``settings`` with each blob store in turn: the local directory, then the S3-compatible store."""
    if request.param == "local":
        return settings
    bucket: S3Bucket = request.getfixturevalue("s3_bucket")
    return Settings(**{
        **settings.model_dump(include={"database_url", "kafka", "blob_dir", "max_attachment_bytes",
                                       "max_application_attachment_bytes"}),
        "blob_store": "s3", "s3_endpoint_url": bucket.endpoint_url, "s3_bucket": bucket.name,
        "s3_region": S3_REGION, "s3_access_key_id": S3_ACCESS_KEY_ID, "s3_secret_access_key": S3_SECRET_ACCESS_KEY,
        "s3_prefix": "attachments/",
    })


def bearer(key: str, idempotency_key: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key}"}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    return headers


async def upload(client: httpx.AsyncClient, key: str, content: bytes, filename: str = "antrag.pdf",
                 content_type: str = "application/pdf", **fields: str) -> httpx.Response:
    return await client.post("/v1/attachments", headers=bearer(key), data=fields,
                             files={"file": (filename, content, content_type)})


def stored_files(root: Path, temporary: bool = False) -> list[Path]:
    """The committed blobs under ``root`` (or, with ``temporary``, the ones still being written)."""
    if not root.exists():
        return []
    return [p for p in root.rglob("*") if p.is_file() and (p.relative_to(root).parts[0] == "tmp") == temporary]


BOUNDARY = "ozg-test-boundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def form_part(name: str, content: bytes, filename: str | None = None) -> bytes:
    """One part of a multipart/form-data body (``BOUNDARY``), framing included."""
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    return f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"


CLOSING = f"--{BOUNDARY}--\r\n".encode()


async def chunks(*pieces: bytes) -> AsyncIterator[bytes]:
    """``pieces`` in chunks of at most 16 KiB: httpx sends such a body chunked, without a Content-Length."""
    for piece in pieces:
        for start in range(0, len(piece), 16 * 1024):
            yield piece[start:start + 16 * 1024]


async def upload_chunked(client: httpx.AsyncClient, key: str, *pieces: bytes) -> httpx.Response:
    answer = await client.post("/v1/attachments", headers={**bearer(key), "Content-Type": MULTIPART},
                               content=chunks(*pieces))
    assert "content-length" not in answer.request.headers
    return answer


def test_sniffing_judges_the_bytes() -> None:
    assert sniff(PDF) == "application/pdf"
    assert sniff(PNG) == "image/png"
    assert sniff(JPEG) == "image/jpeg"
    assert sniff(XML) == "application/xml"
    assert sniff(b'<?xml version="1.0"?><a/>') == "application/xml"
    assert sniff(b"MZ\x90\x00 executable") is None
    assert sniff(b"hello, plain text") is None
    assert sniff(b"< not xml") is None


async def test_upload_stores_by_content_with_hash_and_limits(settings: Settings, kafka_settings: KafkaSettings) -> None:
    service, app = build(settings)
    async with running(service, app) as client:
        _, key = await issue_key(kafka_settings, ClientKind.PORTAL, service=service)

        # A PNG claimed to be a PDF is stored as what it is.
        png = await upload(client, key, PNG, "scan.png", "application/pdf")
        assert png.status_code == 201, png.text
        answer = png.json()
        assert answer["media_type"] == "image/png"
        assert answer["size"] == len(PNG)
        assert answer["filename"] == "scan.png"
        assert answer["sha512"] == hashlib.sha512(PNG).hexdigest()
        assert png.headers["location"] == f"/v1/attachments/{answer['id']}"
        assert (settings.blob_dir / answer["id"].replace("-", "")[:2] / uuid.UUID(answer["id"]).hex).read_bytes() == PNG

        for content in (PDF, JPEG, XML):
            assert (await upload(client, key, content)).status_code == 201
        before = len(stored_files(settings.blob_dir))

        # Anything else is refused, whatever the header says.
        for content, claimed in ((b"MZ\x90\x00" + b"\x00" * 600, "application/pdf"), (b"just text", "image/png")):
            refused = await upload(client, key, content, "x.pdf", claimed)
            assert refused.status_code == 415
            assert refused.headers["content-type"] == "application/problem+json"
        # Beyond the per-file limit: 413, nothing kept.
        too_big = await upload(client, key, PDF + b"x" * 3000)
        assert too_big.status_code == 413
        # A SHA-512 sent along must match.
        mismatch = await upload(client, key, PDF, sha512="0" * 128)
        assert mismatch.status_code == 422
        assert mismatch.json()["errors"][0]["pointer"] == "#/sha512"
        matching = await upload(client, key, PDF, sha512=hashlib.sha512(PDF).hexdigest())
        assert matching.status_code == 201
        # Malformed requests.
        no_file = await client.post("/v1/attachments", headers=bearer(key), data={"other": "x"},
                                    files={"notfile": ("a.pdf", PDF, "application/pdf")})
        assert no_file.status_code == 422
        raw = await client.post("/v1/attachments", headers={**bearer(key), "Content-Type": "application/pdf"},
                                content=PDF)
        assert raw.status_code == 415
        long_boundary = await client.post(
            "/v1/attachments", headers={**bearer(key), "Content-Type": f"multipart/form-data; boundary={'b' * 5000}"},
            content=b"--" + b"b" * 5000 + b"\r\n",
        )
        assert long_boundary.status_code == 422
        assert long_boundary.headers["content-type"] == "application/problem+json"
        assert len(stored_files(settings.blob_dir)) == before + 1
        assert stored_files(settings.blob_dir, temporary=True) == []

        _, auditor = await issue_key(kafka_settings, ClientKind.AUDITOR, service=service)
        assert (await upload(client, auditor, PDF)).status_code == 403
        assert (await client.post("/v1/attachments", files={"file": ("a.pdf", PDF)})).status_code == 401


async def test_a_chunked_body_is_counted_and_only_the_documented_parts_are_taken(
    settings: Settings, kafka_settings: KafkaSettings
) -> None:
    """Without a Content-Length the bytes received count: past the file limit plus 64 KiB it is 413, as for a
    declared length. Parts other than 'file' and one 'sha512' are 422. Nothing refused stays in the blob store."""
    service, app = build(settings)
    async with running(service, app) as client:
        _, key = await issue_key(kafka_settings, ClientKind.PORTAL, service=service)
        file_part = form_part("file", PDF, "antrag.pdf")

        # The review's request: many distinct small fields beside a small PDF, sent chunked.
        many = b"".join(form_part(f"field{i}", b"v" * 1000) for i in range(300))
        fields = await upload_chunked(client, key, many, file_part, CLOSING)
        assert fields.status_code == 422, fields.text
        assert fields.json()["type"] == "urn:ozg:problem:validation"
        # The same fields after the file: the file read by then is removed again.
        after = await upload_chunked(client, key, file_part, form_part("comment", b"x"), CLOSING)
        assert after.status_code == 422
        nameless = f"--{BOUNDARY}\r\nContent-Disposition: form-data\r\n\r\nx\r\n".encode()
        assert (await upload_chunked(client, key, nameless, file_part, CLOSING)).status_code == 422
        digest = hashlib.sha512(PDF).hexdigest().encode()
        twice = await upload_chunked(client, key, form_part("sha512", digest), form_part("sha512", digest),
                                     file_part, CLOSING)
        assert twice.status_code == 422
        assert twice.json()["errors"][0]["pointer"] == "#/sha512"

        # Bytes no part holds (an epilogue after the closing boundary) count as well: 413, not 201.
        epilogue = await upload_chunked(client, key, file_part, CLOSING, b"e" * (2048 + 64 * 1024))
        assert epilogue.status_code == 413, epilogue.text
        assert epilogue.json()["type"] == "urn:ozg:problem:attachment-too-large"
        assert epilogue.headers["content-type"] == "application/problem+json"
        assert stored_files(settings.blob_dir) == []
        assert stored_files(settings.blob_dir, temporary=True) == []

        # A well-formed chunked upload with its SHA-512 is taken; a short epilogue is allowed.
        taken = await upload_chunked(client, key, form_part("sha512", digest), file_part, CLOSING, b"\r\n")
        assert taken.status_code == 201, taken.text
        assert taken.json()["sha512"] == digest.decode()
        assert len(stored_files(settings.blob_dir)) == 1
        assert stored_files(settings.blob_dir, temporary=True) == []


async def test_a_cancelled_upload_removes_its_temporary_file(tmp_path: Path) -> None:
    """A request cancelled while its file is being written (the client gone, a shutdown) still removes the file:
    the clean-up runs shielded from the cancellation."""
    blobs = LocalBlobStore(tmp_path / "blobs")

    with anyio.CancelScope() as scope:
        async def body() -> AsyncIterator[bytes]:
            yield f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.pdf\"\r\n\r\n".encode()
            yield PDF + b"x" * 1000  # past the sniffed head: the temporary file exists now
            assert stored_files(blobs.root, temporary=True) != []
            scope.cancel()
            await anyio.sleep(10)
            yield b""

        await receive(MULTIPART, body(), blobs, 2048)
    assert scope.cancelled_caught
    assert stored_files(blobs.root, temporary=True) == []
    assert stored_files(blobs.root) == []


async def test_receive_refuses_unknown_parts_before_reading_them(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path / "blobs")
    with pytest.raises(ProblemException) as refused:
        await receive(MULTIPART, chunks(form_part("file", PDF, "a.pdf"), form_part("x", b"1"), CLOSING), blobs,
                      2048)
    assert refused.value.status == 422
    assert stored_files(blobs.root) == []
    assert stored_files(blobs.root, temporary=True) == []


async def test_applications_reference_own_attachments_within_limits(
    store_settings: Settings, kafka_settings: KafkaSettings
) -> None:
    service, app = build(store_settings)
    async with running(service, app) as client:
        _, key = await issue_key(kafka_settings, ClientKind.PORTAL, service=service)
        _, other = await issue_key(kafka_settings, ClientKind.PORTAL, service=service)
        mine = (await upload(client, key, PDF)).json()
        theirs = (await upload(client, other, PNG, "p.png", "image/png")).json()

        body = application_body()
        body["attachments"] = [mine["id"], theirs["id"], str(uuid.uuid4())]
        refused = await client.post("/v1/applications", json=body, headers=bearer(key, "a"))
        assert refused.status_code == 422
        assert [e["pointer"] for e in refused.json()["errors"]] == ["#/attachments/1", "#/attachments/2"]

        big = [(await upload(client, key, PDF + b"x" * 1500)).json()["id"] for _ in range(2)]
        body["attachments"] = big
        too_much = await client.post("/v1/applications", json=body, headers=bearer(key, "b"))
        assert too_much.status_code == 413

        body["attachments"] = [mine["id"]]
        accepted = await client.post("/v1/applications", json=body, headers=bearer(key, "c"))
        assert accepted.status_code == 202, accepted.text
        case_id = accepted.json()["case_id"]
        records = await consume(kafka_settings, topics.SUBMITTED, 1, predicate=lambda r: r.key == case_id.encode())
        data = parse_event(records[0].headers, records[0].value, records[0].key).data_as(ApplicationSubmitted)
        [ref] = data.attachments
        assert (str(ref.attachment_id), ref.media_type, ref.size, ref.sha512) == (
            mine["id"], "application/pdf", len(PDF), hashlib.sha512(PDF).hexdigest())
        # Replay: the same answer; another application may not take the same file.
        assert (await client.post("/v1/applications", json=body, headers=bearer(key, "c"))).json() == accepted.json()
        taken = await client.post("/v1/applications", json=body, headers=bearer(key, "d"))
        assert taken.status_code == 422


async def test_download_only_for_uploader_and_destination_of_the_case(
    store_settings: Settings, kafka_settings: KafkaSettings
) -> None:
    service, app = build(store_settings)
    async with running(service, app) as client:
        destination_id, elsewhere = uuid.uuid4(), uuid.uuid4()
        _, portal = await issue_key(kafka_settings, ClientKind.PORTAL, service=service)
        _, other_portal = await issue_key(kafka_settings, ClientKind.PORTAL, service=service)
        _, destination = await issue_key(kafka_settings, ClientKind.DESTINATION, service=service,
                                         destination_id=destination_id)
        _, other_destination = await issue_key(kafka_settings, ClientKind.DESTINATION, service=service,
                                               destination_id=elsewhere)
        attachment = (await upload(client, portal, PDF)).json()
        url = f"/v1/attachments/{attachment['id']}"

        own = await client.get(url, headers=bearer(portal))
        assert own.status_code == 200
        assert own.content == PDF
        assert own.headers["content-type"] == "application/pdf"
        assert (await client.get(url, headers=bearer(other_portal))).status_code == 404
        assert (await client.get(url, headers=bearer(destination))).status_code == 404  # not dispatched yet
        assert (await client.get(url)).status_code == 401
        unknown = await client.get(f"/v1/attachments/{uuid.uuid4()}", headers=bearer(portal))
        assert unknown.status_code == 404

        body = application_body()
        body["attachments"] = [attachment["id"]]
        answer = (await client.post("/v1/applications", json=body, headers=bearer(portal, "k"))).json()
        routed = ApplicationRouted(
            case_id=uuid.UUID(answer["case_id"]), reference=answer["reference"], leika_key=WOHNSITZ,
            region=ResolvedRegion(ars="092730137137", ags="09273137", name="Kelheim, St"),
            authority=Authority(ars="092730137137", name="Kelheim, St", level=AuthorityLevel.GEMEINDE),
            rule="default:gemeinde", destination_id=destination_id, destination_name="Stadt Kelheim",
        )
        event = build_event(event_type=events.ROUTED_V1, source="/test", subject=answer["case_id"], data=routed)
        await produce(kafka_settings, topics.ROUTED, event.value, event.headers, event.key)

        async def destination_may_fetch() -> bool:
            return (await client.get(url, headers=bearer(destination))).status_code == 200

        await wait_until(destination_may_fetch)
        fetched = await client.get(url, headers=bearer(destination))
        assert hashlib.sha512(fetched.content).hexdigest() == attachment["sha512"]
        assert (await client.get(url, headers=bearer(other_destination))).status_code == 404
        assert (await client.get(url, headers=bearer(other_portal))).status_code == 404


async def test_sweep_removes_old_unreferenced_uploads_only(settings: Settings, kafka_settings: KafkaSettings) -> None:
    service, app = build(settings)
    async with running(service, app) as client:
        _, key = await issue_key(kafka_settings, ClientKind.PORTAL, service=service)
        old_orphan, referenced, fresh = [(await upload(client, key, PDF)).json()["id"] for _ in range(3)]
        body = application_body()
        body["attachments"] = [referenced]
        assert (await client.post("/v1/applications", json=body, headers=bearer(key, "s"))).status_code == 202
        with Session(service.engine) as session:
            for attachment_id in (old_orphan, referenced):
                row = session.get_one(Attachment, uuid.UUID(attachment_id))
                row.created_at = datetime.now(UTC) - timedelta(days=2)
                session.add(row)
            session.commit()

        parts = app.state.intake
        assert await sweep_unreferenced(parts.store, parts.blobs, older_than_s=24 * 3600) == 1
        assert (await client.get(f"/v1/attachments/{old_orphan}", headers=bearer(key))).status_code == 404
        assert not parts.blobs.path(uuid.UUID(old_orphan)).exists()
        for kept in (referenced, fresh):
            assert (await client.get(f"/v1/attachments/{kept}", headers=bearer(key))).status_code == 200


async def test_sweep_removes_temporary_files_a_crash_left_behind(
    settings: Settings, kafka_settings: KafkaSettings, caplog: pytest.LogCaptureFixture
) -> None:
    """``blobs/tmp/<id>.part`` of an upload a crashed process never finished is removed once nothing was written to
    it for an hour; a younger one and this process's own uploads in progress (however old) stay."""
    service, app = build(settings)
    # Not running: the service's own sweep, started with it, would race this one for the stale file.
    service.migrate()
    parts = app.state.intake
    temporary = settings.blob_dir / "tmp"
    temporary.mkdir(parents=True, exist_ok=True)
    two_hours_ago = time.time() - 2 * 3600
    stale, recent = temporary / f"{uuid.uuid4().hex}.part", temporary / f"{uuid.uuid4().hex}.part"
    for path in (stale, recent):
        path.write_bytes(PDF)
    os.utime(stale, (two_hours_ago, two_hours_ago))
    live_id = uuid.uuid4()
    live = await parts.blobs.writer(live_id)
    await live.write(PDF)
    [live_path] = [p for p in temporary.iterdir() if p.name == f"{live_id.hex}.part"]
    os.utime(live_path, (two_hours_ago, two_hours_ago))

    with caplog.at_level(logging.INFO, logger="services.intake.attachments"):
        assert await sweep_unreferenced(parts.store, parts.blobs, older_than_s=24 * 3600) == 0
    assert sorted(temporary.iterdir()) == sorted([recent, live_path])
    [record] = [r for r in caplog.records if r.getMessage() == "removed unreferenced attachments"]
    assert (record.count, record.partial_uploads) == (0, 1)  # type: ignore[attr-defined]

    await live.commit()
    assert (await parts.blobs.sweep_partial(0)) == 1  # the recent one; the committed upload is no longer there
    assert list(temporary.iterdir()) == []
    assert b"".join([chunk async for chunk in parts.blobs.read(live_id)]) == PDF


def s3_store(bucket: S3Bucket) -> S3BlobStore:
    return S3BlobStore(bucket.client, bucket.name, prefix="blobs/", part_bytes=MIN_PART_BYTES)


async def test_s3_store_round_trips_a_multipart_blob_and_deletes_it(s3_bucket: S3Bucket) -> None:
    store = s3_store(s3_bucket)
    content = os.urandom(2 * MIN_PART_BYTES + 12345)  # three parts: two full ones and a short last one
    blob_id = uuid.uuid4()
    writer = await store.writer(blob_id)
    for start in range(0, len(content), 64 * 1024):
        await writer.write(content[start:start + 64 * 1024])
    # Nothing visible before the commit, though two parts are uploaded already.
    assert s3_bucket.client.list_objects_v2(Bucket=s3_bucket.name).get("KeyCount") == 0
    with pytest.raises(FileNotFoundError):
        [chunk async for chunk in store.read(blob_id)]
    await writer.commit()

    digest, size = hashlib.sha512(), 0
    async for chunk in store.read(blob_id):
        digest.update(chunk)
        size += len(chunk)
    assert (size, digest.hexdigest()) == (len(content), hashlib.sha512(content).hexdigest())
    assert s3_bucket.client.head_object(Bucket=s3_bucket.name, Key=f"blobs/{blob_id.hex}")["ContentLength"] == size
    assert "Uploads" not in s3_bucket.client.list_multipart_uploads(Bucket=s3_bucket.name)

    await store.delete(blob_id)
    await store.delete(blob_id)  # gone already: no error
    with pytest.raises(FileNotFoundError):
        [chunk async for chunk in store.read(blob_id)]
    assert s3_bucket.client.list_objects_v2(Bucket=s3_bucket.name).get("KeyCount") == 0


async def test_s3_store_small_blobs_and_aborts_leave_nothing_behind(s3_bucket: S3Bucket) -> None:
    store = s3_store(s3_bucket)
    small = uuid.uuid4()
    writer = await store.writer(small)
    await writer.write(PDF)
    assert s3_bucket.client.list_objects_v2(Bucket=s3_bucket.name).get("KeyCount") == 0
    await writer.commit()
    assert b"".join([chunk async for chunk in store.read(small)]) == PDF

    for size in (100, MIN_PART_BYTES + 1):  # one never sent, one with a multipart upload begun
        aborted = await store.writer(uuid.uuid4())
        await aborted.write(b"x" * size)
        await aborted.abort()
    assert [o["Key"] for o in s3_bucket.client.list_objects_v2(Bucket=s3_bucket.name)["Contents"]] == [
        f"blobs/{small.hex}"]
    assert "Uploads" not in s3_bucket.client.list_multipart_uploads(Bucket=s3_bucket.name)


def test_s3_store_settings_are_checked(tmp_path: Path) -> None:
    assert Settings(database_url=f"sqlite:///{tmp_path / 'i.db'}").blob_store == "local"
    with pytest.raises(ValidationError, match="s3_bucket"):
        Settings(blob_store="s3")
    with pytest.raises(ValidationError, match="neither"):
        Settings(blob_store="s3", s3_bucket="b", s3_access_key_id="only-the-id")
    configured = Settings(blob_store="s3", s3_bucket="b", s3_access_key_id="id",
                          s3_secret_access_key="hunter2-s3")
    assert "hunter2-s3" not in repr(configured)
    assert configured.s3_secret_access_key is not None
    assert configured.s3_secret_access_key.get_secret_value() == "hunter2-s3"


async def test_an_ended_cases_attachments_and_messages_are_deleted_after_retention(
    store_settings: Settings, kafka_settings: KafkaSettings
) -> None:
    """SPEC §7: a second's retention. The closed case loses its files and the messages to the applicant in its
    history, and the deletion is published; the open case keeps everything."""
    settings = store_settings.model_copy(update={"retention_days": 1 / 86400, "retention_interval_s": 0.05})
    service, app = build(settings)
    async with running(service, app) as client:
        _, portal = await issue_key(kafka_settings, ClientKind.PORTAL, service=service)
        cases = {}
        for name in ("closed", "open"):
            attachment = (await upload(client, portal, PDF)).json()["id"]
            body = application_body()
            body["attachments"] = [attachment]
            answer = (await client.post("/v1/applications", json=body, headers=bearer(portal, name))).json()
            case_id = uuid.UUID(answer["case_id"])
            cases[name] = (case_id, attachment)
            routed = ApplicationRouted(
                case_id=case_id, reference=answer["reference"], leika_key=WOHNSITZ,
                region=ResolvedRegion(ars="092730137137", ags="09273137", name="Kelheim, St"),
                authority=Authority(ars="092730137137", name="Kelheim, St", level=AuthorityLevel.GEMEINDE),
                rule="default:gemeinde", destination_id=uuid.uuid4(), destination_name="Stadt Kelheim",
            )
            later = datetime.now(UTC)
            statuses = [(events.ROUTED_V1, topics.ROUTED, routed)] + [
                (events.STATUS_CHANGED_V1, topics.CASE_STATUS,
                 CaseStatusChanged(case_id=case_id, reference=answer["reference"], status=status, message=message,
                                   changed_at=later + timedelta(seconds=i)))
                for i, (status, message) in enumerate([(CaseStatus.RECEIVED, None),
                                                       (CaseStatus.INFORMATION_REQUESTED, "Bitte Lohnzettel"),
                                                       *([(CaseStatus.CLOSED, None)] if name == "closed" else [])])
            ]
            for i, (event_type, topic, data) in enumerate(statuses):
                event = build_event(event_type=event_type, source="/test", subject=str(case_id), data=data,
                                    time=later + timedelta(seconds=i))
                await produce(kafka_settings, topic, event.value, event.headers, event.key)

        closed_id, closed_attachment = cases["closed"]
        [record] = await consume(kafka_settings, topics.DELETIONS, 1,
                                 predicate=lambda r: r.key == str(closed_id).encode())
        deletion = parse_event(record.headers, record.value, record.key)
        deleted = deletion.data_as(PersonalDataDeleted)
        assert (deleted.service, deleted.categories, deleted.reason) == ("intake", ["attachments", "messages"],
                                                                         "retention")
        assert deletion.source == "/ozg/intake"

        assert (await client.get(f"/v1/attachments/{closed_attachment}", headers=bearer(portal))).status_code == 404
        with pytest.raises(Exception):  # noqa: B017, PT011 - each store has its own "not found"
            [chunk async for chunk in app.state.intake.blobs.read(uuid.UUID(closed_attachment))]
        history = (await client.get(f"/v1/applications/{closed_id}", headers=bearer(portal))).json()["history"]
        assert [(h["status"], h["detail"]) for h in history] == [
            ("submitted", None), ("routed", "Kelheim, St"), ("received", None), ("information_requested", None),
            ("closed", None)]

        open_id, open_attachment = cases["open"]
        kept = await client.get(f"/v1/attachments/{open_attachment}", headers=bearer(portal))
        assert kept.content == PDF
        open_history = (await client.get(f"/v1/applications/{open_id}", headers=bearer(portal))).json()["history"]
        assert ("information_requested", "Bitte Lohnzettel") in [(h["status"], h["detail"]) for h in open_history]
        metrics = (await client.get("/metrics")).text
        assert "ozg_intake_personal_data_deleted_total 1.0" in metrics
