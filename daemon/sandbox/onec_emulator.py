"""A protocol-faithful emulator of a UT 11 standard OData publication (reference §5).

``OneCSandbox`` (``daemon.sandbox.onec_sandbox``, importable from here) holds the state, built
from a ``DemoDataset``, and the knobs; ``make_onec_app`` serves it over ``aiohttp.web``;
``run_onec_sandbox`` runs it on 127.0.0.1 and yields the base URL
(``http://127.0.0.1:PORT/ut11/odata/standard.odata/``).

Wire behaviour reproduced: Basic auth (UTF-8) → 401; JSON only with ``$format=json`` (Atom XML
otherwise); ``odata.metadata`` envelopes; Int64 as strings; ``$metadata`` as EDMX with bindable
``Balance``/``Post``/``Unpost``, XML only (a JSON one is refused, guide §17.4.7); the ``$filter``
subset (``+`` is not a space); ``$select``, ``$top``, ``$skip``, ``$orderby``, ``$inlinecount``,
``/$count``; ``Balance(Condition=…, Dimensions=…)`` with the Condition read in the guide's form
(inner quotes as they are) by default, or doubled, or either (``condition_form``), and the
parameters as query options (``query_options``); 400/404/500 ``odata.error`` bodies with the real
codes; the transfer order's write and posting rules. In front of it sit IIS's two URL limits, on
by default as on a stock IIS: a path segment of more than 260 characters (HTTP.sys
``UrlSegmentMaxLength``, counted decoded) → 400 «Bad Request - Invalid URL», a query string of
more than 2048 bytes (``maxQueryString``) → 404.15, both plain HTML. Knobs inject latency (on
every request, and more on virtual tables and on ``$metadata``, both slow on a real UT), a cold
start, random faults (500 without ``odata.error``, 502, a hang that ends in a dropped
connection) and "commit, then drop".
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote, unquote

from aiohttp import web

from daemon.sandbox.iis import iis_refusal
from daemon.sandbox.onec_database import (
    EntityTable,
    ODataFault,
    filter_rows,
    unknown_segment,
)
from daemon.sandbox.onec_params import FUNCTION_PARAMS, balance_params
from daemon.sandbox.onec_sandbox import OneCSandbox
from daemon.sandbox.onec_schema import ORDER, ORDER_LINES
from daemon.sandbox.onec_wire import (
    atom_response,
    drop_connection,
    error_response,
    int_option,
    json_response,
    parse_call_params,
    parse_query,
    project,
    split_call,
)

PREFIX = "/ut11/odata/standard.odata/"
# What 1C answers while it restarts or waits on a lock (the ``internal_error_gets`` knob).
INTERNAL_ERROR = ODataFault(
    500,
    "-1",
    "Произошла внутренняя ошибка OData сервиса. "
    "Дополнительные сведения можно найти в технологическом журнале.",
)
__all__ = ["PREFIX", "OneCSandbox", "make_onec_app", "run_onec_sandbox"]


# ---------------------------------------------------------------------------------------------
# The application
# ---------------------------------------------------------------------------------------------


class _Handler:
    def __init__(self, sandbox: OneCSandbox) -> None:
        self.sandbox = sandbox

    async def handle(self, request: web.Request) -> web.StreamResponse:
        box = self.sandbox
        box.request_count += 1
        box.raw_requests.append(f"{request.method} {request.rel_url.raw_path_qs}")
        box.in_flight += 1
        box.max_in_flight = max(box.max_in_flight, box.in_flight)
        try:
            refusal = iis_refusal(
                request.rel_url.raw_path,
                request.rel_url.raw_query_string,
                segment_chars=box.max_url_segment_chars,
                query_bytes=box.max_query_string_bytes,
            )
            if refusal is not None:
                box.requests_by_kind[f"iis_{refusal.status}"] += 1
                return refusal
            await box._delay()
            fault = box._fault()
            if fault == "timeout":
                box.requests_by_kind["fault_timeout"] += 1
                await asyncio.sleep(box.hang_s)
                raise drop_connection(request)
            if fault is not None:
                box.requests_by_kind[f"fault_{fault}"] += 1
                text = "<html><body><h1>Internal Server Error</h1></body></html>"
                if fault == "502":
                    text = "<html><body><h1>502 Bad Gateway</h1></body></html>"
                return web.Response(status=int(fault), text=text, content_type="text/html")
            if request.method == "GET" and box.internal_error_gets > 0:
                box.internal_error_gets -= 1
                box.requests_by_kind["fault_internal_error"] += 1
                return error_response(INTERNAL_ERROR, True)
            if not self._authorized(request):
                box.requests_by_kind["unauthorized"] += 1
                return web.Response(
                    status=401,
                    text="401 - Unauthorized: Access is denied due to invalid credentials.",
                    headers={"WWW-Authenticate": 'Basic realm="1C"'},
                )
            raw_path = request.rel_url.raw_path
            if not raw_path.startswith(PREFIX):
                return web.Response(status=404, text="Not Found")
            options = parse_query(request.rel_url.raw_query_string)
            as_json = options.get("$format") in ("json", "application/json")
            key = (
                request.rel_url.raw_path_qs,
                box.db.generation,
                frozenset(box.unpublished),
                box.condition_form,
                box.query_options,
                _wants_json(request, options),
            )
            cached = box.answers.get(key) if request.method == "GET" else None
            if cached is not None:
                kind, body, content_type = cached
                box.requests_by_kind[kind] += 1
                return web.Response(
                    body=body,
                    content_type=content_type,
                    charset="utf-8",
                    headers={"DataServiceVersion": "3.0"},
                )
            before = box.requests_by_kind.copy()
            try:
                response = await self._dispatch(request, unquote(raw_path[len(PREFIX) :]), options)
            except ODataFault as fault_:
                box.requests_by_kind["error"] += 1
                return error_response(fault_, as_json)
            if (
                request.method == "GET"
                and isinstance(response, web.Response)
                and response.status == 200
            ):
                kinds = list((box.requests_by_kind - before).keys())
                answer = response.body
                if len(kinds) == 1 and isinstance(answer, bytes):
                    box.answers[key] = (kinds[0], answer, response.content_type)
                    if len(box.answers) > 512:
                        box.answers.popitem(last=False)
            return response
        finally:
            box.in_flight -= 1

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            login, _, password = (
                base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
            )
        except (binascii.Error, UnicodeDecodeError):
            return False
        return login == self.sandbox.username and password == self.sandbox.password

    async def _dispatch(
        self, request: web.Request, path: str, options: dict[str, str]
    ) -> web.StreamResponse:
        box = self.sandbox
        root = f"{request.scheme}://{request.host}{PREFIX}"
        if path == "$metadata":
            if _wants_json(request, options):
                # Code and text from the guide's table (§17.4.10, code 3); the status is the
                # emulator's guess within the 4XX the guide promises.
                box.requests_by_kind["metadata_json_refused"] += 1
                raise ODataFault(415, "3", "Запрошенный тип представления не поддерживается")
            box.requests_by_kind["metadata"] += 1
            if box.metadata_latency_s > 0:
                await asyncio.sleep(box.metadata_latency_s)
            return web.Response(
                body=box.metadata_xml(), content_type="application/xml", charset="utf-8"
            )
        as_json = options.get("$format") in ("json", "application/json")
        if path == "":
            box.requests_by_kind["service"] += 1
            sets = [{"name": n, "url": n} for n in box.db.defs if box.published(n)]
            return json_response({"odata.metadata": root + "$metadata", "value": sets})
        name, key, rest = split_call(path)
        if not box.published(name):
            raise ODataFault(404, "6", f"Сегмент пути {name} не найден!")
        entity = box.db.defs[name]
        method = request.method
        if entity.dimensions:
            return await self._register(name, key, rest, method, options, root)
        table = box.db.tables[name]
        if key is None:
            if rest == "$count" and method == "GET":
                box.requests_by_kind["count"] += 1
                rows = table.select(options.get("$filter", ""), "")
                return web.Response(text=str(len(rows)), content_type="text/plain")
            if rest:
                raise ODataFault(400, "6", "Метод не найден")
            if method == "GET":
                box.requests_by_kind["collection"] += 1
                return self._collection(name, table, options, root, as_json)
            if method == "POST":
                return await self._create(request, name, root)
            raise ODataFault(400, "6", "Метод не найден")
        ref_key = self._key(table, key)
        if rest in ("Post", "Unpost") and method == "POST":
            if name != ORDER:
                raise ODataFault(400, "6", "Метод не найден")
            box.requests_by_kind[rest.lower()] += 1
            if rest == "Post":
                operational = options.get("PostingModeOperational", "false").lower() == "true"
                box.orders.post(ref_key[0], operational)
            else:
                box.orders.unpost(ref_key[0])
            return web.Response(status=200)
        if rest:
            raise ODataFault(400, "6", "Метод не найден")
        row = table.get(ref_key)
        if row is None:
            raise ODataFault(404, "9", "Экземпляр сущности не найден")
        if method == "PATCH" and name == ORDER:
            box.requests_by_kind["patch"] += 1
            row = box.orders.patch(ref_key[0], await self._body(request))
        elif method != "GET":
            raise ODataFault(400, "6", "Метод не найден")
        else:
            box.requests_by_kind["entity"] += 1
        if not as_json:
            return atom_response(name, [row])
        projected = project([row], options.get("$select", ""), table.entity.property_names)[0]
        return json_response({"odata.metadata": f"{root}$metadata#{name}/@Element", **projected})

    @staticmethod
    def _key(table: EntityTable, text: str) -> tuple[Any, ...]:
        params = parse_call_params(text)
        keys = table.entity.keys
        if "" in params and len(keys) == 1:
            return (params[""],)
        if set(params) != set(keys):
            raise ODataFault(400, "1", f"Не удалось разобрать ключ '{text}'")
        return tuple(params[k] for k in keys)

    def _collection(
        self, name: str, table: EntityTable, options: dict[str, str], root: str, as_json: bool
    ) -> web.Response:
        rows = table.select(options.get("$filter", ""), options.get("$orderby", ""))
        total = len(rows)
        skip = int_option(options, "$skip") or 0
        top = int_option(options, "$top")
        page = rows[skip : None if top is None else skip + top]
        if not as_json:
            return atom_response(name, page)
        head: dict[str, Any] = {"odata.metadata": f"{root}$metadata#{name}"}
        if options.get("$inlinecount") == "allpages":
            head["odata.count"] = str(total)
        head["value"] = project(page, options.get("$select", ""), table.entity.property_names)
        return json_response(head)

    async def _register(
        self,
        name: str,
        key: str | None,
        rest: str,
        method: str,
        options: dict[str, str],
        root: str,
    ) -> web.Response:
        box = self.sandbox
        function, args, tail = split_call(rest) if rest else ("", None, "")
        if key is not None or method != "GET" or tail:
            raise ODataFault(400, "6", "Метод не найден")
        if not function:
            box.requests_by_kind["collection"] += 1
            return json_response({"odata.metadata": f"{root}$metadata#{name}", "value": []})
        if function != "Balance":
            raise ODataFault(400, "6", "Метод не найден")
        box.requests_by_kind["balance"] += 1
        if box.balance_latency_s > 0:
            await asyncio.sleep(box.balance_latency_s)
        params = balance_params(
            args, options, form=box.condition_form, query_options=box.query_options
        )
        unknown = set(params) - set(FUNCTION_PARAMS)
        if unknown:
            raise unknown_segment(sorted(unknown)[0])
        register = box.db.registers[name]
        rows = register.balance(str(params.get("Condition", "")), str(params.get("Dimensions", "")))
        dims = {d.prop for d in register.entity.dimensions}
        known = frozenset(dims | {r + "Balance" for r in register.entity.resources})
        if options.get("$filter"):
            rows = filter_rows(rows, options["$filter"], known)
        skip = int_option(options, "$skip") or 0
        top = int_option(options, "$top")
        rows = rows[skip : None if top is None else skip + top]
        payload = {
            "odata.metadata": f"{root}$metadata#{name}_Balance",
            "value": project(rows, options.get("$select", ""), known),
        }
        return json_response(payload)

    async def _create(self, request: web.Request, name: str, root: str) -> web.StreamResponse:
        box = self.sandbox
        if name == ORDER_LINES:
            raise ODataFault(400, "13", "Cоздание строк табличной части напрямую не поддерживается")
        if name != ORDER:
            raise ODataFault(400, "6", "Метод не найден")
        box.requests_by_kind["create"] += 1
        row = box.orders.create(await self._body(request))
        if box.drop_after_commit > 0:
            box.drop_after_commit -= 1
            box.requests_by_kind["dropped_after_commit"] += 1
            raise drop_connection(request)
        location = root + quote(f"{name}(guid'{row['Ref_Key']}')", safe="()'_-")
        return json_response(
            {"odata.metadata": f"{root}$metadata#{name}/@Element", **row},
            status=201,
            headers={"Location": location},
        )

    @staticmethod
    async def _body(request: web.Request) -> Any:
        try:
            return json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            raise ODataFault(500, "-1", "Непредвиденный символ при чтении JSON") from None


def _wants_json(request: web.Request, options: dict[str, str]) -> bool:
    """``$format=json``, or an ``Accept`` that names JSON and neither XML nor ``*/*``."""
    if options.get("$format", "").lower() in ("json", "application/json"):
        return True
    accept = request.headers.get("Accept", "").lower()
    return "json" in accept and "xml" not in accept and "*/*" not in accept


def make_onec_app(sandbox: OneCSandbox) -> web.Application:
    """The aiohttp application serving ``sandbox`` under ``/ut11/odata/standard.odata/``."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", _Handler(sandbox).handle)
    return app


@asynccontextmanager
async def run_onec_sandbox(
    sandbox: OneCSandbox, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Serve ``sandbox``; yields the base URL ending in ``/odata/standard.odata/``."""
    runner = web.AppRunner(make_onec_app(sandbox), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        address = runner.addresses[0]
        yield f"http://{address[0]}:{address[1]}{PREFIX}"
    finally:
        await runner.cleanup()
