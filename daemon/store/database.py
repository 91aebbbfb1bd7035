"""Opening the database, applying migrations, and serialising writes.

Opening checks, in order, before anything is written: the state directory is writable, the
file is a database and ``PRAGMA quick_check`` finds it sound, and its schema is not newer than
this hub. Each refusal is one ``StateUnusableError`` naming the file and the way out (exit 78).
Files are created 0600 whatever the umask; SQLite gives the WAL and shared-memory files the
database's own mode.

Every write goes through ``Database.transaction()``; a write refused for want of space becomes a
``DiskFullError`` and is reported to ``Database.health`` (``daemon.store.space``).
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import sqlite3
import stat
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

import aiosqlite
import structlog

from daemon.errors import DiskFullError, StateUnusableError, StoreError
from daemon.store import identity
from daemon.store.space import StorageHealth, is_disk_full

_log = structlog.get_logger(__name__)

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

#: where README explains restoring a backup or starting with an empty database
RESTORE_HINT = "see README, 'Backup and restore'"
_IDENTITY_VERSION = 7  # the migration that adds database_identity


def migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) for every migration shipped with the package, in order."""
    found = []
    for entry in resources.files("daemon.store").joinpath("migrations").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [version for version, _, _ in found]
    if versions != list(range(1, len(found) + 1)):
        raise StoreError(f"migrations must be numbered 1..n without gaps, found {versions}")
    return found


LATEST_VERSION = len(migrations())


#: How long a write waits for another process's lock before it fails ("database busy").
BUSY_TIMEOUT_MS = 5000


def is_locked(exc: BaseException) -> bool:
    """True for SQLite's "database is locked" (SQLITE_BUSY) once busy_timeout ran out."""
    if not isinstance(exc, sqlite3.Error):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return bool(code & 0xFF == sqlite3.SQLITE_BUSY)
    return "database is locked" in str(exc)


class Database:
    """One aiosqlite connection used by the whole daemon.

    Writes go through ``transaction()``, which holds an asyncio lock for the duration of one
    ``BEGIN IMMEDIATE … COMMIT`` so that transactions from different tasks never interleave on
    the shared connection.
    """

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path
        self.health = StorageHealth(path)
        self._write_lock = asyncio.Lock()
        self._unlimited_pages = 0

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._write_lock:
            try:
                await self.conn.execute("BEGIN IMMEDIATE")
                yield self.conn
                await self.conn.commit()
            except BaseException as exc:
                # also when cancelled during BEGIN itself: the statement may still have run on
                # aiosqlite's thread; and a COMMIT refused (a full disk) leaves the transaction
                # open. Either way the shared connection must not stay in a transaction.
                await asyncio.shield(self._rollback())
                if is_disk_full(exc):
                    raise DiskFullError(self.health.refused()) from exc
                if is_locked(exc):
                    # another process (a backup tool, an sqlite3 shell) held a write lock past
                    # busy_timeout: this write fails with a sentence, not an "internal error"
                    raise StoreError(
                        f"database busy: another process holds a write lock on {self.path} "
                        f"(waited {BUSY_TIMEOUT_MS / 1000:g} s); close it and try again"
                    ) from exc
                raise
            self.health.committed()

    async def _rollback(self) -> None:
        if self.conn.in_transaction:
            await self.conn.rollback()

    async def fetchall(
        self, sql: str, params: tuple[object, ...] | dict[str, object] = ()
    ) -> list[aiosqlite.Row]:
        # one trip to aiosqlite's thread instead of three (execute, fetch, close)
        try:
            return list(await self.conn.execute_fetchall(sql, params))
        except sqlite3.OperationalError as exc:
            if is_disk_full(exc):  # a sort or temporary table that found no room
                raise DiskFullError(self.health.refused()) from exc
            raise

    async def fetchone(
        self, sql: str, params: tuple[object, ...] | dict[str, object] = ()
    ) -> aiosqlite.Row | None:
        return next(iter(await self.fetchall(sql, params)), None)

    async def schema_version(self) -> int:
        row = await self.fetchone("PRAGMA user_version")
        return int(row[0]) if row else 0

    async def set_size_limit(self, max_mb: float) -> None:
        """Cap the database file at ``max_mb`` MiB (0: no cap), for ``hub.max_database_mb``.

        At the cap writes are refused as on a full disk. SQLite never sets the cap below the
        file's current size, so a cap under it holds the database at its size.
        """
        page_size = int((await self.fetchall("PRAGMA page_size"))[0][0])
        if not self._unlimited_pages:
            self._unlimited_pages = int((await self.fetchall("PRAGMA max_page_count"))[0][0])
        pages = self._unlimited_pages if max_mb <= 0 else max(1, int(max_mb * 2**20) // page_size)
        applied = int((await self.fetchall(f"PRAGMA max_page_count = {pages}"))[0][0])
        self.health.limit_bytes = 0 if max_mb <= 0 else applied * page_size

    async def close(self) -> None:
        await self.conn.close()


def _code(exc: sqlite3.Error) -> int:
    return int(getattr(exc, "sqlite_errorcode", 0)) & 0xFF


def _damaged(path: Path, detail: str) -> StateUnusableError:
    return StateUnusableError(
        f"database {path} is damaged ({detail}); hubd will not use it: restore the last backup, "
        f"or move it aside to start with an empty database ({RESTORE_HINT})"
    )


def _translate(path: Path, exc: sqlite3.Error) -> StoreError:
    """An error while opening, as one line an operator can act on."""
    code = _code(exc)
    if code in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
        return _damaged(path, str(exc))
    if code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM):
        return StateUnusableError(
            f"cannot open database {path} for writing ({exc}): hubd needs to write it and its "
            f"directory {path.parent} (check the owner, the mode and read-only mounts)"
        )
    if is_disk_full(exc):
        return DiskFullError(f"disk full: cannot open database {path}: {exc}")
    return StoreError(f"cannot open database {path}: {exc}")


