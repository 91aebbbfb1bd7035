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
    created_at: float
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
    SELECT id FROM outbox
    WHERE kind = :kind
      AND ((state IN ('pending', 'retry_wait', 'outcome_unknown') AND next_attempt_at <= :now)
           OR (state = 'in_flight' AND lease_until <= :now))
      AND id NOT IN (SELECT value FROM json_each(:exclude))
    ORDER BY next_attempt_at, id
    LIMIT :limit
)
RETURNING id, run_id, kind, idempotency_key, payload_json, attempts, outcome_unknown,
          created_at, lease_until, last_error
"""


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
    if limit < 1:
        return []
    params: dict[str, object] = {
        "kind": kind,
        "owner": owner,
        "now": now,
        "lease_until": now + lease_s,
        "limit": limit,
        "exclude": json.dumps(list(exclude)),
    }
    async with db.transaction() as conn, conn.execute(_CLAIM, params) as cursor:
        rows = list(await cursor.fetchall())
    claimed = [
        ClaimedEntry(
            id=int(row["id"]),
            run_id=str(row["run_id"]),
            kind=str(row["kind"]),
            idempotency_key=str(row["idempotency_key"]),
            payload_json=str(row["payload_json"]),
            attempt=int(row["attempts"]),
            outcome_unknown=bool(row["outcome_unknown"]),
            created_at=float(row["created_at"]),
            lease_until=float(row["lease_until"]),
            last_error=row["last_error"],
        )
        for row in rows
    ]
    claimed.sort(key=lambda entry: entry.id)
    return claimed


async def extend_lease(db: Database, outbox_id: int, owner: str, until: float, now: float) -> bool:
    """Push the lease out while a slow delivery is still running; False if it is not ours."""
    async with db.transaction() as conn:
        cursor = await conn.execute(
            "UPDATE outbox SET lease_until = ?, updated_at = ? "
            "WHERE id = ? AND state = 'in_flight' AND lease_owner = ?",
            (until, now, outbox_id, owner),
        )
        return cursor.rowcount == 1


async def record_delivered(
    db: Database,
    entry: ClaimedEntry,
    *,
    external_id: str,
    number: str,
    now: float,
) -> bool:
    """Mark the row delivered and remember the created document, linked to its run.

    Recorded whoever holds the lease: the document exists, so the row must say so. Returns
    False when the row was already delivered (another worker recorded it first).
    """
    async with db.transaction() as conn:
        cursor = await conn.execute(
            "UPDATE outbox SET state = 'delivered', external_id = ?, external_number = ?, "
            "outcome_unknown = 0, lease_owner = NULL, lease_until = NULL, delivered_at = ?, "
            "updated_at = ? WHERE id = ? AND state != 'delivered'",
            (external_id, number, now, now, entry.id),
        )
        updated = cursor.rowcount == 1
        await conn.execute(
            "INSERT INTO documents (outbox_id, run_id, system, kind, external_id, number, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (outbox_id) DO NOTHING",
            (
                entry.id,
                entry.run_id,
                SYSTEM_BY_KIND.get(entry.kind, entry.kind),
                entry.kind,
                external_id,
                number,
                now,
            ),
        )
    return updated


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
    """Release the lease and schedule another attempt; False if the lease was no longer ours.

    With ``outcome_unknown`` (or when the row already was) the row waits as ``outcome_unknown``
    and the next attempt looks the document up before creating it; the flag stays set until
    the row is delivered.
    """
    async with db.transaction() as conn:
        cursor = await conn.execute(
            "UPDATE outbox SET "
            "outcome_unknown = max(outcome_unknown, ?), "
            "state = CASE WHEN max(outcome_unknown, ?) = 1 "
            "             THEN 'outcome_unknown' ELSE 'retry_wait' END, "
            "next_attempt_at = ?, last_error = ?, lease_owner = NULL, lease_until = NULL, "
            "updated_at = ? WHERE id = ? AND state = 'in_flight' AND lease_owner = ?",
            (
                int(outcome_unknown),
                int(outcome_unknown),
                next_attempt_at,
                error,
                now,
                entry.id,
                owner,
            ),
        )
        return cursor.rowcount == 1


async def record_dead(
    db: Database,
    entry: ClaimedEntry,
    *,
    owner: str,
    error: str,
    now: float,
) -> bool:
    """Give up on the row, keeping why; False if the lease was no longer ours."""
    async with db.transaction() as conn:
        cursor = await conn.execute(
            "UPDATE outbox SET state = 'dead', last_error = ?, lease_owner = NULL, "
            "lease_until = NULL, updated_at = ? "
            "WHERE id = ? AND state = 'in_flight' AND lease_owner = ?",
            (error, now, entry.id, owner),
        )
        return cursor.rowcount == 1


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
