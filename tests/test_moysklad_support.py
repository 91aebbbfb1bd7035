"""Shared setup for the МойСклад tests: the emulator on port 0 and clients pointed at it.

Holds no tests itself; the ``test_moysklad_*`` modules import from it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy
from pydantic import SecretStr

from daemon.model import CustomerOrderDocument, OrderLine, deterministic_uuid
from daemon.moysklad.connector import MoySkladConnector
from daemon.moysklad.settings import MoySkladSettings
from daemon.sandbox.moysklad_emulator import MoySkladSandbox, run_moysklad_sandbox

PRODUCTS = [
    ("A-001", "Болт М8", 1250),
    ("A-002", "Гайка М8", 300),
    ("A-003", "Шайба 8", 120),
    ("B;7", "Винт с точкой-с-запятой", 990),
]
HEADERS = {
    "Authorization": "Bearer sandbox-token",
    "Accept-Encoding": "gzip",
    "Accept": "application/json;charset=utf-8",
}


def make_settings(url: str, **overrides: Any) -> MoySkladSettings:
    values: dict[str, Any] = {
        "base_url": url,
        "organization": "ООО «Бизнесмедиа»",
        "agent": "ООО «Поставщик»",
        "store": "Основной склад",
        "retry_base_s": 0.01,
    }
    values.update(overrides)
    return MoySkladSettings.model_validate(values)


@asynccontextmanager
async def connected(
    sandbox: MoySkladSandbox,
    *,
    token: str | None = "sandbox-token",
    password: str | None = None,
    **overrides: Any,
) -> AsyncIterator[MoySkladConnector]:
    """The emulator serving ``sandbox`` and a connector using it (weights agree by default)."""
    overrides.setdefault("request_weight", sandbox.weight)
    async with run_moysklad_sandbox(sandbox) as url:
        settings = make_settings(url, **overrides)
        secret = SecretStr(token) if token else None
        word = SecretStr(password) if password else None
        async with MoySkladConnector(settings, secret, word) as connector:
            yield connector


@asynccontextmanager
async def raw_client(
    sandbox: MoySkladSandbox,
) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    """The emulator and a bare aiohttp session (no default headers of ours)."""
    async with (
        run_moysklad_sandbox(sandbox) as url,
        aiohttp.ClientSession(auto_decompress=True) as session,
    ):
        yield url, session


def order_doc(
    key: str,
    lines: Sequence[tuple[str, int | str]],
    *,
    prefix: str = "hub-",
    run_id: str = "run-1",
) -> CustomerOrderDocument:
    return CustomerOrderDocument(
        idempotency_key=key,
        sync_id=deterministic_uuid(key),
        run_id=run_id,
        external_code=f"{prefix}{run_id}-{key}",
        description=f"Пополнение магазина, прогон {run_id}",
        target_name="Магазин Центральный",
        lines=tuple(
            OrderLine(
                product_id=product_id,
                item_key=f"item-{index}",
                quantity=Decimal(str(quantity)),
                price_kopecks=Decimal(100),
            )
            for index, (product_id, quantity) in enumerate(lines)
        ),
    )


def meta_ref(url: str, kind: str, entity_id: str) -> dict[str, Any]:
    return {
        "meta": {
            "href": f"{url}entity/{kind}/{entity_id}",
            "type": kind,
            "mediaType": "application/json",
        }
    }


def order_body(sandbox: MoySkladSandbox, url: str, **extra: Any) -> dict[str, Any]:
    """A valid customerorder body for the default account."""
    product = sandbox.entity_id("product", "Болт М8")
    body: dict[str, Any] = {
        "organization": meta_ref(
            url, "organization", sandbox.entity_id("organization", "ООО «Бизнесмедиа»")
        ),
        "agent": meta_ref(
            url, "counterparty", sandbox.entity_id("counterparty", "ООО «Поставщик»")
        ),
        "positions": [
            {"quantity": 3, "price": 1250.0, "assortment": meta_ref(url, "product", product)}
        ],
    }
    body.update(extra)
    return body


async def call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    body: Any = None,
    params: dict[str, str] | None = None,
) -> tuple[int, Any, CIMultiDictProxy[str]]:
    """(status, decoded JSON or raw bytes, headers) of one request."""
    sent = dict(HEADERS if headers is None else headers)
    data = None
    if body is not None:
        sent["Content-Type"] = "application/json"
        data = json.dumps(body, ensure_ascii=False).encode()
    async with session.request(method, url, headers=sent, data=data, params=params) as response:
        raw = await response.read()
        try:
            decoded: Any = json.loads(raw) if raw else raw
        except ValueError:
            decoded = raw
        return response.status, decoded, response.headers
