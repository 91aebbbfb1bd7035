"""The outbox: documents waiting to be created in 1C or MoySklad, and the documents created.

This module is the outbox as the run (``enqueue``) and operators see it; the worker side
(leases, outcomes) is ``daemon.store.outbox_leases``. Between them they hold every SQL
statement on the ``outbox`` and ``documents`` tables. A row moves through

::

    pending ──claim──► in_flight ──► delivered
       ▲                 │  ├──────► retry_wait ──(due)──► in_flight …
       │                 │  ├──────► outcome_unknown ──(due, look up first)──► in_flight …
       │                 │  └──────► dead ──(operator retry)──► pending
       │                 └──(lease expired: worker died)──► in_flight again, outcome unknown
       └── pending / retry_wait / outcome_unknown / dead ──(operator discard)──► discarded

Only ``dead`` rows can be retried and ``delivered``/``in_flight`` rows cannot be discarded.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiosqlite

from daemon.errors import InvalidStateError, NotFoundError, StoreError
from daemon.model import Document, TransferOrderDocument
from daemon.store.database import Database

PENDING = "pending"
IN_FLIGHT = "in_flight"
RETRY_WAIT = "retry_wait"
OUTCOME_UNKNOWN = "outcome_unknown"
DELIVERED = "delivered"
DEAD = "dead"
DISCARDED = "discarded"

STATES: tuple[str, ...] = (
    PENDING,
    IN_FLIGHT,
    RETRY_WAIT,
    OUTCOME_UNKNOWN,
    DELIVERED,
    DEAD,
    DISCARDED,
)

KIND_ONEC = "onec_transfer_order"
KIND_MOYSKLAD = "moysklad_customer_order"

#: which external system (``documents.system``) each document kind is created in
SYSTEM_BY_KIND: dict[str, str] = {KIND_ONEC: "1c", KIND_MOYSKLAD: "moysklad"}

_DISCARDABLE = (PENDING, RETRY_WAIT, OUTCOME_UNKNOWN, DEAD)
_MAX_LIST = 1000

_ENTRY_COLUMNS = (
    "id, run_id, kind, idempotency_key, summary, state, attempts, next_attempt_at, "
    "lease_until, lease_owner, outcome_unknown, last_error, external_id, external_number, "
    "discard_reason, created_at, updated_at, delivered_at"
)


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One outbox row as operators see it (the payload itself stays in the database)."""

    id: int
    run_id: str
    kind: str
    idempotency_key: str
    summary: str
    state: str
    attempts: int
    next_attempt_at: float
    lease_until: float | None
    lease_owner: str | None
    outcome_unknown: bool
    last_error: str | None
    external_id: str | None
    external_number: str | None
    discard_reason: str | None
    created_at: float
    updated_at: float
    delivered_at: float | None


@dataclass(frozen=True, slots=True)
class DocumentDeliveryState:
    """Where one document of a run stands."""

    outbox_id: int
    kind: str
    summary: str
    state: str
    external_id: str | None
    number: str | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class RunDeliveryState:
    """Where the documents of one run stand; ``delivered`` only when every one of them is."""

    run_id: str
    documents: list[DocumentDeliveryState]

    @property
    def delivered(self) -> bool:
        return all(doc.state == DELIVERED for doc in self.documents)

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for doc in self.documents:
            found[doc.state] = found.get(doc.state, 0) + 1
        return found


def _entry(row: aiosqlite.Row) -> OutboxEntry:
    return OutboxEntry(
        id=int(row["id"]),
        run_id=str(row["run_id"]),
        kind=str(row["kind"]),
        idempotency_key=str(row["idempotency_key"]),
        summary=str(row["summary"]),
        state=str(row["state"]),
        attempts=int(row["attempts"]),
        next_attempt_at=float(row["next_attempt_at"]),
        lease_until=None if row["lease_until"] is None else float(row["lease_until"]),
        lease_owner=row["lease_owner"],
        outcome_unknown=bool(row["outcome_unknown"]),
        last_error=row["last_error"],
        external_id=row["external_id"],
        external_number=row["external_number"],
        discard_reason=row["discard_reason"],
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
        delivered_at=None if row["delivered_at"] is None else float(row["delivered_at"]),
    )


def _lines(count: int) -> str:
    return f"{count} line" if count == 1 else f"{count} lines"


def summarize(doc: Document) -> str:
    """One line for operators, e.g. "1C transfer Бестужевых → Магазин Центральный, 12 lines"."""
    if isinstance(doc, TransferOrderDocument):
        return f"1C transfer {doc.sender_name} → {doc.receiver_name}, {_lines(len(doc.lines))}"
    return f"МойСклад order for {doc.target_name}, {_lines(len(doc.lines))}"


# ---------------------------------------------------------------------------------------------
# Writing documents into the outbox (inside the run's own transaction)
# ---------------------------------------------------------------------------------------------

_INSERT = """
INSERT INTO outbox (run_id, kind, idempotency_key, payload_json, summary, state, attempts,
                    next_attempt_at, outcome_unknown, created_at, updated_at)
VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, 0, ?, ?)
RETURNING id
"""


