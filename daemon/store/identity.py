"""Noticing a database that was deleted, emptied or swapped while hubd was stopped.

SQLite makes a new, empty database wherever the file is missing, so without help a hub whose
database was removed would start quietly with no runs, no documents and no log history. Every
database therefore carries a creation id (table ``database_identity``, migration 0007), and the
state directory keeps a copy of it beside the database, in ``hub.sqlite3.id``, written after the
database was opened and migrated. At the next start:

- marker and database agree: nothing to say;
- no marker yet (a new install, or an upgrade from a hub without markers): it is written;
- a marker, but the database file is missing or empty: the history it names is gone. One error
  event, ``database_history_lost``, says so with the lost database's id and age;
- a marker naming another database: the file was replaced by a different database (a backup of
  this very database keeps its id, so a restore is quiet): ``database_replaced``, a warning.

The marker lives in the state directory, so wiping the whole directory is not detected; it is
also not copied by a backup of the database file alone, which is what a restore needs. To start
fresh on purpose, move the database aside together with its marker (README, "Backup and
restore").
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import aiosqlite
import structlog

_log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Identity:
    creation_id: str
    created_at: float


def marker_path(database: Path) -> Path:
    return database.with_name(database.name + ".id")


def had_content(database: Path) -> bool:
    """True when the database file exists and is not empty (call before opening it)."""
    try:
        return database.stat().st_size > 0
    except FileNotFoundError:
        return False


def read_marker(database: Path) -> Identity | None:
    path = marker_path(database)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Identity(str(data["creation_id"]), float(data["created_at"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        _log.warning("database_marker_unreadable", path=str(path), error=str(exc))
        return None


def write_marker(database: Path, identity: Identity) -> None:
    """Replace the marker atomically (0600); a failure is logged, never fatal."""
    path = marker_path(database)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    text = json.dumps(
        {
            "database": database.name,
            "creation_id": identity.creation_id,
            "created_at": identity.created_at,
        }
    )
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temp.unlink()
        _log.warning("database_marker_not_written", path=str(path), error=str(exc))


async def read_identity(conn: aiosqlite.Connection) -> Identity | None:
    """The database's own identity, or None before migration 0007."""
    try:
        rows = list(
            await conn.execute_fetchall(
                "SELECT creation_id, created_at FROM database_identity WHERE id = 1"
            )
        )
    except aiosqlite.OperationalError:
        return None
    if not rows:
        return None
    return Identity(str(rows[0][0]), float(rows[0][1]))


def _age(created_at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(created_at))


def reconcile(
    database: Path, identity: Identity, marker: Identity | None, *, had_history: bool
) -> None:
    """Compare the opened database with the marker found before opening it; log and update."""
    if marker is not None and marker.creation_id == identity.creation_id:
        return
    if marker is None:
        _log.info(
            "database_identity_recorded", path=str(database), creation_id=identity.creation_id
        )
    elif not had_history:
        _log.error(
            "database_history_lost",
            path=str(database),
            lost_creation_id=marker.creation_id,
            lost_created_at=_age(marker.created_at),
            creation_id=identity.creation_id,
            message=(
                f"{database} was deleted or emptied while hubd was stopped: the runs, documents "
                f"and log history kept since {_age(marker.created_at)} are not in the new, empty "
                "database; restore the last backup if this was not intended (README, "
                "'Backup and restore')"
            ),
        )
    else:
        _log.warning(
            "database_replaced",
            path=str(database),
            previous_creation_id=marker.creation_id,
            creation_id=identity.creation_id,
            message=(
                f"{database} is not the database hubd used last (created "
                f"{_age(identity.created_at)}, not {_age(marker.created_at)})"
            ),
        )
    write_marker(database, identity)
