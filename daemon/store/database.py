"""Opening the database, applying migrations, and serialising writes."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

import aiosqlite

from daemon.errors import StoreError

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


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


class Database:
    """One aiosqlite connection used by the whole daemon.

    Writes go through ``transaction()``, which holds an asyncio lock for the duration of one
    ``BEGIN IMMEDIATE … COMMIT`` so that transactions from different tasks never interleave on
    the shared connection.
    """

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path
        self._write_lock = asyncio.Lock()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._write_lock:
            try:
                await self.conn.execute("BEGIN IMMEDIATE")
                yield self.conn
            except BaseException:
                # also when cancelled during BEGIN itself: the statement may still have run on
                # aiosqlite's thread, and the shared connection must not stay in a transaction
                await asyncio.shield(self._rollback())
                raise
            else:
                await self.conn.commit()

    async def _rollback(self) -> None:
        if self.conn.in_transaction:
            await self.conn.rollback()

    async def fetchall(
        self, sql: str, params: tuple[object, ...] | dict[str, object] = ()
    ) -> list[aiosqlite.Row]:
        # one trip to aiosqlite's thread instead of three (execute, fetch, close)
        return list(await self.conn.execute_fetchall(sql, params))

    async def fetchone(
        self, sql: str, params: tuple[object, ...] | dict[str, object] = ()
    ) -> aiosqlite.Row | None:
        rows = await self.conn.execute_fetchall(sql, params)
        return next(iter(rows), None)

    async def schema_version(self) -> int:
        row = await self.fetchone("PRAGMA user_version")
        return int(row[0]) if row else 0

    async def close(self) -> None:
        await self.conn.close()


async def _migrate(conn: aiosqlite.Connection, path: Path, target: int | None) -> None:
    async with conn.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    current = int(row[0]) if row else 0
    if current > LATEST_VERSION:
        raise StoreError(
            f"{path} has schema version {current}, newer than this hub knows "
            f"({LATEST_VERSION}); upgrade the hub"
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
            raise StoreError(f"{path}: migration {name} failed: {exc}") from exc


async def open_database(path: Path, *, migrate_to: int | None = None) -> Database:
    """Open (creating if needed) and migrate the database at ``path``.

    ``migrate_to`` stops at an earlier schema version; tests use it to build old databases.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = await aiosqlite.connect(path, isolation_level=None)
    except aiosqlite.Error as exc:
        raise StoreError(f"cannot open database {path}: {exc}") from exc
    conn.row_factory = aiosqlite.Row
    try:
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA synchronous=FULL")
        await conn.execute("PRAGMA busy_timeout=5000")
        await conn.execute("PRAGMA foreign_keys=ON")
        await _migrate(conn, path, migrate_to)
    except BaseException:
        await conn.close()
        raise
    return Database(conn, path)
