"""A protocol-faithful emulator of МойСклад JSON API 1.2 (``/api/remap/1.2/``), on aiohttp.web.

It reproduces what the hub's connector relies on, per section 7 of the МойСклад reference:
415 with an empty body without ``Accept-Encoding: gzip`` (checked before auth); gzip answers
(sometimes plain, on request); Bearer and Basic auth with 401/1056 and ``/security/token``
revoking earlier tokens; a weighted per-user bucket with the five rate headers on every answer,
429/1049 when exhausted and 429/1073 over 5 requests in flight; the provider's cut-off after
too many 429s or identical failures; ``{"errors": [...]}`` bodies with the documented codes;
organization, counterparty, store, product and customerorder with filters, ``search``, paging
(``size``/``limit``/``offset``/``nextHref``), ``expand`` (only with ``limit ≤ 100``), order
metadata states and ``syncId`` replay. Hrefs are built from the URL the client called, and a
meta href naming another host is refused with 400/1059.

Knobs (attributes of ``MoySkladSandbox``): ``latency_s``, ``fault_rate`` (500/1999, 502 nginx
HTML, 503/1074), ``drop_after_commit`` (the next N creating POSTs commit, then the connection
drops), ``plain_rate`` (share of uncompressed answers), ``weight`` (``set_weight`` changes it
per user while running), ``drain_next`` (the next N requests find the budget drained, so they
get 429/1049), ``remaining_counts`` (rate headers in requests or units), ``seed``,
``bucket_mode``, ``unique_names``, ``ban_after``. Counters: ``request_count``, ``count_415``,
``count_401``, ``count_429``, ``count_1073``, ``units_charged``, ``faults_injected``,
``drops``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from daemon.sandbox.moysklad_account import MoySkladSandbox
from daemon.sandbox.moysklad_protocol import SANDBOX_KEY, protocol
from daemon.sandbox.moysklad_routes import add_routes

__all__ = ["MoySkladSandbox", "make_moysklad_app", "run_moysklad_sandbox"]


def make_moysklad_app(sandbox: MoySkladSandbox) -> web.Application:
    app = web.Application(middlewares=[protocol], client_max_size=20 * 1024 * 1024)
    app[SANDBOX_KEY] = sandbox
    add_routes(app)
    return app


@asynccontextmanager
async def run_moysklad_sandbox(
    sandbox: MoySkladSandbox, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Serve ``sandbox``; yields the base URL ending in ``/api/remap/1.2/``."""
    runner = web.AppRunner(make_moysklad_app(sandbox), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        yield f"http://{bound_host}:{bound_port}/api/remap/1.2/"
    finally:
        await runner.cleanup()
