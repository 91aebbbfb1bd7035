"""The composition root and lifecycle of ``hubd run``.

``Hub.serve()`` builds every adapter (database, log hub, connectors, run manager, outbox
processor, scheduler, gRPC server), hands them to the parts that need them, runs every long-lived
task in one TaskGroup, and shuts down in a fixed, time-boxed order:

1. tell systemd STOPPING, set health NOT_SERVING, refuse new triggers (draining);
2. end log streams and run watchers;
3. stop the gRPC server with grace;
4. cancel the loops (scheduler, outbox, watchdog), which finish or abandon their current item;
5. flush the log history, close the connectors' sessions, close the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, TextIO

import structlog

from daemon import __version__
from daemon.config import (
    HubConfig,
    Secrets,
    load_config,
    load_secrets,
    resolve_socket_path,
    resolve_state_dir,
)
from daemon.control.server import ControlServer
from daemon.control.service import HubControlService
from daemon.errors import ConfigError, HubError
from daemon.hardening import preflight
from daemon.observability.logs import SecretRedactor, configure_logging
from daemon.observability.logstream import LogHub
from daemon.observability.sdnotify import DatabaseProbe, Notifier, watchdog_interval
from daemon.services import HubServices
from daemon.statelock import acquire_state_lock
from daemon.store import Database, open_database

_log = structlog.get_logger(__name__)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, inner in value.items():
            flat.update(_flatten(inner, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): value}


def config_changes(old: HubConfig, new: HubConfig) -> list[str]:
    """Dotted keys whose value differs between two configs (secrets are never in them)."""
    before = _flatten(old.model_dump(mode="json"))
    after = _flatten(new.model_dump(mode="json"))
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


class Hub:
    """One running daemon."""

    def __init__(
        self,
        config_path: Path,
        config: HubConfig,
        *,
        environ: Mapping[str, str] | None = None,
        secrets: Secrets | None = None,
        log_stream: TextIO | None = None,
    ) -> None:
        self.log_stream = log_stream
        self.environ = dict(os.environ if environ is None else environ)
        self.config_path = config_path
        self.config = config
        self.secrets = secrets if secrets is not None else load_secrets(self.environ)
        self.state_dir = resolve_state_dir(config, self.environ)
        self.socket_path = resolve_socket_path(config, self.environ)
        self.database_path = self.state_dir / "hub.sqlite3"
        self.notifier = Notifier.from_environ(self.environ)
        self.log_hub = LogHub()
        self.redactor = SecretRedactor(self.secrets.values())
        self.started_at = time.time()
        self.stop_requested = asyncio.Event()
        self.reload_requested = asyncio.Event()
        self.draining = False

    # ---- lifecycle --------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop_requested.set)
        loop.add_signal_handler(signal.SIGINT, self.stop_requested.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload_requested.set)

    async def serve(self) -> int:
        configure_logging(
            level=self.config.logging.level,
            fmt=self.config.logging.format,
            redactor=self.redactor,
            hub=self.log_hub,
            stream=self.log_stream,
        )
        self.log_hub.bind_loop()
        self._install_signal_handlers()
        _log.info(
            "hub_starting", version=__version__, config=str(self.config_path), pid=os.getpid()
        )
        preflight(self.config, self.secrets, self.socket_path)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # before anything opens, migrates or "recovers" the database another hubd may be using
        state_lock = acquire_state_lock(self.state_dir)
        db = await open_database(self.database_path, max_size_mb=self.config.hub.max_database_mb)
        try:
            async with AsyncExitStack() as stack:
                services = await HubServices.open(self, db, stack)
                server = ControlServer(
                    HubControlService(services),
                    self.config.control,
                    self.socket_path,
                    grpc_token=(
                        self.secrets.grpc_token.get_secret_value()
                        if self.secrets.grpc_token
                        else None
                    ),
                )
                await server.start()
                async with asyncio.TaskGroup() as group:
                    writer = group.create_task(
                        self.log_hub.run_history_writer(
                            db, retention_days=self.config.logging.retention_days
                        ),
                        name="log-history-writer",
                    )
                    loops = services.start_loops(group)
                    watchdog = group.create_task(self._watchdog(db), name="watchdog")
                    reloader = group.create_task(self._reload_on_signal(services), name="reload")
                    self.notifier.ready(f"serving on {self.socket_path}")
                    _log.info("hub_ready", socket=str(self.socket_path), db=str(db.path))
                    await self.stop_requested.wait()
                    await self._shutdown(server, services, [*loops, watchdog, reloader])
                    # the history writer flushes and ends last, after everything else logged
                    writer.cancel()
        finally:
            await db.close()
            self.notifier.close()
            state_lock.release()
        _log.info("hub_stopped")
        return 0

    async def _shutdown(
        self, server: ControlServer, services: HubServices, loops: list[asyncio.Task[Any]]
    ) -> None:
        budget = self.config.hub.shutdown_timeout_s
        _log.info("hub_stopping", budget_s=budget)
        self.notifier.stopping()
        self.draining = True
        try:
            async with asyncio.timeout(budget):
                await server.set_draining()
                # runs end first ("stopped by shutdown"), so their watchers get "finished"
                await services.stop_runs()
                self.log_hub.close_followers()
                services.close_watchers()
                await server.stop(grace_s=min(5.0, budget / 3))
                for task in loops:
                    task.cancel()
                # asyncio.wait, not gather: when the budget ends, waiting stops at once
                # instead of waiting for tasks that are slow to end (a write stuck on a lock)
                await asyncio.wait(loops)
        except TimeoutError:
            _log.error("hub_shutdown_timed_out", budget_s=budget)
            self.log_hub.close_followers()
            services.close_watchers()
            for task in loops:
                task.cancel()
            await server.stop(grace_s=0)

    async def _watchdog(self, db: Database) -> None:
        """Ping systemd's watchdog while the daemon can still do its work: a database that
        does not answer a trivial query within the interval (a frozen or stuck disk holds
        every write, run and delivery) withholds the ping, so systemd restarts the daemon."""
        interval = watchdog_interval(self.environ)
        if interval is None or not self.notifier.enabled:
            return
        probe = DatabaseProbe(db)
        try:
            while True:
                if await probe.answers(timeout_s=interval):
                    self.notifier.watchdog()
                await asyncio.sleep(interval)
        finally:
            probe.close()

    async def _reload_on_signal(self, services: HubServices) -> None:
        while True:
            await self.reload_requested.wait()
            self.reload_requested.clear()
            await self.reload(services)

    async def reload(self, services: HubServices) -> tuple[bool, str, list[str]]:
        """Re-read the config file; a bad new config is refused and the old one stays."""
        self.notifier.reloading()
        try:
            try:
                new = load_config(self.config_path)
            except ConfigError as exc:
                _log.error("config_reload_refused", error=str(exc))
                return False, str(exc), []
            changed = config_changes(self.config, new)
            if "hub.max_database_mb" in changed:
                await services.db.set_size_limit(new.hub.max_database_mb)
            self.secrets = load_secrets(self.environ)
            self.redactor.set_secrets(self.secrets.values())
            # logged before applying, so a new, higher log level cannot hide this line
            _log.info("config_reloaded", changed=changed)
            services.apply_config(new, changed)
            self.config = new
            return True, "", changed
        finally:
            self.notifier.ready(f"serving on {self.socket_path}")


def run_daemon(config_path: Path) -> int:
    """``hubd run``: load the config (exit 78 on errors), then serve until stopped."""
    config = load_config(config_path)
    # Whatever the caller's umask, the database, its WAL and any file hubd writes are not for
    # others (0640 at most); systemd's UMask=0007 is narrowed the same way.
    os.umask(os.umask(0o027) | 0o027)
    hub = Hub(config_path, config)
    try:
        return asyncio.run(hub.serve())
    except* HubError as group:
        raise group.exceptions[0] from None
    finally:
        with contextlib.suppress(Exception):
            structlog.contextvars.clear_contextvars()
