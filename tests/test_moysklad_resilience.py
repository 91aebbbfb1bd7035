"""The connector under pressure: 429 storms, the parallel limit, dropped connections after
commit, permanent 4xx, 5xx, timeouts, the circuit breaker and connection recycling."""

from __future__ import annotations

import asyncio
import time

import pytest
from structlog.testing import capture_logs

from daemon.errors import CircuitOpenError, OutcomeUnknownError, PermanentError, TransientError
from daemon.sandbox.moysklad_emulator import MoySkladSandbox
from tests.test_moysklad_support import (
    PRODUCTS,
    call,
    connected,
    order_body,
    order_doc,
    raw_client,
)

MISSING = "0a0b0c0d-0000-11f1-8000-000000000000"


async def test_a_429_storm_costs_exactly_one_429() -> None:
    """With the user's budget drained elsewhere, six concurrent callers see one 429 in total."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=4)
    sandbox.exhaust_budget()
    async with connected(sandbox) as connector:
        pages = await asyncio.gather(*(connector.transport.get("entity/store") for _ in range(6)))
        health = connector.health()
    assert all(page["rows"][0]["name"] == "Основной склад" for page in pages)
    assert sandbox.count_429 == 1
    assert health["rate_limited_total"] == "1"


async def test_six_concurrent_callers_never_trigger_1073() -> None:
    """Six callers with slow answers keep at most five requests in flight: no 1073."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=1)
    sandbox.latency_s = 0.1

    async with connected(sandbox) as connector:

        async def caller() -> None:
            for _ in range(5):
                await connector.transport.get("entity/store")

        await asyncio.gather(*(caller() for _ in range(6)))
    assert sandbox.count_1073 == 0
    assert sandbox.max_seen_in_flight == 5


async def test_a_1073_caused_by_another_program_is_waited_out() -> None:
    """When another client holds all five slots, the connector's 1073 is retried and succeeds."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=1)
    async with raw_client(sandbox) as (url, session), connected(sandbox) as connector:
        await connector.transport.get("entity/store")
        sandbox.latency_s = 0.4
        hogs = [asyncio.create_task(call(session, "GET", f"{url}entity/store")) for _ in range(5)]
        await asyncio.sleep(0.1)
        page = await connector.transport.get("entity/store")
        await asyncio.gather(*hogs)
    assert page["rows"]
    assert sandbox.count_1073 >= 1


async def test_pacing_at_weight_4_gets_no_429_and_stays_near_the_bucket_bound() -> None:
    """20 sequential requests at weight 4: no 429, and no slower than 1.15× the bucket bound."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=4)
    async with connected(sandbox) as connector:
        started = time.monotonic()
        for _ in range(20):
            await connector.transport.get("entity/store")
        elapsed = time.monotonic() - started
    bound = 20 * 3.0 / (45 / 4)
    assert sandbox.count_429 == 0
    assert elapsed <= 1.15 * bound
    assert elapsed >= (20 - 11) * 4 / 15 - 0.05  # the burst of 11, then one per 267 ms


async def test_dropped_connection_after_commit_never_makes_a_second_order() -> None:
    """A POST whose connection drops after commit is OutcomeUnknown; the resend finds it."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=1)
    bolt = sandbox.entity_id("product", "Болт М8")
    doc = order_doc("dropped", [(bolt, 4)])
    sandbox.drop_after_commit = 1
    async with connected(sandbox) as connector:
        with pytest.raises(OutcomeUnknownError):
            await connector.deliver_customer_order(doc, look_up_first=False)
        found = await connector.deliver_customer_order(doc, look_up_first=True)
        resent = await connector.deliver_customer_order(doc, look_up_first=False)
    assert sandbox.drops == 1
    assert not found.created_now
    assert found.external_id == resent.external_id
    assert [order["id"] for order in sandbox.orders()] == [found.external_id]


async def test_412_3000_reaches_the_caller_as_permanent_with_the_api_text() -> None:
    """A 412/3000 is a PermanentError carrying status, code and the API's message, sent once."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=1)
    async with raw_client(sandbox) as (url, _), connected(sandbox) as connector:
        body = order_body(sandbox, url)
        del body["agent"]
        before = sandbox.request_count
        with pytest.raises(PermanentError) as raised:
            await connector.transport.post("entity/customerorder", body)
    error = raised.value
    assert (error.system, error.status, error.code) == ("moysklad", 412, "3000")
    assert error.remote_message is not None and "'agent'" in error.remote_message
    assert "не может быть пустым" in error.describe()
    assert sandbox.request_count == before + 1


