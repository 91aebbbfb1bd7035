"""The crash soak's audit: every outbox row against the documents in both emulators.

- lost: a planned document missing in its emulator, a row still undelivered after the drain,
  or a run whose stored plan counts more documents than it has outbox rows;
- duplicated: a second document for one key (1C: same ``Ref_Key`` or marker key; МойСклад: same
  ``syncId`` or ``externalCode``), or a document no outbox row accounts for;
- mismatched: a document whose lines, quantities, warehouses or posting differ from its row;
- over-ordered: an item whose documents still open when a run planned add up to more than the
  whole deficit (one deficit ordered twice under different keys, which no key check sees);
- overlapping runs: two runs of one job whose lives overlap (started before the other ended),
  which the one-run-per-job rule forbids whatever triggered them.

Dead rows are counted separately.
"""

from __future__ import annotations

import itertools
import json
import math
import sqlite3
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from daemon.model import CustomerOrderDocument, TransferOrderDocument

UNDELIVERED = ("pending", "in_flight", "retry_wait", "outcome_unknown")
Order = dict[str, Any]  # one document as an emulator's inspection helper shows it


@dataclass
class Audit:
    rows: int = 0
    delivered: int = 0
    runs: int = 0
    runs_with_documents: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)
    over_ordered: list[str] = field(default_factory=list)
    overlapping: list[str] = field(default_factory=list)


