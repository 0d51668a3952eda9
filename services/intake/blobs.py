"""The blob store of the claim-check: attachments live here, events carry only their id, size, type and hash.

``BlobStore`` is the seam: ``LocalBlobStore`` (a directory, the default) and ``S3BlobStore`` (an S3-compatible object
store: a multipart upload for ``writer``, ``GetObject`` streamed for ``read``, ``DeleteObject`` for ``delete``), chosen
in ``app.build`` by configuration (``INTAKE_BLOB_STORE``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol
from uuid import UUID

import anyio.to_thread
from botocore.exceptions import ClientError

from shared.retention import remove_stale_files

if TYPE_CHECKING:
    from botocore.response import StreamingBody
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

CHUNK = 64 * 1024
# S3 wants every part of a multipart upload but the last to have at least 5 MiB; this much is buffered per upload.
MIN_PART_BYTES = 5 * 1024 * 1024
PART_BYTES = 8 * 1024 * 1024
# A local upload's temporary file that nothing was written to for this long belongs to no upload still running: its
# process crashed. Judged by the last write, not by when the upload began: uvicorn sets no time limit on reading a
# body, so a slow upload may take longer than any fixed age, but its bytes reach the file at least every 8 KiB (the
# write buffer). A process never sweeps its own uploads in progress, however old; the hour protects those of another
# process sharing the directory (its client would have to send under 8 KiB in an hour) and allows for clock skew.
STALE_PART_S = 3600.0


class BlobWriter(Protocol):
    """One blob being written; invisible until ``commit``."""

    async def write(self, chunk: bytes) -> None:
        """Append ``chunk``."""

    async def commit(self) -> None:
        """Make the blob readable under its id."""

    async def abort(self) -> None:
        """Throw away what was written."""


class BlobStore(Protocol):
    """Where attachments are kept."""

    async def writer(self, blob_id: UUID) -> BlobWriter:
        """Start writing the blob ``blob_id``."""

    def read(self, blob_id: UUID) -> AsyncIterator[bytes]:
        """The blob's bytes, in chunks."""

    async def delete(self, blob_id: UUID) -> None:
        """Remove the blob (no error if it is gone already)."""

    async def sweep_partial(self, older_than_s: float) -> int:
        """Remove what writers never committed nor aborted left behind (their process crashed), once nothing was
        written to it for ``older_than_s``; returns how many."""


class _LocalWriter:
    def __init__(self, handle: BinaryIO, temporary: Path, final: Path, finished: Callable[[Path], None]) -> None:
        self._handle = handle
        self._temporary = temporary
        self._final = final
        self._finished = finished

    async def write(self, chunk: bytes) -> None:
        await anyio.to_thread.run_sync(self._handle.write, chunk)

    async def commit(self) -> None:
        def finish() -> None:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            self._final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self._temporary, self._final)

        try:
            await anyio.to_thread.run_sync(finish)
        finally:
            self._finished(self._temporary)

    async def abort(self) -> None:
        def discard() -> None:
            self._handle.close()
            self._temporary.unlink(missing_ok=True)

        try:
            await anyio.to_thread.run_sync(discard)
        finally:
            self._finished(self._temporary)


