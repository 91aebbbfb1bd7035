"""``MoySkladConnector``: the hub's ``MoySkladPort`` over JSON API 1.2.

The connector speaks entities; ``transport.py`` owns the wire (headers, auth, pacing, retries,
error translation). Use it as an async context manager: it owns the HTTP session(s).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from types import TracebackType
from typing import Any

import structlog
from pydantic import SecretStr

from daemon.errors import (
    CircuitOpenError,
    ConnectorError,
    OutcomeUnknownError,
    PermanentError,
    TransientError,
)
from daemon.model import CustomerOrderDocument, DeliveredDocument, Item, Product
from daemon.moysklad.failures import SYSTEM
from daemon.moysklad.orders import (
    check_document,
    find_by_sync_id,
    order_body,
    order_ref,
    read_outstanding,
)
from daemon.moysklad.products import ProductMatcher
from daemon.moysklad.references import (
    Reference,
    check_price_type,
    read_order_states,
    resolve_entity,
)
from daemon.moysklad.settings import MoySkladSettings
from daemon.moysklad.transport import MoySkladTransport
from daemon.ports import CheckResult

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class _Targets:
    """Where the hub's orders point: resolved once per connector."""

    organization: Reference
    agent: Reference
    store: Reference | None
    state: Reference | None


class MoySkladConnector:
    """Implements ``daemon.ports.MoySkladPort``."""

    def __init__(
        self, settings: MoySkladSettings, token: SecretStr | None, password: SecretStr | None
    ) -> None:
        self._settings = settings
        self._transport = MoySkladTransport(settings, token, password)
        self._matcher = ProductMatcher(
            self._transport,
            match_key=settings.match_key,
            page_size=settings.page_size,
            lookup_max=settings.filter_lookup_max,
        )
        self._targets: _Targets | None = None
        self._price_type_checked = False
        self._resolve_lock = asyncio.Lock()

    async def __aenter__(self) -> MoySkladConnector:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._transport.close()

    @property
    def transport(self) -> MoySkladTransport:
        return self._transport

    # -- resolution --------------------------------------------------------------------------

    async def _resolve_targets(self) -> _Targets:
        async with self._resolve_lock:
            if self._targets is None:
                settings = self._settings
                transport = self._transport
                organization = await resolve_entity(
                    transport, "organization", settings.organization, "organization"
                )
                agent = await resolve_entity(transport, "counterparty", settings.agent, "agent")
                store = None
                if settings.store:
                    store = await resolve_entity(transport, "store", settings.store, "store")
                state = None
                if settings.order_state:
                    states = await read_order_states(transport, settings.final_states)
                    state = states.named(settings.order_state)
                self._targets = _Targets(organization, agent, store, state)
                log.info(
                    "moysklad_targets_resolved",
                    organization=organization.describe(),
                    agent=agent.describe(),
                    store=store.describe() if store else "",
                    state=state.describe() if state else "",
                )
            return self._targets

    async def _check_price_type(self) -> None:
        if self._settings.price_type and not self._price_type_checked:
            await check_price_type(self._transport, self._settings.price_type)
            self._price_type_checked = True

    # -- MoySkladPort ------------------------------------------------------------------------

    async def match_products(self, items: Sequence[Item]) -> dict[str, Product]:
        """Products for the items that have one, keyed by item key; unmatched items are absent."""
        await self._check_price_type()
        return await self._matcher.match(items, self._settings.price_type)

    async def read_incoming_orders(self, external_code_prefix: str) -> dict[str, Decimal]:
        """Ordered − shipped per product id on the hub's open orders (externalCode prefix)."""
        if not external_code_prefix:
            raise PermanentError(
                "an empty externalCode prefix would count every order in the account",
                system=SYSTEM,
            )
        states = await read_order_states(self._transport, self._settings.final_states)
        outstanding, open_orders = await read_outstanding(
            self._transport, external_code_prefix, states
        )
        log.info(
            "moysklad_incoming_read",
            prefix=external_code_prefix,
            open_orders=open_orders,
            products=len(outstanding),
        )
        return outstanding

    async def deliver_customer_order(
        self, doc: CustomerOrderDocument, *, look_up_first: bool
    ) -> DeliveredDocument:
        """Create the order with its deterministic syncId; a resend returns the existing order.

        ``created_now`` is False only when the lookup found the order. A plain resend that the
        server answers with the earlier order (syncId replay) cannot be told apart from a
        fresh create, so it reports True; the order still exists exactly once.
        """
        check_document(doc)
        targets = await self._resolve_targets()
        body = order_body(
            doc,
            base_url=str(self._transport.base_url),
            organization=targets.organization,
            agent=targets.agent,
            store=targets.store,
            state=targets.state,
        )
        if look_up_first:
            found = await find_by_sync_id(self._transport, doc.sync_id)
            if found is not None:
                log.info(
                    "moysklad_order_found", sync_id=doc.sync_id, order_id=found.id, name=found.name
                )
                return DeliveredDocument(external_id=found.id, number=found.name, created_now=False)
        answer = await self._transport.post("entity/customerorder", body)
        # The server said 2xx, so the order may exist even when the answer is unusable: the
        # outbox then looks it up by syncId instead of recording a made-up id or number.
        created = order_ref(
            answer, doc.sync_id, "POST entity/customerorder", kind=OutcomeUnknownError
        )
        log.info(
            "moysklad_order_created",
            sync_id=doc.sync_id,
            order_id=created.id,
            name=created.name,
            positions=len(doc.lines),
            external_code=doc.external_code,
        )
        return DeliveredDocument(external_id=created.id, number=created.name, created_now=True)

    async def check(self) -> list[CheckResult]:
        """Reachable, credentials accepted, organization/agent/store resolved, rate budget."""
        results: list[CheckResult] = []
        host = self._transport.base_url.host or ""
        try:
            employee = await self._transport.get("context/employee")
        except CircuitOpenError as exc:
            return [CheckResult(SYSTEM, "reachable", False, exc.describe()), self._budget_result()]
        except PermanentError as exc:
            if exc.status in (401, 403):
                results.append(CheckResult(SYSTEM, "reachable", True, host))
                results.append(CheckResult(SYSTEM, "credentials accepted", False, exc.describe()))
            else:
                results.append(CheckResult(SYSTEM, "reachable", False, exc.describe()))
            return [*results, self._budget_result()]
        except TransientError as exc:
            return [CheckResult(SYSTEM, "reachable", False, exc.describe()), self._budget_result()]
        results.append(CheckResult(SYSTEM, "reachable", True, host))
        results.append(CheckResult(SYSTEM, "credentials accepted", True, _who(employee)))
        settings = self._settings
        wanted = [
            ("organization", "organization", settings.organization),
            ("agent", "counterparty", settings.agent),
        ]
        if settings.store:
            wanted.append(("store", "store", settings.store))
        for label, entity, value in wanted:
            try:
                found = await resolve_entity(self._transport, entity, value, label)
            except ConnectorError as exc:
                results.append(CheckResult(SYSTEM, f"{label} resolved", False, exc.describe()))
            else:
                results.append(CheckResult(SYSTEM, f"{label} resolved", True, found.describe()))
        if settings.order_state:
            try:
                states = await read_order_states(self._transport, settings.final_states)
                state = states.named(settings.order_state)
            except ConnectorError as exc:
                results.append(CheckResult(SYSTEM, "order state resolved", False, exc.describe()))
            else:
                results.append(CheckResult(SYSTEM, "order state resolved", True, state.describe()))
        if settings.price_type:
            try:
                price_id = await check_price_type(self._transport, settings.price_type)
            except ConnectorError as exc:
                results.append(CheckResult(SYSTEM, "price type found", False, exc.describe()))
            else:
                detail = f"{settings.price_type} ({price_id})"
                results.append(CheckResult(SYSTEM, "price type found", True, detail))
        results.append(self._budget_result())
        return results

    # -- operator view -----------------------------------------------------------------------

    def _budget_result(self) -> CheckResult:
        limiter = self._transport.limiter
        weight = self._settings.request_weight
        per_interval = self._settings.bucket_units // weight
        seconds = self._settings.bucket_interval_ms / 1000
        detail = (
            f"{limiter.remaining_requests(weight)} of {per_interval} requests per {seconds:g} s "
            f"at weight {weight}"
        )
        if limiter.server_remaining is not None:
            detail += f"; server X-RateLimit-Remaining {limiter.server_remaining}"
        note = limiter.weight_note()
        if note:
            detail += f"; {note}, paced at {limiter.pace:.3g}"
        ok = limiter.paused_for_s == 0 and self._transport.circuit.state == "closed"
        return CheckResult(SYSTEM, "rate budget", ok, detail)

    def health(self) -> dict[str, str]:
        """Circuit state (closed/open/half_open), why and until when; remaining rate budget;
        the weight МойСклад is seen to charge when it differs from the configured one."""
        limiter = self._transport.limiter
        weight = self._settings.request_weight
        view = self._transport.circuit.health()
        view.update(
            {
                "rate_weight": str(weight),
                "rate_weight_observed": ""
                if limiter.observed_weight is None
                else str(limiter.observed_weight),
                "rate_pace": f"{limiter.pace:.3g}",
                "weight_note": limiter.weight_note(),
                "rate_remaining": str(limiter.remaining_requests(weight)),
                "rate_limit": f"{self._settings.bucket_units // weight} requests per "
                f"{self._settings.bucket_interval_ms} ms",
                "server_remaining": ""
                if limiter.server_remaining is None
                else str(limiter.server_remaining),
                "paused_ms": str(round(limiter.paused_for_s * 1000)),
                "in_flight": str(limiter.in_flight),
                "requests_sent": str(self._transport.requests_sent),
                "rate_limited_total": str(limiter.count_429),
            }
        )
        return view


def _who(employee: Any) -> str:
    if not isinstance(employee, dict):
        return ""
    uid = next(
        (v for v in (employee.get("uid"), employee.get("name")) if isinstance(v, str) and v), ""
    )
    return f"user {uid}" if uid else ""
