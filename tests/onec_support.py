"""Shared by the 1C connector tests: a connector wired to an emulator on a loopback port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from pydantic import SecretStr

from daemon.onec.connector import OneCConnector
from daemon.onec.settings import OneCSettings
from daemon.sandbox.onec_emulator import OneCSandbox, run_onec_sandbox


@asynccontextmanager
async def connected(
    box: OneCSandbox, password: str = "sandbox", **overrides: Any
) -> AsyncIterator[OneCConnector]:
    """A connector with fast retries talking to ``box``; ``overrides`` are OneCSettings keys."""
    async with run_onec_sandbox(box) as base:
        options: dict[str, Any] = {"retry_base_s": 0.01, "retry_cap_s": 0.02, **overrides}
        settings = OneCSettings(base_url=base, username="hub", **options)  # type: ignore[arg-type]
        async with OneCConnector(settings, SecretStr(password)) as onec:
            yield onec
