"""The emulated UT 11 publication's state and knobs: ``OneCSandbox`` (served by
``daemon.sandbox.onec_emulator``)."""

from __future__ import annotations

import asyncio
import random
from collections import Counter, OrderedDict, deque
from decimal import Decimal
from typing import Any

from daemon.sandbox.dataset import DemoDataset
from daemon.sandbox.onec_database import OneCDatabase
from daemon.sandbox.onec_documents import TransferOrders, summary
from daemon.sandbox.onec_schema import enums, render_metadata


class OneCSandbox:
    """The emulated base plus the knobs tests and benchmarks turn (all mutable at run time)."""

    def __init__(
        self,
        dataset: DemoDataset,
        *,
        username: str = "hub",
        password: str = "sandbox",
        ut_version: str = "11.5",
    ) -> None:
        self.dataset = dataset
        self.username = username
        self.password = password
        self.ut_version = ut_version
        self.db = OneCDatabase(dataset, ut_version)
        self.orders = TransferOrders(self.db)
        self.latency_s = 0.0  # added to every request
        self.balance_latency_s = 0.0  # added to every virtual-table call (they are slow)
        self.metadata_latency_s = 0.0  # added to $metadata (a real UT's: 17 MB, seconds)
        self.fault_rate = 0.0  # probability of a random 500/502/hang on any request
        self.hang_s = 2.0  # how long a "timeout" fault holds the request before dropping it
        self.drop_after_commit = 0  # the next N creating POSTs commit, then drop the connection
        self.internal_error_gets = 0  # the next N GETs get 500 code -1 (1C restarting, a lock)
        self.cold_start_s = 0.0  # the first request waits this long (1C starting a session)
        self.unpublished: set[str] = set()  # entity sets left out of the OData composition
        # How Balance(Condition='…') is read: "guide" (inner quotes as they are), "doubled"
        # (an OData string literal), "both".
        self.condition_form = "guide"
        # Balance?Condition=…&Dimensions=…: "accept" (as the guide shows for SliceLast),
        # "refuse" (400 code 14) or "ignore" (the whole table, as if no parameter was given).
        self.query_options = "accept"
        self.max_url_segment_chars: int | None = 260  # HTTP.sys UrlSegmentMaxLength; None: off
        self.max_query_string_bytes: int | None = 2048  # IIS maxQueryString; None: off
        self.request_count = 0
        self.requests_by_kind: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.raw_requests: deque[str] = deque(
            maxlen=500
        )  # "METHOD raw-path?raw-query", newest last
        self._warm = False
        self._metadata: dict[frozenset[str], bytes] = {}
        # Successful GET answers by (path+query, base generation, composition, the knobs that
        # change how a request is read): a repeated read of unchanged data is a lookup, as
        # 1C's own caches make it cheap too.
        self.answers: OrderedDict[tuple[Any, ...], tuple[str, bytes, str]] = OrderedDict()
        self.seed = 0

    @property
    def seed(self) -> int:
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        self._seed = value
        self._rng = random.Random(value)

    # -- inspection for tests --------------------------------------------------------------

    def transfer_orders(self) -> list[dict[str, Any]]:
        """Every «Заказ на перемещение» in the base, with its lines (see ``summary``)."""
        return [summary(row) for row in self.orders.all()]

    def mark_transfer_received(self, ref_key: str) -> None:
        """All lines shipped and received: nothing outstanding, goods moved, status Закрыт."""
        self.orders.receive(ref_key)

    def write_off_transfer(self, ref_key: str) -> None:
        """Closed early: nothing outstanding on any line, and no goods moved."""
        self.orders.write_off(ref_key)

    def set_transfer_outstanding(self, ref_key: str, item_key: str, quantity: Decimal) -> None:
        """Part of a line shipped: ``quantity`` of ``item_key`` is still outstanding."""
        self.orders.set_outstanding(ref_key, item_key, quantity)

    def reset_counters(self) -> None:
        self.request_count = 0
        self.requests_by_kind.clear()
        self.max_in_flight = 0
        self.raw_requests.clear()

    def metadata_xml(self) -> bytes:
        hidden = frozenset(self.unpublished)
        if hidden not in self._metadata:
            defs = [d for name, d in self.db.defs.items() if name not in hidden]
            self._metadata[hidden] = render_metadata(defs, enums(self.ut_version))
        return self._metadata[hidden]

    def published(self, name: str) -> bool:
        return name in self.db.defs and name not in self.unpublished

    # -- knobs at work ---------------------------------------------------------------------

    async def _delay(self) -> None:
        if not self._warm:
            self._warm = True
            if self.cold_start_s > 0:
                await asyncio.sleep(self.cold_start_s)
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)

    def _fault(self) -> str | None:
        if self.fault_rate > 0 and self._rng.random() < self.fault_rate:
            return self._rng.choice(("500", "502", "timeout"))
        return None
