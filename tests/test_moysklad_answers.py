"""How the МойСклад connector reads answers it cannot trust: page ends, unknown states, a
create answer about another order, absurd prices (``daemon/moysklad/answers.py`` and its
callers). The broad malformed-input properties are in ``test_malformed_moysklad.py``."""

from __future__ import annotations

import json
import math
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from structlog.testing import capture_logs

from daemon.errors import OutcomeUnknownError, TransientError
from daemon.model import Item
from daemon.moysklad.answers import Page, finite_number, is_last, read_page
from daemon.moysklad.connector import MoySkladConnector
from daemon.moysklad.transport import _loads
from daemon.sandbox.moysklad_emulator import MoySkladSandbox, run_moysklad_sandbox
from tests.hostile import Edit, hostile, put
from tests.test_moysklad_support import PRODUCTS, connected, make_settings, order_doc

WHAT = "GET entity/product"
UNKNOWN_STATE = "0f0f0f0f-0000-4000-8000-000000000000"


def test_a_page_ends_the_list_only_when_its_own_size_agrees() -> None:
    """Full page below size: more follow; short page at size: the end; short page below size
    (rows went missing) or more rows than size: a TransientError naming the request."""
    assert not is_last(Page([1, 2], 5), 0, 2, WHAT)
    assert is_last(Page([1, 2], 4), 2, 2, WHAT)
    assert is_last(Page([5], 5), 4, 2, WHAT)
    assert is_last(Page([], 4), 4, 2, WHAT)
    with pytest.raises(TransientError, match=r"entity/product.*meta\.size is 5"):
        is_last(Page([3], 5), 2, 2, WHAT)
    with pytest.raises(TransientError, match=r"meta\.size is 1"):
        is_last(Page([1, 2], 1), 0, 2, WHAT)


@pytest.mark.parametrize(
    ("document", "wrong"),
    [
        (None, "the answer is null"),
        ({"meta": {"size": 1}}, "rows is null"),
        ({"rows": {}, "meta": {"size": 1}}, "rows is an object"),
        ({"rows": []}, "meta is null"),
        ({"rows": [], "meta": {"size": "7"}}, "meta.size is text '7'"),
        ({"rows": [], "meta": {"size": -1}}, "meta.size is a negative number"),
        ({"rows": [], "meta": {"size": True}}, "meta.size is true/false"),
    ],
)
def test_a_page_envelope_that_is_not_rows_and_a_count_is_refused(
    document: object, wrong: str
) -> None:
    """read_page names the request and the broken part instead of reading "no rows"."""
    with pytest.raises(TransientError) as raised:
        read_page(document, WHAT)
    assert str(raised.value).startswith(f"{WHAT}: malformed answer: {wrong}")


def test_only_finite_json_numbers_become_decimals() -> None:
    """Ints and finite floats convert exactly; NaN, infinities, text, booleans do not."""
    assert finite_number(1250) == Decimal(1250)
    assert finite_number(2.5) == Decimal("2.5")
    for value in (float("nan"), float("inf"), "12", True, None, [1]):
        assert finite_number(value) is None


