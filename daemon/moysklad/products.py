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
A product row that cannot be read (not an object, no id or name) costs only its own item: it
is skipped with a ``moysklad_product_row_skipped`` warning. A broken page fails the match.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

import structlog

from daemon.model import Item, Product
from daemon.moysklad.answers import (
    Page,
    finite_number,
    is_last,
    is_uuid,
    malformed,
    read_page,
    shape,
)
from daemon.moysklad.references import filter_value
from daemon.moysklad.transport import MoySkladTransport, Query

log = structlog.get_logger(__name__)

K = TypeVar("K")  # what a product listing keeps of each row

# Keeps the request line far below the provider's 8 KB header limit once URL-encoded
# (Cyrillic triples in percent-encoding).
MAX_FILTER_CHARS = 1500
# The most products one list is paged through; a meta.size above it is refused rather than
# turned into that many requests (10^15 would mean 10^12 pages).
MAX_LISTED_ROWS = 1_000_000
PAGE_WINDOW = 16  # product pages requested together
WHAT = "GET entity/product"
ZERO = Decimal(0)
# 10^13 roubles: a "price" beyond it is garbage that МойСклад would refuse in the order,
# dead-lettering every other line with it.
MAX_PRICE_KOPECKS = Decimal(10**15)


def item_value(item: Item, match_key: str) -> str:
    if match_key == "article":
        return item.article.strip()
    if match_key == "code":
        return item.code.strip()
    return item.key.strip()


def _price(row: dict[str, Any], price_type: str) -> tuple[Decimal, str]:
    """(sale price in kopecks, "" or why it could not be read).

    No price of that type is price 0, as it always was (the order then carries 0 and the
    manager prices it in МойСклад). A price that is there but is not a finite, non-negative
    number is also 0, and the reason is returned so the caller logs it: an order must never
    carry NaN, Infinity or a number made up from text."""
    if not price_type:
        return ZERO, ""
    prices = row.get("salePrices")
    if prices is None:
        return ZERO, ""
    if not isinstance(prices, list):
        return ZERO, f"salePrices is {shape(prices)}, not a list"
    unreadable = ""
    for price in prices:
        kind = price.get("priceType") if isinstance(price, dict) else None
        name = kind.get("name") if isinstance(kind, dict) else None
        if not isinstance(price, dict) or not isinstance(name, str):
            unreadable = "salePrices has an entry without a price type name"
            continue
        if name != price_type:
            continue
        value = price.get("value", 0)
        number = finite_number(value)
        if number is None or not 0 <= number <= MAX_PRICE_KOPECKS:
            return ZERO, f"the {price_type!r} price is {shape(value)}, not a price"
        return number, ""
    return ZERO, unreadable


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
        check = self._candidate

        def keep(rows: list[Any]) -> list[tuple[str, _Candidate]]:
            # Each page's rows become candidates as it arrives; the rows themselves go.
            return [hit for row in rows if (hit := check(row, wanted, price_type))]

        hits: list[tuple[str, _Candidate]] = []
        read = 0
        queries: list[Query] = [{}]
        if len(wanted) <= self._lookup_max:
            queries = [
                {"filter": chunk} for chunk in filter_chunks(self._match_key, sorted(wanted))
            ]
        for query in queries:
            kept, sent = await self._list(query, keep)
            hits.extend(kept)
            read += sent
        index: dict[str, list[_Candidate]] = {}
        for value, matching in hits:
            index.setdefault(value, []).append(matching)
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
            products_read=read,
        )
        return matched

    def _candidate(
        self, row: Any, wanted: set[str], price_type: str
    ) -> tuple[str, _Candidate] | None:
        """(match value, candidate) for a product row that matches a wanted item.

        A broken row costs only its own item: it is skipped with a warning saying why, since
        matching the item to a product with no usable id or name would order garbage."""
        if not isinstance(row, dict):
            _skipped(f"the row is {shape(row)}, not an object")
            return None
        raw = row.get(self._match_key)
        if raw is None:
            return None  # the product has no value for the match key (optional fields)
        if not isinstance(raw, str):
            product_id = row.get("id") if is_uuid(row.get("id")) else None
            _skipped(f"{self._match_key} is {shape(raw)}, not text", product_id=product_id)
            return None
        value = raw.strip()
        if value not in wanted:
            return None
        product_id = row.get("id")
        if not is_uuid(product_id):
            _skipped(f"id is {shape(product_id)}, not a МойСклад id", value=value)
            return None
        name = row.get("name")
        if not isinstance(name, str):
            _skipped(f"name is {shape(name)}, not text", value=value, product_id=product_id)
            return None
        price, problem = _price(row, price_type)
        if problem:
            log.warning(
                "moysklad_product_price_unreadable",
                reason=problem,
                match_key=self._match_key,
                value=value,
                product_id=product_id,
                price_kopecks=str(price),
            )
        return value, _Candidate(str(product_id), name, price)

    async def _list(
        self, query: Query, keep: Callable[[list[Any]], list[K]]
    ) -> tuple[list[K], int]:
        """What ``keep`` keeps of every row of ``entity/product`` for ``query`` (each page's rows
        as they arrive; ``_candidate`` checks them), and how many rows were read.

        ``meta.size`` plans the work but is never trusted with it: a claim above
        ``MAX_LISTED_ROWS`` is refused outright, pages go out ``PAGE_WINDOW`` at a time (the
        rate limiter decides how many actually run at once), and the list ends at the first
        page that ``is_last`` accepts, so a page that lost rows fails the match instead of
        quietly leaving products out."""
        limit = self._page_size
        first = await self._page(query, 0, keep)
        kept = list(first.rows)
        read = first.count
        last = is_last(first, 0, limit, WHAT)
        size = first.size
        next_page = 1
        while not last:
            # Not last means the latest page's own size promises rows beyond next_page*limit,
            # so every pass asks for at least one page and next_page stays under the cap.
            window = range(next_page, min(-(-size // limit), next_page + PAGE_WINDOW))
            try:
                async with asyncio.TaskGroup() as group:
                    tasks = [
                        group.create_task(self._page(query, page * limit, keep)) for page in window
                    ]
            except ExceptionGroup as failed:
                # Callers split on transient/permanent, so they get the first page's own error.
                raise first_leaf(failed) from None
            for page_number, task in zip(window, tasks, strict=True):
                page = task.result()
                kept.extend(page.rows)
                read += page.count
                size = page.size
                last = is_last(page, page_number * limit, limit, WHAT)
                if last:
                    break
            next_page = window.stop
        return kept, read

    async def _page(self, query: Query, offset: int, keep: Callable[[list[Any]], list[K]]) -> Page:
        """One page, its rows already turned into what ``keep`` keeps (``Page.count`` still
        says how many rows came)."""

        def convert(answer: Any) -> Page:
            page = read_page(answer, WHAT)
            if page.size > MAX_LISTED_ROWS:
                raise malformed(
                    WHAT,
                    f"meta.size claims {page.size} products, more than the {MAX_LISTED_ROWS} "
                    "the hub pages through",
                )
            return Page(keep(page.rows), page.size, sent=len(page.rows))

        page: Page = await self._transport.get(
            "entity/product", {**query, "limit": self._page_size, "offset": offset}, convert=convert
        )
        return page


def _skipped(reason: str, **context: Any) -> None:
    log.warning("moysklad_product_row_skipped", reason=reason, **context)
