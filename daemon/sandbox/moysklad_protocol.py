"""The МойСклад emulator's request pipeline, in the order the API applies it.

1. no ``gzip`` in ``Accept-Encoding`` → 415 with an empty body (before auth);
2. bad or missing credentials → 401/1056 with ``X-Lognex-Auth*`` headers;
3. a user whose API access was cut off → 403/1061;
4. a bad ``Accept`` → 1062;
5. over 5 requests in flight for the user (20 for the account) → 429/1073;
6. the weighted bucket exhausted → 429/1049 with ``X-Lognex-Retry-After`` (ms);
7. latency and injected faults, then the handler; ``ApiError`` becomes an ``{"errors"}`` body.

Every answer after authentication carries the five rate headers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from daemon.sandbox.moysklad_account import MoySkladSandbox
from daemon.sandbox.moysklad_wire import PREFIX, ApiError, errors_body, json_response

AUTH_TEXT = "Ошибка аутентификации: Неправильный пароль или имя пользователя или ключ авторизации"
NGINX_502 = (
    "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway"
    "</h1></center><hr><center>nginx</center></body></html>"
)
ACCEPTED = frozenset({"application/json;charset=utf-8", "application/json", "*/*"})

SANDBOX_KEY = web.AppKey("moysklad_sandbox", MoySkladSandbox)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def sandbox_of(request: web.Request) -> MoySkladSandbox:
    return request.app[SANDBOX_KEY]


def base_of(request: web.Request) -> str:
    """The API root as the client called it: every href in an answer starts with it."""
    return f"{request.scheme}://{request.host}{PREFIX}"


def answer(request: web.Request, payload: Any, status: int = 200) -> web.Response:
    sandbox = sandbox_of(request)
    return json_response(payload, status=status, compress=sandbox.compress(), extra={})


def error_answer(request: web.Request, error: ApiError, headers: Mapping[str, str]) -> web.Response:
    sandbox = sandbox_of(request)
    return json_response(
        errors_body([error]), status=error.status, compress=sandbox.compress(), extra=headers
    )


def _accepts_gzip(request: web.Request) -> bool:
    header = request.headers.get("Accept-Encoding", "")
    codings = {part.split(";")[0].strip().lower() for part in header.split(",")}
    return "gzip" in codings


@web.middleware
async def protocol(request: web.Request, handler: Handler) -> web.StreamResponse:
    sandbox = sandbox_of(request)
    sandbox.request_count += 1
    if request.transport is not None:
        sandbox.note_peer(request.transport.get_extra_info("peername"))
    if not _accepts_gzip(request):
        sandbox.count_415 += 1
        return web.Response(status=415)
    login = sandbox.authenticate(request.headers.get("Authorization", ""))
    if login is None:
        sandbox.count_401 += 1
        headers = {"X-Lognex-Auth": "-1", "X-Lognex-Auth-Message": AUTH_TEXT}
        return error_answer(request, ApiError(401, 1056, AUTH_TEXT), headers)
    limits = sandbox.limits(login)
    weight = sandbox.weight_for(login)
    counts = sandbox.remaining_counts
    if limits.banned:
        error = ApiError(403, 1061, "Доступ к API для пользователя отключён")
        return error_answer(request, error, limits.bucket.headers(weight, 0, counts))
    accept = request.headers.get("Accept", "*/*").replace(" ", "").lower()
    if accept not in ACCEPTED:
        error = ApiError(415, 1062, f"Неверное значение заголовка 'Accept': {accept}")
        return error_answer(request, error, limits.bucket.headers(weight, 0, counts))
    if not sandbox.enter(limits):
        sandbox.count_1073 += 1
        limits.note_429()
        error = ApiError(429, 1073, "Превышено ограничение на одновременное количество запросов")
        return error_answer(request, error, limits.bucket.headers(weight, 0, counts))
    try:
        if sandbox.drain_next > 0:
            sandbox.drain_next -= 1
            limits.bucket.drain()
        retry_after = limits.bucket.try_debit(weight)
        if retry_after:
            sandbox.count_429 += 1
            limits.note_429()
            error = ApiError(
                429, 1049, "Превышено ограничение на количество запросов в единицу времени"
            )
            return error_answer(request, error, limits.bucket.headers(weight, retry_after, counts))
        sandbox.units_charged += weight
        if sandbox.latency_s > 0:
            await asyncio.sleep(sandbox.latency_s)
        response = await _handle(request, handler, sandbox)
        if response.status >= 400:
            limits.note_failure(f"{request.method} {request.path} {response.status}")
        response.headers.update(limits.bucket.headers(weight, 0, counts))
        return response
    finally:
        sandbox.leave(limits)


async def _handle(
    request: web.Request, handler: Handler, sandbox: MoySkladSandbox
) -> web.StreamResponse:
    fault = sandbox.pick_fault()
    if fault == 502:
        return web.Response(status=502, text=NGINX_502, content_type="text/html")
    if fault is not None:
        code, text = (1999, "Неизвестная ошибка") if fault == 500 else (1074, "Технические работы")
        return error_answer(request, ApiError(fault, code, text), {})
    try:
        return await handler(request)
    except ApiError as error:
        return error_answer(request, error, {})
    except web.HTTPMethodNotAllowed:
        return error_answer(request, ApiError(405, 1039, "Метод не поддерживается"), {})
    except web.HTTPNotFound:
        return error_answer(request, ApiError(404, 1002, f"Неизвестный путь: {request.path}"), {})
