"""МойСклад charges another weight than configured: the hub learns it from the rate headers,
paces to it, keeps 429s out of its circuit breaker, and says so (issue 20).

The drift scenarios run a smaller catalogue and a 1-second bucket (45 units per 1000 ms on both
sides) so they take seconds; ``benchmarks/bench_moysklad.py`` runs the full 20,000 products
with the real 3-second bucket and prints the same figures."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any

import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from daemon.errors import PermanentError
from daemon.model import CustomerOrderDocument, Item, OrderLine, Product, deterministic_uuid
from daemon.moysklad.connector import MoySkladConnector
from daemon.moysklad.ratelimit import RateLimiter
from daemon.sandbox.moysklad_emulator import MoySkladSandbox, run_moysklad_sandbox
from daemon.sandbox.moysklad_limits import HeaderCounts
from tests.conftest import Sandboxes
from tests.test_moysklad_support import PRODUCTS, call, connected, make_settings, raw_client

PRODUCT_COUNT = 2000
ORDER_COUNT = 50
INTERVAL_MS = 1000
MAX_429 = 5
MISSING = "0a0b0c0d-0000-11f1-8000-000000000000"


# -- the emulator's knobs --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("counts", "limit", "left"), [("requests", "11", "10"), ("units", "45", "41")]
)
async def test_emulator_reports_remaining_in_requests_or_units(
    counts: HeaderCounts, limit: str, left: str
) -> None:
    """At weight 4 one request leaves 10 of 11 requests, or 41 of 45 units."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=4)
    sandbox.remaining_counts = counts
    async with raw_client(sandbox) as (url, session):
        status, _, headers = await call(session, "GET", f"{url}entity/store")
    assert status == 200
    assert headers["X-RateLimit-Limit"] == limit
    assert headers["X-RateLimit-Remaining"] == left


async def test_emulator_changes_a_users_weight_while_running() -> None:
    """set_weight(6) makes the next request of that user cost 6 units; other users keep 4."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=4)
    sandbox.remaining_counts = "units"
    sandbox.add_user("other@bisnesmedia", "pw", token="other-token")
    other = {**_headers("other-token")}
    async with raw_client(sandbox) as (url, session):
        await call(session, "GET", f"{url}entity/store")
        sandbox.set_weight(6)
        _, _, after = await call(session, "GET", f"{url}entity/store")
        _, _, theirs = await call(session, "GET", f"{url}entity/store", headers=other)
    assert 45 - 4 - 6 <= int(after["X-RateLimit-Remaining"]) <= 45 - 4 - 6 + 1
    assert theirs["X-RateLimit-Remaining"] == "41"
    assert sandbox.units_charged == 4 + 6 + 4


def _headers(token: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {token}",
        "Accept-Encoding": "gzip",
        "Accept": "application/json;charset=utf-8",
    }


# -- the limiter on its own ------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_1049_slows_the_pace_at_once_and_room_wins_it_back_slowly() -> None:
    """A 429/1049 multiplies the pace by 1.5; answers with room bring it back over many steps."""
    # a fast bucket (45 units per 30 ms) so that waiting for budget takes no time
    limiter = RateLimiter(capacity=45, interval_s=0.03, max_in_flight=5, request_weight=4)
    async with limiter.slot(4) as permit:
        await limiter.observe(permit, 429, {"X-Lognex-Retry-After": "1"}, 1049)
    assert limiter.pace == pytest.approx(6.0)
    paces = []
    for _ in range(60):
        async with limiter.slot(4) as permit:
            room = {"X-RateLimit-Remaining": "20"}
            await limiter.observe(permit, 200, room, None)
        paces.append(limiter.pace)
    assert 4.0 < paces[0] < 6.0
    assert paces[4] > 4.5  # slowly: five answers win back less than half
    assert paces[-1] == pytest.approx(4.0)


async def test_429s_in_a_minute_are_capped_below_the_providers_cut_off() -> None:
    """Once max_429_per_minute 429s fell within a minute, the next pause lasts until the
    oldest is a minute old, whatever X-Lognex-Retry-After says."""
    clock = FakeClock()
    limiter = RateLimiter(
        capacity=45, interval_s=3.0, max_in_flight=5, max_429_per_minute=3, clock=clock
    )
    pauses = []
    for _ in range(3):
        async with limiter.slot(1) as permit:
            pauses.append(await limiter.observe(permit, 429, {"X-Lognex-Retry-After": "5"}, 1049))
        clock.now += 1.0
    assert pauses[:2] == [pytest.approx(0.005), pytest.approx(0.005)]
    assert pauses[2] == pytest.approx(60.0 - 2.0)


# -- the breaker -----------------------------------------------------------------------------


async def test_429s_waited_out_do_not_count_toward_the_breaker_but_errors_still_do() -> None:
    """Four 429s on one call (budget drained elsewhere) leave a threshold-3 breaker closed and
    the call succeeds; three identical 404s then open it."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=1)
    async with connected(sandbox, circuit_threshold=3, circuit_open_s=30) as connector:
        sandbox.drain_next = 4
        page = await connector.transport.get("entity/store")
        assert page["rows"]
        assert sandbox.count_429 == 4
        assert connector.transport.circuit.state == "closed"
        for _ in range(3):
            with pytest.raises(PermanentError):
                await connector.transport.get(f"entity/organization/{MISSING}")
        assert connector.transport.circuit.state == "open"
        assert connector.transport.circuit.times_opened == 1


