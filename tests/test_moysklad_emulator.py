"""The МойСклад emulator speaks the protocol of the reference (section 7), byte for byte
where it matters: driven here by a bare aiohttp client, not by our connector."""

from __future__ import annotations

import asyncio
import base64
import re
from typing import Any

import aiohttp

from daemon.sandbox.moysklad_emulator import MoySkladSandbox
from tests.test_moysklad_support import HEADERS, PRODUCTS, call, meta_ref, order_body, raw_client

RATE_HEADERS = (
    "X-RateLimit-Limit",
    "X-Lognex-Retry-TimeInterval",
    "X-RateLimit-Remaining",
    "X-Lognex-Reset",
    "X-Lognex-Retry-After",
)


# -- compression, auth ------------------------------------------------------------------------


async def test_no_gzip_gives_415_with_empty_body_before_auth() -> None:
    """Without gzip in Accept-Encoding the answer is 415 with no body, even unauthenticated."""
    sandbox = MoySkladSandbox(PRODUCTS)
    async with raw_client(sandbox) as (url, session):
        for headers in ({"Accept-Encoding": "identity"}, {"Accept-Encoding": "br, deflate"}):
            async with session.get(f"{url}entity/product", headers=headers) as response:
                assert response.status == 415
                assert await response.read() == b""
    assert sandbox.count_415 == 2
    assert sandbox.count_401 == 0


async def test_answers_are_gzipped_unless_told_to_skip_compression() -> None:
    """Answers carry Content-Encoding: gzip; with plain_rate=1 they come uncompressed."""
    sandbox = MoySkladSandbox(PRODUCTS)
    async with raw_client(sandbox) as (url, session):
        status, body, headers = await call(session, "GET", f"{url}entity/store")
        assert status == 200 and body["rows"][0]["name"] == "Основной склад"
        assert headers["Content-Encoding"] == "gzip"
        assert headers["Content-Type"] == "application/json;charset=utf-8"
        sandbox.plain_rate = 1.0
        status, body, headers = await call(session, "GET", f"{url}entity/store")
        assert status == 200 and body["rows"][0]["name"] == "Основной склад"
        assert "Content-Encoding" not in headers


async def test_bad_credentials_get_401_1056_and_basic_auth_works() -> None:
    """A wrong token or password is 401/1056 with X-Lognex-Auth headers; Basic login works."""
    sandbox = MoySkladSandbox(PRODUCTS)
    async with raw_client(sandbox) as (url, session):
        bad = {**HEADERS, "Authorization": "Bearer nope"}
        status, body, headers = await call(session, "GET", f"{url}entity/store", headers=bad)
        assert status == 401
        assert body["errors"][0]["code"] == 1056
        assert "X-Lognex-Auth-Message" in headers
        basic = base64.b64encode(b"hub@bisnesmedia:sandbox").decode()
        good = {**HEADERS, "Authorization": f"Basic {basic}"}
        status, _, _ = await call(session, "GET", f"{url}entity/store", headers=good)
        assert status == 200
        wrong = base64.b64encode(b"hub@bisnesmedia:guess").decode()
        status, _, _ = await call(
            session,
            "GET",
            f"{url}entity/store",
            headers={**HEADERS, "Authorization": f"Basic {wrong}"},
        )
        assert status == 401


async def test_security_token_revokes_earlier_tokens() -> None:
    """POST /security/token returns 40 hex chars and the user's earlier token stops working."""
    sandbox = MoySkladSandbox(PRODUCTS)
    basic = base64.b64encode(b"hub@bisnesmedia:sandbox").decode()
    async with raw_client(sandbox) as (url, session):
        status, body, _ = await call(
            session,
            "POST",
            f"{url}security/token",
            headers={"Authorization": f"Basic {basic}", "Accept-Encoding": "gzip"},
        )
        assert status == 200
        assert re.fullmatch(r"[0-9a-f]{40}", body["access_token"])
        status, _, _ = await call(session, "GET", f"{url}entity/store")
        assert status == 401
        fresh = {**HEADERS, "Authorization": f"Bearer {body['access_token']}"}
        status, _, _ = await call(session, "GET", f"{url}entity/store", headers=fresh)
        assert status == 200