async def test_an_order_in_a_state_the_metadata_lacks_fails_the_incoming_read() -> None:
    """Open or closed cannot be told for an order whose state is unknown: the read fails
    rather than guess (counting it could hide a deficit, skipping it re-orders)."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=1)
    bolt = sandbox.entity_id("product", "Болт М8")
    async with run_moysklad_sandbox(sandbox) as upstream, hostile(upstream) as (proxy, url):
        settings = make_settings(url, request_weight=1)
        async with MoySkladConnector(settings, SecretStr("sandbox-token"), None) as connector:
            await connector.deliver_customer_order(
                order_doc("s1", [(bolt, 2)]), look_up_first=False
            )
            assert await connector.read_incoming_orders("hub-") == {bolt: Decimal(2)}
            unknown = f"{url}entity/customerorder/metadata/states/{UNKNOWN_STATE}"
            proxy.arm(
                Edit(put(unknown, "rows", 0, "state", "meta", "href")),
                r"^GET [^?]*/entity/customerorder\?",
            )
            with pytest.raises(TransientError, match="which the metadata lacks"):
                await connector.read_incoming_orders("hub-")


async def test_an_absurd_sale_price_becomes_zero_with_a_warning() -> None:
    """A price beyond 10^15 kopecks is not carried into an order; the product stays matched
    at price 0 and the log names it."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=1)
    sandbox.add_product("HUGE-1", "Золотой болт", 10**20)
    items = [Item(key="k", code="c", article="HUGE-1", name="Золотой болт")]
    with capture_logs() as logs:
        async with connected(sandbox, price_type="Цена продажи") as connector:
            matched = await connector.match_products(items)
    assert matched["k"].price_kopecks == 0
    warned = [e for e in logs if e["event"] == "moysklad_product_price_unreadable"]
    assert [e["value"] for e in warned] == ["HUGE-1"]


async def test_a_product_list_whose_pages_fall_short_of_meta_size_fails_the_match() -> None:
    """meta.size 7 over five products: the short third page is not taken as the end."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=1)
    items = [Item(key=a, code=a, article=a, name=n) for a, n, _ in PRODUCTS]
    async with run_moysklad_sandbox(sandbox) as upstream, hostile(upstream) as (proxy, url):
        proxy.arm(Edit(put(7, "meta", "size")), r"^GET [^?]*/entity/product\b")
        settings = make_settings(url, request_weight=1, page_size=2, filter_lookup_max=0)
        async with MoySkladConnector(settings, SecretStr("sandbox-token"), None) as connector:
            with pytest.raises(TransientError, match=r"although meta\.size is 7"):
                await connector.match_products(items)


async def test_a_create_answer_about_another_sync_id_is_outcome_unknown() -> None:
    """A 200 whose order carries another syncId is not our order: OutcomeUnknownError, and
    the lookup by syncId then finds the one order that was created."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=1)
    bolt = sandbox.entity_id("product", "Болт М8")
    doc = order_doc("other-sync", [(bolt, 1)])
    async with run_moysklad_sandbox(sandbox) as upstream, hostile(upstream) as (proxy, url):
        settings = make_settings(url, request_weight=1)
        async with MoySkladConnector(settings, SecretStr("sandbox-token"), None) as connector:
            proxy.arm(Edit(put("6f0c2b0e-0000-4000-8000-000000000001", "syncId")), r"^POST ")
            with pytest.raises(OutcomeUnknownError, match="carries syncId"):
                await connector.deliver_customer_order(doc, look_up_first=False)
            proxy.disarm()
            found = await connector.deliver_customer_order(doc, look_up_first=True)
    assert found.created_now is False
    assert [order["id"] for order in sandbox.orders()] == [found.external_id]


_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()  # beyond 64 bits too
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(_JSON_VALUES, st.booleans())
def test_answers_parse_to_exactly_what_the_standard_parser_gives(
    value: object, ascii_only: bool
) -> None:
    """An answer reads as the very values and types ``json`` gives (integers of any size,
    floats, text with escapes or Cyrillic), as the connector read them before orjson."""
    body = json.dumps(value, ensure_ascii=ascii_only).encode()
    parsed = _loads(body)
    assert parsed == json.loads(body)
    assert repr(parsed) == repr(json.loads(body))  # 1 stays int, 1.0 stays float


def test_what_only_the_standard_parser_reads_still_parses() -> None:
    """NaN, Infinity, a lone surrogate and a 24-digit integer are read as ``json`` reads them,
    so the rows carrying them are judged one by one, not the whole answer refused."""
    parsed = _loads(b'{"a": NaN, "b": -Infinity, "c": "\\ud800", "d": 123456789012345678901234}')
    assert math.isnan(parsed["a"]) and parsed["b"] == float("-inf")
    assert parsed["c"] == "\ud800" and parsed["d"] == 123456789012345678901234
