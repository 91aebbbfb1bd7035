"""Matching 1C items to МойСклад products, and their prices.

The match key pairs one 1C field with one product field:

=============  ===================  ==================================================
match_key      1C side              why
=============  ===================  ==================================================
article        ``Item.article``     the default; both systems keep the supplier article
code           ``Item.code``        accounts that copied 1C codes into МойСклад
externalCode   ``Item.key``         МойСклад's own 1C exchange stores the Ref_Key there
=============  ===================  ==================================================

A handful of items is looked up by filter (``article=a;article=b`` is an OR); many items are
matched by paging the whole product list, 1000 rows a request, which costs far fewer requests
than one per item. Values are compared exactly after trimming spaces. A value carried by two
products is ambiguous: the item is left unmatched (and logged) rather than ordered blindly.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import structlog

from daemon.model import Item, Product
from daemon.moysklad.references import filter_value
from daemon.moysklad.transport import MoySkladTransport, Query

log = structlog.get_logger(__name__)

# Keeps the request line far below the provider's 8 KB header limit once URL-encoded
# (Cyrillic triples in percent-encoding).
MAX_FILTER_CHARS = 1500


def item_value(item: Item, match_key: str) -> str:
    if match_key == "article":
        return item.article.strip()
    if match_key == "code":
        return item.code.strip()
    return item.key.strip()


def _price(row: dict[str, Any], price_type: str) -> Decimal:
    if not price_type:
        return Decimal(0)
    for price in row.get("salePrices") or ():
        kind = price.get("priceType") or {}
        if kind.get("name") == price_type:
            try:
                return Decimal(str(price.get("value", 0)))
            except InvalidOperation:
                return Decimal(0)
    return Decimal(0)


@dataclass(frozen=True, slots=True)
class _Candidate:
    id: str
    name: str
    price: Decimal


def filter_chunks(match_key: str, values: Iterable[str]) -> list[str]:
    """``filter`` strings ORing as many values as fit under ``MAX_FILTER_CHARS``."""
    chunks: list[str] = []
    current: list[str] = []
    length = 0
    for value in values:
        condition = f"{match_key}={filter_value(value)}"
        if current and length + len(condition) + 1 > MAX_FILTER_CHARS:
            chunks.append(";".join(current))
            current, length = [], 0
        current.append(condition)
        length += len(condition) + 1
    if current:
        chunks.append(";".join(current))
    return chunks


def first_leaf(group: ExceptionGroup[Exception]) -> Exception:
    """The first plain exception inside a (possibly nested) exception group."""
    error = group.exceptions[0]
    while isinstance(error, ExceptionGroup):
        error = error.exceptions[0]
    return error


class ProductMatcher:
    def __init__(
        self, transport: MoySkladTransport, *, match_key: str, page_size: int, lookup_max: int
    ) -> None:
        self._transport = transport
        self._match_key = match_key
        self._page_size = page_size
        self._lookup_max = lookup_max

    async def match(self, items: Sequence[Item], price_type: str) -> dict[str, Product]:
        wanted = {value for item in items if (value := item_value(item, self._match_key))}
        if not wanted:
            return {}
        if len(wanted) <= self._lookup_max:
            rows = []
            for chunk in filter_chunks(self._match_key, sorted(wanted)):
                rows.extend(await self._list({"filter": chunk}))
        else:
            rows = await self._list({})
        index: dict[str, list[_Candidate]] = {}
        for row in rows:
            value = str(row.get(self._match_key) or "").strip()
            if value in wanted:
                candidate = _Candidate(
                    str(row["id"]), str(row.get("name", "")), _price(row, price_type)
                )
                index.setdefault(value, []).append(candidate)
        matched: dict[str, Product] = {}
        ambiguous = 0
        for item in items:
            value = item_value(item, self._match_key)
            candidates = index.get(value, []) if value else []
            if len({candidate.id for candidate in candidates}) > 1:
                ambiguous += 1
                log.warning(
                    "moysklad_product_ambiguous",
                    item_key=item.key,
                    match_key=self._match_key,
                    value=value,
                    product_ids=sorted({candidate.id for candidate in candidates}),
                )
                continue
            if candidates:
                found = candidates[0]
                matched[item.key] = Product(found.id, found.name, value, found.price)
        log.info(
            "moysklad_products_matched",
            items=len(items),
            matched=len(matched),
            ambiguous=ambiguous,
            products_read=len(rows),
        )
        return matched

    async def _list(self, query: Query) -> list[dict[str, Any]]:
        """Every row of ``entity/product`` for ``query``; pages after the first run together
        (the rate limiter decides how many actually go out at once)."""
        limit = self._page_size
        first = await self._transport.get("entity/product", {**query, "limit": limit, "offset": 0})
        rows: list[dict[str, Any]] = list(first.get("rows", []))
        size = int(first.get("meta", {}).get("size", len(rows)))
        pages = math.ceil(size / limit)
        if pages <= 1:
            return rows
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(
                        self._transport.get(
                            "entity/product", {**query, "limit": limit, "offset": page * limit}
                        )
                    )
                    for page in range(1, pages)
                ]
        except ExceptionGroup as failed:
            # Callers split on transient/permanent, so they get the first page's own error.
            raise first_leaf(failed) from None
        for task in tasks:
            rows.extend(task.result().get("rows", []))
        return rows