# -- rate limits ------------------------------------------------------------------------------


async def test_every_answer_carries_the_five_rate_headers() -> None:
    """Success and error answers both carry the rate headers; values are requests at the weight."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=4)
    async with raw_client(sandbox) as (url, session):
        _, _, first = await call(session, "GET", f"{url}entity/store")
        _, _, second = await call(session, "GET", f"{url}entity/nosuchtype")
    for headers in (first, second):
        assert all(name in headers for name in RATE_HEADERS)
        assert headers["X-RateLimit-Limit"] == "11"
        assert headers["X-Lognex-Retry-TimeInterval"] == "3000"
        assert headers["X-Lognex-Retry-After"] == "0"
    assert int(first["X-RateLimit-Remaining"]) == 10
    assert int(second["X-RateLimit-Remaining"]) == 9


async def test_exhausted_bucket_gives_429_1049_with_retry_after_in_ms() -> None:
    """The 12th request at weight 4 is 429/1049; waiting Retry-After ms lets the next one pass."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=4)
    async with raw_client(sandbox) as (url, session):
        for _ in range(11):
            status, _, _ = await call(session, "GET", f"{url}entity/store")
            assert status == 200
        status, body, headers = await call(session, "GET", f"{url}entity/store")
        assert status == 429
        assert body["errors"][0]["code"] == 1049
        retry_after = int(headers["X-Lognex-Retry-After"])
        assert 0 < retry_after <= 270
        assert int(headers["X-Lognex-Reset"]) >= retry_after
        await asyncio.sleep(retry_after / 1000)
        status, _, _ = await call(session, "GET", f"{url}entity/store")
        assert status == 200
    assert sandbox.count_429 == 1


async def test_buckets_are_per_user() -> None:
    """One user's exhausted bucket does not limit another user of the same account."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=4)
    sandbox.add_user("robot@bisnesmedia", "secret", token="robot-token")
    sandbox.exhaust_budget("hub@bisnesmedia")
    async with raw_client(sandbox) as (url, session):
        status_hub, _, _ = await call(session, "GET", f"{url}entity/store")
        robot = {**HEADERS, "Authorization": "Bearer robot-token"}
        status_robot, _, headers = await call(session, "GET", f"{url}entity/store", headers=robot)
    assert status_hub == 429
    assert status_robot == 200 and headers["X-RateLimit-Remaining"] == "10"


async def test_more_than_five_in_flight_gives_429_1073() -> None:
    """A sixth concurrent request of one user is refused with 429/1073."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=1)
    sandbox.latency_s = 0.3
    async with raw_client(sandbox) as (url, session):
        results = await asyncio.gather(
            *(call(session, "GET", f"{url}entity/store") for _ in range(6))
        )
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200] * 5 + [429]
    refused = next(body for status, body, _ in results if status == 429)
    assert refused["errors"][0]["code"] == 1073
    assert sandbox.count_1073 == 1


async def test_too_many_429s_switch_the_users_api_access_off() -> None:
    """Past ban_after 429s within a minute the user gets 403/1061 from then on."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=45)
    sandbox.ban_after = 3
    async with raw_client(sandbox) as (url, session):
        statuses = [(await call(session, "GET", f"{url}entity/store"))[0] for _ in range(6)]
        status, body, _ = await call(session, "GET", f"{url}entity/store")
    assert statuses[:5] == [200, 429, 429, 429, 429]
    assert status == 403 and body["errors"][0]["code"] == 1061
    assert sandbox.banned()


# -- lookups, lists, filters ------------------------------------------------------------------


async def test_lists_page_with_size_limit_offset_and_next_href() -> None:
    """limit/offset paging reports the total size and a nextHref on the caller's host."""
    sandbox = MoySkladSandbox([(f"P-{n:03d}", f"Товар {n}", 100) for n in range(25)], weight=1)
    async with raw_client(sandbox) as (url, session):
        status, page, _ = await call(
            session, "GET", f"{url}entity/product", params={"limit": "10", "offset": "20"}
        )
        assert status == 200
        assert page["meta"]["size"] == 25 and len(page["rows"]) == 5
        assert "nextHref" not in page["meta"] and "previousHref" in page["meta"]
        _, first, _ = await call(session, "GET", f"{url}entity/product", params={"limit": "10"})
        assert first["meta"]["nextHref"].startswith(url)
        assert "offset=10" in first["meta"]["nextHref"]
        status, _, _ = await call(session, "GET", f"{url}entity/product", params={"limit": "1001"})
        assert status == 412


