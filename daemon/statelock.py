"""One daemon per state directory: an advisory lock on ``<state_dir>/hubd.lock``.

Two ``hubd`` on one state directory would each plan and deliver the same deficit (and each
fire every schedule); the second one also migrated the live database and marked the live run
failed before it noticed the socket was taken. So the lock is taken before the database is
opened, and held (the open file) for the life of the process; the kernel drops it when the
process dies, however it dies, so a crash never leaves a stale lock behind. The file holds
the holder's PID, for the message the next one prints.

``flock`` locks are per open file description: two ``Hub`` objects in one process exclude
each other too, as two processes do.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from daemon.errors import StateLockedError, StateUnusableError

LOCK_NAME = "hubd.lock"


class StateLock:
    """The held lock; ``release()`` (or process exit) gives it up."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def acquire_state_lock(state_dir: Path) -> StateLock:
    """Lock ``state_dir`` for this process, or raise ``StateLockedError`` naming the holder
    (``StateUnusableError`` when the lock file cannot be created, e.g. a read-only directory).

    Nothing in the directory but the lock file is touched, and that file is never truncated
    before the lock is ours.
    """
    path = state_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StateUnusableError(
            f"cannot create the state lock {path}: {exc.strerror or exc}"
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_pid(fd)
        os.close(fd)
        who = f"hubd PID {holder}" if holder else "another hubd"
        raise StateLockedError(
            f"state directory {state_dir} is in use by {who} (lock file {path}); "
            "stop that daemon first, or give this one another hub.state_dir"
        ) from None
    except OSError as exc:
        os.close(fd)
        raise StateUnusableError(f"cannot lock {path}: {exc.strerror or exc}") from exc
    with contextlib.suppress(OSError):  # the PID is for messages only; the lock is what counts
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return StateLock(path, fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
