"""The МойСклад emulator's endpoints (under ``/api/remap/1.2/``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aiohttp import web

from daemon.sandbox.moysklad_filter import Accessor, compile_filter, envelope, page_params
from daemon.sandbox.moysklad_filter import search_predicate as search_for
from daemon.sandbox.moysklad_orders import EXPANDED_POSITIONS, Order
from daemon.sandbox.moysklad_protocol import answer, base_of, sandbox_of
from daemon.sandbox.moysklad_validation import MAX_ARRAY, RequestContext
from daemon.sandbox.moysklad_wire import MEDIA_TYPE, PREFIX, ApiError, errors_body

Row = dict[str, Any]

LOOKUP_FIELDS: dict[str, tuple[str, ...]] = {
    "organization": ("id", "name", "code", "externalCode", "archived", "inn"),
    "counterparty": (
        "id",
        "name",
        "code",
        "externalCode",
        "archived",
        "inn",
        "kpp",
        "email",
        "phone",
        "companyType",
    ),
    "store": ("id", "name", "code", "externalCode", "archived", "pathName", "address"),
    "product": ("id", "name", "code", "article", "externalCode", "archived", "pathName"),
}
EMPTY_TYPES = frozenset({"variant", "service", "bundle", "webhook"})
ORDER_REFERENCES = frozenset({"organization", "agent", "store", "state"})


def _key(name: str) -> Accessor:
    def read(row: Any) -> Any:
        return row.get(name)

    return read


async def _body(request: web.Request) -> Any:
    content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise ApiError(415, 1037, "Неверный Content-Type: JSON API работает только с json")
    try:
        return await request.json()
    except ValueError as exc:
        raise ApiError(400, 2001, "Ошибка формата JSON") from exc


def _expand(request: web.Request, limit: int | None) -> frozenset[str]:
    if limit is not None and limit > EXPANDED_POSITIONS:
        # Documented: expand is silently ignored when a list's limit is above 100.
        return frozenset()
    wanted = request.rel_url.query.get("expand", "")
    return frozenset(part.strip() for part in wanted.split(",") if part.strip())


def _context(request: web.Request) -> RequestContext:
    return RequestContext(base_of(request), sandbox_of(request).exists)


def _list(
    request: web.Request,
    kind: str,
    rows: Sequence[Any],
    render: Callable[[Any], Row],
    fields: Mapping[str, Accessor],
    search: Sequence[Accessor] = (),
    references: frozenset[str] = frozenset(),
) -> web.Response:
    query = request.rel_url.query
    limit, offset = page_params(query)
    selected = list(rows)
    text = query.get("filter", "")
    if "archived" in fields and "archived" not in text:
        selected = [row for row in selected if not fields["archived"](row)]
    if text:
        predicate = compile_filter(text, fields, references)
        selected = [row for row in selected if predicate(row)]
    if query.get("search"):
        found = search_for(query["search"], search)
        selected = [row for row in selected if found(row)]
    page = [render(row) for row in selected[offset : offset + limit]]
    return answer(
        request,
        envelope(
            base=base_of(request),
            request_url=request.rel_url,
            kind=kind,
            rows=page,
            size=len(selected),
            limit=limit,
            offset=offset,
        ),
    )


# -- context and lookups ----------------------------------------------------------------------


async def security_token(request: web.Request) -> web.StreamResponse:
    sandbox = sandbox_of(request)
    header = request.headers.get("Authorization", "")
    login = sandbox.authenticate(header) if header.lower().startswith("basic ") else None
    if login is None:
        raise ApiError(401, 1056, "Ошибка аутентификации: токен выдаётся только по логину")
    return answer(request, {"access_token": sandbox.issue_token(login)})


async def employee(request: web.Request) -> web.StreamResponse:
    sandbox = sandbox_of(request)
    login = sandbox.authenticate(request.headers.get("Authorization", "")) or ""
    return answer(request, sandbox.employee(base_of(request), login))


async def price_types(request: web.Request) -> web.StreamResponse:
    return answer(request, sandbox_of(request).price_types(base_of(request)))


async def entity_list(request: web.Request) -> web.StreamResponse:
    sandbox = sandbox_of(request)
    kind = request.match_info["type"]
    base = base_of(request)
    if kind in EMPTY_TYPES:
        return _list(request, kind, [], dict, {"id": _key("id")})
    source = "product" if kind == "assortment" else kind
    if source not in LOOKUP_FIELDS:
        raise ApiError(412, 1005, f"Неизвестный тип: '{kind}'")
    fields = {name: _key(name) for name in LOOKUP_FIELDS[source]}
    search = [fields[name] for name in ("name", "code", "article") if name in fields]
    return _list(
        request,
        kind,
        sandbox.rows(source),
        lambda row: sandbox.render_entity(base, source, row),
        fields,
        search,
    )


async def entity_get(request: web.Request) -> web.StreamResponse:
    sandbox = sandbox_of(request)
    kind = request.match_info["type"]
    entity_id = request.match_info["id"]
    if kind not in LOOKUP_FIELDS:
        raise ApiError(412, 1005, f"Неизвестный тип: '{kind}'")
    row = sandbox.row(kind, entity_id)
    if row is None:
        raise ApiError(404, 1021, f"Объект с UUID {entity_id} не найден")
    return answer(request, sandbox.render_entity(base_of(request), kind, row))


# -- customerorder ----------------------------------------------------------------------------


async def order_metadata(request: web.Request) -> web.StreamResponse:
    book = sandbox_of(request).book
    base = base_of(request)
    return answer(
        request,
        {
            "meta": {"href": f"{base}entity/customerorder/metadata", "mediaType": MEDIA_TYPE},
            "attributes": {
                "meta": {
                    "href": f"{base}entity/customerorder/metadata/attributes",
                    "type": "attributemetadata",
                    "mediaType": MEDIA_TYPE,
                    "size": 0,
                    "limit": 1000,
                    "offset": 0,
                }
            },
            "states": [book.render_state(base, state, expand=True) for state in book.states],
            "createShared": False,
        },
    )


def _order_fields(request: web.Request) -> dict[str, Accessor]:
    book = sandbox_of(request).book

    def attr(name: str) -> Accessor:
        return lambda order: getattr(order, name)

    def total(order: Order) -> float:
        return sum(p.price * p.quantity * (1 - p.discount / 100) for p in order.positions)

    return {
        "id": attr("id"),
        "name": attr("name"),
        "externalCode": attr("external_code"),
        "syncId": attr("sync_id"),
        "description": attr("description"),
        "moment": attr("moment"),
        "created": attr("created"),
        "updated": attr("updated"),
        "applicable": attr("applicable"),
        "sum": total,
        "organization": attr("organization"),
        "agent": lambda order: order.agent[1],
        "store": attr("store"),
        "state": attr("state"),
        "state.name": lambda order: book.state(order.state).name,
    }


async def order_list(request: web.Request) -> web.StreamResponse:
    sandbox = sandbox_of(request)
    base = base_of(request)
    limit, _ = page_params(request.rel_url.query)
    expand = _expand(request, limit)
    return _list(
        request,
        "customerorder",
        list(sandbox.book.orders.values()),
        lambda order: sandbox.render_order(base, order, expand),
        _order_fields(request),
        [lambda order: order.name, lambda order: order.description],
        ORDER_REFERENCES,
    )


def _drop_after_commit(request: web.Request) -> web.StreamResponse | None:
    """Commit happened; if told to, drop the connection instead of answering."""
    sandbox = sandbox_of(request)
    if sandbox.drop_after_commit <= 0 or request.transport is None:
        return None
    sandbox.drop_after_commit -= 1
    sandbox.drops += 1
    request.transport.close()
    return web.Response(status=200)


async def order_create(request: web.Request) -> web.StreamResponse:
    sandbox = sandbox_of(request)
    base = base_of(request)
    body = await _body(request)
    ctx = _context(request)
    expand = _expand(request, None)
    if not isinstance(body, list):
        order, created = sandbox.book.create(body, ctx)
        dropped = _drop_after_commit(request) if created else None
        return dropped or answer(request, sandbox.render_order(base, order, expand))
    if len(body) > MAX_ARRAY:
        raise ApiError(413, 2007, f"Массив в запросе содержит больше {MAX_ARRAY} элементов")
    results: list[Row] = []
    failed = created_any = False
    for item in body:
        try:
            href = ((item.get("meta") or {}) if isinstance(item, dict) else {}).get("href")
            if href:
                _, order_id = ctx.reference(item, "meta", frozenset({"customerorder"}))
                order = sandbox.book.update(order_id, item, ctx)
            else:
                order, created = sandbox.book.create(item, ctx)
                created_any = created_any or created
            results.append(sandbox.render_order(base, order, expand))
        except ApiError as error:
            failed = True
            results.append(errors_body([error]))
    dropped = _drop_after_commit(request) if created_any else None
    status = sandbox.batch_error_status if failed else 200
    return dropped or answer(request, results, status)


async def order_collection_put(request: web.Request) -> web.StreamResponse:
    raise ApiError(400, 1012, "Не указан идентификатор объекта")


async def order_mass_delete(request: web.Request) -> web.StreamResponse:
    sandbox = sandbox_of(request)
    body = await _body(request)
    if not isinstance(body, list):
        raise ApiError(400, 2016, "Ожидался массив объектов")
    ctx = _context(request)
    results: list[Row] = []
    for item in body:
        try:
            _, order_id = ctx.reference(item, "meta", frozenset({"customerorder"}))
            sandbox.book.delete(order_id)
            results.append({"info": f"Сущность 'customerorder' с UUID: {order_id} успешно удалена"})
        except ApiError as error:
            results.append(errors_body([error]))
    return answer(request, results)


def _order(request: web.Request) -> Order:
    order_id = request.match_info["id"]
    order = sandbox_of(request).book.orders.get(order_id)
    if order is None:
        raise ApiError(404, 1021, f"Объект с UUID {order_id} не найден")
    return order


async def order_get(request: web.Request) -> web.StreamResponse:
    sandbox = sandbox_of(request)
    order = _order(request)
    return answer(request, sandbox.render_order(base_of(request), order, _expand(request, None)))


async def order_put(request: web.Request) -> web.StreamResponse:
    sandbox = sandbox_of(request)
    order = sandbox.book.update(request.match_info["id"], await _body(request), _context(request))
    return answer(request, sandbox.render_order(base_of(request), order, _expand(request, None)))


async def order_delete(request: web.Request) -> web.StreamResponse:
    sandbox_of(request).book.delete(request.match_info["id"])
    return web.Response(status=200)


async def positions_list(request: web.Request) -> web.StreamResponse:
    book = sandbox_of(request).book
    order = _order(request)
    base = base_of(request)
    return _list(
        request,
        "customerorderposition",
        order.positions,
        lambda position: book.render_position(base, order, position),
        {"id": lambda position: position.id},
    )


async def positions_add(request: web.Request) -> web.StreamResponse:
    book = sandbox_of(request).book
    order = _order(request)
    body = await _body(request)
    if isinstance(body, list) and len(body) > MAX_ARRAY:
        raise ApiError(413, 2007, f"Массив в запросе содержит больше {MAX_ARRAY} элементов")
    added = book.add_positions(order.id, body, _context(request))
    base = base_of(request)
    rendered = [book.render_position(base, order, position) for position in added]
    return answer(request, rendered if isinstance(body, list) else rendered[0])


def add_routes(app: web.Application) -> None:
    p = PREFIX
    order = f"{p}entity/customerorder"
    app.router.add_post(f"{p}security/token", security_token)
    app.router.add_get(f"{p}context/employee", employee)
    app.router.add_get(f"{p}context/companysettings/pricetype", price_types)
    app.router.add_get(f"{order}/metadata", order_metadata)
    app.router.add_post(f"{order}/delete", order_mass_delete)
    app.router.add_get(order, order_list)
    app.router.add_post(order, order_create)
    app.router.add_put(order, order_collection_put)
    app.router.add_get(f"{order}/{{id}}", order_get)
    app.router.add_put(f"{order}/{{id}}", order_put)
    app.router.add_delete(f"{order}/{{id}}", order_delete)
    app.router.add_get(f"{order}/{{id}}/positions", positions_list)
    app.router.add_post(f"{order}/{{id}}/positions", positions_add)
    app.router.add_get(f"{p}entity/{{type}}", entity_list)
    app.router.add_get(f"{p}entity/{{type}}/{{id}}", entity_get)