async def test_filters_or_repeated_equals_starts_with_escape_and_unknown_field() -> None:
    """article=a;article=b is an OR, ~= starts with, \\; is a literal, unknown field is 1034."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=1)
    async with raw_client(sandbox) as (url, session):
        products = f"{url}entity/product"
        _, page, _ = await call(
            session, "GET", products, params={"filter": "article=A-001;article=A-003"}
        )
        assert sorted(row["article"] for row in page["rows"]) == ["A-001", "A-003"]
        _, page, _ = await call(session, "GET", products, params={"filter": "name~=гайка"})
        assert [row["article"] for row in page["rows"]] == ["A-002"]
        _, page, _ = await call(session, "GET", products, params={"filter": "article=B\\;7"})
        assert [row["name"] for row in page["rows"]] == ["Винт с точкой-с-запятой"]
        _, page, _ = await call(session, "GET", products, params={"search": "шайба"})
        assert [row["article"] for row in page["rows"]] == ["A-003"]
        status, body, _ = await call(session, "GET", products, params={"filter": "colour=red"})
        assert status == 412 and body["errors"][0]["code"] == 1034


async def test_unknown_type_is_1005_and_unknown_path_is_1002() -> None:
    """An unknown entity type answers 412/1005, an unknown path 404/1002."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=1)
    async with raw_client(sandbox) as (url, session):
        status, body, _ = await call(session, "GET", f"{url}entity/demand2")
        assert (status, body["errors"][0]["code"]) == (412, 1005)
        status, body, _ = await call(session, "GET", f"{url}nothing/here/at/all")
        assert (status, body["errors"][0]["code"]) == (404, 1002)


async def test_hrefs_follow_the_host_the_client_called() -> None:
    """Called as localhost, every href says localhost; an href naming 127.0.0.1 is then 1059."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=1)
    async with raw_client(sandbox) as (url, session):
        local = url.replace("127.0.0.1", "localhost")
        _, page, _ = await call(session, "GET", f"{local}entity/organization")
        assert page["rows"][0]["meta"]["href"].startswith(local)
        status, body, _ = await call(
            session, "POST", f"{local}entity/customerorder", body=order_body(sandbox, url)
        )
        assert status == 400 and body["errors"][0]["code"] == 1059


# -- customerorder ----------------------------------------------------------------------------


async def test_create_fills_name_external_code_moment_state_and_sum() -> None:
    """A create answers 200 with auto name 00001, a 22-char externalCode, minute moment, sum."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=1)
    async with raw_client(sandbox) as (url, session):
        status, order, _ = await call(
            session, "POST", f"{url}entity/customerorder", body=order_body(sandbox, url)
        )
    assert status == 200
    assert order["name"] == "00001"
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", order["externalCode"])
    assert order["moment"].endswith(":00.000")
    assert order["sum"] == 3750.0
    assert order["meta"]["href"] == f"{url}entity/customerorder/{order['id']}"
    assert order["positions"]["meta"]["size"] == 1 and "rows" not in order["positions"]
    assert sandbox.orders()[0]["state"] == "Новый"


