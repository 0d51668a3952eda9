"""Group commit of the submission path: the reservations and acceptances of concurrent submissions are written
together, a batch per transaction, by one writer.

One transaction per reservation and per acceptance, each on its own worker thread, cost two thirds of intake's CPU
under load (``make bench``'s profile): the ORM's work per row, and above all threads queueing for SQLite's single
writer lock and handing the GIL to each other at every SQLite call. Here what arrives while a batch is being written
waits for the next one, which is written in one worker-thread call; each request learns its own outcome once its
batch committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TypeVar
from uuid import UUID

import anyio.to_thread

from services.intake.models import NewCase
from services.intake.store import IntakeStore, Reservation

T = TypeVar("T")

# At most this many reservations (and as many acceptances) per transaction: bounds the statements' parameters
# (SQLite's limit is 32,766) and the time one batch holds the writer lock.
MAX_BATCH = 500


def _settle(future: asyncio.Future[T], result: T | BaseException) -> None:
    # A request that was cancelled meanwhile (its client gone), or one of an event loop that was closed, has nobody
    # waiting for its outcome.
    if future.done() or future.get_loop().is_closed():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


class SubmissionWriter:
    """Writes the reservations and acceptances of submissions in batches, one transaction each (group commit)."""

    def __init__(self, store: IntakeStore, max_batch: int = MAX_BATCH) -> None:
        self._store = store
        self._max_batch = max_batch
        self._reservations: list[tuple[NewCase, asyncio.Future[Reservation]]] = []
        self._acceptances: list[tuple[NewCase, asyncio.Future[NewCase]]] = []
        self._task: asyncio.Task[None] | None = None

    async def reserve(self, candidate: NewCase, attachment_ids: Sequence[UUID] = ()) -> Reservation:
        """Reserve ``candidate`` under its (client, idempotency key), as :meth:`IntakeStore.reserve`, once the batch
        it joined committed."""
        if attachment_ids:
            # Rare, and binding attachments may refuse the reservation: one transaction of its own.
            return await anyio.to_thread.run_sync(self._store.reserve, candidate, attachment_ids)
        future: asyncio.Future[Reservation] = asyncio.get_running_loop().create_future()
        self._reservations.append((candidate, future))
        self._wake()
        return await future

    async def accept(self, case: NewCase) -> NewCase:
        """Accept ``case`` (the broker acknowledged its submitted event), as :meth:`IntakeStore.accept`; returns it
        as it now is, once the batch it joined committed."""
        future: asyncio.Future[NewCase] = asyncio.get_running_loop().create_future()
        self._acceptances.append((case, future))
        self._wake()
        return await future

    def _wake(self) -> None:
        # The writer runs while there is work and ends when there is none: nothing to start or stop with the app.
        # (A task left behind by an event loop that was closed will never run again: start another.)
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._write(), name="intake group commit")

    async def _write(self) -> None:
        reservations: list[tuple[NewCase, asyncio.Future[Reservation]]] = []
        acceptances: list[tuple[NewCase, asyncio.Future[NewCase]]] = []
        try:
            while self._reservations or self._acceptances:
                reservations, self._reservations = (self._reservations[:self._max_batch],
                                                    self._reservations[self._max_batch:])
                acceptances, self._acceptances = (self._acceptances[:self._max_batch],
                                                  self._acceptances[self._max_batch:])
                try:
                    outcomes = await anyio.to_thread.run_sync(
                        self._store.write_batch, [case for case, _ in reservations], [case for case, _ in acceptances]
                    )
                except Exception as exc:  # noqa: BLE001 - the database failed: each request of the batch fails
                    for _, future in reservations:
                        _settle(future, exc)
                    for _, accepted in acceptances:
                        _settle(accepted, exc)
                    continue
                for (_, future), outcome in zip(reservations, outcomes, strict=True):
                    _settle(future, outcome)
                for case, accepted in acceptances:
                    _settle(accepted, case)
                reservations, acceptances = [], []
        except BaseException:
            # The event loop is going away: no request may wait for ever (what was written stays written; a
            # reservation left pending is settled by the outbox).
            for _, future in reservations + self._reservations:
                future.cancel()
            for _, accepted in acceptances + self._acceptances:
                accepted.cancel()
            self._reservations, self._acceptances = [], []
            raise
