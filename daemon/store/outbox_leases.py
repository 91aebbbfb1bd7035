"""The worker side of the outbox: leasing due rows and recording what became of them.

A claim is one ``UPDATE … RETURNING`` that takes a lease (owner + expiry), so two workers never
hold the same row, and a row whose worker died becomes claimable again when its lease expires.
Every outcome write is conditional on the writer still holding the lease; only "delivered" is
recorded unconditionally, because a document that exists must never be forgotten.

``attempts`` counts attempts *started*: the claim increments it. A worker that crashes
mid-delivery therefore still uses up an attempt, which bounds a row that kills its worker.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import aiosqlite

from daemon.model import CustomerOrderDocument, Document, TransferOrderDocument
from daemon.store.database import Database
from daemon.store.outbox import KIND_MOYSKLAD, KIND_ONEC, SYSTEM_BY_KIND


@dataclass(frozen=True, slots=True)
class ClaimedEntry:
    """A row a worker holds a lease on and must now deliver."""

    id: int
    run_id: str
    kind: str
    idempotency_key: str
    payload_json: str
    attempt: int  # the number of this attempt, 1-based
    outcome_unknown: bool  # True: an earlier attempt may have created it; look up first
    budget_from: float  # when its retry budget started: created, or last retried by an operator
    lease_until: float
    last_error: str | None  # why the previous attempt failed, if one did

    def document(self) -> Document:
        """The stored document; raises ``pydantic.ValidationError`` if it cannot be read."""
        if self.kind == KIND_ONEC:
            return TransferOrderDocument.model_validate_json(self.payload_json)
        if self.kind == KIND_MOYSKLAD:
            return CustomerOrderDocument.model_validate_json(self.payload_json)
        raise ValueError(f"unknown outbox kind {self.kind!r}")


# SET expressions see the row as it was before the update, so ``state = 'in_flight'`` below
# identifies a reclaimed row: its previous worker may have created the document already.
# Expired leases are taken before waiting rows. The two halves match the partial indexes of
# migration 0003 term for term, so a claim reads a few index entries and sorts nothing.
_CLAIM = """
UPDATE outbox
SET state = 'in_flight',
    attempts = attempts + 1,
    outcome_unknown = CASE WHEN state = 'in_flight' THEN 1 ELSE outcome_unknown END,
    last_error = CASE WHEN state = 'in_flight'
                      THEN 'lease of ' || coalesce(lease_owner, '?')
                           || ' expired mid-delivery; outcome unknown'
                      ELSE last_error END,
    lease_owner = :owner,
    lease_until = :lease_until,
    updated_at = :now
WHERE id IN (
    SELECT id FROM (
        SELECT id FROM (
            SELECT id FROM outbox
            WHERE kind = :kind AND state = 'in_flight' AND lease_until <= :now
              AND id NOT IN (SELECT value FROM json_each(:exclude))
            ORDER BY lease_until
            LIMIT :limit)
        UNION ALL
        SELECT id FROM (
            SELECT id FROM outbox
            WHERE kind = :kind AND state IN ('pending', 'retry_wait', 'outcome_unknown')
              AND next_attempt_at <= :now
              AND id NOT IN (SELECT value FROM json_each(:exclude))
            ORDER BY next_attempt_at, id
            LIMIT :limit))
    LIMIT :limit
)
RETURNING id, run_id, kind, idempotency_key, payload_json, attempts, outcome_unknown,
          COALESCE(retried_at, created_at) AS budget_from, lease_until, last_error
