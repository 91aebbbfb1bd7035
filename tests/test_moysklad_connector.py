"""MoySkladConnector against the emulator: auth, resolution, product matching, order
delivery, incoming orders, check() and health()."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import SecretStr

from daemon.errors import ConfigError, PermanentError
from daemon.model import Item
from daemon.moysklad.connector import MoySkladConnector
from daemon.moysklad.settings import MoySkladSettings
from daemon.ports import MoySkladPort
from daemon.sandbox.moysklad_emulator import MoySkladSandbox
from tests.test_moysklad_support import PRODUCTS, connected, make_settings, order_doc


def items_for(articles: list[str]) -> list[Item]:
    return [
        Item(key=f"key-{index}", code=f"УТ-{index:05d}", article=article, name=article)
        for index, article in enumerate(articles)
    ]


def test_connector_satisfies_the_port() -> None:
    """MoySkladConnector is usable wherever the run expects a MoySkladPort."""
    settings = make_settings("http://127.0.0.1:9/api/remap/1.2/")
    port: MoySkladPort = MoySkladConnector(settings, SecretStr("t"), None)
    assert hasattr(port, "health")


def test_missing_secret_is_a_config_error() -> None:
    """auth=token without a token (or password without a password) is a ConfigError."""
    settings = make_settings("http://127.0.0.1:9/api/remap/1.2/")
    with pytest.raises(ConfigError, match="HUB_MOYSKLAD_TOKEN"):
        MoySkladConnector(settings, None, None)
    password_settings = make_settings(
        "http://127.0.0.1:9/api/remap/1.2/", auth="password", login="hub@bisnesmedia"
    )
    with pytest.raises(ConfigError, match="HUB_MOYSKLAD_PASSWORD"):
        MoySkladConnector(password_settings, None, None)
    with pytest.raises(ValueError, match="user@account"):
        make_settings("http://127.0.0.1:9/api/remap/1.2/", auth="password", login="hub")


async def test_password_auth_uses_basic_and_never_asks_for_a_token() -> None:
    """auth=password works through Basic user@account:password; /security/token is not used."""
    sandbox = MoySkladSandbox(PRODUCTS)
    async with connected(
        sandbox, token=None, password="sandbox", auth="password", login="hub@bisnesmedia"
    ) as connector:
        results = await connector.check()
    assert all(result.ok for result in results), results
    assert sandbox.tokens_issued == 0
    assert sandbox.count_401 == 0


async def test_every_request_asks_for_gzip_and_reads_plain_answers_too() -> None:
    """No request lacks gzip (zero 415s) and uncompressed answers parse like gzipped ones."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=1)
    sandbox.plain_rate = 0.5
    async with connected(sandbox) as connector:
        results = await connector.check()
        matched = await connector.match_products(items_for(["A-001", "A-002"]))
    assert all(result.ok for result in results)
    assert sorted(product.match_value for product in matched.values()) == ["A-001", "A-002"]
    assert sandbox.count_415 == 0
    assert 0 < sandbox.plain_answers < sandbox.request_count


async def test_check_reports_each_resolution_and_the_rate_budget() -> None:
    """check() lists reachable, credentials, organization/agent/store and the rate budget."""
    sandbox = MoySkladSandbox(PRODUCTS)
    async with connected(sandbox, organization="ООО «Нет такой»") as connector:
        results = {result.name: result for result in await connector.check()}
    assert results["reachable"].ok and results["credentials accepted"].ok
    assert "hub@bisnesmedia" in results["credentials accepted"].detail
    assert not results["organization resolved"].ok
    assert "Нет такой" in results["organization resolved"].detail
    assert results["agent resolved"].ok and results["store resolved"].ok
    assert results["rate budget"].ok
    assert "of 11 requests per 3 s at weight 4" in results["rate budget"].detail


async def test_check_with_a_revoked_token_says_credentials_refused() -> None:
    """A token the API refuses gives 'credentials accepted' = False with the API's text."""
    sandbox = MoySkladSandbox(PRODUCTS)
    async with connected(sandbox, token="revoked") as connector:
        results = {result.name: result for result in await connector.check()}
    assert results["reachable"].ok
    assert not results["credentials accepted"].ok
    assert "1056" in results["credentials accepted"].detail


async def test_check_when_nothing_listens_says_unreachable() -> None:
    """With no server at the base URL check() reports 'reachable' = False, no exception."""
    settings = make_settings("http://127.0.0.1:9/api/remap/1.2/", read_retries=0)
    async with MoySkladConnector(settings, SecretStr("t"), None) as connector:
        results = await connector.check()
    assert results[0].name == "reachable" and not results[0].ok


