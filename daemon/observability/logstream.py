"""Where log events go besides stdout: live followers and the ``integration_logs`` history.

``LogHub.publish`` is called from the structlog processor chain for every event. It never blocks
the event loop: followers get the event through bounded queues (a slow follower loses its oldest
events and is told how many), and the history is written in batches by ``run_history_writer``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import structlog

from daemon.errors import DiskFullError
from daemon.store import Database

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}

_log = structlog.get_logger(__name__)

# How often the history writer tries a full disk again.
_FULL_RETRY_S = 1.0


@dataclass(frozen=True, slots=True)
class LogRecord:
    ts: float
    level: str
    event: str
    logger: str
    run_id: str
    job: str
    data: dict[str, Any]
    dropped_before: int = 0

    def data_json(self) -> str:
        return json.dumps(self.data, ensure_ascii=False, default=str, sort_keys=True)


_RESERVED = {"timestamp", "level", "event", "logger", "run_id", "job", "_record", "_from_structlog"}


def record_from_event(event_dict: dict[str, Any]) -> LogRecord:
    data = {k: v for k, v in event_dict.items() if k not in _RESERVED}
    return LogRecord(
        ts=time.time(),
        level=str(event_dict.get("level", "info")),
        event=str(event_dict.get("event", "")),
        logger=str(event_dict.get("logger", "")),
        run_id=str(event_dict.get("run_id") or ""),
        job=str(event_dict.get("job") or ""),
        data=data,
    )


@dataclass(eq=False)
class Follower:
    """One live subscriber with its own bounded queue."""

    min_level: int
    run_id: str
    capacity: int
    queue: deque[LogRecord] = field(default_factory=deque)
    dropped: int = 0
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False

    def wants(self, record: LogRecord) -> bool:
        if LEVELS.get(record.level, 20) < self.min_level:
            return False
        return not self.run_id or record.run_id == self.run_id

    def offer(self, record: LogRecord) -> None:
        if len(self.queue) >= self.capacity:
            self.queue.popleft()
            self.dropped += 1
        self.queue.append(record)
        self.wakeup.set()


class LogHub:
    """Fans log events out to followers and batches them into ``integration_logs``."""

    def __init__(
        self,
        *,
        follower_capacity: int = 10_000,
        history_batch: int = 500,
        max_unwritten: int = 50_000,
    ) -> None:
        self._followers: set[Follower] = set()
        self._pending: list[LogRecord] = []
        self._history_batch = history_batch
        self._max_unwritten = max_unwritten
        self.history_dropped = 0  # events given up while the disk was full, not yet reported
        self._follower_capacity = follower_capacity
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._flush_needed = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._closed = False
        self.published = 0

    def bind_loop(self) -> None:
        """Call from the event loop that owns the followers."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._flush_needed = asyncio.Event()
        self._flush_lock = asyncio.Lock()

    def publish(self, record: LogRecord) -> None:
        if self._loop is None:
            return
        if threading.get_ident() != self._loop_thread:
            # stdlib loggers in library threads (grpc, aiosqlite): hand over to the loop
            with contextlib.suppress(RuntimeError):  # the loop is closed at shutdown
                self._loop.call_soon_threadsafe(self._publish_on_loop, record)
            return
        self._publish_on_loop(record)

    def _publish_on_loop(self, record: LogRecord) -> None:
        self.published += 1
        self._pending.append(record)
        if len(self._pending) >= self._history_batch:
            self._flush_needed.set()
        for follower in self._followers:
            if follower.wants(record):
                follower.offer(record)

    # ---- followers ------------------------------------------------------------------------

    def subscribe(self, *, min_level: str = "debug", run_id: str = "") -> Follower:
        follower = Follower(LEVELS.get(min_level, 10), run_id, self._follower_capacity)
        if self._closed:
            follower.closed = True
        self._followers.add(follower)
        return follower

    def unsubscribe(self, follower: Follower) -> None:
        self._followers.discard(follower)

    async def follow(self, follower: Follower) -> AsyncIterator[LogRecord]:
        """Yield the follower's events until the hub closes; reports drops on the next event."""
        async for batch in self.follow_batches(follower):
            for record in batch:
                yield record

    async def follow_batches(
        self, follower: Follower, *, max_batch: int = 1000
    ) -> AsyncIterator[list[LogRecord]]:
        """Yield everything queued for the follower (up to ``max_batch``) at each wake-up, until
        the hub closes. The first record after a drop carries how many were dropped."""
        try:
            while True:
                while follower.queue:
                    take = min(len(follower.queue), max_batch)
                    batch = [follower.queue.popleft() for _ in range(take)]
                    if follower.dropped:
                        batch[0] = dataclasses.replace(batch[0], dropped_before=follower.dropped)
                        follower.dropped = 0
                    yield batch
                if follower.closed or self._closed:
                    return
                follower.wakeup.clear()
                await follower.wakeup.wait()
        finally:
            self.unsubscribe(follower)

    def close_followers(self) -> None:
        """End every live stream (shutdown)."""
        self._closed = True
        for follower in list(self._followers):
            follower.closed = True
            follower.wakeup.set()

    # ---- history --------------------------------------------------------------------------

    async def history_then_follow(
        self, db: Database, *, last: int, min_level: str = "debug", run_id: str = ""
    ) -> tuple[list[LogRecord], Follower]:
        """The last ``last`` matching events, and a follower that gets every later one.

        Holding the flush lock while subscribing, snapshotting the unflushed events and reading
        the table keeps the three sets disjoint: nothing is shown twice and nothing is missed.
        """
        async with self._flush_lock:
            follower = self.subscribe(min_level=min_level, run_id=run_id)
            unflushed = [r for r in self._pending if follower.wants(r)]
            stored = await read_history(db, last=last, min_level=min_level, run_id=run_id)
        history = (stored + unflushed)[-last:] if last > 0 else []
        return history, follower

    async def flush(self, db: Database) -> int:
        """Write the pending events; on a ``DiskFullError`` they stay pending (bounded)."""
        async with self._flush_lock:
            if not self._pending:
                return 0
            batch, self._pending = self._pending, []
            rows = [
                (r.ts, r.level, r.event, r.logger, r.run_id or None, r.job or None, r.data_json())
                for r in batch
            ]
            try:
                async with db.transaction() as conn:
                    await conn.executemany(
                        "INSERT INTO integration_logs"
                        " (ts, level, event, logger, run_id, job, data_json)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)",
                        rows,
                    )
            except DiskFullError:
                self._keep_unwritten(batch)
                raise
            if self.history_dropped:
                dropped, self.history_dropped = self.history_dropped, 0
                _log.warning("log_history_dropped", events=dropped, reason="disk full")
            return len(rows)

    def _keep_unwritten(self, batch: list[LogRecord]) -> None:
        """Put a batch the disk refused back in front; past ``max_unwritten`` the oldest go
        (they were printed to stdout/journald all the same; the count is logged later)."""
        self._pending = batch + self._pending
        excess = len(self._pending) - self._max_unwritten
        if excess > 0:
            del self._pending[:excess]
            self.history_dropped += excess

    async def run_history_writer(
        self, db: Database, *, interval_s: float = 0.5, retention_days: int = 30
    ) -> None:
        """Long-lived task: write batches to ``integration_logs`` and prune old rows hourly.

        A full disk does not end it: the events wait in memory (up to ``max_unwritten``) and
        the writer tries again every few seconds until the disk takes them.
        """
        last_prune = 0.0
        wait_s = interval_s
        try:
            while True:
                if wait_s > interval_s:
                    await asyncio.sleep(wait_s)  # a full batch must not hurry a full disk
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._flush_needed.wait(), timeout=wait_s)
                self._flush_needed.clear()
                try:
                    await self.flush(db)
                    if time.monotonic() - last_prune > 3600:
                        last_prune = time.monotonic()
                        await prune_history(db, retention_days)
                except DiskFullError:
                    # said once by the store (storage_full); a retry a second later keeps the
                    # full state fresh for hubctl status without busy-looping on the disk
                    wait_s = max(interval_s, _FULL_RETRY_S)
                else:
                    wait_s = interval_s
        finally:
            # final flush on shutdown, shielded so cancellation does not lose the tail
            try:
                await asyncio.shield(self.flush(db))
            except DiskFullError:
                _log.error("log_history_not_written", events=len(self._pending))


async def prune_history(db: Database, retention_days: int) -> int:
    cutoff = time.time() - retention_days * 86400
    async with db.transaction() as conn:
        cursor = await conn.execute("DELETE FROM integration_logs WHERE ts < ?", (cutoff,))
        return cursor.rowcount


async def read_history(
    db: Database, *, last: int, min_level: str = "debug", run_id: str = ""
) -> list[LogRecord]:
    levels = [name for name, value in LEVELS.items() if value >= LEVELS.get(min_level, 10)]
    marks = ",".join("?" for _ in levels)
    sql = f"SELECT ts, level, event, logger, run_id, job, data_json FROM integration_logs WHERE level IN ({marks})"  # noqa: E501
    params: list[object] = list(levels)
    if run_id:
        sql += " AND run_id = ?"
        params.append(run_id)
    sql += " ORDER BY id DESC LIMIT ?"
    params.append(last)
    rows = await db.fetchall(sql, tuple(params))
    return [
        LogRecord(r[0], r[1], r[2], r[3] or "", r[4] or "", r[5] or "", json.loads(r[6]))
        for r in reversed(rows)
    ]
