"""systemd's notify protocol in pure Python (sd_notify(3)): one datagram per message.

Does nothing at all when ``NOTIFY_SOCKET`` is unset (not started by systemd). ``DatabaseProbe``
is what the watchdog loop asks before each ping: does the database still answer?
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Mapping
from typing import Any, Protocol

import structlog

_log = structlog.get_logger(__name__)


class Notifier:
    def __init__(self, address: str | None) -> None:
        self._address: str | None = None
        self._sock: socket.socket | None = None
        if not address:
            return
        if address.startswith("@"):  # abstract namespace socket
            address = "\0" + address[1:]
        elif not address.startswith("/"):
            _log.warning("sd_notify_unsupported_address", address=address)
            return
        self._address = address
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *lines: str) -> bool:
        if self._sock is None or self._address is None:
            return False
        try:
            self._sock.sendto("\n".join(lines).encode(), self._address)
        except OSError as exc:
            _log.warning("sd_notify_failed", error=str(exc))
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def reloading(self) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Half of ``WATCHDOG_USEC`` in seconds, or None when the watchdog is off (or not for us)."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 2 / 1_000_000


class _Queryable(Protocol):
    async def fetchone(self, sql: str) -> Any: ...


class DatabaseProbe:
    """``SELECT 1`` on the daemon's one database connection, bounded in time.

    The query waits behind whatever the connection's thread is doing, so it does not answer
    while a write hangs on a frozen disk or a lock. At most one probe is outstanding: while
    the database is stuck the next round waits for the same query instead of queueing more.
    """

    def __init__(self, db: _Queryable) -> None:
        self._db = db
        self._pending: asyncio.Task[Any] | None = None
        self._stuck_since: float | None = None

    async def answers(self, timeout_s: float) -> bool:
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._db.fetchone("SELECT 1"))
        done, _ = await asyncio.wait({self._pending}, timeout=timeout_s)
        if not done:
            return self._withhold(f"the database did not answer within {timeout_s:g} s")
        task, self._pending = self._pending, None
        error = task.exception()
        if error is not None:
            return self._withhold(f"the database failed: {error}")
        if self._stuck_since is not None:
            stuck = round(time.monotonic() - self._stuck_since, 1)
            _log.warning("watchdog_resumed", database_stuck_s=stuck)
            self._stuck_since = None
        return True

    def _withhold(self, reason: str) -> bool:
        if self._stuck_since is None:  # logged once per episode, not at every interval
            self._stuck_since = time.monotonic()
            _log.error("watchdog_withheld", reason=reason)
        return False

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
