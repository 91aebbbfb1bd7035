"""Writing the outbox processor's results: group commit, and writes that survive cancellation.

Every delivery ends in a write (the outcome, plus the worker's next claim). Committed one by
one, those writes would cost a disk flush each; ``OutcomeWriter`` gathers the outcomes that
arrive while a commit is in progress into the next commit, so under load one flush settles
many deliveries, and when idle a single outcome is written at once, without waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import structlog

from daemon.store.database import Database
from daemon.store.outbox_leases import (
    ClaimedEntry,
    ClaimRequest,
    Outcome,
    record_outcomes,
    release_claim,
)

logger = structlog.get_logger(__name__)

_T = TypeVar("_T")


async def finish_write(
    write: Awaitable[_T], undo: Callable[[_T], Awaitable[object]] | None = None
) -> _T:
    """Run a database write to its end even if the calling task is cancelled meanwhile.

    Cancellation must not cut a transaction in half: an interrupted ``BEGIN`` can leave the
    daemon's one shared connection inside a transaction. The write completes, then ``undo``
    (if given) runs on its result, e.g. to hand back rows a claim took, then the cancellation
    propagates.
    """
    task = asyncio.ensure_future(write)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task})
        if task.cancelled():
            raise
        if task.exception() is not None:
            logger.error("outbox_write_failed_while_cancelled", error=repr(task.exception()))
            raise
        if undo is not None:
            try:
                await undo(task.result())
            except Exception as exc:
                logger.warning("outbox_undo_failed", error=repr(exc))
        raise


Settled = tuple[bool, ClaimedEntry | None]


@dataclass
class _Pending:
    entry: ClaimedEntry
    outcome: Outcome
    claim_next: ClaimRequest | None
    done: asyncio.Future[Settled] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


def _merge(requests: Sequence[ClaimRequest]) -> list[ClaimRequest]:
    """One claim per kind for all the workers of that kind waiting in this commit."""
    by_kind: dict[str, ClaimRequest] = {}
    for request in requests:
        seen = by_kind.get(request.kind)
        if seen is None:
            by_kind[request.kind] = request
        else:
            by_kind[request.kind] = ClaimRequest(
                kind=request.kind,
                owner=request.owner,
                lease_s=request.lease_s,
                limit=seen.limit + request.limit,
                exclude=tuple(sorted({*seen.exclude, *request.exclude})),
            )
    return list(by_kind.values())


class OutcomeWriter:
    """Records outcomes (and claims the next rows) for one processor, with group commit."""

    def __init__(self, db: Database, owner: str, clock: Callable[[], float]) -> None:
        self._db = db
        self._owner = owner
        self._clock = clock
        self._pending: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None

    async def settle(
        self, entry: ClaimedEntry, outcome: Outcome, claim_next: ClaimRequest | None = None
    ) -> Settled:
        """Record ``outcome``; returns (recorded, the next row claimed for the caller or None).

        The write goes ahead even if the caller is cancelled; the caller then waits for it to
        be committed before the cancellation propagates, so a settled row is never in doubt,
        and a row the same commit claimed for the cancelled caller is handed straight back.
        """
        item = _Pending(entry, outcome, claim_next)
        self._pending.append(item)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="outbox-settle")
        try:
            return await asyncio.shield(item.done)
        except asyncio.CancelledError:
            await asyncio.wait({item.done})
            if item.done.cancelled():
                raise
            if item.done.exception() is not None:
                logger.error(
                    "outbox_write_failed_while_cancelled", error=repr(item.done.exception())
                )
                raise
            _, unstarted = item.done.result()
            if unstarted is not None:
                try:
                    await self.release([unstarted])
                except Exception as exc:
                    # It stays leased and is reclaimed when the lease expires.
                    logger.warning("outbox_release_failed", outbox_id=unstarted.id, error=repr(exc))
            raise

    async def release(self, entries: Sequence[ClaimedEntry]) -> None:
        """Hand back rows claimed but never attempted (see ``release_claim``)."""
        for entry in entries:
            await finish_write(release_claim(self._db, entry, self._owner, self._clock()))

    async def _flush(self) -> None:
        # Outcomes queued while one commit runs all go into the next one.
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self._commit(batch)
            except asyncio.CancelledError:
                for item in batch + self._pending:
                    item.done.cancel()
                self._pending = []
                raise
            except Exception as exc:
                # Each caller gets the error; the task itself must not die with it unread.
                for item in batch:
                    if not item.done.done():
                        item.done.set_exception(exc)

    async def _commit(self, batch: list[_Pending]) -> None:
        wanting = [item for item in batch if item.claim_next is not None]
        requests = _merge([item.claim_next for item in wanting if item.claim_next is not None])
        recorded, claimed = await record_outcomes(
            self._db,
            [(item.entry, item.outcome) for item in batch],
            owner=self._owner,
            now=self._clock(),
            claim_next=requests,
        )
        handed: dict[str, list[ClaimedEntry]] = {
            request.kind: list(rows) for request, rows in zip(requests, claimed, strict=True)
        }
        for item, was_recorded in zip(batch, recorded, strict=True):
            next_entry: ClaimedEntry | None = None
            if item.claim_next is not None and handed.get(item.claim_next.kind):
                next_entry = handed[item.claim_next.kind].pop(0)
            if not item.done.done():
                item.done.set_result((was_recorded, next_entry))
