"""The launcher contract: how the scheduler starts a run without knowing the run manager.

The composition root hands the scheduler a ``Launcher`` (the run manager's trigger, with the
same single-flight rule as ``hubctl run``); ``FireRunner`` calls it for each claimed fire and
watches the ``LaunchResult`` until the run ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Protocol


class LaunchedRun(Protocol):
    """The run a launch started or found running. ``status`` is final once ``done`` is set."""

    @property
    def id(self) -> str: ...

    @property
    def status(self) -> str:
        """running | succeeded | failed"""
        ...


class LaunchResult(Protocol):
    """What a launch got: a new run (``already_running`` false) or the one already going."""

    @property
    def run(self) -> LaunchedRun: ...

    @property
    def already_running(self) -> bool: ...

    @property
    def done(self) -> asyncio.Event:
        """Set when that run has ended."""
        ...


class Launcher(Protocol):
    """Starts a run of ``job`` unless one is running; trigger is "schedule" or "catch_up"."""

    def __call__(self, job: str, trigger: str, fire_id: int | None) -> Awaitable[LaunchResult]: ...