def _prepare_files(path: Path) -> None:
    """The state directory exists (0700 if new) and is writable; the database file exists,
    0600 if new. A database, WAL or shared-memory file that others could read or the group
    could write (made by an earlier hub under a loose umask) is tightened; the group keeps
    read access if it had it."""
    directory = path.parent
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".hubd-write-test-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):  # a full disk is not a refusal
            raise StateUnusableError(
                f"state directory {directory} is not writable ({exc.strerror}): hubd keeps its "
                "database there; make it writable by the user hubd runs as, or set hub.state_dir"
            ) from None
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
    except FileExistsError:
        pass
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise StateUnusableError(f"cannot create database {path}: {exc.strerror}") from None
    for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            mode = stat.S_IMODE(file.stat().st_mode)
            if mode & 0o027:
                os.chmod(file, mode & ~0o027)
        except OSError:
            pass  # absent, or not ours to change: SQLite will say if it cannot use it
    if path.exists() and not os.access(path, os.W_OK):
        raise StateUnusableError(
            f"database {path} is read-only for the user hubd runs as: hubd needs to write it"
        )


def _no_room_for_wal_index(exc: sqlite3.Error) -> bool:
    """The WAL's shared-memory index (``-shm``) could not be made: a full disk at start."""
    name = str(getattr(exc, "sqlite_errorname", ""))
    return is_disk_full(exc) or name.startswith("SQLITE_IOERR_SHM")


async def _connect(path: Path, *, exclusive: bool) -> aiosqlite.Connection:
    """A connection that has read the schema once (the first read sets up the WAL index).

    ``exclusive``: locking mode EXCLUSIVE before that first read, so SQLite keeps the WAL index
    in memory and needs no ``-shm`` file; other processes cannot read the database meanwhile.
    """
    conn = await aiosqlite.connect(path, isolation_level=None)
    conn.row_factory = aiosqlite.Row
    try:
        await conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        if exclusive:
            await conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        await conn.execute_fetchall("SELECT count(*) FROM sqlite_schema")
    except BaseException:
        await conn.close()
        raise
    return conn


async def _check_integrity(conn: aiosqlite.Connection, path: Path) -> None:
    """``PRAGMA quick_check``: a damaged database is refused before anything writes to it."""
    rows = list(await conn.execute_fetchall("PRAGMA quick_check(3)"))
    problems = [str(row[0]) for row in rows]
    if problems != ["ok"]:
        lines = [line for p in problems for line in p.splitlines() if not line.startswith("***")]
        raise _damaged(path, "quick_check: " + "; ".join(lines))


async def _migrate(conn: aiosqlite.Connection, path: Path, target: int | None) -> None:
    async with conn.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    current = int(row[0]) if row else 0
    if current > LATEST_VERSION:
        raise StateUnusableError(
            f"{path} has schema version {current}, newer than this hub knows "
            f"({LATEST_VERSION}): it was used by a newer hubd; run that version, or restore a "
            f"backup taken before the upgrade ({RESTORE_HINT})"
        )
    for version, name, sql in migrations():
        if version <= current or (target is not None and version > target):
            continue
        try:
            # executescript commits; the version bump is in the same script so a crash
            # between them cannot leave a half-applied migration recorded as done.
            await conn.executescript(
                f"BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {version};\nCOMMIT;"
            )
        except aiosqlite.Error as exc:
            await conn.rollback()
            if is_disk_full(exc):
                raise DiskFullError(
                    f"disk full: {path}: migration {name} found no room; free some space "
                    "and start hubd again"
                ) from exc
            raise StoreError(f"{path}: migration {name} failed: {exc}") from exc


async def open_database(
    path: Path, *, migrate_to: int | None = None, max_size_mb: float = 0.0
) -> Database:
    """Open (creating if needed), check and migrate the database at ``path``.

    ``migrate_to`` stops at an earlier schema version; tests use it to build old databases.
    ``max_size_mb`` is ``hub.max_database_mb`` (0: no cap).
    """
    had_history = identity.had_content(path)
    marker = identity.read_marker(path)
    _prepare_files(path)
    try:
        conn = await _connect(path, exclusive=False)
    except sqlite3.Error as exc:
        if not _no_room_for_wal_index(exc):
            raise _translate(path, exc) from None
        try:
            conn = await _connect(path, exclusive=True)
        except sqlite3.Error as again:
            raise _translate(path, again) from None
        _log.warning(
            "database_opened_exclusively",
            path=str(path),
            reason=str(exc),
            message=(
                "the disk is full, so there was no room for the database's shared-memory "
                "index: hubd keeps it to itself, and other programs (a backup) cannot read it "
                "until hubd is restarted after space returns"
            ),
        )
    try:
        try:
            if had_history:
                await _check_integrity(conn, path)
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=FULL")
            await conn.execute("PRAGMA foreign_keys=ON")
            await _migrate(conn, path, migrate_to)
            found = await identity.read_identity(conn)
        except sqlite3.Error as exc:
            raise _translate(path, exc) from None
        if found is not None:
            identity.reconcile(path, found, marker, had_history=had_history)
        elif migrate_to is None or migrate_to >= _IDENTITY_VERSION:
            raise StoreError(f"{path}: database_identity is empty after migration")
        db = Database(conn, path)
        await db.set_size_limit(max_size_mb)
    except BaseException:
        await conn.close()
        raise
    return db