# -- drift: configured 1 against 4, and 4 switching to 6 ---------------------------------------


def _orders(products: list[Product]) -> list[CustomerOrderDocument]:
    documents = []
    for number in range(ORDER_COUNT):
        chosen = products[number * 20 : (number + 1) * 20]
        key = f"drift-{number}"
        documents.append(
            CustomerOrderDocument(
                idempotency_key=key,
                sync_id=deterministic_uuid(key),
                run_id="drift",
                external_code=f"hub-drift-{number}",
                description="drift",
                target_name="Магазин",
                lines=tuple(
                    OrderLine(
                        product_id=p.id,
                        item_key=f"item-{p.match_value}",
                        quantity=Decimal(1),
                        price_kopecks=p.price_kopecks,
                    )
                    for p in chosen
                ),
            )
        )
    return documents


async def _switch(sandbox: MoySkladSandbox, weight: int) -> None:
    # polled: the emulator has no hook for "an order was created"
    while len(sandbox.book.orders) < ORDER_COUNT // 2:
        await asyncio.sleep(0.005)
    sandbox.set_weight(weight)


async def _drift(
    *, configured: int, charges: int, switch_to: int | None, counts: HeaderCounts
) -> dict[str, Any]:
    catalogue = [(f"A-{n:06d}", f"Товар {n}", 1000 + n) for n in range(PRODUCT_COUNT)]
    sandbox = MoySkladSandbox(catalogue, weight=charges)
    sandbox.interval_ms = INTERVAL_MS
    sandbox.latency_s = 0.02
    sandbox.remaining_counts = counts
    items = [
        Item(key=f"item-{n:06d}", code=f"УТ-{n:08d}", article=article, name=name)
        for n, (article, name, _) in enumerate(catalogue)
    ]
    async with run_moysklad_sandbox(sandbox) as url:
        settings = make_settings(url, request_weight=configured, bucket_interval_ms=INTERVAL_MS)
        async with MoySkladConnector(settings, SecretStr("sandbox-token"), None) as connector:
            switcher = asyncio.create_task(_switch(sandbox, switch_to)) if switch_to else None
            with capture_logs() as logs:
                started = time.monotonic()
                matched = await connector.match_products(items)
                delivered = await asyncio.gather(
                    *(
                        connector.deliver_customer_order(doc, look_up_first=False)
                        for doc in _orders(list(matched.values()))
                    )
                )
                wall_s = time.monotonic() - started
            if switcher is not None:
                switcher.cancel()
            health = connector.health()
            check = {result.name: result for result in await connector.check()}
            opened = connector.transport.circuit.times_opened
    bound_s = sandbox.units_charged * INTERVAL_MS / 45 / 1000
    return {
        "sandbox": sandbox,
        "matched": len(matched),
        "delivered": delivered,
        "wall_s": wall_s,
        "bound_s": bound_s,
        "health": health,
        "check": check,
        "opened": opened,
        "differs": [e for e in logs if e["event"] == "moysklad_weight_differs"],
    }


