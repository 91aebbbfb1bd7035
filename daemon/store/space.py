"""A full disk: telling it apart from other database errors, and keeping its state for status.

SQLite answers ``SQLITE_FULL`` ("database or disk is full") when the filesystem has no room for
the database, its WAL or a temporary file, and when the database reached its own page limit
(``hub.max_database_mb``). Either way the write that hit it fails and nothing else has to:
``Database`` turns the error into ``DiskFullError`` and reports it here, the loops that write
(outbox, log history, scheduler) wait and try again, and ``hubctl status`` shows the state.

The state goes back to normal on the first commit after ``_QUIET_S`` without a refused write.
While full, some writes may still succeed (an update that fits in pages the file already has),
and a writer that keeps failing refreshes ``last_refused_at`` every second or so, so a few lucky
commits do not flap the state between full and not full.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

_log = structlog.get_logger(__name__)

# A writer retrying a full disk refuses again within a few seconds (the log history writer
# tries every second); a quiet spell this long after a refusal means space is back.
_QUIET_S = 5.0
# More free space than this on the filesystem: a refusal came from hub.max_database_mb.
_ROOM_BYTES = 16 * 2**20


def is_disk_full(exc: BaseException) -> bool:
    """True for SQLite's "database or disk is full", whatever wrapper it came in."""
    if not isinstance(exc, sqlite3.Error):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return bool(code & 0xFF == sqlite3.SQLITE_FULL)
    return "database or disk is full" in str(exc)


@dataclass(frozen=True, slots=True)
class StorageStatus:
    """What ``hubctl status`` shows about the database's storage."""

    full: bool
    problem: str  # one line when full, else ""
    since: float | None  # when the current full spell began
    refused_writes: int  # writes refused in the current spell
    database_bytes: int  # the database file plus its WAL
    free_bytes: int  # free on the filesystem holding the database (-1: unknown)
    limit_bytes: int  # hub.max_database_mb in bytes, 0 = no limit


class StorageHealth:
    """Whether the database's last writes were refused for want of space, and since when."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self.limit_bytes = 0
        self.quiet_s = _QUIET_S
        self._since: float | None = None
        self._last_refused = 0.0
        self._refused = 0
        self._problem = ""

    @property
    def full(self) -> bool:
        return self._since is not None

    def free_bytes(self) -> int:
        try:
            return shutil.disk_usage(self.path.parent).free
        except OSError:
            return -1

    def describe(self) -> str:
        """Why writes are refused, in one line starting "disk full:"."""
        free = self.free_bytes()
        # With room on the filesystem, it is the configured cap that was hit.
        if self.limit_bytes and (free < 0 or free > _ROOM_BYTES):
            return (
                f"disk full: {self.path} reached its size limit "
                f"(hub.max_database_mb = {self.limit_bytes / 2**20:g}); raise it and reload, "
                "or lower logging.retention_days / replenishment.plan_retention_days"
            )
        room = f"{free // 1024} KiB free" if free >= 0 else "free space unknown"
        return (
            f"disk full: no room for {self.path} on its filesystem ({room}); "
            "free some space and hubd resumes by itself"
        )

    def refused(self) -> str:
        """Record a write refused for want of space; returns the one-line reason."""
        now = self._clock()
        self._last_refused = now
        self._refused += 1
        if self._since is None:
            self._since = now
            self._problem = self.describe()
            _log.error("storage_full", problem=self._problem, path=str(self.path))
        return self._problem

    def committed(self) -> None:
        """A write went through: back to normal once refusals have stopped for a while."""
        if self._since is None or self._clock() - self._last_refused < self.quiet_s:
            return
        _log.warning(
            "storage_writable_again",
            path=str(self.path),
            full_for_s=round(self._clock() - self._since, 1),
            refused_writes=self._refused,
        )
        self._since = None
        self._refused = 0
        self._problem = ""

    def status(self) -> StorageStatus:
        size = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                size += Path(f"{self.path}{suffix}").stat().st_size
        return StorageStatus(
            full=self.full,
            problem=self._problem,
            since=self._since,
            refused_writes=self._refused,
            database_bytes=size,
            free_bytes=self.free_bytes(),
            limit_bytes=self.limit_bytes,
        )
