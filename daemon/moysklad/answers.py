"""Reading МойСклад answers without trusting their shape.

Every reader takes a decoded 2xx body through these checks before using it, so a missing key,
a ``null`` list, a count that is not a count or a number that is not a number becomes one
``daemon.errors`` exception naming the request and what was wrong, never a ``KeyError``,
``TypeError`` or ``InvalidOperation`` from deep inside a loop.

Which class a malformed answer raises:

- a read (``GET``) raises ``TransientError``. Answers that parse but lack the documented shape
  come from proxies, balancers and half-rolled-out releases far more often than from a lasting
  change; the next attempt usually reads fine. A read fails its run either way, and the one
  read the outbox makes (the lookup by ``syncId`` before a resend) must be retried, never
  dead-lettered, because the order it looks for may exist;
- the answer to the order create raises ``OutcomeUnknownError`` (the caller passes it in): the
  order may exist, so the outbox looks it up by ``syncId`` before sending again.

Whether one bad row may be skipped is the caller's decision: a product row can be (it costs
only its own item), an order position or state cannot (it would change a total).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from daemon.errors import ConnectorError, TransientError
from daemon.moysklad.failures import SYSTEM

UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

ErrorKind = type[ConnectorError]


def shape(value: Any) -> str:
    """A short description of ``value`` for an error message (never the whole value)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int):
        return "a negative number" if value < 0 else "a whole number"
    if isinstance(value, float):
        return "a number" if math.isfinite(value) else f"{value!r}"
    if isinstance(value, str):
        return f"text {value[:24]!r}" if value else "empty text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def malformed(what: str, detail: str, *, kind: ErrorKind = TransientError) -> ConnectorError:
    """The error for an answer to ``what`` (e.g. ``GET entity/product``) that is not usable."""
    return kind(f"{what}: malformed answer: {detail}", system=SYSTEM)


def as_object(
    value: Any, what: str, where: str, *, kind: ErrorKind = TransientError
) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    raise malformed(what, f"{where} is {shape(value)}, not an object", kind=kind)


def as_list(value: Any, what: str, where: str, *, kind: ErrorKind = TransientError) -> list[Any]:
    if isinstance(value, list):
        return value
    raise malformed(what, f"{where} is {shape(value)}, not a list", kind=kind)


def as_text(value: Any, what: str, where: str, *, kind: ErrorKind = TransientError) -> str:
    if isinstance(value, str):
        return value
    raise malformed(what, f"{where} is {shape(value)}, not text", kind=kind)


def is_uuid(value: Any) -> bool:
    return isinstance(value, str) and UUID.match(value) is not None


def as_uuid(value: Any, what: str, where: str, *, kind: ErrorKind = TransientError) -> str:
    if is_uuid(value):
        return str(value)
    raise malformed(what, f"{where} is {shape(value)}, not a МойСклад id", kind=kind)


def as_count(value: Any, what: str, where: str) -> int:
    """A non-negative whole number, as ``meta.size`` must be."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise malformed(what, f"{where} is {shape(value)}, not a count")


def finite_number(value: Any) -> Decimal | None:
    """``value`` as a Decimal when it is a finite JSON number, else None (text, null, NaN…)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float) and math.isfinite(value):
        # str() gives the shortest text that reads back as the same float: 2.5, not 2.4999…
        return Decimal(str(value))
    return None


def as_quantity(value: Any, what: str, where: str) -> Decimal:
    """A finite, non-negative number (a quantity or a shipped amount)."""
    number = finite_number(value)
    if number is None or number < 0:
        raise malformed(what, f"{where} is {shape(value)}, not a quantity")
    return number


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list: its rows (not yet checked one by one, or already turned into what
    the reader keeps) and the claimed total. ``sent`` is how many rows the server sent, when
    ``rows`` no longer says it."""

    rows: list[Any]
    size: int
    sent: int | None = None

    @property
    def count(self) -> int:
        """Rows the server sent on this page."""
        return len(self.rows) if self.sent is None else self.sent


def read_page(document: Any, what: str) -> Page:
    """The ``rows`` and ``meta.size`` of a list answer; both must be there and well-typed."""
    body = as_object(document, what, "the answer")
    rows = as_list(body.get("rows"), what, "rows")
    meta = as_object(body.get("meta"), what, "meta")
    return Page(rows, as_count(meta.get("size"), what, "meta.size"))


def is_last(page: Page, offset: int, limit: int, what: str) -> bool:
    """Whether ``page``, asked for at ``offset`` with ``limit``, ends its list.

    A full page ends it when its own ``meta.size`` says nothing follows. A short page ends it
    only when ``meta.size`` agrees: a short page claiming more rows to come has lost some
    (a truncated list, a dropped row), and reading it as the end would silently leave them
    out. A page with more rows than its own total is as inconsistent."""
    sent = page.count
    end = offset + sent
    if sent and end > page.size:
        raise malformed(what, f"{end} rows up to offset {offset} but meta.size is {page.size}")
    if sent >= limit:
        return end >= page.size
    if end < page.size:
        raise malformed(
            what,
            f"{sent} rows at offset {offset} (limit {limit}) although meta.size is {page.size}",
        )
    return True