class LocalBlobStore:
    """Blobs as files under ``root`` (``INTAKE_BLOB_DIR``); written to ``root/tmp/<id>.part`` first, then moved in
    place."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # The temporary files of this process's writers not yet committed or aborted: never swept.
        self._writing: set[Path] = set()

    def path(self, blob_id: UUID) -> Path:
        """Where the blob ``blob_id`` is kept."""
        return self.root / blob_id.hex[:2] / blob_id.hex

    async def writer(self, blob_id: UUID) -> BlobWriter:
        temporary = self.root / "tmp" / f"{blob_id.hex}.part"

        def open_temporary() -> BinaryIO:
            temporary.parent.mkdir(parents=True, exist_ok=True)
            return temporary.open("wb")

        handle = await anyio.to_thread.run_sync(open_temporary)
        self._writing.add(temporary)
        return _LocalWriter(handle, temporary, self.path(blob_id), self._writing.discard)

    async def read(self, blob_id: UUID) -> AsyncIterator[bytes]:
        handle = await anyio.to_thread.run_sync(self.path(blob_id).open, "rb")
        try:
            while chunk := await anyio.to_thread.run_sync(handle.read, CHUNK):
                yield chunk
        finally:
            handle.close()

    async def delete(self, blob_id: UUID) -> None:
        def remove() -> None:
            with contextlib.suppress(FileNotFoundError):
                self.path(blob_id).unlink()

        await anyio.to_thread.run_sync(remove)

    async def sweep_partial(self, older_than_s: float) -> int:
        """Remove the files in ``root/tmp`` of uploads another (crashed) process began: not this process's own
        writers, and only once their last write is ``older_than_s`` ago (they hold personal data)."""
        writing = frozenset(self._writing)  # taken on the event loop; a writer begun later has a fresh file
        sweep = partial(remove_stale_files, (self.root / "tmp").glob("*.part"), older_than_s, keep=writing)
        return await anyio.to_thread.run_sync(sweep)


class _S3Writer:
    """Buffers up to one part in memory; a blob smaller than a part is one ``PutObject`` at ``commit``, a larger one
    a multipart upload that S3 shows under its key only when ``commit`` completes it."""

    def __init__(self, client: S3Client, bucket: str, key: str, part_bytes: int) -> None:
        self._client = client
        self._bucket = bucket
        self._key = key
        self._part_bytes = part_bytes
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[CompletedPartTypeDef] = []

    async def write(self, chunk: bytes) -> None:
        self._buffer += chunk
        if len(self._buffer) >= self._part_bytes:
            await self._upload_part()

    async def _upload_part(self) -> None:
        body, self._buffer = bytes(self._buffer), bytearray()
        number = len(self._parts) + 1

        def upload() -> None:
            if self._upload_id is None:
                self._upload_id = self._client.create_multipart_upload(Bucket=self._bucket, Key=self._key)["UploadId"]
            answer = self._client.upload_part(Bucket=self._bucket, Key=self._key, UploadId=self._upload_id,
                                              PartNumber=number, Body=body)
            self._parts.append({"ETag": answer["ETag"], "PartNumber": number})

        await anyio.to_thread.run_sync(upload)

    async def commit(self) -> None:
        if self._upload_id is None:
            body, self._buffer = bytes(self._buffer), bytearray()
            await anyio.to_thread.run_sync(
                lambda: self._client.put_object(Bucket=self._bucket, Key=self._key, Body=body))
            return
        if self._buffer:
            await self._upload_part()
        upload_id = self._upload_id
        try:
            await anyio.to_thread.run_sync(lambda: self._client.complete_multipart_upload(
                Bucket=self._bucket, Key=self._key, UploadId=upload_id, MultipartUpload={"Parts": self._parts}))
        except BaseException:
            await self.abort()
            raise
        self._upload_id = None

    async def abort(self) -> None:
        self._buffer = bytearray()
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is not None:
            with contextlib.suppress(ClientError):  # already gone; a bucket lifecycle rule cleans up the rest
                await anyio.to_thread.run_sync(lambda: self._client.abort_multipart_upload(
                    Bucket=self._bucket, Key=self._key, UploadId=upload_id))


class S3BlobStore:
    """Blobs as objects ``<prefix><id hex>`` in ``bucket`` of an S3-compatible store (``INTAKE_BLOB_STORE=s3``).

    ``client`` is a boto3 S3 client (thread-safe); its blocking calls run in worker threads. At most ``part_bytes``
    of a blob being written are held in memory.
    """

    def __init__(self, client: S3Client, bucket: str, prefix: str = "", part_bytes: int = PART_BYTES) -> None:
        if part_bytes < MIN_PART_BYTES:
            raise ValueError(f"part_bytes must be at least {MIN_PART_BYTES} (the S3 minimum part size)")
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.part_bytes = part_bytes

    def key(self, blob_id: UUID) -> str:
        """The object key of the blob ``blob_id``."""
        return f"{self.prefix}{blob_id.hex}"

    async def writer(self, blob_id: UUID) -> BlobWriter:
        return _S3Writer(self.client, self.bucket, self.key(blob_id), self.part_bytes)

    async def read(self, blob_id: UUID) -> AsyncIterator[bytes]:
        def get() -> StreamingBody:
            try:
                return self.client.get_object(Bucket=self.bucket, Key=self.key(blob_id))["Body"]
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    raise FileNotFoundError(self.key(blob_id)) from None
                raise

        body = await anyio.to_thread.run_sync(get)
        try:
            while chunk := await anyio.to_thread.run_sync(body.read, CHUNK):
                yield chunk
        finally:
            body.close()

    async def delete(self, blob_id: UUID) -> None:
        # DeleteObject succeeds for a key that does not exist.
        await anyio.to_thread.run_sync(lambda: self.client.delete_object(Bucket=self.bucket, Key=self.key(blob_id)))

    async def sweep_partial(self, older_than_s: float) -> int:
        """Nothing to do here: a writer buffers in memory, and the multipart uploads a crashed process began are
        invisible and aborted by the bucket's lifecycle rule ("abort incomplete multipart uploads")."""
        return 0