async def test_references_resolve_by_id_and_ambiguous_names_are_refused() -> None:
    """An id in config resolves directly; a name two counterparties share is a PermanentError."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=1)
    agent_id = sandbox.entity_id("counterparty", "ООО «Поставщик»")
    sandbox.add_entity("counterparty", "ООО «Двойник»")
    sandbox.add_entity("counterparty", "ООО «Двойник»")
    product = sandbox.entity_id("product", "Болт М8")
    async with connected(sandbox, agent=agent_id) as connector:
        await connector.deliver_customer_order(order_doc("k1", [(product, 1)]), look_up_first=False)
    assert sandbox.orders()[0]["agent"] == agent_id
    async with connected(sandbox, agent="ООО «Двойник»") as connector:
        with pytest.raises(PermanentError, match="ambiguous"):
            await connector.deliver_customer_order(
                order_doc("k2", [(product, 1)]), look_up_first=False
            )


# -- products ---------------------------------------------------------------------------------


async def test_match_by_article_with_price_type_and_unmatched_absent() -> None:
    """Items map by article with the sale price in kopecks; unknown or empty articles are absent."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=1)
    items = items_for(["A-001", "B;7", "NOPE", ""])
    async with connected(sandbox, price_type="Цена продажи") as connector:
        matched = await connector.match_products(items)
    assert set(matched) == {"key-0", "key-1"}
    assert matched["key-0"].id == sandbox.entity_id("product", "Болт М8")
    assert matched["key-0"].price_kopecks == Decimal(1250)
    assert matched["key-1"].name == "Винт с точкой-с-запятой"


async def test_without_price_type_prices_are_zero_and_unknown_type_is_refused() -> None:
    """price_type empty gives price 0; a price type the account lacks is a PermanentError."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=1)
    async with connected(sandbox) as connector:
        matched = await connector.match_products(items_for(["A-002"]))
    assert matched["key-0"].price_kopecks == Decimal(0)
    async with connected(sandbox, price_type="Оптовая") as connector:
        with pytest.raises(PermanentError, match="Оптовая"):
            await connector.match_products(items_for(["A-002"]))


async def test_many_items_page_the_product_list_instead_of_one_request_each() -> None:
    """2,500 items cost 3 product pages of 1000, and give the same matches as filters do."""
    catalogue = [(f"ART-{n:05d}", f"Товар {n}", 100 + n) for n in range(2500)]
    sandbox = MoySkladSandbox(catalogue, weight=1)
    items = items_for([article for article, _, _ in catalogue])
    async with connected(sandbox, price_type="Цена продажи") as connector:
        before = sandbox.request_count
        matched = await connector.match_products(items)
        paged_requests = sandbox.request_count - before
    assert len(matched) == 2500
    assert paged_requests == 4  # price type check + 3 pages
    few = items[:30]
    async with connected(sandbox, price_type="Цена продажи") as connector:
        filtered = await connector.match_products(few)
    assert filtered == {key: matched[key] for key in filtered}
    assert len(filtered) == 30


async def test_match_by_code_or_external_code_and_ambiguity() -> None:
    """match_key=code uses Item.code, externalCode uses Item.key; duplicates stay unmatched."""
    sandbox = MoySkladSandbox(weight=1)
    bolt = sandbox.add_product("X-1", "Болт", 100, code="УТ-00000", external_code="ref-a")
    sandbox.add_product("X-2", "Гайка", 100, code="УТ-00001", external_code="ref-b")
    sandbox.add_product("X-3", "Гайка-дубль", 100, code="УТ-00001", external_code="ref-c")
    items = [
        Item(key="ref-a", code="УТ-00000", article="", name="Болт"),
        Item(key="ref-b", code="УТ-00001", article="", name="Гайка"),
    ]
    async with connected(sandbox, match_key="code") as connector:
        by_code = await connector.match_products(items)
    async with connected(sandbox, match_key="externalCode") as connector:
        by_external = await connector.match_products(items)
    assert list(by_code) == ["ref-a"] and by_code["ref-a"].id == bolt
    assert set(by_external) == {"ref-a", "ref-b"}


# -- orders -----------------------------------------------------------------------------------


async def test_deliver_creates_one_order_with_sync_id_and_traceable_fields() -> None:
    """The order carries syncId, externalCode, the run in description, org/agent/store."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=1)
    bolt = sandbox.entity_id("product", "Болт М8")
    nut = sandbox.entity_id("product", "Гайка М8")
    doc = order_doc("order-1", [(bolt, 5), (nut, "2.5")])
    async with connected(sandbox, order_state="Подтвержден") as connector:
        delivered = await connector.deliver_customer_order(doc, look_up_first=False)
    [order] = sandbox.orders()
    assert delivered.external_id == order["id"] and delivered.number == order["name"]
    assert delivered.created_now
    assert order["syncId"] == doc.sync_id
    assert order["externalCode"] == doc.external_code
    assert "run-1" in order["description"]
    assert order["organization"] == sandbox.entity_id("organization", "ООО «Бизнесмедиа»")
    assert order["agent"] == sandbox.entity_id("counterparty", "ООО «Поставщик»")
    assert order["store"] == sandbox.entity_id("store", "Основной склад")
    assert order["state"] == "Подтвержден"
    assert [(p["product_id"], p["quantity"]) for p in order["positions"]] == [
        (bolt, 5.0),
        (nut, 2.5),
    ]