async def test_create_requires_organization_and_agent_with_3000() -> None:
    """Without agent the create is 412/3000 naming the parameter, and nothing is created."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=1)
    async with raw_client(sandbox) as (url, session):
        body = order_body(sandbox, url)
        del body["agent"]
        status, answer, _ = await call(session, "POST", f"{url}entity/customerorder", body=body)
    assert status == 412
    assert answer["errors"][0]["code"] == 3000
    assert answer["errors"][0]["parameter"] == "agent"
    assert "moreInfo" in answer["errors"][0]
    assert sandbox.orders() == []


async def test_meta_and_position_validation_codes() -> None:
    """Missing href 2010, wrong meta type 2024, quantity 0 3003, reserve > quantity 17003,
    discount > 100 17008; none of them creates anything."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=1)
    product = sandbox.entity_id("product", "Болт М8")
    store = sandbox.entity_id("store", "Основной склад")
    async with raw_client(sandbox) as (url, session):
        item = meta_ref(url, "product", product)
        no_href = meta_ref(url, "store", store)
        del no_href["meta"]["href"]
        cases: list[tuple[dict[str, Any], int, int]] = [
            ({"store": no_href}, 400, 2010),
            ({"agent": meta_ref(url, "store", store)}, 400, 2024),
            ({"positions": [{"quantity": 0, "assortment": item}]}, 412, 3003),
            ({"positions": [{"quantity": 1, "reserve": 2, "assortment": item}]}, 412, 17003),
            ({"positions": [{"quantity": 1, "discount": 101, "assortment": item}]}, 412, 17008),
        ]
        for extra, status_wanted, code in cases:
            body = order_body(sandbox, url, **extra)
            status, answer, _ = await call(session, "POST", f"{url}entity/customerorder", body=body)
            assert (status, answer["errors"][0]["code"]) == (status_wanted, code), extra
    assert sandbox.orders() == []


async def test_sync_id_replay_returns_the_existing_order() -> None:
    """A second POST with the same syncId returns the first order and creates nothing."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=1)
    sync_id = "3f0c6a1e-5b1d-5a7e-9a55-0c0a7f1f2b11"
    async with raw_client(sandbox) as (url, session):
        body = order_body(sandbox, url, syncId=sync_id, externalCode="hub-1")
        _, first, _ = await call(session, "POST", f"{url}entity/customerorder", body=body)
        status, second, _ = await call(session, "POST", f"{url}entity/customerorder", body=body)
        _, found, _ = await call(
            session, "GET", f"{url}entity/customerorder", params={"filter": f"syncId={sync_id}"}
        )
        status_put, answer, _ = await call(
            session,
            "PUT",
            f"{url}entity/customerorder/{first['id']}",
            body={"syncId": "00000000-0000-0000-0000-000000000001"},
        )
    assert status == 200 and second["id"] == first["id"] and second["syncId"] == sync_id
    assert len(sandbox.orders()) == 1
    assert [row["id"] for row in found["rows"]] == [first["id"]]
    assert (status_put, answer["errors"][0]["code"]) == (412, 1047)


async def test_array_post_over_1000_is_413_and_positions_over_1000_too() -> None:
    """More than 1000 elements in the array, or in positions, is HTTP 413."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=1)
    async with raw_client(sandbox) as (url, session):
        one = order_body(sandbox, url)
        status, answer, _ = await call(
            session, "POST", f"{url}entity/customerorder", body=[one] * 1001
        )
        assert (status, answer["errors"][0]["code"]) == (413, 2007)
        big = order_body(sandbox, url, positions=one["positions"] * 1001)
        status, answer, _ = await call(session, "POST", f"{url}entity/customerorder", body=big)
        assert status == 413
        status, answer, _ = await call(
            session, "POST", f"{url}entity/customerorder", body=[one, {"name": "x"}]
        )
        assert status == 200 and answer[0]["name"] == "00001"
        assert answer[1]["errors"][0]["code"] == 3000
    assert len(sandbox.orders()) == 1