async def test_5xx_reads_are_retried_and_5xx_posts_are_outcome_unknown() -> None:
    """A failing GET is tried 1 + read_retries times then transient; a POST once, unknown."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=1)
    bolt = sandbox.entity_id("product", "Болт М8")
    async with connected(sandbox, read_retries=2) as connector:
        await connector.deliver_customer_order(order_doc("warm", [(bolt, 1)]), look_up_first=False)
        sandbox.fault_rate = 1.0
        before = sandbox.request_count
        with pytest.raises(TransientError) as read_error:
            await connector.transport.get("entity/store")
        assert sandbox.request_count == before + 3
        assert not isinstance(read_error.value, OutcomeUnknownError)
        before = sandbox.request_count
        with pytest.raises(OutcomeUnknownError):
            await connector.deliver_customer_order(
                order_doc("five", [(bolt, 1)]), look_up_first=False
            )
        assert sandbox.request_count == before + 1


async def test_timeouts_are_transient_for_reads_and_unknown_for_posts() -> None:
    """No answer within request_timeout_s: a GET is transient, a POST outcome-unknown."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=1)
    bolt = sandbox.entity_id("product", "Болт М8")
    async with connected(sandbox, request_timeout_s=0.2, read_retries=0) as connector:
        await connector.deliver_customer_order(order_doc("warm", [(bolt, 1)]), look_up_first=False)
        sandbox.latency_s = 0.5
        with pytest.raises(TransientError) as read_error:
            await connector.transport.get("entity/store")
        assert not isinstance(read_error.value, OutcomeUnknownError)
        with pytest.raises(OutcomeUnknownError):
            await connector.deliver_customer_order(
                order_doc("slow", [(bolt, 1)]), look_up_first=False
            )
        await asyncio.sleep(0.4)  # let the emulator finish the abandoned requests


async def test_circuit_opens_after_n_identical_failures_and_stops_calling() -> None:
    """After 5 identical 404s the 6th call fails fast without reaching the server, logged."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=1)
    async with connected(sandbox, circuit_threshold=5, circuit_open_s=0.3) as connector:
        with capture_logs() as logs:
            for _ in range(5):
                with pytest.raises(PermanentError):
                    await connector.transport.get(f"entity/organization/{MISSING}")
            before = sandbox.request_count
            with pytest.raises(CircuitOpenError) as raised:
                await connector.transport.get("entity/store")
        assert sandbox.request_count == before
        assert "5 identical failures" in str(raised.value)
        health = connector.health()
        assert health["circuit"] == "open" and health["circuit_until"]
        assert any(entry["event"] == "moysklad_circuit_opened" for entry in logs)
        await asyncio.sleep(0.35)
        page = await connector.transport.get("entity/store")
        assert page["rows"] and connector.health()["circuit"] == "closed"


async def test_connections_are_kept_alive_and_recycled_after_n_requests() -> None:
    """25 requests reuse one connection; with a cap of 10 per connection they use three."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=1)
    async with connected(sandbox) as connector:
        for _ in range(25):
            await connector.transport.get("entity/store")
    assert sandbox.connections_used == 1
    capped = MoySkladSandbox(PRODUCTS, weight=1)
    async with connected(capped, max_requests_per_connection=10) as connector:
        for _ in range(25):
            await connector.transport.get("entity/store")
        sessions = connector.transport.sessions_opened
    assert capped.connections_used == 3
    assert sessions == 3
