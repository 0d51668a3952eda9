"""The blob store of the claim-check: attachments live here, events carry only their id, size, type and hash.

``BlobStore`` is the seam: ``LocalBlobStore`` (a directory, the default) is the only implementation so far; an
S3-compatible store implements the same four operations (a multipart upload for ``writer``, ``GetObject`` streamed
for ``read``, ``DeleteObject`` for ``delete``) and is chosen in ``app.build`` by configuration.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO, Protocol
from uuid import UUID

import anyio.to_thread

CHUNK = 64 * 1024


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


class _LocalWriter:
    def __init__(self, handle: BinaryIO, temporary: Path, final: Path) -> None:
        self._handle = handle
        self._temporary = temporary
        self._final = final

    async def write(self, chunk: bytes) -> None:
        await anyio.to_thread.run_sync(self._handle.write, chunk)

    async def commit(self) -> None:
        def finish() -> None:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            self._final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self._temporary, self._final)

        await anyio.to_thread.run_sync(finish)

    async def abort(self) -> None:
        def discard() -> None:
            self._handle.close()
            self._temporary.unlink(missing_ok=True)

        await anyio.to_thread.run_sync(discard)


class LocalBlobStore:
    """Blobs as files under ``root`` (``INTAKE_BLOB_DIR``); written to ``root/tmp`` first, then moved in place."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, blob_id: UUID) -> Path:
        """Where the blob ``blob_id`` is kept."""
        return self.root / blob_id.hex[:2] / blob_id.hex

    async def writer(self, blob_id: UUID) -> BlobWriter:
        temporary = self.root / "tmp" / f"{blob_id.hex}.part"

        def open_temporary() -> BinaryIO:
            temporary.parent.mkdir(parents=True, exist_ok=True)
            return temporary.open("wb")

        handle = await anyio.to_thread.run_sync(open_temporary)
        return _LocalWriter(handle, temporary, self.path(blob_id))

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