async def test_expand_positions_only_with_limit_up_to_100() -> None:
    """expand=positions returns rows with limit=100 and is silently ignored with limit=1000."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=1)
    async with raw_client(sandbox) as (url, session):
        await call(session, "POST", f"{url}entity/customerorder", body=order_body(sandbox, url))
        orders = f"{url}entity/customerorder"
        _, wide, _ = await call(
            session, "GET", orders, params={"expand": "positions", "limit": "1000"}
        )
        _, narrow, _ = await call(
            session, "GET", orders, params={"expand": "positions", "limit": "100"}
        )
    assert "rows" not in wide["rows"][0]["positions"]
    rows = narrow["rows"][0]["positions"]["rows"]
    assert rows[0]["quantity"] == 3 and rows[0]["shipped"] == 0


async def test_drop_after_commit_creates_the_order_and_drops_the_connection() -> None:
    """With drop_after_commit=1 the client sees a dropped connection yet the order exists."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=1)
    sandbox.drop_after_commit = 1
    async with raw_client(sandbox) as (url, session):
        body = order_body(sandbox, url, syncId="3f0c6a1e-5b1d-5a7e-9a55-0c0a7f1f2b12")
        try:
            await call(session, "POST", f"{url}entity/customerorder", body=body)
        except aiohttp.ClientError as exc:
            dropped: Exception | None = exc
        else:
            dropped = None
        status, again, _ = await call(session, "POST", f"{url}entity/customerorder", body=body)
    assert isinstance(dropped, aiohttp.ServerDisconnectedError)
    assert status == 200
    assert [order["id"] for order in sandbox.orders()] == [again["id"]]


async def test_fault_injection_answers_5xx_with_documented_bodies() -> None:
    """fault_rate=1 answers 500/1999, 503/1074 or a 502 nginx page, and changes nothing."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=1)
    sandbox.fault_rate = 1.0
    seen: dict[int, object] = {}
    async with raw_client(sandbox) as (url, session):
        for _ in range(12):
            status, body, _ = await call(
                session, "POST", f"{url}entity/customerorder", body=order_body(sandbox, url)
            )
            seen[status] = body
    assert set(seen) == {500, 502, 503}
    assert isinstance(seen[500], dict) and seen[500]["errors"][0]["code"] == 1999
    assert isinstance(seen[503], dict) and seen[503]["errors"][0]["code"] == 1074
    assert isinstance(seen[502], bytes) and b"nginx" in seen[502]
    assert sandbox.orders() == []


async def test_metadata_lists_states_with_state_types() -> None:
    """customerorder/metadata lists the states; «Отгружен» is Successful, «Новый» Regular."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=1)
    async with raw_client(sandbox) as (url, session):
        _, metadata, _ = await call(session, "GET", f"{url}entity/customerorder/metadata")
    kinds = {state["name"]: state["stateType"] for state in metadata["states"]}
    assert kinds["Новый"] == "Regular"
    assert kinds["Отгружен"] == "Successful"
    assert kinds["Отменен"] == "Unsuccessful"


async def test_positions_sub_resource_put_replacement_and_deletes() -> None:
    """POST …/positions adds, PUT positions replaces the set (matching ids kept), DELETE works."""
    sandbox = MoySkladSandbox(PRODUCTS, weight=1)
    nut = sandbox.entity_id("product", "Гайка М8")
    async with raw_client(sandbox) as (url, session):
        _, order, _ = await call(
            session, "POST", f"{url}entity/customerorder", body=order_body(sandbox, url)
        )
        orders = f"{url}entity/customerorder"
        positions = f"{orders}/{order['id']}/positions"
        status, added, _ = await call(
            session,
            "POST",
            positions,
            body=[{"quantity": 2, "assortment": meta_ref(url, "product", nut)}],
        )
        assert status == 200 and added[0]["quantity"] == 2
        _, page, _ = await call(session, "GET", positions, params={"limit": "1"})
        assert page["meta"]["size"] == 2 and len(page["rows"]) == 1
        kept = page["rows"][0]
        status, _, _ = await call(
            session,
            "PUT",
            f"{orders}/{order['id']}",
            body={
                "positions": [{"id": kept["id"], "quantity": 9, "assortment": kept["assortment"]}]
            },
        )
        assert status == 200
        _, after, _ = await call(session, "GET", positions)
        assert [(row["id"], row["quantity"]) for row in after["rows"]] == [(kept["id"], 9)]
        status, _, _ = await call(session, "PUT", orders, body={"name": "x"})
        assert status == 400
        status, body, _ = await call(session, "DELETE", f"{orders}/{order['id']}")
        assert status == 200 and body == b""
    assert sandbox.orders() == []