async def test_resend_and_look_up_first_never_make_a_second_order() -> None:
    """A plain resend returns the same order (syncId); look_up_first finds it, created_now=False."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=1)
    bolt = sandbox.entity_id("product", "Болт М8")
    doc = order_doc("order-2", [(bolt, 1)])
    async with connected(sandbox) as connector:
        first = await connector.deliver_customer_order(doc, look_up_first=False)
        again = await connector.deliver_customer_order(doc, look_up_first=False)
        found = await connector.deliver_customer_order(doc, look_up_first=True)
    assert first.external_id == again.external_id == found.external_id
    assert not found.created_now
    assert len(sandbox.orders()) == 1


async def test_more_than_1000_positions_is_refused_before_any_request() -> None:
    """An order with 1001 lines is a PermanentError and nothing is sent for it."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=1)
    bolt = sandbox.entity_id("product", "Болт М8")
    async with connected(sandbox) as connector:
        before = sandbox.request_count
        with pytest.raises(PermanentError, match="1001 positions"):
            await connector.deliver_customer_order(
                order_doc("big", [(bolt, 1)] * 1001), look_up_first=False
            )
    assert sandbox.request_count == before


async def test_unknown_product_is_a_permanent_error_sent_once() -> None:
    """A 4xx from the API (a product id that does not exist) is permanent and not retried."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=1)
    bolt = sandbox.entity_id("product", "Болт М8")
    async with connected(sandbox) as connector:
        await connector.deliver_customer_order(order_doc("real", [(bolt, 1)]), look_up_first=False)
        before = sandbox.request_count
        with pytest.raises(PermanentError) as raised:
            await connector.deliver_customer_order(
                order_doc("ghost", [("0a0b0c0d-0000-11f1-8000-000000000000", 1)]),
                look_up_first=False,
            )
    assert raised.value.status == 412 and raised.value.code == "1021"
    assert sandbox.request_count == before + 1
    assert len(sandbox.orders()) == 1


async def test_incoming_counts_open_orders_only_and_only_the_hubs() -> None:
    """Outstanding = quantity − shipped on open orders with the prefix; shipped ones drop out."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=1)
    bolt = sandbox.entity_id("product", "Болт М8")
    nut = sandbox.entity_id("product", "Гайка М8")
    async with connected(sandbox) as connector:
        open_one = await connector.deliver_customer_order(
            order_doc("a", [(bolt, 5), (nut, 3)], prefix="hub-T1-"), look_up_first=False
        )
        shipped = await connector.deliver_customer_order(
            order_doc("b", [(bolt, 7)], prefix="hub-T1-"), look_up_first=False
        )
        await connector.deliver_customer_order(
            order_doc("c", [(bolt, 11)], prefix="other-"), look_up_first=False
        )
        sandbox.mark_shipped(shipped.external_id)
        sandbox.book.orders[open_one.external_id].positions[0].shipped = 2.0
        incoming = await connector.read_incoming_orders("hub-T1-")
    assert incoming == {bolt: Decimal(3), nut: Decimal(3)}


async def test_incoming_reads_positions_beyond_the_expanded_hundred() -> None:
    """An order with 250 positions is counted in full (sub-resource paging past expand)."""
    catalogue = [(f"Q-{n:03d}", f"Деталь {n}", 100) for n in range(250)]
    sandbox = MoySkladSandbox(catalogue, weight=1)
    ids = [sandbox.entity_id("product", f"Деталь {n}") for n in range(250)]
    async with connected(sandbox) as connector:
        await connector.deliver_customer_order(
            order_doc("wide", [(product, 2) for product in ids]), look_up_first=False
        )
        incoming = await connector.read_incoming_orders("hub-")
    assert len(incoming) == 250
    assert set(incoming.values()) == {Decimal(2)}


async def test_final_states_from_config_close_orders_too() -> None:
    """A state named in final_states (a Regular one here) makes the order not count."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=1)
    bolt = sandbox.entity_id("product", "Болт М8")
    async with connected(sandbox, order_state="Собран", final_states=("Собран",)) as connector:
        await connector.deliver_customer_order(order_doc("s", [(bolt, 4)]), look_up_first=False)
        incoming = await connector.read_incoming_orders("hub-")
    assert incoming == {}


async def test_health_reports_circuit_and_rate_budget() -> None:
    """health() is a flat str→str view: circuit closed, weight, remaining budget."""
    sandbox = MoySkladSandbox(PRODUCTS)
    async with connected(sandbox) as connector:
        await connector.check()
        health = connector.health()
    assert health["circuit"] == "closed"
    assert health["rate_weight"] == "4"
    assert 0 <= int(health["rate_remaining"]) < 11
    assert health["server_remaining"].isdigit()
    assert all(isinstance(value, str) for value in health.values())


def test_settings_refuse_keepalive_of_30_s_or_more() -> None:
    """keepalive_s must stay below the provider's 30 s idle reuse limit."""
    with pytest.raises(ValueError):
        MoySkladSettings.model_validate({"organization": "o", "agent": "a", "keepalive_s": 30})
