"""``OneCConnector``: the hub's ``OneCPort`` over the UT 11 standard OData interface.

::

    async with OneCConnector(settings, password) as onec:
        warehouses = await onec.resolve_warehouses(["Магазин Центральный", "Бестужевых"])
        items, norms, stock = await asyncio.gather(
            onec.read_items(), onec.read_norms(keys), onec.read_free_stock(keys))

The connector owns one ``aiohttp.ClientSession``. ``$metadata`` is read once, on first use (and
again on ``check``), to pick the UT 11.4/11.5 dialect and to verify that every object the hub
uses is published. Reads issued concurrently share ``settings.max_concurrency``.

Only the norms and the writes need the dialect. The other reads go out together with the
``$metadata`` request (a real UT's is ~17 MB and takes seconds) but return only once the
publication is verified, and when the publication is incomplete, its verification's message —
naming what to add to the OData composition — is the error, not the 404 a read got.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Sequence
from decimal import Decimal
from types import TracebackType
from typing import Any, TypeVar

import structlog
from pydantic import SecretStr

from daemon.errors import ConnectorError, PermanentError
from daemon.model import (
    EMPTY_GUID,
    DeliveredDocument,
    Item,
    Norm,
    TransferOrderDocument,
    Warehouse,
)
from daemon.onec import catalogs, open_transfers, transfers
from daemon.onec.answers import SYSTEM
from daemon.onec.conditions import ConditionForms, read_balance
from daemon.onec.metadata import (
    STOCK,
    OneCSchema,
    ServiceMetadata,
    detect_schema,
    parse_metadata,
    types_to_keep,
    verify_published,
)
from daemon.onec.norms import read_norms
from daemon.onec.settings import OneCSettings
from daemon.onec.stock import read_free_stock, warehouse_condition
from daemon.onec.transport import ODataTransport, since, task_group
from daemon.ports import CheckResult, OpenTransferLine

log = structlog.get_logger(__name__)

T = TypeVar("T")


class OneCConnector:
    """Implements ``daemon.ports.OneCPort``."""

    def __init__(self, settings: OneCSettings, password: SecretStr | None) -> None:
        self._settings = settings
        self._transport = ODataTransport(settings, password)
        # What the server showed it takes, kept for the life of the process.
        self._conditions = ConditionForms(settings.condition_form)
        self._schema: OneCSchema | None = None
        # The one $metadata read in flight, shared by every caller that needs it meanwhile.
        self._loading: asyncio.Task[OneCSchema] | None = None
        self._context: transfers.OrderContext | None = None

    def __repr__(self) -> str:
        return f"OneCConnector(base_url={str(self._settings.base_url)!r})"

    async def __aenter__(self) -> OneCConnector:
        await self._transport.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        loading, self._loading = self._loading, None
        if loading is not None:
            loading.cancel()  # its callers are gone; nothing else may outlive the session
            await asyncio.wait([loading])
            if not loading.cancelled():
                loading.exception()  # seen by its callers, or they are gone: no one to tell
        await self._transport.close()

    @property
    def request_count(self) -> int:
        """HTTP requests sent so far (benchmarks compare it with the minimum)."""
        return self._transport.request_count

    # -- $metadata -------------------------------------------------------------------------

    async def _fetch_metadata(self) -> ServiceMetadata:
        started = time.monotonic()
        # XML only: the guide says a JSON $metadata is not supported.
        body = await self._transport.get(
            self._transport.url("$metadata"), what="$metadata", accept="application/xml"
        )
        meta = parse_metadata(body, types_to_keep())
        log.info(
            "onec_metadata_loaded",
            entity_sets=len(meta.entity_sets),
            bytes=len(body),
            elapsed_s=since(started),
        )
        return meta

    async def _load_schema(self) -> OneCSchema:
        meta = await self._fetch_metadata()
        schema = detect_schema(meta, self._settings.ut_version)
        verify_published(meta, schema)
        log.info("onec_version", version=schema.version, detected=schema.detected)
        self._schema = schema
        return schema

    def _start_loading(self) -> asyncio.Task[OneCSchema]:
        """The $metadata read in flight, or a new one (the last one ended, or failed)."""
        if self._loading is None or self._loading.done():
            self._loading = asyncio.create_task(self._load_schema(), name="onec-metadata")
        return self._loading

    async def load_metadata(self, *, refresh: bool = False) -> OneCSchema:
        """The UT dialect, from ``$metadata`` read once and cached; PermanentError naming what
        is missing from the OData composition."""
        if self._schema is not None and not refresh:
            return self._schema
        # Shielded: a caller cancelled does not cancel the read the others wait for.
        return await asyncio.shield(self._start_loading())

    async def _published(self, read: Coroutine[Any, Any, T]) -> T:
        """``read``'s result, sent alongside the $metadata read when that has not been done,
        and returned once the publication is verified. An incomplete publication is the error
        even when ``read`` failed first (on an unpublished set 1C answers a bare 404)."""
        if self._schema is not None:
            return await read
        loading = self._start_loading()
        try:
            async with task_group() as group:
                result = group.create_task(read)
                group.create_task(self.load_metadata())
        except ConnectorError:
            # Whichever failed first: the verification's own error, when there is one, says
            # what to do about it.
            await asyncio.shield(loading)
            raise
        return result.result()

    # -- reads -----------------------------------------------------------------------------

    async def resolve_warehouses(self, names: Sequence[str]) -> dict[str, Warehouse]:
        return await self._published(
            catalogs.resolve_warehouses(
                self._transport, names, self._settings.warehouse_keys, self._transport.limits
            )
        )

    async def read_items(self) -> list[Item]:
        return await self._published(catalogs.read_items(self._transport))

    async def read_norms(self, warehouse_keys: Sequence[str]) -> dict[tuple[str, str], Norm]:
        schema = await self.load_metadata()
        return await read_norms(
            self._transport,
            schema,
            warehouse_keys,
            page_size=self._settings.page_size,
            limits=self._transport.limits,
        )

    async def read_free_stock(
        self, warehouse_keys: Sequence[str]
    ) -> dict[tuple[str, str], Decimal]:
        return await self._published(
            read_free_stock(self._transport, self._conditions, warehouse_keys)
        )

    async def read_open_transfers(self, receiver_keys: Sequence[str]) -> list[OpenTransferLine]:
        return await self._published(
            open_transfers.read_open_transfers(self._transport, self._conditions, receiver_keys)
        )

    # -- writes ----------------------------------------------------------------------------

    async def _order_context(self, schema: OneCSchema) -> transfers.OrderContext:
        if self._context is None:
            organization = await catalogs.resolve_organization(
                self._transport, self._settings.organization
            )
            priority = None
            if schema.has_priority:
                priority = await catalogs.resolve_priority(self._transport, self._settings.priority)
            self._context = transfers.OrderContext(organization, priority)
        return self._context

    async def deliver_transfer_order(
        self, doc: TransferOrderDocument, *, look_up_first: bool
    ) -> DeliveredDocument:
        schema = await self.load_metadata()
        context = await self._order_context(schema)
        return await transfers.deliver(
            self._transport, schema, context, doc, look_up_first=look_up_first
        )

    # -- check -----------------------------------------------------------------------------

    async def check(self, warehouse_names: Sequence[str]) -> list[CheckResult]:
        """One line each: reachable, credentials, UT version, objects published, organization
        and priority, warehouses resolved, a balance read (the ``Condition`` form the server
        took, and the URL budgets). Later lines are skipped after a failure."""
        results: list[CheckResult] = []

        def line(name: str, ok: bool, detail: str) -> None:
            results.append(CheckResult(SYSTEM, name, ok, detail))

        def skip_rest(names: Sequence[str], why: str) -> list[CheckResult]:
            for name in names:
                line(name, False, f"skipped: {why}")
            return results

        steps = (
            "reachable",
            "credentials accepted",
            "UT version detected",
            "required objects published",
            "organization and priority resolved",
            "warehouses resolved",
            "balance read",
        )
        host = self._settings.base_url.host or str(self._settings.base_url)
        try:
            await self._transport.get(
                self._transport.url("", [("$format", "json")]), what="service document"
            )
        except ConnectorError as exc:
            if exc.status in (401, 403):
                line(steps[0], True, host)
                line(steps[1], False, exc.describe())
                return skip_rest(steps[2:], "credentials rejected")
            line(steps[0], False, exc.describe())
            return skip_rest(steps[1:], "1C not reachable")
        line(steps[0], True, host)
        line(steps[1], True, f"user {self._settings.username}")
        try:
            meta = await self._fetch_metadata()
        except ConnectorError as exc:
            line(steps[2], False, exc.describe())
            return skip_rest(steps[3:], "$metadata unreadable")
        schema = detect_schema(meta, self._settings.ut_version)
        line(steps[2], True, schema.describe())
        try:
            verify_published(meta, schema)
        except PermanentError as exc:
            line(steps[3], False, str(exc))
            return skip_rest(steps[4:], "objects missing")
        line(steps[3], True, "all published")
        self._schema = schema
        self._context = None
        try:
            context = await self._order_context(schema)
            detail = f"organization {context.organization[1]!r}"
            if context.priority:
                detail += f", priority {context.priority[1]!r}"
            line(steps[4], True, detail)
        except ConnectorError as exc:
            line(steps[4], False, exc.describe())
        found: dict[str, Warehouse] = {}
        try:
            found = await self.resolve_warehouses(warehouse_names)
            line(steps[5], True, ", ".join(f"{n} → {w.key}" for n, w in found.items()))
        except ConnectorError as exc:
            line(steps[5], False, exc.describe())
        line(steps[6], *await self._check_balance([w.key for w in found.values()]))
        return results

    async def _check_balance(self, warehouse_keys: Sequence[str]) -> tuple[bool, str]:
        """Read one warehouse's balance summed to one row, with what was learnt of the
        ``Condition`` form forgotten first, so the line says what the server takes now."""
        limits = self._transport.limits
        budgets = (
            f"URL budgets: {limits.url_bytes} bytes of path and query (onec.max_url_bytes), "
            f"{limits.segment_chars} characters per path segment (onec.max_path_segment_chars)"
        )
        # No warehouse resolved: the empty one still shows how the Condition is read.
        probe = (warehouse_keys[0] if warehouse_keys else EMPTY_GUID).lower()
        self._conditions.forget()
        try:
            _, rows = await read_balance(
                self._transport,
                self._conditions,
                STOCK,
                warehouse_condition(probe),
                dimensions="Склад",
                select="Склад_Key",
                what="stock balance of one warehouse",
                convert=list,
            )
        except ConnectorError as exc:
            return False, f"{exc.describe()}; {budgets}"
        others = {
            str(row.get("Склад_Key")) if isinstance(row, dict) else repr(row)
            for row in rows
            if not isinstance(row, dict) or str(row.get("Склад_Key", "")).lower() != probe
        }
        if others:
            form = self._conditions.known
            self._conditions.forget()
            return False, (
                f"1C answered with the balance of other warehouses ({', '.join(sorted(others))}): "
                f"it did not apply the Condition sent in the {form} form; pin another "
                f"onec.condition_form; {budgets}"
            )
        return True, f"Condition in the {self._conditions.describe()}; {budgets}"