@pytest.mark.parametrize(
    ("configured", "charges", "switch_to", "counts", "observed"),
    [
        (1, 4, None, "requests", 4),
        (1, 4, None, "units", 4),
        (4, 4, 6, "requests", 6),
        (4, 4, 6, "units", 6),
    ],
    ids=["1-vs-4-requests", "1-vs-4-units", "4-then-6-requests", "4-then-6-units"],
)
async def test_a_wrong_or_changing_weight_is_learned_and_paced_to(
    configured: int, charges: int, switch_to: int | None, counts: HeaderCounts, observed: int
) -> None:
    """Every order delivered once, ≤ 5 429s, no breaker opening, wall ≤ 1.3 × the bound of
    the real weight; the observed weight is logged once and shown in health and check."""
    result = await _drift(
        configured=configured, charges=charges, switch_to=switch_to, counts=counts
    )
    sandbox: MoySkladSandbox = result["sandbox"]
    print(
        f"\n{configured=} {charges=} {switch_to=} {counts}: 429s {sandbox.count_429}, "
        f"wall {result['wall_s']:.2f} s, bound {result['bound_s']:.2f} s, "
        f"ratio {result['wall_s'] / result['bound_s']:.3f}"
    )
    assert result["matched"] == PRODUCT_COUNT
    sync_ids = [order["syncId"] for order in sandbox.orders()]
    assert len(sync_ids) == ORDER_COUNT == len(set(sync_ids))
    assert len({d.external_id for d in result["delivered"]}) == ORDER_COUNT
    assert sandbox.count_429 <= MAX_429
    assert sandbox.count_1073 == 0
    assert result["opened"] == 0
    assert result["wall_s"] <= 1.3 * result["bound_s"]
    note = f"configured weight {configured}, МойСклад charges {observed}"
    assert result["health"]["rate_weight_observed"] == str(observed)
    assert result["health"]["weight_note"] == note
    assert note in result["check"]["rate budget"].detail
    differs = result["differs"]
    assert [(e["configured"], e["observed"]) for e in differs][-1] == (configured, observed)
    assert len(differs) == len({e["observed"] for e in differs})  # once per weight seen
    assert all(e["log_level"] == "warning" for e in differs)


async def test_a_correct_weight_is_confirmed_and_not_reported() -> None:
    """Configured 4 against 4: no warning, no note, the pace stays at 4."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=4)
    async with connected(sandbox) as connector:
        with capture_logs() as logs:
            for _ in range(16):
                await connector.transport.get("entity/store")
        health = connector.health()
    assert health["rate_weight_observed"] == "4"
    assert health["weight_note"] == ""
    assert health["rate_pace"] == "4"
    assert not [e for e in logs if e["event"] == "moysklad_weight_differs"]


# -- hubctl ----------------------------------------------------------------------------------


async def test_hubctl_status_and_check_say_configured_1_moysklad_charges_4(
    sandboxes: Sandboxes, hub_factory: Any
) -> None:
    """The demo config says weight 1, the emulator charges 4: after a run and a few checks,
    `hubctl status` and `hubctl check` both print "configured weight 1, МойСклад charges 4"."""
    sandboxes.moysklad.set_weight(4)
    hub = await hub_factory(sandboxes.config, sandboxes.socket_path, **sandboxes.env)
    await hub.wait_socket()
    run = await hub.ctl("run", "replenishment", "--follow", timeout=120)
    assert run.code == 0, run.err
    for _ in range(2):  # a few more answers to learn from
        assert (await hub.ctl("check", timeout=120)).code == 0
    check = await hub.ctl("check", timeout=120)
    status = await hub.ctl("status")
    assert await hub.stop() == 0
    assert "configured weight 1, МойСклад charges 4" in check.out
    assert "configured weight 1, МойСклад charges 4" in status.out
    assert sandboxes.moysklad.count_429 <= MAX_429