def _query(path: Path, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
    conn = sqlite3.connect(path, timeout=10)
    try:
        conn.row_factory = sqlite3.Row
        return conn.execute(sql, tuple(params)).fetchall()
    finally:
        conn.close()


def undrained(path: Path) -> int:
    marks = ",".join("?" for _ in UNDELIVERED)
    rows = _query(path, f"SELECT count(*) FROM outbox WHERE state IN ({marks})", UNDELIVERED)
    return int(rows[0][0])


def leased_by(path: Path, owner: str) -> int:
    if not path.exists():  # killed before it created its database
        return 0
    sql = "SELECT count(*) FROM outbox WHERE state = 'in_flight' AND lease_owner = ?"
    return int(_query(path, sql, (owner,))[0][0])


def _totals(pairs: Iterable[tuple[str, Any]]) -> dict[str, Decimal]:
    totals: dict[str, Decimal] = {}
    for key, qty in pairs:
        totals[key] = totals.get(key, Decimal(0)) + Decimal(str(qty))
    return totals


def _item_totals(row: sqlite3.Row) -> dict[str, Decimal]:
    doc: TransferOrderDocument | CustomerOrderDocument
    if row["kind"] == "onec_transfer_order":
        doc = TransferOrderDocument.model_validate_json(row["payload_json"])
    else:
        doc = CustomerOrderDocument.model_validate_json(row["payload_json"])
    return _totals((line.item_key, line.quantity) for line in doc.lines)


def _marker_key(comment: str) -> str | None:
    return next((t[4:] for t in comment.split() if t.startswith("key=")), None)


def _onec_match(payload: str, orders: list[Order]) -> tuple[list[str], list[str]]:
    """(every 1C order this row accounts for, those that differ from it)."""
    doc = TransferOrderDocument.model_validate_json(payload)
    found = [
        o for o in orders
        if o["Ref_Key"] == doc.ref_key or _marker_key(o["comment"]) == doc.idempotency_key
    ]  # fmt: skip
    wanted = _totals((line.item_key, line.quantity) for line in doc.lines)
    bad = [
        o["Ref_Key"] for o in found
        if not o["Posted"]
        or (o["sender"], o["receiver"]) != (doc.sender_key, doc.receiver_key)
        or _totals((line["item_key"], line["quantity"]) for line in o["lines"]) != wanted
    ]  # fmt: skip
    return [o["Ref_Key"] for o in found], bad


def _moysklad_match(payload: str, orders: list[Order]) -> tuple[list[str], list[str]]:
    """(every МойСклад order this row accounts for, those that differ from it)."""
    doc = CustomerOrderDocument.model_validate_json(payload)
    found = [
        o for o in orders if doc.sync_id == o["syncId"] or doc.external_code == o["externalCode"]
    ]
    wanted = _totals((line.product_id, line.quantity) for line in doc.lines)
    bad = [
        o["id"] for o in found
        if _totals((p["product_id"], p["quantity"]) for p in o["positions"]) != wanted
    ]  # fmt: skip
    return [o["id"] for o in found], bad


def _over_ordered(opened: list[tuple[str, float, float, dict[str, Decimal]]]) -> list[str]:
    """Items whose open documents, once a run had planned, exceed what the first run ordered.

    ``opened`` holds (run id, run start, when the soak closed the document or inf, quantity per
    item) per outbox row. The first run saw no open documents, so it ordered the whole deficit;
    a later run may only add what the documents still open at its start do not cover. More
    means one deficit was ordered twice, under different keys, which no key check can see.
    """
    starts = sorted({(start, run) for run, start, _, _ in opened})
    cap: dict[str, Decimal] = {}
    found = []
    for start, run in starts:
        open_now: dict[str, Decimal] = {}
        for other, other_start, closed, totals in opened:
            if other == run or (other_start < start < closed):
                for item, qty in totals.items():
                    open_now[item] = open_now.get(item, Decimal(0)) + qty
        cap = cap or open_now
        found += [
            f"run {run}: {qty} of item {item} open, the whole deficit is {cap.get(item, 0)}"
            for item, qty in sorted(open_now.items())
            if qty > cap.get(item, Decimal(0))
        ]
    return found


def _overlapping(runs: list[sqlite3.Row]) -> list[str]:
    """Runs of one job whose lives overlap. A run killed with its daemon ends (``finished_at``)
    when the next daemon starts and closes it, before that daemon can start another. A run
    that committed its plan (status final) but was killed before it wrote ``finished_at`` also
    ended with its daemon, before any later one started."""
    found = []
    by_job: dict[str, list[sqlite3.Row]] = {}
    for run in runs:
        by_job.setdefault(str(run["job"]), []).append(run)
    for job, mine in by_job.items():
        mine.sort(key=lambda r: float(r["started_at"]))
        for before, after in itertools.pairwise(mine):
            ended = before["finished_at"]
            if ended is None and before["status"] != "running":
                continue
            if ended is None or float(after["started_at"]) < float(ended):
                found.append(f"{job}: run {after['id']} started while {before['id']} ran")
    return found


def audit(
    db_path: Path,
    onec_orders: list[Order],
    ms_orders: list[Order],
    closed_at: dict[str, float] | None = None,
) -> Audit:
    """Compare every run's outbox rows with the documents in both emulators.

    ``onec_orders`` and ``ms_orders`` are what ``OneCSandbox.transfer_orders()`` and
    ``MoySkladSandbox.orders()`` return; ``closed_at`` is ``Closer.closed_at``.
    """
    closed_at = closed_at or {}
    rows = _query(db_path, "SELECT * FROM outbox ORDER BY id")
    runs = _query(db_path, "SELECT id, job, status, started_at, finished_at, counts_json FROM runs")
    started = {str(run["id"]): float(run["started_at"]) for run in runs}
    opened = []
    result = Audit(rows=len(rows), runs=len(runs))
    per_run = Counter(str(row["run_id"]) for row in rows)
    for run in runs:
        planned = int(json.loads(run["counts_json"] or "{}").get("documents", 0))
        result.runs_with_documents += planned > 0
        if per_run[run["id"]] < planned:
            result.lost.append(
                f"run {run['id']} planned {planned}, outbox has {per_run[run['id']]}"
            )
    used: set[str] = set()
    for row in rows:
        key, state = str(row["idempotency_key"]), str(row["state"])
        if row["kind"] == "onec_transfer_order":
            ids, bad = _onec_match(row["payload_json"], onec_orders)
        else:
            ids, bad = _moysklad_match(row["payload_json"], ms_orders)
        used.update(ids)
        closed = min((closed_at.get(i, math.inf) for i in ids), default=math.inf)
        run_id = str(row["run_id"])
        opened.append((run_id, started[run_id], closed, _item_totals(row)))
        result.delivered += state == "delivered"
        if state == "dead":
            result.dead.append(f"{key} ({len(ids)} document(s)): {row['last_error']}")
        elif state != "delivered":
            result.lost.append(f"{key} still {state} after the drain")
        elif not ids:
            result.lost.append(f"{key} is delivered as {row['external_id']}, which does not exist")
        elif row["external_id"] not in ids:
            result.mismatched.append(f"{key}: the outbox says {row['external_id']}, found {ids}")
        result.duplicated += [f"{key} also as {extra}" for extra in ids[1:]]
        result.mismatched += [f"{key}: document {ref} differs from the row" for ref in bad]
    result.duplicated += [
        f"1C order {o['Ref_Key']} ({o['comment']!r}) matches no outbox row"
        for o in onec_orders
        if o["Ref_Key"] not in used
    ]
    result.duplicated += [
        f"МойСклад order {o['id']} ({o['externalCode']}) matches no outbox row"
        for o in ms_orders
        if o["id"] not in used
    ]
    result.over_ordered = _over_ordered(opened)
    result.overlapping = _overlapping(runs)
    return result
