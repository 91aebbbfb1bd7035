"""The daemon's parts, built once and handed to the control API.

``HubServices.open`` is where the adapters are constructed (the connectors with their HTTP
sessions, the run manager, the outbox processor, the scheduler); the gRPC servicer only talks to
this object, as the ``ControlledHub`` of ``daemon.control.ports``. What it reads from the
daemon that owns it (``daemon.app.Hub``) is stated as ``Host`` below, so this module never
imports ``daemon.app`` back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Protocol

import structlog

from daemon import __version__
from daemon.config import HubConfig, Secrets
from daemon.control.ports import StatusInfo
from daemon.errors import DiskFullError, NotFoundError
from daemon.model import CustomerOrderDocument, TransferOrderDocument
from daemon.moysklad.connector import MoySkladConnector
from daemon.observability.logstream import Follower, LogHub, LogRecord
from daemon.onec.connector import OneCConnector
from daemon.outbox.processor import OutboxProcessor
from daemon.ports import CheckResult
from daemon.replenishment.inputs import describe_document
from daemon.replenishment.runs import Launch, RunManager
from daemon.scheduling.scheduler import Scheduler
from daemon.store import Database
from daemon.store import outbox as outbox_store
from daemon.store import runs as run_store
from daemon.store.runs import RunRecord

_log = structlog.get_logger(__name__)

_STALE_RETRY_S = 5.0


class Host(Protocol):
    """What the services read from the daemon that owns them (``daemon.app.Hub``)."""

    @property
    def config(self) -> HubConfig:
        """The current config (a reload replaces it)."""
        ...

    @property
    def secrets(self) -> Secrets: ...

    @property
    def config_path(self) -> Path: ...

    @property
    def socket_path(self) -> Path: ...

    @property
    def started_at(self) -> float: ...

    @property
    def draining(self) -> bool: ...

    @property
    def log_hub(self) -> LogHub: ...

    async def reload(self, services: HubServices) -> tuple[bool, str, list[str]]: ...


class HubServices:
    def __init__(
        self,
        hub: Host,
        db: Database,
        onec: OneCConnector,
        moysklad: MoySkladConnector,
    ) -> None:
        self.hub = hub
        self.db = db
        self.onec = onec
        self.moysklad = moysklad
        config = hub.config
        self.outbox = OutboxProcessor(
            db,
            config.outbox,
            onec,
            moysklad,
            worker_id=f"{socket.gethostname()}:{os.getpid()}",
        )
        self.runs = RunManager(db, lambda: self.hub.config, onec, moysklad, self.outbox.wake)
        self.scheduler = Scheduler(db, config.jobs, self.launch)
        self._stale_runs: list[RunRecord] = []  # left running by an earlier hubd, disk full

    @classmethod
    async def open(cls, hub: Host, db: Database, stack: AsyncExitStack) -> HubServices:
        config = hub.config
        secrets = hub.secrets
        onec = await stack.enter_async_context(OneCConnector(config.onec, secrets.onec_password))
        moysklad = await stack.enter_async_context(
            MoySkladConnector(config.moysklad, secrets.moysklad_token, secrets.moysklad_password)
        )
        # safe only because this process holds the state lock: no live hubd owns these runs
        stale: list[RunRecord] = []
        try:
            interrupted = await run_store.fail_interrupted_runs(db, time.time())
        except DiskFullError as exc:  # a full disk must not keep hubd from serving
            stale = [r for r in await run_store.last_run_per_job(db) if r.status == "running"]
            _log.error("runs_interrupted_not_recorded", runs=[r.id for r in stale], error=str(exc))
            interrupted = []
        if interrupted:
            _log.warning("runs_interrupted_by_restart", runs=list(interrupted))
        services = cls(hub, db, onec, moysklad)
        services._stale_runs = stale
        return services

    @property
    def config(self) -> HubConfig:
        return self.hub.config

    @property
    def log_hub(self) -> LogHub:
        return self.hub.log_hub

    def start_loops(self, group: asyncio.TaskGroup) -> list[asyncio.Task[Any]]:
        self.runs.attach(group)
        loops = [
            group.create_task(self.outbox.run(), name="outbox-processor"),
            group.create_task(self.scheduler.run(), name="scheduler"),
        ]
        if self._stale_runs:
            loops.append(group.create_task(self._close_stale_runs(), name="interrupted-runs"))
        return loops

    async def _close_stale_runs(self) -> None:
        """Mark failed, once the disk takes it, the runs an earlier hubd left running: until
        then the one-running-run index holds their jobs as if they still ran."""
        while self._stale_runs:
            await asyncio.sleep(_STALE_RETRY_S)
            record = self._stale_runs[0]
            record.status, record.reason = "failed", run_store.INTERRUPTED
            record.finished_at = time.time()
            try:
                await run_store.update_run(self.db, record)
            except DiskFullError:
                continue
            self._stale_runs.pop(0)
            _log.warning("runs_interrupted_by_restart", runs=[record.id])

    async def stop_runs(self) -> None:
        """Shutdown: refuse new runs, cancel the running ones and wait for them to end."""
        await self.runs.stop()

    def close_watchers(self) -> None:
        self.runs.close_watchers()

    def wake_outbox(self) -> None:
        self.outbox.wake()

    async def launch(self, job: str, trigger: str, fire_id: int | None) -> Launch:
        """The scheduler's way to start a run: the same single-flight rule as hubctl run."""
        return await self.runs.trigger(job, trigger=trigger, fire_id=fire_id)

    def apply_config(self, new: HubConfig, changed: list[str]) -> None:
        """Apply a reloaded config: logging level and schedules now; connection settings,
        the socket and the state directory need a restart (said in the log)."""
        if "logging.level" in changed:
            logging.getLogger().setLevel(new.logging.level.upper())
        if any(key.startswith("jobs.") for key in changed):
            self.scheduler.reload(new.jobs)
        needs_restart = [
            key
            for key in changed
            if key.split(".")[0] in ("onec", "moysklad", "control", "hub", "outbox")
            and key != "hub.max_database_mb"  # applied by Hub.reload
        ]
        if needs_restart:
            _log.warning("config_change_needs_restart", keys=needs_restart)

    async def reload_config(self) -> tuple[bool, str, list[str]]:
        return await self.hub.reload(self)

    # ---- status, logs, checks ---------------------------------------------------------------

    async def status(self) -> StatusInfo:
        return StatusInfo(
            version=__version__,
            pid=os.getpid(),
            started_at=self.hub.started_at,
            uptime_s=time.time() - self.hub.started_at,
            config_path=str(self.hub.config_path),
            database_path=str(self.db.path),
            socket_path=str(self.hub.socket_path),
            draining=self.hub.draining,
            outbox_depth={
                k: v for k, v in (await outbox_store.depth_by_state(self.db)).items() if v
            },
            last_runs=await run_store.last_run_per_job(self.db),
            connectors={"moysklad": self.moysklad.health()},
            storage=self.db.health.status(),
        )

    async def logs(
        self, *, last: int, min_level: str, run_id: str
    ) -> tuple[list[LogRecord], Follower]:
        return await self.hub.log_hub.history_then_follow(
            self.db, last=last, min_level=min_level, run_id=run_id
        )

    async def check_connections(self) -> list[CheckResult]:
        names: list[str] = []
        for target in self.config.replenishment.targets:
            for name in (target.warehouse, *target.donors):
                if name not in names:
                    names.append(name)
        onec, moysklad = await asyncio.gather(self.onec.check(names), self.moysklad.check())
        return [*onec, *moysklad]

    async def outbox_payload_summary(self, outbox_id: int) -> str:
        row = await self.db.fetchone(
            "SELECT kind, payload_json FROM outbox WHERE id = ?", (outbox_id,)
        )
        if row is None:
            raise NotFoundError(f"no outbox entry with id {outbox_id}")
        if row[0] == "onec_transfer_order":
            return describe_document(TransferOrderDocument.model_validate_json(row[1]))
        return describe_document(CustomerOrderDocument.model_validate_json(row[1]))
