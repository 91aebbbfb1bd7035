"""``hubd run`` refusing to start: one line on stderr, the documented exit status, no traceback.

Also: a database deleted or emptied while hubd was stopped is said loudly at the next start, and
the files hubd writes are not for others whatever the umask it was started with (issue 19).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.store import open_database
from daemon.store.identity import marker_path
from tests.conftest import (
    MOYSKLAD_TEST_TOKEN,
    ONEC_TEST_PASSWORD,
    REPO,
    base_sections,
    child_env,
    write_config,
)

EX_CONFIG = 78


async def hubd(*args: str, umask: int | None = None, timeout: float = 30) -> tuple[int, str, str]:
    """``hubd ARGS`` to its end; (exit status, stdout, stderr)."""
    command = [sys.executable, "-m", "daemon", *args]
    if umask is not None:
        command = ["sh", "-c", f'umask {umask:03o}; exec "$@"', "hubd", *command]
    proc = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=child_env(HUB_ONEC_PASSWORD=ONEC_TEST_PASSWORD, HUB_MOYSKLAD_TOKEN=MOYSKLAD_TEST_TOKEN),
        cwd=REPO,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def config(tmp_path: Path, **control: Any) -> Path:
    sections = base_sections(tmp_path)
    sections["control"].update(control)
    return write_config(tmp_path / "config.toml", sections)


def database(tmp_path: Path) -> Path:
    return tmp_path / "state" / "hub.sqlite3"


async def make_database(tmp_path: Path, rows: int = 2000) -> Path:
    """A migrated database with some history in it, closed."""
    path = database(tmp_path)
    db = await open_database(path)
    async with db.transaction() as conn:
        await conn.executemany(
            "INSERT INTO integration_logs (ts, level, event, logger, data_json) "
            "VALUES (?, 'info', ?, 'test', '{}')",
            [(n, f"event-{n}" * 5) for n in range(rows)],
        )
    await db.close()
    return path


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


async def test_a_database_that_is_not_one_is_refused_by_name_with_78(tmp_path: Path) -> None:
    """Garbage where the database should be: one line naming the file and the way out, 78."""
    path = database(tmp_path)
    path.parent.mkdir()
    path.write_bytes(os.urandom(64 * 1024))
    code, _, err = await hubd("run", "--config", str(config(tmp_path)))
    line = one_line(err)
    assert code == EX_CONFIG, err
    assert str(path) in line and "is damaged" in line and "Backup and restore" in line


async def test_a_half_truncated_database_is_refused_by_name_with_78(tmp_path: Path) -> None:
    """The first half of a real database: refused before anything writes to it."""
    path = await make_database(tmp_path)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    code, _, err = await hubd("run", "--config", str(config(tmp_path)))
    line = one_line(err)
    assert code == EX_CONFIG, err
    assert str(path) in line and "is damaged" in line
    assert path.stat().st_size == len(whole) // 2, "a damaged database is left as it was"


async def test_a_database_with_damaged_pages_fails_quick_check_with_78(tmp_path: Path) -> None:
    """Zeroed pages in the middle: PRAGMA quick_check finds them; the line quotes it."""
    path = await make_database(tmp_path)
    data = bytearray(path.read_bytes())
    page = 4096
    data[3 * page : 8 * page] = bytes(5 * page)
    path.write_bytes(bytes(data))
    code, _, err = await hubd("run", "--config", str(config(tmp_path)))
    line = one_line(err)
    assert code == EX_CONFIG, err
    assert "is damaged" in line and str(path) in line


async def test_a_newer_schema_is_refused_with_78(tmp_path: Path) -> None:
    """A database a newer hubd migrated: 78 (not 1, which systemd would restart forever)."""
    path = await make_database(tmp_path, rows=1)
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 999")
    code, _, err = await hubd("run", "--config", str(config(tmp_path)))
    line = one_line(err)
    assert code == EX_CONFIG, err
    assert str(path) in line and "newer than this hub knows" in line


@pytest.fixture
def read_only_state(tmp_path: Path) -> Iterator[Path]:
    """A state directory hubd cannot write: a read-only bind mount as root, else mode 0555."""
    state = tmp_path / "state"
    state.mkdir()
    if os.geteuid() == 0:
        mounted = os.system(f"mount --bind {state} {state} && mount -o remount,bind,ro {state}")
        if mounted != 0:
            pytest.skip("cannot make a read-only bind mount here")
        try:
            yield state
        finally:
            os.system(f"umount {state}")
    else:
        state.chmod(0o555)
        try:
            yield state
        finally:
            state.chmod(0o755)


async def test_a_read_only_state_directory_is_refused_with_78(
    tmp_path: Path, read_only_state: Path
) -> None:
    """hubd cannot write its state directory: one line naming it, 78."""
    code, _, err = await hubd("run", "--config", str(config(tmp_path)))
    line = one_line(err)
    assert code == EX_CONFIG, err
    assert str(read_only_state) in line


async def test_missing_tls_files_are_a_config_error_for_check_config_and_run(
    tmp_path: Path,
) -> None:
    """control.tcp_listen with TLS files that do not exist: check-config and run say which."""
    path = config(
        tmp_path,
        tcp_listen="127.0.0.1:50999",
        tls_cert_file=str(tmp_path / "missing-cert.pem"),
        tls_key_file=str(tmp_path / "missing-key.pem"),
    )
    for args in (("check-config", str(path)), ("run", "--config", str(path))):
        code, _, err = await hubd(*args)
        line = one_line(err)
        assert code == EX_CONFIG, err
        assert "control.tls_cert_file" in line and "missing-cert.pem" in line, line


async def test_a_tls_file_that_is_not_pem_is_a_config_error(tmp_path: Path) -> None:
    """A key file that exists but holds no PEM block is named too."""
    cert = tmp_path / "cert.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    key = tmp_path / "key.pem"
    key.write_text("not a key\n")
    path = config(
        tmp_path, tcp_listen="127.0.0.1:50999", tls_cert_file=str(cert), tls_key_file=str(key)
    )
    code, _, err = await hubd("check-config", str(path))
    assert code == EX_CONFIG and "control.tls_key_file" in one_line(err)


# ---- history lost, file modes -------------------------------------------------------------


async def start_and_stop(tmp_path: Path, *, umask: int | None = None) -> list[dict[str, Any]]:
    """Run hubd until it is ready, stop it with SIGTERM; its JSON log events."""
    command = [sys.executable, "-m", "daemon", "run", "--config", str(config(tmp_path))]
    if umask is not None:
        command = ["sh", "-c", f'umask {umask:03o}; exec "$@"', "hubd", *command]
    proc = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=child_env(HUB_ONEC_PASSWORD=ONEC_TEST_PASSWORD, HUB_MOYSKLAD_TOKEN=MOYSKLAD_TEST_TOKEN),
        cwd=REPO,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    async with asyncio.timeout(30):
        while not any('"hub_ready"' in line for line in lines):
            line = (await proc.stdout.readline()).decode()
            assert line, f"hubd ended before it was ready: {lines}"
            lines.append(line)
        proc.terminate()
        rest, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    lines += rest.decode().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def remove(path: Path, *suffixes: str) -> None:
    for suffix in suffixes:
        Path(f"{path}{suffix}").unlink(missing_ok=True)


async def test_a_database_deleted_while_stopped_is_one_loud_error_at_start(tmp_path: Path) -> None:
    """Deleted (or emptied) while hubd was stopped: one error event naming the lost database;
    a restored backup of the same database, and a plain restart, say nothing."""
    first = await start_and_stop(tmp_path)
    assert not [e for e in first if e["event"] == "database_history_lost"]
    path = database(tmp_path)
    backup = path.read_bytes()
    remove(path, "", "-wal", "-shm")
    events = await start_and_stop(tmp_path)
    lost = [e for e in events if e["event"] == "database_history_lost"]
    assert len(lost) == 1 and lost[0]["level"] == "error", lost
    assert str(path) in lost[0]["message"] and "restore the last backup" in lost[0]["message"]

    path.write_bytes(b"")  # emptied this time
    remove(path, "-wal", "-shm")
    events = await start_and_stop(tmp_path)
    assert [e["event"] for e in events].count("database_history_lost") == 1

    quiet = await start_and_stop(tmp_path)
    assert "database_history_lost" not in [e["event"] for e in quiet]

    # a backup of an earlier database is another database: a warning, not a loss
    path.write_bytes(backup)
    remove(path, "-wal", "-shm")
    events = await start_and_stop(tmp_path)
    names = [e["event"] for e in events]
    assert "database_history_lost" not in names and "database_replaced" in names


@pytest.mark.parametrize("umask", [0o000, 0o022])
async def test_files_hubd_writes_are_not_for_others_whatever_the_umask(
    tmp_path: Path, umask: int
) -> None:
    """Started with a permissive umask, hubd still creates its database, WAL, shared memory,
    marker and lock files without access for others and without group write."""
    await start_and_stop(tmp_path, umask=umask)
    state = database(tmp_path).parent
    files = [p for p in state.iterdir() if p.is_file()]
    assert {"hub.sqlite3", marker_path(database(tmp_path)).name} <= {p.name for p in files}
    for file in files:
        mode = stat.S_IMODE(file.stat().st_mode)
        assert mode & 0o027 == 0, f"{file.name} is {mode:o}"
    assert stat.S_IMODE(database(tmp_path).stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) & 0o027 == 0


async def test_open_database_creates_its_files_0600_under_umask_0(tmp_path: Path) -> None:
    """In process, umask 0: the database, -wal, -shm and the marker are created 0600."""
    old = os.umask(0)
    try:
        db = await open_database(tmp_path / "state" / "hub.sqlite3")
        async with db.transaction() as conn:
            await conn.execute(
                "INSERT INTO integration_logs (ts, level, event, logger, data_json) "
                "VALUES (0, 'info', 'x', 't', '{}')"
            )
        names = ["hub.sqlite3", "hub.sqlite3-wal", "hub.sqlite3-shm", "hub.sqlite3.id"]
        modes = {n: stat.S_IMODE((tmp_path / "state" / n).stat().st_mode) for n in names}
        await db.close()
    finally:
        os.umask(old)
    assert modes == dict.fromkeys(names, 0o600)
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700


async def test_a_database_an_older_hub_left_readable_by_others_is_tightened(
    tmp_path: Path,
) -> None:
    """hub.sqlite3 and its WAL made 0644 by an earlier hub lose every access for others (the
    group keeps reading) at the next open."""
    path = await make_database(tmp_path, rows=1)
    path.chmod(0o644)
    db = await open_database(path)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    finally:
        await db.close()