"""


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """What to lease: up to ``limit`` due rows of ``kind`` for ``owner``, skipping ``exclude``."""

    kind: str
    owner: str
    lease_s: float
    limit: int
    exclude: Sequence[int] = ()


@dataclass(frozen=True, slots=True)
class Delivered:
    """The document exists: created now or found by a lookup."""

    external_id: str
    number: str


@dataclass(frozen=True, slots=True)
class Retry:
    """Try again at ``next_attempt_at``; ``outcome_unknown``: look the document up first."""

    error: str
    next_attempt_at: float
    outcome_unknown: bool


@dataclass(frozen=True, slots=True)
class Dead:
    """Give up; ``error`` says why (the remote's own message where there is one)."""

    error: str


Outcome = Delivered | Retry | Dead


async def _claim(
    conn: aiosqlite.Connection, request: ClaimRequest, now: float
) -> list[ClaimedEntry]:
    if request.limit < 1:
        return []
    params: dict[str, object] = {
        "kind": request.kind,
        "owner": request.owner,
        "now": now,
        "lease_until": now + request.lease_s,
        "limit": request.limit,
        "exclude": json.dumps(list(request.exclude)),
    }
    rows = await conn.execute_fetchall(_CLAIM, params)
    claimed = [
        ClaimedEntry(
            id=int(row["id"]),
            run_id=str(row["run_id"]),
            kind=str(row["kind"]),
            idempotency_key=str(row["idempotency_key"]),
            payload_json=str(row["payload_json"]),
            attempt=int(row["attempts"]),
            outcome_unknown=bool(row["outcome_unknown"]),
            budget_from=float(row["budget_from"]),
            lease_until=float(row["lease_until"]),
            last_error=row["last_error"],
        )
        for row in rows
    ]
    claimed.sort(key=lambda entry: entry.id)
    return claimed


async def claim_due(
    db: Database,
    *,
    kind: str,
    owner: str,
    now: float,
    lease_s: float,
    limit: int,
    exclude: Sequence[int] = (),
) -> list[ClaimedEntry]:
    """Lease up to ``limit`` due rows of ``kind`` to ``owner`` in one statement.

    Due: pending/retry_wait/outcome_unknown with ``next_attempt_at <= now``, or in_flight with an
    expired lease. ``exclude`` lists ids the caller already handled in this pass.
    """
    request = ClaimRequest(kind, owner, lease_s, limit, tuple(exclude))
    async with db.transaction() as conn:
        return await _claim(conn, request, now)


async def extend_leases(
    db: Database, ids: Sequence[int], owner: str, until: float, now: float
) -> set[int]:
    """Push out the leases ``owner`` still holds among ``ids``; returns the ids renewed."""
    async with db.transaction() as conn:
        rows = await conn.execute_fetchall(
            "UPDATE outbox SET lease_until = ?, updated_at = ? "
            "WHERE id IN (SELECT value FROM json_each(?)) "
            "AND state = 'in_flight' AND lease_owner = ? RETURNING id",
            (until, now, json.dumps(list(ids)), owner),
        )
    return {int(row[0]) for row in rows}


async def release_claim(db: Database, entry: ClaimedEntry, owner: str, now: float) -> bool:
    """Hand back a row claimed but never attempted, exactly as it was before the claim.

    For a worker stopped between claiming and starting: the attempt is not counted and the row
    is due again at once (pending rows have no attempts yet; retry_wait rows have some; an
    outcome_unknown flag, also one set by reclaiming a dead worker's lease, is kept).
    """
    async with db.transaction() as conn:
        cursor = await conn.execute(
            "UPDATE outbox SET attempts = attempts - 1, "
            "state = CASE WHEN outcome_unknown = 1 THEN 'outcome_unknown' "
            "             WHEN attempts > 1 THEN 'retry_wait' ELSE 'pending' END, "
            "lease_owner = NULL, lease_until = NULL, updated_at = ? "
            "WHERE id = ? AND state = 'in_flight' AND lease_owner = ?",
            (now, entry.id, owner),
        )
        return cursor.rowcount == 1


async def reclaim_own(db: Database, owner: str, keep: Sequence[int], now: float) -> list[int]:
    """Rows ``owner`` still leases but no longer works on: due now, to be looked up first.

    For a processor whose drain broke off mid-way (its outcome writes refused by a full disk):
    a delivery it made may not be recorded, so the row is ``outcome_unknown`` and its next
    attempt asks the remote before creating anything. The attempt is given back: the disk
    failed, not the remote, and a long spell of full disk must not use up ``max_attempts``.
    ``keep``: rows still being delivered.
    """
    async with db.transaction() as conn:
        rows = await conn.execute_fetchall(
            "UPDATE outbox SET state = 'outcome_unknown', outcome_unknown = 1, "
            "attempts = max(attempts - 1, 0), "
            "next_attempt_at = ?, lease_owner = NULL, lease_until = NULL, updated_at = ?, "
            "last_error = 'the outcome of an attempt could not be recorded (disk full); "
            "looked up before any resend' "
            "WHERE state = 'in_flight' AND lease_owner = ? "
            "AND id NOT IN (SELECT value FROM json_each(?)) RETURNING id",
            (now, now, owner, json.dumps(list(keep))),
        )
    return sorted(int(row[0]) for row in rows)


async def _apply(
    conn: aiosqlite.Connection, entry: ClaimedEntry, outcome: Outcome, owner: str, now: float
) -> bool:
    if isinstance(outcome, Delivered):
        # Recorded whoever holds the lease: the document exists, so the row must say so.
        cursor = await conn.execute(
            "UPDATE outbox SET state = 'delivered', external_id = ?, external_number = ?, "
            "outcome_unknown = 0, lease_owner = NULL, lease_until = NULL, delivered_at = ?, "
            "updated_at = ? WHERE id = ? AND state != 'delivered'",
            (outcome.external_id, outcome.number, now, now, entry.id),
        )
        await conn.execute(
            "INSERT INTO documents (outbox_id, run_id, system, kind, external_id, number, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (outbox_id) DO NOTHING",
            (
                entry.id,
                entry.run_id,
                SYSTEM_BY_KIND.get(entry.kind, entry.kind),
                entry.kind,
                outcome.external_id,
                outcome.number,
                now,
            ),
        )
    elif isinstance(outcome, Retry):
        unknown = int(outcome.outcome_unknown)
        cursor = await conn.execute(
            "UPDATE outbox SET "
            "outcome_unknown = max(outcome_unknown, ?), "
            "state = CASE WHEN max(outcome_unknown, ?) = 1 "
            "             THEN 'outcome_unknown' ELSE 'retry_wait' END, "
            "next_attempt_at = ?, last_error = ?, lease_owner = NULL, lease_until = NULL, "
            "updated_at = ? WHERE id = ? AND state = 'in_flight' AND lease_owner = ?",
            (unknown, unknown, outcome.next_attempt_at, outcome.error, now, entry.id, owner),
        )
    else:
        cursor = await conn.execute(
            "UPDATE outbox SET state = 'dead', last_error = ?, lease_owner = NULL, "
            "lease_until = NULL, updated_at = ? "
            "WHERE id = ? AND state = 'in_flight' AND lease_owner = ?",
            (outcome.error, now, entry.id, owner),
        )
    return cursor.rowcount == 1


async def record_outcomes(
    db: Database,
    settled: Sequence[tuple[ClaimedEntry, Outcome]],
    *,
    owner: str,
    now: float,
    claim_next: Sequence[ClaimRequest] = (),
) -> tuple[list[bool], list[list[ClaimedEntry]]]:
    """Record what became of claimed rows and claim the next rows, all in one transaction.

    Returns (recorded per outcome, claimed per request). A retry or dead letter is recorded
    only while ``owner`` still holds the lease; a delivery always is, and reports False only
    when the row was already delivered. With a retry, an ``outcome_unknown`` flag is set (or
    kept: it stays set until the row is delivered) and the row waits as ``outcome_unknown``,
    else as ``retry_wait``. One commit for many outcomes and the next claims is what lets the
    outbox keep up with the disk.
    """
    async with db.transaction() as conn:
        recorded = [await _apply(conn, entry, outcome, owner, now) for entry, outcome in settled]
        claimed = [await _claim(conn, request, now) for request in claim_next]
    return recorded, claimed


async def record_outcome(
    db: Database, entry: ClaimedEntry, outcome: Outcome, *, owner: str, now: float
) -> bool:
    """Record one outcome on its own (see ``record_outcomes``)."""
    recorded, _ = await record_outcomes(db, [(entry, outcome)], owner=owner, now=now)
    return recorded[0]


async def record_delivered(
    db: Database, entry: ClaimedEntry, *, external_id: str, number: str, now: float
) -> bool:
    """Mark the row delivered and remember the created document, linked to its run."""
    # A delivery is recorded whoever holds the lease, so no owner is needed.
    return await record_outcome(db, entry, Delivered(external_id, number), owner="", now=now)


async def record_retry(
    db: Database,
    entry: ClaimedEntry,
    *,
    owner: str,
    error: str,
    next_attempt_at: float,
    outcome_unknown: bool,
    now: float,
) -> bool:
    """Release the lease and schedule another attempt; False if the lease was no longer ours."""
    return await record_outcome(
        db, entry, Retry(error, next_attempt_at, outcome_unknown), owner=owner, now=now
    )


async def record_dead(
    db: Database, entry: ClaimedEntry, *, owner: str, error: str, now: float
) -> bool:
    """Give up on the row, keeping why; False if the lease was no longer ours."""
    return await record_outcome(db, entry, Dead(error), owner=owner, now=now)


async def next_due_at(db: Database, kinds: Sequence[str]) -> float | None:
    """When the earliest row of ``kinds`` becomes claimable (may be in the past), or None."""
    placeholders = ", ".join("?" for _ in kinds)
    row = await db.fetchone(
        "SELECT min(due) FROM ("
        f" SELECT min(next_attempt_at) AS due FROM outbox WHERE kind IN ({placeholders})"
        "   AND state IN ('pending', 'retry_wait', 'outcome_unknown')"
        " UNION ALL"
        f" SELECT min(lease_until) AS due FROM outbox WHERE kind IN ({placeholders})"
        "   AND state = 'in_flight')",
        (*kinds, *kinds),
    )
    if row is None or row[0] is None:
        return None
    return float(row[0])
