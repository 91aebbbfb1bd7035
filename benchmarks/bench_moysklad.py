"""Benchmark the МойСклад connector against the emulator: 20,000 products, then 50 orders.

Run: ``.venv/bin/python benchmarks/bench_moysklad.py`` (about a minute; ``--weights 4`` for the
user-token case only, ``--no-drift`` to skip the drift scenarios). For each credential weight
(4 = user token from 2026-12-01, 1 = solution token) a fresh emulator with that weight serves
20,000 products; the connector matches 20,000 items to them (paging the product list) and
creates 50 orders of 20 positions, issued all at once the way a busy outbox would. Then the
drift scenarios: ``request_weight = 1`` configured against an emulator charging 4 (rate headers
in requests, then in units), and one whose weight switches from 4 to 6 once half the orders
exist. It prints each figure next to its reference:

- 429s received: target 0 at the correct weight, at most 5 in a drift scenario;
- wall time against the bucket-bound minimum ``units charged × 3000 ms / 45`` (at a constant
  weight: ``requests × 3000 ms / (45 / weight)``): target ratio ≤ 1.15 at the correct weight,
  ≤ 1.3 in a drift scenario (below 1 is possible: the bucket starts full, 45 units of burst);
- 1073s (parallel limit) and 415s (no gzip): target 0; the circuit breaker never opens.

Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import structlog
from pydantic import SecretStr

from daemon.model import CustomerOrderDocument, Item, OrderLine, Product, deterministic_uuid
from daemon.moysklad.connector import MoySkladConnector
from daemon.moysklad.settings import MoySkladSettings
from daemon.sandbox.moysklad_emulator import MoySkladSandbox, run_moysklad_sandbox
from daemon.sandbox.moysklad_limits import HeaderCounts

RATIO_TARGET = 1.15
DRIFT_RATIO_TARGET = 1.3
DRIFT_429_TARGET = 5
BUCKET_UNITS = 45
INTERVAL_MS = 3000


def orders_for(products: list[Product], count: int, lines: int) -> list[CustomerOrderDocument]:
    documents = []
    for number in range(count):
        chosen = products[number * lines : (number + 1) * lines]
        key = f"bench-order-{number}"
        documents.append(
            CustomerOrderDocument(
                idempotency_key=key,
                sync_id=deterministic_uuid(key),
                run_id="bench",
                external_code=f"hub-bench-{number}",
                description="bisnesmedia-hub benchmark, run bench",
                target_name="Магазин",
                lines=tuple(
                    OrderLine(
                        product_id=product.id,
                        item_key=f"item-{product.match_value}",
                        quantity=product.price_kopecks % 7 + 1,
                        price_kopecks=product.price_kopecks,
                    )
                    for product in chosen
                ),
            )
        )
    return documents


async def _switch_weight(sandbox: MoySkladSandbox, at_orders: int, weight: int) -> None:
    # polled: the emulator has no hook for "an order was created", and 5 ms is fine enough
    while len(sandbox.book.orders) < at_orders:  # noqa: ASYNC110
        await asyncio.sleep(0.005)
    sandbox.set_weight(weight)


async def measure(
    weight: int,
    product_count: int,
    order_count: int,
    latency_ms: float,
    *,
    configured: int | None = None,
    switch_to: int | None = None,
    counts: HeaderCounts = "requests",
) -> bool:
    catalogue = [(f"A-{n:06d}", f"Товар {n}", 1000 + n) for n in range(product_count)]
    sandbox = MoySkladSandbox(catalogue, weight=weight)
    sandbox.latency_s = latency_ms / 1000
    sandbox.remaining_counts = counts
    configured = weight if configured is None else configured
    drift = configured != weight or switch_to is not None
    items = [
        Item(key=f"item-{n:06d}", code=f"УТ-{n:08d}", article=article, name=name)
        for n, (article, name, _) in enumerate(catalogue)
    ]
    async with run_moysklad_sandbox(sandbox) as url:
        settings = MoySkladSettings.model_validate(
            {
                "base_url": url,
                "organization": "ООО «Бизнесмедиа»",
                "agent": "ООО «Поставщик»",
                "store": "Основной склад",
                "price_type": "Цена продажи",
                "request_weight": configured,
            }
        )
        async with MoySkladConnector(settings, SecretStr("sandbox-token"), None) as connector:
            switcher = None
            if switch_to is not None:
                switcher = asyncio.create_task(_switch_weight(sandbox, order_count // 2, switch_to))
            started = time.monotonic()
            matched = await connector.match_products(items)
            read_s = time.monotonic() - started
            documents = orders_for(list(matched.values()), order_count, 20)
            delivered = await asyncio.gather(
                *(connector.deliver_customer_order(doc, look_up_first=False) for doc in documents)
            )
            wall_s = time.monotonic() - started
            if switcher is not None:
                switcher.cancel()
            health = connector.health()
            opened = connector.transport.circuit.times_opened
    requests = sandbox.request_count
    note = health["weight_note"]
    bound_s = sandbox.units_charged * INTERVAL_MS / BUCKET_UNITS / 1000
    ratio = wall_s / bound_s
    burst = BUCKET_UNITS // weight
    steady_s = max(requests - burst, 1) * INTERVAL_MS / (BUCKET_UNITS / weight) / 1000
    created = len({document.external_id for document in delivered})
    if drift:
        charges = f"{weight}" if switch_to is None else f"{weight}, then {switch_to}"
        print(
            f"drift: configured weight {configured}, emulator charges {charges} "
            f"(rate headers in {counts}):"
        )
    else:
        print(f"weight {weight} ({'user token' if weight == 4 else 'solution token'}):")
    limit_429 = DRIFT_429_TARGET if drift else 0
    target = DRIFT_RATIO_TARGET if drift else RATIO_TARGET
    print(f"  products matched      {len(matched):>8}   (reference {product_count})")
    print(f"  orders created        {created:>8}   (reference {order_count})")
    print(f"  requests sent         {requests:>8}")
    print(f"  429s received         {sandbox.count_429:>8}   (target ≤ {limit_429})")
    print(f"  1073s received        {sandbox.count_1073:>8}   (target 0)")
    print(f"  415s received         {sandbox.count_415:>8}   (target 0)")
    print(f"  circuit opened        {opened:>8}   (target 0)")
    observed = health["rate_weight_observed"] or "-"
    print(f"  weight observed       {observed:>8}   (pace {health['rate_pace']}) {note}")
    print(f"  read phase            {read_s:>8.2f} s")
    print(f"  wall time             {wall_s:>8.2f} s")
    print(
        f"  bucket-bound minimum  {bound_s:>8.2f} s ({sandbox.units_charged} units × "
        f"{INTERVAL_MS} ms / 45)"
    )
    print(f"  ratio                 {ratio:>8.3f}   (target ≤ {target})")
    if not drift:
        print(
            f"  ratio without burst   {wall_s / steady_s:>8.3f}   (informative: the first "
            f"{burst} requests ride the full bucket)"
        )
    return (
        sandbox.count_429 <= limit_429
        and sandbox.count_1073 == 0
        and sandbox.count_415 == 0
        and opened == 0
        and ratio <= target
        and created == order_count
        and len(matched) == product_count
    )


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=int, nargs="+", default=[4, 1])
    parser.add_argument("--products", type=int, default=20_000)
    parser.add_argument("--orders", type=int, default=50)
    parser.add_argument("--latency-ms", type=float, default=20.0, help="emulated server time")
    parser.add_argument("--no-drift", action="store_true", help="skip the drift scenarios")
    args = parser.parse_args()
    # The connector logs every order; the benchmark prints only its figures.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    print(
        f"МойСклад connector vs emulator: {args.products} products, {args.orders} orders "
        f"of 20 positions, {args.latency_ms:g} ms server latency"
    )
    results = [
        await measure(weight, args.products, args.orders, args.latency_ms)
        for weight in args.weights
    ]
    if not args.no_drift:
        sizes = (args.products, args.orders, args.latency_ms)
        results.append(await measure(4, *sizes, configured=1))
        results.append(await measure(4, *sizes, configured=1, counts="units"))
        results.append(await measure(4, *sizes, switch_to=6))
        results.append(await measure(4, *sizes, configured=1, switch_to=6))
    return 0 if all(results) else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