async def enqueue(
    conn: aiosqlite.Connection, run_id: str, docs: Sequence[Document], now: float
) -> list[int]:
    """Insert one pending row per document; the caller owns the transaction.

    Returns the new row ids in the order of ``docs``. A document whose idempotency key is already
    in the outbox is a ``StoreError`` (and the caller's transaction should roll back).
    """
    ids: list[int] = []
    for doc in docs:
        if doc.run_id != run_id:
            raise StoreError(
                f"document {doc.idempotency_key} belongs to run {doc.run_id}, not {run_id}"
            )
        params = (
            run_id,
            doc.kind,
            doc.idempotency_key,
            doc.model_dump_json(),
            summarize(doc),
            now,
            now,
            now,
        )
        try:
            rows = list(await conn.execute_fetchall(_INSERT, params))
        except aiosqlite.IntegrityError as exc:
            raise StoreError(
                f"cannot add document {doc.idempotency_key} of run {run_id} to the outbox: {exc}"
            ) from exc
        if len(rows) != 1:
            raise StoreError(f"outbox insert of {doc.idempotency_key} returned no id")
        ids.append(int(rows[0][0]))
    return ids


# ---------------------------------------------------------------------------------------------
# Operators
# ---------------------------------------------------------------------------------------------


async def get_entry(db: Database, outbox_id: int) -> OutboxEntry:
    """One row; ``NotFoundError`` if there is no such id."""
    row = await db.fetchone(f"SELECT {_ENTRY_COLUMNS} FROM outbox WHERE id = ?", (outbox_id,))
    if row is None:
        raise NotFoundError(f"outbox entry {outbox_id} does not exist")
    return _entry(row)


async def list_entries(db: Database, state: str | None, limit: int) -> list[OutboxEntry]:
    """The newest ``limit`` rows (at most 1000), optionally only those in ``state``.

    An unknown state or a limit below 1 is a ``ValueError``.
    """
    if state is not None and state not in STATES:
        raise ValueError(f"unknown outbox state {state!r}; expected one of {', '.join(STATES)}")
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    limit = min(limit, _MAX_LIST)
    if state is None:
        rows = await db.fetchall(
            f"SELECT {_ENTRY_COLUMNS} FROM outbox ORDER BY id DESC LIMIT ?", (limit,)
        )
    else:
        rows = await db.fetchall(
            f"SELECT {_ENTRY_COLUMNS} FROM outbox WHERE state = ? ORDER BY id DESC LIMIT ?",
            (state, limit),
        )
    return [_entry(row) for row in rows]


async def _state_of(conn: aiosqlite.Connection, outbox_id: int) -> str:
    async with conn.execute("SELECT state FROM outbox WHERE id = ?", (outbox_id,)) as cursor:
        row = await cursor.fetchone()
    if row is None:
        raise NotFoundError(f"outbox entry {outbox_id} does not exist")
    return str(row[0])


async def retry_entry(db: Database, outbox_id: int, *, now: float | None = None) -> OutboxEntry:
    """Send a dead row again: back to pending, due now, with a fresh budget (attempts from 0,
    and ``max_age_h`` counted from now).

    The idempotency key (and so the 1C Ref_Key / MoySklad syncId) is unchanged, and an
    ``outcome_unknown`` flag stays set, so a resend cannot create a second document. Only dead
    rows can be retried (``InvalidStateError`` otherwise).
    """
    now = time.time() if now is None else now
    async with db.transaction() as conn:
        state = await _state_of(conn, outbox_id)
        if state != DEAD:
            raise InvalidStateError(
                f"outbox entry {outbox_id} is {state}; only dead entries can be retried"
            )
        await conn.execute(
            "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = ?, "
            "retried_at = ?, updated_at = ? WHERE id = ?",
            (now, now, now, outbox_id),
        )
    return await get_entry(db, outbox_id)


async def discard_entry(
    db: Database, outbox_id: int, reason: str, *, now: float | None = None
) -> OutboxEntry:
    """Give up on a row for good: it is kept, marked discarded with ``reason``, never sent.

    Not allowed for delivered rows (the document exists), rows being delivered right now, or
    rows already discarded (``InvalidStateError``).
    """
    if not reason.strip():
        raise ValueError("a discard needs a reason")
    now = time.time() if now is None else now
    async with db.transaction() as conn:
        state = await _state_of(conn, outbox_id)
        if state not in _DISCARDABLE:
            raise InvalidStateError(
                f"outbox entry {outbox_id} is {state}; only "
                f"{', '.join(_DISCARDABLE)} entries can be discarded"
            )
        await conn.execute(
            "UPDATE outbox SET state = 'discarded', discard_reason = ?, updated_at = ? "
            "WHERE id = ?",
            (reason.strip(), now, outbox_id),
        )
    return await get_entry(db, outbox_id)


async def depth_by_state(db: Database) -> dict[str, int]:
    """Row count per state; every state is present, 0 when empty."""
    counts = dict.fromkeys(STATES, 0)
    for row in await db.fetchall("SELECT state, count(*) FROM outbox GROUP BY state"):
        counts[str(row[0])] = int(row[1])
    return counts


async def run_delivery_state(db: Database, run_id: str) -> RunDeliveryState:
    """The state and number of every document of ``run_id``; ``NotFoundError`` if no such run."""
    if await db.fetchone("SELECT 1 FROM runs WHERE id = ?", (run_id,)) is None:
        raise NotFoundError(f"run {run_id} does not exist")
    rows = await db.fetchall(
        "SELECT id, kind, summary, state, external_id, external_number, last_error "
        "FROM outbox WHERE run_id = ? ORDER BY id",
        (run_id,),
    )
    return RunDeliveryState(
        run_id=run_id,
        documents=[
            DocumentDeliveryState(
                outbox_id=int(row["id"]),
                kind=str(row["kind"]),
                summary=str(row["summary"]),
                state=str(row["state"]),
                external_id=row["external_id"],
                number=row["external_number"],
                last_error=row["last_error"],
            )
            for row in rows
        ],
    )
