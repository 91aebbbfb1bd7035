"""Start-up checks and settings that keep the daemon's secrets and control socket its own.

``preflight()`` runs before the database is opened:

- no core dumps: the process holds the 1C password and the МойСклад token in memory, and a core
  file would keep them on disk (systemd sets ``LimitCORE=0`` too; outside systemd this does);
- the control socket's directory, and every directory above it, must not be writable by others
  unless sticky: whoever can write there can replace the socket with their own and collect what
  ``hubctl`` users send (``/tmp``-like sticky directories are fine: only the owner may rename);
- the TCP listener's bearer token is long enough.
"""

from __future__ import annotations

import os
import resource
import stat
from pathlib import Path

import structlog

from daemon.config import HubConfig, Secrets
from daemon.control.server import check_grpc_token
from daemon.errors import ConfigError

_log = structlog.get_logger(__name__)


def disable_core_dumps() -> bool:
    """Set the core file limit to 0 (soft and hard); False if the system refused it."""
    if resource.getrlimit(resource.RLIMIT_CORE) == (0, 0):
        return True
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (OSError, ValueError):
        return False
    return True


def unsafe_directory(path: Path) -> Path | None:
    """The first of ``path`` and its existing ancestors that others may write to without the
    sticky bit, or None."""
    for directory in (path, *path.parents):
        try:
            mode = directory.stat().st_mode
        except FileNotFoundError:
            continue  # created later by us, with our umask
        if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
            return directory
    return None


def check_socket_directory(socket_path: Path) -> None:
    """``ConfigError`` when another user could replace the control socket."""
    directory = Path(os.path.abspath(socket_path)).parent
    unsafe = unsafe_directory(directory)
    if unsafe is not None:
        raise ConfigError(
            str(socket_path),
            "control.socket_path",
            f"the directory {unsafe} is writable by others (mode "
            f"{stat.S_IMODE(unsafe.stat().st_mode):04o}, no sticky bit), so another user could "
            "replace the socket; use a directory only hubd can write, such as /run/hubd",
        )


def preflight(config: HubConfig, secrets: Secrets, socket_path: Path) -> None:
    """Every check above; raises ``ConfigError``."""
    if not disable_core_dumps():
        _log.warning("core_dumps_not_disabled", limit=resource.getrlimit(resource.RLIMIT_CORE))
    check_socket_directory(socket_path)
    token = secrets.grpc_token.get_secret_value() if secrets.grpc_token else None
    check_grpc_token(config.control, token)
